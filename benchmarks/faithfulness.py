"""Faithfulness to known causes: does xcounter find the shortcut we planted, and only then?

Shortcut classifiers were trained where a spurious attribute came with the disease in a fraction rho of
positives and 1 - rho of negatives (CXR: chest_tube -> Pneumothorax, skin: ruler -> Melanoma). On unseen
phantoms without the disease (the planted attribute present in every other scan) the product's
`Explainer` ranks every attribute; we count how often the planted one is ranked first and flagged
"shortcut" (recovery), and how often anything is flagged at rho = 0.5 and on the clean classifier (false
alarms). The clean CXR classifier's Effusion decision must rank `pleural_effusion` first.

One explanation per scan serves every classifier of the domain (their target labels are combined into one
classifier, `_common.combine`), so all of them see the same inversion and trajectories. The explainer is
given the domain's attribute oracle, and every row is scored twice: with the verdicts a user without an
oracle gets (the goals), and with the oracle's mediation check (`xcounter.mediation`: a flip whose edit also
made another attribute's own flipping edit is credited to that attribute).

    python benchmarks/faithfulness.py            # shipped phantom models
    python benchmarks/faithfulness.py --quick --models tiny
"""
from __future__ import annotations

import collections
import sys
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

NAME = "faithfulness"
DEFAULT_N, QUICK_N = 8, 2


def classifier_rows(domain: str, models: C.DomainModels) -> list[dict]:
    """What each combined target measures: classifier, rho, label and the attribute expected to drive it
    (one ladder of rho per planted shortcut, the clean classifier as its control)."""
    rows = []
    clean = C.CLEAN_CLASSIFIERS[domain]
    for (attribute, label), ladder in C.SHORTCUTS[domain].items():
        for rho, name in sorted(ladder.items(), reverse=True):
            if name in models.classifiers:
                rows.append({"classifier": name, "rho": rho, "label": label, "expected": attribute,
                             "role": "shortcut"})
        if clean in models.classifiers:
            rows.append({"classifier": clean, "rho": None, "label": label, "expected": attribute,
                         "role": "clean control"})
    if clean in models.classifiers:
        if domain == "cxr":
            rows.append({"classifier": clean, "rho": None, "label": "Effusion", "expected": "pleural_effusion",
                         "role": "clean cause"})
    for row in rows:
        row["target"] = C.combined_label(row["label"], row["classifier"])
    return rows


def renderer_margins(models: C.DomainModels, classifier, explanation, phantom_seed: int, overrides: dict) -> dict:
    """The renderer's own edits of every binary attribute the explanation edited, toggled the same way:
    {None: margins of the scan, (attribute, sign): margins of its toggle}, over all labels."""
    from xcounter.phantoms import domain_module

    binary = domain_module(models.domain).BINARY
    keys = [None] + sorted({(r.attribute, r.sign) for r in explanation.results if r.attribute in binary and r.sign})
    margins = C.renderer_margins(models.domain, phantom_seed, models.generator, classifier, overrides, keys)
    return {key: margins[k] for k, key in enumerate(keys)}


def renderer_confirms(margins: dict, classifier, target: str, attribute: str, sign: str | None) -> bool:
    """Whether the renderer's own edit of `attribute` flips `target` by the product's margin (False where the
    renderer has no such edit, e.g. a continuous attribute: such a flag cannot be confirmed)."""
    toggled = margins.get((attribute, sign))
    if toggled is None:
        return False
    index = classifier.target_index(target)
    return C.renderer_flips(margins[None][index], toggled[index])


def score_target(explanation, row: dict, truth: dict, margins: dict, classifier) -> dict:
    """Where the expected attribute lands in this target's ranking, and what got flagged; with the renderer's
    `margins`, whether its own edit of the expected attribute and of each flagged one flips the target too."""
    ranking = explanation.ranking_for(row["target"])
    names = [r.attribute for r in ranking]
    expected = explanation.result(row["target"], row["expected"])
    prediction = explanation.prediction(row["target"])
    # per flag: minimal strength, sign, and whether the renderer's own edit confirms it
    flags = {r.attribute: [r.minimal_strength, r.sign,
                           bool(renderer_confirms(margins, classifier, row["target"], r.attribute, r.sign))]
             for r in ranking if r.verdict == "shortcut"}
    return {
        "expected_true_flips": renderer_confirms(margins, classifier, row["target"], row["expected"], expected.sign),
        "unconfirmed_flags": [name for name, (_, _, confirmed) in flags.items() if not confirmed],
        "scan_seed": truth["seed"], "expected_present": bool(truth[row["expected"]]),
        "decision_positive": bool(prediction.positive), "probability": float(prediction.probability),
        "expected_rank": names.index(row["expected"]) + 1, "expected_verdict": expected.verdict,
        "expected_flipped": bool(expected.flipped), "expected_strength": expected.minimal_strength,
        "expected_sign": expected.sign,
        # with no flip the ranking's order is alphabetical: say so instead of naming an attribute
        "top": names[0] if ranking[0].flipped else "nothing flipped", "top_verdict": ranking[0].verdict,
        "shortcut_flags": list(flags), "flag_strengths": flags,
        "drives": [r.attribute for r in ranking if r.verdict == "drives"],
    }


def without_mediation(explanation, keep: Callable[[str], Collection[str]]) -> None:
    """Undo the oracle's mediation check in place: the verdicts the explainer gives without an oracle. The checks
    that need none are kept: a shortcut flag's on the edit's own pixels, and (where the explanation's settings
    have it) the removal check (`xcounter.same_change`), redone because the oracle may have overruled it;
    `keep(target)` is the explainer's: the findings never demoted."""
    from xcounter.explainer import verdict_of
    from xcounter.same_change import apply_removed_causes

    for result in explanation.results:
        core_flipped = None if result.core is None else result.core.confirmed
        result.verdict = verdict_of(result.kind, result.flipped, core_flipped)
        result.mediator = result.mediated_by = None
    if explanation.settings.get("removal_check"):
        apply_removed_causes(explanation.results, keep=keep)


def _share(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(row: dict, scores: list[dict]) -> dict:
    n = len(scores)
    if n == 0:
        return {**row, "n": 0}
    flagged_verdict = "drives" if row["role"] == "clean cause" else "shortcut"
    first = [s["expected_rank"] == 1 for s in scores]
    flagged = [s["expected_verdict"] == flagged_verdict for s in scores]
    tops = collections.Counter(s["top"] for s in scores).most_common(3)
    return {
        **row, "n": n,
        "ranked_first": sum(first) / n,
        "flagged": sum(flagged) / n,
        "recovery": sum(f and g for f, g in zip(first, flagged)) / n,
        "mean_rank": sum(s["expected_rank"] for s in scores) / n,
        "any_shortcut_flag": sum(bool(s["shortcut_flags"]) for s in scores) / n,
        "any_unconfirmed_flag": sum(bool(s.get("unconfirmed_flags")) for s in scores) / n,
        "true_flips": sum(bool(s.get("expected_true_flips")) for s in scores) / n,
        "flagged_where_true_flips": _share([f for f, s in zip(flagged, scores) if s.get("expected_true_flips")]),
        "other_shortcut_flag": sum(bool(set(s["shortcut_flags"]) - {row["expected"]}) for s in scores) / n,
        "mean_flip_strength": C.mean([s["expected_strength"] for s in scores if s["expected_flipped"]]),
        "decision_positive": sum(s["decision_positive"] for s in scores) / n,
        "top_attributes": [f"{name} ({count})" for name, count in tops],
        "scans": scores,
    }


def run_domain(domain: str, args, total: C.Budget) -> dict:
    budget = C.domain_budget(args)
    from xcounter.explainer import Explainer

    wanted = [name for ladder in C.SHORTCUTS[domain].values() for name in ladder.values()]
    wanted.append(C.CLEAN_CLASSIFIERS[domain])
    models = C.load_domain(domain, args.models, wanted, need_oracle=True)
    rows = classifier_rows(domain, models)
    result: dict[str, Any] = {"models": models.describe(), "rows": [],
                              "shortcuts": [list(shortcut) for shortcut in C.SHORTCUTS[domain]]}
    if not rows:
        return result
    parts = {(r["classifier"], r["label"]): models.classifiers[r["classifier"]] for r in rows}
    combined = C.combine(domain, [(name, classifier, label) for (name, label), classifier in parts.items()])
    explainer = Explainer(combined, models.generator, models.attributes, attribution=False, oracle=models.oracle)
    n = args.n or (1 if args.models == "tiny" else QUICK_N if args.quick else DEFAULT_N)
    scores: list[list[dict]] = [[] for _ in rows]
    mediated_scores: list[list[dict]] = [[] for _ in rows]
    nfe, done = [], 0
    for phantom_seed, overrides in C.scan_plan(domain, n, args.seed):
        if not budget.allows_more(done):
            break
        pixels, truth, report = C.phantom(domain, phantom_seed, **overrides)
        truth = {**truth, "seed": phantom_seed}
        explanation = explainer.explain(pixels, target=list(dict.fromkeys(r["target"] for r in rows)),
                                        report_text=report, seed=args.seed)
        nfe.append(explanation.nfe)
        margins = renderer_margins(models, combined, explanation, phantom_seed, overrides)
        for r, found in zip(rows, mediated_scores):
            found.append(score_target(explanation, r, truth, margins, combined))
        without_mediation(explanation, explainer.own_findings)
        for r, found in zip(rows, scores):
            found.append(score_target(explanation, r, truth, margins, combined))
        done += 1
        print(f"[{NAME}] {domain} scan {done}/{n} ({total.elapsed:.0f}s)", flush=True)
    result["rows"] = [summarise(r, found) for r, found in zip(rows, scores)]
    result["rows_mediated"] = [summarise(r, found) for r, found in zip(rows, mediated_scores)]
    result.update(n_scans=done, n_planned=n, budget_limited=budget.stopped_early,
                  examined=[a.name for a in explainer.examined],
                  nfe_per_scan=C.mean(nfe),
                  signs=explainer.signs if isinstance(explainer.signs, str) else list(explainer.signs))
    return result


def goals(domains: dict[str, dict], rows_key: str = "rows", suffix: str = "") -> list[dict]:
    """The goals on the verdicts without an oracle (`rows`), or with its mediation check (`rows_mediated`)."""
    out = []
    for domain, result in domains.items():
        for attribute, label in result["shortcuts"]:
            mine = [r for r in result.get(rows_key, []) if r["expected"] == attribute and r["label"] == label
                    and r["n"]]
            by_rho = {r["rho"]: r for r in mine if r["role"] == "shortcut"}
            name = f"{domain}{suffix}: {attribute} -> {label}"
            if 1.0 in by_rho:
                out.append(C.goal_row(f"{name}: planted attribute ranked first and flagged at rho 1.0",
                                      by_rho[1.0]["recovery"], by_rho[1.0]["recovery"] >= 0.5,
                                      "met = at least half the scans"))
                flagged = by_rho[1.0]["flagged"]
                out.append(C.goal_row(f"{name}: planted attribute flagged \"shortcut\" at rho 1.0", flagged,
                                      flagged >= 0.9, "met = at least 90% of scans"))
            if 0.5 in by_rho:
                alarms = by_rho[0.5]["any_shortcut_flag"]
                out.append(C.goal_row(f"{name}: nothing flagged at rho 0.5 (false alarms)", alarms, alarms == 0))
            if len(by_rho) >= 2:
                ordered = [by_rho[rho]["flagged"] for rho in sorted(by_rho, reverse=True)]
                monotone = all(a >= b for a, b in zip(ordered, ordered[1:]))
                out.append(C.goal_row(f"{name}: flagged more often as rho grows",
                                      " >= ".join(f"{v:.2f}" for v in ordered), monotone))
            for r in mine:
                if r["role"] == "clean control":
                    out.append(C.goal_row(f"{name}: clean classifier flags the planted attribute", r["flagged"],
                                          r["flagged"] <= 0.1, "met = at most 10% of scans"))
        for r in result.get(rows_key, []):
            if r["role"] == "clean cause" and r["n"]:
                positive = [s for s in r["scans"] if s["decision_positive"]]
                share = (sum(s["expected_rank"] == 1 and s["expected_flipped"] for s in positive) / len(positive)
                         if positive else None)
                out.append(C.goal_row(f"{domain}{suffix}: clean classifier, {r['label']}-positive scans: {r['expected']} "
                                      "ranked first and flips the decision", share,
                                      None if share is None else share >= 0.9,
                                      f"met = at least 90% of {len(positive)} positive scans"))
    return out


def plot(domains: dict[str, dict], out: Path) -> str | None:
    plt = C.matplotlib_pyplot()
    panels = [(domain, shortcut, [r for r in result["rows"] if r["n"] and r["role"] != "clean cause"
                                  and [r["expected"], r["label"]] == shortcut], result.get("n_scans", 0))
              for domain, result in domains.items() for shortcut in result["shortcuts"]]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (domain, (attribute, label), rows, n_scans) in zip(axes[0], panels):
        names = [f"rho {r['rho']}" if r["rho"] is not None else "clean" for r in rows]
        x = range(len(rows))
        width = 0.27
        for k, (key, text) in enumerate([("recovery", "planted ranked 1st + flagged"),
                                         ("flagged", "planted flagged"),
                                         ("any_shortcut_flag", "anything flagged")]):
            ax.bar([i + (k - 1) * width for i in x], [r[key] for r in rows], width, label=text)
        ax.set_xticks(list(x), names)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{domain}: {attribute} -> {label} (N={n_scans})", fontsize=9)
        ax.set_ylabel("share of scans")
        ax.legend(fontsize=6, loc="upper right")
    return C.save_figure(fig, out, f"bench_{NAME}")


def markdown(domains: dict[str, dict], goal_rows: list[dict], figure: str | None, args, argv,
             budget: C.Budget) -> list[str]:
    seconds = budget.elapsed
    lines = C.header("Faithfulness to known (planted) causes", f"{NAME}.py", argv, args, [
        f"Wall time: {seconds:.0f} s (process CPU time {budget.cpu:.0f} s; shared machine)" + (" (stopped by --budget-s: N below is what fitted)"
                                         if budget.stopped_early else "") + "."])
    lines += ["Scans: unseen phantoms (seeds >= 10,000,000) without the shortcuts' diseases; the main planted "
              "attribute present in every other scan, the second one in every other pair (CXR: pleural effusion "
              "in every other group of four). Each scan is explained by the "
              "product's `Explainer` (all non-anatomy attributes, default settings; the phantom's report caption is "
              "the source prompt, so each attribute is removed when the report states it and added otherwise) "
              "for every classifier's target at once. "
              "*Recovery* = the planted attribute is ranked first **and** flagged \"shortcut\"; "
              "*anything flagged* at rho 0.5 and on the clean classifier are false alarms. A flag is the verdict "
              "\"shortcut\": with the CXR generator's `confirm_shortcuts`, a flip whose edit's own strongest pixels "
              "alone do not flip the decision is *unconfirmed* instead, and not a flag. *The renderer's edit*: "
              "the same phantom redrawn with only that attribute toggled the way our edit went (binary attributes), "
              "read by the same classifier; it flips when it crosses the threshold by the product's flip margin "
              "(1 logit). A flag it does not confirm is a false alarm beyond doubt; where it does, the classifier "
              "really rests on the attribute on that scan, whatever rho it was trained at. These columns read the "
              "goals below; they set none of their own.", ""]
    for key, title in (("rows", "Verdicts without an oracle (what `Explainer` gives by default; the goals below):"),
                       ("rows_mediated", "The same explanations with the attribute oracle's mediation check (a flip "
                                         "credited to another attribute's own flipping edit is *mediated*, not "
                                         "flagged):")):
        rows = []
        for domain, result in domains.items():
            for r in result.get(key, []):
                if r["role"] == "clean cause":
                    continue
                rows.append([domain, r["classifier"], "clean" if r["rho"] is None else r["rho"],
                             f"{r['expected']} -> {r['label']}", r["n"], r.get("recovery"), r.get("flagged"),
                             r.get("mean_rank"), r.get("mean_flip_strength"), r.get("any_shortcut_flag"),
                             r.get("any_unconfirmed_flag"), r.get("true_flips"), r.get("flagged_where_true_flips"),
                             ", ".join(r.get("top_attributes", []))])
        if not rows:
            continue
        lines += [title, ""]
        lines += C.table(["domain", "classifier", "rho", "planted", "N scans", "recovery (1st + flagged)",
                          "planted flagged", "mean rank of planted", "mean minimal strength",
                          "anything flagged (false alarm at rho 0.5 / clean)",
                          "a flag the renderer does not confirm", "renderer's edit flips",
                          "planted flagged where the renderer's edit flips", "most often ranked 1st"], rows)
    lines += C.missing_models(domains)
    clean_rows = [[d, what, r["classifier"], r["label"], r["expected"], r["n"], r.get("ranked_first"), r.get("flagged"),
                   r.get("mean_rank"), ", ".join(r.get("top_attributes", []))]
                  for d, res in domains.items()
                  for key, what in (("rows", "no oracle"), ("rows_mediated", "oracle mediation"))
                  for r in res.get(key, []) if r["role"] == "clean cause"]
    if clean_rows:
        lines += ["Clean classifier, a real cause:", ""]
        lines += C.table(["domain", "verdicts", "classifier", "target", "expected first", "N scans", "ranked first",
                          "flagged \"drives\"", "mean rank", "most often ranked 1st"], clean_rows)
    mediated_goals = goals(domains, "rows_mediated", " (oracle mediation)")
    if mediated_goals:
        lines += ["The goals again, on the verdicts with the oracle's mediation check:", ""]
        lines += C.goals_table(mediated_goals)
    return lines + C.closing(goal_rows, figure, "faithfulness")


def main(argv: Sequence[str] | None = None) -> dict:
    return C.run_domain_benchmark(NAME, argv, C.parser(__doc__.splitlines()[0]), run_domain=run_domain, goals=goals,
                                  plot=plot, markdown=markdown)


if __name__ == "__main__":
    main()
