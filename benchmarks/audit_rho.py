"""Audits of the planted-shortcut classifiers: does the audit's flip rate follow rho, and alert only when it should?

FastDiME's protocol: classifiers trained with the spurious attribute present in a fraction rho of positives and
1 - rho of negatives (CXR: chest_tube -> Pneumothorax at rho 1.0, 0.75, 0.5, and a clean one). One product audit
(`xcounter.audit`, the code `xcounter audit` runs) over the same unseen phantoms (no disease; the planted
attribute in every other scan; the phantom's report as `report_text`) explains every classifier's target at
once (their labels are combined into one classifier, so all see the same inversions). We read the planted
attribute's flip rate with its bootstrap interval and the shortcut alerts: the rate should fall with rho, and
alerts should fire at rho 1.0 and 0.75 only.

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


def write_manifest(domain: str, folder: Path, n: int, seed: int) -> tuple[Path, list[dict]]:
    """Unseen phantoms as PNGs plus manifest.csv (path, report_text); returns the manifest and the truths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    truths, rows = [], []
    for phantom_seed, overrides in C.scan_plan(domain, n, seed):
        pixels, truth, report = C.phantom(domain, phantom_seed, **overrides)
        name = f"{domain}-{phantom_seed}.png"
        array = (pixels.clip(0, 1) * 255).round().astype("uint8")
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(folder / name)
        rows.append({"path": name, "report_text": report})
        truths.append({"scan_id": name, **{k: truth[k] for k in (C.PLANTED[domain][0],)}})
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "report_text"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest, truths


def only_attributes(domain: str, models: C.DomainModels, quick: bool) -> list[str]:
    """Every device/artifact/acquisition attribute (the ones that can raise an alert); quick: the planted one."""
    from xcounter.attributes import SPURIOUS_KINDS

    planted = C.PLANTED[domain][0]
    if quick:
        return [planted]
    return [a.name for a in models.attributes if a.kind in SPURIOUS_KINDS]


def run_domain(domain: str, args, total: C.Budget) -> dict:
    from xcounter.audit import audit

    wanted = [*C.SHORTCUT_CLASSIFIERS[domain].values(), C.CLEAN_CLASSIFIERS[domain]]
    models = C.load_domain(domain, args.models, wanted, need_oracle=False)
    attribute, label = C.PLANTED[domain]
    roles = {name: rho for rho, name in C.SHORTCUT_CLASSIFIERS[domain].items()}
    roles[C.CLEAN_CLASSIFIERS[domain]] = None
    present = [name for name in wanted if name in models.classifiers]
    result: dict[str, Any] = {"models": models.describe(), "planted": [attribute, label], "rows": []}
    if not present:
        return result
    combined = C.combine(domain, [(name, models.classifiers[name], label) for name in present])
    n = args.n or (1 if args.models == "tiny" else QUICK_N if args.quick else DEFAULT_N)
    only = only_attributes(domain, models, args.quick)
    with tempfile.TemporaryDirectory(prefix="xcounter-audit-rho-") as tmp:
        manifest, _ = write_manifest(domain, Path(tmp) / "scans", n, args.seed)
        budget = C.domain_budget(args)

        def progress(done: int, count: int, record: dict) -> None:
            print(f"[{NAME}] {domain} scan {done}/{count} ({total.elapsed:.0f}s)", flush=True)

        limit = n
        if budget.seconds is not None:  # one scan first, to size N to the budget
            first = audit(combined, models.generator, manifest, out_dir=Path(tmp) / "audit", attributes=models.attributes,
                          only=only, targets=list(combined.labels), seed=args.seed, limit=1, report=False)
            per_scan = max(budget.elapsed, 1e-3)
            limit = max(1, min(n, int(budget.seconds / per_scan)))
            del first
        outcome = audit(combined, models.generator, manifest, out_dir=Path(tmp) / "audit",
                        attributes=models.attributes, only=only, targets=list(combined.labels), seed=args.seed,
                        limit=limit, report=False, progress=progress)
    stats = {(s.target, s.attribute): s for s in outcome.aggregate.stats}
    for name in present:
        target = C.combined_label(label, name)
        planted = stats.get((target, attribute))
        alerts = sorted(s.attribute for s in outcome.aggregate.stats if s.target == target and s.alert)
        result["rows"].append({
            "classifier": name, "rho": roles[name], "target": target, "scans": planted.scans if planted else 0,
            "flip_rate": planted.flip_rate if planted else None,
            "flip_rate_ci": list(planted.flip_rate_ci) if planted else None,
            "planted_alert": bool(planted.alert) if planted else False, "alerts": alerts,
            "should_alert": SHOULD_ALERT[roles[name]]})
    result.update(n_scans=outcome.aggregate.ok, n_planned=n, failed=outcome.aggregate.failed, examined=only,
                  budget_limited=limit < n, rule=outcome.aggregate.rule)
    return result


def goals(domains: dict[str, dict]) -> list[dict]:
    out = []
    for domain, result in domains.items():
        rows = [r for r in result["rows"] if r["scans"]]
        shortcut = sorted((r for r in rows if r["rho"] is not None), key=lambda r: -r["rho"])
        attribute = result["planted"][0]
        if len(shortcut) >= 2:
            rates = [r["flip_rate"] for r in shortcut]
            ordered = all(a > b for a, b in zip(rates, rates[1:]))
            out.append(C.goal_row(f"{domain}: {attribute} flip rate falls with rho "
                                  f"({', '.join(str(r['rho']) for r in shortcut)})",
                                  " > ".join(f"{v:.2f}" for v in rates), ordered))
        for r in rows:
            wrong = (not r["planted_alert"]) if r["should_alert"] else bool(r["alerts"])
            name = "clean" if r["rho"] is None else f"rho {r['rho']}"
            wanted = f"alert for {attribute}" if r["should_alert"] else "no alert at all"
            seen = ", ".join(r["alerts"]) or "none"
            out.append(C.goal_row(f"{domain}: {name}: {wanted}", f"alerts: {seen}", not wrong))
    return out


def plot(domains: dict[str, dict], out: Path) -> str | None:
    plt = C.matplotlib_pyplot()
    shown = {d: r for d, r in domains.items() if any(row["scans"] for row in r["rows"])}
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(4.8 * len(shown), 3.4), squeeze=False)
    for ax, (domain, result) in zip(axes[0], shown.items()):
        rows = [r for r in result["rows"] if r["scans"]]
        names = ["clean" if r["rho"] is None else f"rho {r['rho']}" for r in rows]
        rates = [r["flip_rate"] for r in rows]
        low = [r["flip_rate"] - r["flip_rate_ci"][0] if r["flip_rate_ci"][0] is not None else 0 for r in rows]
        high = [r["flip_rate_ci"][1] - r["flip_rate"] if r["flip_rate_ci"][1] is not None else 0 for r in rows]
        colours = ["#b3261e" if r["planted_alert"] else "#5f6368" for r in rows]
        ax.bar(names, rates, yerr=[low, high], color=colours, capsize=4)
        threshold = result.get("rule", {}).get("threshold")
        if threshold is not None:
            ax.axhline(threshold, color="#b3261e", linestyle="--", linewidth=1, label="alert threshold")
            ax.legend(fontsize=7)
        attribute, label = result["planted"]
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"{attribute} flip rate")
        ax.set_title(f"{domain}: {attribute} -> {label} (N={result.get('n_scans', 0)}; red = alert)", fontsize=9)
    return C.save_figure(fig, out, f"bench_{NAME}")


def markdown(domains: dict[str, dict], goal_rows: list[dict], figure: str | None, args, argv,
             budget: C.Budget) -> list[str]:
    lines = C.header("Audits by rho: flip rate and alerts of the planted shortcut", f"{NAME}.py", argv, args, [
        f"Wall time: {budget.elapsed:.0f} s (process CPU time {budget.cpu:.0f} s)"
        + (" (stopped by --budget-s: N below is what fitted)" if budget.stopped_early else "") + "."])
    lines += ["One `xcounter.audit` over unseen phantoms without the disease (the planted attribute in every other "
              "scan, the phantom's report as `report_text`, so edits remove what the report states and add the "
              "rest) explains every classifier's target at once. Examined: every device / artifact / acquisition "
              "attribute (any of them may raise an alert). Alert rule: " +
              next((r.get("rule", {}).get("text", "") for r in domains.values() if r.get("rule")), "") + ".", ""]
    rows = []
    for domain, result in domains.items():
        attribute, label = result["planted"]
        for r in result["rows"]:
            ci = r["flip_rate_ci"] or [None, None]
            rows.append([domain, r["classifier"], "clean" if r["rho"] is None else r["rho"],
                         f"{attribute} -> {label}", r["scans"], r["flip_rate"],
                         "n/a" if ci[0] is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]",
                         "yes" if r["planted_alert"] else "no", ", ".join(r["alerts"]) or "none",
                         "yes" if r["should_alert"] else "no"])
    lines += C.table(["domain", "classifier", "rho", "planted", "N scans", "flip rate", "95% CI",
                      "planted alert", "all alerts", "alert expected"], rows)
    lines += ["Goals:", ""] + C.goals_table(goal_rows)
    if figure:
        lines += [f"![audits by rho]({figure})", ""]
    return lines


def main(argv: Sequence[str] | None = None) -> dict:
    args = C.parser(__doc__.splitlines()[0]).parse_args(argv)
    C.setup(args)
    budget = C.Budget(args.budget_s)
    domains = C.run_per_domain(args, budget, run_domain)
    goal_rows = goals(domains)
    figure = plot(domains, args.out)
    data = C.run_record(NAME, args, argv, budget, domains=domains, goals=goal_rows, figure=figure)
    C.write_section(args.out, NAME, markdown(domains, goal_rows, figure, args, argv, budget), data)
    return data


if __name__ == "__main__":
    main()
