"""`xcounter demo`: inputs written, the explain command it prints really is what ran.

The fast test swaps the shipped models for tiny ones (same code path); the slow one runs the
real default on the shipped phantom models and checks it finds the chest-tube shortcut in time.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiny_classifier import make_tiny_densenet, save_torchscript
from tiny_generator import tiny_generator_dir
from xcounter.cli import demo, main
from xcounter.phantoms import make_phantom
from xcounter.report import read_json_sidecar

ATTRIBUTES_YAML = """
domain: cxr
modality: chest radiograph
neutral_prompt: "chest radiograph"
templates: ["chest radiograph. {phrase}."]
labels: [Pneumothorax]
attributes:
  - {name: chest_tube, kind: device, negative: ["no chest tube"], positive: ["right chest tube in place"]}
"""


@pytest.fixture()
def tiny_demo(tmp_path, monkeypatch) -> demo.DemoSpec:
    models = tmp_path / "models"
    models.mkdir()
    classifier = save_torchscript(make_tiny_densenet(), models / "tiny-shortcut.pt",
                                  thresholds=[0.0, 0.0, float("nan"), 0.0])
    attributes = models / "attributes.yaml"
    attributes.write_text(ATTRIBUTES_YAML, encoding="utf-8")
    spec = dataclasses.replace(demo.DEFAULT_DEMO, classifier=classifier, attributes=str(attributes), steps=2,
                               generator=str(tiny_generator_dir(models, settings={"domain": "cxr"})), scan_size=64)
    monkeypatch.setattr(demo, "DEFAULT_DEMO", spec)
    return spec


def test_demo_writes_inputs_and_report(tiny_demo, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", "out"]) == 0
    stdout = capsys.readouterr().out
    folder = tmp_path / "out"
    assert sorted(p.name for p in folder.iterdir()) == ["phantom-cxr-seed7.png", "report.html", "report.json",
                                                       "report.txt", "report_images", "tiny-shortcut.pt"]
    report = (folder / "report.txt").read_text().strip()
    assert "chest tube" in report.lower()  # the scan's report is the source prompt
    scan = np.asarray(Image.open(folder / "phantom-cxr-seed7.png"), dtype=np.float32) / 255
    expected, truth = make_phantom("cxr", 7, size=64, chest_tube=True, pneumothorax=False)
    assert truth["chest_tube"] is True and np.abs(scan - expected[..., 0]).max() <= 1 / 255 + 1e-6
    assert (folder / "tiny-shortcut.pt").read_bytes() == Path(tiny_demo.classifier).read_bytes()
    explanation = read_json_sidecar(folder / "report.json")
    assert explanation.targets == ["Pneumothorax"] and [r.attribute for r in explanation.results] == ["chest_tube"]
    assert "Report: out/report.html" in stdout and re.search(r"^\s+1\. chest_tube", stdout, re.M)
    command = stdout.strip().splitlines()[-1].strip()
    words = shlex.split(command)
    assert words[:2] == ["xcounter", "explain"]
    assert words[words.index("--image") + 1] == "out/phantom-cxr-seed7.png"
    assert words[words.index("--target") + 1] == "Pneumothorax" and words[words.index("--seed") + 1] == "7"
    assert words[words.index("--report-text") + 1] == report == explanation.prompt

    # the printed command reproduces the demo's report
    (folder / "report.html").unlink()
    assert main(words[1:]) == 0
    again = read_json_sidecar(folder / "report.json")
    assert [(r.attribute, r.verdict, r.minimal_strength) for r in again.results] == \
        [(r.attribute, r.verdict, r.minimal_strength) for r in explanation.results]
    assert (folder / "report.html").is_file()


def test_demo_refuses_a_file_as_folder(tiny_demo, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    assert main(["demo", "--out", str(target)]) == 2
    assert capsys.readouterr().err.strip().startswith("Error: demo output")
    assert main(["demo", "--out", str(target / "sub")]) == 2  # the system's refusal, in one line
    assert capsys.readouterr().err.strip().splitlines() == [f"Error: Not a directory: {target / 'sub'}"]



def test_demo_refuses_a_bad_device_before_writing(tiny_demo, tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "out"), "--device", "tpu"]) == 2
    assert "device must be one of" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_default_demo_on_shipped_models_finds_the_shortcut(tmp_path, capsys):
    cpu_started = time.process_time()
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    cpu_seconds = time.process_time() - cpu_started  # CPU time: independent of other load on the machine
    explanation = read_json_sidecar(tmp_path / "demo" / "report.json")
    result = explanation.result("Pneumothorax", "chest_tube")
    assert result.verdict == "shortcut" and result.sign == "remove"
    assert cpu_seconds < 240  # "two minutes on two cores"
