"""Speed and cost: UNet sample-evaluations (NFE) per report card and per attribute, wall clock against a
naive img2img search, and the end-to-end `xcounter demo` (time and peak memory).

Per counterfactual (same scans, model, steps, candidate strengths and stopping rule, timed in one run):
ours (swap-step trajectory off the shared prefix + Bézier bisection with the VAE only), SDEdit as
implemented here (all candidate strengths in one UNet batch, bisection by re-running), and the naive
search that calls diffusers' `StableDiffusionImg2ImgPipeline` once per candidate strength and per
bisection (`xcounter.methods.sdedit.naive_img2img_search`). DiME's and ACE's published per-attempt costs
are listed beside ours for scale (not run here).

    python benchmarks/speed.py
    python benchmarks/speed.py --quick --models tiny
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _common as C  # noqa: E402

NAME = "speed"
DEFAULT_N, QUICK_N = 4, 1
NFE_PER_ATTRIBUTE_GOAL = 150
#: the phantom issue's dataset-writer goal: 5000 CXR phantoms in under 2 minutes on 2 cores
WRITER_N, WRITER_GOAL_S, WRITER_QUICK_N = 5000, 120.0, 200
#: published per-attempt costs, for scale (their own step counts and resolutions)
OTHERS = [("DiME (Jeanneret et al. 2022)", "about 1,830 UNet passes per attempt (guided, with inner denoising)"),
          ("ACE (Jeanneret et al. 2023)", "about 250 forward + 250 backward UNet passes per attempt")]
TIME_BINARY = Path("/usr/bin/time")


def counterfactual_costs(domain: str, args, total: C.Budget) -> dict:
    budget = C.domain_budget(args)
    """Time ours, SDEdit and the naive img2img loop on the planted-shortcut edit of each scan."""
    from xcounter.methods import get_method
    from xcounter.methods.sdedit import naive_img2img_search
    from xcounter.methods.trajectory import DEFAULT_MAX_NFE

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from quality import contexts_for_scan

    attribute, label = C.PLANTED[domain]
    name = C.SHORTCUT_CLASSIFIERS[domain][1.0]
    models = C.load_domain(domain, args.models, [name], need_oracle=False)
    if name not in models.classifiers:
        return {"models": models.describe(), "runs": [], "n_scans": 0}
    from xcounter.disentangle.directions import LanguageDirections
    examined = [a.name for a in models.attributes if a.kind != "anatomy"]
    directions = LanguageDirections(models.generator, models.attributes, names=examined).fit().directions_
    generator = models.generator
    n = args.n or (QUICK_N if args.quick or args.models == "tiny" else DEFAULT_N)
    runs, done = [], 0
    for phantom_seed, overrides in C.scan_plan(domain, n, args.seed):
        if not budget.allows_more(done):
            break
        pixels, truth, report = C.phantom(domain, phantom_seed, **overrides)
        before = generator.nfe
        (inversion, contexts), inversion_s = C.timed(
            lambda: contexts_for_scan(models, pixels, report, args.seed, directions, [(name, label, attribute)]))
        inversion_nfe = generator.nfe - before
        context, sign = contexts[(name, label)], C.sign_toward_opposite(truth, attribute)
        row: dict[str, Any] = {"scan_seed": phantom_seed, "sign": sign, "inversion_s": inversion_s,
                               "inversion_nfe": inversion_nfe}
        candidates = {
            "ours": lambda: get_method("trajectory", max_nfe=DEFAULT_MAX_NFE).generate(
                context, models.attributes[attribute], sign),
            "sdedit": lambda: get_method("sdedit").generate(context, models.attributes[attribute], sign),
            "naive_img2img": lambda: naive_img2img_search(context, models.attributes[attribute], sign),
        }
        for key, call in candidates.items():
            before = generator.nfe
            cf, seconds = C.timed(call)
            row[key] = {"seconds": seconds, "nfe": generator.nfe - before, "flipped": bool(cf.flipped),
                        "minimal_strength": cf.minimal_strength}
        row["naive_over_ours"] = row["naive_img2img"]["seconds"] / max(row["ours"]["seconds"], 1e-9)
        row["naive_over_sdedit"] = row["naive_img2img"]["seconds"] / max(row["sdedit"]["seconds"], 1e-9)
        sdedit, naive = row["sdedit"], row["naive_img2img"]
        row["sdedit_matches_naive"] = (sdedit["flipped"] == naive["flipped"]
                                       and sdedit["minimal_strength"] == naive["minimal_strength"])
        runs.append(row)
        done += 1
        print(f"[{NAME}] {domain} scan {done}/{n} ({total.elapsed:.0f}s)", flush=True)
    return {"models": models.describe(), "runs": runs, "n_scans": done, "n_planned": n,
            "budget_limited": budget.stopped_early, "classifier": name,
            "attribute": attribute, "target": label, "steps": models.steps}


def summarise_costs(result: dict) -> list[dict]:
    runs = result["runs"]
    if not runs:
        return []
    rows = []
    for key, text in (("ours", "ours (trajectory + Bézier search)"), ("sdedit", "SDEdit (batched candidates)"),
                      ("naive_img2img", "naive img2img pipeline loop")):
        rows.append({"method": text, "key": key, "n": len(runs),
                     "seconds": C.mean([r[key]["seconds"] for r in runs]),
                     "nfe": C.mean([r[key]["nfe"] for r in runs]),
                     "flip_rate": float(np.mean([r[key]["flipped"] for r in runs]))})
    return rows


def _cli(*words: str) -> list[str]:
    return [sys.executable, "-c", "from xcounter.cli import run; run()", *words]


def end_to_end_command(kind: str, folder: Path) -> tuple[list[str], str]:
    """The command measured end to end: `xcounter demo` (shipped), or `xcounter explain` on tiny models."""
    if kind == "shipped":
        return _cli("demo", "--out", str(folder / "demo")), "xcounter demo"
    tests = str(C.ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from tiny_classifier import make_tiny_densenet
    from tiny_generator import tiny_generator_dir

    from xcounter.classifiers import save_torchscript_classifier
    from xcounter.report.plots import png_bytes
    from xcounter.utils.atomic import write_bytes_atomic

    generator = tiny_generator_dir(folder, 1, settings={"domain": "cxr", "steps": C.TINY_STEPS})
    classifier = folder / "tiny.pt"
    save_torchscript_classifier(make_tiny_densenet(0, labels=["Pneumothorax"]), classifier, ["Pneumothorax"],
                                [0.0], preprocess={"name": "xrv", "channels": 1, "size": 32}, domain="cxr")
    pixels, _, _ = C.phantom("cxr", C.UNSEEN_SEED_BASE + 7, chest_tube=True)
    scan = folder / "scan.png"
    write_bytes_atomic(scan, png_bytes(pixels))
    out = folder / "demo"
    out.mkdir()
    words = ["explain", "--classifier", str(classifier), "--image", str(scan), "--generator", str(generator),
             "--target", "Pneumothorax", "--out", str(out / "report.html"), "--json", str(out / "report.json")]
    return _cli(*words), "xcounter explain (tiny models)"


def run_fresh(command: list[str], cwd: str, label: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run `command` in a fresh process with one torch thread; (result, wall seconds). Raises when it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{label} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done, seconds


def end_to_end(kind: str) -> dict:
    """Wall time, peak RSS and the card's NFE of one end-to-end run in a fresh process."""
    from xcounter.report.json_sidecar import read_json_sidecar

    with tempfile.TemporaryDirectory(prefix="xcounter-bench-") as tmp:
        folder = Path(tmp)
        command, label = end_to_end_command(kind, folder)
        use_time = TIME_BINARY.is_file()
        done, seconds = run_fresh([str(TIME_BINARY), "-v", *command] if use_time else command, tmp, label)
        peak_mb = None
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
        if match:
            peak_mb = int(match.group(1)) / 1024
        else:
            import resource
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        explanation = read_json_sidecar(folder / "demo" / "report.json")
    examined = sorted({r.attribute for r in explanation.results})
    return {"label": label, "seconds": seconds, "peak_rss_mb": peak_mb, "nfe": explanation.nfe,
            "attributes": len(examined), "targets": explanation.targets,
            "nfe_per_attribute": explanation.nfe / max(1, len(examined)), "steps": explanation.settings.get("steps"),
            "swap_steps": explanation.settings.get("swap_steps"), "measured_with": "/usr/bin/time -v" if use_time
            else "getrusage(RUSAGE_CHILDREN)", "threads": "OMP_NUM_THREADS=1", "cpu_count": os.cpu_count()}


def dataset_writer(n: int) -> dict:
    """Wall time of `xcounter phantoms cxr --n N` (default workers: 2) in a fresh process, files included."""
    with tempfile.TemporaryDirectory(prefix="xcounter-bench-") as tmp:
        command = _cli("phantoms", "cxr", "--n", str(n), "--out", str(Path(tmp) / "data"), "--seed", "0")
        _, seconds = run_fresh(command, tmp, "xcounter phantoms cxr")
        written = len(list((Path(tmp) / "data").rglob("*.png")))
    return {"n": n, "written": written, "seconds": seconds, "per_second": written / seconds,
            "command": f"xcounter phantoms cxr --n {n} --out DIR --seed 0", "workers": 2, "cpu_count": os.cpu_count()}


def goals(costs: dict, e2e: dict | None, writer: dict | None = None) -> list[dict]:
    out = []
    if writer is not None:
        goal = f"{WRITER_N} CXR phantoms written in under {WRITER_GOAL_S:.0f} s (2 cores)"
        if writer["n"] == WRITER_N:
            out.append(C.goal_row(goal, writer["seconds"], writer["seconds"] < WRITER_GOAL_S and
                                  writer["written"] == WRITER_N, f"{writer['per_second']:.0f} phantoms per second"))
        else:
            out.append(C.goal_row(goal, None, None, f"--quick wrote {writer['n']} ({writer['per_second']:.0f} per "
                                                    f"second); run without --quick to measure the goal"))
    if e2e is not None:
        value = e2e["nfe_per_attribute"]
        out.append(C.goal_row(f"<= {NFE_PER_ATTRIBUTE_GOAL} NFE per attribute ({e2e['label']})", value,
                              value <= NFE_PER_ATTRIBUTE_GOAL, f"{e2e['nfe']} NFE for {e2e['attributes']} attributes"))
    for domain, result in costs.items():
        rows = {r["key"]: r for r in summarise_costs(result)}
        if rows:
            ratio = rows["naive_img2img"]["seconds"] / max(rows["ours"]["seconds"], 1e-9)
            out.append(C.goal_row(f"{domain}: ours faster than the naive img2img loop", f"{ratio:.2f}x",
                                  ratio > 1.0, "wall-clock ratio naive / ours per counterfactual"))
    out.append(C.goal_row(">= 1.5x audit throughput", None, None,
                          "not measured by these benchmarks (see the audit issue); no number is claimed here"))
    return out


def plot(costs: dict, out: Path) -> str | None:
    plt = C.matplotlib_pyplot()
    shown = {d: summarise_costs(r) for d, r in costs.items() if r["runs"]}
    if not shown:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for k, (domain, rows) in enumerate(shown.items()):
        x = np.arange(len(rows)) + k * 0.35
        axes[0].bar(x, [r["seconds"] for r in rows], 0.35, label=domain)
        axes[1].bar(x, [r["nfe"] for r in rows], 0.35, label=domain)
    names = [r["method"].split(" (")[0] for r in next(iter(shown.values()))]
    for ax, title in zip(axes, ("wall-clock seconds per counterfactual", "UNet evaluations per counterfactual")):
        ax.set_xticks(np.arange(len(names)) + 0.17 * (len(shown) - 1), names, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    return C.save_figure(fig, out, f"bench_{NAME}")


def markdown(costs: dict, e2e: dict | None, e2e_error: str | None, goal_rows: list[dict], figure: str | None,
             args, argv, budget: C.Budget, writer: dict | None = None) -> list[str]:
    lines = C.header("Speed and cost", f"{NAME}.py", argv, args, [
        f"Wall time: {budget.elapsed:.0f} s (process CPU time {budget.cpu:.0f} s; shared machine)" + (" (stopped by --budget-s: N below is what fitted)"
                                                if budget.stopped_early else "") + "."])
    lines += ["Per counterfactual: the planted-shortcut edit of each unseen scan (toward the opposite of its truth), "
              "same inversion, DDIM steps, candidate strengths, NFE budget and seed for all three; the scan's "
              "inversion (image -> z_T, then the source prefix) is shared and listed separately. NFE = UNet "
              "sample-evaluations (a batch of B counts B). The machine is shared with other jobs: compare rows of "
              "one run, not runs.", ""]
    for domain, result in costs.items():
        rows = summarise_costs(result)
        if not rows:
            lines += [f"**{domain}**: shortcut classifier missing, not measured.", ""]
            continue
        runs = result["runs"]
        ours = rows[0]["seconds"]
        inversion_s, inversion_nfe = C.mean([r["inversion_s"] for r in runs]), C.mean([r["inversion_nfe"] for r in runs])
        lines += [f"**{domain}** ({result['n_scans']} scans; {result['classifier']}, edit {result['attribute']} for "
                  f"{result['target']}; {result['steps']} DDIM steps; inversion {inversion_s:.2f} s and "
                  f"{inversion_nfe:.0f} NFE per scan, shared)", ""]
        lines += C.table(["method", "N", "mean s per counterfactual", "x ours", "mean NFE", "flip rate"],
                         [[r["method"], r["n"], r["seconds"], r["seconds"] / max(ours, 1e-9), r["nfe"], r["flip_rate"]]
                          for r in rows])
        same = sum(r["sdedit_matches_naive"] for r in runs)
        lines += [f"SDEdit and the naive loop reached the same decision and minimal strength on {same} of "
                  f"{len(runs)} scans (same search, different implementation).", ""]
    lines += ["End to end (fresh process, models loaded from disk, HTML card and JSON sidecar written):", ""]
    if e2e is not None:
        lines += C.table(["command", "wall s", "peak RSS (MB)", "NFE per report card", "attributes examined",
                          "NFE per attribute", "DDIM steps", "threads"],
                         [[e2e["label"], e2e["seconds"], e2e["peak_rss_mb"], e2e["nfe"], e2e["attributes"],
                           e2e["nfe_per_attribute"], e2e["steps"], f"{e2e['threads']} on {e2e['cpu_count']} cores"]])
    else:
        lines += [f"Not measured: {e2e_error}", ""]
    if writer is not None:
        lines += ["Phantom dataset writer (fresh process, PNGs and metadata.jsonl written, default 2 workers):", ""]
        lines += C.table(["command", "phantoms", "wall s", "phantoms per second", "cores"],
                         [[writer["command"], writer["written"], writer["seconds"], writer["per_second"],
                           writer["cpu_count"]]])
    scale = [["ours (per attribute and sign, after the shared inversion)",
              C.mean([r["ours"]["nfe"] for res in costs.values() for r in res["runs"]]), "this run"],
             ["SDEdit search (batched)", C.mean([r["sdedit"]["nfe"] for res in costs.values() for r in res["runs"]]),
              "this run"]]
    if e2e is not None:
        scale.append(["ours, whole report card / attributes (default edit signs, inversion included)",
                      e2e["nfe_per_attribute"], "this run"])
    scale += [[name, text, "published, not run here"] for name, text in OTHERS]
    lines += ["UNet passes for scale:", ""] + C.table(["method", "UNet passes", "source"], scale)
    return lines + C.closing(goal_rows, figure, "speed")


def main(argv: Sequence[str] | None = None) -> dict:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--skip-end-to-end", action="store_true", help="do not run the end-to-end command")
    p.add_argument("--skip-dataset-writer", action="store_true", help="do not time the phantom dataset writer")
    args = p.parse_args(argv)
    C.setup(args)
    budget = C.Budget(args.budget_s)
    costs = C.run_per_domain(args, budget, counterfactual_costs)
    e2e, e2e_error = None, None
    if args.skip_end_to_end:
        e2e_error = "--skip-end-to-end was given"
    else:
        try:
            e2e = end_to_end(args.models)
        except Exception as error:  # noqa: BLE001 - reported in the table instead of sinking the benchmark
            e2e_error = f"{type(error).__name__}: {str(error)[:300]}"
    writer = None if args.skip_dataset_writer else dataset_writer(WRITER_QUICK_N if args.quick else WRITER_N)
    goal_rows = goals(costs, e2e, writer)
    figure = plot(costs, args.out)
    data = C.run_record(NAME, args, argv, budget,
                        domains={d: {**r, "summary": summarise_costs(r)} for d, r in costs.items()},
                        end_to_end=e2e, end_to_end_error=e2e_error, dataset_writer=writer, others=OTHERS,
                        goals=goal_rows, figure=figure)
    C.write_section(args.out, NAME, markdown(costs, e2e, e2e_error, goal_rows, figure, args, argv, budget, writer),
                    data)
    return data


if __name__ == "__main__":
    main()
