"""Model-validation assertions for plain pytest: "this classifier's Pneumothorax decisions are not driven
by chest tubes" as one line in a test suite.

Each `assert_*` runs a small audit (one target, one attribute) and raises `AssertionError` naming the flip
rate, its bootstrap interval and an example scan; it returns the `AuditResult` for further checks.
`check_*` apply the same rule to an audit you already have.

    def test_pneumothorax_ignores_chest_tubes(tmp_path):
        assert_not_driven_by("model.pt", "phantom-cxr", "validation_scans/", attribute="chest_tube",
                             target="Pneumothorax", max_flip_rate=0.05, out_dir=tmp_path)
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

from xcounter.audit import AttributeStat, AuditResult, audit


def _stat(result: AuditResult, attribute: str, target: str) -> AttributeStat:
    stat = result.stat(target, attribute)
    if stat is None or stat.scans == 0:
        failures = "; ".join(f"{f['scan_id']}: {f['reason']}" for f in result.failures[:3])
        raise AssertionError(f"no scan was audited for attribute '{attribute}' and target '{target}' "
                             f"({result.aggregate.ok} scans explained, {result.aggregate.failed} failed"
                             f"{': ' + failures if failures else ''})")
    return stat


def _describe(stat: AttributeStat, level: float) -> str:
    low, high = stat.flip_rate_ci
    interval = "no interval" if low is None else f"{level:.0%} CI {low:.2f}-{high:.2f}"
    uncredited = ", ".join(f"{count} more {what}" for count, what in ((stat.mediated, "mediated"),
                                                                       (stat.unconfirmed, "unconfirmed")) if count)
    return (f"flip rate {stat.flip_rate:.2f} ({interval}; {stat.flips} of {stat.scans} scans"
            f"{'; ' + uncredited + ', not counted' if uncredited else ''})")


def _example(stat: AttributeStat, flipped: bool) -> str:
    for example in stat.examples:
        if example["flipped"] == flipped:
            before, after = example["probability_before"], example["probability_after"]
            change = f"p {before:.2f} -> {after:.2f}" if before is not None and after is not None else "p unknown"
            how = f"flips at edit strength {example['minimal_strength']:.2f}" if flipped else "does not flip"
            return f"e.g. scan '{example['scan_id']}' {how} ({example['sign'] or 'no'} {stat.attribute}: {change})"
    return "no example scan"


def _where(result: AuditResult) -> str:
    return f"report: {result.report_html}" if result.report_html else f"journal: {result.journal}"


def check_not_driven_by(result: AuditResult, attribute: str, target: str, max_flip_rate: float = 0.05, *,
                        use_interval: bool = False) -> AttributeStat:
    """Fail when the flip rate exceeds `max_flip_rate` (with `use_interval`: when its upper bound does)."""
    stat = _stat(result, attribute, target)
    value = stat.flip_rate_ci[1] if use_interval and stat.flip_rate_ci[1] is not None else stat.flip_rate
    if value > max_flip_rate:
        which = "upper confidence bound" if use_interval else "flip rate"
        raise AssertionError(
            f"{target} decisions are driven by {attribute}: {_describe(stat, result.aggregate.rule['level'])}; "
            f"the {which} {value:.2f} exceeds max_flip_rate {max_flip_rate:.2f}; {_example(stat, True)}; "
            f"{_where(result)}")
    return stat


def check_driven_by(result: AuditResult, attribute: str, target: str, min_flip_rate: float = 0.5, *,
                    use_interval: bool = False) -> AttributeStat:
    """Fail when the flip rate is below `min_flip_rate` (with `use_interval`: when its lower bound is)."""
    stat = _stat(result, attribute, target)
    value = stat.flip_rate_ci[0] if use_interval and stat.flip_rate_ci[0] is not None else stat.flip_rate
    if value < min_flip_rate:
        which = "lower confidence bound" if use_interval else "flip rate"
        raise AssertionError(
            f"{target} decisions are not driven by {attribute} as expected: "
            f"{_describe(stat, result.aggregate.rule['level'])}; the {which} {value:.2f} is below min_flip_rate "
            f"{min_flip_rate:.2f}; {_example(stat, False)}; {_where(result)}")
    return stat


def _run(classifier: Any, generator: Any, scans: Any, attribute: str, target: str, seed: int,
         out_dir: str | os.PathLike | None, audit_options: dict) -> AuditResult:
    out_dir = out_dir or tempfile.mkdtemp(prefix="xcounter-assert-")
    return audit(classifier, generator, scans, targets=[target], only=[attribute], seed=seed, out_dir=out_dir,
                 **audit_options)


def assert_not_driven_by(classifier: Any, generator: Any, scans: "str | os.PathLike | Sequence[Any]",
                         attribute: str, target: str, max_flip_rate: float = 0.05, *, seed: int = 0,
                         out_dir: str | os.PathLike | None = None, use_interval: bool = False,
                         **audit_options: Any) -> AuditResult:
    """Audit `attribute` on `target` over `scans`; AssertionError when the flip rate exceeds `max_flip_rate`.

    `use_interval=True` makes the test stricter (the upper bound of the bootstrap interval must stay below).
    `audit_options` go to `xcounter.audit` (attributes, steps, executor, limit, explainer_options, ...).
    """
    result = _run(classifier, generator, scans, attribute, target, seed, out_dir, audit_options)
    check_not_driven_by(result, attribute, target, max_flip_rate, use_interval=use_interval)
    return result


def assert_driven_by(classifier: Any, generator: Any, scans: "str | os.PathLike | Sequence[Any]",
                     attribute: str, target: str, min_flip_rate: float = 0.5, *, seed: int = 0,
                     out_dir: str | os.PathLike | None = None, use_interval: bool = False,
                     **audit_options: Any) -> AuditResult:
    """Audit `attribute` on `target` over `scans`; AssertionError when the flip rate is below `min_flip_rate`."""
    result = _run(classifier, generator, scans, attribute, target, seed, out_dir, audit_options)
    check_driven_by(result, attribute, target, min_flip_rate, use_interval=use_interval)
    return result


__all__ = ["assert_not_driven_by", "assert_driven_by", "check_not_driven_by", "check_driven_by"]
