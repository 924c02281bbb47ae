"""`xcounter audit`: explain a classifier over a folder, manifest or dataset; resumable; serial or on Ray."""
from __future__ import annotations

from typing import Sequence

import click

from xcounter.cli.engine_options import anchor_option, prune_option, removal_check_option
from xcounter.errors import XCounterError


def _split(values: Sequence[str]) -> list[str]:
    """Repeatable options that also accept comma lists: --targets A,B --targets C -> [A, B, C]."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _signs(value: str) -> dict:
    """Explainer options for --signs; the default (auto) adds nothing, so journals stay comparable."""
    signs = _split([value])
    if signs == ["auto"]:
        return {}
    unknown = [s for s in signs if s not in ("add", "remove")]
    if unknown or not signs:
        raise click.BadParameter(f"use auto, or add and/or remove (got {value!r})", param_hint="--signs")
    return {"signs": signs}


def _default_generator(classifier_spec: str, trust_pickle: bool) -> str:
    from xcounter.classifiers import load_classifier

    domain = load_classifier(classifier_spec, trust_pickle=trust_pickle).domain
    if domain in ("cxr", "skin"):
        return f"phantom-{domain}"
    raise XCounterError("the classifier does not declare its domain (cxr or skin); pass --generator")


@click.command("audit")
@click.option("--classifier", "-c", required=True, help="Classifier file, xrv:NAME or phantom:NAME.")
@click.option("--images", type=click.Path(file_okay=False), help="Folder of scans (searched recursively).")
@click.option("--manifest", type=click.Path(dir_okay=False),
              help="CSV with a 'path' column (and optional 'report_text').")
@click.option("--dataset", help="torchxrayvision dataset with local images: nih:PATH, openi:PATH or chexpert:PATH.")
@click.option("--generator", "-g",
              help="Diffusers folder or phantom-cxr / phantom-skin (default: the classifier's domain).")
@click.option("--targets", "-t", multiple=True, help="Labels to explain (comma list or repeated; default: per scan).")
@click.option("--attributes", help="Vocabulary: cxr, skin or a YAML file (default: the classifier's domain).")
@click.option("--only", multiple=True, help="Examine only these attributes (comma list or repeated).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--limit", type=click.IntRange(min=1), help="Audit only the first N scans (sorted by path).")
@click.option("--seed", type=int, default=0, show_default=True, help="Audit seed (per-scan seeds derive from it).")
@click.option("--steps", type=click.IntRange(min=1), help="DDIM steps (default: the generator's).")
@click.option("--resume/--fresh", default=True, show_default=True,
              help="Skip scans already in the journal, or start the journal over.")
@click.option("--retry-failed", is_flag=True, help="Explain again the scans that failed last time.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parallel workers (more than 1 uses Ray).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              help="Run on Ray: alone starts a local Ray, with ADDRESS joins that cluster.")
@click.option("--signs", default="auto", show_default=True,
              help="Edits per attribute: auto (remove what the report or the classifier says is there, add the "
                   "rest; both when unknown), or add, remove or add,remove.")
@click.option("--flip-margin", type=click.FloatRange(min=0), default=None,
              help="Logits past the threshold an edit must reach to count as a flip (default 1).")
@click.option("--inversion", type=click.Choice(["ddim", "ddpm"]),
              help="How scans are inverted: ddpm (edit-friendly noise maps; the reconstruction is the VAE's own) or "
                   "ddim (default: the generator's).")
@click.option("--inversion-iterations", type=click.IntRange(0, 10), metavar="N",
              help="Fixed-point refinements per DDIM inversion step (implies --inversion ddim): reconstructions "
                   "closer to the scans, N more UNet evaluations per step (default: the generator's, 0).")
@click.option("--confirm-shortcuts/--no-confirm-shortcuts", default=None,
              help="Re-ask each shortcut flag with only the edit's strongest pixels pasted, and at the strongest "
                   "edit (the device drawn in full); flips that do not survive both are 'unconfirmed', not in the "
                   "flip rate (default: the generator's, on for phantom-cxr).")
@anchor_option
@prune_option
@removal_check_option
@click.option("--oracle", help="Attribute oracle (cxr, skin or a file) for CFRT.")
@click.option("--trust-pickle", is_flag=True, help="Allow pickled classifier files (runs code from the file).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, help="Shortcut alert: lower bound of the flip-rate interval above this (default 0.1).")
@click.option("--quiet", "-q", is_flag=True, help="No per-scan progress lines.")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda",
              help="Where a serial audit's models run (auto: the GPU when torch sees one); Ray workers use the GPUs "
                   "Ray gives them (none with cpu; cuda refuses a cluster without GPUs).")
def command(classifier, images, manifest, dataset, generator, targets, attributes, only, out_dir, limit, seed, steps,
            resume, retry_failed, workers, ray_address, signs, flip_margin, inversion, inversion_iterations,
            confirm_shortcuts, anchor, prune, removal_check, oracle, trust_pickle, threshold, quiet, device) -> None:
    """Audit a classifier over many scans; write explanations.jsonl and audit_report.html/.json to --out.

    Killed or interrupted audits continue where they stopped when run again with the same --out.
    """
    from xcounter.audit import ALERT_THRESHOLD, audit, make_executor

    sources = [s for s in (images, manifest, dataset) if s]
    if len(sources) != 1:
        raise click.UsageError("give exactly one of --images, --manifest or --dataset")

    def progress(done: int, total: int, record: dict) -> None:
        if not quiet:
            note = f" ({record['reason']})" if record["status"] != "ok" else f" ({record['seconds']:.1f} s)"
            click.echo(f"[{done}/{total}] {record['scan_id']}: {record['status']}{note}")

    result = audit(classifier, generator or _default_generator(classifier, trust_pickle), sources[0],
                   out_dir=out_dir, targets=_split(targets) or None, attributes=attributes, only=_split(only) or None,
                   seed=seed, executor=make_executor(workers, ray_address, device), resume=resume,
                   retry_failed=retry_failed,
                   limit=limit, steps=steps, oracle=oracle, trust_pickle=trust_pickle,
                   explainer_options={**_signs(signs), **{k: v for k, v in (
                       ("flip_margin", flip_margin), ("inversion", inversion),
                       ("inversion_iterations", inversion_iterations),
                       ("confirm_shortcuts", confirm_shortcuts), ("anchor", anchor), ("prune", prune),
                       ("removal_check", removal_check))
                       if v is not None}},
                   threshold=ALERT_THRESHOLD if threshold is None else threshold, progress=progress)
    counts = result.metadata["counts"]
    click.echo(f"Audited {counts['scans']} scans ({counts['ok']} ok, {counts['failed']} failed, "
               f"{counts['resumed']} from an earlier run).")
    for alert in result.alerts:
        low, high = alert.flip_rate_ci
        click.echo(f"Shortcut alert: {alert.attribute} flips {alert.target} on {alert.flips}/{alert.scans} scans "
                   f"(rate {alert.flip_rate:.2f}, CI {low:.2f}-{high:.2f}).")
    click.echo(f"Report: {result.report_html}")
