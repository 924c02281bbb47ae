"""On a GPU: the same explanations as on the CPU, and how much faster they come.

A validation team runs xcounter where its GPUs are, while every other number in these reports is measured on
2 CPU cores. So each unseen phantom scan is explained twice with the same models, seed and settings: once on
the CPU and once on `--device` (default cuda), after one untimed warm-up explanation on each. Compared: the
attribute ranked first, every verdict, whether each edit flipped, the minimal strengths and the NFE. Also run
on the device: the oracle (side effects and mediation), the Latent Shift and SDEdit baselines, `xcounter
traverse`'s strip, and one audit worker (`ScanExplainer`). Floating-point sums differ between the two (other
kernels, other orders), so a minimal strength found by bisection may move by the search's tolerance; verdicts
and the first attribute should not.

    python benchmarks/device.py               # needs a CUDA GPU
    python benchmarks/device.py --quick --models tiny --device cpu   # the code path, on the CPU
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as C  # noqa: E402

NAME = "device"
DEFAULT_N, QUICK_N = 4, 1
#: share of scans on which the device must agree with the CPU on the first attribute and every verdict
AGREEMENT_GOAL = 0.9


def _on(models: "C.DomainModels", device: torch.device, name: str):
    """(classifier, generator) of `models` as copies on `device` (the CPU models stay where they are)."""
    import copy

    from xcounter.generators import SDGenerator

    cpu = models.generator
    classifier = copy.deepcopy(models.classifiers[name]).to(device)
    generator = SDGenerator(copy.deepcopy(cpu.pipe), name=cpu.name, domain=cpu.domain, steps=cpu.steps,
                            guidance_scale=cpu.guidance_scale, image_channels=cpu.image_channels, device=device,
                            source=cpu.source, edit_guidance=cpu.edit_guidance, kind_edits=cpu.kind_edits)
    return classifier, generator


def _summary(explanation) -> dict:
    ranking = explanation.ranking
    return {"first": ranking[0].attribute if ranking and ranking[0].flipped else None,
            "verdicts": {(r.target, r.attribute): r.verdict for r in ranking},
            "flipped": {(r.target, r.attribute): bool(r.flipped) for r in ranking},
            "strengths": {(r.target, r.attribute): r.minimal_strength for r in ranking},
            "nfe": int(explanation.nfe)}


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare_domain(domain: str, args, total: "C.Budget") -> dict:
    """Explain each scan on the CPU and on the device; compare and time."""
    import xcounter
    from xcounter.utils.devices import resolve_device

    device = resolve_device(args.device)
    budget = C.domain_budget(args)
    name = C.SHORTCUT_CLASSIFIERS[domain][1.0]
    models = C.load_domain(domain, args.models, [name])
    if name not in models.classifiers:
        return {"models": models.describe(), "device": str(device), "runs": [], "n_scans": 0}
    classifier_dev, generator_dev = _on(models, device, name)
    options = {"oracle": models.oracle, "attributes": models.attributes}
    explainers = {"cpu": xcounter.Explainer(models.classifiers[name], models.generator, **options),
                  "device": xcounter.Explainer(classifier_dev, generator_dev, **options)}
    n = args.n or (QUICK_N if args.quick or args.models == "tiny" else DEFAULT_N)
    plan = C.scan_plan(domain, n, args.seed)
    pixels, _, report = C.phantom(domain, plan[0][0], **plan[0][1])
    for explainer in explainers.values():  # warm-up, not timed: CUDA context, kernel choice, lazy loading
        explainer.explain(pixels, report_text=report, seed=args.seed)
    runs: list[dict] = []
    for k, (phantom_seed, overrides) in enumerate(plan):
        if not budget.allows_more(k):
            break
        pixels, _, report = C.phantom(domain, phantom_seed, **overrides)
        row: dict[str, Any] = {"scan_seed": phantom_seed}
        for where, explainer in explainers.items():
            _synchronise(device)
            started = time.perf_counter()
            explanation = explainer.explain(pixels, report_text=report, seed=args.seed)
            _synchronise(device)
            row[f"{where}_s"] = time.perf_counter() - started
            row[where] = _summary(explanation)
            row[f"{where}_device"] = explanation.settings.get("device")
        cpu, dev = row["cpu"], row["device"]
        shared = set(cpu["strengths"]) & set(dev["strengths"])
        gaps = [abs(cpu["strengths"][key] - dev["strengths"][key]) for key in shared
                if cpu["strengths"][key] is not None and dev["strengths"][key] is not None]
        row.update(same_first=cpu["first"] == dev["first"], same_verdicts=cpu["verdicts"] == dev["verdicts"],
                   same_flips=cpu["flipped"] == dev["flipped"], same_nfe=cpu["nfe"] == dev["nfe"],
                   max_strength_gap=max(gaps) if gaps else 0.0,
                   first=(cpu["first"], dev["first"]))
        for where in ("cpu", "device"):  # tuple keys are not JSON: keep counts only
            row[where] = {"first": row[where]["first"], "nfe": row[where]["nfe"],
                          "flips": sum(row[where]["flipped"].values())}
        runs.append(row)
    return {"models": models.describe(), "device": str(device), "device_name": _device_name(device),
            "runs": runs, "n_scans": len(runs),
            "baselines": baselines_on(domain, models, classifier_dev, generator_dev, args),
            "audit_worker": audit_worker_on(domain, models, name, device, args),
            "budget_limited": budget.stopped_early}


def baselines_on(domain: str, models, classifier, generator, args) -> list[dict]:
    """Latent Shift, SDEdit and traverse on the device, for the first scan's planted edit (they must run there)."""
    import xcounter

    attribute, label = C.PLANTED[domain]
    phantom_seed, overrides = C.scan_plan(domain, 1, args.seed)[0]
    pixels, truth, report = C.phantom(domain, phantom_seed, **overrides)
    out = []
    for method in ("latent_shift", "sdedit"):
        started = time.perf_counter()
        try:
            explainer = xcounter.Explainer(classifier, generator, models.attributes, method=method,
                                           examine=[attribute], attribution=False)
            explanation = explainer.explain(pixels, target=label, report_text=report, seed=args.seed)
            first = explanation.ranking[0]
            out.append({"method": method, "ok": True, "flipped": bool(first.flipped),
                        "seconds": time.perf_counter() - started, "error": None})
        except Exception as error:  # noqa: BLE001 - the table says what broke
            out.append({"method": method, "ok": False, "flipped": None, "seconds": time.perf_counter() - started,
                        "error": f"{type(error).__name__}: {str(error)[:200]}"})
    started = time.perf_counter()
    try:  # `xcounter traverse` from a noise seed: the same strip on both devices, up to float sums
        from xcounter.traverse import traverse

        prompt = report.split(".")[0] + "."
        strips = [traverse(g, prompt, attribute, attributes=models.attributes, seed=args.seed, points=3)
                  for g in (models.generator, generator)]
        gap = max(float(abs(a - b).max()) for a, b in zip(strips[0].swap_images, strips[1].swap_images))
        out.append({"method": "traverse", "ok": True, "flipped": None, "seconds": time.perf_counter() - started,
                    "error": None, "largest_pixel_gap": gap})
    except Exception as error:  # noqa: BLE001
        out.append({"method": "traverse", "ok": False, "flipped": None, "seconds": time.perf_counter() - started,
                    "error": f"{type(error).__name__}: {str(error)[:200]}"})
    return out


def audit_worker_on(domain: str, models, name: str, device: torch.device, args) -> dict:
    """One audit worker built as the Ray executor builds it on a GPU node (`ScanExplainer(job, device=...)`)."""
    import tempfile

    from xcounter.audit.scans import ScanItem
    from xcounter.audit.worker import AuditJob, ScanExplainer
    from xcounter.report.plots import png_bytes

    phantom_seed, overrides = C.scan_plan(domain, 1, args.seed)[0]
    pixels, _, report = C.phantom(domain, phantom_seed, **overrides)
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "scan.png"
            path.write_bytes(png_bytes(pixels))
            generator = "phantom-" + domain if args.models == "shipped" else None
            if generator is None:
                return {"ok": None, "error": "tiny models have no files for a worker to load", "seconds": 0.0}
            job = AuditJob(classifier=f"phantom:{name}", generator=generator, attributes=models.attributes)
            record = ScanExplainer(job, device=str(device)).explain(ScanItem("scan", str(path), report))
        return {"ok": record.get("status") == "ok", "error": record.get("error"),
                "seconds": time.perf_counter() - started}
    except Exception as error:  # noqa: BLE001
        return {"ok": False, "error": f"{type(error).__name__}: {str(error)[:200]}",
                "seconds": time.perf_counter() - started}


def goals(domains: dict[str, dict]) -> list[dict]:
    rows = []
    for domain, result in domains.items():
        runs = result["runs"]
        if not runs:
            rows.append(C.goal_row(f"{domain}: the device agrees with the CPU", None, None))
            continue
        agree = sum(r["same_first"] and r["same_verdicts"] for r in runs) / len(runs)
        rows.append(C.goal_row(f"{domain}: on {result['device']}, the same first attribute and verdicts as on the "
                               "CPU", agree, agree >= AGREEMENT_GOAL, f"met = at least 90% of {len(runs)} scans"))
        broken = [b["method"] for b in result["baselines"] if not b["ok"]]
        rows.append(C.goal_row(f"{domain}: Latent Shift and SDEdit run on {result['device']}",
                               "all ran" if not broken else "failed: " + ", ".join(broken), not broken))
    return rows


def plot(domains: dict[str, dict], out: Path) -> str | None:
    """Seconds per explanation, CPU beside the device, per domain."""
    shown = {d: r for d, r in domains.items() if r["runs"]}
    if not shown:
        return None
    plt = C.matplotlib_pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    names = list(shown)
    for offset, (key, label) in enumerate((("cpu_s", "CPU (1 thread)"), ("device_s", "device"))):
        means = [C.mean([r[key] for r in shown[d]["runs"]]) for d in names]
        ax.bar([i + 0.38 * offset for i in range(len(names))], means, width=0.36, label=label)
    ax.set_xticks([i + 0.19 for i in range(len(names))], names)
    ax.set_ylabel("seconds per explanation")
    ax.set_title("One explanation, same models and seed")
    ax.legend(frameon=False)
    fig.tight_layout()
    return C.save_figure(fig, out, "bench_device")


def _note(check: dict) -> str:
    """What a device check's table row says: its error, else how far the device's images are from the CPU's."""
    if check["error"]:
        return check["error"]
    gap = check.get("largest_pixel_gap")
    return "" if gap is None else f"largest pixel gap CPU vs device {gap:.4f}"


def markdown(domains, goal_rows, figure, args, argv, budget) -> list[str]:
    lines = C.header("The same explanations on a GPU", "device.py", argv, args,
                     [f"Wall time: {budget.elapsed:.0f} s."])
    lines += [__doc__.split("\n\n")[1].replace("\n", " "), ""]
    for domain, result in domains.items():
        runs = result["runs"]
        lines += [f"**{domain}** ({result['n_scans']} scans; classifier {C.SHORTCUT_CLASSIFIERS[domain][1.0]}; "
                  f"device {result['device']}: {result.get('device_name', 'n/a')})", ""]
        lines += C.table(["scan seed", "CPU s", "device s", "x faster", "first (CPU / device)", "same verdicts",
                          "same flips", "same NFE", "largest strength gap"],
                         [[r["scan_seed"], r["cpu_s"], r["device_s"], r["cpu_s"] / max(r["device_s"], 1e-9),
                           " / ".join(str(f) for f in r["first"]), r["same_verdicts"], r["same_flips"],
                           r["same_nfe"], r["max_strength_gap"]] for r in runs])
        lines += C.table(["also on the device", "ran", "s", "note"],
                         [[b["method"], b["ok"], b["seconds"], _note(b)] for b in result["baselines"]]
                         + [["audit worker (ScanExplainer)", result["audit_worker"]["ok"],
                             result["audit_worker"]["seconds"], result["audit_worker"]["error"] or ""]])
    return lines + C.closing(goal_rows, figure, NAME)


def main(argv: Sequence[str] | None = None) -> dict:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="the device compared with the CPU (cuda, cuda:N or cpu)")
    return C.run_domain_benchmark(NAME, argv, p, run_domain=compare_domain, goals=goals,
                                  plot=plot, markdown=markdown)


if __name__ == "__main__":
    main()
