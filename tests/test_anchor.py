"""Counterfactuals drawn onto the scan (`anchor="scan"`): the scan plus what the edit changed."""
import dataclasses

import numpy as np
import pytest
import torch

from xcounter.attributes import load_attributes
from xcounter.errors import ModelError, XCounterError
from xcounter.explainer import Explainer

from tiny_generator import TINY_STEPS as STEPS  # noqa: E402  (the shared `generator` fixture's)


@pytest.fixture(scope="module")
def attributes():
    cxr = load_attributes("cxr")
    keep = ("pleural_effusion", "chest_tube", "body_width")
    return dataclasses.replace(cxr, attributes=tuple(cxr[name] for name in keep))


REPORT = "PA chest radiograph. Right pleural effusion. Right-sided chest tube."


@pytest.fixture(scope="module")
def context(classifier, generator, attributes, scan):
    from xcounter.methods import EditContext

    inversion = generator.invert(torch.from_numpy(scan / 255.0).float()[None, None], REPORT, STEPS)
    return EditContext(classifier=classifier, generator=generator, attributes=attributes, inversion=inversion,
                       source_embedding=generator.embed([REPORT])[0].detach(), target="Effusion",
                       target_index=classifier.target_index("Effusion"), steps=STEPS, prompt=REPORT)


def test_an_anchored_trajectory_is_the_scan_plus_what_the_edit_changed(context, attributes):
    """P_0 renders as the scan; every other point is its decode plus the scan's residual detail, kept where the
    edit changed little and faded out where it changed most; a further swap step drawn later is rendered the
    same way."""
    from xcounter.methods import get_method
    from xcounter.search import ANCHOR_FADE, ANCHOR_FLOOR

    effusion = attributes["pleural_effusion"]
    plain = get_method("trajectory", swap_steps=[2, 0]).trajectory(context, effusion, "add")
    anchored = get_method("trajectory", swap_steps=[2, 0], anchor="scan").trajectory(context, effusion, "add")
    scan = context.inversion.image
    assert plain.residual is None and anchored.residual is not None
    assert torch.equal(anchored.points, plain.points)  # the same edit, only drawn onto the scan
    assert torch.allclose(anchored.images[0], scan[0].clamp(0, 1), atol=1e-5)
    assert not torch.allclose(plain.images[0], scan[0], atol=1e-3)  # the tiny generator's reconstruction is not
    generator = context.generator
    with torch.no_grad():
        decoded = generator.decode(anchored.points)
    residual = scan - decoded[:1]
    assert torch.allclose(anchored.residual, residual, atol=1e-6)
    change = (decoded - decoded[:1]).abs()
    largest = change.flatten(1).amax(1)
    for k in range(1, len(decoded)):
        scale = max(ANCHOR_FADE * float(largest[k]), ANCHOR_FLOOR)
        kept = (1 - change[k] / scale).clamp(0, 1)
        assert torch.allclose(anchored.images[k], (decoded[k] + kept * residual[0]).clamp(0, 1), atol=1e-5)
        strongest = change[k] >= scale  # where the edit acted, the generator's own pixels
        assert torch.allclose(anchored.images[k][strongest], decoded[k][strongest].clamp(0, 1), atol=1e-5)
        assert strongest.any()
        calm = change[k] < 0.01 * scale  # where it barely did, (almost) the scan's
        assert calm.any() and torch.allclose(anchored.images[k][calm], scan[0][calm].clamp(0, 1), atol=0.02)
    drawn = anchored.image_at(1)  # not a control point: drawn now, rendered onto the scan the same way
    with torch.no_grad():
        latent = anchored.sampler.draw(1)[0]
        assert torch.allclose(drawn, anchored.anchor.apply(generator.decode(latent)).clamp(0, 1), atol=1e-5)
        assert torch.allclose(drawn, anchored.render(generator, latent), atol=1e-6)


def test_an_anchored_counterfactual_is_compared_with_the_scan(context, attributes, classifier):
    """The unedited image, the starting probability and the difference map are the scan's."""
    from xcounter.methods import get_method

    effusion = attributes["pleural_effusion"]
    counterfactual = get_method("trajectory", swap_steps=[2, 0], anchor="scan").generate(context, effusion, "add")
    scan = context.inversion.image.clamp(0, 1)
    scan_hwc = scan[0].permute(1, 2, 0).numpy()
    assert np.allclose(counterfactual.film[0], scan_hwc, atol=1e-5)
    assert np.allclose(counterfactual.image - counterfactual.difference, scan_hwc, atol=1e-5)
    with torch.no_grad():
        probability = float(torch.sigmoid(classifier.margins(scan)[0, context.target_index]))
    assert counterfactual.probability_before == pytest.approx(probability, abs=1e-5)
    with pytest.raises(XCounterError, match="anchor must be one of"):
        get_method("trajectory", anchor="input")


def test_the_gradient_ranking_is_taken_at_the_scan(context, classifier, generator):
    """With the residual, the linearised classifier is read at the scan itself, not at the reconstruction."""
    from xcounter.disentangle.directions import GradientProjection

    inversion = context.inversion
    z_0 = inversion.prefix[-1] if inversion.prefix is not None else inversion.z_0
    with torch.no_grad():
        residual = inversion.image - generator.decode(z_0)
        at_scan = float(classifier.margins(inversion.image)[0, context.target_index])
    projection = GradientProjection(classifier, generator, context.target_index, residual=residual)
    projection.fit(z_0, {"a": torch.ones_like(z_0)})
    assert projection.margin_ == pytest.approx(at_scan, abs=1e-4)
    plain = GradientProjection(classifier, generator, context.target_index).fit(z_0, {"a": torch.ones_like(z_0)})
    assert plain.margin_ != pytest.approx(at_scan, abs=1e-4)


def test_the_explainer_draws_onto_what_the_generator_asks_for(classifier, generator, attributes, scan):
    """None = the generator's own anchor; the choice is recorded, and warnings about the reconstruction's
    decision (which no longer is where edits start) are not given."""
    def explain(**options):
        return Explainer(classifier, generator, attributes, attribution=False, swap_steps=[2], signs=["add"],
                         examine=["chest_tube"], **options).explain(scan, target="Effusion", seed=1)

    own = explain()
    assert own.settings["anchor"] == "reconstruction"
    anchored = explain(anchor="scan")
    assert anchored.settings["anchor"] == "scan"
    counterfactual = anchored.results[0].counterfactuals[0]
    assert np.allclose(counterfactual.image - counterfactual.difference, np.clip(anchored.image, 0, 1), atol=1e-5)
    assert not any("flips are measured from the reconstruction" in w for w in anchored.warnings)
    generator.anchor = "scan"
    try:
        assert Explainer(classifier, generator, attributes).anchor == "scan"
        assert Explainer(classifier, generator, attributes, anchor="reconstruction").anchor == "reconstruction"
    finally:
        generator.anchor = "reconstruction"
    with pytest.raises(XCounterError, match="anchor must be one of"):
        Explainer(classifier, generator, attributes, anchor="both")


def test_anchor_comes_from_the_folder_and_is_checked(tmp_path):
    from tiny_generator import tiny_generator_dir
    from xcounter.generators import load_generator

    loaded = load_generator(tiny_generator_dir(tmp_path / "own", settings={"steps": 2, "anchor": "scan"}))
    assert loaded.anchor == "scan" and loaded.identity()["anchor"] == "scan"
    plain = load_generator(tiny_generator_dir(tmp_path / "plain", settings={"steps": 2}))
    assert plain.anchor == "reconstruction" and "anchor" not in plain.identity()
    with pytest.raises(ModelError, match="anchor must be one of"):
        load_generator(tiny_generator_dir(tmp_path / "bad", settings={"anchor": "pixels"}))


def test_the_card_names_what_the_edits_were_drawn_onto(classifier, generator, attributes, scan):
    from xcounter.report import render_html, text_summary

    explanation = Explainer(classifier, generator, attributes, attribution=False, swap_steps=[2], signs=["add"],
                            examine=["chest_tube"], anchor="scan").explain(scan, target="Effusion", seed=1)
    html = render_html(explanation)
    assert "Counterfactual − scan" in html and "drawn onto the scan itself" in html
    assert "edits drawn onto the scan" in text_summary(explanation).splitlines()[0]
    explanation.settings["anchor"] = "reconstruction"
    html = render_html(explanation)
    assert "Counterfactual − reconstruction" in html and "drawn onto the scan itself" not in html
    assert "drawn onto" not in text_summary(explanation)


def test_the_command_line_offers_every_anchor():
    from xcounter.cli.engine_options import ANCHOR_CHOICES
    from xcounter.search import ANCHORS

    assert set(ANCHOR_CHOICES) == set(ANCHORS)
