"""Phantom worlds: attributes change the pixels where they should, determinism, prompts,
shortcut sampling, dataset format and CLI errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from xcounter.cli import main
from xcounter.errors import XCounterError
from xcounter.phantoms import make_phantom, sample_attributes
from xcounter.phantoms.dataset import read_metadata, write_dataset
from xcounter.phantoms.prompts import caption
from xcounter.phantoms.shortcuts import measured_rho, plan, validate_shortcut
from xcounter.phantoms.vocab import vocabulary

SIZE = 128
SEED = 11


def pair(domain: str, name: str, seed: int = SEED, **details):
    off, _ = make_phantom(domain, seed, size=SIZE, **{name: False}, **details)
    on, attributes = make_phantom(domain, seed, size=SIZE, **{name: True}, **details)
    return off[:, :, :].mean(axis=2), on[:, :, :].mean(axis=2), attributes


def downsample(image: np.ndarray) -> np.ndarray:
    """The 64 px view the generator is trained on (2 x 2 box average)."""
    return image.reshape(image.shape[0] // 2, 2, image.shape[1] // 2, 2).mean(axis=(1, 3))


def region(name: str) -> tuple[slice, slice]:
    """Image regions in pixel slices (rows, cols); image left = patient right."""
    h = SIZE
    return {
        "image_left": (slice(0, h), slice(0, int(0.42 * h))),
        "image_right": (slice(0, h), slice(int(0.58 * h), h)),
        "lower_left": (slice(int(0.5 * h), int(0.8 * h)), slice(int(0.08 * h), int(0.42 * h))),
        "lower_right": (slice(int(0.5 * h), int(0.8 * h)), slice(int(0.58 * h), int(0.92 * h))),
        "top_band": (slice(0, int(0.16 * h)), slice(0, h)),
        "below_top_band": (slice(int(0.16 * h), h), slice(0, h)),
        "upper_third": (slice(0, int(0.33 * h)), slice(0, h)),
    }[name]


# ----------------------------------------------------------------------------- chest phantoms
def test_same_seed_same_image_and_different_seeds_differ():
    a, attrs_a = make_phantom("cxr", 3, size=64)
    b, attrs_b = make_phantom("cxr", 3, size=64)
    c, _ = make_phantom("cxr", 4, size=64)
    assert a.shape == (64, 64, 1) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert np.array_equal(a, b) and attrs_a == attrs_b
    assert np.abs(a - c).mean() > 0.01


def test_attribute_dict_has_every_yaml_name_details_and_labels():
    _, attributes = make_phantom("cxr", 5, size=32)
    vocab = vocabulary("cxr")
    for attribute in vocab:
        value = attributes[attribute.name]
        if attribute.type == "binary":
            assert isinstance(value, bool)
        else:
            assert isinstance(value, float) and 0.0 <= value <= 1.0
    for label in vocab.labels:
        assert attributes[label] in (0, 1)
    assert "pleural_effusion_side" in attributes and "cardiothoracic_ratio" in attributes


@pytest.mark.parametrize("name", [a.name for a in vocabulary("cxr") if a.type == "binary"])
def test_every_cxr_finding_is_visible_at_64px(name):
    off, on, _ = pair("cxr", name)
    assert np.abs(downsample(on) - downsample(off)).max() > 0.15, f"{name} invisible at 64 px"


def test_right_effusion_whitens_right_base_and_spares_left_lung():
    off, on, attributes = pair("cxr", "pleural_effusion", pleural_effusion_side="right", pleural_effusion_size=0.7)
    assert attributes["Effusion"] == 1
    diff = on - off
    assert diff[region("lower_left")].mean() > 0.05           # patient right base is image left
    assert np.abs(diff[region("image_right")]).max() < 0.02     # left hemithorax untouched
    assert np.abs(diff[region("upper_third")]).max() < 0.02     # apices untouched


def test_left_pneumothorax_darkens_left_hemithorax_only():
    off, on, _ = pair("cxr", "pneumothorax", pneumothorax_side="left", pneumothorax_size=0.8)
    diff = on - off
    assert (diff[region("image_right")] < -0.03).mean() > 0.03     # dark pleural space, no markings
    assert np.abs(diff[region("image_left")]).max() < 0.02


def test_consolidation_stays_in_its_lobe():
    off, on, _ = pair("cxr", "consolidation", consolidation_lobe="right lower lobe", consolidation_extent=0.9)
    diff = on - off
    assert diff[region("lower_left")].mean() > 0.04
    assert np.abs(diff[region("image_right")]).max() < 0.02


def test_cardiomegaly_widens_the_heart_not_the_apices():
    off, on, attributes = pair("cxr", "cardiomegaly")
    assert attributes["cardiothoracic_ratio"] > 0.55
    diff = on - off
    heart = diff[int(0.45 * SIZE): int(0.85 * SIZE), int(0.25 * SIZE): int(0.85 * SIZE)]
    assert heart.mean() > 0.008 and heart.max() > 0.2            # lung replaced by heart at its borders
    assert np.abs(diff[region("upper_third")]).max() < 0.02


@pytest.mark.parametrize("name, other", [("laterality_marker", "portable_label"), ("portable_label", "laterality_marker")])
@pytest.mark.parametrize("letter", ["R", "L"])
def test_acquisition_labels_sit_in_the_top_band(name, other, letter):
    off, on, _ = pair("cxr", name, laterality_marker_letter=letter, **{other: True})
    diff = np.abs(on - off)
    assert diff[region("top_band")].max() > 0.3
    assert diff[region("below_top_band")].max() < 0.02


def test_chest_tube_is_local_and_on_its_side():
    off, on, _ = pair("cxr", "chest_tube", chest_tube_side="right")
    diff = on - off
    changed = np.abs(diff) > 0.02
    assert 0.005 < changed.mean() < 0.15                        # a tube, not a global change
    assert np.abs(diff[region("image_right")]).max() < 0.02
    assert downsample(diff).max() > 0.3


def test_nodule_is_a_small_blob():
    off, on, _ = pair("cxr", "nodule", nodule_diameter=0.5)
    changed = np.abs(on - off) > 0.03
    assert 0.001 < changed.mean() < 0.03


def test_continuous_identity_changes_the_image():
    a, _ = make_phantom("cxr", SEED, size=64, body_width=0.1)
    b, _ = make_phantom("cxr", SEED, size=64, body_width=0.9)
    assert np.abs(a - b).mean() > 0.01


def test_bad_overrides_raise_clear_errors():
    with pytest.raises(XCounterError, match="chest_tube"):
        make_phantom("cxr", 0, chest_tubes=True)
    with pytest.raises(XCounterError, match=r"\[0, 1\]"):
        make_phantom("cxr", 0, exposure=1.5)
    with pytest.raises(XCounterError):
        make_phantom("cxr", 0, size=16)
    with pytest.raises(XCounterError):
        make_phantom("mri", 0)


def test_bad_details_raise_clear_errors():
    with pytest.raises(XCounterError, match="pleural_effusion_side"):
        make_phantom("cxr", 0, pleural_effusion=True, pleural_effusion_side="middle")
    with pytest.raises(XCounterError, match="lung_shape"):
        sample_attributes("cxr", 0, lung_shape=10**6)
    with pytest.raises(XCounterError, match="ruler_edge"):
        sample_attributes("skin", 0, ruler_edge="diagonal")


def test_parametric_lungs_are_two_lungs():
    from scipy import ndimage

    from xcounter.phantoms.lungs import parametric_lungs
    templates = parametric_lungs(count=3, seed=1)
    assert templates.shape[0] == 3
    for template in templates:
        assert ndimage.label(template > 0.5)[1] == 2


def test_prevalences_between_20_and_35_percent():
    samples = [sample_attributes("cxr", seed) for seed in range(1500)]
    for attribute in vocabulary("cxr"):
        if attribute.type == "binary":
            rate = np.mean([s[attribute.name] for s in samples])
            assert 0.2 <= rate <= 0.35, (attribute.name, rate)


# ------------------------------------------------------------------------------ skin phantoms
def test_skin_phantom_is_rgb_and_deterministic():
    a, attrs = make_phantom("skin", 2, size=64)
    b, _ = make_phantom("skin", 2, size=64)
    assert a.shape == (64, 64, 3) and np.array_equal(a, b)
    assert attrs["Melanoma"] in (0, 1) and 1 <= attrs["fitzpatrick"] <= 6


@pytest.mark.parametrize("name", [a.name for a in vocabulary("skin") if a.type == "binary"])
def test_every_skin_attribute_is_visible_at_64px(name):
    off, on, _ = pair("skin", name)
    assert np.abs(downsample(on) - downsample(off)).max() > 0.1, f"{name} invisible at 64 px"


def test_darker_skin_is_redder_so_lighting_cannot_mimic_a_tone_change():
    """Lighting scales every channel alike; a tone change must also move the colour's ratios, or the oracle
    cannot tell the two apart (the dark-tone lighting R^2 of 0.74 before the palette was fixed)."""
    plain = {name: False for name in ("hair", "ruler", "ink_marking", "gel_bubbles", "dark_corner", "color_patch")}
    ratios = []
    for tone in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        image, _ = make_phantom("skin", SEED, size=SIZE, skin_tone=tone, lighting=0.5, lesion_x=0.0, lesion_y=0.0,
                                lesion_diameter=0.3, **plain)
        skin = np.median(image[:16].reshape(-1, 3), axis=0)  # the top rows: skin only
        ratios.append(np.log(skin[0] / skin[2]))
    assert np.all(np.diff(ratios) > 0.1), np.round(ratios, 3)


@pytest.mark.parametrize("name", ["asymmetry", "border_irregularity", "color_variegation", "blue_white_veil", "dots_globules"])
def test_lesion_features_stay_near_the_lesion(name):
    off, on, _ = pair("skin", name, lesion_x=0.0, lesion_y=0.0, lesion_diameter=0.3)
    diff = np.abs(on - off)
    border = np.zeros_like(diff, bool)
    border[:12], border[-12:], border[:, :12], border[:, -12:] = True, True, True, True
    assert diff[border].max() < 0.02


def test_ruler_and_colour_chart_sit_where_they_should():
    off, on, _ = pair("skin", "ruler", ruler_edge="bottom")
    diff = np.abs(on - off)
    assert diff[-16:].max() > 0.3 and diff[:96].max() < 0.02
    off, on, _ = pair("skin", "color_patch", color_patch_corner="top-left")
    diff = np.abs(on - off)
    assert diff[:24, :24].max() > 0.3 and diff[40:].max() < 0.02


def test_melanoma_follows_the_documented_score():
    benign = sample_attributes("skin", 1, asymmetry=False, border_irregularity=False, color_variegation=False,
                               blue_white_veil=False, dots_globules=False, lesion_diameter=0.1)
    malignant = sample_attributes("skin", 1, asymmetry=True, border_irregularity=True, color_variegation=True,
                                  blue_white_veil=True, dots_globules=True, lesion_diameter=0.9)
    assert benign["Melanoma"] == 0 and malignant["Melanoma"] == 1
    rate = np.mean([sample_attributes("skin", s)["Melanoma"] for s in range(1000)])
    assert 0.2 < rate < 0.5


# ------------------------------------------------------------------------------------ prompts
def test_caption_uses_vocabulary_and_neutral_prompt():
    vocab = vocabulary("cxr")
    absent = {a.name: False for a in vocab if a.type == "binary"}
    assert caption(sample_attributes("cxr", 0, **absent), "cxr", 0) == vocab.neutral_prompt
    effusion = sample_attributes("cxr", 0, **{**absent, "pleural_effusion": True, "chest_tube": True},
                                 pleural_effusion_side="right")
    texts = [caption(effusion, "cxr", seed).lower() for seed in range(20)]
    assert all("pleural effusion" in t and "chest tube" in t for t in texts)
    assert not any("left pleural effusion" in t for t in texts)
    assert any("right pleural effusion" in t for t in texts)
    skin = sample_attributes("skin", 0, ruler=True, blue_white_veil=True)
    text = caption(skin, "skin", 0).lower()
    assert "blue-white veil" in text and "ruler" in text


@pytest.mark.parametrize("domain", ["cxr", "skin"])
def test_every_yaml_phrase_occurs_in_captions(domain):
    """The explainer edits with the yaml phrases: the generator must have read each of them."""
    texts = [caption(sample_attributes(domain, seed), domain, seed).lower() for seed in range(1500)]
    for attribute in vocabulary(domain):
        for phrase in (*attribute.positive, *attribute.negative):
            assert sum(phrase.lower() in t for t in texts) >= 5, (attribute.name, phrase)
    assert sum(t == vocabulary(domain).neutral_prompt.lower() for t in texts) > 0


# ---------------------------------------------------------------------------------- shortcuts
def test_shortcut_sampler_hits_rho_on_5000_items():
    shortcut = validate_shortcut("cxr", "chest_tube", "Pneumothorax", 0.75)
    items = [sample_attributes("cxr", seed, **overrides) for seed, overrides in plan("cxr", 5000, 0, shortcut)]
    positives, negatives, prevalence = measured_rho(items, shortcut)
    assert abs(positives - 0.75) < 0.02 and abs(negatives - 0.75) < 0.02
    assert abs(prevalence - 0.5) < 0.03


def test_shortcut_sampler_works_for_derived_labels():
    shortcut = validate_shortcut("skin", "ruler", "Melanoma", 0.9)
    items = [sample_attributes("skin", seed, **overrides) for seed, overrides in plan("skin", 1500, 1, shortcut)]
    positives, negatives, prevalence = measured_rho(items, shortcut)
    assert abs(positives - 0.9) < 0.03 and abs(negatives - 0.9) < 0.03
    assert abs(prevalence - 0.5) < 0.04


def test_a_criterion_label_follows_its_finding_alone():
    """Skin "Blue-white veil" (a 7-point-checklist criterion) is the veil, whatever Melanoma says; a shortcut
    dataset for it fixes the veil directly, as CXR labels fix their finding."""
    for seed in range(30):
        for veil in (False, True):
            assert sample_attributes("skin", seed, blue_white_veil=veil)["Blue-white veil"] == int(veil)
    assert vocabulary("skin")["blue_white_veil"].labels == ("Melanoma", "Blue-white veil")
    shortcut = validate_shortcut("skin", "ruler", "Blue-white veil", 1.0)
    for seed, overrides in plan("skin", 40, 2, shortcut):
        item = sample_attributes("skin", seed, **overrides)
        assert item["ruler"] == bool(item["Blue-white veil"]) == overrides["blue_white_veil"]


@pytest.mark.parametrize("args", [("cxr", "chest_tubes", "Pneumothorax", 0.5), ("cxr", "chest_tube", "Pneumonia", 0.5),
                                  ("cxr", "chest_tube", "Pneumothorax", 1.5), ("cxr", "body_width", "Edema", 0.5),
                                  ("cxr", "pneumothorax", "Pneumothorax", 0.5),
                                  ("skin", "blue_white_veil", "Blue-white veil", 0.5)])
def test_invalid_shortcuts_are_rejected(args):
    with pytest.raises(XCounterError):
        validate_shortcut(*args)


# ------------------------------------------------------------------------------------ dataset
def test_dataset_writer_format_and_determinism(tmp_path):
    one = write_dataset("cxr", 40, tmp_path / "one", seed=3, size=32, workers=1, progress=False)
    two = write_dataset("cxr", 40, tmp_path / "two", seed=3, size=32, workers=2, progress=False)
    counts = {split: len(read_metadata(one, split)) for split in ("train", "val", "test")}
    assert counts == {"train": 32, "val": 4, "test": 4}
    record = read_metadata(one, "val")[0]
    for key in ["file_name", "text", *vocabulary("cxr").names, *vocabulary("cxr").labels]:
        assert key in record
    assert (one / "val" / record["file_name"]).is_file()
    for split in ("train", "val", "test"):
        assert (one / split / "metadata.jsonl").read_text() == (two / split / "metadata.jsonl").read_text()
    first = sorted((one / "train").glob("*.png"))[0]
    assert first.read_bytes() == (two / "train" / first.name).read_bytes()
    info = json.loads((one / "dataset.json").read_text())
    assert info["n"] == 40 and info["domain"] == "cxr"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp folders left


def test_skin_dataset_with_shortcut(tmp_path):
    out = write_dataset("skin", 20, tmp_path / "skin", seed=0, size=32, shortcut="ruler", target="Melanoma",
                        rho=1.0, workers=1, progress=False)
    records = [r for split in ("train", "val", "test") for r in read_metadata(out, split)]
    assert all(r["ruler"] == bool(r["Melanoma"]) for r in records)


# ---------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("args", [
    ["cxr", "--n", "0"],
    ["cxr", "--n", "5", "--size", "16"],
    ["cxr", "--n", "5", "--shortcut", "chest_tubes", "--target", "Pneumothorax"],
    ["cxr", "--n", "5", "--shortcut", "chest_tube", "--target", "Pneumonia"],
    ["cxr", "--n", "5", "--shortcut", "chest_tube", "--target", "Pneumothorax", "--rho", "1.5"],
    ["skin", "--n", "5", "--rho", "0.5"],
])
def test_cli_bad_options_exit_2_without_output(tmp_path, capsys, args):
    out = tmp_path / "data"
    assert main(["phantoms", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error:") and len(err.splitlines()) == 1
    assert not out.exists()


def test_cli_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["phantoms", "cxr", "--n", "2", "--out", str(blocker / "data")]) == 2
    assert "Error:" in capsys.readouterr().err


def test_cli_writes_dataset_and_sheet(tmp_path):
    assert main(["phantoms", "skin", "--n", "3", "--size", "32", "--out", str(tmp_path / "d"), "--workers", "1"]) == 0
    assert len(read_metadata(tmp_path / "d", "train")) == 2
    assert main(["phantoms", "sheet", "cxr", "--n", "4", "--size", "32", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0


def test_sheet_into_a_folder_or_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    (tmp_path / "taken").write_text("a file")
    for out, words in ((tmp_path / "folder", "is a folder"), (tmp_path / "taken" / "s.png", "cannot write")):
        assert main(["phantoms", "sheet", "cxr", "--n", "1", "--size", "32", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("Error: ") and words in err and ".tmp" not in err, err
    assert main(["phantoms", "sheet", "cxr", "--n", "1", "--size", "32", "--out", str(tmp_path / "s.txt")]) == 2
    assert "--out must be a .png file" in capsys.readouterr().err  # a PNG under another name misleads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "taken"]
