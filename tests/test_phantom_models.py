"""Phantom classifiers and the attribute oracle: the training recipe writes files the loaders read,
and the SHIPPED oracle and classifiers measure / decide what the phantoms really show."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import xcounter
from xcounter.attributes import load_attributes
from xcounter.errors import XCounterError
from xcounter.phantoms import make_phantom
from xcounter.phantoms.dataset import write_dataset
from xcounter.phantoms.oracle import load_oracle, train_oracle
from xcounter.phantoms.train import metrics_path, train_classifier, youden_thresholds

torch.set_num_threads(1)
TINY_NET = {"growth_rate": 4, "block_config": (1, 1), "num_init_features": 8, "bn_size": 2}
FRESH = range(987_000, 987_004)  # phantom seeds far from any training set


def phantoms(domain: str, seeds, size: int = 128, **overrides) -> torch.Tensor:
    images = [make_phantom(domain, seed, size=size, **overrides)[0] for seed in seeds]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def tiny_cxr(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms") / "cxr"
    return write_dataset("cxr", 20, out, seed=3, size=64, workers=1, progress=False)


def test_youden_threshold_separates_val_and_falls_back_to_half():
    logits = torch.tensor([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    targets = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    cut, constant = youden_thresholds(logits, targets)
    assert 1.0 < cut < 2.0 and ((logits[:, 0] > cut).float() == targets[:, 0]).all()
    assert constant == 0.0  # one class only: probability 0.5


def test_train_classifier_writes_a_loadable_classifier(tiny_cxr, tmp_path):
    path = tmp_path / "tiny.pt"
    metrics = train_classifier(tiny_cxr, path, labels=["Effusion", "Pneumothorax"], epochs=1, size=32,
                               batch_size=8, net_kwargs=TINY_NET, log=lambda message: None)
    classifier = xcounter.load_classifier(str(path))
    assert classifier.labels == ["Effusion", "Pneumothorax"]
    assert torch.allclose(classifier.thresholds, torch.tensor(metrics["thresholds"]), atol=1e-6)
    assert classifier.preprocess.name == "xrv" and classifier.preprocess.size == 32
    assert classifier.domain == "cxr"
    assert classifier.margins(phantoms("cxr", FRESH[:2])).shape == (2, 2)  # 128 px in, resized by the profile
    saved = json.loads(metrics_path(path).read_text())
    assert set(saved["test_auroc"]) == {"Effusion", "Pneumothorax"} and saved["n"]["train"] == 16


def test_unknown_label_is_a_clear_error(tiny_cxr, tmp_path):
    with pytest.raises(XCounterError, match="Melanoma"):
        train_classifier(tiny_cxr, tmp_path / "x.pt", labels=["Melanoma"], epochs=1, log=lambda m: None)


def test_oracle_train_save_load_measure_round_trip(tiny_cxr, tmp_path):
    path = tmp_path / "oracle.pt"
    metrics = train_oracle(tiny_cxr, path, epochs=1, size=32, width=8, batch_size=8, log=lambda m: None)
    oracle = load_oracle(path)
    names = load_attributes("cxr").names
    assert oracle.attributes == names and oracle.size == 32
    assert set(metrics["test"]) == set(names)
    images = phantoms("cxr", FRESH[:3], size=64)
    values = oracle.measure(images)
    assert list(values) == names
    for value in values.values():
        assert value.shape == (3,) and bool(((value >= 0) & (value <= 1)).all())
    again = oracle.measure(torch.nn.functional.interpolate(images, size=128, mode="nearest"))
    assert torch.allclose(values["chest_tube"], again["chest_tube"], atol=0.05)  # any input size is accepted
    with pytest.raises(XCounterError, match="channel"):
        oracle.measure(torch.rand(1, 2, 32, 32))


def test_load_oracle_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(XCounterError, match="no oracle"):
        load_oracle(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"not a model")
    with pytest.raises(XCounterError, match="not an xcounter oracle"):
        load_oracle(foreign)


# ----------------------------------------------------------------------------- the shipped models
@pytest.mark.parametrize("domain, attribute", [("cxr", "chest_tube"), ("cxr", "pleural_effusion"),
                                               ("skin", "ruler")])
def test_shipped_oracle_sees_an_attribute_toggled_on_fresh_phantoms(domain, attribute):
    oracle = load_oracle(domain)
    assert oracle.attributes == load_attributes(domain).names
    present = oracle.measure(phantoms(domain, FRESH, **{attribute: True}))[attribute]
    absent = oracle.measure(phantoms(domain, FRESH, **{attribute: False}))[attribute]
    assert bool((present > 0.5).all()) and bool((absent < 0.5).all()), (present, absent)


def test_shipped_oracle_reads_generator_size_images():
    oracle = load_oracle("cxr")
    small = phantoms("cxr", FRESH, size=64, chest_tube=True)
    assert bool((oracle.measure(small)["chest_tube"] > 0.5).all())


@pytest.mark.parametrize("name, labels", [("cxr-clean", list(load_attributes("cxr").labels)),
                                          ("cxr-shortcut", None), ("cxr-shortcut-rho0.75", None),
                                          ("cxr-shortcut-rho0.5", None),
                                          ("skin-clean", ["Melanoma"]), ("skin-shortcut", ["Melanoma"]),
                                          ("skin-7pt", ["Melanoma", "Blue-white veil"])])
def test_shipped_classifiers_load_with_labels_and_thresholds(name, labels):
    classifier = xcounter.load_classifier(f"phantom:{name}")
    if labels is not None:
        assert classifier.labels == labels
    assert "Pneumothorax" in classifier.labels or "Melanoma" in classifier.labels
    assert bool(torch.isfinite(classifier.thresholds).all())
    assert classifier.preprocess.size == 64


def test_shipped_shortcut_classifier_follows_the_chest_tube():
    """The planted shortcut was learned: on the same phantoms without pneumothorax, adding the tube
    turns the Pneumothorax decision on; the clean classifier's Effusion decision follows effusion."""
    shortcut = xcounter.load_classifier("phantom:cxr-shortcut")
    index = shortcut.target_index("Pneumothorax")
    with_tube = shortcut.margins(phantoms("cxr", FRESH, pneumothorax=False, chest_tube=True))[:, index]
    without = shortcut.margins(phantoms("cxr", FRESH, pneumothorax=False, chest_tube=False))[:, index]
    assert bool((with_tube > 0).all()) and bool((without < 0).all()), (with_tube, without)
    clean = xcounter.load_classifier("phantom:cxr-clean")
    effusion = clean.target_index("Effusion")
    on = clean.margins(phantoms("cxr", FRESH, pleural_effusion=True))[:, effusion]
    off = clean.margins(phantoms("cxr", FRESH, pleural_effusion=False))[:, effusion]
    assert bool((on > off).all()) and float((on > 0).float().mean()) >= 0.75


def test_shipped_clean_effusion_decision_rests_on_the_effusion():
    """The engine's Effusion test needs a classifier whose decision *depends* on effusion: on fresh phantoms,
    positive with the effusion and negative by the product's flip margin when the renderer removes it (and
    nothing else), on at least 90%. The classifier shipped before 2026-11-26 (2,400 scans, 8 epochs) reached 82%
    on these seeds: it also leaned on consolidation."""
    from xcounter.search import DEFAULT_FLIP_MARGIN

    clean = xcounter.load_classifier("phantom:cxr-clean")
    effusion = clean.target_index("Effusion")
    seeds = range(987_100, 987_140)
    on = clean.margins(phantoms("cxr", seeds, pleural_effusion=True))[:, effusion]
    off = clean.margins(phantoms("cxr", seeds, pleural_effusion=False))[:, effusion]
    assert float(((on > 0) & (off < -DEFAULT_FLIP_MARGIN)).float().mean()) >= 0.9, (on, off)


def test_shipped_7pt_veil_output_rests_on_the_veil_alone():
    """The skin analogue of the Effusion test: the 7-point-checklist model's "Blue-white veil" output turns on
    and off with the veil, by the product's flip margin, on fresh phantoms, and a ruler leaves it where it was."""
    from xcounter.search import DEFAULT_FLIP_MARGIN

    model = xcounter.load_classifier("phantom:skin-7pt")
    veil = model.target_index("Blue-white veil")
    seeds = range(987_200, 987_230)
    on = model.margins(phantoms("skin", seeds, blue_white_veil=True))[:, veil]
    off = model.margins(phantoms("skin", seeds, blue_white_veil=False))[:, veil]
    assert float(((on > DEFAULT_FLIP_MARGIN) & (off < -DEFAULT_FLIP_MARGIN)).float().mean()) >= 0.9, (on, off)
    ruler = model.margins(phantoms("skin", seeds, blue_white_veil=True, ruler=True))[:, veil]
    assert bool(((ruler > 0) == (on > 0)).all())


def test_oracle_device_is_checked_before_any_work(tiny_cxr, tmp_path, monkeypatch):
    with pytest.raises(XCounterError, match="auto, cpu, cuda"):
        train_oracle(tiny_cxr, tmp_path / "o.pt", epochs=1, device="gpu", log=lambda m: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(XCounterError, match="no CUDA GPU"):
        train_oracle(tiny_cxr, tmp_path / "o.pt", epochs=1, device="cuda", log=lambda m: None)
    assert not (tmp_path / "o.pt").exists()


def test_training_tool_reports_a_wrong_label_in_one_line():
    """`python -m xcounter.phantoms.train dependence` with a label the model lacks: one line, exit non-zero."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "xcounter.phantoms.train", "dependence", "--classifier",
                           "phantom:skin-clean", "--domain", "skin", "--attribute", "blue_white_veil", "--label",
                           "Blue-white veil", "--n", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "Error: unknown target 'Blue-white veil' for classifier 'phantom:skin-clean'; offered targets: Melanoma"]
