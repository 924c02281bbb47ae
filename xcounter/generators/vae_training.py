"""Stage 1 of a from-scratch generator: train a small AutoencoderKL to reconstruct the domain; and
the optional decoder-only refinement of any generator's VAE.

Why: a domain without a base model (the phantoms) needs its own latent space. It only has to
reconstruct the training images well (SSIM > 0.95 on 64x64 phantoms), so an L1 + MSE loss with a
tiny KL weight (1e-6, as in latent diffusion's autoencoders) suffices; the latents' scale is then
fixed by `scaling_factor` = 1 / std, as Stable Diffusion does. The decoder sees the posterior mean
(a KL-regularised autoencoder), which is what encoding for diffusion and inversion uses.

Decoder refinement (`decoder_stage`) trains the decoder alone on the frozen encoder's latents, as
Stability AI's ft-MSE VAE did for SD: the latent space and its scaling factor stay exactly as they
were, so a UNet trained on them stays valid, while reconstructions (and so samples and inversions)
get sharper. It cannot bring back what the encoder drops (the third phantom-skin release's encoder
dropped thin ink strokes).

The optional detail term (`detail_weight`) adds the mean error of each image's worst pixels
(`DETAIL_FRACTION`). Why: a thin, rarely seen structure (a purple ink stroke on a few percent of a
few images) barely moves a mean over all pixels, so a small autoencoder learns to paint it over with
skin; a perceptual (LPIPS) or adversarial loss would weigh it, but needs pretrained or extra networks.
On phantom-skin (4-channel latent, 1,500 steps, batch 8) weight 1/3 took held-out inked reconstructions
from 0 of 24 read as inked by the oracle to 8 of 24 (SSIM 0.902); weight 1 on the worst 1% to 18 of 24,
at a cost in SSIM (0.856) that longer training has to win back. The fourth phantom-skin release (weight
1.0, 3,000 steps at batch 32) reconstructs at SSIM 0.956 and its generator draws ink in 12 of 12 prompted
samples (the third: 0 of 12).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from xcounter.generators.data import ImageCaptionSet, batch_indices
from xcounter.generators.training_loop import Stage

KL_WEIGHT = 1e-6
DETAIL_FRACTION = 0.02


def reconstruction_loss(recon: torch.Tensor, images: torch.Tensor, detail_weight: float = 0.0) -> torch.Tensor:
    """L1 + MSE, plus `detail_weight` x the mean channel-summed L1 of each image's worst pixels."""
    loss = F.l1_loss(recon, images) + F.mse_loss(recon, images)
    if detail_weight > 0:
        error = (recon - images).abs().sum(dim=1).flatten(1)
        worst = error.topk(max(1, int(error.shape[1] * DETAIL_FRACTION)), dim=1).values
        loss = loss + detail_weight * worst.mean()
    return loss


def build_vae(config: dict):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**config)


class AutoencoderObjective(torch.nn.Module):
    """The VAE and its training loss in one forward, so DDP (multi-GPU) sees every parameter used."""

    def __init__(self, vae, detail_weight: float = 0.0):
        super().__init__()
        self.vae = vae
        self.detail_weight = detail_weight

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(images).latent_dist
        # Decode the mean: the diffusion stage and inversion use the mean too, and sampling with the
        # initial std of ~1 blurs reconstructions for hundreds of steps on small models.
        recon = self.vae.decode(posterior.mean).sample
        kl = posterior.kl().mean() / images[0].numel()
        return reconstruction_loss(recon, images, self.detail_weight) + KL_WEIGHT * kl


def vae_stage(vae, data: ImageCaptionSet, *, steps: int, batch_size: int, lr: float, seed: int,
              accelerator, detail_weight: float = 0.0) -> Stage:
    """A Stage whose loss at `step` is reconstruction + KL on that step's deterministic batch.

    The trained VAE is `accelerator.unwrap_model(stage.modules["vae"]).vae`.
    """
    objective = AutoencoderObjective(vae, detail_weight)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=lr, weight_decay=0.0)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    rank, world = accelerator.process_index, accelerator.num_processes

    def loss_at(step: int) -> torch.Tensor:
        indices = batch_indices(len(data), batch_size, seed, step)[rank::world]
        images, _ = data.batch(indices)
        return objective(images.to(accelerator.device))

    return Stage(name="vae", modules={"vae": objective}, parameters=list(objective.parameters()),
                 optimizer=optimizer, loss_at=loss_at, steps=steps, lr=lr, warmup=min(50, steps // 10))


class DecoderObjective(torch.nn.Module):
    """Reconstruction loss of the decoder alone on precomputed (frozen-encoder) posterior means."""

    def __init__(self, vae, detail_weight: float = 0.0):
        super().__init__()
        self.vae = vae
        self.detail_weight = detail_weight

    def forward(self, latents: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return reconstruction_loss(self.vae.decode(latents).sample, images, self.detail_weight)


def decoder_parameters(vae) -> list[torch.nn.Parameter]:
    """What decoder refinement trains: everything after the latent (post_quant_conv and the decoder)."""
    return list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())


def decoder_stage(vae, data: ImageCaptionSet, latents: torch.Tensor, *, steps: int, batch_size: int, lr: float,
                  seed: int, accelerator, detail_weight: float = 0.0) -> Stage:
    """A Stage refining the decoder of `vae` on `latents` (unscaled posterior means of `data`, in order).

    The encoder is frozen and never run again here, so `latents` stay the latents of the trained model.
    """
    vae.requires_grad_(False)
    parameters = decoder_parameters(vae)
    for parameter in parameters:
        parameter.requires_grad_(True)
    objective = DecoderObjective(vae, detail_weight)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    rank, world = accelerator.process_index, accelerator.num_processes

    def loss_at(step: int) -> torch.Tensor:
        indices = batch_indices(len(data), batch_size, seed, step)[rank::world]
        images, _ = data.batch(indices)
        return objective(latents[indices].to(accelerator.device), images.to(accelerator.device))

    return Stage(name="vae_decoder", modules={"vae": objective}, parameters=parameters, optimizer=optimizer,
                 loss_at=loss_at, steps=steps, lr=lr, warmup=min(50, steps // 10))


@torch.no_grad()
def encode_all(vae, data: ImageCaptionSet, device, chunk: int = 64) -> torch.Tensor:
    """Unscaled posterior means of every training image, `[N, 4, h, w]` on CPU."""
    vae.eval()
    out = []
    for begin in range(0, len(data), chunk):
        images, _ = data.batch(list(range(begin, min(begin + chunk, len(data)))))
        out.append(vae.encode(images.to(device)).latent_dist.mean.cpu())
    return torch.cat(out)


@torch.no_grad()
def reconstruction_ssim(vae, data: ImageCaptionSet, device, limit: int = 256) -> float:
    """Mean SSIM of decode(encode(x)) against x over (up to) `limit` training images."""
    from skimage.metrics import structural_similarity

    vae.eval()
    count = min(limit, len(data))
    images, _ = data.batch(list(range(count)))
    recon = vae.decode(vae.encode(images.to(device)).latent_dist.mean).sample.cpu()
    to01 = lambda t: ((t.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy().astype(np.float64)
    a, b = to01(images), to01(recon)
    scores = [structural_similarity(x, y, data_range=1.0, channel_axis=2) for x, y in zip(a, b)]
    return float(np.mean(scores))


def scaling_factor(latents: torch.Tensor) -> float:
    """1 / std of the latents: unit-variance inputs for the diffusion model (SD's convention)."""
    return float(1.0 / latents.float().std().clamp_min(1e-6))
