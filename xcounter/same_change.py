"""Additions that flip a decision only by undoing something: credited to that thing's removal, no oracle needed.

A generator asked to add one attribute can erase another. On the ruler-shortcut skin model, "add hair", "add
ink" and "add a colour chart" each flipped Melanoma, and each pruned counterfactual (`xcounter.edit_pruning`,
the parts of the edit the decision needs) showed the same thing: the ruler strip wiped, as the ruler's own
removal wipes it. Read one by one, the card called four artifacts shortcuts where the classifier reads one.

Pruning makes the evidence explicit: the pixels a flip needs. An addition whose needed pixels lie mostly
inside those of another attribute's flipping removal, changed the same way there (the two changes point the
same way), flips the decision by that removal, not by what it was asked to add. Its verdict becomes "mediated",
credited to the removed attribute (`AttributeResult.mediated_by` = "pixels"). Only additions are read this
way: adding something works by drawing it, so an addition whose working part is another attribute's removal
did not work by drawing; two additions or two removals through the same pixels cannot be told apart without
an oracle, and both keep their verdicts. The finding a target names is never demoted (as in
`xcounter.mediation`).
"""
from __future__ import annotations

from typing import Callable, Collection, Iterable

import numpy as np

from xcounter.edit_pruning import PART_FLOOR
from xcounter.explanation import AttributeResult, Counterfactual

#: a pixel belongs to what a flip needs where the counterfactual shown differs from its unedited image by at
#: least this much (the [0, 1] scale): the least change a pruned part is made of
KEPT_FLOOR = PART_FLOOR
#: at least this share of the addition's needed pixels must lie among the removal's ...
SAME_PIXELS = 0.5
#: ... and the two changes there must point the same way (cosine of the two differences over the shared pixels)
SAME_DIRECTION = 0.5


def needed_pixels(counterfactual: Counterfactual) -> np.ndarray:
    """H x W booleans: where the counterfactual's kept parts changed the unedited image (`kept_change`: the parts a
    pruned flip kept, read before any refill, or the whole sample's change when it was not pruned)."""
    difference = np.abs(np.asarray(counterfactual.kept_change, dtype=np.float32))
    return (difference.max(axis=-1) if difference.ndim == 3 else difference) >= KEPT_FLOOR


def same_change(addition: Counterfactual, removal: Counterfactual) -> float:
    """The share of the addition's needed pixels that the removal also needs, changed the same way; 0 when the
    two changes there do not point the same way (`SAME_DIRECTION`)."""
    added, removed = needed_pixels(addition), needed_pixels(removal)
    if not added.any():
        return 0.0
    shared = added & removed
    if not shared.any():
        return 0.0
    a = np.asarray(addition.kept_change, dtype=np.float32)[shared].ravel()
    b = np.asarray(removal.kept_change, dtype=np.float32)[shared].ravel()
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0.0 or float(a @ b) / norm < SAME_DIRECTION:
        return 0.0
    return float(shared.sum() / added.sum())


def find_removed_causes(results: Iterable[AttributeResult], keep: Collection[str] = ()) -> dict[str, str]:
    """{attribute: removed attribute} for one target's credited additions that flip only by another credited
    flip's removal (the removal whose needed pixels hold most of the addition's, when several do)."""
    credited = [r for r in results if r.drives_decision and r.best is not None
                and r.best.flipped and r.best.difference is not None]
    removals = [r for r in credited if r.best.sign == "remove"]
    found: dict[str, str] = {}
    for result in credited:
        if result.best.sign != "add" or result.attribute in keep:
            continue
        candidates = [(same_change(result.best, removal.best), removal.attribute) for removal in removals
                      if removal.attribute != result.attribute]
        candidates = [c for c in candidates if c[0] >= SAME_PIXELS]
        if candidates:
            found[result.attribute] = max(candidates)[1]
    return found


def apply_removed_causes(results: list[AttributeResult],
                         keep: Callable[[str], Collection[str]] = lambda target: ()) -> None:
    """Mark, target by target and in place, the additions that flip only by another attribute's removal:
    verdict "mediated", `mediator` the removed attribute, `mediated_by` "pixels"."""
    for target in dict.fromkeys(r.target for r in results):
        group = [r for r in results if r.target == target]
        for name, removed in find_removed_causes(group, keep(target)).items():
            result = next(r for r in group if r.attribute == name)
            result.verdict, result.mediator, result.mediated_by = "mediated", removed, "pixels"
