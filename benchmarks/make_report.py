"""Assemble `reports/benchmarks.md` from the sections the benchmark scripts wrote (reports/bench_<name>.md/.json).

Nothing is recomputed here: each section keeps the command, seed and date it was produced with; the goals
every script checked are gathered into one table at the top, missed ones first.

    python benchmarks/faithfulness.py && python benchmarks/audit_rho.py && python benchmarks/quality.py && \\
    python benchmarks/paper_tables.py && python benchmarks/speed.py && python benchmarks/make_report.py
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SECTIONS = ("faithfulness", "real_cause", "audit_rho", "quality", "paper_tables", "speed")
#: sections included when their files are there, never run by `--run`: `device` needs a CUDA GPU
OPTIONAL_SECTIONS = ("device",)
#: share of `--run --budget-s` each script gets (speed's end-to-end demo runs after its share)
BUDGET_SHARES = {"faithfulness": 0.26, "real_cause": 0.16, "audit_rho": 0.14, "quality": 0.2, "paper_tables": 0.14,
                 "speed": 0.1}
TITLE = "# xcounter benchmarks"
INTRO = """Numbers that tell a user whether to trust xcounter's explanations and what they cost, measured on the
shipped phantom models (procedural scans whose true attributes are known, never seen in training) with the
scripts in `benchmarks/`. Each section states the command, seed, date and N it was produced with; where a
section's N is small (CPU-only runs on a shared 2-core machine), its rates are coarse: read them with their N.
Reproduce everything with:

```
python benchmarks/faithfulness.py
python benchmarks/real_cause.py
python benchmarks/audit_rho.py
python benchmarks/quality.py
python benchmarks/paper_tables.py
python benchmarks/speed.py
python benchmarks/make_report.py
```
(`--quick` runs each in a few minutes; `--models tiny` runs the random-weight test models, as the tests do;
`python benchmarks/make_report.py --run --budget-s SECONDS` runs all six in one process within a time budget;
`--domains skin --update` reruns one domain and keeps the other's results, and the section says where each came
from.)

How much each planted-shortcut classifier really uses its shortcut is measured without any generator, by
rendering the same phantom with and without the attribute (toggle checks in `reports/phantoms.md`): the share of
decisions that flip is chest_tube 96% / 40% / 11% at rho 1.0 / 0.75 / 0.5, ruler 92.5% / 57.5% / 7.5%, ink_marking
75% / 40% / 7.5%, and portable_label 100% / 17% / 2% (15 epochs since 2026-11-26; at 5 epochs: 43% / 0% / 0%). Read the
faithfulness and audit rows against these: an explainer should flag what the classifier uses, not what was planted.
Those checks count any change of sign on the classifiers' own test distribution; on the benchmark scans (no
pneumothorax, no consolidation) and with the product's flip rule (one logit past the threshold) the toggles flip
fewer: the audit table's renderer column (rho-0.75 chest tube 4 of 30 scans, portable label 1, ruler 9, ink 1), from
which the audit's expected alerts are read. Every renderer edit is judged on the phantom brought down as the
explainer brings a scan down (`generator.prepare`; `docs/CONTRACTS.md`, "Benchmarks' ground truth").
The clean classifiers (retrained 2026-11-26 on 10,000 CXR and 30,000 skin phantoms) ignore every planted attribute
(toggles flip chest_tube 1%, portable_label 0%, ruler 2.5%, ink_marking 5% of decisions, near-threshold scans) and
follow their findings (effusion 98%): any flag on a clean classifier is a false alarm, and it comes from a generator
edit that changed more than its attribute. The same audits with the attribute oracle's mediation check and the
pathologies examined too (`python benchmarks/audit_rho.py --mediation --domains cxr|skin`) are in
`reports/audit_rho_mediation_cxr.md` and `reports/audit_rho_mediation_skin.md`: none of their 24 goals missed, as
without the oracle (every clean and rho-0.5 control is silent, and every flip rate agrees with the renderer's
toggles; the rho-0.75 ink model stopped alerting once ink was added as one arc beside the lesion, not a ring round
it: `where: beside_lesion`, 2026-12-07). CXR shortcut flags are checked on the
edit's own pixels (the CXR generator's `confirm_shortcuts`, `xcounter.confirmation`): a flip the drawn device
alone does not make is *unconfirmed*, neither a flag nor in an audit's flip rate; the numbers with and without
the check are in `docs/CONTRACTS.md` (Engine). Both phantom generators draw counterfactuals onto the scan itself
(`"anchor": "scan"`, since 2026-11-28), and every flip is shown pruned to the parts of the generator's edit the
decision needs (`prune`, which changes no verdict without an oracle); the quality report carries the other anchor
and the whole samples as ablation rows.
"""


def load_sections(folder: Path) -> list[tuple[str, str, dict]]:
    found = []
    for name in SECTIONS + OPTIONAL_SECTIONS:
        md, js = folder / f"bench_{name}.md", folder / f"bench_{name}.json"
        if md.is_file() and js.is_file():
            found.append((name, md.read_text(encoding="utf-8"), json.loads(js.read_text(encoding="utf-8"))))
    return found


#: sections other owners' benchmarks write, included verbatim when present
EXTERNAL = (("audit_throughput.md", "benchmarks/audit_throughput.py"),)


def external_sections(folder: Path) -> list[str]:
    """Other benchmarks' reports (e.g. audit throughput), headings demoted to sit under this report."""
    texts = []
    for file_name, script in EXTERNAL:
        path = folder / file_name
        if path.is_file():
            body = path.read_text(encoding="utf-8").rstrip()
            body = "\n".join("#" + line if line.startswith("#") else line for line in body.splitlines())
            texts.append(f"{body}\n\n(Section written by `{script}`, included verbatim.)")
    return texts


def assemble(folder: Path) -> str:
    sections = load_sections(folder)
    external = external_sections(folder)
    goals = [g for _, _, data in sections for g in data.get("goals", [])]
    if external:
        import re

        ratio = re.search(r"Speed-up with 2 workers: ([0-9.]+)x", "\n".join(external))
        for goal in goals:
            if "audit throughput" in goal["goal"] and goal["status"] == "not measured":
                goal["note"] = "measured by benchmarks/audit_throughput.py: see its section below"
                if ratio:
                    goal.update(value=f"{float(ratio.group(1)):.2f}x",
                                status="met" if float(ratio.group(1)) >= 1.5 else "MISSED")
    goals.sort(key=lambda g: {"MISSED": 0, "not measured": 1, "met": 2}.get(g["status"], 3))
    missing = [name for name in SECTIONS if name not in {s[0] for s in sections}]
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [TITLE, "", INTRO, f"Assembled {date} by `python benchmarks/make_report.py`.", ""]
    tiny = [name for name, _, data in sections if data.get("models") == "tiny"]
    if tiny:
        lines += [f"**Warning:** sections {', '.join(tiny)} were produced with the random-weight tiny test models; "
                  "their numbers mean nothing.", ""]
    if missing:
        lines += [f"Sections not produced yet: {', '.join(missing)}.", ""]
    lines += ["## Goals at a glance", ""] + C.goals_table(goals)
    for _, text, _ in sections:
        lines += [text.rstrip(), ""]
    for text in external:
        lines += [text, ""]
    return "\n".join(lines).rstrip() + "\n"


def run_all(args) -> None:
    """Run every script in this process, one after the other (imports and model loading paid once per script,
    not per interpreter), each with its share of the time budget; each records its own standalone command."""
    import importlib.util

    for name in SECTIONS:
        words = ["--models", args.models, "--seed", str(args.seed), "--out", str(args.out), *args.extra]
        words += ["--quick"] if args.quick else []
        if args.budget_s is not None:
            words += ["--budget-s", f"{args.budget_s * BUDGET_SHARES[name]:.0f}"]
        spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(f"[make_report] {name} {' '.join(words)}", flush=True)
        module.main(words)


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(C.REPORTS), help="reports folder holding the bench_* sections")
    parser.add_argument("--run", action="store_true", help="run every benchmark first (sequentially, one process)")
    parser.add_argument("--models", choices=("shipped", "tiny"), default="shipped", help="with --run")
    parser.add_argument("--seed", type=int, default=0, help="with --run")
    parser.add_argument("--quick", action="store_true", help="with --run")
    parser.add_argument("--budget-s", type=float, default=None, help="with --run: total seconds, shared out")
    parser.epilog = "With --run, other options (--n, --domains, --generator, --threads) go to every script."
    args, args.extra = parser.parse_known_args(argv)
    if args.extra and not args.run:
        parser.error(f"unrecognized arguments: {' '.join(args.extra)}")
    from xcounter.utils.atomic import write_text_atomic

    if args.run:
        run_all(args)
    folder = Path(args.out)
    path = folder / "benchmarks.md"
    write_text_atomic(path, assemble(folder))
    return path


if __name__ == "__main__":
    print(main())
