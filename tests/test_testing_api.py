"""xcounter.testing: assert_driven_by / assert_not_driven_by pass and fail as they should, with messages
that name the rate, its interval and an example scan; plus one real end-to-end call on tiny models."""
from __future__ import annotations

from pathlib import Path

import pytest

from xcounter.audit import AuditResult, aggregate_records
from xcounter.audit.records import make_record
from xcounter.testing import assert_driven_by, assert_not_driven_by, check_driven_by, check_not_driven_by

TARGET = "Pneumothorax"


def constructed_result(flips: list[bool], attribute: str = "chest_tube", verdicts: dict | None = None) -> AuditResult:
    """An audit of len(flips) scans where `attribute` flips the target on the scans marked True (verdict
    "shortcut", or `verdicts[index]`)."""
    records = []
    for index, flipped in enumerate(flips):
        counterfactual = {"sign": "remove", "flipped": flipped, "minimal_strength": 0.25 if flipped else None,
                          "probability_before": 0.9, "probability_after": 0.2 if flipped else 0.85, "cfrt": None}
        verdict = (verdicts or {}).get(index, "shortcut" if flipped else "does not drive")
        result = {"target": TARGET, "attribute": attribute, "kind": "device", "flipped": flipped, "verdict": verdict,
                  "minimal_strength": counterfactual["minimal_strength"], "sign": "remove",
                  "counterfactuals": [counterfactual]}
        records.append(make_record(f"scan{index:02d}.png", f"scan{index:02d}.png", "ok",
                                   explanation={"results": [result]}))
    aggregate = aggregate_records(records, seed=0, n_resamples=500)
    return AuditResult(out_dir=Path("audit-out"), aggregate=aggregate, metadata={},
                       report_html=Path("audit-out/audit_report.html"))


def test_a_shortcut_fails_not_driven_by_with_rate_interval_and_example():
    result = constructed_result([i % 5 != 0 for i in range(20)])  # 16 of 20 scans flip
    with pytest.raises(AssertionError) as failure:
        check_not_driven_by(result, "chest_tube", TARGET, max_flip_rate=0.05)
    message = str(failure.value)
    low, high = result.stat(TARGET, "chest_tube").flip_rate_ci
    assert "flip rate 0.80" in message and f"95% CI {low:.2f}-{high:.2f}" in message and "16 of 20" in message
    assert "scan01.png" in message and "strength 0.25" in message and "audit_report.html" in message
    assert check_driven_by(result, "chest_tube", TARGET, min_flip_rate=0.5).flips == 16
    check_driven_by(result, "chest_tube", TARGET, min_flip_rate=0.5, use_interval=True)


def test_an_ignored_attribute_passes_not_driven_by_and_fails_driven_by():
    result = constructed_result([False] * 19 + [True])  # 1 of 20
    assert check_not_driven_by(result, "chest_tube", TARGET, max_flip_rate=0.1).flip_rate == 0.05
    # 0.05 observed, but the interval reaches past 0.1
    with pytest.raises(AssertionError, match="upper confidence bound"):
        check_not_driven_by(result, "chest_tube", TARGET, max_flip_rate=0.1, use_interval=True)
    with pytest.raises(AssertionError) as failure:
        check_driven_by(result, "chest_tube", TARGET, min_flip_rate=0.5)
    assert "flip rate 0.05" in str(failure.value) and "below min_flip_rate 0.50" in str(failure.value)
    assert "does not flip" in str(failure.value)  # the example is a scan that did not flip


def test_an_attribute_that_was_never_audited_fails_clearly():
    result = constructed_result([True, False])
    with pytest.raises(AssertionError, match="no scan was audited for attribute 'pacemaker'"):
        check_not_driven_by(result, "pacemaker", TARGET)


def test_end_to_end_on_tiny_models(tmp_path):
    from test_audit import OPTIONS, build_models, write_scans

    classifier, generator = build_models(tmp_path / "models")
    scans = write_scans(tmp_path / "scans", 3)
    options = {k: v for k, v in OPTIONS.items() if k not in ("targets", "only")}
    result = assert_not_driven_by(str(classifier), str(generator), scans, "chest_tube", TARGET, max_flip_rate=1.0,
                                  out_dir=tmp_path / "audit", **options)
    stat = result.stat(TARGET, "chest_tube")
    assert stat.scans == 3 and result.report_html.is_file()
    assert {s.attribute for s in result.aggregate.stats} == {"chest_tube"}
    with pytest.raises(AssertionError, match=f"flip rate {stat.flip_rate:.2f}"):  # resumes: no second explaining
        assert_driven_by(str(classifier), str(generator), scans, "chest_tube", TARGET, min_flip_rate=1.01,
                         out_dir=tmp_path / "audit", **options)


def test_a_failure_names_the_flips_not_counted():
    """Flips the explanations did not credit to the attribute are left out of the rate, and the message says so."""
    result = constructed_result([i % 5 != 0 for i in range(20)], verdicts={i: "unconfirmed" for i in (1, 2, 3, 4, 6, 7, 8, 9)})
    stat = result.stat(TARGET, "chest_tube")
    assert (stat.flips, stat.unconfirmed) == (8, 8)
    with pytest.raises(AssertionError, match=r"8 of 20 scans; 8 more unconfirmed, not counted"):
        check_not_driven_by(result, "chest_tube", TARGET, max_flip_rate=0.05)
