"""Ours: the language-guided swap-step trajectory with a minimal-flip search.

For one attribute and sign the candidate swap steps are sampled in one UNet batch off the shared
source prefix (`xcounter.search.build_trajectory`); the first decision change is bracketed and
bisected on the Bézier curve through the points (VAE only). Trajectories do not depend on the
target label, so they are cached per inversion and reused for every target of a scan: the UNet is
paid once per attribute and sign.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from xcounter.disentangle.edit_region import pixel_prior, prior_region
from xcounter.disentangle.prompt_edit import spliced_embedding
from xcounter.disentangle.trajectories import (DEFAULT_STRENGTHS, SIGN_VALUE, resolve_edit_settings,
                                               select_swap_steps)
from xcounter.edit_pruning import PART_FRACTIONS, prune_edit
from xcounter.errors import XCounterError
from xcounter.explanation import Counterfactual
from xcounter.methods.base import SIGNS, EditContext
from xcounter.metrics import cfrt, direction_cosine_along, l1, ssim
from xcounter.search import (DEFAULT_TOLERANCE, Trajectory, build_trajectory, checked_anchor, minimal_flip,
                              shown_sample)

if TYPE_CHECKING:
    from xcounter.attributes import Attribute

#: at most this many decoded frames per counterfactual (the report's film strip)
FILM_FRAMES = 6
#: default UNet budget per counterfactual (one attribute, one sign): keeps an explanation under
#: 150 NFE per attribute for 20-50 DDIM steps
DEFAULT_MAX_NFE = 70
#: default UNet budget per flip for further swap steps between the bracketing samples (`shown="sample"`).
#: Off (0) by default: the weakest flipping sample is closer to the minimal edit, but the generator draws the
#: attribute fainter there. Quality benchmark at 60 (one or two samples nearer the crossing; a sample at
#: strength s costs about 2·s·steps at edit guidance != 1): the oracle saw the intended change with all else
#: kept on CXR 0.65 -> 0.60, skin 0.45 -> 0.40, and skin's intended change at all 0.70 -> 0.55 (N = 20 each;
#: docs/CONTRACTS.md, Engine)
DEFAULT_REFINE_NFE = 0
#: kinds whose report sentence an edit restates. Not acquisition unless its edit is confined (`where`):
#: "Portable technique." describes the whole film, and restating it re-rendered the whole film (on 10 phantoms,
#: removing it that way added consolidation on 7 and flipped the clean classifier's Consolidation on 5; the
#: direction alone: 1). Confined to the top band, restating is what removes the stamp: the rho-1.0 portable
#: classifier's four unflipped removals (direction alone: the oracle saw the stamp stay) all flipped with the
#: stamp gone, and the clean classifier flipped on none of 8 (see `restates`)
RESTATED_KINDS = ("pathology", "device", "artifact")
#: signs whose edits are confined to their DiffEdit region by default. Removals only: what is removed has a
#: place in the scan for the mask to find, an addition does not (DiffEdit's known limit). On 10 phantoms per
#: domain, confining removals raised "intended change, all else kept" for CXR from 0.27 to 0.36 at the same
#: flip rate bar one; confining additions left CXR unchanged and cut the skin ruler's flips from 5/5 to 3/5
LOCALISED_SIGNS = ("remove",)


def restates(attribute: "Attribute") -> bool:
    """Whether an edit of `attribute` swaps its report sentence (`RESTATED_KINDS`, or any confined attribute)."""
    return attribute.kind in RESTATED_KINDS or attribute.where != "anywhere"


def to_hwc(image: torch.Tensor) -> np.ndarray:
    """[1, C, H, W] or [C, H, W] in [0, 1] -> H x W x C float32."""
    image = image.detach().float().cpu()
    if image.dim() == 4:
        image = image[0]
    return image.permute(1, 2, 0).numpy().astype(np.float32)


def localised_signs(signs: Sequence[str] | bool) -> tuple[str, ...]:
    """Validated signs to confine (True = both, False = none)."""
    if isinstance(signs, bool):
        return SIGNS if signs else ()
    signs = (signs,) if isinstance(signs, str) else tuple(signs)
    unknown = [s for s in signs if s not in SIGNS]
    if unknown:
        raise XCounterError(f"localise takes signs among {', '.join(SIGNS)}, got {', '.join(map(str, unknown))}")
    return tuple(s for s in SIGNS if s in signs)


def region_image(region: torch.Tensor | None, size: tuple[int, int],
                 pixels: torch.Tensor | None = None) -> np.ndarray | None:
    """A latent edit region ([1, 1, h, w]) at image resolution (H x W, nearest: each latent pixel a block), cut to
    a pixel mask ([1, 1, H', W'] in [0, 1], `Trajectory.pixels`; where it is at least half) where the trajectory has
    one: where the edit could act, in {0, 1}."""
    shown = None
    for mask in (region, pixels):
        if mask is None:
            continue
        resized = (torch.nn.functional.interpolate(mask.float().reshape(1, 1, *mask.shape[-2:]), size=size,
                                                   mode="nearest") >= 0.5).float()
        shown = resized if shown is None else shown * resized
    return None if shown is None else shown[0, 0].cpu().numpy().astype(np.float32)


def film_indices(n_points: int, frames: int = FILM_FRAMES) -> list[int]:
    """Evenly spread point indices (always the first and the last) for a film of at most `frames`."""
    if n_points <= frames:
        return list(range(n_points))
    return sorted({int(round(i)) for i in np.linspace(0, n_points - 1, frames)})


class TrajectoryMethod:
    """Swap-step trajectory counterfactuals (the paper's method) with a Bézier minimal-flip search.

    Args:
        alpha: edit scale: the edited embedding is E(src) + sign·α·d_a; None: the generator's own for the
            attribute's kind (`SDGenerator.kind_edits`), else `DEFAULT_ALPHA`.
        edit_guidance: w after the swap, eps_src + w (eps_edit - eps_src) (1 = plain swap, half the NFE);
            None: the generator's own for the attribute's kind, else its own (`SDGenerator.edit_guidance`),
            else `DEFAULT_EDIT_GUIDANCE`. See `resolve_edit_settings`.
        strengths: candidate edit strengths (1 - λ/steps) sampled in one batch.
        swap_steps: explicit candidate swap steps λ (overrides `strengths`).
        tolerance: bisection tolerance on the Bézier parameter (≈ strength).
        max_nfe: UNet budget per counterfactual (`context.max_nfe` wins when set).
        oracle: an attribute oracle (`measure(images) -> {attr: Tensor[B]}`) for `oracle_change` and CFRT.
        restate: edit from the report with the attribute's sentence swapped (see `restates`).
        localise: signs whose edits act only inside their DiffEdit region (`edit_region`); True = both.
        shown: which image a flip is shown with. "sample" (default): the weakest swap-step sample found that
            flips, a whole generator output; "crossing": the Bézier curve at the minimal flip, a blend of the
            samples' latents. Either way `minimal_strength` is the crossing. Why "sample": a blend of two z_0
            decodes as a double exposure (a half-faded tube, a haze where an effusion was, which the oracle
            reads as consolidation), and the oracle saw the intended change with everything else kept more
            often on the sample (docs/CONTRACTS.md, Engine).
        refine_nfe: UNet budget per flip for further swap steps between the bracketing samples, so the sample
            shown is the weakest one found at or past the crossing (`xcounter.search.shown_sample`); 0 = show
            the first flipping control point; None = no limit.
        prune: show a flip with only the parts of the sample's edit the decision needs (`xcounter.edit_pruning`:
            what the generator changed, split into connected parts, the fewest strongest that still flip pasted
            onto the unedited image; two classifier calls per level of the generator's `prune_fractions`, no
            UNet). The whole sample is kept as
            `Counterfactual.sample`. Whether the edit flips and its minimal strength do not depend on it. A pruned
            removal is refilled at the unedited image's levels where the generator sets `fill_removals`
            (`xcounter.removal_fill`; shown only if it still flips, `Counterfactual.filled`).
        anchor: what the edit is drawn onto. "reconstruction" (default): the counterfactual is the
            generator's own output, compared with its reconstruction of the scan; "scan": the scan plus what
            the edit changed (each sample minus the reconstruction; the generator's own pixels where the edit
            acted, `xcounter.search.ScanAnchor`), so what the inversion lost (a nodule, the lighting) stays as
            the scan has it and the unedited image is the scan itself. The classifier is asked on the images
            shown either way.
    """

    name = "trajectory"
    SHOWN = ("sample", "crossing")

    def __init__(self, alpha: float | None = None, strengths: Sequence[float] = DEFAULT_STRENGTHS,
                 swap_steps: Sequence[int] | None = None, tolerance: float = DEFAULT_TOLERANCE,
                 max_nfe: int | None = DEFAULT_MAX_NFE, oracle=None,
                 edit_guidance: float | None = None, restate: bool = True,
                 localise: Sequence[str] = LOCALISED_SIGNS, shown: str = "sample",
                 refine_nfe: int | None = DEFAULT_REFINE_NFE, anchor: str = "reconstruction",
                 prune: bool = True):
        self.anchor = checked_anchor(anchor)
        if not isinstance(prune, bool):
            raise XCounterError(f"prune must be True or False, got {prune!r}")
        self.prune = prune
        if shown not in self.SHOWN:
            raise XCounterError(f"shown must be one of {', '.join(self.SHOWN)}, got {shown!r}")
        whole = isinstance(refine_nfe, int) or (isinstance(refine_nfe, float) and refine_nfe.is_integer())
        if refine_nfe is not None and (isinstance(refine_nfe, bool) or not whole or refine_nfe < 0):
            raise XCounterError(f"refine_nfe must be a whole number >= 0 (or None for no limit), "
                                f"got {refine_nfe!r}")
        self.refine_nfe = None if refine_nfe is None else int(refine_nfe)
        self.shown = shown
        self.alpha = None if alpha is None else float(alpha)
        self.localise = localised_signs(localise)
        self.restate = bool(restate)
        self.edit_guidance = None if edit_guidance is None else float(edit_guidance)
        self.strengths = tuple(strengths)
        self.swap_steps = None if swap_steps is None else [int(s) for s in swap_steps]
        self.tolerance = tolerance
        self.max_nfe = max_nfe
        self.oracle = oracle
        self._cache: dict[tuple, tuple] = {}

    def reset(self) -> None:
        """Forget cached trajectories (they hold latents of the last scan)."""
        self._cache.clear()

    # -- trajectories (UNet) --------------------------------------------------------------------------
    def edit_settings_for(self, generator, attribute: "Attribute | None" = None,
                          sign: str | None = None) -> tuple[float, float]:
        """(α, w) `attribute`'s edits toward `sign` are drawn with (`resolve_edit_settings`)."""
        return resolve_edit_settings(self.alpha, self.edit_guidance, generator,
                                     None if attribute is None else attribute.kind, sign)

    def candidate_swap_steps(self, context: EditContext, steps: int, edit_guidance: float | None = None) -> list[int]:
        """Swap steps within the UNet budget at the edit guidance the edit is drawn with (w = 1 costs half)."""
        if self.swap_steps is not None:
            return sorted({s for s in self.swap_steps if 0 <= s < steps}, reverse=True)
        budget = context.max_nfe if context.max_nfe is not None else self.max_nfe
        if edit_guidance is None:
            edit_guidance = self.edit_settings_for(context.generator)[1]
        return select_swap_steps(steps, self.strengths, budget, context.generator.guidance_scale, edit_guidance)

    def trajectory(self, context: EditContext, attribute: "Attribute", sign: str) -> Trajectory:
        """The attribute's swap-step trajectory for this scan (cached: independent of the target)."""
        if sign not in SIGNS:
            raise XCounterError(f"sign must be one of {', '.join(SIGNS)}, got '{sign}'")
        alpha, edit_guidance = self.edit_settings_for(context.generator, attribute, sign)
        key = (id(context.inversion), attribute.name, attribute.where, sign, alpha, edit_guidance,
               self.restate, self.localise, self.anchor)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is context.inversion:
            return cached[1]
        generator = context.generator
        prefix = context.prefix if context.prefix is not None else getattr(context.inversion, "prefix", None)
        made_from = getattr(prefix, "source", None)
        stale = prefix is not None and ((context.steps is not None and len(prefix) != context.steps + 1) or (
            made_from is not None and not torch.equal(made_from.to(context.source_embedding),
                                                      context.source_embedding.reshape(made_from.shape))))
        if prefix is None or stale:  # the shared prefix must come from this source embedding and step count
            prefix = generator.source_path(context.inversion, context.source_embedding, context.steps)
        direction = context.directions.get(attribute.name)
        if direction is None:
            from xcounter.disentangle.directions import LanguageDirections
            direction = LanguageDirections(generator, context.attributes, names=[attribute.name],
                                           disentangle=False).fit().directions_[attribute.name]
        steps = len(prefix) - 1
        restated = attribute.restated(context.prompt, sign) \
            if self.restate and context.prompt and restates(attribute) else None
        trajectory = build_trajectory(generator, context.inversion.z_T, prefix, context.source_embedding, direction,
                                      attribute=attribute.name, sign=sign, alpha=alpha,
                                      swap_steps=self.candidate_swap_steps(context, steps, edit_guidance),
                                      edit_guidance=edit_guidance,
                                      localise=sign in self.localise,
                                      prior=prior_region(attribute.where, prefix[-1].shape, context.inversion.image),
                                      anchor=context.inversion.image if self.anchor == "scan" else None,
                                      pixel_prior=pixel_prior(attribute.where, context.inversion.image, sign),
                                      edit_base=None if restated is None else spliced_embedding(
                                          generator, context.prompt, restated, context.source_embedding))
        self._cache[key] = (context.inversion, trajectory)
        return trajectory

    # -- the counterfactual (VAE + classifier only) -----------------------------------------------------
    def generate(self, context: EditContext, attribute: "Attribute | None", sign: str) -> Counterfactual:
        """The minimal flipping edit of `attribute` (sign "add" | "remove") for `context.target`."""
        if attribute is None:
            raise XCounterError("the trajectory method edits a named attribute; pass one")
        trajectory = self.trajectory(context, attribute, sign)
        classifier, generator, index = context.classifier, context.generator, context.target_index

        def margin_of(latents: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return classifier.margins(trajectory.render(generator, latents))[:, index].float().cpu()

        with torch.no_grad():
            point_margins = classifier.margins(trajectory.images)[:, index].float().cpu()
        flip = minimal_flip(trajectory.points, trajectory.strengths, point_margins.tolist(), margin_of,
                            tol=self.tolerance, flip_margin=context.flip_margin)
        reference = to_hwc(trajectory.images[0])
        with torch.no_grad():
            crossing = trajectory.render(generator, flip.latent.reshape(1, *trajectory.points.shape[1:]))
            crossing_l1, refine_nfe, sample, pruned, filled = None, 0, None, None, None
            if flip.flipped and self.shown == "sample":
                shown = shown_sample(trajectory, flip,
                                     lambda image: float(classifier.margins(image)[0, index]),
                                     reference_positive=float(point_margins[0]) > 0,
                                     flip_margin=context.flip_margin, max_nfe=self.refine_nfe)
                image, image_strength, refine_nfe = shown.image, shown.strength, shown.nfe
                margin_after = shown.margin
                if self.prune:
                    pruned = prune_edit(trajectory.images[:1], image,
                                        lambda images: classifier.margins(images)[:, index],
                                        reference_positive=float(point_margins[0]) > 0,
                                        flip_margin=context.flip_margin,
                                        fractions=getattr(generator, "prune_fractions", PART_FRACTIONS))
                    if pruned is not None:
                        sample, image, margin_after = image, pruned.image, pruned.margin
                        if sign == "remove" and getattr(generator, "fill_removals", False):
                            filled = self._filled(trajectory.images[:1], sample, pruned.mask, classifier, index,
                                                  float(point_margins[0]) > 0, context.flip_margin)
                            if filled is not None:
                                image, margin_after = filled
                probability_after = float(torch.sigmoid(torch.tensor(margin_after)))
                crossing_l1 = l1(to_hwc(crossing), reference)
            else:
                image = crossing
                probability_after = float(torch.sigmoid(classifier.margins(image)[0, index]))
                image_strength = flip.strength if flip.flipped else float(trajectory.strengths[-1])
        counterfactual_image = to_hwc(image)
        counterfactual = Counterfactual(
            attribute=attribute.name, sign=sign, method=self.name,
            strengths=[float(s) for s in trajectory.strengths],
            probabilities=[float(p) for p in torch.sigmoid(point_margins)],
            minimal_strength=flip.strength, image_strength=image_strength, crossing_l1=crossing_l1,
            flipped=flip.flipped,
            probability_before=float(torch.sigmoid(point_margins[0])), probability_after=probability_after,
            image=counterfactual_image, difference=counterfactual_image - reference,
            film=[to_hwc(trajectory.images[k]) for k in film_indices(len(trajectory.strengths))],
            l1=l1(counterfactual_image, reference), ssim=ssim(counterfactual_image, reference),
            direction_cosine=direction_cosine_along(trajectory.points), nfe=trajectory.nfe + refine_nfe,
            region=region_image(trajectory.region, counterfactual_image.shape[:2],
                                None if trajectory.pixels is None else trajectory.pixels.mask),
            sample=None if sample is None else to_hwc(sample),
            parts=None if pruned is None else pruned.parts, parts_kept=None if pruned is None else pruned.kept,
            filled=filled is not None,
            kept=None if filled is None else np.asarray(pruned.mask, dtype=np.float32),
        )
        if self.oracle is not None:
            self._add_oracle(counterfactual, trajectory, image, attribute.name, sign)
        return counterfactual

    @staticmethod
    def _filled(unedited: torch.Tensor, sample: torch.Tensor, mask: np.ndarray, classifier, index: int,
                reference_positive: bool, flip_margin: float) -> tuple[torch.Tensor, float] | None:
        """(image, margin): a pruned removal's kept parts (where `mask` is at least half) refilled at the unedited
        image's levels around them (`xcounter.removal_fill`); None when the refilled image no longer flips the
        decision, so the pasted one is shown. One classifier call, no UNet."""
        from xcounter.removal_fill import poisson_fill
        from xcounter.search import is_flipped

        region = np.asarray(mask) >= 0.5
        if not region.any():
            return None
        filled = poisson_fill(to_hwc(unedited), to_hwc(sample), region)
        image = torch.from_numpy(np.ascontiguousarray(filled, dtype=np.float32)).permute(2, 0, 1)[None].to(unedited)
        with torch.no_grad():
            margin = float(classifier.margins(image)[0, index])
        return (image, margin) if is_flipped(margin, reference_positive, flip_margin) else None

    def _add_oracle(self, counterfactual: Counterfactual, trajectory: Trajectory, image: torch.Tensor,
                    attribute: str, sign: str) -> None:
        """oracle(counterfactual) - oracle(reconstruction) for every attribute, and CFRT along the trajectory."""
        with torch.no_grad():
            along = self.oracle.measure(trajectory.images)
            at_flip = self.oracle.measure(image)
        counterfactual.oracle_change = {name: float(at_flip[name][0] - values[0]) for name, values in along.items()}
        if attribute in along and trajectory.images.shape[0] > 1:
            changes = {name: (values[1:] - values[0]).float().cpu().numpy() for name, values in along.items()}
            counterfactual.cfrt = cfrt(changes, attribute, SIGN_VALUE[sign])
