"""Latent Shift (Cohen et al. 2021, "Gifsplanation via Latent Shift"): the gradient baseline.

Why it is here: it is the classic counterfactual for medical classifiers and needs no UNet at all
(0 NFE), so it bounds what a purely gradient-driven edit can do. It moves the VAE latent of the
reconstructed scan along the classifier's gradient (back-propagated through the decoder), sweeps the
step size in one batch and bisects to the smallest step that flips the decision. It is
attribute-agnostic: it cannot say *which* attribute it changed, which is what ours adds.

The small helpers at the bottom (`target_margins`, `refine_flip`, `assemble_counterfactual`) are
shared by the other baselines so every method fills a `Counterfactual` the same way.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from xcounter.errors import XCounterError
from xcounter.explanation import Counterfactual
from xcounter.methods.base import SIGNS, EditContext
from xcounter.search import is_flipped

if TYPE_CHECKING:
    from xcounter.attributes import Attribute

#: attribute name recorded for attribute-agnostic methods
ANY_ATTRIBUTE = "any"


class LatentShift:
    """Gradient of the target margin w.r.t. the VAE latent z_0; z(t) = z_0 + t * max_shift * |z_0| * u.

    z_0 is the VAE latent of the scan (`inversion.z_0`), as in Gifsplanation's autoencoder.
    u is the unit gradient direction that moves the decision towards (and across) its threshold:
    -grad for a positive decision, +grad for a negative one. The strength t in [0, 1] is the step
    size over the sweep range, so `minimal_strength` is comparable across scans.

    Args:
        candidates: number of step sizes swept in one decoder batch (evenly spaced in (0, 1]).
        max_shift: the largest step, as a fraction of the latent's own norm.
        bisect_steps: bisection iterations between the last non-flipping and first flipping step.
    """

    name = "latent_shift"

    def __init__(self, candidates: int = 8, max_shift: float = 1.0, bisect_steps: int = 6) -> None:
        if candidates < 1 or max_shift <= 0 or bisect_steps < 0:
            raise XCounterError("Latent Shift needs candidates >= 1, max_shift > 0 and bisect_steps >= 0")
        self.candidates = candidates
        self.max_shift = max_shift
        self.bisect_steps = bisect_steps
        self._cache: dict[tuple, tuple] = {}

    def reset(self) -> None:
        """Forget cached results (they hold images of the last scan)."""
        self._cache.clear()

    def direction(self, context: EditContext) -> tuple[torch.Tensor, float]:
        """Unit latent direction that pushes the target margin across zero, and the source margin."""
        z_0 = context.inversion.z_0.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            margin = target_margins(context, context.generator.decode(z_0))[0]
            (gradient,) = torch.autograd.grad(margin, z_0)
        margin_value = float(margin.detach())
        norm = gradient.norm()
        if not torch.isfinite(norm) or norm == 0:
            return torch.zeros_like(gradient), margin_value
        push = -1.0 if margin_value > 0 else 1.0
        return push * gradient / norm, margin_value

    def generate(self, context: EditContext, attribute: "Attribute | None" = None,
                 sign: str = "remove") -> Counterfactual:
        """Sweep, bracket and bisect the latent step; `attribute` is ignored (recorded as given)."""
        if sign not in SIGNS:
            raise XCounterError(f"sign must be one of {', '.join(SIGNS)}, got '{sign}'")
        name = attribute.name if attribute is not None else ANY_ATTRIBUTE
        # the edit ignores the attribute and sign: compute it once per scan, classifier and target
        key = (id(context.inversion), id(context.classifier), context.target_index)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is context.inversion:
            return dataclasses.replace(cached[1], attribute=name, sign=sign, nfe=0)
        counterfactual = self._search(context, name, sign)
        self._cache[key] = (context.inversion, counterfactual)
        return counterfactual

    def _search(self, context: EditContext, name: str, sign: str) -> Counterfactual:
        generator = context.generator
        nfe_before = generator.nfe
        unit, _ = self.direction(context)
        z_0 = context.inversion.z_0.detach()
        scale = self.max_shift * float(z_0.norm())

        def shifted(strengths: torch.Tensor) -> torch.Tensor:
            return z_0 + strengths.to(z_0).view(-1, 1, 1, 1) * scale * unit  # sweeps are built on the CPU

        strengths = torch.linspace(0.0, 1.0, self.candidates + 1)
        with torch.no_grad():
            images = generator.decode(shifted(strengths)).clamp(0, 1)
            margins = target_margins(context, images)

        def evaluate(strength: float) -> tuple[torch.Tensor, float]:
            with torch.no_grad():
                image = generator.decode(shifted(torch.tensor([strength]))).clamp(0, 1)
                return image, float(target_margins(context, image)[0])

        search = refine_flip(strengths.tolist(), images, margins, evaluate, self.bisect_steps,
                             flip_margin=context.flip_margin)
        return assemble_counterfactual(context, name, sign, self.name, strengths.tolist(), images, search,
                                       nfe=generator.nfe - nfe_before)


# -- shared by the baselines ------------------------------------------------------------------------

class FlipSearch:
    """Where along a sweep the decision first flips, refined by bisection."""

    def __init__(self, minimal_strength: float | None, image: torch.Tensor, flipped: bool) -> None:
        self.minimal_strength = minimal_strength
        self.image = image  # [1, C, H, W]: at the minimal flip, or the strongest edit without a flip
        self.flipped = flipped


def target_margins(context: EditContext, images: torch.Tensor) -> torch.Tensor:
    """Target-label margins [B] (logit - threshold; > 0 = positive decision), differentiable."""
    return context.classifier.margins(images)[:, context.target_index]


def refine_flip(strengths: list[float], images: torch.Tensor, margins: torch.Tensor,
                evaluate: Callable[[float], tuple[torch.Tensor, float]], iterations: int,
                midpoint: Callable[[float, float], float | None] | None = None,
                flip_margin: float = 0.0) -> FlipSearch:
    """Bracket the first decision change along a sweep (index 0 = source) and bisect inside it.

    `evaluate(strength) -> (image [1,C,H,W], margin)` costs whatever the method costs (the point of
    comparing methods); `midpoint(low, high)` picks the next strength or None to stop (default: mean).
    A flip must pass the threshold by `flip_margin` logits, the same rule as ours (`is_flipped`).
    """
    positive = bool(margins[0] > 0)
    flips = [k for k in range(1, len(strengths)) if is_flipped(float(margins[k]), positive, flip_margin)]
    if not flips:
        return FlipSearch(None, images[-1:], False)
    high_index = flips[0]
    low, high, best = strengths[high_index - 1], strengths[high_index], images[high_index:high_index + 1]
    midpoint = midpoint or (lambda a, b: (a + b) / 2)
    for _ in range(iterations):
        middle = midpoint(low, high)
        if middle is None:
            break
        image, margin = evaluate(middle)
        if is_flipped(margin, positive, flip_margin):
            high, best = middle, image
        else:
            low = middle
    return FlipSearch(high, best, True)


def to_hwc(image: torch.Tensor) -> np.ndarray:
    """[1, C, H, W] or [C, H, W] tensor in [0, 1] -> H x W x C float32 numpy array."""
    image = image.detach().float().cpu()
    if image.dim() == 4:
        image = image[0]
    return image.permute(1, 2, 0).numpy().astype(np.float32)


def assemble_counterfactual(context: EditContext, attribute: str, sign: str, method: str,
                            strengths: list[float], images: torch.Tensor, search: FlipSearch,
                            nfe: int) -> Counterfactual:
    """Fill a Counterfactual from a sweep and its flip search.

    images[0] is the method's own unedited image (the DDIM reconstruction for the diffusion methods,
    the VAE reconstruction for Latent Shift): differences and proximity are measured against it, so
    they show what the *edit* changed, not what the method's round trip lost.
    """
    from xcounter.metrics import l1, ssim

    with torch.no_grad():
        probabilities = context.classifier.probabilities(images)[:, context.target_index]
        chosen = context.classifier.probabilities(search.image)[0, context.target_index]
    reference = to_hwc(images[0].clamp(0, 1))
    image = to_hwc(search.image.clamp(0, 1))
    return Counterfactual(
        attribute=attribute, sign=sign, method=method,
        strengths=[float(s) for s in strengths],
        probabilities=[float(p) for p in probabilities],
        minimal_strength=None if search.minimal_strength is None else float(search.minimal_strength),
        flipped=search.flipped,
        probability_before=float(probabilities[0]), probability_after=float(chosen),
        image=image, difference=image - reference,
        film=[to_hwc(frame.clamp(0, 1)) for frame in images],
        l1=float(l1(image, reference)), ssim=float(ssim(image, reference)),
        nfe=int(nfe),
    )
