"""`xcounter inspect`: real scans, predictions, and every bad input ending as one line and exit 2."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tiny_classifier as tc
from test_io import CR_FILES, PYDICOM_FILES, _png_bytes, phi_values
from xcounter.classifiers import logit, save_torchscript_classifier
from xcounter.cli import main


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    model = tc.make_tiny_densenet(seed=0)
    return tc.save_torchscript(model, path, thresholds=logit(tc.TINY_OP_THRESHS), preprocess={"name": "xrv", "size": 32})


def run_cli(capsys, *args):
    code = main(["inspect", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_inspect_real_dicom_table(capsys):
    code, out, err = run_cli(capsys, "--image", CR_FILES[0])
    assert code == 0 and err == ""
    assert "6154  16x16  1 channel(s)  12-bit" in out and "Modality: CR" in out and "MONOCHROME1" in out


@pytest.mark.parametrize("path", CR_FILES, ids=lambda p: p.name)
def test_inspect_json_carries_no_phi(capsys, path):
    code, out, _ = run_cli(capsys, "--image", path, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["scan"]["metadata"]["PhotometricInterpretation"] == "MONOCHROME1"
    assert sorted(value for value in phi_values(path) if value in out) == []


def test_inspect_with_classifier_and_target(capsys, classifier_file):
    code, out, err = run_cli(capsys, "--image", CR_FILES[1], "--classifier", classifier_file,
                             "--target", "pneumothorax", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["target"] == "Pneumothorax"
    assert [p["label"] for p in report["predictions"]] == ["Effusion", "Pneumothorax"]
    assert report["classifier"]["name"] == "tiny.pt" and len(report["classifier"]["sha256"]) == 64
    for p in report["predictions"]:
        assert p["positive"] == (p["logit"] > p["threshold"]) and 0 <= p["probability"] <= 1
    code, table, _ = run_cli(capsys, "--image", CR_FILES[1], "--classifier", classifier_file, "--target", "Effusion")
    assert code == 0 and "* Effusion" in table and "  Pneumothorax" in table


def _bad_case(name: str, tmp: Path, classifier_file: Path) -> tuple[list, str]:
    """(arguments, expected words in the error line) for each bad input."""
    png = tmp / "ok.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    if name == "missing":
        return ["--image", tmp / "nope.png"], "not found"
    if name == "empty":
        (tmp / "empty.png").write_bytes(b"")
        return ["--image", tmp / "empty.png"], "empty"
    if name == "text-as-png":
        (tmp / "notes.png").write_text("patient notes, not an image\n")
        return ["--image", tmp / "notes.png"], "not a readable image"
    if name == "truncated-png":
        (tmp / "cut.png").write_bytes(_png_bytes(64, 64)[:150])
        return ["--image", tmp / "cut.png"], "truncated"
    if name == "no-codec-dicom":
        return ["--image", PYDICOM_FILES / "MR_small_jpeg_ls_lossless.dcm"], "pylibjpeg"
    if name == "pickle-untrusted":
        return ["--image", png, "--classifier", tc.save_pickled_module(tc.make_tiny_densenet(), tmp / "p.pt")], \
            "--trust-pickle"
    if name in ("nan-output", "wrong-shape"):
        outputs, value = (4, float("nan")) if name == "nan-output" else (2, 1.0)
        path = tmp / f"{name}.pt"
        save_torchscript_classifier(tc.ConstantLogits(outputs, value), path, tc.TINY_LABELS, preprocess="unit")
        return ["--image", png, "--classifier", path], "NaN" if name == "nan-output" else "shape"
    if name == "unknown-target":
        return ["--image", png, "--classifier", classifier_file, "--target", "Efusion"], "did you mean 'Effusion'"
    if name == "over-large":
        return ["--image", png, "--max-megapixels", "0.00001"], "over the limit"
    if name == "nan-limit":
        return ["--image", png, "--max-megapixels", "nan"], "--max-megapixels"
    raise AssertionError(name)


BAD_CASES = ["missing", "empty", "text-as-png", "truncated-png", "no-codec-dicom", "pickle-untrusted",
             "nan-output", "wrong-shape", "unknown-target", "over-large", "nan-limit"]


@pytest.mark.parametrize("name", BAD_CASES)
def test_bad_inputs_give_one_line_and_exit_2(capsys, tmp_path, classifier_file, name, monkeypatch):
    if name == "no-codec-dicom":
        from test_io import _fake_missing_decoder

        _fake_missing_decoder(monkeypatch)  # independent of which codecs this machine has
    args, expected = _bad_case(name, tmp_path, classifier_file)
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert out == ""  # no partial output
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], err
    assert "Traceback" not in err


def _console(*args: str) -> subprocess.CompletedProcess:
    script = shutil.which("xcounter") or str(Path(sys.executable).with_name("xcounter"))
    assert Path(script).exists(), "the xcounter console script is not installed (pip install -e .)"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default")
    return subprocess.run([script, "inspect", *args], capture_output=True, text=True, env=env, timeout=120)


def test_console_script_bad_classifier(tmp_path):
    """The installed `xcounter` script end to end: library warnings must not add lines to stderr."""
    png = tmp_path / "ok.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    nan_model = tmp_path / "nan.pt"
    save_torchscript_classifier(tc.ConstantLogits(4, float("nan")), nan_model, tc.TINY_LABELS, preprocess="unit")
    bad = _console("--image", str(png), "--classifier", str(nan_model))
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == ["Error: classifier 'nan.pt' returned NaN or infinite logits"]
