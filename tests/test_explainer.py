"""End to end: tiny generator + tiny classifier on a small array, through `Explainer.explain`."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from xcounter.attributes import load_attributes
from xcounter.disentangle.edit_region import probe_steps
from xcounter.disentangle.trajectories import DEFAULT_ALPHA, DEFAULT_EDIT_GUIDANCE, evaluations_per_step
from xcounter.errors import XCounterError
from xcounter.explainer import NFE_PER_ATTRIBUTE_BUDGET, Explainer, default_targets, source_prompt
from xcounter.explanation import Explanation, Prediction

from tiny_generator import TINY_STEPS as STEPS  # noqa: E402  (the shared `generator` fixture's)
#: UNet evaluations per edited denoising step at the default edit guidance (source and edited prompt)
EDITED_STEP_COST = evaluations_per_step(1.0, DEFAULT_EDIT_GUIDANCE)


@pytest.fixture(scope="module")
def attributes():
    """Three examined attributes (one pathology, two devices) and one anatomy attribute."""
    cxr = load_attributes("cxr")
    keep = ("pleural_effusion", "chest_tube", "pacemaker", "body_width")
    return dataclasses.replace(cxr, attributes=tuple(cxr[name] for name in keep))


@pytest.fixture(scope="module")
def explanation(classifier, generator, attributes, scan):
    return Explainer(classifier, generator, attributes).explain(scan, seed=3)


def _without_time(explanation: Explanation) -> dict:
    data = explanation.to_dict()
    data.pop("created")
    data.pop("source")
    return data


def test_explanation_fields_are_filled(explanation, classifier, attributes):
    e = explanation
    assert e.image.shape == (16, 16, 1) and e.reconstruction.shape == (16, 16, 1)
    assert 0 <= e.reconstruction_error <= 1 and e.prompt
    assert [p.label for p in e.predictions] == classifier.targets
    assert e.targets == default_targets(e.predictions)
    examined = ["pleural_effusion", "chest_tube", "pacemaker"]
    assert [(r.target, r.attribute) for r in e.results] == [(t, a) for t in e.targets for a in examined]
    for result in e.results:
        assert result.kind == attributes[result.attribute].kind
        if result.kind == "pathology":  # no report: the classifier's decision says whether it is there
            positive = e.prediction(attributes[result.attribute].label).positive
            assert [c.sign for c in result.counterfactuals] == (["remove"] if positive else ["add"])
        else:  # a device without a report: unknown, so both edits
            assert [c.sign for c in result.counterfactuals] == ["add", "remove"]
        assert result.gradient_sensitivity is not None
        for c in result.counterfactuals:
            assert c.image.shape == (16, 16, 1) and c.difference.shape == (16, 16, 1)
            assert 1 < len(c.film) <= 6 and len(c.strengths) == len(c.probabilities)
            assert c.strengths[0] == 0.0 and c.strengths[-1] == 1.0
            assert c.l1 is not None and c.ssim is not None and c.nfe > 0
            assert len(c.direction_cosine) == len(c.strengths) - 2
    assert set(e.gradient_ranking) == set(e.targets)
    assert e.direction_cosine["names"] == examined
    assert e.source["name"] == "array" and e.classifier["name"] == "tiny-densenet"
    assert e.generator["name"] == "tiny-sd"
    assert e.settings["steps"] == STEPS and e.settings["swap_steps"] == [3, 2, 1, 0]
    assert {"torch", "diffusers", "transformers", "xcounter"} <= set(e.versions)
    assert e.created and e.seed == 3
    assert set(e.attributions) == set(e.targets)
    assert e.attributions[e.targets[0]]["integrated_gradients"].shape == (16, 16)
    assert any("reconstruction error" in w for w in e.warnings) == (e.reconstruction_error > 0.05)


def test_nfe_is_recorded_and_under_budget(explanation, attributes):
    # post-swap steps off the shared prefix, two UNet evaluations each under edit guidance
    per_sign = EDITED_STEP_COST * sum(STEPS - s for s in (3, 2, 1, 0))
    # a removal first reads its DiffEdit region: 2 evaluations per probe step
    region_probes = 2 * len(probe_steps(STEPS))
    first_target = [r for r in explanation.results if r.target == explanation.targets[0]]
    assert all(c.nfe == per_sign + (region_probes if c.sign == "remove" else 0)
               for r in first_target for c in r.counterfactuals)
    # a region: a removal's DiffEdit mask, or where the attribute can be (the chest tube's box), additions too
    assert all((c.region is not None) == (c.sign == "remove" or attributes[r.attribute].where != "anywhere")
               for r in first_target for c in r.counterfactuals)
    # inversion + source prefix once, each attribute and sign once (shared by every target)
    assert explanation.nfe == 2 * STEPS + sum(c.nfe for r in first_target for c in r.counterfactuals)
    assert explanation.nfe / 3 <= NFE_PER_ATTRIBUTE_BUDGET


def test_json_round_trip_is_equal(explanation):
    again = Explanation.from_json(explanation.to_json())
    assert again.to_dict() == explanation.to_dict()
    assert again.ranking[0].attribute == explanation.ranking[0].attribute


def test_deterministic_for_a_fixed_seed_from_array_or_file(classifier, generator, attributes, scan, explanation,
                                                           tmp_path):
    path = tmp_path / "scan.png"
    Image.fromarray(scan).save(path)
    again = Explainer(classifier, generator, attributes).explain(str(path), seed=3)
    assert again.source["name"] == "scan.png"
    assert _without_time(again) == _without_time(explanation)


def test_unknown_target_is_a_clear_error(classifier, generator, attributes, scan):
    with pytest.raises(XCounterError, match="did you mean 'Effusion'"):
        Explainer(classifier, generator, attributes).explain(scan, target="Efusion")


class _Brightness(torch.nn.Module):
    def forward(self, images):
        return 10 * images.mean(dim=(1, 2, 3)).unsqueeze(1)


def test_a_device_that_flips_the_decision_is_a_shortcut(generator, attributes, scan):
    """A 'classifier' reading brightness, its threshold placed between the reconstruction and the strongest
    chest_tube edit (measured here), must be flipped by adding a chest tube: a shortcut alert."""
    from xcounter.classifiers import Classifier, make_profile

    def brightness_classifier(threshold):
        return Classifier(_Brightness(), ["Pneumothorax"], [threshold], make_profile("unit"), name="brightness")

    probe = Explainer(brightness_classifier(0.0), generator, attributes, attribution=False, flip_margin=0).explain(
        scan, target="Pneumothorax")
    tube = probe.result("Pneumothorax", "chest_tube").counterfactuals[0]
    start, end = 10 * tube.film[0].mean(), 10 * tube.film[-1].mean()
    assert abs(end - start) > 1e-3, "the chest_tube edit must change the image"
    threshold = float(start + 0.6 * (end - start))
    explanation = Explainer(brightness_classifier(threshold), generator, attributes, attribution=False,
                            flip_margin=0).explain(
        scan, target="Pneumothorax")
    result = explanation.result("Pneumothorax", "chest_tube")
    add = result.counterfactuals[0]
    assert add.flipped and 0 < add.minimal_strength <= 1
    assert result.flipped and result.verdict == "shortcut"
    before, after = 10 * add.film[0].mean() - threshold, 10 * add.image.mean() - threshold
    assert (before > 0) != (after > 0)  # the returned counterfactual really flips
    assert abs(after) < abs(end - start)  # and lies near the boundary, not at the strongest edit
    assert explanation.ranking[0].flipped


def test_refining_the_shown_sample_keeps_the_flip_and_counts_its_unet_calls(generator, attributes, scan):
    """With `refine_nfe`, the sample shown may be a further swap step between the candidates: it still flips,
    lies at or past the minimal strength and no further than the first flipping candidate, and the UNet calls
    it took are in the counterfactual's NFE and the explanation's."""
    from xcounter.classifiers import Classifier, make_profile

    def explain(threshold, **options):
        classifier = Classifier(_Brightness(), ["Pneumothorax"], [threshold], make_profile("unit"), name="b")
        options = {"swap_steps": [3, 0], **options}
        return Explainer(classifier, generator, attributes, attribution=False, flip_margin=0, signs=["add"],
                         examine=["chest_tube"], **options).explain(scan, target="Pneumothorax")

    # the brightness of the samples at strengths 0.25 and 0.75 (candidates here, a further step below)
    probe = explain(0.0, swap_steps=[3, 1, 0]).result("Pneumothorax", "chest_tube").counterfactuals[0]
    assert probe.strengths == [0.0, 0.25, 0.75, 1.0]
    start, weak, strong = (10 * probe.film[k].mean() for k in (0, 1, 2))
    assert abs(strong - weak) > 1e-4, "the chest_tube edit must change the image"
    threshold = float(weak + 0.3 * (strong - weak))  # the 0.25 candidate keeps the decision, 0.75 flips it
    plain, refined = explain(threshold), explain(threshold, refine_nfe=None)
    first, shown = plain.ranking[0].best, refined.ranking[0].best
    assert first.flipped and shown.flipped and first.minimal_strength == shown.minimal_strength
    assert first.image_strength == 1.0 and shown.minimal_strength - 1e-9 <= shown.image_strength < 1.0
    assert (10 * shown.image.mean() > threshold) == (10 * first.image.mean() > threshold) != (start > threshold)
    assert shown.nfe > first.nfe and refined.nfe - plain.nfe == shown.nfe - first.nfe
    assert refined.settings["refine_nfe"] is None and plain.settings["refine_nfe"] == 0


def test_source_prompt_from_positive_findings():
    cxr = load_attributes("cxr")
    predictions = [Prediction("Effusion", 0.9, 2.0, 0.0, True), Prediction("Cardiomegaly", 0.2, -1.0, 0.0, False)]
    assert source_prompt(cxr, predictions) == "PA chest radiograph. Right pleural effusion."
    assert source_prompt(cxr, predictions[1:]) == cxr.neutral_prompt
    assert default_targets(predictions) == ["Effusion", "Cardiomegaly"]


def test_method_registry():
    from xcounter.methods import get_method
    from xcounter.methods.trajectory import TrajectoryMethod

    assert isinstance(get_method("trajectory", alpha=2.0), TrajectoryMethod)
    assert get_method("latent_shift").name == "latent_shift"
    with pytest.raises(XCounterError, match="did you mean 'sdedit'"):
        get_method("sdedt")


class _FakeOracle:
    """Measures 'chest_tube' as brightness and 'pacemaker' as a constant: a known ground truth."""

    attributes = ["chest_tube", "pacemaker"]

    def measure(self, images):
        brightness = images.mean(dim=(1, 2, 3))
        return {"chest_tube": brightness, "pacemaker": torch.full_like(brightness, 0.3)}


def test_oracle_change_and_cfrt(classifier, generator, attributes, scan):
    e = Explainer(classifier, generator, attributes, oracle=_FakeOracle(), attribution=False).explain(
        scan, target="Effusion")
    add = e.result("Effusion", "chest_tube").counterfactuals[0]
    assert set(add.oracle_change) == {"chest_tube", "pacemaker"}
    assert add.oracle_change["pacemaker"] == 0.0
    expected = float(add.image.mean() - e.result("Effusion", "chest_tube").counterfactuals[0].film[0].mean())
    assert add.oracle_change["chest_tube"] == pytest.approx(expected, abs=5e-3)
    assert 0.0 <= add.cfrt <= 1.0
    assert e.result("Effusion", "pleural_effusion").counterfactuals[0].cfrt is None  # not measured by the oracle
    assert e.settings["oracle"] is True
    assert e.settings["mediation"] is True
    for result in e.results:  # a mediated verdict always names a flipping cause of the same target
        if result.verdict == "mediated":
            assert result.flipped and e.result(result.target, result.mediator).drives_decision


def test_what_the_reconstruction_lost_is_named_with_an_oracle(classifier, generator, attributes, scan):
    """An oracle reading that moved between the scan and its reconstruction is a warning: it is missing from (or
    added to) every counterfactual's starting point. Readings that hold stay out of it."""
    class Reader:
        attributes = ["nodule", "pacemaker"]

        def measure(self, images):
            first = torch.zeros(len(images))
            first[0] = 1.0  # only the first image of a batch (the scan, when it is measured) shows a nodule
            return {"nodule": first, "pacemaker": torch.full((len(images),), 0.3)}

    def explain(oracle):
        return Explainer(classifier, generator, attributes, oracle=oracle, attribution=False, swap_steps=[2],
                         examine=["chest_tube"], signs=["add"]).explain(scan, target="Effusion")

    lost = [w for w in explain(Reader()).warnings if "differs from the scan" in w]
    assert len(lost) == 1 and "nodule -1.00" in lost[0] and "pacemaker" not in lost[0]
    assert "--inversion ddpm" in lost[0]
    assert not any("differs from the scan" in w for w in explain(None).warnings)


def test_mediation_needs_an_oracle_and_can_be_switched_off(classifier, generator, attributes, scan, monkeypatch):
    import xcounter.explainer as explainer_module

    calls = []
    monkeypatch.setattr(explainer_module, "apply_mediation", lambda results, **kw: calls.append(len(results)))
    without = Explainer(classifier, generator, attributes, attribution=False).explain(scan, target="Effusion")
    switched_off = Explainer(classifier, generator, attributes, oracle=_FakeOracle(), attribution=False,
                             mediation=False).explain(scan, target="Effusion")
    assert calls == [] and without.settings["mediation"] is False and switched_off.settings["mediation"] is False
    with_oracle = Explainer(classifier, generator, attributes, oracle=_FakeOracle(), attribution=False).explain(
        scan, target="Effusion")
    assert calls == [len(with_oracle.results)] and with_oracle.settings["mediation"] is True


@pytest.mark.parametrize("method", ["latent_shift", "sdedit", "random"])
def test_other_methods_run_through_the_same_explainer(classifier, generator, attributes, scan, method):
    e = Explainer(classifier, generator, attributes, method=method, attribution=False).explain(
        scan, target="Effusion")
    assert e.settings["method"] == method
    assert len(e.results) == 3 and all(c.method == method for r in e.results for c in r.counterfactuals)
    assert e.gradient_ranking == {}  # only the trajectory method gives latent attribute directions


def test_explicit_swap_steps_are_checked_and_used(classifier, generator, attributes, scan):
    with pytest.raises(XCounterError, match="swap steps"):
        Explainer(classifier, generator, attributes, swap_steps=[2, STEPS]).explain(scan, target="Effusion")
    e = Explainer(classifier, generator, attributes, swap_steps=[2, 0], attribution=False, signs=("add",)).explain(
        scan, target="Effusion")
    assert e.settings["swap_steps"] == [2, 0]
    assert all(c.strengths == [0.0, 0.5, 1.0] and c.sign == "add" for r in e.results for c in r.counterfactuals)
    assert e.nfe == 2 * STEPS + 3 * EDITED_STEP_COST * (2 + 4)


def test_examine_restricts_the_attributes(classifier, generator, attributes, scan):
    e = Explainer(classifier, generator, attributes, examine=["chest_tube"], attribution=False).explain(
        scan, target="Effusion")
    assert [r.attribute for r in e.results] == ["chest_tube"]
    assert e.direction_cosine["names"] == ["pleural_effusion", "chest_tube", "pacemaker"]
    with pytest.raises(XCounterError, match="did you mean 'chest_tube'"):
        Explainer(classifier, generator, attributes, examine=["chest_tub"])
    with pytest.raises(XCounterError, match="anatomy"):
        Explainer(classifier, generator, attributes, examine=["body_width"])



def test_trajectory_method_alone_with_another_source_prompt(classifier, generator, attributes, scan):
    """A caller (benchmark) may build the context itself: a prefix for another prompt is not reused."""
    from xcounter.methods import EditContext, get_method

    inversion = generator.invert(torch.from_numpy(scan / 255.0).float()[None, None], "chest radiograph", STEPS)
    source = generator.embed(["no pneumothorax"])[0].detach()
    context = EditContext(classifier=classifier, generator=generator, attributes=attributes, inversion=inversion,
                          source_embedding=source, target="Effusion", target_index=classifier.target_index("Effusion"),
                          steps=STEPS)
    method = get_method("trajectory", swap_steps=[2, 0])
    before = generator.nfe
    counterfactual = method.generate(context, attributes["pacemaker"], "remove")
    assert counterfactual.nfe == EDITED_STEP_COST * ((STEPS - 2) + STEPS) + 2 * len(probe_steps(STEPS))
    # a fresh source prefix, then the removal's region probes and the candidates
    assert generator.nfe - before == STEPS + counterfactual.nfe
    assert counterfactual.method == "trajectory" and counterfactual.sign == "remove"
    again = method.generate(context, attributes["pacemaker"], "remove")  # cached: no UNet call
    assert generator.nfe - before == STEPS + counterfactual.nfe
    assert np.array_equal(again.image, counterfactual.image)


@pytest.mark.parametrize("options,message", [({"alpha": 0.0}, "alpha"), ({"tolerance": 2.0}, "tolerance"),
                                             ({"max_nfe": 0}, "max_nfe"), ({"swap_steps": []}, "swap_steps"),
                                             ({"signs": ("both",)}, "signs"), ({"method": "lime"}, "unknown")])
def test_bad_settings_are_clear_errors(classifier, generator, attributes, options, message):
    with pytest.raises(XCounterError, match=message):
        Explainer(classifier, generator, attributes, **options)


def test_a_report_decides_which_edits_are_tried(classifier, generator, attributes, scan):
    report = "PA chest radiograph. Right-sided chest tube. No pleural effusion."
    e = Explainer(classifier, generator, attributes, attribution=False).explain(scan, report_text=report, seed=3)
    signs = {r.attribute: [c.sign for c in r.counterfactuals] for r in e.results}
    effusion_called = "Effusion" in e.targets and e.prediction("Effusion").positive
    assert signs == {"chest_tube": ["remove"], "pacemaker": ["add"],
                     "pleural_effusion": ["add", "remove"] if effusion_called else ["add"]}
    assert e.settings["signs"] == "auto" and e.settings["edit_guidance"] > 1


def test_the_generators_own_edit_guidance_is_the_default_and_an_explicit_one_wins(classifier, attributes, scan):
    from tiny_generator import tiny_pipeline
    from xcounter.generators import SDGenerator

    own = SDGenerator(tiny_pipeline(1, seed=0), steps=STEPS, name="tiny-sd", edit_guidance=2.0)
    examine = dict(attribution=False, examine=["chest_tube"], signs=("add",))
    assert Explainer(classifier, own, attributes, **examine).edit_guidance == 2.0
    assert Explainer(classifier, own, attributes, edit_guidance=1.5, **examine).edit_guidance == 1.5
    plain = SDGenerator(tiny_pipeline(1, seed=0), steps=STEPS, name="tiny-sd")
    assert Explainer(classifier, plain, attributes, **examine).edit_guidance == DEFAULT_EDIT_GUIDANCE
    # it reaches the edits: same scan and seed, a different push draws a different counterfactual
    a = Explainer(classifier, own, attributes, **examine).explain(scan, target="Effusion", seed=3)
    b = Explainer(classifier, plain, attributes, **examine).explain(scan, target="Effusion", seed=3)
    assert a.settings["edit_guidance"] == 2.0 and b.settings["edit_guidance"] == DEFAULT_EDIT_GUIDANCE
    image_a = a.result("Effusion", "chest_tube").best.image
    image_b = b.result("Effusion", "chest_tube").best.image
    assert not np.array_equal(image_a, image_b)


def test_a_generator_may_edit_one_kind_of_attribute_with_its_own_alpha_and_guidance(classifier, attributes, scan):
    """The generator's `kind_edits` reach that kind's edits only; explicit Explainer settings still win."""
    from tiny_generator import tiny_pipeline
    from xcounter.generators import SDGenerator

    def generator(kind_edits=None):
        return SDGenerator(tiny_pipeline(1, seed=0), steps=STEPS, name="tiny-sd", edit_guidance=2.0,
                           kind_edits=kind_edits)

    gentle = {"device": {"alpha": 1.0, "edit_guidance": 1.0}}
    examine = dict(attribution=False, examine=["chest_tube", "pleural_effusion"], signs=("add",))
    own = Explainer(classifier, generator(gentle), attributes, **examine).explain(scan, target="Effusion", seed=3)
    plain = Explainer(classifier, generator(), attributes, **examine).explain(scan, target="Effusion", seed=3)
    assert own.settings["kind_edits"]["device"]["edit_guidance"] == 1.0 and plain.settings["kind_edits"] == {}
    assert own.settings["alpha"] == DEFAULT_ALPHA and own.settings["edit_guidance"] == 2.0  # everything else
    tube, plain_tube = own.result("Effusion", "chest_tube").best, plain.result("Effusion", "chest_tube").best
    assert not np.array_equal(tube.image, plain_tube.image)
    assert tube.nfe < plain_tube.nfe  # w = 1: one UNet evaluation per edited step instead of two
    effusion = own.result("Effusion", "pleural_effusion").best
    assert np.array_equal(effusion.image, plain.result("Effusion", "pleural_effusion").best.image)
    explicit = Explainer(classifier, generator(gentle), attributes, alpha=DEFAULT_ALPHA, edit_guidance=2.0,
                         **examine).explain(scan, target="Effusion", seed=3)
    assert explicit.settings["kind_edits"] == {}
    assert np.array_equal(explicit.result("Effusion", "chest_tube").best.image, plain_tube.image)
    # "KIND:SIGN" reaches that kind's edits toward that sign only
    removals = Explainer(classifier, generator({"device:remove": {"alpha": 1.0}}), attributes, **examine).explain(
        scan, target="Effusion", seed=3)
    assert np.array_equal(removals.result("Effusion", "chest_tube").best.image, plain_tube.image)
    additions = Explainer(classifier, generator({"device:add": {"alpha": 1.0}}), attributes, **examine).explain(
        scan, target="Effusion", seed=3)
    assert not np.array_equal(additions.result("Effusion", "chest_tube").best.image, plain_tube.image)
    assert additions.settings["kind_edits"] == {"device:add": {"alpha": 1.0, "edit_guidance": 2.0,
                                                               "swap_steps": own.settings["swap_steps"]}}
    assert set(removals.settings["kind_edits"]) == {"device:remove"}


def test_stated_in_reads_negations_first():
    cxr = load_attributes("cxr")
    text = "Chest x-ray. No pleural effusion. Large right pneumothorax. Right-sided chest tube."
    assert cxr["pleural_effusion"].stated_in(text) is False
    assert cxr["pneumothorax"].stated_in(text) is True
    assert cxr["chest_tube"].stated_in(text) is True
    assert cxr["pacemaker"].stated_in(text) is None


def test_a_target_pathology_is_also_edited_toward_the_other_decision(classifier, generator, attributes, scan):
    """The report denies an effusion; whatever the classifier says about Effusion, the effusion edit toward the
    other decision is tried too, so an unsupported positive call can be traced to its finding."""
    report = "PA chest radiograph. No pleural effusion."
    e = Explainer(classifier, generator, attributes, attribution=False).explain(
        scan, target="Effusion", report_text=report, seed=3)
    signs = [c.sign for c in e.result("Effusion", "pleural_effusion").counterfactuals]
    expected = ["add"] if not e.prediction("Effusion").positive else ["add", "remove"]
    assert signs == expected


def test_a_renamed_output_is_matched_to_its_finding(classifier, generator, attributes, scan):
    """A wrapper whose outputs are renamed (e.g. several classifiers combined) says which disease each reports."""
    report = "PA chest radiograph. No pleural effusion."
    explainer = Explainer(classifier, generator, attributes, attribution=False)
    predictions = classifier.predict(torch.from_numpy(scan / 255.0).float()[None, None])[0]
    effusion = attributes["pleural_effusion"]
    positive = [dataclasses.replace(p, label="Effusion@model", positive=True) for p in predictions
                if p.label == "Effusion"]
    assert explainer.signs_for(effusion, report, True, positive, ["Effusion@model"]) == ("add",)  # unknown name
    classifier.finding = lambda label: label.split("@")[0]
    try:
        assert explainer.signs_for(effusion, report, True, positive, ["Effusion@model"]) == ("add", "remove")
    finally:
        del classifier.finding


def test_a_criterion_output_is_matched_to_its_finding(generator):
    """A 7-point-checklist output ("Blue-white veil") names the veil as Effusion names the effusion: the veil
    is edited toward that output's other decision and is never demoted as mediated for it; with the diagnosis
    and the criterion disagreeing and no report, both edits are tried."""
    from xcounter.classifiers import Classifier, make_profile
    skin = load_attributes("skin")
    veil = skin["blue_white_veil"]
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(2))
    classifier = Classifier(network, ["Melanoma", "Blue-white veil"], [0.0, 0.0], make_profile("imagenet", size=32),
                            domain="skin")
    explainer = Explainer(classifier, generator, skin, attribution=False)
    agree = [Prediction("Melanoma", 0.9, 2.0, 0.0, True), Prediction("Blue-white veil", 0.9, 2.0, 0.0, True)]
    disagree = [agree[0], Prediction("Blue-white veil", 0.1, -2.0, 0.0, False)]
    report = "Dermoscopic image. Blue-white veil."
    assert explainer.signs_for(veil, report, True, disagree, ["Blue-white veil"]) == ("add", "remove")
    assert explainer.signs_for(veil, report, True, agree, ["Melanoma"]) == ("remove",)
    assert explainer.signs_for(veil, "", False, agree) == ("remove",)
    assert explainer.signs_for(veil, "", False, disagree) == ("add", "remove")
    assert "blue_white_veil" in explainer.own_findings("Blue-white veil")


def test_restated_swaps_the_sentence_that_states_the_opposite():
    cxr = load_attributes("cxr")
    text = "PA chest radiograph. Moderate right pleural effusion. Enlarged cardiac silhouette. Right-sided chest tube."
    assert cxr["pleural_effusion"].restated(text, "remove") == \
        "PA chest radiograph. No pleural effusion. Enlarged cardiac silhouette. Right-sided chest tube."
    assert cxr["chest_tube"].restated(text, "remove").endswith("Enlarged cardiac silhouette. No chest tube.")
    assert cxr["pleural_effusion"].restated(text, "add") is None  # already stated: nothing to swap
    assert cxr["pacemaker"].restated(text, "add") is None  # not mentioned: the direction alone adds it
    assert cxr["pleural_effusion"].restated("Chest x-ray. No pleural effusion.", "add") == \
        "Chest x-ray. Right pleural effusion."


def test_a_stated_finding_is_removed_from_the_restated_prompt(classifier, generator, attributes, scan):
    """With a report that names the effusion, the removal edits from the report with that sentence swapped;
    the trajectory differs from the direction-only edit, and the random control never restates."""
    from xcounter.disentangle.prompt_edit import spliced_embedding
    from xcounter.methods import EditContext, get_method
    from xcounter.search import build_trajectory

    report = "PA chest radiograph. Right pleural effusion. Right-sided chest tube."
    inversion = generator.invert(torch.from_numpy(scan / 255.0).float()[None, None], report, STEPS)
    source = generator.embed([report])[0].detach()
    context = EditContext(classifier=classifier, generator=generator, attributes=attributes, inversion=inversion,
                          source_embedding=source, target="Effusion", target_index=classifier.target_index("Effusion"),
                          steps=STEPS, prompt=report)
    effusion = attributes["pleural_effusion"]
    restated = get_method("trajectory", swap_steps=[2, 0]).trajectory(context, effusion, "remove")
    plain = get_method("trajectory", swap_steps=[2, 0], restate=False).trajectory(context, effusion, "remove")
    assert not torch.allclose(restated.points[1:], plain.points[1:])
    assert torch.equal(restated.points[0], plain.points[0])  # the unedited reconstruction is shared
    prefix = generator.denoise_prefix(inversion.z_T, source, STEPS)
    direction = context.directions.get("pleural_effusion")
    if direction is None:
        from xcounter.disentangle.directions import LanguageDirections
        direction = LanguageDirections(generator, attributes, names=["pleural_effusion"],
                                       disentangle=False).fit().directions_["pleural_effusion"]
    base = spliced_embedding(generator, report, effusion.restated(report, "remove"), source)
    direct = build_trajectory(generator, inversion.z_T, prefix, source, direction, attribute="pleural_effusion",
                              sign="remove", alpha=DEFAULT_ALPHA, swap_steps=[2, 0], edit_guidance=DEFAULT_EDIT_GUIDANCE,
                              edit_base=base, localise=True)  # removals are confined to their region
    assert torch.allclose(restated.points, direct.points, atol=1e-5)
    control = get_method("random", swap_steps=[2, 0])
    assert control.search.restate is False


def test_further_swap_steps_are_drawn_as_the_trajectory_s_own(classifier, generator, attributes, scan):
    """The shown sample's refinement draws more swap steps of the same edit: restated, confined to its region,
    at the same edit guidance. Drawn again, a control point's swap step gives that control point; a new step
    is drawn once and kept for the scan's other targets."""
    from xcounter.methods import EditContext, get_method

    report = "PA chest radiograph. Right pleural effusion. Right-sided chest tube."
    inversion = generator.invert(torch.from_numpy(scan / 255.0).float()[None, None], report, STEPS)
    context = EditContext(classifier=classifier, generator=generator, attributes=attributes,
                          inversion=inversion, source_embedding=generator.embed([report])[0].detach(),
                          target="Effusion", target_index=classifier.target_index("Effusion"), steps=STEPS,
                          prompt=report)
    method = get_method("trajectory", swap_steps=[2, 0])
    trajectory = method.trajectory(context, attributes["pleural_effusion"], "remove")
    assert trajectory.region is not None and trajectory.sampler.region is trajectory.region
    for k in (1, 2):
        latent, image = trajectory.sampler.draw(trajectory.swap_steps[k])
        assert torch.allclose(latent, trajectory.points[k:k + 1], atol=1e-5)
        assert torch.allclose(image, trajectory.images[k:k + 1], atol=1e-5)
    before = generator.nfe
    image = trajectory.image_at(1)
    assert generator.nfe - before == trajectory.sampler.cost(1) > 0
    assert trajectory.image_at(1) is image and generator.nfe - before == trajectory.sampler.cost(1)
    assert torch.equal(trajectory.image_at(2), trajectory.images[1:2])  # a control point: no UNet call


def test_spliced_embedding_changes_only_the_restated_sentence(generator):
    """The edited prompt's states up to the end of the changed sentence, the source's for the rest."""
    from xcounter.disentangle.prompt_edit import spliced_embedding

    source_text = "Chest x-ray. Right pleural effusion. Right-sided chest tube."
    edited_text = "Chest x-ray. No pleural effusion. Right-sided chest tube."
    source, edited = generator.embed([source_text])[0], generator.embed([edited_text])[0]
    spliced = spliced_embedding(generator, source_text, edited_text, source)
    ids_source = generator.tokenizer(source_text).input_ids
    ids_edited = generator.tokenizer(edited_text).input_ids
    tail = len(generator.tokenizer(" Right-sided chest tube.").input_ids) - 1  # its words and the end token
    head = len(ids_edited) - tail
    assert spliced.shape == source.shape
    assert torch.equal(spliced[:head], edited[:head])  # "no pleural effusion ." read in its new context
    assert torch.equal(spliced[head:head + tail], source[len(ids_source) - tail:len(ids_source)])
    assert not torch.equal(spliced[head:head + tail], edited[head:head + tail])  # the causal encoder's drift
    assert torch.equal(spliced_embedding(generator, source_text, source_text, source), source)


def test_acquisition_statements_are_restated_only_where_confined(classifier, generator, attributes, scan):
    """"Portable technique." describes the whole film: unconfined, its removal is the direction alone; confined
    to the top band (the shipped vocabulary), the sentence is swapped as for any finding."""
    from xcounter.methods import EditContext, get_method

    report = "Chest x-ray. Portable technique. Right pleural effusion."
    cxr = load_attributes("cxr")
    portable = cxr["portable_label"]
    assert portable.kind == "acquisition" and portable.restated(report, "remove") is not None
    inversion = generator.invert(torch.from_numpy(scan / 255.0).float()[None, None], report, STEPS)
    context = EditContext(classifier=classifier, generator=generator, attributes=cxr, inversion=inversion,
                          source_embedding=generator.embed([report])[0].detach(), target="Effusion",
                          target_index=classifier.target_index("Effusion"), steps=STEPS, prompt=report)
    assert portable.where == "top"
    restating = get_method("trajectory", swap_steps=[2, 0]).trajectory(context, portable, "remove")
    plain = get_method("trajectory", swap_steps=[2, 0], restate=False).trajectory(context, portable, "remove")
    assert not torch.equal(restating.points, plain.points)
    anywhere = dataclasses.replace(portable, where="anywhere")
    unconfined = get_method("trajectory", swap_steps=[2, 0]).trajectory(context, anywhere, "remove")
    unconfined_plain = get_method("trajectory", swap_steps=[2, 0], restate=False).trajectory(context, anywhere, "remove")
    assert torch.equal(unconfined.points, unconfined_plain.points)


class _MeanBrightness:
    """A stand-in classifier whose margin grows with an image's mean brightness (threshold `cut`)."""

    def __init__(self, cut: float):
        self.cut = cut

    def margins(self, images: torch.Tensor) -> torch.Tensor:
        return ((images.float().mean(dim=(1, 2, 3)) - self.cut) * 1e4)[:, None]


def _brightening_trajectory(generator, attributes, scan):
    """(trajectory, images, classifier, context): five decoded points, brightest last, and a classifier reading
    the mean brightness that flips from the third point on."""
    from xcounter.methods import EditContext
    from xcounter.search import Trajectory

    inversion = generator.invert(torch.from_numpy(scan / 255.0).float()[None, None], "chest radiograph", STEPS)
    base = inversion.prefix[-1]
    step = torch.randn(base.shape, generator=torch.Generator().manual_seed(0))
    candidates = torch.cat([base + k * step for k in range(5)])
    with torch.no_grad():
        means = generator.decode(candidates).clamp(0, 1).mean(dim=(1, 2, 3))
    points = candidates[means.argsort()]  # brightest last: the control points' decisions are monotone
    with torch.no_grad():
        images = generator.decode(points).clamp(0, 1)
    ordered = images.mean(dim=(1, 2, 3))
    trajectory = Trajectory(attribute="pacemaker", sign="add", swap_steps=[STEPS, 3, 2, 1, 0],
                            strengths=[0.0, 0.25, 0.5, 0.75, 1.0], points=points, images=images, nfe=0)
    classifier = _MeanBrightness(float(ordered[1] + ordered[2]) / 2)  # flips from the third point on
    context = EditContext(classifier=classifier, generator=generator, attributes=attributes, inversion=inversion,
                          source_embedding=generator.embed(["chest radiograph"])[0], target="Effusion",
                          target_index=0, steps=STEPS, flip_margin=1.0)
    return trajectory, images, classifier, context


def test_a_flip_is_shown_with_the_first_swap_step_sample_that_flips(generator, attributes, scan):
    """Default: the counterfactual image is the first swap-step sample past the threshold (a whole generator
    output, not a blend of latents on the Bézier curve); the minimal strength, and the L1 the ranking compares,
    are still the curve's crossing, at or below the sample's strength. `shown="crossing"` shows the curve there."""
    from xcounter.methods import get_method

    trajectory, images, classifier, context = _brightening_trajectory(generator, attributes, scan)
    shown = {}
    for how in ("sample", "crossing"):
        method = get_method("trajectory", shown=how, prune=False)  # the whole sample (tests/test_edit_pruning.py)
        method.trajectory = lambda *args, **kwargs: trajectory
        shown[how] = method.generate(context, attributes["pacemaker"], "add")
    sample, crossing = shown["sample"], shown["crossing"]
    assert sample.flipped and 0.0 < sample.minimal_strength <= 0.5 + 1e-6
    assert sample.minimal_strength == crossing.minimal_strength
    assert sample.image_strength == 0.5 and sample.shown_past_crossing == (sample.minimal_strength < 0.495)
    assert np.allclose(sample.image, images[2].permute(1, 2, 0).numpy())
    assert sample.probability_after == pytest.approx(float(torch.sigmoid(classifier.margins(images[2:3])[0, 0])))
    assert sample.minimal_edit_l1 == pytest.approx(crossing.l1) and crossing.crossing_l1 is None
    assert crossing.image_strength == crossing.minimal_strength and not crossing.shown_past_crossing
    with pytest.raises(XCounterError, match="shown"):
        get_method("trajectory", shown="blend")
    for bad in (-1, 2.5, "many", True):
        with pytest.raises(XCounterError, match="refine_nfe"):
            get_method("trajectory", refine_nfe=bad)
    assert get_method("trajectory", refine_nfe=40.0).refine_nfe == 40


def test_a_pruned_flip_keeps_the_whole_sample_and_the_same_verdict(generator, attributes, scan):
    """By default the sample shown is pruned to the parts of its edit the decision needs: it still flips (by the
    flip margin, read on the image shown), changes no more than the sample, keeps the sample beside it, and the
    minimal strength is the unpruned method's."""
    from xcounter.methods import get_method
    from xcounter.metrics import l1

    trajectory, images, classifier, context = _brightening_trajectory(generator, attributes, scan)
    made = {}
    for prune in (True, False):
        method = get_method("trajectory", prune=prune)
        method.trajectory = lambda *args, **kwargs: trajectory
        made[prune] = method.generate(context, attributes["pacemaker"], "add")
    pruned, whole = made[True], made[False]
    assert pruned.pruned and not whole.pruned and whole.parts is None
    assert np.allclose(pruned.sample, images[2].permute(1, 2, 0).numpy()) and np.allclose(pruned.sample, whole.image)
    assert np.allclose(pruned.whole_image, whole.whole_image)
    assert 1 <= pruned.parts_kept <= pruned.parts
    assert (pruned.minimal_strength, pruned.flipped, pruned.image_strength) == \
        (whole.minimal_strength, whole.flipped, whole.image_strength)
    margin = float(classifier.margins(torch.from_numpy(pruned.image).permute(2, 0, 1)[None])[0, 0])
    assert margin > context.flip_margin
    assert pruned.probability_after == pytest.approx(float(torch.sigmoid(torch.tensor(margin))), abs=1e-6)
    unedited = images[0].permute(1, 2, 0).numpy()
    assert np.allclose(pruned.difference, pruned.image - unedited, atol=1e-6)
    assert l1(pruned.image, unedited) <= l1(whole.image, unedited) + 1e-6
    with pytest.raises(XCounterError, match="prune"):
        get_method("trajectory", prune="yes")


def test_a_flip_is_pruned_at_the_generators_own_levels(classifier, generator, attributes, scan, monkeypatch):
    """The levels an edit is split at are the generator's (`prune_fractions`): the image shown is `prune_edit`'s
    at those levels, and the explanation's settings record them."""
    import xcounter.methods.trajectory as trajectory_module
    from xcounter.edit_pruning import prune_edit
    from xcounter.methods import get_method

    trajectory, images, brightness, context = _brightening_trajectory(generator, attributes, scan)
    asked = []

    def recording_prune_edit(*args, **kwargs):
        asked.append(kwargs.get("fractions"))
        return prune_edit(*args, **kwargs)

    monkeypatch.setattr(trajectory_module, "prune_edit", recording_prune_edit)
    for levels in ((0.15,), (0.15, 0.6)):
        monkeypatch.setattr(generator, "prune_fractions", levels)
        method = get_method("trajectory")
        method.trajectory = lambda *args, **kwargs: trajectory
        shown = method.generate(context, attributes["pacemaker"], "add")
        expected = prune_edit(images[:1], images[2:3], lambda batch: brightness.margins(batch)[:, 0],
                              reference_positive=False, flip_margin=1.0, fractions=levels)
        assert asked[-1] == levels and shown.pruned
        assert np.allclose(shown.image, expected.image[0].permute(1, 2, 0).numpy(), atol=1e-6)
    explanation = Explainer(classifier, generator, attributes, attribution=False, swap_steps=[2], signs=["add"],
                            examine=["chest_tube"]).explain(scan, target="Pneumothorax")
    assert explanation.settings["prune_fractions"] == [0.15, 0.6]
    unpruned = Explainer(classifier, generator, attributes, attribution=False, swap_steps=[2], signs=["add"],
                         examine=["chest_tube"], prune=False).explain(scan, target="Pneumothorax")
    assert "prune_fractions" not in unpruned.settings


def test_inversion_iterations_refine_the_shared_inversion_and_are_recorded(classifier, generator, attributes,
                                                                           scan):
    def explain(**options):
        return Explainer(classifier, generator, attributes, attribution=False, swap_steps=[2], signs=["add"],
                         examine=["chest_tube"], **options).explain(scan, target="Pneumothorax")

    plain, refined = explain(), explain(inversion_iterations=2)
    assert plain.settings["inversion_iterations"] == 0 and refined.settings["inversion_iterations"] == 2
    assert refined.nfe - plain.nfe == 2 * STEPS  # two more UNet evaluations per inversion step, once per scan
    assert not np.array_equal(refined.reconstruction, plain.reconstruction)
    with pytest.raises(XCounterError, match="inversion_iterations must be a whole number"):
        Explainer(classifier, generator, attributes, inversion_iterations=-1)


def test_ddpm_inversion_is_chosen_recorded_and_refuses_refinements(classifier, attributes, scan):
    from tiny_generator import tiny_pipeline
    from xcounter.generators import SDGenerator

    ddpm = SDGenerator(tiny_pipeline(1, seed=0), steps=STEPS, name="tiny-sd", inversion="ddpm")

    def explain(**options):
        return Explainer(classifier, ddpm, attributes, attribution=False, swap_steps=[2], signs=["add"],
                         examine=["chest_tube"], **options).explain(scan, target="Pneumothorax", seed=5)

    own = explain()
    assert own.settings["inversion"] == "ddpm" and own.settings["inversion_eta"] == ddpm.inversion_eta
    with torch.no_grad():  # the reconstruction is the VAE's own round trip
        image = torch.from_numpy(own.image).permute(2, 0, 1)[None]
        round_trip = ddpm.decode(ddpm.encode(image))[0].permute(1, 2, 0).numpy()
    assert np.allclose(own.reconstruction, round_trip, atol=1e-5)
    again = explain()  # the noisy latents are drawn from the explanation's seed
    assert np.array_equal(again.results[0].counterfactuals[0].image, own.results[0].counterfactuals[0].image)
    refined = explain(inversion_iterations=2)  # refinements ask for DDIM inversion
    assert refined.settings["inversion"] == "ddim" and refined.settings["inversion_iterations"] == 2
    assert not np.allclose(refined.reconstruction, own.reconstruction, atol=1e-3)
    assert explain(inversion="ddim").settings["inversion"] == "ddim"
    with pytest.raises(XCounterError, match="DDPM inversion is exact already"):
        Explainer(classifier, ddpm, attributes, inversion="ddpm", inversion_iterations=2)
    with pytest.raises(XCounterError, match="inversion must be one of"):
        Explainer(classifier, ddpm, attributes, inversion="exact")


def test_shortcut_flags_are_confirmed_on_the_edits_own_pixels(generator, attributes, scan):
    """With the threshold put between the reconstruction's logit and the chest tube edit's, the edit flips; the
    flag then carries its check on the edit's strongest pixels, and its verdict follows that check."""
    from xcounter.classifiers import Classifier, logit

    def explain(threshold, **options):
        model = Classifier(_Brightness(), ["Pneumothorax"], [threshold], name="brightness")
        return Explainer(model, generator, attributes, attribution=False, swap_steps=[2], signs=["add"],
                         examine=["chest_tube"], flip_margin=0.0, **options).explain(scan, target="Pneumothorax",
                                                                                     seed=3)

    first = explain(0.0)
    assert first.settings["confirm_shortcuts"] is False and first.results[0].core is None  # the generator's default
    probabilities = first.results[0].counterfactuals[0].probabilities  # from the reconstruction (strength 0) on
    before, after = logit(probabilities[0])[0], logit(probabilities[-1])[0]  # threshold 0: the logits themselves
    assert abs(after - before) > 1e-3
    threshold = (before + after) / 2
    flagged = explain(threshold, confirm_shortcuts=True)
    result = flagged.results[0]
    assert flagged.settings["confirm_shortcuts"] is True and result.flipped
    assert result.core is not None and result.verdict == ("shortcut" if result.core.flipped else "unconfirmed")
    assert 0 < result.core.share <= 1
    assert explain(threshold).results[0].verdict == "shortcut"  # unchecked: the flip alone decides


def test_the_removal_check_is_an_option_recorded_in_the_settings(classifier, generator, attributes, scan,
                                                                  monkeypatch):
    """On by default, off on request; the explainer hands it every result with the target's own finding kept."""
    import xcounter.explainer as explainer_module

    calls = []
    monkeypatch.setattr(explainer_module, "apply_removed_causes",
                        lambda results, keep: calls.append(([r.attribute for r in results], keep("Effusion"))))
    options = dict(attribution=False, swap_steps=[2], signs=["add"], examine=["chest_tube", "pleural_effusion"])
    on = Explainer(classifier, generator, attributes, **options).explain(scan, target="Effusion")
    assert on.settings["removal_check"] is True
    assert calls == [(["chest_tube", "pleural_effusion"], ["pleural_effusion"])]
    off = Explainer(classifier, generator, attributes, removal_check=False, **options).explain(scan,
                                                                                              target="Effusion")
    assert off.settings["removal_check"] is False and len(calls) == 1
    with pytest.raises(XCounterError, match="removal_check must be True or False"):
        Explainer(classifier, generator, attributes, removal_check="yes")
