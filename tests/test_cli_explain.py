"""`xcounter explain` end to end on tiny models (TorchScript DenseNet, tiny SD folder), and its refusals."""
from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from tiny_classifier import make_tiny_densenet, save_torchscript
from tiny_generator import tiny_generator_dir
from xcounter.cli import main
from xcounter.cli.explain import command_line
from xcounter.report import read_json_sidecar

CR_DICOM = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "77654033" / "CR1" / "6154"
ATTRIBUTES_YAML = """
domain: cxr
modality: chest radiograph
neutral_prompt: "chest radiograph"
templates: ["chest radiograph. {phrase}."]
labels: [Effusion, Pneumothorax]
attributes:
  - {name: pleural_effusion, kind: pathology, label: Effusion,
     negative: ["no pleural effusion"], positive: ["large right pleural effusion"]}
  - {name: chest_tube, kind: device, negative: ["no chest tube"], positive: ["right chest tube in place"]}
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    classifier = save_torchscript(make_tiny_densenet(), root / "tiny.pt", thresholds=[0.0, 0.0, float("nan"), 0.0])
    generator = tiny_generator_dir(root, settings={"domain": "cxr", "steps": 3})
    attributes = root / "attributes.yaml"
    attributes.write_text(ATTRIBUTES_YAML, encoding="utf-8")
    scan = root / "scan.png"
    pixels = np.random.default_rng(0).random((24, 24))
    Image.fromarray((pixels * 255).astype(np.uint8)).save(scan)
    return {"classifier": classifier, "generator": generator, "attributes": attributes, "scan": scan}


def _args(models, image, *extra) -> list[str]:
    return ["explain", "--classifier", str(models["classifier"]), "--image", str(image),
            "--generator", str(models["generator"]), "--attributes", str(models["attributes"]),
            "--steps", "2", *extra]


@pytest.fixture(scope="module")
def dicom_run(models, tmp_path_factory):
    """One run on a real DICOM (pydicom's CR fixture), default report name, with a JSON sidecar."""
    work = tmp_path_factory.mktemp("run")
    capture = pytest.MonkeyPatch()
    capture.chdir(work)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(_args(models, CR_DICOM, "--json", "sidecar.json", "--target", "Effusion", "--seed", "3"))
    capture.undo()
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "dir": work}


def test_explain_writes_card_and_sidecar(dicom_run):
    assert dicom_run["code"] == 0, dicom_run["stderr"]
    files = sorted(p.name for p in dicom_run["dir"].iterdir())
    assert files == ["6154.xcounter.html", "sidecar.json", "sidecar_images"]  # nothing temporary left
    html = (dicom_run["dir"] / "6154.xcounter.html").read_text(encoding="utf-8")
    assert "<script" not in html and not re.search(r"(src|href)=\"https?:", html)
    assert "tiny.pt" in html and "pleural_effusion" in html and "chest_tube" in html
    explanation = read_json_sidecar(dicom_run["dir"] / "sidecar.json")
    assert explanation.targets == ["Effusion"] and explanation.seed == 3
    assert {r.attribute for r in explanation.results} == {"pleural_effusion", "chest_tube"}
    assert explanation.source["name"] == "6154"
    assert "PatientName" not in json.dumps(explanation.source)  # only allowlisted DICOM facts travel
    assert explanation.attributions["Effusion"]["integrated_gradients"].shape[:2] == explanation.image.shape[:2]


def test_explain_prints_a_ranked_summary(dicom_run):
    stdout = dicom_run["stdout"]
    assert re.search(r"^Effusion: (positive|negative) \(probability \d\.\d\d\)$", stdout, re.M)
    ranked = re.findall(r"^\s+(\d)\. (\w+)\s+(SHORTCUT ALERT|drives|does not drive)\s+(.+)$", stdout, re.M)
    assert [r[0] for r in ranked] == ["1", "2"] and {r[1] for r in ranked} == {"pleural_effusion", "chest_tube"}
    assert "Report: 6154.xcounter.html" in stdout and "JSON:   sidecar.json" in stdout


def _refused(capsys, args: list[str], folder: Path) -> str:
    before = sorted(folder.rglob("*"))
    code = main(args)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), captured.err
    assert sorted(folder.rglob("*")) == before  # no report, no sidecar, no temp file
    return lines[0]


def test_bad_inputs_fail_in_one_line(models, tmp_path, capsys):
    out = ["--out", str(tmp_path / "r.html"), "--json", str(tmp_path / "r.json")]
    assert "not found" in _refused(capsys, _args(models, tmp_path / "missing.png", *out), tmp_path)
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    _refused(capsys, _args(models, fake, *out), tmp_path)
    fake.unlink()
    message = _refused(capsys, _args(models, models["scan"], "--target", "Efusion", *out), tmp_path)
    assert "did you mean 'Effusion'" in message
    assert "steps" in _refused(capsys, _args(models, models["scan"], "--steps", "0", *out), tmp_path)
    args = _args(models, models["scan"], *out)
    args[args.index("--generator") + 1] = "phantom-nothing"
    assert "phantom-nothing" in _refused(capsys, args, tmp_path)
    args = _args(models, models["scan"], *out)
    args[args.index("--classifier") + 1] = str(tmp_path / "nothing.pt")
    _refused(capsys, args, tmp_path)
    (tmp_path / "folder.html").mkdir()
    assert "is a folder" in _refused(capsys, _args(models, models["scan"], "--out", str(tmp_path / "folder.html")),
                                     tmp_path)



def test_unusable_output_folders_are_refused_before_any_model_loads(models, tmp_path, capsys, monkeypatch):
    """A folder under a file, or one that cannot be written, is one line before the (long) explanation runs."""
    import os

    import xcounter

    monkeypatch.setattr(xcounter, "load_classifier", lambda *a, **k: pytest.fail("a model was loaded"))
    (tmp_path / "taken").write_text("a file")
    message = _refused(capsys, _args(models, models["scan"], "--out", str(tmp_path / "taken" / "sub" / "r.html")),
                       tmp_path)
    assert "is not a folder" in message
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    message = _refused(capsys, _args(models, models["scan"], "--json", str(locked / "new" / "r.json"),
                                     "--out", str(tmp_path / "r.html")), tmp_path)
    assert "is not a writable folder" in message and str(locked) in message


def test_localise_chooses_which_edits_are_confined(models, tmp_path, capsys):
    """Default: removals carry their DiffEdit region; --localise none: no edit is confined."""
    for choice, confined in ((None, {"remove"}), ("none", set()), ("both", {"add", "remove"})):
        sidecar = tmp_path / f"{choice}.json"
        extra = ["--out", str(tmp_path / f"{choice}.html"), "--json", str(sidecar), "--target", "Effusion"]
        assert main(_args(models, models["scan"], *extra, *(["--localise", choice] if choice else []))) == 0
        explanation = read_json_sidecar(sidecar)
        assert set(explanation.settings["localise"]) == confined
        counterfactuals = [c for r in explanation.results for c in r.counterfactuals]
        assert counterfactuals and all((c.region is not None) == (c.sign in confined) for c in counterfactuals)
    capsys.readouterr()
    assert "--localise" in _refused(capsys, _args(models, models["scan"], "--localise", "everywhere"), tmp_path)


def test_inversion_iterations_reach_the_explanation(models, tmp_path, capsys):
    sidecar = tmp_path / "r.json"
    extra = ["--out", str(tmp_path / "r.html"), "--json", str(sidecar), "--target", "Effusion"]
    assert main(_args(models, models["scan"], *extra, "--inversion-iterations", "2")) == 0
    assert read_json_sidecar(sidecar).settings["inversion_iterations"] == 2
    capsys.readouterr()
    too_many = _args(models, models["scan"], "--inversion-iterations", "11")
    assert "--inversion-iterations" in _refused(capsys, too_many, tmp_path)
    assert main(_args(models, models["scan"], *extra, "--inversion", "ddpm")) == 0
    assert read_json_sidecar(sidecar).settings["inversion"] == "ddpm"
    capsys.readouterr()
    both = _args(models, models["scan"], "--inversion", "ddpm", "--inversion-iterations", "2")
    assert "DDPM inversion is exact already" in _refused(capsys, both, tmp_path)
    assert "--inversion" in _refused(capsys, _args(models, models["scan"], "--inversion", "exact"), tmp_path)
    assert main(_args(models, models["scan"], *extra, "--confirm-shortcuts")) == 0
    assert read_json_sidecar(sidecar).settings["confirm_shortcuts"] is True
    assert main(_args(models, models["scan"], *extra, "--anchor", "scan")) == 0
    assert read_json_sidecar(sidecar).settings["anchor"] == "scan"
    assert read_json_sidecar(sidecar).settings["prune"] is True  # the default
    assert main(_args(models, models["scan"], *extra, "--no-prune")) == 0
    unpruned = read_json_sidecar(sidecar)
    assert unpruned.settings["prune"] is False
    assert not any(c.pruned for r in unpruned.results for c in r.counterfactuals)
    assert unpruned.settings["removal_check"] is True  # the default
    assert main(_args(models, models["scan"], *extra, "--no-removal-check")) == 0
    assert read_json_sidecar(sidecar).settings["removal_check"] is False
    capsys.readouterr()
    assert "--anchor" in _refused(capsys, _args(models, models["scan"], "--anchor", "pixels"), tmp_path)


def test_command_line_round_trips_through_the_parser(models):
    from xcounter.cli.explain import command as explain_command

    line = command_line(models["classifier"], models["scan"], generator="phantom-cxr", targets=["Pneumothorax"],
                        out="a b.html", json_path=None, seed=1, trust_pickle=False, confirm_shortcuts=False)
    words = line.split(" ", 2)
    assert words[:2] == ["xcounter", "explain"] and "'a b.html'" in line and "--json" not in line
    context = explain_command.make_context("explain", shlex.split(line)[2:])
    assert context.params["targets"] == ("Pneumothorax",) and context.params["out"] == "a b.html"
    assert context.params["seed"] == 1 and context.params["generator"] == "phantom-cxr"
    assert context.params["confirm_shortcuts"] is False and context.params["trust_pickle"] is False
    assert shutil.which("xcounter") is not None  # the command the demo prints is installed


def test_a_failing_renderer_leaves_no_output(models, tmp_path, monkeypatch):
    """Both outputs are rendered in memory first: a failure in the second writes neither."""
    from xcounter.explainer import Explainer
    from xcounter.report import json_sidecar
    from xcounter.report.sample import sample_explanation

    monkeypatch.setattr(Explainer, "explain", lambda self, *args, **kwargs: sample_explanation(size=16))

    def broken(array, signed=False):
        raise RuntimeError("encoder broke midway")

    monkeypatch.setattr(json_sidecar, "encode_png", broken)
    out = ["--out", str(tmp_path / "r.html"), "--json", str(tmp_path / "r.json")]
    with pytest.raises(RuntimeError, match="midway"):
        main(_args(models, models["scan"], *out))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(Explainer, "explain", lambda self, *args, **kwargs: sample_explanation(size=16))
    assert main(_args(models, models["scan"], *out)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "r.json", "r_images"]


def test_device_option_places_the_models_and_is_recorded(models, tmp_path, capsys):
    """--device cpu runs and is written in the settings; a GPU this machine lacks, or a bad name, is one line."""
    import torch

    sidecar = tmp_path / "cpu.json"
    assert main(_args(models, models["scan"], "--device", "cpu", "--target", "Effusion", "--out",
                      str(tmp_path / "cpu.html"), "--json", str(sidecar))) == 0
    assert read_json_sidecar(sidecar).settings["device"] == "cpu"
    capsys.readouterr()
    assert "device must be one of" in _refused(capsys, _args(models, models["scan"], "--device", "tpu"), tmp_path)
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in _refused(capsys, _args(models, models["scan"], "--device", "cuda"), tmp_path)


def test_inversion_iterations_bounds_match_the_library():
    """The CLIs state the bound and the methods without importing diffusers; they must stay the generator's own."""
    from xcounter.cli.audit import command as audit_command
    from xcounter.cli.explain import command as explain_command
    from xcounter.generators.stable_diffusion import INVERSION_METHODS, MAX_INVERSION_ITERATIONS

    for command in (explain_command, audit_command):
        option = next(p for p in command.params if p.name == "inversion_iterations")
        assert (option.type.min, option.type.max) == (0, MAX_INVERSION_ITERATIONS)
        assert tuple(next(p for p in command.params if p.name == "inversion").type.choices) == INVERSION_METHODS
