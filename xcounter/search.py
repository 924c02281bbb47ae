"""Minimal-flip search along a swap-step trajectory.

1. Candidates: for one attribute and sign, z_0 at a few swap steps λ (strengths 1 - λ/steps),
   computed in ONE UNet batch branching off the shared source prefix (`build_trajectory`).
2. Bracket: the first control point whose decision differs from the reconstruction's.
3. Bisect the Bézier parameter t between the bracketing points; every probe is a VAE decode and a
   classifier call, never a UNet call, so refinement costs no NFE (`minimal_flip`).
4. Show the flip with a real generator sample: the weakest swap step at or past the crossing that flips,
   found by a few extra swap steps between the bracketing points within a UNet budget (`shown_sample`).

`bisect_flip` is a pure function over a callable `decision(t) -> margin` so it can be tested
on synthetic curves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F

from xcounter.disentangle.edit_region import edit_region
from xcounter.disentangle.trajectories import (bezier, edited_embedding, point_parameters, strength_of,
                                               swap_cost, swap_step_points)
from xcounter.errors import XCounterError

if TYPE_CHECKING:
    from xcounter.generators import SDGenerator

#: default tolerance on the Bézier parameter (≈ strength) of the minimal flip
DEFAULT_TOLERANCE = 0.02
#: how far (in logits) past the threshold an edit must push the decision to count as a flip. A scan that
#: sits near its threshold would otherwise "flip" for almost any edit, and every attribute would "drive" it.
DEFAULT_FLIP_MARGIN = 1.0


@dataclass
class Bisection:
    """Where a decision changes on [lo, hi]: `t` is the smallest probed parameter that is flipped."""
    t: float
    margin: float  # margin at t (its sign is the flipped decision)
    lower: float  # largest probed parameter that is not flipped (t - lower <= tol when converged)
    evaluations: int
    converged: bool


def is_flipped(margin: float, reference_positive: bool, flip_margin: float = 0.0) -> bool:
    """Whether a decision with this margin (logit - threshold) is the opposite of the reference decision,
    by at least `flip_margin` logits."""
    return margin < -flip_margin if reference_positive else margin > flip_margin


def bisect_flip(decision: Callable[[float], float], lo: float, hi: float, *, reference_positive: bool,
                tol: float = DEFAULT_TOLERANCE, max_iter: int = 30, margin_hi: float | None = None,
                flip_margin: float = 0.0) -> Bisection:
    """Bisect [lo, hi] for the decision change, given that `lo` keeps and `hi` flips the reference decision.

    `decision(t)` returns the classifier margin (logit - threshold) at parameter t; a decision is
    flipped when the margin lies on the other side of the threshold than `reference_positive`, by at
    least `flip_margin`. Stops when the bracket is
    narrower than `tol` or after `max_iter` probes.
    """
    evaluations = 0
    if margin_hi is None:
        margin_hi = float(decision(hi))
        evaluations += 1
    if not is_flipped(margin_hi, reference_positive, flip_margin):
        raise ValueError("bisect_flip needs a flipped decision at `hi`")
    for _ in range(max_iter):
        if hi - lo <= tol:
            break
        middle = 0.5 * (lo + hi)
        margin = float(decision(middle))
        evaluations += 1
        if is_flipped(margin, reference_positive, flip_margin):
            hi, margin_hi = middle, margin
        else:
            lo = middle
    return Bisection(t=hi, margin=margin_hi, lower=lo, evaluations=evaluations, converged=hi - lo <= tol)


#: what a trajectory's samples are drawn onto (`build_trajectory(anchor=...)`, `TrajectoryMethod(anchor=...)`):
#: the generator's own reconstruction of the scan, or the scan itself plus what the edit changed
ANCHORS = ("reconstruction", "scan")


def checked_anchor(value: object, what: str = "anchor") -> str:
    if value not in ANCHORS:
        raise XCounterError(f"{what} must be one of {', '.join(ANCHORS)}, got {value!r}")
    return str(value)


#: an edit's own pixels: where it changed the decoded image by at least this share of its largest change (and at
#: least `ANCHOR_FLOOR`), a counterfactual drawn onto the scan shows the generator's rendering, not the scan's
#: residual detail; below, the scan's detail fades back in linearly. Why: the residual holds what the
#: reconstruction missed of the scan, including the finding or device itself, and a removal drawn as
#: scan + (sample - reconstruction) left a ghost of what it took away (a tube's sharp edge)
ANCHOR_FADE = 0.15
#: ... and at least this much (image units): a faint edit must not swap the scan's detail for the reconstruction's
ANCHOR_FLOOR = 0.05


@dataclass
class ScanAnchor:
    """Draws decoded latents onto the scan: decode(z) + (scan - decode(P_0)), the scan's detail faded out where
    the edit itself changed the image (`ANCHOR_FADE`). P_0 renders as the scan."""
    scan: torch.Tensor  # [1, C, H, W] the scan at the generator's resolution
    base: torch.Tensor  # [1, C, H, W] decode(P_0), unclamped: the reconstruction the edit is measured from

    @property
    def residual(self) -> torch.Tensor:
        """What the reconstruction lost of the scan."""
        return self.scan.to(self.base) - self.base

    def apply(self, decoded: torch.Tensor) -> torch.Tensor:
        """Decoded latents [B, C, H, W] (unclamped) drawn onto the scan (unclamped)."""
        base = self.base.to(decoded)
        change = (decoded - base).abs().amax(dim=1, keepdim=True)
        largest = change.flatten(1).amax(dim=1).reshape(-1, 1, 1, 1)
        scale = (ANCHOR_FADE * largest).clamp_min(ANCHOR_FLOOR)
        return decoded + (1 - (change / scale).clamp(0, 1)) * self.residual.to(decoded)


@dataclass
class PixelRegion:
    """Keeps a trajectory's images as its first point outside a pixel mask (`edit_region.pixel_prior`): a finer
    cut than the latent region, applied after decoding."""
    base: torch.Tensor  # [1, C, H, W] in [0, 1]: P_0 as the trajectory shows it (the scan or its reconstruction)
    mask: torch.Tensor  # [1, 1, H, W] in [0, 1]: where the edit may change the image

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [0, 1] with everything outside the mask put back to `base`."""
        base, mask = self.base.to(images), self.mask.to(images)
        return base + mask * (images - base)


@dataclass
class SwapSampler:
    """What a trajectory's samples were drawn from, kept so that more swap steps can be drawn later exactly as
    the first ones were (the shown sample's refinement, `shown_sample`)."""
    generator: "SDGenerator"
    z_T: torch.Tensor
    prefix: list[torch.Tensor]
    source: torch.Tensor
    edited: torch.Tensor
    edit_guidance: float = 1.0
    region: torch.Tensor | None = None
    anchor: ScanAnchor | None = None  # what every decode is drawn onto, as the trajectory's own
    pixels: PixelRegion | None = None  # the pixel mask every decode is cut to, as the trajectory's own

    @property
    def steps(self) -> int:
        return len(self.prefix) - 1

    def cost(self, swap_step: int) -> int:
        """UNet sample-evaluations one more sample at `swap_step` costs off the shared prefix."""
        return swap_cost(swap_step, self.steps, self.generator.guidance_scale, self.edit_guidance)

    def draw(self, swap_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_0 [1, 4, h, w], decoded image [1, C, H, W] in [0, 1]) of the swap at `swap_step`."""
        with torch.no_grad():
            latent = swap_step_points(self.generator, self.z_T, self.source, self.edited, [int(swap_step)],
                                      prefix=self.prefix, steps=self.steps, edit_guidance=self.edit_guidance,
                                      region=self.region)
            return latent, render_latents(self.generator, latent, self.anchor, self.pixels)


@dataclass
class Trajectory:
    """One attribute edit (one sign): control points P_0 (reconstruction) .. P_K (strongest edit)."""
    attribute: str
    sign: str
    swap_steps: list[int]  # λ per point, P_0 has λ = steps (no swap)
    strengths: list[float]  # 1 - λ/steps, ascending from 0
    points: torch.Tensor  # [K+1, 4, h, w] latents z_0
    images: torch.Tensor  # [K+1, C, H, W] decoded points in [0, 1]
    nfe: int  # UNet sample-evaluations spent computing the points
    region: torch.Tensor | None = None  # [1, 1, h, w] latent region the edit was confined to (None: everywhere)
    sampler: SwapSampler | None = None  # draws further swap steps of this same edit (None: it cannot)
    #: swap step -> decoded image of the further samples drawn so far (shared by every target of the scan)
    drawn: dict[int, torch.Tensor] = field(default_factory=dict)
    #: what every decoded latent is drawn onto (`build_trajectory(anchor=...)`): P_0 renders as the scan itself
    #: (None: images are plain decodes)
    anchor: ScanAnchor | None = None
    #: the pixel mask every decoded latent is cut to (`build_trajectory(pixel_prior=...)`; None: the latent
    #: region alone confines the edit)
    pixels: PixelRegion | None = None

    @property
    def residual(self) -> torch.Tensor | None:
        """The scan minus the decoded source point (None: not drawn onto the scan)."""
        return None if self.anchor is None else self.anchor.residual

    @property
    def steps(self) -> int:
        return int(self.swap_steps[0])

    def render(self, generator: "SDGenerator", latents: torch.Tensor) -> torch.Tensor:
        """Latents z_0 [B, 4, h, w] as the images this trajectory shows [B, C, H, W] in [0, 1]."""
        return render_latents(generator, latents, self.anchor, self.pixels)

    def image_at(self, swap_step: int) -> torch.Tensor:
        """The decoded sample at `swap_step` [1, C, H, W]: a control point's, else drawn once and kept."""
        if swap_step in self.swap_steps:
            k = self.swap_steps.index(swap_step)
            return self.images[k:k + 1]
        if swap_step not in self.drawn:
            if self.sampler is None:
                raise ValueError("this trajectory cannot draw further samples (no sampler)")
            self.drawn[swap_step] = self.sampler.draw(swap_step)[1].to(self.images)
        return self.drawn[swap_step]


def render_latents(generator: "SDGenerator", latents: torch.Tensor, anchor: ScanAnchor | None = None,
                   pixels: PixelRegion | None = None) -> torch.Tensor:
    """decode(z_0) (drawn onto the scan with an `anchor`, cut to a `pixels` mask), clamped to [0, 1]."""
    with torch.no_grad():
        decoded = generator.decode(latents)
        images = (decoded if anchor is None else anchor.apply(decoded)).clamp(0, 1)
        return images if pixels is None else pixels.apply(images)


def build_trajectory(generator: "SDGenerator", z_T: torch.Tensor, prefix: list[torch.Tensor],
                     source: torch.Tensor, direction: torch.Tensor, *, attribute: str, sign: str, alpha: float,
                     swap_steps: Sequence[int], edit_guidance: float = 1.0,
                     edit_base: torch.Tensor | None = None, localise: bool = False,
                     prior: torch.Tensor | None = None, anchor: torch.Tensor | None = None,
                     pixel_prior: torch.Tensor | None = None) -> Trajectory:
    """Evaluate all candidate swap steps in one batch off the shared prefix, then decode every point.

    The prefix is denoised with `source`; after the swap the UNet sees `edit_base` (default: `source`;
    the embedding of a restated prompt when the report names the attribute) + sign·α·direction.
    `localise` confines the edit to where the two embeddings disagree (`edit_region`, DiffEdit's mask);
    `prior` ([1, 1, h, w], `prior_region`) to where the attribute can be, intersected with that mask when
    both are given. The region and its probes' NFE are part of the trajectory.
    `anchor` ([1, C, H, W], the scan at the generator's resolution): every decoded latent is drawn onto the
    scan (`ScanAnchor`), so the trajectory starts at the scan itself and each sample is the scan plus what the
    edit changed (what the inversion lost stays the scan's, except where the edit itself acted).
    `pixel_prior` ([1, 1, H, W] in [0, 1], `pixel_prior`): outside it every image stays P_0's (`PixelRegion`).
    """
    steps = len(prefix) - 1
    swap_steps = sorted({int(s) for s in swap_steps if 0 <= int(s) < steps}, reverse=True)
    edited = edited_embedding(source if edit_base is None else edit_base.to(source), direction, sign, alpha)
    before = generator.nfe
    region = edit_region(generator, prefix, source, edited) if localise and swap_steps else None
    if prior is not None and swap_steps:
        prior = prior.to(prefix[-1].device)
        region = prior if region is None else region.to(prior) * prior
    with torch.no_grad():
        edited_points = swap_step_points(generator, z_T, source, edited, swap_steps, prefix=prefix, steps=steps,
                                         edit_guidance=edit_guidance, region=region)
        points = torch.cat([prefix[-1].to(edited_points), edited_points], dim=0)
        decoded = generator.decode(points)
        onto = None if anchor is None else ScanAnchor(anchor.to(decoded), decoded[:1])
        images = (decoded if onto is None else onto.apply(decoded)).clamp(0, 1)
        cut = None
        if pixel_prior is not None and swap_steps:
            mask = F.interpolate(pixel_prior.to(images), size=tuple(images.shape[-2:]), mode="bilinear",
                                 align_corners=False) if tuple(pixel_prior.shape[-2:]) != tuple(images.shape[-2:]) \
                else pixel_prior.to(images)
            cut = PixelRegion(images[:1].clone(), mask)
            images = cut.apply(images)
    return Trajectory(attribute=attribute, sign=sign, swap_steps=[steps] + swap_steps,
                      strengths=[strength_of(s, steps) for s in [steps] + swap_steps],
                      points=points, images=images, nfe=generator.nfe - before, region=region,
                      sampler=SwapSampler(generator, z_T, prefix, source, edited, edit_guidance, region, onto, cut),
                      anchor=onto, pixels=cut)


@dataclass
class FlipResult:
    """The minimal edit found on one trajectory."""
    flipped: bool
    t: float | None  # Bézier parameter of the minimal flip (None: no flip)
    strength: float | None  # edit strength at t (Bernstein-weighted point strengths)
    latent: torch.Tensor  # the counterfactual latent: B(t) at the flip, the strongest point otherwise
    margin: float
    evaluations: int  # VAE decode + classifier probes spent on the refinement
    point: int | None = None  # the first control point whose own decision is flipped (None: no flip)


def minimal_flip(points: torch.Tensor, strengths: Sequence[float], point_margins: Sequence[float],
                 margin_of: Callable[[torch.Tensor], torch.Tensor], *, tol: float = DEFAULT_TOLERANCE,
                 max_iter: int = 30, flip_margin: float = 0.0) -> FlipResult:
    """Find the smallest edit on the Bézier curve through `points` that flips the decision of points[0].

    `point_margins[k]` is the target margin at control point k (already computed in the candidate
    batch); `margin_of(latents [B, ...]) -> margins [B]` decodes and classifies new probes. A probe counts
    as flipped when its margin is past the threshold by at least `flip_margin` (see `is_flipped`).
    The first flipped control point brackets the search with its predecessor; because the Bézier
    curve only passes through its end points, the bracket is checked on the curve and widened
    (to 0 below, to 1 above) when needed. If the curve never flips although a control point does
    (a non-monotone trajectory), that control point itself is the counterfactual.
    """
    reference_positive = float(point_margins[0]) > 0
    def flipped(margin: float) -> bool:
        return is_flipped(margin, reference_positive, flip_margin)

    flips = [k for k, m in enumerate(point_margins) if flipped(float(m))]
    if not flips:
        return FlipResult(False, None, None, points[-1], float(point_margins[-1]), 0)
    first = flips[0]
    parameters = point_parameters(points.shape[0])
    strength_curve = torch.tensor([float(s) for s in strengths], dtype=torch.float64)

    probes = 0

    def decision(t: float) -> float:
        nonlocal probes
        probes += 1
        return float(margin_of(bezier(points, t).unsqueeze(0).to(points.dtype))[0])

    lo, hi = parameters[first - 1], parameters[first]
    margin_hi = decision(hi)
    if not flipped(margin_hi):
        hi, margin_hi = 1.0, float(point_margins[-1])  # B(1) is the last control point
        if not flipped(margin_hi):
            return FlipResult(True, parameters[first], float(strengths[first]), points[first],
                              float(point_margins[first]), probes, first)
    if lo > 0 and flipped(decision(lo)):
        lo = 0.0  # B(0) is the reconstruction, never flipped
    found = bisect_flip(decision, lo, hi, reference_positive=reference_positive, tol=tol, max_iter=max_iter,
                        margin_hi=margin_hi, flip_margin=flip_margin)
    strength = float(bezier(strength_curve, found.t))
    return FlipResult(True, found.t, strength, bezier(points, found.t).to(points.dtype), found.margin, probes,
                      first)


@dataclass
class ShownSample:
    """The generator sample a flip is shown with: the weakest swap step found past the crossing that flips."""
    swap_step: int
    strength: float
    image: torch.Tensor  # [1, C, H, W] in [0, 1]
    margin: float  # target margin on `image`
    nfe: int  # UNet sample-evaluations of the further samples the search visited (0: a control point)
    visited: list[tuple[float, float]] = field(default_factory=list)  # (strength, margin) of those samples


def shown_sample(trajectory: Trajectory, flip: FlipResult, margin_of_image: Callable[[torch.Tensor], float],
                 *, reference_positive: bool, flip_margin: float = 0.0,
                 max_nfe: int | None = None) -> ShownSample:
    """The weakest swap-step sample at or past `flip`'s crossing that flips, within `max_nfe` more UNet calls.

    The control points are a few swap steps (strengths 0, 0.25, 0.5, 1.0 at the default budget), so the first
    that flips can be far past the crossing: the edit the curve found at 0.56 is shown at 1.0, with every side
    effect a full-strength edit has. The swap steps between the bracketing points are searched weakest first:
    the first probe is the step just past the crossing (where a sample most likely first flips), then bisects
    towards the flipping control point; every probe is one more sample off the shared prefix, cached on the
    trajectory for the scan's other targets. Its cost counts in `nfe` either way, so the search (and the
    budget it stops at) does not depend on the order targets are explained in. Without a flip to refine, or
    when no probe flips within the budget, the first flipping control point is shown.
    """
    if not flip.flipped or flip.point is None:
        raise ValueError("shown_sample needs a flip")
    k = flip.point
    image = trajectory.images[k:k + 1]
    fallback = ShownSample(trajectory.swap_steps[k], float(trajectory.strengths[k]), image,
                           float(margin_of_image(image)), 0)
    if trajectory.sampler is None or k == 0 or flip.strength is None:
        return fallback
    stronger, weaker = trajectory.swap_steps[k], trajectory.swap_steps[k - 1]
    past_crossing = math.floor(trajectory.steps * (1.0 - flip.strength) + 1e-9)  # latest λ at or past it
    candidates = list(range(min(weaker - 1, past_crossing), stronger, -1))  # weakest first
    best, spent, visited = fallback, 0, []
    lo, hi = -1, len(candidates)  # candidates[lo] keeps the decision, candidates[hi] flips
    while lo + 1 < hi:
        i = (lo + hi) // 2 if visited else 0  # the first probe: the step just past the crossing
        cost = trajectory.sampler.cost(candidates[i])
        if max_nfe is not None and spent + cost > max_nfe:
            break
        image = trajectory.image_at(candidates[i])
        spent += cost
        margin = float(margin_of_image(image))
        visited.append((strength_of(candidates[i], trajectory.steps), margin))
        if is_flipped(margin, reference_positive, flip_margin):
            hi = i
            best = ShownSample(candidates[i], strength_of(candidates[i], trajectory.steps), image, margin, 0)
        else:
            lo = i
    best.nfe, best.visited = spent, visited
    return best
