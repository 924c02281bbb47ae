"""Dataset audits: crash-safe resumable journal (a real kill -9), unreadable files, bootstrap intervals,
the shortcut rule and the self-contained report; on tiny models built in the test."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import xcounter
from xcounter.audit import RecordLog, aggregate_records, audit, collect_scans, scan_seed
from xcounter.audit.records import make_record
from xcounter.audit.stats import bootstrap_ci
from xcounter.cli import main as cli_main
from xcounter.errors import XCounterError

TARGET, ATTRIBUTE = "Pneumothorax", "chest_tube"
#: the cheapest real audit: 3 DDIM steps, one attribute, one sign
OPTIONS = {"targets": [TARGET], "only": [ATTRIBUTE], "steps": 3, "explainer_options": {"signs": ["add"]}}
CLI_OPTIONS = ["--targets", TARGET, "--only", ATTRIBUTE, "--steps", "3", "--signs", "add", "--quiet"]


class BrightnessClassifier(torch.nn.Module):
    """Decides on mean brightness (whole image, upper half): smooth, so edits move the probability."""

    def __init__(self, scale: float = 20.0, centre: float = 0.5) -> None:
        super().__init__()
        self.scale, self.centre = scale, centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        whole = x.mean(dim=(1, 2, 3))
        upper = x[:, :, : x.shape[2] // 2].mean(dim=(1, 2, 3))
        return torch.stack([self.scale * (whole - self.centre), self.scale * (upper - self.centre)], dim=1)


def build_models(folder: Path) -> tuple[Path, Path]:
    """(classifier .pt, generator folder): a TorchScript classifier and a tiny SD pipeline, both seeded."""
    from tiny_generator import tiny_generator_dir
    from xcounter.classifiers import save_torchscript_classifier

    folder.mkdir(parents=True, exist_ok=True)
    classifier = folder / "brightness.pt"
    save_torchscript_classifier(BrightnessClassifier(), classifier, [TARGET, "Effusion"], [0.0, 0.0],
                                preprocess="unit", domain="cxr")
    return classifier, tiny_generator_dir(folder)


def write_scans(folder: Path, count: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        gradient = np.linspace(-0.2, 0.2, 16)[:, None] * rng.uniform(-1, 1)
        image = np.clip(rng.normal(0.5, 0.15, (16, 16)) + gradient, 0, 1)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"scan{index:02d}.png")
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def loaded(models):
    classifier, generator = models
    return xcounter.load_classifier(str(classifier)), xcounter.load_generator(str(generator))


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Six good scans, a damaged PNG, an empty DICOM and a hostile file name."""
    folder = write_scans(tmp_path_factory.mktemp("scans"), 5)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "<b>evil.png").write_bytes(b"junk")
    (folder / "notes.txt").write_text("not a scan")
    return folder


@pytest.fixture(scope="module")
def reference(loaded, mixed_folder, tmp_path_factory):
    """An uninterrupted in-process audit of the mixed folder."""
    classifier, generator = loaded
    return audit(classifier, generator, mixed_folder, out_dir=tmp_path_factory.mktemp("reference"), seed=3, **OPTIONS)


def journal_ids(path: Path) -> list[str]:
    return [json.loads(line)["scan_id"] for line in path.read_text().splitlines() if line.strip()]


def test_kill_minus_nine_then_resume_matches_an_uninterrupted_run(models, mixed_folder, reference, tmp_path,
                                                                       capsys):
    classifier, generator = models
    out = tmp_path / "killed"
    command = [sys.executable, "-c", "import sys; from xcounter.cli import main; sys.exit(main(sys.argv[1:]))",
               "audit", "--classifier", str(classifier), "--generator", str(generator), "--images", str(mixed_folder),
               "--out", str(out), "--seed", "3", *CLI_OPTIONS]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = out / "explanations.jsonl"
    deadline = time.monotonic() + 300  # generous: start-up alone takes minutes on a crowded machine
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the audit finished before it could be killed"
    assert journal.exists(), "no scan was finished before the deadline"
    done_before = journal_ids(journal)
    total = reference.aggregate.scans
    assert 1 <= len(done_before) < total
    with open(journal, "ab") as handle:  # and a record torn mid-write, as a crash inside write() leaves it
        handle.write(b'{"scan_id": "scan04.png", "status": "ok", "explanation": {"res')

    assert cli_main(command[3:]) == 0  # a plain re-run resumes (in this process: no second start-up)
    assert f"{len(done_before)} from an earlier run" in capsys.readouterr().out

    ids = journal_ids(journal)
    assert sorted(ids) == sorted(set(ids)) == sorted(reference.scan_ids)
    assert ids[: len(done_before)] == done_before  # finished records were kept, not redone
    report = json.loads((out / "audit_report.json").read_text())
    expected = json.loads(json.dumps(reference.aggregate.to_dict()))
    assert report["aggregate"] == expected
    assert report["aggregate"]["stats"][0]["mean_delta_probability"] != 0.0  # real numbers were compared


def test_unreadable_files_are_reported_and_the_rest_audited(reference, mixed_folder):
    failed = {f["scan_id"]: f["reason"] for f in reference.failures}
    assert set(failed) == {"broken.png", "empty.dcm", "<b>evil.png"}
    assert "empty" in failed["empty.dcm"] and all(reason.strip() for reason in failed.values())
    stat = reference.stat(TARGET, ATTRIBUTE)
    assert reference.aggregate.ok == stat.scans == 5
    html = reference.report_html.read_text()
    assert "broken.png" in html and "&lt;b&gt;evil.png" in html and "<b>evil" not in html
    assert "notes.txt" not in {r["scan_id"] for r in reference.records()}


def test_report_is_self_contained_with_metadata_and_gallery(reference, loaded):
    html = reference.report_html.read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html.lower()
    assert "<link" not in html and "@import" not in html
    sources = [s for s in html.split('src="')[1:]]
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    meta = json.loads(reference.report_json.read_text())["metadata"]
    assert meta["classifier"]["sha256"] == loaded[0].sha256 and meta["seed"] == 3
    assert meta["counts"] == {"scans": 8, "explained_now": 8, "resumed": 0, "ok": 5, "failed": 3}
    assert {"xcounter", "torch", "diffusers"} <= set(meta["versions"])
    assert "chest_tube" in html and "Failed scans (3)" in html
    record = next(r for r in reference.records() if r["status"] == "ok")
    assert record["seed"] == scan_seed(3, record["scan_id"])
    counterfactual = record["explanation"]["results"][0]["counterfactuals"][0]
    assert counterfactual["film"] == [] and counterfactual["image"] is not None  # slim, but the best image kept


def test_rerun_with_other_settings_is_refused(models, loaded, mixed_folder, reference):
    classifier, generator = loaded
    with pytest.raises(XCounterError, match="seed"):
        audit(classifier, generator, mixed_folder, out_dir=reference.out_dir, seed=4, **OPTIONS)
    # the generator's own settings (xcounter.json) change every explanation, though not its networks' digest
    other = xcounter.load_generator(str(models[1]))
    other.inversion_iterations = 1
    with pytest.raises(XCounterError, match="generator_settings"):
        audit(classifier, other, mixed_folder, out_dir=reference.out_dir, seed=3, **OPTIONS)
    other = xcounter.load_generator(str(models[1]))
    other.inversion = "ddpm" if other.inversion == "ddim" else "ddim"
    with pytest.raises(XCounterError, match="generator_settings"):
        audit(classifier, other, mixed_folder, out_dir=reference.out_dir, seed=3, **OPTIONS)
    other = xcounter.load_generator(str(models[1]))
    other.confirm_shortcuts = not other.confirm_shortcuts
    with pytest.raises(XCounterError, match="generator_settings"):
        audit(classifier, other, mixed_folder, out_dir=reference.out_dir, seed=3, **OPTIONS)


def test_rerun_with_other_attribute_definitions_is_refused(loaded, mixed_folder, reference):
    """Same attribute names, one defined differently (where its edits may act): every explanation would differ."""
    import dataclasses

    from xcounter.attributes import load_attributes

    classifier, generator = loaded
    vocabulary = load_attributes("cxr")
    moved = dataclasses.replace(vocabulary[ATTRIBUTE], where="periphery")
    other = dataclasses.replace(vocabulary, attributes=tuple(moved if a.name == ATTRIBUTE else a
                                                               for a in vocabulary.attributes))
    assert other.sha256([ATTRIBUTE]) != vocabulary.sha256([ATTRIBUTE])
    assert other.sha256(["pacemaker"]) == vocabulary.sha256(["pacemaker"])  # only the examined ones count
    with pytest.raises(XCounterError, match="attributes_sha256"):
        audit(classifier, generator, mixed_folder, out_dir=reference.out_dir, seed=3, attributes=other, **OPTIONS)


def test_an_audit_written_before_a_config_key_existed_still_resumes(loaded, mixed_folder, reference, tmp_path):
    import shutil

    classifier, generator = loaded
    folder = tmp_path / "older"
    shutil.copytree(reference.out_dir, folder)
    config = json.loads((folder / "audit.json").read_text())
    settings = config.pop("generator_settings")
    config.pop("attributes_sha256")
    (folder / "audit.json").write_text(json.dumps(config))
    again = audit(classifier, generator, mixed_folder, out_dir=folder, seed=3, report=False, **OPTIONS)
    assert again.metadata["counts"]["explained_now"] == 0  # everything was already in the journal
    assert "generator_settings" in json.loads((folder / "audit.json").read_text())
    # nor a generator setting added since, left unset
    assert "confirm_shortcuts" in settings and not generator.confirm_shortcuts
    config["generator_settings"] = {k: v for k, v in settings.items() if k != "confirm_shortcuts"}
    (folder / "audit.json").write_text(json.dumps(config))
    again = audit(classifier, generator, mixed_folder, out_dir=folder, seed=3, report=False, **OPTIONS)
    assert again.metadata["counts"]["explained_now"] == 0


def test_torn_last_line_is_truncated_and_bad_lines_refused(tmp_path):
    log = RecordLog(tmp_path / "explanations.jsonl")
    log.append(make_record("a.png", "a.png", "ok", explanation={"results": []}))
    log.append(make_record("b.png", "b.png", "failed", reason="unreadable"))
    intact = log.path.read_bytes()
    with open(log.path, "ab") as handle:
        handle.write(b'{"scan_id": "c.png", "sta')
    assert log.recover() == {"a.png": "ok", "b.png": "failed"}
    assert log.path.read_bytes() == intact
    log.append(make_record("c.png", "c.png", "ok", explanation={"results": []}))
    assert [r["scan_id"] for r in log.records()] == ["a.png", "b.png", "c.png"]

    log.path.write_bytes(intact + b"garbage\n" + intact.splitlines(keepends=True)[0])
    with pytest.raises(XCounterError, match="invalid record"):
        log.recover()
    log.path.write_bytes(intact + intact)
    with pytest.raises(XCounterError, match="twice"):
        log.recover()


def test_bootstrap_interval_is_sane_and_seeded():
    rng = np.random.default_rng(0)
    flips = (rng.random(400) < 0.3).astype(float)
    low, high = bootstrap_ci(flips, seed=1)
    assert low < flips.mean() < high and low < 0.3 < high
    expected_half_width = 1.96 * np.sqrt(0.3 * 0.7 / 400)
    assert (high - low) / 2 == pytest.approx(expected_half_width, rel=0.2)
    assert bootstrap_ci(flips, seed=1) == (low, high) and bootstrap_ci(flips, seed=2) != (low, high)
    narrower = bootstrap_ci(flips, seed=1, level=0.5)
    assert low < narrower[0] < narrower[1] < high
    assert bootstrap_ci([], seed=0) == (None, None)
    assert bootstrap_ci([1.0, 1.0, 1.0], seed=0) == (1.0, 1.0)
    strengths = np.array([0.25, np.nan, 0.5, np.nan, 0.75])  # NaN = no flip on that scan
    low, high = bootstrap_ci(strengths, np.nanmedian, seed=0)
    assert 0.25 <= low <= 0.5 <= high <= 0.75


def synthetic_record(scan_id: str, flips: dict[str, bool], kinds: dict[str, str], target: str = TARGET) -> dict:
    results = []
    for attribute, flipped in flips.items():
        after = 0.3 if flipped else 0.7
        results.append({"target": target, "attribute": attribute, "kind": kinds[attribute], "flipped": flipped,
                        "minimal_strength": 0.5 if flipped else None, "sign": "remove", "counterfactuals": [{
                            "sign": "remove", "flipped": flipped, "minimal_strength": 0.5 if flipped else None,
                            "probability_before": 0.8, "probability_after": after, "cfrt": None}]})
    return make_record(scan_id, scan_id, "ok", explanation={"results": results})


def test_shortcut_rule_and_order_independence():
    kinds = {"chest_tube": "device", "pneumothorax": "pathology", "pacemaker": "device",
             "portable_label": "acquisition"}
    records = [synthetic_record(f"s{i}.png", {"chest_tube": i < 9, "pneumothorax": True, "pacemaker": i < 2,
                                              "portable_label": False}, kinds) for i in range(10)]
    records += [synthetic_record(f"t{i}.png", {"pacemaker": True}, kinds, target="Effusion") for i in range(4)]
    records.append(make_record("bad.png", "bad.png", "failed", reason="unreadable"))
    aggregate = aggregate_records(records, seed=0, n_resamples=500)
    alerts = {(s.target, s.attribute) for s in aggregate.alerts}
    assert alerts == {(TARGET, "chest_tube")}  # a pathology, a rare flip and too few scans give no alert
    chest = aggregate.stat(TARGET, "chest_tube")
    assert (chest.flips, chest.scans, chest.flip_rate) == (9, 10, 0.9)
    assert chest.flip_rate_ci[0] > 0.2 and chest.median_minimal_strength == 0.5
    assert chest.mean_delta_probability == pytest.approx((9 * -0.5 + -0.1) / 10)
    assert aggregate.stat("Effusion", "pacemaker").flip_rate == 1.0 and aggregate.failures[0]["scan_id"] == "bad.png"
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    assert aggregate_records(shuffled, seed=0, n_resamples=500).to_dict() == aggregate.to_dict()


def test_mediated_flips_are_not_the_attributes_own_and_raise_no_alert(tmp_path):
    """With an oracle, a pacemaker edit that also erased the effusion is credited to the effusion: on a clean
    classifier that must not become a shortcut alert, and the report still shows the flips as mediated."""
    from xcounter.audit.report import write_audit_report

    kinds = {"pacemaker": "device", "pleural_effusion": "pathology"}
    records = [synthetic_record(f"s{i}.png", {"pacemaker": True, "pleural_effusion": True}, kinds) for i in range(8)]
    for record in records[:6]:
        record["explanation"]["results"][0]["verdict"] = "mediated"
    aggregate = aggregate_records(records, seed=0, n_resamples=300)
    pacemaker = aggregate.stat(TARGET, "pacemaker")
    assert (pacemaker.flips, pacemaker.mediated, pacemaker.flip_rate) == (2, 6, 0.25)
    assert aggregate.stat(TARGET, "pleural_effusion").flips == 8
    assert not pacemaker.alert
    for record in records:  # the same flips, no longer mediated: an alert
        record["explanation"]["results"][0]["verdict"] = "shortcut"
    assert aggregate_records(records, seed=0, n_resamples=300).stat(TARGET, "pacemaker").alert
    metadata = {"classifier": {"name": "m", "sha256": "abc"}, "generator": {"name": "g"}, "seed": 0,
                "targets": [TARGET], "attributes": list(kinds), "settings": {}, "executor": "serial (1 worker)",
                "versions": {"xcounter": "0"}, "created": "now"}
    html_path, _ = write_audit_report(tmp_path, aggregate, metadata, lambda: iter(records))
    assert "(+6 mediated)" in html_path.read_text()
    for record in records[:6]:  # flips the edit's own pixels did not make: not the pacemaker's either
        record["explanation"]["results"][0]["verdict"] = "unconfirmed"
    unconfirmed = aggregate_records(records, seed=0, n_resamples=300)
    pacemaker = unconfirmed.stat(TARGET, "pacemaker")
    assert (pacemaker.flips, pacemaker.unconfirmed, pacemaker.mediated, pacemaker.alert) == (2, 6, 0, False)
    html_path, _ = write_audit_report(tmp_path, unconfirmed, metadata, lambda: iter(records))
    assert "(+6 unconfirmed)" in html_path.read_text()


def test_report_shows_alerts_with_their_evidence(tmp_path):
    from xcounter.audit.report import write_audit_report

    kinds = {"chest_tube": "device"}
    records = [synthetic_record(f"s{i}.png", {"chest_tube": i != 3}, kinds) for i in range(8)]
    aggregate = aggregate_records(records, seed=0, n_resamples=300)
    metadata = {"classifier": {"name": "<model>", "sha256": "abc"}, "generator": {"name": "g"}, "seed": 0,
                "targets": [TARGET], "attributes": ["chest_tube"], "settings": {}, "executor": "serial (1 worker)",
                "versions": {"xcounter": "0"}, "created": "now"}
    html_path, json_path = write_audit_report(tmp_path, aggregate, metadata, lambda: iter(records))
    html = html_path.read_text()
    low, high = aggregate.stat(TARGET, "chest_tube").flip_rate_ci
    assert "Shortcut alerts" in html and "flips <strong>Pneumothorax</strong> on" in html and "7 of 8 scans" in html
    assert f"[{low:.3f}, {high:.3f}]" in html and "s0.png" in html and "&lt;model&gt;" in html
    assert json.loads(json_path.read_text())["aggregate"]["alerts"] == [f"{TARGET}/chest_tube"]


def test_scan_lists_manifest_and_cli_errors(tmp_path, capsys):
    folder = write_scans(tmp_path / "scans" / "sub", 2)
    (folder / ".hidden.png").write_bytes(b"x")
    assert [s.scan_id for s in collect_scans(tmp_path / "scans")] == ["sub/scan00.png", "sub/scan01.png"]
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,report_text\nscans/sub/scan01.png,Right chest tube in place\nscans/sub/scan00.png,\n")
    items = collect_scans(manifest)
    assert [(s.scan_id, s.report_text) for s in items] == [("scans/sub/scan00.png", None),
                                                             ("scans/sub/scan01.png", "Right chest tube in place")]
    assert Path(items[0].path).is_file()
    (tmp_path / "bad.csv").write_text("file\nx.png\n")
    with pytest.raises(XCounterError, match="'path' column"):
        collect_scans(tmp_path / "bad.csv")
    (tmp_path / "latin1.csv").write_bytes("path\nscans/sub/scan00.png,Épanchement\n".encode("latin-1"))
    with pytest.raises(XCounterError, match="not a UTF-8 CSV text file"):
        collect_scans(tmp_path / "latin1.csv")
    with pytest.raises(XCounterError, match="'.*nowhere' does not exist"):
        collect_scans(tmp_path / "nowhere")
    (tmp_path / "list.txt").write_text("scans/sub/scan00.png\n")
    with pytest.raises(XCounterError, match="neither a folder"):
        collect_scans(tmp_path / "list.txt")
    assert scan_seed(0, "a.png") == scan_seed(0, "a.png") != scan_seed(1, "a.png")
    assert cli_main(["audit", "--classifier", "x.pt", "--out", str(tmp_path / "o")]) != 0
    assert cli_main(["audit", "--classifier", "x.pt", "--images", str(tmp_path / "nope"),
                     "--generator", "g", "--out", str(tmp_path / "o")]) == 2
    assert "Error:" in capsys.readouterr().err
    common = ["audit", "--classifier", "x.pt", "--images", str(folder), "--generator", "g", "--out", str(tmp_path / "o")]
    assert cli_main([*common, "--signs", "sideways"]) == 2
    assert "--signs" in capsys.readouterr().err
    assert cli_main([*common, "--flip-margin", "-1"]) == 2
    assert "--flip-margin" in capsys.readouterr().err
    assert cli_main([*common, "--inversion-iterations", "11"]) == 2
    assert "--inversion-iterations" in capsys.readouterr().err
    assert cli_main([*common, "--threshold", "nan"]) == 2  # click's FloatRange lets NaN through
    assert "threshold must be a flip rate in [0, 1], got nan" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_cli_passes_explainer_options_through(tmp_path, monkeypatch):
    """--signs, --flip-margin and --inversion-iterations reach every scan's Explainer; unset ones stay unset."""
    from types import SimpleNamespace

    seen = []

    def fake_audit(*args, **kwargs):
        seen.append(kwargs["explainer_options"])
        return SimpleNamespace(metadata={"counts": {"scans": 0, "ok": 0, "failed": 0, "resumed": 0}}, alerts=[],
                               report_html=tmp_path / "audit_report.html")

    monkeypatch.setattr("xcounter.audit.audit", fake_audit)
    folder = write_scans(tmp_path / "scans", 1)
    common = ["audit", "--classifier", "x.pt", "--images", str(folder), "--generator", "g", "--out", str(tmp_path / "o")]
    assert cli_main([*common, "--signs", "add", "--flip-margin", "0.5", "--inversion-iterations", "2"]) == 0
    assert cli_main(common) == 0
    assert cli_main([*common, "--inversion", "ddpm"]) == 0
    assert cli_main([*common, "--no-confirm-shortcuts"]) == 0
    assert cli_main([*common, "--anchor", "scan"]) == 0
    assert cli_main([*common, "--no-prune"]) == 0
    assert cli_main([*common, "--no-removal-check"]) == 0
    assert seen == [{"signs": ["add"], "flip_margin": 0.5, "inversion_iterations": 2}, {}, {"inversion": "ddpm"},
                    {"confirm_shortcuts": False}, {"anchor": "scan"}, {"prune": False}, {"removal_check": False}]


def test_public_api_is_callable():
    import xcounter.audit as module

    assert callable(xcounter.audit) and callable(module) and module.audit is audit
