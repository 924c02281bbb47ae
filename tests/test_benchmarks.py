"""The benchmark scripts run end to end (`--quick --models tiny`) and write well-formed sections, so they
cannot silently rot. The tiny models have random weights: only structure and value ranges are checked."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
QUICK = ["--quick", "--models", "tiny"]


def load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reports")


def unit(value) -> bool:
    return value is None or 0.0 <= value <= 1.0


def written(out: Path, name: str) -> tuple[str, dict]:
    markdown = (out / f"bench_{name}.md").read_text(encoding="utf-8")
    data = json.loads((out / f"bench_{name}.json").read_text(encoding="utf-8"))
    assert markdown.startswith("## ") and f"benchmarks/{name}.py" in markdown
    assert "Seed: 0" in markdown and "UTC" in markdown and "|---|" in markdown
    assert data["name"] == name and data["models"] == "tiny" and data["quick"] is True
    assert data["figure"] and (out / data["figure"]).stat().st_size > 1000
    for goal in data["goals"]:
        assert goal["status"] in ("met", "MISSED", "not measured")
        assert (goal["status"] == "MISSED") == ("**MISSED**" in markdown.split(goal["goal"], 1)[1].split("\n", 1)[0])
    return markdown, data


def test_faithfulness(out):
    load("faithfulness").main([*QUICK, "--out", str(out)])
    markdown, data = written(out, "faithfulness")
    assert set(data["domains"]) == {"cxr", "skin"}
    cxr = data["domains"]["cxr"]
    rows = {(r["classifier"], r["label"]): r for r in cxr["rows"]}
    assert {("cxr-shortcut", "Pneumothorax"), ("cxr-shortcut-rho0.5", "Pneumothorax"),
            ("cxr-clean", "Effusion")} <= set(rows)
    assert rows[("cxr-shortcut", "Pneumothorax")]["rho"] == 1.0
    for domain in data["domains"].values():
        assert domain["n_scans"] == 1 and domain["signs"] == "auto"
        for row in domain["rows"]:
            assert row["n"] == 1 and 1 <= row["mean_rank"] <= len(domain["examined"])
            assert all(unit(row[k]) for k in ("recovery", "flagged", "ranked_first", "any_shortcut_flag"))
            assert row["recovery"] <= min(row["flagged"], row["ranked_first"])
            scan = row["scans"][0]
            assert scan["expected_verdict"] in ("shortcut", "drives", "does not drive")
            assert scan["expected_flipped"] == (scan["expected_verdict"] != "does not drive")
            # the renderer's check: every planted attribute is binary, and only flags can be unconfirmed
            assert isinstance(scan["expected_true_flips"], bool)
            assert set(scan["unconfirmed_flags"]) <= set(scan["shortcut_flags"])
            assert row["any_unconfirmed_flag"] <= row["any_shortcut_flag"] and unit(row["true_flips"])
    assert len(cxr["shortcuts"]) == 2 and ("cxr-portable", "Consolidation") in rows
    assert "rho 0.5" in markdown and "portable_label -> Consolidation" in markdown
    assert any("rho 0.5" in g["goal"] for g in data["goals"])


def test_quality(out):
    load("quality").main([*QUICK, "--out", str(out)])
    markdown, data = written(out, "quality")
    for domain in data["domains"].values():
        methods = [r["method"] for r in domain["summary"]]
        assert methods[:4] == ["trajectory", "latent_shift", "sdedit", "random"]
        assert any(m.startswith("sdedit@") for m in methods) and "real phantoms (second draw)" in methods
        truth = next(r for r in domain["records"] if r["method"] == "true counterfactual (renderer toggle)")
        assert truth["nfe"] == 0 and truth["l1"] > 0  # the renderer redrew the attribute, no generator
        # the renderer's "before" image is the scan: against it, "as in the scan" is "all else kept"
        assert truth["kept_vs_scan"] == (truth["changed"] == [])
        assert all(isinstance(r["kept_vs_scan"], bool) for r in domain["records"])
        for r in domain["records"]:
            assert r["method"] != "ours, removals unconfined" or r["sign"] == "remove"
        ours = [r for r in domain["records"] if r["method"] == "trajectory"]
        full = [r for r in domain["records"] if r["method"] == "ours at full strength (trajectory end)"]
        assert len(full) == len(ours) and all(r["strength"] is None for r in full)  # one strongest edit per edit
        other = [r for r in domain["records"] if r["method"] == "ours, DDPM inversion (edit-friendly noise)"]
        assert len(other) == len(ours)  # every edit again from the inversion the generator does not use
        redrawn = [r for r in domain["records"] if r["method"] in load("quality").OTHER_ANCHOR.values()]
        assert len(redrawn) == len(ours)  # and drawn onto what the generator does not draw onto
        whole = [r for r in domain["records"] if r["method"] == load("quality").UNPRUNED]
        assert len(whole) == len(ours)  # and shown as the whole sample
        assert all(w["l1"] >= o["l1"] - 1e-6 for w, o in zip(whole, ours) if o["flipped"])  # pruning only removes
        for row in domain["summary"]:
            assert all(unit(row[k]) for k in ("flip_rate", "identity", "edited"))
            assert row["method"] == "real phantoms (second draw)" or unit(row["kept_vs_scan"])
            assert row["fid"] is None or row["fid"] >= 0
            assert row["ssim_at_flip"] is None or -1 <= row["ssim_at_flip"] <= 1
        nfe = {r["method"]: r["nfe"] for r in domain["summary"]}
        assert nfe["latent_shift"] == 0 and nfe["trajectory"] > 0
        assert nfe["random"] == nfe["trajectory"]  # the control shares every setting but the direction
        # the realism reference: a fixed number of real phantoms per edit, whatever else is recorded per edit
        assert domain["n_reference"] == load("quality").REFERENCE_PER_TASK * len(domain["tasks"]) * domain["n_scans"]
    assert "ours (trajectory)" in markdown and "Latent Shift" in markdown


def test_kept_against_scan_reads_each_attribute_by_its_type():
    from types import SimpleNamespace

    quality = load("quality")
    oracle = SimpleNamespace(attributes=["effusion", "nodule", "exposure"],
                             types={"effusion": "binary", "nodule": "binary", "exposure": "continuous"})
    logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731 - features are stored as logits
    scan = np.array([0.9, 0.2, 0.50])
    assert quality.kept_against_scan(oracle, scan, [logit(0.1), logit(0.3), logit(0.55)], "effusion")
    assert not quality.kept_against_scan(oracle, scan, [logit(0.1), logit(0.7), logit(0.55)], "effusion")
    assert not quality.kept_against_scan(oracle, scan, [logit(0.9), logit(0.2), logit(0.65)], "effusion")
    assert not quality.kept_against_scan(oracle, scan, [logit(0.1), logit(0.2), logit(0.5)], "nodule")


def test_paper_tables(out):
    load("paper_tables").main([*QUICK, "--out", str(out)])
    markdown, data = written(out, "paper_tables")
    cxr = {r["attribute"]: r for r in data["domains"]["cxr"]["cfrt"]}
    assert cxr["pleural_effusion"]["published_swap"] == 0.781 and cxr["support devices"]["published_bezier"] == 0.863
    for domain in data["domains"].values():
        assert domain["measurements"]
        for m in domain["measurements"]:
            assert unit(m["cfrt_swap"]) and unit(m["cfrt_bezier"])
            assert len(m["cosine_to_strongest"]) == len(m["swap_steps"])
            assert math.isclose(m["cosine_to_strongest"][-1], 1.0, abs_tol=1e-6)  # the strongest edit itself
        assert all(-1 - 1e-6 <= r["cosine_to_strongest"] <= 1 + 1e-6 for r in domain["cosine"])
    assert "Different data" in markdown and "CheXpert" in markdown and "ISIC" in markdown


def test_speed_and_report(out):
    load("speed").main([*QUICK, "--out", str(out)])
    markdown, data = written(out, "speed")
    for domain in data["domains"].values():
        rows = {r["key"]: r for r in domain["summary"]}
        assert set(rows) == {"ours", "sdedit", "naive_img2img"}
        assert all(r["seconds"] > 0 for r in rows.values())
        run = domain["runs"][0]
        assert run["naive_img2img"]["nfe"] >= run["sdedit"]["nfe"] > 0  # same search, never cheaper
    e2e = data["end_to_end"]
    assert e2e is not None, data["end_to_end_error"]
    assert e2e["seconds"] > 0 and e2e["peak_rss_mb"] > 50 and e2e["nfe"] > 0 and e2e["attributes"] == 12
    assert "DiME" in markdown and "ACE" in markdown and "audit throughput" in markdown
    writer = data["dataset_writer"]
    assert writer["n"] == writer["written"] == 200 and writer["per_second"] > 0  # --quick: 200 of the goal's 5000
    assert "Phantom dataset writer" in markdown
    assert [g["status"] for g in data["goals"] if "CXR phantoms written" in g["goal"]] == ["not measured"]

    report = load("make_report").main(["--out", str(out)])
    text = report.read_text(encoding="utf-8")
    assert text.startswith("# xcounter benchmarks") and "## Goals at a glance" in text
    for title in ("Faithfulness", "Counterfactual quality", "paper's tables", "Speed and cost"):
        assert title in text
    assert "random-weight tiny test models" in text


def test_audit_rho(out):
    load("audit_rho").main([*QUICK, "--out", str(out)])
    markdown, data = written(out, "audit_rho")
    for name, domain in data["domains"].items():
        planted = [attribute for attribute, _ in domain["shortcuts"]]
        assert len(planted) == 2 and domain["examined"] == planted
        rows = {(r["classifier"], r["attribute"]): r for r in domain["rows"]}
        assert len(rows) == 8  # two ladders of three rho, and the clean control of each
        assert rows[(f"{name}-shortcut", planted[0])]["rho"] == 1.0
        assert rows[(f"{name}-clean", planted[1])]["rho"] is None
        for row in rows.values():
            assert row["scans"] == 1 and unit(row["flip_rate"])
            assert row["protocol_alert"] == (row["rho"] in (1.0, 0.75))
            assert row["planted_alert"] is False  # one scan is below the alert rule's minimum
            # the renderer's own toggles on the same scan; one scan is below the alert rule's minimum as well
            toggles = row["renderer"]
            assert toggles["scans"] == 1 and toggles["flips"] in (0, 1) and toggles["flip_rate"] == toggles["flips"]
            assert row["should_alert"] is toggles["alert"] is False
    assert any("falls with rho" in g["goal"] for g in data["goals"])
    assert sum("agrees with the renderer's toggles" in g["goal"] for g in data["goals"]) == 4  # one per ladder
    assert "alert expected (renderer)" in markdown and "renderer's toggles flip" in markdown


def test_audit_rho_expects_the_alert_the_renderers_toggles_raise(monkeypatch):
    """Which alerts a planted classifier should raise is read from the renderer's own toggles under the audit's
    rule: toggles that flip 8 of 10 decisions call for an alert, 1 of 10 does not, whatever rho was planted."""
    import torch

    module = load("audit_rho")
    common = module.C
    flipping = {"strong@a": set(range(8)), "weak@b": {3}}  # scan indices whose toggle flips each target
    labels = list(flipping)

    def margins(domain, seed, generator, classifier, base, edits):
        scan = seed - 100
        rows = [[2.0, 2.0]] + [[-2.0 if scan in flipping[label] else 1.5 for label in labels] for _ in edits[1:]]
        return torch.tensor(rows)

    class Combined:
        def target_index(self, target):
            return labels.index(target)

    monkeypatch.setattr(common, "renderer_margins", margins)
    rows = [("ruler", "strong", "a", 1.0), ("ruler", "weak", "b", 0.75)]
    plan = [(100 + i, {"ruler": i % 2 == 0}) for i in range(10)]
    rule = {"threshold": 0.1, "min_scans": 5, "level": 0.95, "n_resamples": 500}
    models = type("Models", (), {"generator": None, "attributes": {"ruler": type("Ruler", (), {"kind": "artifact"})}})()
    out = module.renderer_toggles("skin", models, Combined(), rows, plan, rule, seed=0)
    strong, weak = out["strong@a", "ruler"], out["weak@b", "ruler"]
    assert (strong["flips"], strong["scans"], strong["alert"]) == (8, 10, True)
    assert (weak["flips"], weak["scans"], weak["alert"]) == (1, 10, False)
    assert weak["flip_rate_ci"][0] <= 0.1 < strong["flip_rate_ci"][0]


def test_audit_rho_goals_hold_the_flip_rate_to_the_renderers_and_alerts_to_its_alert():
    """A flip rate whose interval misses the renderer's toggle rate fails the agreement goal, and an alert the
    renderer's toggles do not call for fails that classifier's alert goal (a rho-0.75 model that barely uses
    its shortcut), whatever rho was planted."""
    module = load("audit_rho")

    def row(rho, rate, ci, renderer_rate, alert, expected):
        return {"attribute": "ink", "label": "Melanoma", "rho": rho, "scans": 30, "flip_rate": rate,
                "flip_rate_ci": ci, "planted_alert": alert, "alerts": ["ink"] if alert else [],
                "should_alert": expected, "renderer": {"flips": round(30 * renderer_rate), "scans": 30,
                                                       "flip_rate": renderer_rate}}

    domains = {"skin": {"shortcuts": [["ink", "Melanoma"]], "rows": [
        row(1.0, 0.67, [0.50, 0.83], 0.53, True, True), row(0.75, 0.43, [0.27, 0.60], 0.03, True, False),
        row(0.5, 0.0, [0.0, 0.0], 0.0, False, False)]}}
    goals = {g["goal"].split(" (")[0]: g["status"] for g in module.goals(domains)}
    assert goals["skin: ink -> Melanoma: flip rate agrees with the renderer's toggles"] == "MISSED"
    assert goals["skin: ink -> Melanoma: rho 1.0: alert for ink"] == "met"
    assert goals["skin: ink -> Melanoma: rho 0.75: no alert at all"] == "MISSED"
    assert goals["skin: ink -> Melanoma: rho 0.5: no alert at all"] == "met"
    domains["skin"]["rows"][1] = row(0.75, 0.13, [0.03, 0.27], 0.13, False, False)
    goals = {g["goal"].split(" (")[0]: g["status"] for g in module.goals(domains)}
    assert set(goals.values()) == {"met"}


def test_update_reruns_one_domain_and_keeps_the_other_with_its_source(out, tmp_path):
    """`--update` (after test_audit_rho wrote both domains): the CXR record is carried over unchanged and the
    section names the command it came from; without an earlier section it is a clear error."""
    before = json.loads((out / "bench_audit_rho.json").read_text(encoding="utf-8"))
    load("audit_rho").main([*QUICK, "--out", str(out), "--domains", "skin", "--update"])
    markdown, data = written(out, "audit_rho")
    assert list(data["domains"]) == ["cxr", "skin"] and data["domains"]["cxr"] == before["domains"]["cxr"]
    assert data["kept_from"]["cxr"]["command"] == before["command"] and "--update" in data["command"]
    assert f"cxr from `{before['command']}`" in markdown and data["date"].endswith("UTC")
    with pytest.raises(SystemExit, match="needs an earlier"):
        load("audit_rho").main([*QUICK, "--out", str(tmp_path), "--domains", "skin", "--update"])
    with pytest.raises(SystemExit, match="seed 0 there, 1 here"):
        load("audit_rho").main([*QUICK, "--out", str(out), "--domains", "skin", "--update", "--seed", "1"])


def test_audit_rho_with_mediation_examines_a_pathology_and_counts_mediated_flips(out):
    load("audit_rho").main([*QUICK, "--out", str(out), "--mediation", "--domains", "cxr"])
    markdown, data = written(out, "audit_rho")
    domain = data["domains"]["cxr"]
    planted = [attribute for attribute, _ in domain["shortcuts"]]
    assert domain["examined"][:2] == planted and len(domain["examined"]) == 3  # + one pathology (quick)
    for row in domain["rows"]:
        stats = row["examined_stats"][row["attribute"]]
        assert stats["mediated"] >= 0 and stats["scans"] == 1
    assert "mediated flips (not in the rate)" in markdown and "*mediated*" in markdown


def test_generator_card(out):
    load("generator_card").main([*QUICK, "--out", str(out)])
    markdown, data = written(out, "generator_card")
    for domain in data["domains"].values():
        rows = domain["controllability"]
        assert rows and {r["guidance"] for r in rows} == {1.0, 4.0}
        assert all(unit(r["with"]) and unit(r["without"]) and r["met"] == (r["with"] >= 0.9 and r["without"] <= 0.1)
                   for r in rows)
        assert all(r["final"] >= 0 and r["floor_real_vs_real"] >= 0 for r in domain["realism"])
        assert -1 <= domain["inversion"]["ssim_mean"] <= 1 and domain["inversion"]["n"] == 2
    assert "Controllability" in markdown and "Inversion" in markdown


def test_real_cause(out):
    load("real_cause").main([*QUICK, "--out", str(out)])
    markdown, data = written(out, "real_cause")
    tasks = [task for domain in data["domains"].values() for task in domain["tasks"]]
    assert [t["classifier"] for t in tasks] == [name for d in data["domains"] for name, _, _ in
                                                 load("real_cause").TASKS[d]]
    for result in tasks:
        assert result["n_scans"] == 1 and 0 <= result["n_positive"] <= 1
        for scan in result["scans"]:
            assert scan["rank"] >= 1 and scan["top"] and scan["nfe"] > 0
            flips = scan["true_margin_after"] < -1 if scan["true_margin_before"] > 0 else scan["true_margin_after"] > 1
            assert scan["true_flips"] == flips
        assert result["first_and_flips"] is None or unit(result["first_and_flips"])
        assert result["agreement"] is None or unit(result["agreement"])
        verdicts = result["verdicts"]
        assert verdicts["n_pairs"] == sum(len(s["renderer"]) for s in result["scans"] if s["positive"])
        assert all(unit(verdicts[k]) for k in ("agreement", "precision", "recall", "top_is_a_true_flip"))
    assert "finding first and flips" in markdown


def test_real_cause_scans_are_truly_caused_by_the_finding():
    """The renderer decides: with the finding the label is positive, without it negative."""
    from xcounter.phantoms import sample_attributes

    module = load("real_cause")
    for domain, tasks in module.TASKS.items():
        for _, label, finding in tasks:
            for seed in module.scan_seeds(domain, label, finding, 3, 0):
                assert sample_attributes(domain, seed, **{finding: True})[label] == 1
                assert sample_attributes(domain, seed, **{finding: False})[label] == 0


def test_renderer_truth_is_read_on_the_scan_the_explainer_explains():
    """The renderer's margins must be the classifier's decision on the scan as the explainer sees it (brought
    down to the generator's resolution as `generator.prepare` does), not on a differently filtered copy: a box
    filter moved the shipped rho-0.75 chest-tube model's margin on this scan from 0.25 to 2.55."""
    import torch
    import xcounter

    load("real_cause")  # puts benchmarks/ on the path, where _common lives
    import _common as common

    generator = xcounter.load_generator("phantom-cxr")
    classifier = xcounter.load_classifier("phantom:cxr-shortcut-rho0.75")
    seed, overrides = common.scan_plan("cxr", 3, 0)[2]
    pixels, _, _ = common.phantom("cxr", seed, **overrides)
    full = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()
    small = common.phantom_tensor("cxr", seed, generator, **overrides)
    assert small.shape[-1] == generator.resolution < full.shape[-1]
    with torch.no_grad():
        expected = classifier.margins(full)  # what `Explainer.explain(pixels)` reports as the scan's decision
        margins = common.renderer_margins("cxr", seed, generator, classifier, overrides, [None])
    assert torch.allclose(margins, expected, atol=1e-4)


def test_verdict_scores_count_against_the_renderer():
    module = load("real_cause")
    scans = [{"top": "a", "renderer": {"a": {"ours": True, "truth": True}, "b": {"ours": True, "truth": False}}},
             {"top": "nothing flips", "renderer": {"a": {"ours": False, "truth": True}, "b": {"ours": False,
                                                                                              "truth": False}}}]
    scores = module.verdict_scores(scans)
    assert scores["n_pairs"] == 4 and scores["agreement"] == 0.5
    assert scores["precision"] == 0.5 and scores["recall"] == 0.5
    assert scores["top_is_a_true_flip"] == 0.5 and scores["true_flips_per_scan"] == 1.0


def test_device_comparison_runs_on_the_cpu_and_agrees_with_itself(out):
    """`device.py --device cpu`: the comparison's code path on two copies of the same models; with the same
    seed both copies must give the same first attribute, verdicts, flips and NFE."""
    load("device").main([*QUICK, "--device", "cpu", "--out", str(out)])
    markdown, data = written(out, "device")
    for domain in data["domains"].values():
        assert domain["device"] == "cpu" and domain["n_scans"] == 1
        run = domain["runs"][0]
        assert run["same_first"] and run["same_verdicts"] and run["same_flips"] and run["same_nfe"]
        assert run["max_strength_gap"] == 0.0 and run["cpu_s"] > 0 and run["device_s"] > 0
        assert {b["method"] for b in domain["baselines"]} == {"latent_shift", "sdedit", "traverse"}
        assert all(b["ok"] for b in domain["baselines"]), domain["baselines"]
    assert all(g["status"] == "met" for g in data["goals"])
