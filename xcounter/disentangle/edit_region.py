"""Where an edit may act: DiffEdit's mask, read on the scan's own inversion path.

Why: the phantom generators' text directions are entangled. Removing an effusion also moved the
nodule, the consolidation or the inspiration level, so "intended change, all else kept" stayed far
below what a clinician would accept. DiffEdit (Couairon et al., 2022) finds the region where the
source and the edited prompt disagree about the noise and confines the edit to it; outside, every
denoising step is blended back to the source path (blended latent diffusion), so the rest of the
scan *is* the reconstruction.

diffusers' `StableDiffusionDiffEditPipeline.generate_mask` reads the disagreement on the encoded
image noised with fresh random draws. Our edits branch off the deterministic DDIM inversion path
(`Inversion.prefix`), so the disagreement is read on that path's own latents: no random draws, and
the mask describes exactly the latents the edit starts from. The thresholding is DiffEdit's.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from xcounter.disentangle.trajectories import swap_step_of

if TYPE_CHECKING:
    from xcounter.generators import SDGenerator

#: edit strengths (1 - λ/steps) at which the two noise predictions are compared, on the source path
DEFAULT_PROBE_STRENGTHS = (0.25, 0.5, 0.75)
#: DiffEdit's mask_thresholding_ratio: the map is clamped at ratio × its mean and cut at half of that
DEFAULT_THRESHOLD_RATIO = 3.0
#: latent pixels the binary region grows by, so the blend seam falls outside what the edit draws
DEFAULT_GROW = 1


#: the band, as a fraction of the image side, a "periphery" attribute (every side) or a "top" one (the top
#: edge only) may occupy. Skin: rulers lie in the outer 15%, colour charts reach 25% in from a corner; CXR:
#: laterality markers and "PORTABLE" stamps lie in the top 14%, above the lung apices (a band on every side
#: of a radiograph would take in the lateral lung edges and the bases).
BANDS = {"periphery": 0.2, "top": 0.15}


def prior_region(where: str | tuple[float, float, float, float], shape: Sequence[int],
                 image: torch.Tensor | None = None) -> torch.Tensor | None:
    """Where an attribute can be, as a latent region [1, 1, h, w] in {0, 1}; None = anywhere.

    "off_lesion", "beside_lesion" (the same cells), "clear_of_lesion" (the lesion grown by
    `lesion_region.LESION_MARGIN`), "on_lesion" and "in_lesion" depend on the scan: `image` ([1, C, H, W] in [0, 1])
    is where its lesion is found.

    Why: an attribute's language direction is entangled with everything else in the report, so the
    generator's "remove the portable label" also brightened both lung fields and the clean Consolidation
    classifier flipped. A film marker, a ruler or a colour chart lives at the image's edge: confining its
    edit there is prior knowledge no mask has to guess, and it holds for additions too (which DiffEdit's
    mask cannot place).
    """
    if where == "anywhere":
        return None
    if where in ("off_lesion", "beside_lesion", "clear_of_lesion"):
        if image is None:
            raise ValueError(f"where '{where}' needs the scan's image")
        from xcounter.disentangle.lesion_region import LESION_MARGIN, outside_lesion_region
        return outside_lesion_region(image, shape, margin=LESION_MARGIN if where == "clear_of_lesion" else 0.0)
    if where in ("on_lesion", "in_lesion"):
        if image is None:
            raise ValueError(f"where '{where}' needs the scan's image")
        from xcounter.disentangle.lesion_region import lesion_region
        return lesion_region(image, shape)
    h, w = int(shape[-2]), int(shape[-1])
    if isinstance(where, tuple):  # [top, bottom, left, right]: every latent cell the box touches
        top, bottom, left, right = where
        region = torch.zeros(1, 1, h, w)
        region[..., math.floor(top * h):max(math.floor(top * h) + 1, math.ceil(bottom * h)),
               math.floor(left * w):max(math.floor(left * w) + 1, math.ceil(right * w))] = 1.0
        return region
    if where not in BANDS:
        raise ValueError(f"unknown where '{where}'")
    rows, cols = max(1, math.ceil(BANDS[where] * h)), max(1, math.ceil(BANDS[where] * w))
    region = torch.zeros(1, 1, h, w)
    region[..., :rows, :] = 1.0
    if where == "periphery":
        region[..., h - rows:, :] = 1.0
        region[..., :, :cols] = 1.0
        region[..., :, w - cols:] = 1.0
    return region


def pixel_prior(where: str | tuple[float, float, float, float], image: torch.Tensor | None = None,
                sign: str = "add") -> torch.Tensor | None:
    """Where an edit of an attribute may act, pixel by pixel [1, 1, H, W] in [0, 1], for the attributes a latent
    region is too coarse for; None = the latent region (`prior_region`) is the whole confinement.

    Additions only, and they need the scan's `image`: "in_lesion" ones (a finding drawn inside the lesion, its rim
    kept: `lesion_region.lesion_pixels`) and "beside_lesion" ones (an ink marking, drawn in one sector of the skin
    beside the lesion: `lesion_region.beside_lesion_pixels`). Removals are not cut: they must reach a finding
    wherever the scan has it, and their region is already DiffEdit's inside the prior's cells. The bands and boxes
    are the image's own geometry, and the other lesion kinds reach past its edge.
    """
    if where not in ("in_lesion", "beside_lesion") or sign != "add":
        return None
    if image is None:
        raise ValueError(f"where '{where}' needs the scan's image")
    from xcounter.disentangle.lesion_region import beside_lesion_pixels, lesion_pixels
    return lesion_pixels(image) if where == "in_lesion" else beside_lesion_pixels(image)


def probe_steps(steps: int, strengths: Sequence[float] = DEFAULT_PROBE_STRENGTHS) -> list[int]:
    """Denoising step indices of the probes (each strength's swap step, inside 0..steps-1)."""
    return sorted({min(steps - 1, swap_step_of(s, steps)) for s in strengths})


def disagreement_map(generator: "SDGenerator", prefix: Sequence[torch.Tensor], source: torch.Tensor,
                     edited: torch.Tensor, strengths: Sequence[float] = DEFAULT_PROBE_STRENGTHS) -> torch.Tensor:
    """[h, w]: mean |eps(edited) - eps(source)| over channels and probes along the source path.
    Costs 2 UNet evaluations per probe (more with classifier-free guidance)."""
    steps = len(prefix) - 1
    maps = []
    for step in probe_steps(steps, strengths):
        eps_source, eps_edited = generator.predict_noise(prefix[step], step, torch.stack([source, edited.to(source)]),
                                                         steps=steps)
        maps.append((eps_edited - eps_source).abs().mean(dim=0))
    return torch.stack(maps).mean(dim=0).float().cpu()


def region_from_map(disagreement: torch.Tensor, ratio: float = DEFAULT_THRESHOLD_RATIO,
                    grow: int = DEFAULT_GROW) -> torch.Tensor:
    """DiffEdit's binary mask from a disagreement map, grown by `grow` latent pixels: [1, 1, h, w] in {0, 1}.

    An edit that disagrees nowhere (a zero map) gets an empty region: it changes nothing.
    """
    clamp = float(disagreement.mean()) * ratio
    if clamp <= 0:
        return torch.zeros(1, 1, *disagreement.shape[-2:])
    region = (disagreement.clamp(0, clamp) / clamp > 0.5).float().reshape(1, 1, *disagreement.shape[-2:])
    if grow > 0:
        region = F.max_pool2d(region, kernel_size=2 * grow + 1, stride=1, padding=grow)
    return region


def edit_region(generator: "SDGenerator", prefix: Sequence[torch.Tensor], source: torch.Tensor,
                edited: torch.Tensor, strengths: Sequence[float] = DEFAULT_PROBE_STRENGTHS,
                ratio: float = DEFAULT_THRESHOLD_RATIO, grow: int = DEFAULT_GROW) -> torch.Tensor:
    """The latent region ([1, 1, h, w], 0/1) where the edited embedding changes the denoiser's mind."""
    return region_from_map(disagreement_map(generator, prefix, source, edited, strengths), ratio, grow)
