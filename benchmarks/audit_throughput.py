"""Audit throughput with 1 and 2 Ray workers on this machine; writes reports/audit_throughput.md.

Throughput counts scans per second once the workers hold their models (Ray start-up and model loading
are reported separately: they are paid once per audit, not per scan). Uses the shipped phantom models
when xcounter/zoo/ has them, else the tiny test models (and says which).

    python benchmarks/audit_throughput.py --quick     # under 5 minutes
    python benchmarks/audit_throughput.py             # more scans and steps
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.5


def phantom_models(folder: Path, count: int) -> tuple[str, str, Path, str] | None:
    """(classifier, generator, scans folder, description) from the zoo, or None when it is not shipped."""
    zoo = ROOT / "xcounter" / "zoo"
    classifier = zoo / "classifiers" / "cxr-shortcut.pt"
    if not (zoo / "phantom-cxr").is_dir() or not classifier.is_file():
        return None
    from PIL import Image

    from xcounter.phantoms import make_phantom

    scans = folder / "scans"
    scans.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, _ = make_phantom("cxr", seed=index, size=64)
        Image.fromarray((np.clip(image[..., 0], 0, 1) * 255).astype(np.uint8)).save(scans / f"phantom{index:03d}.png")
    return str(classifier), "phantom-cxr", scans, "shipped phantom models (phantom:cxr-shortcut, phantom-cxr)"


def tiny_models(folder: Path, count: int) -> tuple[str, str, Path, str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_audit import build_models, write_scans

    classifier, generator = build_models(folder / "models")
    scans = write_scans(folder / "scans", count)
    return str(classifier), str(generator), scans, "tiny test models (16x16 SD pipeline, brightness classifier)"


def run(workers: int, classifier: str, generator: str, scans: Path, out: Path, options: dict,
        address: str | None = None) -> dict:
    from xcounter.audit import RayExecutor, audit

    executor = RayExecutor(workers=workers, address=address)
    started = time.perf_counter()
    result = audit(classifier, generator, scans, out_dir=out, executor=executor, resume=False, report=False, **options)
    wall = time.perf_counter() - started
    count = result.aggregate.scans
    return {"workers": workers, "scans": count, "failed": result.aggregate.failed, "wall_s": wall,
            "startup_s": executor.timing.get("startup_s", float("nan")), "run_s": executor.timing["run_s"],
            "throughput": count / executor.timing["run_s"], "aggregate": result.aggregate.to_dict()}


def report(rows: list[dict], models: str, options: dict, quick: bool, load: tuple[tuple, tuple]) -> str:
    ratio = rows[1]["throughput"] / rows[0]["throughput"]
    lines = [
        "# Audit throughput: 1 vs 2 Ray workers", "",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}; one torch thread per worker.",
        f"- Load average (1, 5, 15 min) before: {', '.join(f'{v:.1f}' for v in load[0])}; "
        f"after: {', '.join(f'{v:.1f}' for v in load[1])} (the cores are shared with other work).",
        f"- Models: {models}.",
        f"- Settings: {'--quick' if quick else 'full'}; {options}.",
        "- Throughput = scans / time after every worker had loaded its models; start-up listed separately.", "",
        "| workers | scans | start-up (s) | explaining (s) | scans/s | wall (s) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['workers']} | {row['scans']} | {row['startup_s']:.1f} | {row['run_s']:.1f} | "
                     f"{row['throughput']:.3f} | {row['wall_s']:.1f} |")
    same = rows[0]["aggregate"] == rows[1]["aggregate"]
    lines += ["", f"**Speed-up with 2 workers: {ratio:.2f}x** (goal {GOAL}x: {'met' if ratio >= GOAL else 'not met'}).",
              f"Aggregates of the two runs identical: {'yes' if same else 'NO'}.", ""]
    return "\n".join(lines)


def not_measured(reason: str, models: str, options: dict, quick: bool, load: tuple[tuple, tuple]) -> str:
    return "\n".join([
        "# Audit throughput: 1 vs 2 Ray workers", "",
        f"**Not measured**: {reason}", "",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores; load average before: "
        f"{', '.join(f'{v:.1f}' for v in load[0])}, after: {', '.join(f'{v:.1f}' for v in load[1])}.",
        f"- Models: {models}. Settings: {'--quick' if quick else 'full'}; {options}.",
        "- Run again on a quiet machine (`python benchmarks/audit_throughput.py --quick`), or against a running "
        "cluster with `--address`.", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few scans, 3 DDIM steps (under 5 minutes)")
    parser.add_argument("--scans", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "audit_throughput.md")
    parser.add_argument("--address", default=None, help="an existing Ray cluster (default: start a local one)")
    args = parser.parse_args(argv)
    count = args.scans or (8 if args.quick else 32)
    options = ({"targets": ["Pneumothorax"], "only": ["chest_tube"], "steps": 3,
                "explainer_options": {"signs": ["add"]}} if args.quick else {"targets": ["Pneumothorax"], "only": ["chest_tube", "pacemaker"], "steps": 6})
    torch.set_num_threads(1)
    from xcounter.errors import XCounterError
    from xcounter.utils.atomic import write_text_atomic

    with tempfile.TemporaryDirectory(prefix="xcounter-bench-") as tmp:
        folder = Path(tmp)
        chosen = phantom_models(folder, count) or tiny_models(folder, count)
        classifier, generator, scans, models = chosen
        load_before = os.getloadavg()
        try:
            rows = [run(workers, classifier, generator, scans, folder / f"out{workers}", options, args.address)
                    for workers in (1, 2)]
            text = report(rows, models, options, args.quick, (load_before, os.getloadavg()))
        except XCounterError as exc:  # e.g. Ray cannot start on an overloaded machine: say so, do not invent numbers
            text = not_measured(str(exc), models, options, args.quick, (load_before, os.getloadavg()))
    write_text_atomic(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
