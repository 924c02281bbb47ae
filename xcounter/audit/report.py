"""The aggregate audit report: one self-contained HTML page (inline CSS, data: URI images, no scripts or
URLs, jinja2 autoescaping for file names and labels) and a JSON twin, both written atomically.

Reads the journal and the aggregate; never re-runs a model.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from xcounter.audit.aggregate import AuditAggregate, AttributeStat, Observation, observations
from xcounter.audit.records import STATUS_OK, best_index
from xcounter.explanation import decode_array
from xcounter.report.plots import data_uri, difference_png, png_bytes
from xcounter.utils.atomic import write_text_atomic

GALLERY_PER_ATTRIBUTE = 3


def gallery_choices(records: Iterable[dict], per_attribute: int = GALLERY_PER_ATTRIBUTE) -> list[Observation]:
    """Per attribute, the strongest counterfactuals across scans and targets (smallest flipping edit first)."""
    by_attribute: dict[str, list[Observation]] = {}
    for record in records:
        if record.get("status") == STATUS_OK:
            for observation in observations(record):
                by_attribute.setdefault(observation.attribute, []).append(observation)
    chosen = []
    for attribute in sorted(by_attribute):
        ranked = sorted(by_attribute[attribute], key=Observation.strength_key)
        chosen += [o for o in ranked if o.flipped or abs(o.delta_probability or 0) > 0][:per_attribute]
    return chosen


def _images(record: dict, target: str, attribute: str) -> dict[str, np.ndarray | None]:
    explanation = record["explanation"]
    found = {"reconstruction": decode_array(explanation.get("reconstruction") or explanation.get("image")),
             "image": None, "difference": None}
    for result in explanation.get("results", []):
        if result["target"] == target and result["attribute"] == attribute:
            index = best_index(result.get("counterfactuals", []))
            if index is not None:
                best = result["counterfactuals"][index]
                found["image"] = decode_array(best.get("image"))
                found["difference"] = decode_array(best.get("difference"))
    return found


def gallery_views(records: Iterable[dict], chosen: list[Observation]) -> dict[str, list[dict]]:
    """attribute -> figures (reconstruction, counterfactual, difference as data: URIs) with captions.
    Keeps only the chosen scans' records in memory."""
    wanted = {o.scan_id for o in chosen}
    by_scan = {r["scan_id"]: r for r in records if r["scan_id"] in wanted}
    views: dict[str, list[dict]] = {}
    for observation in chosen:
        images = _images(by_scan[observation.scan_id], observation.target, observation.attribute)
        panels = []
        for key, label in (("reconstruction", "reconstruction"), ("image", "counterfactual")):
            if images[key] is not None:
                panels.append({"src": data_uri(png_bytes(images[key])),
                               "alt": f"{label} of {observation.scan_id} ({observation.attribute})"})
        if images["difference"] is not None:
            png, _scale = difference_png(images["difference"])
            panels.append({"src": data_uri(png), "alt": f"difference map of {observation.scan_id}"})
        views.setdefault(observation.attribute, []).append({
            "scan_id": observation.scan_id, "target": observation.target, "sign": observation.sign or "",
            "flipped": observation.flipped, "strength": _fmt(observation.minimal_strength),
            "before": _fmt(observation.probability_before), "after": _fmt(observation.probability_after),
            "panels": panels})
    return views


def flip_rate_plot(aggregate: AuditAggregate) -> bytes | None:
    """Flip rate per attribute with its confidence interval, one panel per target (matplotlib, no pyplot)."""
    targets = aggregate.targets
    if not targets:
        return None
    height = max(2.0, 0.32 * max(len([s for s in aggregate.stats if s.target == t]) for t in targets) + 1.0)
    figure = Figure(figsize=(4.2 * len(targets), height), dpi=100)
    FigureCanvasAgg(figure)
    threshold = aggregate.rule["threshold"]
    for index, target in enumerate(targets):
        axes = figure.add_subplot(1, len(targets), index + 1)
        stats = [s for s in aggregate.stats if s.target == target][::-1]
        positions = np.arange(len(stats))
        rates = np.array([s.flip_rate for s in stats])
        low = np.array([s.flip_rate_ci[0] if s.flip_rate_ci[0] is not None else s.flip_rate for s in stats])
        high = np.array([s.flip_rate_ci[1] if s.flip_rate_ci[1] is not None else s.flip_rate for s in stats])
        colours = ["#b3261e" if s.alert else "#1f4e79" for s in stats]
        axes.barh(positions, rates, color=colours, alpha=0.8)
        axes.errorbar(rates, positions, xerr=[rates - low, high - rates], fmt="none", ecolor="#1d2330", capsize=3)
        axes.axvline(threshold, color="#b3261e", linestyle="--", linewidth=1)
        axes.set_yticks(positions, [s.attribute for s in stats], fontsize=8)
        axes.set_xlim(0, 1)
        axes.set_xlabel("flip rate (95% CI)" if aggregate.rule["level"] == 0.95 else "flip rate (CI)", fontsize=8)
        axes.set_title(target, fontsize=9)
        axes.tick_params(axis="x", labelsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _interval(ci: tuple) -> str:
    low, high = ci
    return "–" if low is None else f"[{low:.3f}, {high:.3f}]"


def _stat_view(stat: AttributeStat) -> dict:
    return {"attribute": stat.attribute, "kind": stat.kind, "scans": stat.scans, "flips": stat.flips,
            "mediated": stat.mediated, "unconfirmed": stat.unconfirmed,
            "flip_rate": _fmt(stat.flip_rate), "flip_rate_ci": _interval(stat.flip_rate_ci),
            "strength": _fmt(stat.median_minimal_strength), "strength_ci": _interval(stat.median_minimal_strength_ci),
            "delta": _fmt(stat.mean_delta_probability), "delta_ci": _interval(stat.mean_delta_probability_ci),
            "cfrt": _fmt(stat.mean_cfrt), "cfrt_ci": _interval(stat.mean_cfrt_ci), "alert": stat.alert,
            "target": stat.target, "examples": stat.examples}


def report_context(aggregate: AuditAggregate, metadata: dict, records: Callable[[], Iterable[dict]]) -> dict:
    """`records` is called twice (pick the gallery, then read its images) so a large journal is streamed."""
    chosen = gallery_choices(records())
    plot = flip_rate_plot(aggregate)
    return {
        "title": f"xcounter audit of {metadata.get('classifier', {}).get('name') or 'a classifier'}",
        "metadata": metadata, "aggregate": aggregate, "rule": aggregate.rule,
        "alerts": [_stat_view(s) for s in aggregate.alerts],
        "tables": {t: [_stat_view(s) for s in aggregate.stats if s.target == t] for t in aggregate.targets},
        "plot": data_uri(plot) if plot else None, "gallery": gallery_views(records(), chosen),
        "failures": aggregate.failures,
    }


def _environment() -> Environment:
    return Environment(loader=PackageLoader("xcounter.audit", "templates"), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_audit_html(aggregate: AuditAggregate, metadata: dict, records: Callable[[], Iterable[dict]]) -> str:
    return _environment().get_template("audit.html.j2").render(**report_context(aggregate, metadata, records))


def audit_json(aggregate: AuditAggregate, metadata: dict, records: Callable[[], Iterable[dict]]) -> dict:
    """The report's numbers for machines: metadata, aggregate, gallery picks (no images)."""
    chosen = gallery_choices(records())
    return {"metadata": metadata, "aggregate": aggregate.to_dict(),
            "gallery": [{"scan_id": o.scan_id, "target": o.target, "attribute": o.attribute, "sign": o.sign,
                         "flipped": o.flipped, "minimal_strength": o.minimal_strength,
                         "probability_before": o.probability_before, "probability_after": o.probability_after}
                        for o in chosen]}


def write_audit_report(out_dir: str | Path, aggregate: AuditAggregate, metadata: dict,
                       records: Callable[[], Iterable[dict]]) -> tuple[Path, Path]:
    """Render both files completely, then write each atomically: (html path, json path)."""
    out_dir = Path(out_dir)
    html = render_audit_html(aggregate, metadata, records)
    text = json.dumps(audit_json(aggregate, metadata, records), indent=2, allow_nan=False, default=str)
    html_path, json_path = out_dir / "audit_report.html", out_dir / "audit_report.json"
    write_text_atomic(json_path, text)
    write_text_atomic(html_path, html)
    return html_path, json_path
