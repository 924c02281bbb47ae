"""Is a shortcut flag the device's own doing? Checks on the edit's strongest pixels and its strongest edit.

A generator asked to add a device draws more than the device. The phantom CXR generator draws a central
line or pacemaker as a thick bright stroke and brightens the lung around it, which a classifier reads as
opacity: the Consolidation decision flips, and the device is called a shortcut of a classifier that never
looked at devices. The check pastes onto the reconstruction only the pixels where the counterfactual
changed most (|difference| >= `fraction` of its largest, the drawn device itself; `core_image`) and asks the
classifier again. When the decision stays, the flip came from the rest of the edit, and the verdict is
"unconfirmed" instead of "shortcut". One classifier call per flag, no UNet, no oracle: it works on real
scans as on phantoms.

Measured (2026-11-27, seventeenth session, `scripts/core_pixel_check.py`): on the faithfulness benchmark's 20
phantom CXR scans (80 shortcut flags of the rho ladders and the clean classifier) the check kept 34 of the 36
flags the renderer confirms (drawing the device alone flips the decision) and 19 of the 44 it does not, at
fraction 0.15 (0.25: 31 of 36 and 15 of 44; a one-pixel dilation keeps more of both). On skin phantoms it did
not discriminate (7 of 9 against 13 of 16): a ruler or ink mark is drawn cleanly there, the side effects that
flip are small and in the lesion. Hence a generator setting (`confirm_shortcuts` in its xcounter.json), on for
the phantom CXR generator only, and an explainer option.

The second check needs no call at all: the trajectory's strongest edit (the earliest swap step, the device
drawn in full) must flip the decision too. A classifier that rests on a device is moved further by more of it;
a flip seen only part-way along the trajectory and gone once the device is fully drawn came from the
generator's half-drawn transition. Measured (2026-12-07, twenty-eighth session) on the same 20 scans: all 38
flags the renderer confirms flip at the strongest edit; 3 of the 17 flags left that the renderer does not
confirm do not (a chest tube on the rho-0.5 and rho-0.75 classifiers, a pacemaker on the clean one), and are
"unconfirmed" now. On the skin scans it would demote no false flag and 2 true ink removals whose strongest edit
stops just short of the flip margin, so it is part of the same setting.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch

from xcounter.classifiers.base import logit
from xcounter.explanation import AttributeResult, CoreCheck, Counterfactual, verdict_of
from xcounter.search import is_flipped

if TYPE_CHECKING:
    from xcounter.classifiers import Classifier

#: the share of the largest change that counts as the edit's own pixels (see the module docstring)
CORE_FRACTION = 0.15


def core_mask(difference: np.ndarray, fraction: float = CORE_FRACTION) -> np.ndarray:
    """H x W booleans: where |difference| (largest over channels) reaches `fraction` of its maximum.
    Nothing when the edit changed nothing."""
    magnitude = np.abs(np.asarray(difference, dtype=np.float32))
    if magnitude.ndim == 3:
        magnitude = magnitude.max(axis=-1)
    peak = float(magnitude.max()) if magnitude.size else 0.0
    if peak <= 0:
        return np.zeros(magnitude.shape, dtype=bool)
    return magnitude >= fraction * peak


def core_image(reconstruction: np.ndarray, counterfactual: np.ndarray,
               fraction: float = CORE_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask): the reconstruction with only the counterfactual's strongest pixels taken over (H x W x C)."""
    reconstruction = np.asarray(reconstruction, dtype=np.float32)
    difference = np.asarray(counterfactual, dtype=np.float32) - reconstruction
    mask = core_mask(difference, fraction)
    return np.clip(reconstruction + difference * mask[..., None], 0.0, 1.0), mask


def strongest_edit(counterfactual: Counterfactual) -> float:
    """The target probability at the trajectory's strongest edit (its largest strength)."""
    return float(counterfactual.probabilities[int(np.argmax(counterfactual.strengths))])


def confirm_shortcuts(results: Iterable[AttributeResult], classifier: "Classifier", reconstruction: np.ndarray,
                      *, flip_margin: float = 0.0, fraction: float = CORE_FRACTION) -> None:
    """Check every "shortcut" result in place: record its `core` check, and make the verdict "unconfirmed"
    when the edit's own pixels alone leave the reconstruction's decision as it was (by `flip_margin` logits),
    or the trajectory's strongest edit does."""
    flagged = [r for r in results if r.verdict == "shortcut" and r.best is not None and r.best.flipped
               and r.best.whole_image is not None]
    if not flagged:
        return
    # the whole sample, not the parts the decision needed (`Counterfactual.sample`): the question is whether
    # what the generator drew most strongly, the device itself, is what flips the decision
    hybrids, masks = zip(*(core_image(reconstruction, r.best.whole_image, fraction) for r in flagged))
    batch = torch.from_numpy(np.stack([reconstruction, *hybrids])).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        margins = classifier.margins(batch).float().cpu()
    probabilities = torch.sigmoid(margins).numpy()  # the classifier's own: 0.5 at the threshold
    margins = margins.numpy()
    for row, (result, mask) in enumerate(zip(flagged, masks), start=1):
        index = classifier.target_index(result.target)
        before, after = float(margins[0, index]), float(margins[row, index])
        flipped = is_flipped(after, before > 0, flip_margin)
        strongest = strongest_edit(result.best)
        result.core = CoreCheck(fraction=float(fraction), share=float(mask.mean()),
                                probability=float(probabilities[row, index]), flipped=bool(flipped),
                                strongest_probability=strongest,
                                strongest_flipped=is_flipped(logit(strongest)[0], before > 0, flip_margin))
        result.verdict = verdict_of(result.kind, result.flipped, result.core.confirmed)
