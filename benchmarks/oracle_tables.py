"""Rewrite the oracle section of reports/phantoms.md from the shipped oracles' metrics files.

Run from the repository root: python benchmarks/oracle_tables.py
"""
import json
from pathlib import Path

COMMANDS = {
    "cxr": ("xcounter phantoms cxr --n 8000 --out data/cxr-oracle --seed 12 --workers 1",
            "python -m xcounter.phantoms.oracle --data data/cxr-oracle --out xcounter/zoo/oracles/cxr.pt --domain cxr --epochs 20 --seed 0"),
    "skin": ("# skin: on one lent H100 (scripts/train_skin_gpu.sh, 2026-11-26, with the renderer's redder dark tones;",
             "# widths 48 / 64 for 40 / 60 epochs side by side, the lowest validation loss kept: width 48, 40 epochs, 0.1464 vs 0.1491)",
             "xcounter phantoms skin --n 24000 --out runs/skin-gpu/data-oracle --seed 33 --workers 6",
             "python -m xcounter.phantoms.oracle --data runs/skin-gpu/data-oracle --out xcounter/zoo/oracles/skin.pt --domain skin --epochs 40 --seed 0 --width 48 --device cuda"),
}

def section(extra_skin=""):
    lines = ["## Attribute oracle: held-out test split (64 px; and blurred + noised copies)",
             "Accuracy at probability 0.5 for binary attributes, R^2 for continuous ones; goal: accuracy >= 0.95 and "
             "R^2 >= 0.9 per attribute. Commands (CXR: `OMP_NUM_THREADS=1`, one thread, deterministic):", "", "```sh"]
    for d in ("cxr", "skin"):
        lines += list(COMMANDS[d])
    lines += ["```", ""]
    missed = {}
    for d in ("cxr", "skin"):
        m = json.loads(Path(f"xcounter/zoo/oracles/{d}.metrics.json").read_text())
        n = m["n"]
        lines += [f"### oracle {d} (`{m['data']}`, {n['train']}/{n['val']}/{n['test']}, {m['epochs']} epochs, "
                  f"width {m.get('width', 24)}, {m['seconds']:.0f} s)", "",
                  "| attribute | type | test (clean 64 px) | test (blurred + noised) | goal |", "|---|---|---|---|---|"]
        for name, row in m["test"].items():
            key, goal = ("accuracy", 0.95) if row["type"] == "binary" else ("r2", 0.9)
            value, degraded = row[key], m["test_degraded"][name][key]
            ok = value >= goal
            if not ok:
                missed.setdefault(d, []).append(f"{name} {value:.3f}")
            kind = "binary (accuracy)" if row["type"] == "binary" else "continuous (R^2)"
            lines.append(f"| {name} | {kind} | {value:.3f} | {degraded:.3f} | {'met' if ok else '**missed**'} |")
        lines.append("")
    lines += ["**Where the goal is met.** " + ("CXR: every attribute. " if "cxr" not in missed else
              f"CXR: all but {', '.join(missed['cxr'])}. ") +
              ("Skin: every attribute. " if "skin" not in missed else f"Skin: all but {', '.join(missed['skin'])}. ")
              + extra_skin, ""]
    return lines

text = Path("reports/phantoms.md").read_text()
start = text.index("## Attribute oracle")
end = text.index("The shipped oracles are checked by")
SKIN_NOTE = ("Lighting is the hardest head: the renderer multiplies every pixel by the lighting (0.8-1.2, "
             "`xcounter/phantoms/skin.py`) on top of a skin-tone base colour, so only colour, not brightness, tells a "
             "brightly lit darker skin from a dimly lit fairer one. By skin tone, on the same test split (rebuilt from its "
             "seed), lighting R^2 is 0.968 / 0.965 / 0.966 / 0.932 / 0.850 for tone 0-0.2 / 0.2-0.4 / 0.4-0.6 / 0.6-0.8 / "
             "0.8-1.0. Before 2026-11-26 (sixth session) it was 0.882 overall and 0.956 / 0.949 / 0.934 / 0.864 / 0.735: "
             "the Fitzpatrick V and VI base colours were nearly proportional (R/B 2.17 and 2.20), so on dark skin a tone "
             "change and a lighting change drew almost the same pixels, and no wider or longer-trained oracle got past "
             "0.897. The renderer now makes darker types redder, as melanin does (R/B 2.19 / 2.70 / 3.56 for IV / V / VI), "
             "and every skin model was retrained on it. Type VI skin remains the least certain band (RMSE 0.09 on the "
             "0-1 lighting scale): the benchmarks' identity checks read lighting with a tolerance of 0.1. ")
new = "\n".join(section(SKIN_NOTE)) + "\n"
Path("reports/phantoms.md").write_text(text[:start] + new + text[end:])
