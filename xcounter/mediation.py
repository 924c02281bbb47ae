"""Which flips belong to another attribute: mediation read by an attribute oracle.

A generator's edit of one attribute can also change another one. When adding a pacemaker also erases
the effusion, the Effusion decision flips, but through the effusion, not the pacemaker; calling the
pacemaker a shortcut would be a false alarm on a clean classifier. With an oracle that measures every
attribute on the counterfactual, such a flip can be traced: attribute A's flip is *mediated* by B when

- B's own edit flips the same decision (B is a cause in its own right),
- A's counterfactual moved B by at least `threshold` in the direction of B's flipping edit, and
- B's counterfactual did not move A that far in the direction of A's edit.

The last condition keeps the true cause when two edits are entangled both ways: then neither is
demoted, since the oracle cannot tell which change did the work.

The finding a target label names (pleural_effusion for Effusion) is never demoted (`keep`): the check
exists to stop false alarms on *other* attributes, and crediting a side attribute instead of the label's
own finding would turn a confirmation into one. On 49 CXR `real_cause` scans with the retrained clean
classifier the generator's effusion removal read as an added consolidation on 3 scans, whose own edit
also flipped Effusion (though the renderer's consolidation never does); without `keep` those true causes
were lost. With it, verdict precision against the renderer's own edits rose from 0.22 to 0.42 (agreement
0.68 to 0.88) with recall unchanged (0.98; `reports/benchmarks.md`, real_cause); demoting on any side change >= 0.5 instead (measured on the
earlier classifier) lost most true causes (recall 0.93 to 0.33), because true edits move other
attributes a little too.
"""
from __future__ import annotations

from typing import Callable, Collection, Iterable

from xcounter.explanation import AttributeResult

#: an oracle change this large toward the mediator's own flipping edit (a binary attribute read on the
#: other side of 0.5, or about) counts as "the counterfactual also made that edit"
MEDIATION_THRESHOLD = 0.5


def toward(change: float | None, sign: str | None) -> float:
    """A signed oracle change expressed along an edit: positive when it goes the way `sign` edits."""
    if change is None or sign is None:
        return 0.0
    return float(change) if sign == "add" else -float(change)


def find_mediators(results: Iterable[AttributeResult], threshold: float = MEDIATION_THRESHOLD,
                   keep: Collection[str] = ()) -> dict[str, str]:
    """{attribute: mediator} for one target's results whose flip the oracle traces to another flip.

    Only results with a flipping counterfactual and oracle readings take part; attributes in `keep` are
    never demoted (they can still mediate). When several flipping attributes qualify, the one the
    counterfactual moved furthest is named.
    """
    flipping = {r.attribute: r for r in results
                if r.flipped and r.best is not None and r.best.oracle_change is not None}
    mediators: dict[str, str] = {}
    for name, result in flipping.items():
        if name in keep:
            continue
        moved = result.best.oracle_change
        candidates = []
        for other, other_result in flipping.items():
            if other == name:
                continue
            forward = toward(moved.get(other), other_result.best.sign)
            backward = toward(other_result.best.oracle_change.get(name), result.best.sign)
            if forward >= threshold and backward < threshold:
                candidates.append((forward, other))
        if candidates:
            mediators[name] = max(candidates)[1]
    return mediators


def apply_mediation(results: list[AttributeResult], threshold: float = MEDIATION_THRESHOLD,
                    keep: Callable[[str], Collection[str]] = lambda target: ()) -> None:
    """Mark mediated flips in place (verdict "mediated", `mediator` set), target by target; `keep(target)`
    names the attributes never demoted for that target (the explainer: the target's own finding)."""
    for target in dict.fromkeys(r.target for r in results):
        group = [r for r in results if r.target == target]
        for name, mediator in find_mediators(group, threshold, keep(target)).items():
            result = next(r for r in group if r.attribute == name)
            result.verdict, result.mediator, result.mediated_by = "mediated", mediator, "oracle"
