"""Report renderers on a synthetic Explanation: self-contained, escaped, accessible, atomic; JSON round trip."""
from __future__ import annotations

import dataclasses
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from xcounter.explanation import Explanation
from xcounter.report import plots, read_json_sidecar, render_html, text_summary, write_html, write_json_sidecar
from xcounter.report import json_sidecar
from xcounter.report.sample import sample_explanation

HOSTILE_LABEL = '<script>alert("label")</script>'
HOSTILE_FILE = 'x"><img src=y onerror=alert(1)>.png'
HOSTILE_ATTRIBUTE = "tube'\"<b>bold</b>"


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def hostile_explanation() -> Explanation:
    explanation = sample_explanation(seed=1, size=24, label=HOSTILE_LABEL,
                                     attribute_names=("chest_tube", HOSTILE_ATTRIBUTE, "pacemaker"),
                                     source_name=HOSTILE_FILE)
    explanation.warnings.append("check <this> & that")
    return explanation


@pytest.fixture(scope="module")
def html() -> str:
    return render_html(sample_explanation())


def test_card_is_self_contained(html):
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<script" not in html.lower()
    assert "@import" not in html and "url(" not in html
    assert "<link" not in html.lower()
    sources = [attrs.get("src", "") for tag, attrs in _tags(html) if tag == "img"]
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)


def test_every_image_has_alt_text(html):
    images = [attrs for tag, attrs in _tags(html) if tag == "img"]
    # scan, reconstruction, 2 attribution maps, per attribute (image, difference, legend, plot, 6 film frames),
    # and the whole generator edit beside the pruned shortcut counterfactual
    assert len(images) == 4 + 3 * (4 + 6) + 1
    assert all(attrs.get("alt", "").strip() for attrs in images)


def test_card_shows_identity_predictions_and_distinct_verdicts(html):
    explanation = sample_explanation()
    assert explanation.classifier["sha256"] in html and explanation.generator["sha256"] in html
    assert "cxr-shortcut.pt" in html and "phantom-cxr" in html
    for prediction in explanation.predictions:
        assert prediction.label in html
    assert 'class="badge v-shortcut"' in html and 'class="badge v-drives"' in html and 'class="badge v-none"' in html
    assert "@media print" in html
    assert "Phantom models" in html  # method notes adapt to the phantom generator
    assert 'alt="Counterfactual scan with chest_tube removed at strength 0.60"' in html
    assert 'alt="Counterfactual scan with pneumothorax added at strength 0.60"' in html


def test_card_shows_a_mediated_flip_and_its_credit():
    explanation = sample_explanation(attribute_names=("chest_tube", "pneumothorax", "pacemaker", "central_line"))
    explanation.results[3].counterfactuals[0].oracle_change = {f"attribute_{i}": 0.1 * i for i in range(12)}
    html = render_html(explanation)
    assert 'class="badge v-mediated"' in html and "Mediated" in html
    assert "the change is credited to pneumothorax" in html
    # long fact lines wrap between their items (a nowrap span next to another without a space never breaks)
    facts = re.findall(r'<p class="facts">(.*?)</p>', html, flags=re.S)
    assert facts and not any("</span><span>" in line for line in facts)


def test_card_and_summary_say_when_a_flip_is_credited_to_a_removal_by_its_pixels():
    from xcounter.report.text import text_summary

    explanation = sample_explanation(attribute_names=("chest_tube", "pneumothorax", "pacemaker", "central_line"))
    mediated = next(r for r in explanation.results if r.verdict == "mediated")
    mediated.mediated_by = "pixels"
    html = render_html(explanation)
    assert f"only through pixels that removing {mediated.mediator} also needs" in html
    assert f"credited to the removal of {mediated.mediator}" in html
    assert "The edit also changed" not in html  # that is the oracle's reading, not this one
    assert f"credited to the removal of {mediated.mediator}" in text_summary(explanation)


def test_card_and_summary_show_an_unconfirmed_shortcut_and_why():
    from xcounter.report.text import text_summary

    names = ("chest_tube", "pneumothorax", "pacemaker", "central_line", "portable_label")
    explanation = sample_explanation(attribute_names=names)
    html = render_html(explanation)
    assert 'class="badge v-unconfirmed"' in html and 'class="attr v-unconfirmed-box"' in html
    assert "strongest pixels (2.0% of the image)" in html and "probability 0.70" in html
    assert "not from the portable label itself" in html
    assert "Strongest change only: does not flip (p 0.70)" in html  # the image the check was made on
    assert html.count("Strongest change only") == 1
    assert "Confirmed on the edit's own pixels" not in html  # the shortcut was not checked
    explanation.results[0].core = dataclasses.replace(explanation.results[4].core, flipped=True, probability=0.3)
    assert "flips it too (probability 0.30)" in render_html(explanation)
    summary = text_summary(explanation)
    line = next(row for row in summary.splitlines() if "portable_label" in row)
    assert "unconfirmed" in line and "its own pixels alone do not flip it (p 0.70)" in line
    assert "SHORTCUT ALERT" not in line


def test_a_shortcut_flag_that_needed_a_near_full_edit_is_shown_with_a_caution():
    explanation = sample_explanation()
    shortcut, drives = explanation.results[0], explanation.results[1]
    assert (shortcut.verdict, drives.verdict) == ("shortcut", "drives")
    shortcut.minimal_strength, drives.minimal_strength = 0.3, 0.95
    assert "near full strength" not in render_html(explanation)  # a finding's strong edit is no shortcut flag
    assert "near full strength" not in text_summary(explanation)
    shortcut.minimal_strength = 0.9
    html = render_html(explanation)
    assert html.count("It needed an edit near full strength") == 1
    assert "where the generator draws the most besides the chest tube" in html
    line = next(row for row in text_summary(explanation).splitlines() if "chest_tube" in row)
    assert "SHORTCUT ALERT" in line and "needed an edit near full strength" in line


def test_card_shows_the_whole_generator_edit_beside_a_pruned_counterfactual():
    """A pruned flip shows what the generator drew in all, and how many of its parts the decision needed; the
    shortcut check's tile is made from the whole sample too."""
    explanation = sample_explanation()
    html = render_html(explanation)
    assert html.count("Whole generator edit") == 1
    assert "the decision needs 1 of its 2 changed parts" in html
    assert "the counterfactual shows only the parts it needs" in html  # and the method notes say why
    assert "(shown, keeping 1 of its 2 changed parts, refilled at the levels of the image around them, probability" \
        in html
    from xcounter.report.text import text_summary
    line = next(row for row in text_summary(explanation).splitlines() if "chest_tube" in row)
    assert line.endswith(", 1 of its 2 changed parts kept, refilled at the levels around them)")
    explanation.results[0].counterfactuals[0].filled = False  # pasted as drawn: nothing said about a refill
    assert "refilled" not in render_html(explanation) and "refilled" not in text_summary(explanation)
    explanation.results[0].counterfactuals[0].sample = None
    html = render_html(explanation)
    assert "Whole generator edit" not in html and "the counterfactual shows only the parts it needs" not in html


def test_card_states_the_generators_own_settings_per_attribute_kind():
    explanation = sample_explanation(size=16)
    explanation.settings["kind_edits"] = {"pathology": {"alpha": 1.0, "edit_guidance": 1.0, "swap_steps": [15, 0]}}
    html = render_html(explanation)
    assert "<th>kind edits</th><td>pathology: (alpha: 1; edit guidance: 1; swap steps: 15, 0)</td>" in html
    explanation.settings["kind_edits"] = {}
    assert "<th>kind edits</th><td>–</td>" in render_html(explanation)


def test_card_names_the_inversion_the_edits_started_from():
    explanation = sample_explanation(size=16)
    explanation.settings.pop("inversion", None)  # an explanation from before the setting existed
    assert "latent space (DDIM)" in render_html(explanation)
    explanation.settings["inversion"] = "ddpm"
    html = render_html(explanation)
    assert "latent space (edit-friendly DDPM inversion, which keeps the noise of the scan)" in html
    assert "<th>inversion</th><td>ddpm</td>" in html


def test_untrusted_text_is_escaped():
    html = render_html(hostile_explanation())
    assert HOSTILE_LABEL not in html and "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#34;label&#34;)&lt;/script&gt;" in html
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "onerror=alert(1)>" not in html
    assert "check &lt;this&gt; &amp; that" in html
    assert all(tag != "b" for tag, _ in _tags(html))
    assert len([tag for tag, _ in _tags(html) if tag == "img"]) == 4 + 3 * 10 + 1  # no injected images


def test_method_notes_report_disentanglement_and_missing_gradcam():
    explanation = sample_explanation(size=16)
    html = render_html(explanation)
    assert "was 0.62 before and 0.01 after orthogonalisation" in html and "Grad-CAM is not shown" not in html
    del explanation.attributions[explanation.targets[0]]["gradcam"]
    explanation.direction_cosine = {}
    html = render_html(explanation)
    assert "Grad-CAM is not shown" in html and "orthogonalisation" not in html


def test_poor_reconstruction_is_warned():
    explanation = sample_explanation()
    assert "reproduces this scan poorly" not in render_html(explanation)
    explanation.reconstruction_error = 0.25
    html = render_html(explanation)
    assert "reproduces this scan poorly" in html
    assert "Warning: The generator reproduces this scan poorly" in text_summary(explanation)
    explanation.warnings.append("reconstruction error 0.250 is above 0.05")  # the engine said it: say it once
    summary = text_summary(explanation)
    assert summary.count("Warning:") == 1 and "reconstruction error 0.250" in summary


def test_degenerate_maps_render():
    explanation = sample_explanation(size=16)
    label = explanation.targets[0]
    explanation.attributions[label] = {"integrated_gradients": np.zeros((16, 16), np.float32)}
    for result in explanation.results:
        for counterfactual in result.counterfactuals:
            counterfactual.difference = np.zeros_like(counterfactual.difference)
    html = render_html(explanation)
    assert "Integrated Gradients (no signal)" in html
    assert plots.difference_png(np.zeros((4, 4, 1)))[1] == 0.0


def test_write_html_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "card.html"
    calls = {"n": 0}
    original = plots.probability_plot_png

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("renderer failed midway")
        return original(*args, **kwargs)

    monkeypatch.setattr(plots, "probability_plot_png", failing)
    with pytest.raises(RuntimeError, match="midway"):
        write_html(sample_explanation(), target)
    assert calls["n"] == 2 and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(plots, "probability_plot_png", original)
    write_html(sample_explanation(), target)
    assert [p.name for p in tmp_path.iterdir()] == ["card.html"]
    assert target.read_text(encoding="utf-8").rstrip().endswith("</html>")


def _assert_round_trip(original: Explanation, restored: Explanation) -> None:
    assert restored.predictions == original.predictions
    assert restored.targets == original.targets and restored.source == original.source
    assert restored.classifier == original.classifier and restored.settings == original.settings
    assert [r.verdict for r in restored.ranking] == [r.verdict for r in original.ranking]
    np.testing.assert_allclose(restored.image, original.image, atol=1 / 255 + 1e-6)
    for before, after in zip(original.results, restored.results):
        assert (after.attribute, after.minimal_strength, after.flipped) == (before.attribute, before.minimal_strength,
                                                                           before.flipped)
        cf_before, cf_after = before.counterfactuals[0], after.counterfactuals[0]
        assert cf_after.probabilities == cf_before.probabilities and len(cf_after.film) == len(cf_before.film)
        scale = np.abs(cf_before.difference).max()
        np.testing.assert_allclose(cf_after.difference, cf_before.difference, atol=scale / 127 + 1e-6)
        assert cf_after.difference.shape == cf_before.difference.shape
        if cf_before.region is None:
            assert cf_after.region is None
        else:
            np.testing.assert_array_equal(cf_after.region, cf_before.region)
        assert (cf_after.parts, cf_after.parts_kept, cf_after.filled) == (cf_before.parts, cf_before.parts_kept,
                                                                         cf_before.filled)
        if cf_before.kept is None:
            assert cf_after.kept is None
        else:
            np.testing.assert_allclose(cf_after.kept, cf_before.kept, atol=1 / 255 + 1e-6)
        if cf_before.sample is None:
            assert cf_after.sample is None
        else:
            np.testing.assert_allclose(cf_after.sample, cf_before.sample, atol=1 / 255 + 1e-6)
    assert any(c.sample is not None for r in original.results for c in r.counterfactuals)  # the slot is exercised
    assert any(c.filled for r in original.results for c in r.counterfactuals)
    label = original.targets[0]
    np.testing.assert_allclose(restored.attributions[label]["integrated_gradients"],
                               original.attributions[label]["integrated_gradients"], atol=2 / 255 + 1e-3)


def test_json_sidecar_with_image_files(tmp_path):
    original = hostile_explanation()
    path = write_json_sidecar(original, tmp_path / "report.json")
    document = json.loads(path.read_text())
    assert document["format"] == "xcounter-report" and document["images"] == "files"
    body = document["explanation"]
    for key in ("image", "reconstruction", "predictions", "results", "classifier", "generator", "seed",
                "schema_version", "attributions", "warnings"):
        assert key in body
    assert body["image"]["encoding"] == "png" and body["image"]["range"] == [0.0, 1.0]
    assert body["image"]["file"] == "report_images/image.png"
    difference = body["results"][0]["counterfactuals"][0]["difference"]
    assert difference["range"][0] == -difference["range"][1] < 0
    files = sorted(p.name for p in (tmp_path / "report_images").iterdir())
    assert "image.png" in files and all(re.fullmatch(r"[a-z0-9-]+\.png", name) for name in files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report_images"]
    _assert_round_trip(original, read_json_sidecar(path))


def test_json_sidecar_embedded(tmp_path):
    original = sample_explanation(size=20)
    path = write_json_sidecar(original, tmp_path / "r.json", embed_images=True)
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    document = json.loads(path.read_text())
    assert document["images"] == "embedded" and "png_base64" in document["explanation"]["image"]
    _assert_round_trip(original, read_json_sidecar(path))


def test_json_sidecar_from_before_edit_regions_still_reads(tmp_path):
    """Sidecars written before schema 1.1 carry no `region` (before 1.5 no `sample`): they read back with none."""
    path = write_json_sidecar(sample_explanation(), tmp_path / "old.json", embed_images=True)
    document = json.loads(path.read_text(encoding="utf-8"))
    for result in document["explanation"]["results"]:
        for counterfactual in result["counterfactuals"]:
            for slot in ("region", "sample", "parts", "parts_kept", "filled", "kept"):
                counterfactual.pop(slot)
    path.write_text(json.dumps(document), encoding="utf-8")
    restored = read_json_sidecar(path)
    assert all(c.region is None and not c.pruned and not c.filled for r in restored.results for c in r.counterfactuals)
    assert restored.results[0].counterfactuals[0].image is not None


def test_json_sidecar_is_atomic(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = json_sidecar.encode_png

    def failing(array, signed=False):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk trouble midway")
        return original(array, signed)

    monkeypatch.setattr(json_sidecar, "encode_png", failing)
    with pytest.raises(OSError, match="midway"):
        write_json_sidecar(sample_explanation(), tmp_path / "report.json")
    assert list(tmp_path.iterdir()) == []


def test_text_summary_ranks_and_flattens_untrusted_text():
    explanation = hostile_explanation()
    explanation.results[0] = dataclasses.replace(explanation.results[0], attribute="evil\nline\x1b[31m")
    summary = text_summary(explanation)
    lines = summary.splitlines()
    assert "SHORTCUT ALERT" in summary and "does not drive" in summary and "drives" in summary
    assert "\x1b" not in summary and any("evil?line?[31m" in line for line in lines)
    ranked = [line for line in lines if re.match(r"\s+\d+\. ", line)]
    assert len(ranked) == 3 and "flips when" in ranked[0] and "at strength 0.60" in ranked[0]
    assert "no flip" in ranked[2]  # flips first (ordered by their image change), the rest after


def test_text_summary_names_what_else_the_edit_changed():
    """With an oracle, a flip that also moved another attribute says so beside the verdict."""
    explanation = sample_explanation()
    flipped = next(r for r in explanation.results if r.flipped)
    flipped.best.oracle_change = {"nodule_size": -0.93, "pacemaker": 0.01, flipped.attribute: -1.0}
    line = next(l for l in text_summary(explanation).splitlines() if f" {flipped.attribute} " in l)
    assert line.endswith("; also changed: nodule_size -0.93")
    flipped.best.oracle_change = {"pacemaker": 0.01}
    assert "also changed" not in text_summary(explanation)


def test_ranking_puts_the_smallest_image_change_first():
    """Among flips, the counterfactual that changed the image least (L1) ranks first, whatever its strength."""
    explanation = sample_explanation()
    flips = [r for r in explanation.results if r.flipped]
    assert len(flips) >= 2
    a, b = flips[0], flips[1]
    a.best.l1, b.best.l1 = 0.05, 0.01
    a.minimal_strength, b.minimal_strength = 0.1, 0.9
    order = [r.attribute for r in explanation.ranking if r.flipped and r.target == a.target]
    assert order.index(b.attribute) < order.index(a.attribute)
    assert all(r.flipped for r in explanation.ranking[:len(flips)])
    a.best.crossing_l1 = 0.001  # a's image is a later sample; its minimal edit changed the image least
    order = [r.attribute for r in explanation.ranking if r.flipped and r.target == a.target]
    assert order.index(a.attribute) < order.index(b.attribute)
