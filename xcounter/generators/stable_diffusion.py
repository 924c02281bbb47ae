"""A Stable Diffusion pipeline as the generator of counterfactuals: encode/decode, DDIM inversion and
batched swap-step sampling.

Why not `pipe.__call__`: it runs under `torch.no_grad()`, cannot branch one trajectory into many
candidates, and cannot count UNet evaluations. Here the UNet and VAE are called directly: the
denoising prefix before a swap step λ is computed once and every candidate branches off it, so a
search over K swap steps costs far fewer UNet evaluations than K full samples (`nfe` counts them).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMInverseScheduler, DDIMScheduler

from xcounter.edit_pruning import PART_FRACTIONS, checked_fractions
from xcounter.errors import InputError, ModelError, XCounterError
from xcounter.search import checked_anchor

#: how `SDGenerator.invert` maps a scan to noise (see there)
INVERSION_METHODS = ("ddim", "ddpm")
#: DDPM inversion's default eta: 1 is the paper's DDPM sampler
DEFAULT_INVERSION_ETA = 1.0


@dataclass
class SwapSchedule:
    """Denoise with `source` before step `swap_step` and with `edited` from `swap_step` on."""
    source: torch.Tensor  # [77, D]
    edited: torch.Tensor  # [77, D]
    swap_step: int  # 0..steps; steps = pure source sample, 0 = edited from the start
    #: [1, 1, h, w] weights in [0, 1] (latent resolution) where the edit may act; outside it every step is
    #: blended back to the source path (blended latent diffusion), so the rest of the scan stays the
    #: reconstruction. None = the edit acts everywhere. Needs the full source prefix.
    region: torch.Tensor | None = None


@dataclass
class Inversion:
    """A scan mapped to the generator's noise z_T, with how faithfully it comes back."""
    z_T: torch.Tensor  # [1, 4, h, w]
    z_0: torch.Tensor  # [1, 4, h, w] encoded input
    reconstruction: torch.Tensor  # [1, C, H, W] in [0, 1]: decode(denoise(z_T, prompt))
    image: torch.Tensor  # [1, C, H, W]: the input at the generator resolution and channels
    error: float  # mean |reconstruction - image|
    ssim: float
    prompt: str
    steps: int
    guidance_scale: float = 1.0  # guidance used for the reconstruction (and `prefix`)
    prefix: list[torch.Tensor] | None = None  # the source path (`DenoisePrefix`): reuse it in `sample`
    iterations: int = 0  # fixed-point refinements per inversion step (`SDGenerator.invert`)
    method: str = "ddim"  # "ddim" (deterministic inversion) | "ddpm" (edit-friendly noise maps)
    eta: float | None = None  # "ddpm": the DDIM eta whose noise the residuals stand for
    seed: int | None = None  # "ddpm": the seed of the noisy latents


class DenoisePrefix(list):
    """`latents[i]` = latent before denoising step i (`latents[steps]` = z_0), remembering how it was made
    so `sample` can refuse a prefix computed for other settings.

    `residuals` (edit-friendly DDPM inversion): `residuals[i]` = latents[i + 1] minus the DDIM(`eta`) step
    from latents[i] under the source embedding. `sample` adds it after every step of every branch, so the
    source path returns exactly and an edit keeps the scan's own noise.
    """

    def __init__(self, latents: Sequence[torch.Tensor], steps: int, guidance_scale: float, source: torch.Tensor,
                 residuals: Sequence[torch.Tensor] | None = None, eta: float = 0.0):
        super().__init__(latents)
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.source = source
        self.residuals = None if residuals is None else list(residuals)
        self.eta = float(eta)


def adapt_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Gray <-> RGB so a CXR can go through an RGB VAE and a 1-channel VAE can take a colour image."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 4:  # RGBA: the alpha channel carries no anatomy
        return adapt_channels(images[:, :3], channels)
    if have == 1:
        return images.expand(-1, channels, -1, -1)
    if have == 3 and channels == 1:
        return images.mean(dim=1, keepdim=True)
    raise InputError(f"cannot convert a {have}-channel image to the generator's {channels} channels")


def structural_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """skimage SSIM of two [1, C, H, W] images in [0, 1] (window shrunk for tiny images)."""
    from skimage.metrics import structural_similarity as ssim

    x = a[0].detach().float().cpu().permute(1, 2, 0).numpy()
    y = b[0].detach().float().cpu().permute(1, 2, 0).numpy()
    side = min(x.shape[0], x.shape[1])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        return float("nan")
    if x.shape[2] == 1:
        return float(ssim(x[..., 0], y[..., 0], data_range=1.0, win_size=win))
    return float(ssim(x, y, data_range=1.0, win_size=win, channel_axis=2))


def _as_image_batch(image) -> torch.Tensor:
    """Accept [C,H,W] / [1,C,H,W] tensors or H x W (x C) numpy arrays in [0, 1]; return [1, C, H, W]."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        image = image[None, None] if image.ndim == 2 else image.permute(2, 0, 1)[None]
    if not isinstance(image, torch.Tensor):
        raise InputError(f"expected an image tensor or array, got {type(image).__name__}")
    image = image.float()
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] != 1:
        raise InputError(f"invert takes one image [C, H, W] or [1, C, H, W], got shape {tuple(image.shape)}")
    return image


class SDGenerator:
    """Wraps a diffusers StableDiffusionPipeline (1.x or 2.x); images are [B, C, H, W] in [0, 1]."""

    def __init__(self, pipe, *, name: str = "stable-diffusion", domain: str | None = None, steps: int = 50,
                 guidance_scale: float = 1.0, image_channels: int | None = None, device: str | torch.device = "cpu",
                 source: str | None = None, max_batch: int = 16, edit_guidance: float | None = None,
                 kind_edits: dict[str, dict[str, float]] | None = None, inversion_iterations: int = 0,
                 inversion: str = "ddim", inversion_eta: float = DEFAULT_INVERSION_ETA,
                 confirm_shortcuts: bool = False, anchor: str = "reconstruction",
                 prune_fractions: Sequence[float] = PART_FRACTIONS, fill_removals: bool = False):
        self.pipe = pipe.to(device)
        self.unet, self.vae = pipe.unet, pipe.vae
        self.text_encoder, self.tokenizer = pipe.text_encoder, pipe.tokenizer
        for module in (self.unet, self.vae, self.text_encoder):
            module.float().eval()  # fp16 checkpoints: inversion and gradients need float32
        # Latents are not images in [-1, 1]: DDIM's x0 clipping would corrupt them, and inversion needs
        # the same (unclipped) update in both directions. Spacing "linspace" has no inverse in diffusers.
        overrides = {"clip_sample": False, "thresholding": False}
        if pipe.scheduler.config.get("timestep_spacing", "leading") not in ("leading", "trailing"):
            overrides["timestep_spacing"] = "leading"
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **overrides)
        inverse_config = {k: v for k, v in self.scheduler.config.items() if k != "thresholding"}
        self.inverse_scheduler = DDIMInverseScheduler.from_config(inverse_config)
        self.device = torch.device(device)
        self.name, self.domain, self.source = name, domain, source
        self.steps, self.guidance_scale = int(steps), float(guidance_scale)
        # the edit guidance this generator's edits are drawn with, when it needs its own (None: the engine's
        # default). Why per generator: it is how hard a model must be pushed to draw an edit at all, and a
        # push that makes one model draw a faint device makes another overshoot (skin: a removed veil filled black)
        self.edit_guidance = None if edit_guidance is None else float(edit_guidance)
        # per attribute kind, the alpha and edit guidance this generator draws that kind's edits with, where
        # they differ from its own (`resolve_edit_settings`). Why: a device must be pushed to be drawn at all,
        # while a finding inside a skin lesion overshoots (a removed veil refilled darker than the lesion)
        self.kind_edits = {str(kind): {key: float(value) for key, value in own.items()}
                           for kind, own in (kind_edits or {}).items()}
        # fixed-point refinements per DDIM inversion step (`invert`); 0 = the plain diffusers inversion
        self.inversion_iterations = checked_inversion_iterations(inversion_iterations, "inversion_iterations")
        # how real scans are inverted (`invert`): "ddim" or "ddpm" (edit-friendly noise maps), and the latter's eta
        self.inversion = checked_inversion_method(inversion, "inversion")
        self.inversion_eta = checked_inversion_eta(inversion_eta, "inversion_eta")
        checked_inversion(self.inversion, self.inversion_iterations)
        # whether this generator's device edits draw enough besides the device that a shortcut flag must be
        # confirmed on the edit's own pixels (`xcounter.confirmation`): the explainer's default
        self.confirm_shortcuts = bool(confirm_shortcuts)
        # what counterfactuals are drawn onto (`TrajectoryMethod(anchor=)`): "scan" draws each edit onto the scan
        # itself, so what this generator's inversion loses stays the scan's: the explainer's default
        self.anchor = checked_anchor(anchor)
        # the shares of an edit's largest change its flips are split into parts at (`xcounter.edit_pruning`):
        # how this model's side effects separate from its edits (skin: a faint relighting around a strong ruler)
        self.prune_fractions = checked_fractions(prune_fractions)
        # whether a pruned removal's parts are refilled at the scan's levels around them (`xcounter.removal_fill`):
        # how this model refills what it erases (skin: a removed ruler's body came back as a too-pale strip)
        self.fill_removals = bool(fill_removals)
        self.max_batch = max_batch
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        size = self.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        self.resolution = size * self.vae_scale_factor
        self.latent_shape = (self.unet.config.in_channels, size, size)
        self.vae_channels = self.vae.config.in_channels
        self.image_channels = int(image_channels or self.vae.config.out_channels)
        self.nfe = 0
        self._uncond: torch.Tensor | None = None

    # --- bookkeeping -------------------------------------------------------------------------------
    def reset_nfe(self) -> None:
        self.nfe = 0

    def identity(self) -> dict:
        """What a report needs to name the generator and reproduce its numbers."""
        digest = _config_digest({"unet": dict(self.unet.config), "vae": dict(self.vae.config),
                                 "text_encoder": self.text_encoder.config.to_dict()})
        return {"name": self.name, "source": self.source, "domain": self.domain, "resolution": self.resolution,
                "image_channels": self.image_channels, "latent_shape": list(self.latent_shape),
                "steps": self.steps, "guidance_scale": self.guidance_scale, "edit_guidance": self.edit_guidance,
                **({"kind_edits": self.kind_edits} if self.kind_edits else {}),
                "inversion_iterations": self.inversion_iterations, "inversion": self.inversion,
                **({"inversion_eta": self.inversion_eta} if self.inversion == "ddpm" else {}),
                **({"confirm_shortcuts": True} if self.confirm_shortcuts else {}),
                **({"anchor": self.anchor} if self.anchor != "reconstruction" else {}),
                **({"prune_fractions": list(self.prune_fractions)}
                   if self.prune_fractions != PART_FRACTIONS else {}),
                **({"fill_removals": True} if self.fill_removals else {}),
                "scheduler": "DDIM (eta 0)", "prediction_type": self.scheduler.config.prediction_type,
                "config_sha256": digest}

    # --- images <-> latents --------------------------------------------------------------------------
    def prepare(self, images: torch.Tensor, channels: int | None = None) -> torch.Tensor:
        """Resize [B, C, H, W] images to the generator resolution (square: crop non-square scans before,
        or they are squashed) and adapt their channels (default: `image_channels`)."""
        images = images.to(self.device, torch.float32)
        if images.shape[-2:] != (self.resolution, self.resolution):
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False, antialias=True).clamp(0, 1)
        return adapt_channels(images, channels or self.image_channels)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] in [0, 1] -> scaled latents z_0 (the posterior mean, deterministic)."""
        x = self.prepare(images, self.vae_channels)
        z = self.vae.encode(x * 2 - 1).latent_dist.mean
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (z - shift) * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> [B, image_channels, H, W] in [0, 1]; differentiable unless under no_grad."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        z = latents.to(self.device) / self.vae.config.scaling_factor + shift
        x = (self.vae.decode(z).sample + 1) / 2
        return adapt_channels(x.clamp(0, 1), self.image_channels)

    # --- text ----------------------------------------------------------------------------------------
    def embed(self, texts: list[str]) -> torch.Tensor:
        """Texts -> [B, 77, D] last hidden states, padded to the tokenizer's max length as in SD."""
        if isinstance(texts, str):
            texts = [texts]
        tokens = self.tokenizer(list(texts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        return self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]

    def _unconditional(self) -> torch.Tensor:
        if self._uncond is None:
            with torch.no_grad():
                self._uncond = self.embed([""])[0]
        return self._uncond

    # --- the UNet ------------------------------------------------------------------------------------
    def _predict(self, latents: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor,
                 guidance_scale: float) -> torch.Tensor:
        """UNet output for a batch at timestep t, with classifier-free guidance when scale > 1."""
        batch = latents.shape[0]
        if guidance_scale > 1.0:
            uncond = self._unconditional().expand(batch, -1, -1)
            out_u, out_c = self._unet(torch.cat([latents, latents]), t, torch.cat([uncond, embeddings])).chunk(2)
            return out_u + guidance_scale * (out_c - out_u)
        return self._unet(latents, t, embeddings)

    def _unet(self, latents: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        outputs = []
        for start in range(0, latents.shape[0], self.max_batch):
            chunk = slice(start, start + self.max_batch)
            outputs.append(self.unet(latents[chunk], t, encoder_hidden_states=embeddings[chunk]).sample)
            self.nfe += latents[chunk].shape[0]
        return torch.cat(outputs)

    @torch.no_grad()
    def predict_noise(self, latent: torch.Tensor, step: int, embeddings: torch.Tensor,
                      steps: int | None = None) -> torch.Tensor:
        """The UNet's prediction for one latent under several embeddings at denoising step `step` (index into
        the `steps`-step schedule), with the generator's guidance: [len(embeddings), 4, h, w]."""
        steps = int(steps or self.steps)
        if not 0 <= int(step) < steps:
            raise XCounterError(f"step must be between 0 and {steps - 1}, got {step}")
        embeddings = embeddings.to(self.device, torch.float32)
        embeddings = embeddings[None] if embeddings.ndim == 2 else embeddings
        t = self._timesteps(steps)[int(step)]
        latents = latent.to(self.device, torch.float32).reshape(1, *self.latent_shape).expand(len(embeddings), -1,
                                                                                              -1, -1)
        return self._predict(latents, t, embeddings, self.guidance_scale)

    def _timesteps(self, steps: int) -> torch.Tensor:
        self.scheduler.set_timesteps(steps)
        return self.scheduler.timesteps

    def _embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        embedding = embedding.to(self.device, torch.float32)
        return embedding[0] if embedding.ndim == 3 else embedding

    # --- inversion and denoising ---------------------------------------------------------------------
    @torch.no_grad()
    def invert(self, image, prompt: str, steps: int | None = None,
               iterations: int | None = None, method: str | None = None, seed: int = 0) -> Inversion:
        """Invert one image under `prompt`, then measure its reconstruction.

        `method` (default: the generator's `inversion`):
        - "ddim": DDIM inversion to z_T (no guidance). Plain DDIM inversion (`iterations` 0) predicts the
          noise of each step at the latent it starts from, an approximation that drifts: on the phantom CXR
          model the reconstruction lost a nodule the scan shows on 2 of 10 scans. Each of `iterations`
          fixed-point refinements predicts it again at the latent just reached, so the forward step lands
          back where inversion started (one UNet evaluation more per step and refinement; default: the
          generator's `inversion_iterations`).
        - "ddpm": edit-friendly DDPM inversion (Huberman-Spiegelglas et al., CVPR 2024, as LEDITS++): every
          step's noisy latent is drawn from q(x_t | z_0) on its own (seeded by `seed`) and the noise that
          links it to the next is kept (`DenoisePrefix.residuals`). The source path then returns the VAE's
          own reconstruction exactly (phantom CXR: every attribute of the scan kept on 10 of 10, DDIM 8) and
          edits keep the scan's noise; on the phantom models they flip sooner, not cleaner
          (docs/CONTRACTS.md, Engine). Costs `steps` UNet evaluations, as DDIM inversion does.
        The reconstruction is denoised with the generator's own guidance scale, i.e. exactly the start
        point the counterfactuals are made from, so the reported error is the one they inherit.
        """
        steps = int(steps or self.steps)
        if iterations is None:
            iterations = self.inversion_iterations
        iterations = checked_inversion_iterations(iterations, "iterations")
        method, iterations = checked_inversion(self.inversion if method is None else method, iterations, "method")
        image = self.prepare(_as_image_batch(image))
        if not torch.isfinite(image).all() or image.min() < -1e-3 or image.max() > 1 + 1e-3:
            raise InputError("the image to invert must hold finite values in [0, 1]")
        z_0 = self.encode(image)
        source = self.embed([prompt])
        if method == "ddpm":
            prefix = self.ddpm_path(z_0, source[0], steps, seed=seed)
            z = prefix[0]
        else:
            self.inverse_scheduler.set_timesteps(steps)
            z = z_0
            for t in self.inverse_scheduler.timesteps:
                start = z
                for _ in range(1 + iterations):
                    z = self.inverse_scheduler.step(self._unet(z, t, source), t, start).prev_sample
            prefix = self.denoise_prefix(z, source[0], steps)
        reconstruction = self.decode(prefix[-1])
        error = float((reconstruction - image).abs().mean())
        return Inversion(z_T=z, z_0=z_0, reconstruction=reconstruction, image=image, error=error,
                         ssim=structural_similarity(reconstruction, image), prompt=prompt, steps=steps,
                         guidance_scale=self.guidance_scale, prefix=prefix, iterations=iterations, method=method,
                         eta=self.inversion_eta if method == "ddpm" else None,
                         seed=int(seed) if method == "ddpm" else None)

    @torch.no_grad()
    def ddpm_path(self, z_0: torch.Tensor, embedding: torch.Tensor, steps: int | None = None, *, seed: int = 0,
                  eta: float | None = None, latents: Sequence[torch.Tensor] | None = None) -> DenoisePrefix:
        """The edit-friendly DDPM source path of z_0 under `embedding`: noisy latents drawn independently per
        step (or `latents`, another path's, to re-read it under a new embedding) and the residuals that make
        the DDIM(`eta`) steps land on them (`DenoisePrefix`). `steps` UNet evaluations (twice with guidance)."""
        steps = int(steps or self.steps)
        eta = self.inversion_eta if eta is None else checked_inversion_eta(eta, "eta")
        source = self._embedding(embedding)
        timesteps = self._timesteps(steps)
        z_0 = z_0.to(self.device, torch.float32).reshape(1, *self.latent_shape)
        if latents is None:
            draw = torch.Generator().manual_seed(int(seed))  # on the CPU: the same draw on every device
            noise = torch.randn((steps, *self.latent_shape), generator=draw).to(self.device)
            latents = [self.scheduler.add_noise(z_0, noise[i:i + 1], t.reshape(1)) for i, t in enumerate(timesteps)]
            latents.append(z_0)
        elif len(latents) != steps + 1:
            raise XCounterError(f"the path has {len(latents)} latents, {steps + 1} are needed for {steps} steps")
        latents = [x.to(self.device, torch.float32) for x in latents]
        residuals = []
        for i, t in enumerate(timesteps):
            x = latents[i]
            mean = self.scheduler.step(self._predict(x, t, source[None], self.guidance_scale), t, x, eta=eta,
                                       variance_noise=torch.zeros_like(x)).prev_sample
            residuals.append(latents[i + 1] - mean)
        return DenoisePrefix(latents, steps, self.guidance_scale, source, residuals=residuals, eta=eta)

    def source_path(self, inversion: Inversion, embedding: torch.Tensor, steps: int | None = None) -> DenoisePrefix:
        """The inversion's source path under `embedding` (the prompt's, usually): its own prefix when that is
        what it was made with, else made again the way the inversion was (DDIM: denoised from z_T; DDPM: the
        same noisy latents with their residuals read under `embedding`)."""
        steps = int(steps or inversion.steps)
        embedding = self._embedding(embedding)
        prefix = inversion.prefix
        if isinstance(prefix, DenoisePrefix) and len(prefix) == steps + 1 and \
                prefix.guidance_scale == self.guidance_scale and torch.equal(prefix.source.to(embedding), embedding):
            return prefix
        if inversion.method == "ddpm":
            same_steps = prefix is not None and len(prefix) == steps + 1
            return self.ddpm_path(inversion.z_0, embedding, steps, seed=inversion.seed or 0, eta=inversion.eta,
                                  latents=list(prefix) if same_steps else None)
        return self.denoise_prefix(inversion.z_T, embedding, steps)

    @torch.no_grad()
    def denoise_prefix(self, z_T: torch.Tensor, embedding: torch.Tensor, steps: int | None = None,
                       guidance_scale: float | None = None, stop: int | None = None) -> DenoisePrefix:
        """Denoise z_T with one embedding; `latents[i]` is the latent BEFORE step i, `latents[steps]` = z_0.

        `stop` ends early (the list then has stop + 1 entries): `sample` only needs the prefix up to the
        latest swap step.
        """
        steps = int(steps or self.steps)
        scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        source = self._embedding(embedding)
        z = z_T.to(self.device, torch.float32).reshape(1, *self.latent_shape)
        latents = [z]
        timesteps = self._timesteps(steps)
        for t in timesteps[: steps if stop is None else stop]:
            z = self.scheduler.step(self._predict(z, t, source[None], scale), t, z, eta=0.0).prev_sample
            latents.append(z)
        return DenoisePrefix(latents, steps, scale, source)

    @torch.no_grad()
    def sample(self, z_T: torch.Tensor, schedules: list[SwapSchedule], steps: int | None = None,
               guidance_scale: float | None = None, prefix: list[torch.Tensor] | None = None,
               edit_guidance: float = 1.0) -> torch.Tensor:
        """z_0 for every swap schedule, in one batch per step: [len(schedules), 4, h, w].

        All schedules with the same source embedding branch off one shared denoising prefix (computed
        here up to the latest swap step, or taken from `prefix`, which must be
        `denoise_prefix(z_T, source)` of every schedule's common source). From step λ on each candidate
        is denoised with its edited embedding; all candidates past their λ share each UNet batch.

        `edit_guidance` w > 1 amplifies the edit after the swap the way classifier-free guidance amplifies
        a prompt, with the source prompt in the unconditional role: eps_src + w (eps_edit - eps_src). The
        steps before λ are untouched, so the unedited point stays the exact reconstruction; each step
        after λ costs two UNet evaluations.

        A schedule's `region` confines its edit: after every step the latent outside the region is reset to
        the source path at that step (`prefix[i + 1]`), which needs the full source prefix.

        A prefix from DDPM inversion (`DenoisePrefix.residuals`) carries the scan's noise: every step of every
        branch adds the residual of that step (the branches differ only in what the UNet predicts).
        """
        steps = int(steps or self.steps)
        scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        if not schedules:
            return torch.empty(0, *self.latent_shape, device=self.device)
        for s in schedules:
            if not 0 <= int(s.swap_step) <= steps:
                raise XCounterError(f"swap_step must be between 0 and {steps}, got {s.swap_step}")
        regional = any(s.region is not None for s in schedules)
        group_of, prefixes = self._prefixes(z_T, schedules, steps, scale, prefix, full=regional)
        residuals = getattr(prefix, "residuals", None)
        eta = float(getattr(prefix, "eta", 0.0)) if residuals is not None else 0.0

        timesteps = self._timesteps(steps)
        edited = torch.stack([self._embedding(s.edited) for s in schedules])
        sources = torch.stack([self._embedding(s.source) for s in schedules])
        result: list[torch.Tensor | None] = [None] * len(schedules)
        active: list[int] = []
        z = torch.empty(0, *self.latent_shape, device=self.device)
        for i, t in enumerate(timesteps):
            starting = [k for k, s in enumerate(schedules) if s.swap_step == i]
            if starting:
                z = torch.cat([z] + [prefixes[group_of[k]][i].to(self.device, torch.float32) for k in starting])
                active += starting
            if active:
                if edit_guidance != 1.0:
                    both = self._predict(torch.cat([z, z]), t, torch.cat([sources[active], edited[active]]), scale)
                    out_source, out_edited = both.chunk(2)
                    out = out_source + edit_guidance * (out_edited - out_source)
                else:
                    out = self._predict(z, t, edited[active], scale)
                if residuals is None:
                    z = self.scheduler.step(out, t, z, eta=0.0).prev_sample
                else:
                    z = self.scheduler.step(out, t, z, eta=eta, variance_noise=torch.zeros_like(z)).prev_sample \
                        + residuals[i].to(z)
                if regional:
                    z = self._blend_regions(z, [schedules[k] for k in active],
                                            [prefixes[group_of[k]][i + 1] for k in active])
        for row, k in enumerate(active):
            result[k] = z[row:row + 1]
        for k, s in enumerate(schedules):
            if s.swap_step == steps:
                result[k] = prefixes[group_of[k]][steps].to(self.device, torch.float32)
        return torch.cat(result)

    def _blend_regions(self, z: torch.Tensor, schedules: list[SwapSchedule], source_path: list[torch.Tensor]
                       ) -> torch.Tensor:
        """Each row inside its schedule's region keeps its edited latent, outside it the source path's."""
        rows = []
        for row, schedule, kept in zip(z, schedules, source_path):
            if schedule.region is None:
                rows.append(row)
                continue
            size = tuple(self.latent_shape[1:])
            if tuple(schedule.region.shape[-2:]) != size or schedule.region.numel() != size[0] * size[1]:
                raise XCounterError(f"an edit region must be one latent-sized map {size}, "
                                    f"got shape {tuple(schedule.region.shape)}")
            weight = schedule.region.to(self.device, torch.float32).reshape(1, *size)
            rows.append(weight * row + (1 - weight) * kept.to(self.device, torch.float32)[0])
        return torch.stack(rows)

    def _prefixes(self, z_T, schedules, steps, scale, prefix, full: bool = False):
        """Group schedules by source embedding; one prefix per group, as long as its latest swap step
        (`full`: all the way to z_0, for blending regions back to the source path)."""
        sources: list[torch.Tensor] = []
        group_of: list[int] = []
        for s in schedules:
            source = self._embedding(s.source)
            match = next((g for g, known in enumerate(sources) if known is source or torch.equal(known, source)), None)
            if match is None:
                sources.append(source)
                match = len(sources) - 1
            group_of.append(match)
        if prefix is not None:
            if len(sources) != 1:
                raise XCounterError("a shared prefix needs every schedule to have the same source embedding")
            if len(prefix) != steps + 1:
                raise XCounterError(f"the prefix has {len(prefix)} latents, {steps + 1} are needed for {steps} steps")
            if isinstance(prefix, DenoisePrefix) and (prefix.guidance_scale != scale or
                                                      not torch.allclose(prefix.source, sources[0], atol=1e-5)):
                raise XCounterError("the prefix was computed with another guidance scale or source embedding")
            return group_of, [prefix]
        prefixes = []
        for g, source in enumerate(sources):
            latest = max(int(s.swap_step) for s, k in zip(schedules, group_of) if k == g)
            prefixes.append(self.denoise_prefix(z_T, source, steps, scale, stop=None if full else latest))
        return group_of, prefixes


_BOOKKEEPING_KEYS = {"architectures", "dtype", "torch_dtype", "transformers_version"}


#: the most fixed-point refinements per inversion step: past a few the reconstruction stops improving
#: (phantom CXR, 10 scans, mean |error|: 0 -> 0.0150, 2 -> 0.0110, 5 -> 0.0108; the VAE's own round trip
#: bounds it)
MAX_INVERSION_ITERATIONS = 10


def checked_inversion_method(value: object, what: str) -> str:
    if value not in INVERSION_METHODS:
        raise XCounterError(f"{what} must be one of {', '.join(INVERSION_METHODS)}, got {value!r}")
    return str(value)


def checked_inversion_eta(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise XCounterError(f"{what} must be a number from 0 to 1, got {value!r}")
    return float(value)


def checked_inversion(method: object, iterations: object, what: str = "inversion") -> tuple[str, int]:
    """A known inversion method and a refinement count that go with it, or a one-line error: refinements
    solve DDIM inversion's steps, DDPM inversion has nothing left to refine."""
    method = checked_inversion_method(method, what)
    iterations = checked_inversion_iterations(iterations, "inversion_iterations")
    if method == "ddpm" and iterations:
        raise XCounterError("inversion_iterations refine DDIM inversion; DDPM inversion is exact already: "
                            "choose 'ddim' with them, or leave them at 0")
    return method, iterations


def checked_inversion_iterations(value: object, what: str) -> int:
    """A whole number of fixed-point refinements in 0..MAX_INVERSION_ITERATIONS, or a one-line error."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INVERSION_ITERATIONS:
        raise XCounterError(f"{what} must be a whole number from 0 to {MAX_INVERSION_ITERATIONS}, "
                            f"got {value!r}")
    return int(value)


def _config_digest(configs: dict[str, dict]) -> str:
    """sha256 of the model architectures, blind to bookkeeping (paths, versions, which values were defaults)
    so the same model hashes the same in memory and after save/load."""
    kept = {name: {k: v for k, v in config.items() if not k.startswith("_") and k not in _BOOKKEEPING_KEYS}
            for name, config in configs.items()}
    text = json.dumps(json.loads(json.dumps(kept, default=str)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@contextlib.contextmanager
def _quiet_loading():
    """Hide diffusers'/transformers' loading progress bars and warnings (CLI output stays readable; a folder that
    fails to load is reported in one line by the caller), then restore them."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    states = [(m, m.is_progress_bar_enabled(), m.get_verbosity()) for m in (diffusers_logging, transformers_logging)]
    for module, _, _ in states:
        module.disable_progress_bar()
        module.set_verbosity(logging.CRITICAL)  # diffusers logs a missing weights file as an error, then retries
    try:
        yield
    finally:
        for module, enabled, verbosity in states:
            module.set_verbosity(verbosity)
            if enabled:
                module.enable_progress_bar()


def _read_settings(folder: Path) -> dict:
    path = folder / "xcounter.json"
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"cannot read {path}: {error}") from error
    if not isinstance(settings, dict):
        raise ModelError(f"{path} must hold a JSON object")
    return settings


def _load_unet(spec: str | Path, template):
    """A UNet override: a diffusers UNet folder (config.json, or unet/config.json) or a weights file
    for the pipeline's own UNet architecture (MINIM ships per-modality UNets this way)."""
    from diffusers import UNet2DConditionModel

    path = Path(spec)
    if path.is_dir():
        folder = path if (path / "config.json").is_file() else path / "unet"
        if not (folder / "config.json").is_file():
            raise ModelError(f"UNet override '{path}' holds no config.json (nor unet/config.json)")
        try:
            return UNet2DConditionModel.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as error:
            raise ModelError(f"cannot load the UNet override '{path}': {error}") from error
    if not path.is_file():
        raise ModelError(f"UNet override '{path}' does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
        template.load_state_dict(state, strict=True)
    except Exception as error:  # noqa: BLE001 - any failure here is the user's file not fitting
        raise ModelError(f"UNet weights '{path}' do not fit the pipeline's UNet: {str(error).splitlines()[0]}") from error
    return template


#: what `kind_edits` may set per attribute kind: the bound each value must meet, and how it is said
KIND_EDIT_KEYS = {"alpha": (lambda v: v > 0, "> 0"), "edit_guidance": (lambda v: v >= 1, ">= 1")}


def checked_kind_edits(value: object, source: Path) -> dict[str, dict[str, float]]:
    """An xcounter.json `kind_edits` ({kind: {"alpha": a, "edit_guidance": w}}; a key "KIND:add" or
    "KIND:remove" sets that kind's additions or removals alone), checked, or one-line ModelError."""
    from xcounter.attributes import KINDS
    from xcounter.methods.base import SIGNS

    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ModelError(f"{source}: kind_edits must map attribute kinds to settings, got {value!r}")
    out = {}
    for kind, own in value.items():
        named, colon, sign = str(kind).partition(":")
        if named not in KINDS or (colon and sign not in SIGNS):
            raise ModelError(f"{source}: kind_edits names unknown kind '{kind}' (one of {', '.join(KINDS)}, "
                             f"optionally followed by {' or '.join(':' + s for s in SIGNS)})")
        if not isinstance(own, dict) or not own or set(own) - set(KIND_EDIT_KEYS):
            raise ModelError(f"{source}: kind_edits['{kind}'] may set {' and '.join(KIND_EDIT_KEYS)}, got {own!r}")
        for key, number in own.items():
            holds, bound = KIND_EDIT_KEYS[key]
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
                    or not holds(number):
                raise ModelError(f"{source}: kind_edits['{kind}']['{key}'] must be a number {bound}, got {number!r}")
        out[kind] = {key: float(number) for key, number in own.items()}
    return out


def load_generator(spec: str | Path, *, unet: str | Path | None = None, device: str | torch.device = "cpu",
                   steps: int | None = None) -> SDGenerator:
    """Load "phantom-cxr" / "phantom-skin" or any local diffusers Stable Diffusion 1.x/2.x folder.

    `unet` swaps in another UNet (folder or weights file). An `xcounter.json` in the folder may set
    `domain`, `steps`, `guidance_scale`, `edit_guidance` (the explainer's default for this model),
    `kind_edits` (per attribute kind, the `alpha` and `edit_guidance` that kind's edits are drawn with),
    `inversion` ("ddim" or "ddpm", how scans are inverted, `SDGenerator.invert`), `inversion_eta` (DDPM
    inversion's eta, 0..1), `inversion_iterations` (fixed-point refinements per DDIM inversion step),
    `confirm_shortcuts` (true: shortcut flags are checked on the edit's own pixels and its strongest edit,
    `xcounter.confirmation`),
    `anchor` ("reconstruction" or "scan": what counterfactuals are drawn onto, `TrajectoryMethod`),
    `prune_fractions` (the levels a flip's edit is split into parts at, `xcounter.edit_pruning`),
    `fill_removals` (true: a pruned removal is refilled at the scan's levels around it, `xcounter.removal_fill`)
    and `image_channels`; `steps` here overrides it.
    """
    from xcounter.generators import zoo

    name = str(spec)
    if zoo.is_zoo_name(name):
        folder = zoo.resolve_generator(name)
    else:
        folder = Path(spec).expanduser()
        if not folder.exists():
            if len(folder.parts) == 1 and not folder.suffix:
                zoo.resolve_generator(name)  # raises: unknown name, with the list of shipped ones
            raise ModelError(f"generator folder '{folder}' does not exist")
        name = folder.resolve().name
    if not folder.is_dir():
        raise ModelError(f"generator '{folder}' must be a diffusers folder, not a file")
    if not (folder / "model_index.json").is_file():
        raise ModelError(f"'{folder}' is not a diffusers Stable Diffusion folder: model_index.json is missing")
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"cannot read {folder / 'model_index.json'}: {error}") from error
    if not isinstance(index, dict):
        raise ModelError(f"{folder / 'model_index.json'} must be a JSON object naming the pipeline's parts")
    missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if c not in index]
    if missing or "XL" in str(index.get("_class_name", "")):
        raise ModelError(f"'{folder}' is not a Stable Diffusion 1.x/2.x pipeline "
                         f"({index.get('_class_name')}{', missing ' + ', '.join(missing) if missing else ''})")
    # diffusers names the pipeline folder, not the part, when a part's folder is gone (and builds an empty tokenizer)
    absent = [f"{c}/" for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (folder / c).is_dir()]
    if absent:
        raise ModelError(f"generator folder '{folder}' lacks {', '.join(absent)}, which its model_index.json names")
    settings = _read_settings(folder)
    image_channels = settings.get("image_channels")
    if image_channels not in (None, 1, 3):
        raise ModelError(f"{folder / 'xcounter.json'}: image_channels must be 1 or 3, got {image_channels!r}")
    edit_guidance = settings.get("edit_guidance")
    if edit_guidance is not None and (isinstance(edit_guidance, bool) or not isinstance(edit_guidance, (int, float))
                                      or not math.isfinite(edit_guidance) or edit_guidance < 1):
        raise ModelError(f"{folder / 'xcounter.json'}: edit_guidance must be a number >= 1, got {edit_guidance!r}")
    kind_edits = checked_kind_edits(settings.get("kind_edits"), folder / "xcounter.json")
    confirm_shortcuts = settings.get("confirm_shortcuts", False)
    if not isinstance(confirm_shortcuts, bool):
        raise ModelError(f"{folder / 'xcounter.json'}: confirm_shortcuts must be true or false, "
                         f"got {confirm_shortcuts!r}")
    fill_removals = settings.get("fill_removals", False)
    if not isinstance(fill_removals, bool):
        raise ModelError(f"{folder / 'xcounter.json'}: fill_removals must be true or false, got {fill_removals!r}")
    try:
        inversion_iterations = checked_inversion_iterations(settings.get("inversion_iterations", 0),
                                                            "inversion_iterations")
        inversion = checked_inversion_method(settings.get("inversion", "ddim"), "inversion")
        inversion_eta = checked_inversion_eta(settings.get("inversion_eta", DEFAULT_INVERSION_ETA), "inversion_eta")
        checked_inversion(inversion, inversion_iterations)
        anchor = checked_anchor(settings.get("anchor", "reconstruction"))
        prune_fractions = checked_fractions(settings.get("prune_fractions", PART_FRACTIONS))
    except XCounterError as error:
        raise ModelError(f"{folder / 'xcounter.json'}: {error}") from None

    from diffusers import StableDiffusionPipeline

    try:
        with _quiet_loading():
            pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                                           feature_extractor=None, requires_safety_checker=False)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as error:
        raise ModelError(f"cannot load the Stable Diffusion folder '{folder}': {str(error).splitlines()[0]}") from error
    if unet is not None:
        pipe.unet = _load_unet(unet, pipe.unet)
    pipe.set_progress_bar_config(disable=True)
    steps = int(steps or settings.get("steps") or 50)
    if steps < 1:
        raise XCounterError(f"steps must be at least 1, got {steps}")
    return SDGenerator(pipe, name=name, domain=settings.get("domain"), steps=steps,
                       guidance_scale=float(settings.get("guidance_scale", 1.0)),
                       image_channels=image_channels, device=device, edit_guidance=edit_guidance,
                       kind_edits=kind_edits, inversion_iterations=inversion_iterations,
                       inversion=inversion, inversion_eta=inversion_eta, confirm_shortcuts=confirm_shortcuts,
                       anchor=anchor, prune_fractions=prune_fractions, fill_removals=fill_removals,
                       source=str(folder.resolve()) + (f" + unet {unet}" if unet is not None else ""))
