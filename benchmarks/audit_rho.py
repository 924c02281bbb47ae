"""Audits of the planted-shortcut classifiers: does the audit's flip rate follow rho, and alert only when it should?

FastDiME's protocol: classifiers trained with the spurious attribute present in a fraction rho of positives and
1 - rho of negatives, at rho 1.0, 0.75 and 0.5, for two planted shortcuts per domain (`_common.SHORTCUTS`; CXR:
chest_tube -> Pneumothorax, portable_label -> Consolidation; skin: ruler -> Melanoma, ink_marking -> Melanoma), and a
clean classifier. One product audit (`xcounter.audit`, the code `xcounter audit` runs) over the same unseen
phantoms (none of the shortcuts' diseases; each planted attribute in half the scans; the phantom's report as
`report_text`) explains every classifier's target at once (their labels are combined into one classifier, so
all see the same inversions). We read each planted attribute's flip rate with its bootstrap interval and the
shortcut alerts: the rate should fall with rho. Which alerts should fire is read from the renderer: the same
phantoms redrawn with the planted attribute toggled (removed where drawn, added where not), judged by the
classifier with the product's flip rule and the audit's own alert rule. That is what the classifier does with
the attribute on these scans; the training protocol (alerts at rho 1.0 and 0.75) is only what it was meant to
learn, and a rho-0.75 model may have learned too little of the shortcut to flip one decision in ten.

    python benchmarks/audit_rho.py                 # shipped phantom models, 30 scans per domain
    python benchmarks/audit_rho.py --quick --models tiny
"""
from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

NAME = "audit_rho"
DEFAULT_N, QUICK_N = 30, 4
#: which rho values should raise a shortcut alert (FastDiME's protocol: 0.5 carries no shortcut)
SHOULD_ALERT = {1.0: True, 0.75: True, 0.5: False, None: False}


def write_manifest(domain: str, folder: Path, n: int, seed: int) -> Path:
    """Unseen phantoms as PNGs plus manifest.csv (path, report_text)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for phantom_seed, overrides in C.scan_plan(domain, n, seed):
        pixels, _truth, report = C.phantom(domain, phantom_seed, **overrides)
        name = f"{domain}-{phantom_seed}.png"
        array = (pixels.clip(0, 1) * 255).round().astype("uint8")
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(folder / name)
        rows.append({"path": name, "report_text": report})
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "report_text"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def only_attributes(domain: str, models: C.DomainModels, quick: bool, mediation: bool = False) -> list[str]:
    """Every device/artifact/acquisition attribute (the ones that can raise an alert); quick: the planted ones.
    With `mediation` the pathologies too: a flip can only be credited to an attribute that was examined."""
    from xcounter.attributes import SPURIOUS_KINDS

    if quick:
        planted = list(dict.fromkeys(attribute for attribute, _ in C.SHORTCUTS[domain]))
        return planted + ([a.name for a in models.attributes if a.kind == "pathology"][:1] if mediation else [])
    kinds = SPURIOUS_KINDS + (("pathology",) if mediation else ())
    return [a.name for a in models.attributes if a.kind in kinds]


def audited_rows(domain: str) -> list[tuple[str, str, str, float | None]]:
    """(planted attribute, label, classifier, rho) per shortcut ladder, and the clean classifier as each one's control."""
    clean = C.CLEAN_CLASSIFIERS[domain]
    rows = [(attribute, label, name, rho) for (attribute, label), ladder in C.SHORTCUTS[domain].items()
            for rho, name in sorted(ladder.items(), reverse=True)]
    return rows + [(attribute, label, clean, None) for attribute, label in C.SHORTCUTS[domain]]


def run_domain(domain: str, args, total: C.Budget) -> dict:
    from xcounter.audit import audit

    rows = audited_rows(domain)
    models = C.load_domain(domain, args.models, list(dict.fromkeys(row[2] for row in rows)),
                           need_oracle=args.mediation)
    rows = [row for row in rows if row[2] in models.classifiers]
    result: dict[str, Any] = {"models": models.describe(), "rows": [],
                              "shortcuts": [list(shortcut) for shortcut in C.SHORTCUTS[domain]]}
    if not rows:
        return result
    parts = {(name, label): models.classifiers[name] for _, label, name, _ in rows}
    combined = C.combine(domain, [(name, classifier, label) for (name, label), classifier in parts.items()])
    n = args.n or (1 if args.models == "tiny" else QUICK_N if args.quick else DEFAULT_N)
    only = only_attributes(domain, models, args.quick, args.mediation)
    with tempfile.TemporaryDirectory(prefix="xcounter-audit-rho-") as tmp:
        manifest = write_manifest(domain, Path(tmp) / "scans", n, args.seed)
        budget = C.domain_budget(args)
        options = dict(attributes=models.attributes, only=only, targets=list(combined.labels), seed=args.seed,
                       report=False, explainer_options={} if args.flip_margin is None else
                       {"flip_margin": args.flip_margin}, oracle=models.oracle if args.mediation else None)

        def progress(done: int, count: int, record: dict) -> None:
            print(f"[{NAME}] {domain} scan {done}/{count} ({total.elapsed:.0f}s)", flush=True)

        limit = n
        if budget.seconds is not None:  # one scan first (kept in the journal), to size N to the budget
            audit(combined, models.generator, manifest, out_dir=Path(tmp) / "audit", limit=1, **options)
            limit = max(1, min(n, int(budget.seconds / max(budget.elapsed, 1e-3))))
        outcome = audit(combined, models.generator, manifest, out_dir=Path(tmp) / "audit", limit=limit,
                        progress=progress, **options)
    toggles = renderer_toggles(domain, models, combined, rows, C.scan_plan(domain, n, args.seed)[:limit],
                               outcome.aggregate.rule, args.seed)
    stats = {(s.target, s.attribute): s for s in outcome.aggregate.stats}
    for attribute, label, name, rho in rows:
        target = C.combined_label(label, name)
        planted = stats.get((target, attribute))
        alerts = sorted(s.attribute for s in outcome.aggregate.stats if s.target == target and s.alert)
        result["rows"].append({
            "classifier": name, "rho": rho, "attribute": attribute, "label": label, "target": target,
            "scans": planted.scans if planted else 0, "flip_rate": planted.flip_rate if planted else None,
            "flip_rate_ci": list(planted.flip_rate_ci) if planted else None,
            "planted_alert": bool(planted.alert) if planted else False, "alerts": alerts,
            "should_alert": toggles[target, attribute]["alert"], "protocol_alert": SHOULD_ALERT[rho],
            "renderer": toggles[target, attribute],
            # every examined attribute's rate and interval, so another alert rule can be checked from the JSON
            "examined_stats": {s.attribute: {"scans": s.scans, "flip_rate": s.flip_rate, "mediated": s.mediated,
                                             "unconfirmed": s.unconfirmed,
                                             "flip_rate_ci": list(s.flip_rate_ci), "alert": bool(s.alert)}
                               for s in outcome.aggregate.stats if s.target == target}})
    result.update(n_scans=outcome.aggregate.ok, n_planned=n, failed=outcome.aggregate.failed, examined=only,
                  budget_limited=limit < n, rule=outcome.aggregate.rule)
    return result


def renderer_toggles(domain: str, models: C.DomainModels, combined, rows, plan, rule: dict,
                     seed: int) -> dict[tuple[str, str], dict]:
    """Per (combined target, planted attribute): the renderer's own toggle of the attribute on each audited
    phantom (removed where drawn, added where not), its flip rate and interval, and whether the audit's alert
    rule fires on those flips: the alert a perfect editor would raise."""
    from xcounter.audit.aggregate import Observation, summarize

    planted = list(dict.fromkeys(row[0] for row in rows))
    flips: dict[tuple[str, str], list[Observation]] = {}
    for phantom_seed, overrides in plan:
        edits = [None] + [(attribute, "remove" if overrides[attribute] else "add") for attribute in planted]
        margins = C.renderer_margins(domain, phantom_seed, models.generator, combined, overrides, edits)
        for attribute, label, name, _ in rows:
            target = C.combined_label(label, name)
            index = combined.target_index(target)
            edit = edits.index((attribute, "remove" if overrides[attribute] else "add"))
            before, after = float(margins[0, index]), float(margins[edit, index])
            flips.setdefault((target, attribute), []).append(Observation(
                scan_id=str(phantom_seed), target=target, attribute=attribute, kind=models.attributes[attribute].kind,
                flipped=C.renderer_flips(before, after), minimal_strength=None, sign=edits[edit][1],
                probability_before=None, probability_after=None, cfrt=None))
    out = {}
    for (target, attribute), found in flips.items():
        stat = summarize(target, "renderer:" + attribute, found, seed=seed, threshold=rule["threshold"],
                         min_scans=rule["min_scans"], level=rule["level"], n_resamples=rule["n_resamples"])
        out[target, attribute] = {"scans": stat.scans, "flips": stat.flips, "flip_rate": stat.flip_rate,
                                  "flip_rate_ci": list(stat.flip_rate_ci), "alert": stat.alert}
    return out


def goals(domains: dict) -> list[dict]:
    out = []
    for domain, result in domains.items():
        for attribute, label in result["shortcuts"]:
            rows = [r for r in result["rows"] if r["scans"] and r["attribute"] == attribute and r["label"] == label]
            shortcut = sorted((r for r in rows if r["rho"] is not None), key=lambda r: -r["rho"])
            name = f"{domain}: {attribute} -> {label}"
            if len(shortcut) >= 2:
                rates = [r["flip_rate"] for r in shortcut]
                ordered = all(a > b for a, b in zip(rates, rates[1:]))
                out.append(C.goal_row(f"{name}: flip rate falls with rho "
                                      f"({', '.join(str(r['rho']) for r in shortcut)})",
                                      " > ".join(f"{v:.2f}" for v in rates), ordered))
            measured = [r for r in rows if r.get("renderer") and r["flip_rate_ci"] and r["flip_rate_ci"][0] is not None]
            if measured:
                outside = [r for r in measured if not r["flip_rate_ci"][0] <= r["renderer"]["flip_rate"]
                           <= r["flip_rate_ci"][1]]
                seen = "; ".join(f"{'clean' if r['rho'] is None else 'rho ' + str(r['rho'])}: {r['flip_rate']:.2f} "
                                 f"[{r['flip_rate_ci'][0]:.2f}, {r['flip_rate_ci'][1]:.2f}] vs "
                                 f"{r['renderer']['flip_rate']:.2f}" for r in outside) or \
                    f"all {len(measured)} inside"
                out.append(C.goal_row(f"{name}: flip rate agrees with the renderer's toggles (their rate inside our "
                                      f"95% interval, every classifier)", seen, not outside))
            for r in rows:
                wrong = (not r["planted_alert"]) if r["should_alert"] else bool(r["alerts"])
                who = "clean" if r["rho"] is None else f"rho {r['rho']}"
                toggles = r.get("renderer") or {}
                reason = "" if not toggles else \
                    f" (the renderer's toggles flip {toggles['flips']} of {toggles['scans']})"
                wanted = (f"alert for {attribute}" if r["should_alert"] else "no alert at all") + reason
                seen = ", ".join(r["alerts"]) or "none"
                out.append(C.goal_row(f"{name}: {who}: {wanted}", f"alerts: {seen}", not wrong))
    return out


def plot(domains: dict, out: Path) -> str | None:
    plt = C.matplotlib_pyplot()
    panels = [(domain, shortcut, [r for r in result["rows"] if r["scans"] and [r["attribute"], r["label"]] == shortcut],
               result) for domain, result in domains.items() for shortcut in result["shortcuts"]]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (domain, (attribute, label), rows, result) in zip(axes[0], panels):
        names = ["clean" if r["rho"] is None else f"rho {r['rho']}" for r in rows]
        rates = [r["flip_rate"] for r in rows]
        low = [r["flip_rate"] - r["flip_rate_ci"][0] if r["flip_rate_ci"][0] is not None else 0 for r in rows]
        high = [r["flip_rate_ci"][1] - r["flip_rate"] if r["flip_rate_ci"][1] is not None else 0 for r in rows]
        colours = ["#b3261e" if r["planted_alert"] else "#5f6368" for r in rows]
        ax.bar(names, rates, yerr=[low, high], color=colours, capsize=4)
        toggled = [(n, r["renderer"]["flip_rate"]) for n, r in zip(names, rows) if r.get("renderer")]
        if toggled:  # what a perfect editor would measure on the same scans
            ax.scatter(*zip(*toggled), marker="D", color="#1a73e8", zorder=3, label="renderer's toggles")
        threshold = result.get("rule", {}).get("threshold")
        if threshold is not None:
            ax.axhline(threshold, color="#b3261e", linestyle="--", linewidth=1, label="alert threshold")
        if threshold is not None or toggled:
            ax.legend(fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("flip rate of the planted attribute")
        ax.set_title(f"{domain}: {attribute} -> {label} (N={result.get('n_scans', 0)}; red = alert)", fontsize=8)
    return C.save_figure(fig, out, f"bench_{NAME}")


def markdown(domains: dict, goal_rows: list[dict], figure: str | None, args, argv, budget: C.Budget) -> list[str]:
    lines = C.header("Audits by rho: flip rate and alerts of the planted shortcuts", f"{NAME}.py", argv, args, [
        f"Wall time: {budget.elapsed:.0f} s (process CPU time {budget.cpu:.0f} s)"
        + (" (stopped by --budget-s: N below is what fitted)" if budget.stopped_early else "") + "."])
    rule = next((r["rule"]["text"] for r in domains.values() if r.get("rule")), "")
    lines += ["One `xcounter.audit` over unseen phantoms without the shortcuts' diseases (each planted attribute in "
              "half the scans, the phantom's report as `report_text`, so edits remove what the report states and "
              "add the rest) explains every classifier's target at once. Examined: every device / artifact / "
              "acquisition attribute (any of them may raise an alert)"
              + (", and every pathology, with the domain's attribute oracle: flips it traces to another examined "
                 "attribute's own flip are *mediated* and left out of the flip rate and the alerts"
                 if getattr(args, "mediation", False) else "")
              + ". Flips the explainer left *unconfirmed* (the edit's own strongest pixels alone do not flip the "
                "decision; the generator's `confirm_shortcuts` setting, on for CXR) are not in the rate either"
              + f". Alert rule: {rule}.", ""]
    rows = []
    for domain, result in domains.items():
        for r in result["rows"]:
            ci = r["flip_rate_ci"] or [None, None]
            rows.append([domain, r["classifier"], "clean" if r["rho"] is None else r["rho"],
                         f"{r['attribute']} -> {r['label']}", r["scans"], r["flip_rate"],
                         "n/a" if ci[0] is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]",
                         (r.get("examined_stats", {}).get(r["attribute"], {}).get("mediated", 0)),
                         (r.get("examined_stats", {}).get(r["attribute"], {}).get("unconfirmed", 0)),
                         "yes" if r["planted_alert"] else "no", ", ".join(r["alerts"]) or "none",
                         _renderer_cell(r.get("renderer")), "yes" if r["should_alert"] else "no",
                         "yes" if r.get("protocol_alert", r["should_alert"]) else "no"])
    lines += C.table(["domain", "classifier", "rho", "planted", "N scans", "flip rate", "95% CI",
                      "mediated flips (not in the rate)", "unconfirmed flips (not in the rate)", "planted alert",
                      "all alerts", "renderer's toggles: flip rate [95% CI]", "alert expected (renderer)",
                      "alert by the training protocol"], rows)
    lines += C.missing_models(domains)
    return lines + C.closing(goal_rows, figure, "audits by rho")


def _renderer_cell(toggles: dict | None) -> str:
    if not toggles:
        return "n/a"
    low, high = toggles["flip_rate_ci"]
    return f"{toggles['flip_rate']:.2f}" + ("" if low is None else f" [{low:.2f}, {high:.2f}]")


def main(argv: Sequence[str] | None = None) -> dict:
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--flip-margin", type=float, default=None,
                        help="the audit's flip margin in logits (default: the explainer's)")
    parser.add_argument("--mediation", action="store_true",
                        help="audit with the domain's attribute oracle and the pathologies examined too, so flips "
                             "the oracle traces to another attribute's flip are credited to it (mediated)")
    return C.run_domain_benchmark(NAME, argv, parser, run_domain=run_domain, goals=goals, plot=plot,
                                  markdown=markdown)


if __name__ == "__main__":
    main()
