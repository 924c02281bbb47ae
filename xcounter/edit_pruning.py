"""The part of an edit the decision needs: a flipping counterfactual pruned to its fewest parts that still flip.

Why: a generator asked for one change draws more than that change. Removing an effusion also moved a nodule
in the other lung or a film marker at the top; adding a ruler dimmed the skin's lighting. The minimal flip is
found along the trajectory (how strong an edit), but every sample is a whole image, so each side effect is shown
as part of the explanation and read by whoever looks as part of what drives the decision. Sparse counterfactuals
(ACE, Jeanneret et al., 2023, refine the difference's region) keep only what is needed. Here that is asked of
the classifier itself, with no UNet call: split what the edit changed into its connected parts, rank the parts
by how far each alone moves the decision, and keep the fewest strongest parts whose paste onto the unedited
image still flips it. What the generator drew is kept pixel for pixel inside those parts; outside them the
image is the unedited one, with a seam softened over a pixel or two.

Only what is shown changes: whether the attribute flips the decision and its minimal strength are the
trajectory's, found before pruning.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from xcounter.errors import XCounterError
from xcounter.search import is_flipped

#: a pixel belongs to the edit's parts where its (smoothed) change reaches this share of the largest change ...
PART_FRACTION = 0.15
#: ... and at least this much on the [0, 1] intensity scale (below it the edit changed nothing visible)
PART_FLOOR = 0.02
#: the shares the edit is split at; the smallest flipping selection over all of them is shown. One level by
#: default; a generator may set its own (`prune_fractions` in its xcounter.json). Why per generator: a second
#: level at 0.3 splits a skin edit's strong core (a ruler, a veil) from the faint relighting around it, which
#: at 0.15 joins everything into one part, while on CXR it kept all else one edit in 20 less often
#: (docs/CONTRACTS.md, Engine, `prune`)
PART_FRACTIONS = (PART_FRACTION,)
#: parts ranked one by one; weaker ones are kept or dropped together, as one last part
MAX_PARTS = 8
#: pixels the kept region grows by, and the blur of its edge, so the paste leaves no seam
SEAM_GROW = 1
SEAM_SIGMA = 1.0


def checked_fractions(value: object, what: str = "prune_fractions") -> tuple[float, ...]:
    """The pruning levels as a sorted tuple: one or more distinct shares strictly between 0 and 1."""
    values = list(value) if isinstance(value, (list, tuple)) else None
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1 for v in values):
        raise XCounterError(f"{what} must be a list of one or more numbers between 0 and 1 (shares of the edit's "
                            f"largest change), got {value!r}")
    return tuple(sorted({float(v) for v in values}))


@dataclass
class PrunedEdit:
    """The counterfactual pruned to the parts the decision needs."""
    image: torch.Tensor  # [1, C, H, W]: the unedited image with the kept parts of the edit pasted
    mask: np.ndarray  # H x W in [0, 1]: the weight of the edit kept at each pixel
    margin: float  # the target's margin on `image` (past the threshold: it flips)
    parts: int  # connected parts the edit was split into
    kept: int  # parts kept


def edit_parts(difference: np.ndarray, fraction: float = PART_FRACTION,
               floor: float = PART_FLOOR) -> tuple[np.ndarray, list[np.ndarray]]:
    """(magnitude, parts): the edit's smoothed change (H x W) and its connected parts (boolean H x W each),
    strongest (largest total change) first, at most `MAX_PARTS` (the weakest merged into the last)."""
    magnitude = np.abs(np.asarray(difference, dtype=np.float32))
    if magnitude.ndim == 3:
        magnitude = magnitude.max(axis=0)
    smoothed = ndimage.gaussian_filter(magnitude, 1.0)
    peak = float(smoothed.max()) if smoothed.size else 0.0
    if peak < floor:
        return smoothed, []
    labels, count = ndimage.label(smoothed >= max(fraction * peak, floor), structure=np.ones((3, 3)))
    if count == 0:
        return smoothed, []
    energy = ndimage.sum_labels(magnitude, labels, index=np.arange(1, count + 1))
    order = np.argsort(-energy, kind="stable") + 1
    parts = [labels == k for k in order[:MAX_PARTS - 1]]
    if count >= MAX_PARTS:
        parts.append(np.isin(labels, order[MAX_PARTS - 1:]))
    return smoothed, parts


def soft_mask(selected: np.ndarray) -> np.ndarray:
    """A selection of pixels grown by `SEAM_GROW` and blurred at its edge: weight 1 on every selected pixel."""
    grown = ndimage.binary_dilation(selected, iterations=SEAM_GROW) if SEAM_GROW else selected
    return np.maximum(ndimage.gaussian_filter(grown.astype(np.float32), SEAM_SIGMA), selected).clip(0.0, 1.0)


def prune_edit(unedited: torch.Tensor, counterfactual: torch.Tensor,
               margin_of: Callable[[torch.Tensor], torch.Tensor], *, reference_positive: bool,
               flip_margin: float = 0.0, fractions: Sequence[float] = PART_FRACTIONS) -> PrunedEdit | None:
    """The counterfactual with only the fewest parts of its edit that still flip the decision.

    `unedited` and `counterfactual` are [1, C, H, W] in [0, 1]; `margin_of(images [B, C, H, W])` is the target's
    margin per image. Per level in `fractions` (`edit_parts`), two batched classifier calls: every part alone (to
    rank them), then the strongest one, two, ... parts together (the first that flips is kept); over the levels,
    the selection with the least total weight wins. None when the edit has no parts or no subset flips,
    including all the parts together (then the flip needs the edit's faint changes too, and the whole sample
    is what explains it).
    """
    difference = (counterfactual - unedited)[0].detach().cpu().numpy()
    found = [pruned for pruned in (_prune_at(unedited, counterfactual, edit_parts(difference, fraction)[1],
                                             margin_of, reference_positive=reference_positive,
                                             flip_margin=flip_margin)
                                   for fraction in fractions) if pruned is not None]
    return min(found, key=lambda pruned: float(pruned.mask.sum())) if found else None


def _prune_at(unedited: torch.Tensor, counterfactual: torch.Tensor, parts: list[np.ndarray],
              margin_of: Callable[[torch.Tensor], torch.Tensor], *, reference_positive: bool,
              flip_margin: float) -> PrunedEdit | None:
    """`prune_edit` for one split of the edit into `parts`."""
    if not parts:
        return None

    def pasted(masks: list[np.ndarray]) -> torch.Tensor:
        weights = torch.from_numpy(np.stack(masks)).unsqueeze(1).to(unedited)
        return (unedited + weights * (counterfactual - unedited)).clamp(0.0, 1.0)

    masks = [soft_mask(part) for part in parts]
    with torch.no_grad():
        alone = margin_of(pasted(masks)).float().cpu().numpy()
    toward_flip = -alone if reference_positive else alone
    order = np.argsort(-toward_flip, kind="stable")
    selections, cumulative = [], np.zeros_like(parts[0])
    for k in order:
        cumulative = cumulative | parts[k]
        selections.append(soft_mask(cumulative))
    images = pasted(selections)
    with torch.no_grad():
        margins = margin_of(images).float().cpu().numpy()
    for n_kept, margin in enumerate(margins, start=1):
        if is_flipped(float(margin), reference_positive, flip_margin):
            return PrunedEdit(image=images[n_kept - 1:n_kept], mask=selections[n_kept - 1],
                              margin=float(margin), parts=len(parts), kept=n_kept)
    return None
