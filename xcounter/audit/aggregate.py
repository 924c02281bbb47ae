"""From the journal to numbers: per target x attribute flip rate, median minimal strength, mean change of
probability and CFRT, each with a seeded bootstrap interval, and the shortcut alerts.

Shortcut rule (explicit, so an auditor can check it by hand): an attribute is a *shortcut alert* for a
target when (1) its kind is device, artifact or acquisition (`SPURIOUS_KINDS`: nothing a disease
decision should depend on), (2) at least `min_scans` scans were explained for that target, and (3) the
lower bound of the flip rate's confidence interval is above `threshold` (default 0.1): even the
pessimistic end says one scan in ten changes its decision under an edit of that attribute alone.

A flip the explanation credits to another attribute (verdict "mediated": with an oracle, the edit also made
another attribute's own flipping edit, `xcounter.mediation`; without one, an addition that flips only through
the pixels of another attribute's flipping removal, `xcounter.same_change`) is not counted as this attribute's
flip; the number of such flips is kept beside the rate (`mediated`). Nor is a
flip the explanation left "unconfirmed" (a device or artifact edit whose own strongest pixels, or whose
strongest edit, do not flip the decision; `xcounter.confirmation`): its count is kept as `unconfirmed`.

Why 0.1: a device or a ruler that changes one diagnosis in ten is a finding a validation team must see.
On the phantom benchmarks (`reports/benchmarks.md`, flip margin 1) the clean classifiers' device and
artifact flip rates have interval lower bounds of 0, while at 0.2 a classifier whose decisions follow a
ruler on 30% of scans (rho 0.75) went unreported over 30 scans.

Everything is computed from records sorted by scan id with seeds derived from names, so the same journal
gives the same aggregate whatever the order the scans finished in.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np

from xcounter.attributes import SPURIOUS_KINDS
from xcounter.audit.records import STATUS_OK, best_index
from xcounter.audit.stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES, bootstrap_ci, derived_seed
from xcounter.explanation import UNCREDITED

ALERT_THRESHOLD = 0.1
ALERT_MIN_SCANS = 5
EXAMPLES_PER_STAT = 3


@dataclass
class Observation:
    """One (scan, target, attribute) outcome: what the aggregate and the gallery need, nothing heavier."""
    scan_id: str
    target: str
    attribute: str
    kind: str
    flipped: bool  # the decision flipped and the explanation credits the flip to this attribute
    minimal_strength: float | None
    sign: str | None
    probability_before: float | None
    probability_after: float | None
    cfrt: float | None
    mediated: bool = False  # the decision flipped, but the flip is credited to another attribute
    unconfirmed: bool = False  # the decision flipped, but not with the edit's own pixels alone

    @property
    def delta_probability(self) -> float | None:
        if self.probability_before is None or self.probability_after is None:
            return None
        return self.probability_after - self.probability_before

    def strength_key(self) -> tuple:
        """Strongest evidence first: flips at the smallest edit, then the largest change of probability."""
        strength = self.minimal_strength if self.flipped and self.minimal_strength is not None else 2.0
        return (not self.flipped, strength, -abs(self.delta_probability or 0.0), self.scan_id)


@dataclass
class AttributeStat:
    """How one attribute acts on one target's decision across the audited scans."""
    target: str
    attribute: str
    kind: str
    scans: int
    flips: int
    flip_rate: float
    flip_rate_ci: tuple[float | None, float | None]
    median_minimal_strength: float | None
    median_minimal_strength_ci: tuple[float | None, float | None]
    mean_delta_probability: float | None
    mean_delta_probability_ci: tuple[float | None, float | None]
    mean_cfrt: float | None
    mean_cfrt_ci: tuple[float | None, float | None]
    cfrt_scans: int
    alert: bool
    examples: list[dict] = field(default_factory=list)  # strongest counterfactuals: scan id, sign, strength, p
    mediated: int = 0  # flips credited to another attribute (not in `flips`)
    unconfirmed: int = 0  # flips the edit's own pixels alone did not make (not in `flips`)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AuditAggregate:
    stats: list[AttributeStat]
    scans: int
    ok: int
    failed: int
    failures: list[dict]  # {"scan_id", "reason"}
    rule: dict

    @property
    def alerts(self) -> list[AttributeStat]:
        return [s for s in self.stats if s.alert]

    @property
    def targets(self) -> list[str]:
        return sorted({s.target for s in self.stats})

    def stat(self, target: str, attribute: str) -> AttributeStat | None:
        for candidate in self.stats:
            if candidate.target == target and candidate.attribute == attribute:
                return candidate
        return None

    def to_dict(self) -> dict:
        return {"scans": self.scans, "ok": self.ok, "failed": self.failed, "rule": self.rule,
                "stats": [s.to_dict() for s in self.stats],
                "alerts": [f"{s.target}/{s.attribute}" for s in self.alerts],
                "failures": self.failures}


def observations(record: dict) -> list[Observation]:
    """The per-result outcomes of one successful record (its best counterfactual per target x attribute)."""
    found = []
    for result in (record.get("explanation") or {}).get("results", []):
        counterfactuals = result.get("counterfactuals", [])
        index = best_index(counterfactuals)
        best = counterfactuals[index] if index is not None else {}
        found.append(Observation(
            scan_id=record["scan_id"], target=result["target"], attribute=result["attribute"], kind=result["kind"],
            flipped=bool(result.get("flipped")) and result.get("verdict") not in UNCREDITED,
            mediated=bool(result.get("flipped")) and result.get("verdict") == "mediated",
            unconfirmed=bool(result.get("flipped")) and result.get("verdict") == "unconfirmed",
            minimal_strength=result.get("minimal_strength"),
            sign=result.get("sign") or best.get("sign"), probability_before=best.get("probability_before"),
            probability_after=best.get("probability_after"), cfrt=best.get("cfrt")))
    return found


def _nan(values: Iterable[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None or not math.isfinite(v) else v for v in values], dtype=np.float64)


def _point(values: np.ndarray, statistic) -> float | None:
    finite = values[np.isfinite(values)]
    return float(statistic(finite)) if finite.size else None


def summarize(target: str, attribute: str, found: list[Observation], *, seed: int, threshold: float,
              min_scans: int, level: float, n_resamples: int) -> AttributeStat:
    """One AttributeStat from the observations of one target x attribute (sorted by scan id)."""
    found = sorted(found, key=lambda o: o.scan_id)
    flipped = np.array([o.flipped for o in found], dtype=np.float64)
    strengths = _nan(o.minimal_strength if o.flipped else None for o in found)
    deltas = _nan(o.delta_probability for o in found)
    cfrts = _nan(o.cfrt for o in found)

    def ci(values, statistic, name):
        present = values if statistic is np.nanmedian else values[np.isfinite(values)]
        return bootstrap_ci(present, statistic, seed=derived_seed(seed, target, attribute, name), level=level,
                            n_resamples=n_resamples)

    rate_ci = ci(flipped, np.mean, "flip_rate")
    kind = found[0].kind if found else ""
    alert = (kind in SPURIOUS_KINDS and len(found) >= min_scans and rate_ci[0] is not None
             and rate_ci[0] > threshold)
    examples = [{"scan_id": o.scan_id, "sign": o.sign, "flipped": o.flipped, "minimal_strength": o.minimal_strength,
                 "probability_before": o.probability_before, "probability_after": o.probability_after}
                for o in sorted(found, key=Observation.strength_key)[:EXAMPLES_PER_STAT]]
    return AttributeStat(
        target=target, attribute=attribute, kind=kind, scans=len(found), flips=int(flipped.sum()),
        flip_rate=float(flipped.mean()) if found else 0.0, flip_rate_ci=rate_ci,
        median_minimal_strength=_point(strengths, np.median),
        median_minimal_strength_ci=ci(strengths, np.nanmedian, "median_minimal_strength"),
        mean_delta_probability=_point(deltas, np.mean), mean_delta_probability_ci=ci(deltas, np.mean, "delta"),
        mean_cfrt=_point(cfrts, np.mean), mean_cfrt_ci=ci(cfrts, np.mean, "cfrt"),
        cfrt_scans=int(np.isfinite(cfrts).sum()), alert=bool(alert), examples=examples,
        mediated=sum(o.mediated for o in found), unconfirmed=sum(o.unconfirmed for o in found))


def aggregate_records(records: Iterable[dict[str, Any]], *, seed: int = 0, threshold: float = ALERT_THRESHOLD,
                      min_scans: int = ALERT_MIN_SCANS, level: float = DEFAULT_LEVEL,
                      n_resamples: int = DEFAULT_RESAMPLES) -> AuditAggregate:
    """Aggregate journal records (any order) into per target x attribute statistics and alerts."""
    groups: dict[tuple[str, str], list[Observation]] = {}
    failures, ok, total = [], 0, 0
    for record in records:
        total += 1
        if record.get("status") == STATUS_OK:
            ok += 1
            for observation in observations(record):
                groups.setdefault((observation.target, observation.attribute), []).append(observation)
        else:
            failures.append({"scan_id": record["scan_id"], "reason": record.get("reason") or "unknown error"})
    stats = [summarize(t, a, groups[(t, a)], seed=seed, threshold=threshold, min_scans=min_scans, level=level,
                       n_resamples=n_resamples) for t, a in sorted(groups)]
    rule = {"kinds": list(SPURIOUS_KINDS), "threshold": threshold, "min_scans": min_scans, "level": level,
            "n_resamples": n_resamples, "seed": seed,
            "text": (f"shortcut alert when a {'/'.join(SPURIOUS_KINDS)} attribute was examined on at least "
                     f"{min_scans} scans and the lower bound of its flip rate's {level:.0%} bootstrap interval "
                     f"exceeds {threshold:g}")}
    return AuditAggregate(stats=stats, scans=total, ok=ok, failed=total - ok,
                          failures=sorted(failures, key=lambda f: f["scan_id"]), rule=rule)
