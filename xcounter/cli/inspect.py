"""`xcounter inspect`: a scan's size and safe metadata, and a classifier's predictions on it.

The smallest real job: it runs the loaders end to end, so every bad input surfaces here as one
line on stderr and exit code 2. Output is printed only after everything has succeeded.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict

import click

from xcounter.errors import XCounterError


def _labels_option(text: str | None) -> list[str] | None:
    return [label.strip() for label in text.split(",")] if text else None


def build_report(image: str, classifier_spec: str | None, *, arch: str | None = None, labels: list[str] | None = None,
                 trust_pickle: bool = False, target: str | None = None, max_pixels: int | None = None) -> dict:
    """Everything `inspect` shows, as a JSON-ready dict (the CLI only formats it)."""
    import torch

    from xcounter.io import MAX_PIXELS, load_scan

    if target and not classifier_spec:
        raise XCounterError("--target needs --classifier")
    scan = load_scan(image, max_pixels=MAX_PIXELS if max_pixels is None else max_pixels)
    report: dict = {"scan": scan.summary(), "classifier": None, "predictions": [], "target": None}
    if classifier_spec:
        from xcounter.classifiers import load_classifier

        classifier = load_classifier(classifier_spec, arch=arch, labels=labels, trust_pickle=trust_pickle)
        if target:
            report["target"] = classifier.labels[classifier.target_index(target)]
        with torch.no_grad():
            predictions = classifier.predict(scan.to_tensor())[0]
        report["classifier"] = classifier.identity()
        report["predictions"] = [asdict(p) for p in predictions]
    return report


def format_report(report: dict) -> str:
    """Plain-text view of `build_report`'s dict."""
    scan = report["scan"]
    lines = [f"scan: {scan['name']}  {scan['width']}x{scan['height']}  {scan['channels']} channel(s)  "
             f"{scan['bit_depth']}-bit"]
    lines += [f"  {key}: {value}" for key, value in scan["metadata"].items() if value is not None]
    if scan["metadata"].get("BurnedInAnnotation"):
        lines.append("  note: BurnedInAnnotation is YES: the pixels themselves may show patient text")
    identity = report["classifier"]
    if identity:
        digest = (identity["sha256"] or "")[:12]
        lines.append(f"classifier: {identity['name']}  sha256 {digest or '-'}  preprocess "
                     f"{identity['preprocess']['name']}  domain {identity['domain'] or '-'}")
        lines.append(f"  {'label':<28} {'logit':>9} {'threshold':>9} {'prob':>6}  decision")
        for p in report["predictions"]:
            mark = "*" if p["label"] == report["target"] else " "
            lines.append(f"{mark} {p['label']:<28} {p['logit']:>9.3f} {p['threshold']:>9.3f} "
                         f"{p['probability']:>6.3f}  {'positive' if p['positive'] else 'negative'}")
    return "\n".join(lines)


@click.command("inspect")
@click.option("--image", "image", required=True, help="Scan file: PNG, JPEG, TIFF or DICOM.")
@click.option("--classifier", "classifier_spec", default=None,
              help="Classifier: file (.pt TorchScript/state_dict, .safetensors), xrv:NAME or phantom:NAME.")
@click.option("--arch", default=None, help="Architecture for weight-only files: xrv-densenet, densenet121, resnet50.")
@click.option("--labels", default=None, help="Comma-separated label names, when the file does not carry them.")
@click.option("--trust-pickle", is_flag=True, help="Allow a pickled module (runs code from the file).")
@click.option("--target", default=None, help="Label to check and mark in the table.")
@click.option("--max-megapixels", type=float, default=100.0, show_default=True, help="Refuse larger scans.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def command(image: str, classifier_spec: str | None, arch: str | None, labels: str | None, trust_pickle: bool,
            target: str | None, max_megapixels: float, as_json: bool) -> None:
    """Show a scan's size, safe metadata and (with --classifier) the predictions."""
    if not 0 < max_megapixels < math.inf:  # NaN too
        raise click.BadParameter(f"must be a positive number, got {max_megapixels}", param_hint="--max-megapixels")
    report = build_report(image, classifier_spec, arch=arch, labels=_labels_option(labels),
                          trust_pickle=trust_pickle, target=target, max_pixels=int(max_megapixels * 1e6))
    click.echo(json.dumps(report, indent=2, allow_nan=False) if as_json else format_report(report))
