"""What every benchmark script shares: options, models (shipped phantoms or tiny test models), phantom
scans the models never saw, and writing a report section (markdown + JSON + figures) atomically.

Each script writes `reports/bench_<name>.md` and `reports/bench_<name>.json` (and figures under
`reports/figures/bench_*.png`); `benchmarks/make_report.py` assembles them into `reports/benchmarks.md`.
`--models tiny` swaps in the random-weight test models (tests/tiny_generator.py, tests/tiny_classifier.py)
so the scripts can be checked in seconds; their numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports"
#: phantom seeds at or above this were never used for training data
UNSEEN_SEED_BASE = 10_000_000
#: the planted shortcuts of the shipped zoo, per domain: (spurious attribute, disease label) -> classifiers by rho
#: (FastDiME's protocol: the attribute in a fraction rho of positives and 1 - rho of negatives); the first one
#: per domain is the main shortcut (demo, speed); a classifier missing from the zoo is reported as missing
SHORTCUTS: dict[str, dict[tuple[str, str], dict[float, str]]] = {
    "cxr": {("chest_tube", "Pneumothorax"): {1.0: "cxr-shortcut", 0.75: "cxr-shortcut-rho0.75",
                                             0.5: "cxr-shortcut-rho0.5"},
            ("portable_label", "Consolidation"): {1.0: "cxr-portable", 0.75: "cxr-portable-rho0.75", 0.5: "cxr-portable-rho0.5"}},
    "skin": {("ruler", "Melanoma"): {1.0: "skin-shortcut", 0.75: "skin-shortcut-rho0.75", 0.5: "skin-shortcut-rho0.5"},
             ("ink_marking", "Melanoma"): {1.0: "skin-ink", 0.75: "skin-ink-rho0.75", 0.5: "skin-ink-rho0.5"}},
}
#: the main planted shortcut per domain: (spurious attribute, disease label)
PLANTED = {domain: next(iter(shortcuts)) for domain, shortcuts in SHORTCUTS.items()}
#: the main shortcut's classifiers by rho
SHORTCUT_CLASSIFIERS = {domain: SHORTCUTS[domain][PLANTED[domain]] for domain in SHORTCUTS}
CLEAN_CLASSIFIERS = {"cxr": "cxr-clean", "skin": "skin-clean"}
#: domain -> generator folder given with --generator (default: the shipped phantom-<domain>)
GENERATOR_OVERRIDES: dict[str, str] = {}
#: DDIM steps of the tiny test generator
TINY_STEPS = 4


# ----------------------------------------------------------------------------------------- options
def parser(description: str) -> argparse.ArgumentParser:
    """Options every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a few scans only (runs in well under 5 minutes)")
    p.add_argument("--models", choices=("shipped", "tiny"), default="shipped",
                   help="shipped phantom models, or random-weight tiny test models (for CI; numbers mean nothing)")
    p.add_argument("--seed", type=int, default=0, help="benchmark seed (phantom seeds, methods)")
    p.add_argument("--n", type=int, default=None, help="scans per domain (default: script-specific)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop adding scans once this many seconds are spent (at least one scan each)")
    p.add_argument("--domains", default="cxr,skin", help="comma-separated: cxr, skin")
    p.add_argument("--out", default=str(REPORTS), help="reports folder (figures go to <out>/figures)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--generator", action="append", default=[], metavar="DOMAIN=DIR",
                   help="benchmark another diffusers folder instead of the shipped phantom-DOMAIN generator")
    p.add_argument("--update", action="store_true",
                   help="rerun only --domains and keep the other domains' results from the section already in "
                        "--out (its header names the command and date each kept domain came from)")
    return p


def setup(args: argparse.Namespace) -> None:
    torch.set_num_threads(max(1, int(args.threads)))
    args.domains = [d.strip() for d in str(args.domains).split(",") if d.strip()]
    unknown = [d for d in args.domains if d not in PLANTED]
    if unknown:
        raise SystemExit(f"unknown domain(s) {unknown}; use cxr, skin")
    args.out = Path(args.out)
    (args.out / "figures").mkdir(parents=True, exist_ok=True)
    overrides = dict(item.split("=", 1) for item in args.generator if "=" in item)
    if len(overrides) != len(args.generator) or set(overrides) - set(PLANTED):
        raise SystemExit("--generator takes DOMAIN=DIR with DOMAIN cxr or skin")
    GENERATOR_OVERRIDES.clear()
    GENERATOR_OVERRIDES.update(overrides)


def command_of(script: str, argv: Sequence[str] | None) -> str:
    words = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", f"benchmarks/{script}", *words])


class Budget:
    """Scans are added while the time budget lasts (another scan is started only when the mean scan time so
    far says it will end within the budget); `stopped_early` says the N is budget-limited."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds, self.started, self.stopped_early = seconds, time.perf_counter(), False
        self.cpu_started = time.process_time()

    @property
    def cpu(self) -> float:
        """CPU seconds this process used (the wall time on a shared machine can be many times larger)."""
        return time.process_time() - self.cpu_started

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def allows_more(self, done: int) -> bool:
        if done == 0 or self.seconds is None:
            return True
        if self.elapsed + self.elapsed / done > self.seconds:
            self.stopped_early = True
            return False
        return True


def domain_budget(args) -> Budget:
    """An equal share of --budget-s for each domain, so the first domain cannot starve the second."""
    return Budget(None if args.budget_s is None else args.budget_s / max(1, len(args.domains)))


# ----------------------------------------------------------------------------------------- models
@dataclass
class DomainModels:
    """Generator, classifiers (by zoo name), oracle and vocabulary of one domain."""
    domain: str
    kind: str  # "shipped" | "tiny"
    generator: Any
    classifiers: dict[str, Any]
    oracle: Any
    attributes: Any
    missing: list[str] = field(default_factory=list)  # classifier names not in the zoo

    @property
    def steps(self) -> int:
        return int(self.generator.steps)

    def describe(self) -> dict:
        return {"domain": self.domain, "models": self.kind, "generator": self.generator.name,
                "steps": self.steps, "resolution": self.generator.resolution,
                "classifiers": sorted(self.classifiers), "missing_classifiers": self.missing,
                "oracle": None if self.oracle is None else
                (f"zoo/oracles/{self.domain}.pt" if self.kind == "shipped" else "tiny random oracle")}


#: the attributes the tiny test models examine (few, so CI stays fast); shipped models examine all
TINY_ATTRIBUTES = {"cxr": ("pleural_effusion", "chest_tube", "portable_label", "body_width"),
                   "skin": ("asymmetry", "blue_white_veil", "ruler", "ink_marking", "skin_tone")}


def vocabulary(domain: str, kind: str):
    """The attribute vocabulary benchmarks examine: all of it, or a small subset for the tiny models."""
    import dataclasses

    from xcounter.attributes import load_attributes

    attributes = load_attributes(domain)
    if kind != "tiny":
        return attributes
    return dataclasses.replace(attributes, attributes=tuple(attributes[n] for n in TINY_ATTRIBUTES[domain]))


def zoo_classifier_names() -> list[str]:
    from xcounter.classifiers.load import ZOO_CLASSIFIERS
    return sorted(p.stem for p in ZOO_CLASSIFIERS.glob("*.pt")) if ZOO_CLASSIFIERS.is_dir() else []


def load_domain(domain: str, kind: str, wanted: Sequence[str], *, need_oracle: bool = True) -> DomainModels:
    """The models of `domain`; classifiers in `wanted` that are not installed are listed in `missing`."""
    attributes = vocabulary(domain, kind)
    if kind == "tiny":
        return _tiny_domain(domain, wanted, attributes)
    import xcounter
    from xcounter.phantoms.oracle import load_oracle

    installed = set(zoo_classifier_names())
    classifiers = {name: xcounter.load_classifier(f"phantom:{name}") for name in wanted if name in installed}
    missing = [name for name in wanted if name not in installed]
    generator = xcounter.load_generator(GENERATOR_OVERRIDES.get(domain, f"phantom-{domain}"))
    oracle = load_oracle(domain) if need_oracle else None
    return DomainModels(domain, kind, generator, classifiers, oracle, attributes, missing)


def _tiny_domain(domain: str, wanted: Sequence[str], attributes) -> DomainModels:
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from tiny_generator import tiny_pipeline

    from xcounter.generators import SDGenerator

    channels = 1 if domain == "cxr" else 3
    generator = SDGenerator(tiny_pipeline(channels, seed=0), steps=TINY_STEPS, name=f"tiny-sd-{domain}",
                            domain=domain, image_channels=channels)
    classifiers = {name: tiny_classifier(domain, name, generator, seed=k) for k, name in enumerate(wanted)}
    return DomainModels(domain, "tiny", generator, classifiers, tiny_oracle(domain, attributes), attributes, [])


def tiny_classifier(domain: str, name: str, generator, seed: int):
    """A random tiny xrv DenseNet whose thresholds sit at the median logit of a few phantoms (so flips happen)."""
    from tiny_classifier import make_tiny_densenet

    from xcounter.attributes import load_attributes
    from xcounter.classifiers import Classifier, make_profile

    labels = list(load_attributes(domain).labels)
    network = make_tiny_densenet(seed, labels=labels)
    classifier = Classifier(network, labels, [0.0] * len(labels), make_profile("xrv", size=32),
                            name=f"tiny:{name}", domain=domain)
    images = torch.cat([phantom_tensor(domain, UNSEEN_SEED_BASE + 900 + i, generator) for i in range(6)])
    with torch.no_grad():
        classifier.thresholds.copy_(classifier.logits(images).median(dim=0).values)
    return classifier.eval().requires_grad_(False)


def tiny_oracle(domain: str, attributes):
    from xcounter.phantoms.nets import OracleNet
    from xcounter.phantoms.oracle import Oracle

    torch.manual_seed(0)
    names = attributes.names
    channels = 1 if domain == "cxr" else 3
    config = {"domain": domain, "attributes": names, "types": {a.name: a.type for a in attributes},
              "size": 16, "channels": channels}
    return Oracle(OracleNet(channels, len(names), width=4), config)


class CombinedClassifier(torch.nn.Module):
    """Several classifiers' chosen labels as one network, so one explanation (one inversion, one set of
    trajectories: the UNet cost) serves every classifier; each keeps its own preprocessing."""

    def __init__(self, parts: Sequence[tuple[Any, int]]) -> None:
        super().__init__()
        self.parts = torch.nn.ModuleList([classifier for classifier, _ in parts])
        self.indices = [int(index) for _, index in parts]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([c.logits(images)[:, i:i + 1] for c, i in zip(self.parts, self.indices)], dim=1)


def combined_label(label: str, classifier_name: str) -> str:
    return f"{label}@{classifier_name}"


def _combined_finding(label: str) -> str:
    """'Effusion@cxr-clean' reports Effusion (what `Classifier.finding` tells the explainer)."""
    return label.split("@", 1)[0]


def combine(domain: str, parts: Sequence[tuple[str, Any, str]]):
    """One `Classifier` whose labels are `label@classifier` for each (classifier name, classifier, label)."""
    from xcounter.classifiers import Classifier, make_profile

    pairs, labels, thresholds = [], [], []
    for name, classifier, label in parts:
        index = classifier.target_index(label)
        pairs.append((classifier, index))
        labels.append(combined_label(label, name))
        thresholds.append(float(classifier.thresholds[index]))
    combined = Classifier(CombinedClassifier(pairs), labels, thresholds, make_profile("unit"), name="combined",
                          domain=domain).eval().requires_grad_(False)
    combined.finding = _combined_finding  # each output reports its classifier's disease label
    return combined


# ----------------------------------------------------------------------------------------- scans
def phantom(domain: str, seed: int, size: int = 128, **overrides) -> tuple[np.ndarray, dict, str]:
    """(pixels HxWxC, true attributes, report caption) of an unseen phantom."""
    from xcounter.phantoms import caption, make_phantom

    pixels, truth = make_phantom(domain, seed, size=size, **overrides)
    return pixels, truth, caption(truth, domain, np.random.default_rng(seed))


def phantom_tensor(domain: str, seed: int, generator, **overrides) -> torch.Tensor:
    """An unseen phantom as [1, C, H, W] at the generator's resolution, brought down the way the explainer brings
    a scan down (`generator.prepare`: antialiased bilinear, as the phantom classifiers were trained). Why not
    another filter: the small phantom classifiers read a thin tube or ink stroke differently after a box filter
    (`mode="area"`, used here until 2026-12-07): up to two logits apart on the same scan, so the renderer's
    "truth" was the decision on an image the explainer never showed the classifier."""
    pixels, _, _ = phantom(domain, seed, **overrides)
    image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()
    return generator.prepare(image, image.shape[1]).cpu()


def renderer_margins(domain: str, seed: int, generator, classifier, base: dict,
                     edits: Sequence[tuple[str, str] | None]) -> torch.Tensor:
    """The renderer's own edits of one phantom: [len(edits), labels] margins of `classifier` on the phantom drawn
    with `base` overrides and each (attribute, sign) toggled that way (None: no toggle), everything else identical,
    at the generator's resolution (as the counterfactuals are)."""
    images = torch.cat([phantom_tensor(domain, seed, generator,
                                       **{**base, **({} if edit is None else {edit[0]: edit[1] == "add"})})
                        for edit in edits])
    with torch.no_grad():
        return classifier.margins(images).float()


def renderer_flips(before: float, after: float) -> bool:
    """Whether a margin moved from `before` to `after` counts as a flip by the product's rule (1 logit past)."""
    from xcounter.search import DEFAULT_FLIP_MARGIN, is_flipped

    return is_flipped(float(after), float(before) > 0, DEFAULT_FLIP_MARGIN)


def scan_plan(domain: str, n: int, seed: int) -> list[tuple[int, dict]]:
    """(phantom seed, overrides) of the benchmark scans: none of the shortcuts' diseases; the main planted
    attribute present in every other scan, the second one in every other pair of scans (CXR: pleural
    effusion in every other group of four, so the clean Effusion check has both)."""
    from xcounter.phantoms import sample_attributes

    shortcuts = list(SHORTCUTS[domain])
    labels = {label for _, label in shortcuts}
    plan, candidate = [], UNSEEN_SEED_BASE + 1000 * seed
    for i in range(n):
        overrides: dict[str, Any] = {attribute: (i >> k) % 2 == 0 for k, (attribute, _) in enumerate(shortcuts)}
        if domain == "cxr":
            overrides.update({label.lower(): False for label in labels})  # the CXR labels are attributes too
            overrides.update(pleural_effusion=(i >> len(shortcuts)) % 2 == 0)
        while True:  # skin: Melanoma follows from several features; draw until the scan is benign
            candidate += 1
            drawn = sample_attributes(domain, candidate, **overrides)
            if all(int(drawn[label]) == 0 for label in labels):
                break
        plan.append((candidate, overrides))
    return plan


def sign_toward_opposite(truth: dict, attribute: str) -> str:
    """Edit toward the opposite of the phantom's truth: remove a present attribute, add an absent one."""
    return "remove" if bool(truth[attribute]) else "add"


# ----------------------------------------------------------------------------------------- writing
def header(title: str, script: str, argv: Sequence[str] | None, args, extra: Sequence[str] = ()) -> list[str]:
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {title}", "",
             f"Command: `{command_of(script, argv)}`  ",
             f"Seed: {args.seed}; date: {date}; models: {args.models}"
             f"{' (random-weight test models: the numbers mean nothing)' if args.models == 'tiny' else ''}; "
             f"torch threads: {torch.get_num_threads()}; machine: {os.cpu_count()} CPU cores, {platform.machine()}.",
             *[f"Kept from an earlier run (`--update`): {domain} from `{source['command']}` ({source['date']})."
               for domain, source in getattr(args, "kept_from", {}).items()],
             *extra, ""]
    return lines


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table; floats get 3 decimals, None is shown as 'n/a'."""
    def cell(value: Any) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return "n/a" if not np.isfinite(value) else f"{value:.3f}"
        return str(value).replace("|", "\\|")
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out + [""]


def goal_row(goal: str, value: Any, met: bool | None, note: str = "") -> dict:
    """One line of the goals table: met True/False, None = not measured."""
    status = "not measured" if met is None else ("met" if met else "MISSED")
    return {"goal": goal, "value": value, "status": status, "note": note}


def goals_table(goals: Sequence[dict]) -> list[str]:
    return table(["goal", "measured", "status", "note"],
                 [[g["goal"], g["value"], g["status"] if g["status"] != "MISSED" else "**MISSED**", g["note"]]
                  for g in goals])


def missing_models(domains: dict[str, dict]) -> list[str]:
    """The line naming classifiers a section could not measure (none when the zoo had them all)."""
    missing = [f"{d}: {', '.join(r['models']['missing_classifiers'])}" for d, r in domains.items()
               if r["models"]["missing_classifiers"]]
    return [f"Not in the zoo, so not measured: {'; '.join(missing)}.", ""] if missing else []


def closing(goal_rows: Sequence[dict], figure: str | None, alt: str) -> list[str]:
    """A section's last lines: its goals table, then its figure."""
    return ["Goals:", ""] + goals_table(goal_rows) + ([f"![{alt}]({figure})", ""] if figure else [])


def mean(values: Sequence[float]) -> float | None:
    values = [float(v) for v in values if v is not None and np.isfinite(float(v))]
    return float(np.mean(values)) if values else None


def save_figure(fig, out: Path, name: str) -> str:
    """Save a matplotlib figure atomically to <out>/figures/<name>.png; return its path relative to <out>."""
    import io

    import matplotlib.pyplot as plt

    from xcounter.utils.atomic import write_bytes_atomic

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(out / "figures" / f"{name}.png", buffer.getvalue())
    return f"figures/{name}.png"


def write_section(out: Path, name: str, markdown: Sequence[str], data: dict) -> tuple[Path, Path]:
    """reports/bench_<name>.md and .json, each written atomically."""
    from xcounter.utils.atomic import write_text_atomic

    md_path, json_path = out / f"bench_{name}.md", out / f"bench_{name}.json"
    write_text_atomic(md_path, "\n".join(markdown).rstrip() + "\n")
    write_text_atomic(json_path, json.dumps(_jsonable(data), indent=1, allow_nan=False) + "\n")
    return md_path, json_path


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def matplotlib_pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def run_per_domain(args, budget: "Budget", run: Callable[..., dict]) -> dict[str, dict]:
    """Run `run(domain, args, budget)` for each requested domain; note whether the budget cut any short."""
    results = {domain: run(domain, args, budget) for domain in args.domains}
    budget.stopped_early = any(r.get("budget_limited") for r in results.values())
    return results


def kept_domains(out: Path, name: str, rerun: Sequence[str], *, seed: int, models: str,
                 quick: bool) -> dict[str, tuple[dict, dict]]:
    """`--update`: the domains of the section in `out` that this run does not redo, each with where it came from
    (the command and date of the run that measured it, carried over when that run kept it too)."""
    import re

    path = out / f"bench_{name}.json"
    if not path.is_file():
        raise SystemExit(f"--update needs an earlier {path}; run without --update first")
    old = json.loads(path.read_text(encoding="utf-8"))
    differs = [f"{key} {old.get(key)!r} there, {value!r} here" for key, value in
               (("seed", seed), ("models", models), ("quick", quick)) if old.get(key) != value]
    if differs:
        raise SystemExit(f"--update keeps results only from a run like this one, but {path} differs: "
                         f"{'; '.join(differs)}")
    date = old.get("date")
    if date is None:  # sections written before the record had a date: read it from the markdown header
        md = path.with_suffix(".md")
        found = re.search(r"date: ([^;]+);", md.read_text(encoding="utf-8")) if md.is_file() else None
        date = found.group(1) if found else "date unknown"
    sources = old.get("kept_from", {})
    return {domain: (record, sources.get(domain, {"command": old["command"], "date": date}))
            for domain, record in old.get("domains", {}).items() if domain not in rerun}


def run_domain_benchmark(name: str, argv: Sequence[str] | None, parser: argparse.ArgumentParser, *,
                         run_domain: Callable[..., dict], goals: Callable[[dict], list[dict]],
                         plot: Callable[[dict, Path], str | None], markdown: Callable[..., list[str]]) -> dict:
    """The usual benchmark: `run_domain` per domain, then its goals, a plot, and one markdown section with its
    JSON record (`markdown(domains, goal_rows, figure, args, argv, budget)`)."""
    args = parser.parse_args(argv)
    setup(args)
    budget = Budget(args.budget_s)
    kept = kept_domains(args.out, name, args.domains, seed=args.seed, models=args.models, quick=args.quick) \
        if getattr(args, "update", False) else {}
    args.kept_from = {domain: source for domain, (_, source) in kept.items()}
    fresh = run_per_domain(args, budget, run_domain)
    domains = {d: fresh[d] if d in fresh else kept[d][0] for d in PLANTED if d in fresh or d in kept}
    budget.stopped_early = any(r.get("budget_limited") for r in domains.values())
    goal_rows = goals(domains)
    figure = plot(domains, args.out)
    data = run_record(name, args, argv, budget, domains=domains, goals=goal_rows, figure=figure,
                      kept_from=args.kept_from)
    write_section(args.out, name, markdown(domains, goal_rows, figure, args, argv, budget), data)
    return data


def run_record(name: str, args, argv: Sequence[str] | None, budget: "Budget", **fields: Any) -> dict:
    """The JSON record every benchmark writes: what ran, with which seed, how long, then its own fields."""
    return {"name": name, "command": command_of(f"{name}.py", argv), "seed": args.seed, "models": args.models,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "quick": args.quick,
            "seconds": budget.elapsed, "cpu_seconds": budget.cpu,
            "budget_limited": budget.stopped_early, **fields}
