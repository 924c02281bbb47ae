"""Mediated flips: an edit whose flip the oracle traces to another attribute's own flipping edit."""
import pytest

from xcounter.explanation import AttributeResult, Counterfactual, Explanation
from xcounter.mediation import MEDIATION_THRESHOLD, apply_mediation, find_mediators, toward
from xcounter.report.sample import sample_explanation
from xcounter.report.text import text_summary


def _result(attribute: str, sign: str, flipped: bool, oracle: dict | None, target: str = "Effusion",
            kind: str = "device") -> AttributeResult:
    counterfactual = Counterfactual(attribute=attribute, sign=sign, method="trajectory", strengths=[0.0, 1.0],
                                    probabilities=[0.9, 0.2 if flipped else 0.8], minimal_strength=0.5 if flipped else None,
                                    flipped=flipped, probability_before=0.9, probability_after=0.2 if flipped else 0.8,
                                    oracle_change=oracle)
    verdict = ("shortcut" if kind == "device" else "drives") if flipped else "does not drive"
    return AttributeResult(target=target, attribute=attribute, kind=kind, verdict=verdict,
                           minimal_strength=counterfactual.minimal_strength, flipped=flipped, sign=sign,
                           counterfactuals=[counterfactual])


def test_toward_reads_a_change_along_the_edit():
    assert toward(-0.8, "remove") == pytest.approx(0.8)
    assert toward(-0.8, "add") == pytest.approx(-0.8)
    assert toward(None, "add") == 0.0


def test_a_device_edit_that_also_erases_the_finding_is_mediated():
    """Adding a pacemaker flips Effusion, but its counterfactual also lost the effusion, whose own removal flips
    it: the pacemaker's flip is the effusion's; the effusion removal keeps its verdict."""
    effusion = _result("pleural_effusion", "remove", True, {"pleural_effusion": -0.9, "pacemaker": 0.0},
                       kind="pathology")
    pacemaker = _result("pacemaker", "add", True, {"pacemaker": 0.95, "pleural_effusion": -0.8})
    results = [effusion, pacemaker]
    assert find_mediators(results) == {"pacemaker": "pleural_effusion"}
    apply_mediation(results)
    assert (pacemaker.verdict, pacemaker.mediator, pacemaker.drives_decision) == ("mediated", "pleural_effusion", False)
    assert pacemaker.mediated_by == "oracle" and effusion.mediated_by is None
    assert (effusion.verdict, effusion.mediator, effusion.drives_decision) == ("drives", None, True)
    assert pacemaker.flipped  # the counterfactual did flip; only the credit moves


def test_no_mediation_below_the_threshold_or_without_a_flipping_mediator():
    effusion = _result("pleural_effusion", "remove", True, {"pacemaker": 0.0}, kind="pathology")
    slight = _result("pacemaker", "add", True, {"pleural_effusion": -(MEDIATION_THRESHOLD - 0.1)})
    assert find_mediators([effusion, slight]) == {}
    # the effusion's removal does not flip on its own here: erasing it explains nothing
    still = _result("pleural_effusion", "remove", False, {"pacemaker": 0.0}, kind="pathology")
    strong = _result("pacemaker", "add", True, {"pleural_effusion": -0.9})
    assert find_mediators([still, strong]) == {}
    # a change against the mediator's own edit (the effusion grew) is no mediation either
    grew = _result("pacemaker", "add", True, {"pleural_effusion": 0.9})
    assert find_mediators([effusion, grew]) == {}
    # without oracle readings there is nothing to read
    assert find_mediators([_result("pleural_effusion", "remove", True, None, kind="pathology"),
                           _result("pacemaker", "add", True, None)]) == {}


def test_edits_entangled_both_ways_keep_both_verdicts():
    """When each edit also makes the other, the oracle cannot tell which change did the work."""
    a = _result("pleural_effusion", "remove", True, {"consolidation": -0.8}, kind="pathology")
    b = _result("consolidation", "remove", True, {"pleural_effusion": -0.7}, kind="pathology")
    assert find_mediators([a, b]) == {}


def test_mediation_stays_within_one_target_and_names_the_largest_change():
    effusion = _result("pleural_effusion", "remove", True, {}, kind="pathology")
    nodule = _result("nodule", "remove", True, {}, kind="pathology")
    tube = _result("chest_tube", "add", True, {"pleural_effusion": -0.6, "nodule": -0.9})
    other_target = _result("pleural_effusion", "remove", True, {}, target="Pneumothorax", kind="pathology")
    other_tube = _result("chest_tube", "add", True, {"pleural_effusion": -0.9}, target="Pneumothorax")
    results = [effusion, nodule, tube, other_target, other_tube]
    apply_mediation(results)
    assert tube.mediator == "nodule"
    assert other_tube.mediator == "pleural_effusion"  # mediated by its own target's effusion result


def test_ranking_puts_mediated_flips_after_causes_and_the_json_round_trip_keeps_them():
    e = sample_explanation(attribute_names=("chest_tube", "pneumothorax", "pacemaker", "central_line"))
    verdicts = [r.verdict for r in e.ranking]
    assert verdicts.index("mediated") > max(verdicts.index("shortcut"), verdicts.index("drives"))
    assert verdicts.index("mediated") < verdicts.index("does not drive")
    back = Explanation.from_json(e.to_json())
    mediated = back.result("Pneumothorax", "central_line")
    assert (mediated.verdict, mediated.mediator) == ("mediated", "pneumothorax")
    assert "credited to pneumothorax" in text_summary(back)


def test_a_pre_mediation_explanation_reads_back_without_mediators():
    data = sample_explanation().to_dict()
    data["schema_version"] = "1.1"
    for result in data["results"]:
        result.pop("mediator")
    back = Explanation.from_dict(data)
    assert all(r.mediator is None for r in back.results)


def test_the_targets_own_finding_is_never_demoted_but_can_mediate():
    """The generator's effusion removal read as an added consolidation whose own edit also flips: the label's
    own finding keeps its verdict (`keep`), and a device edit that erased the effusion is still credited to it."""
    effusion = _result("pleural_effusion", "remove", True, {"consolidation": 0.9}, kind="pathology")
    consolidation = _result("consolidation", "add", True, {"pleural_effusion": -0.1}, kind="pathology")
    pacemaker = _result("pacemaker", "add", True, {"pleural_effusion": -0.9})
    results = [effusion, consolidation, pacemaker]
    assert find_mediators(results)["pleural_effusion"] == "consolidation"
    apply_mediation(results, keep=lambda target: ["pleural_effusion"] if target == "Effusion" else [])
    assert effusion.verdict == "drives" and effusion.mediator is None
    assert pacemaker.mediator == "pleural_effusion"
