"""`xcounter explain`: one scan -> HTML report card (+ optional JSON sidecar) and a short summary."""
from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import click

from xcounter.cli.engine_options import anchor_option, prune_option, removal_check_option
from xcounter.errors import XCounterError

if TYPE_CHECKING:
    from xcounter.explanation import Explanation


@dataclass
class ExplainRun:
    """What `run_explain` produced, for the caller to print or test."""
    explanation: "Explanation"
    report: Path
    json: Path | None
    seconds: float


def default_report_path(image: str | Path) -> Path:
    """`<image stem>.xcounter.html` in the current folder (never beside a possibly read-only dataset)."""
    return Path(f"{Path(image).stem or 'scan'}.xcounter.html")


def _check_outputs(report: Path, json_path: Path | None) -> None:
    """Refuse unusable output paths before any model is loaded."""
    for path in [report] + ([json_path] if json_path else []):
        if path.is_dir():
            raise XCounterError(f"output '{path}' is a folder; give a file name")
        folder = path.absolute().parent  # the nearest folder that exists: the rest is created when writing
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise XCounterError(f"cannot write '{path}': '{folder}' is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise XCounterError(f"cannot write '{path}': '{folder}' is not a writable folder")
    if json_path is not None and json_path.resolve() == report.resolve():
        raise XCounterError("--out and --json must be different files")


def _default_generator(classifier) -> str:
    if classifier.domain in ("cxr", "skin"):
        return f"phantom-{classifier.domain}"
    raise XCounterError(f"classifier '{classifier.name}' does not declare its domain (cxr or skin); "
                        "pass --generator (a diffusers folder, phantom-cxr or phantom-skin)")


def _default_attributes(classifier, generator) -> str:
    for domain in (classifier.domain, getattr(generator, "domain", None)):
        if domain in ("cxr", "skin"):
            return domain
    raise XCounterError("cannot tell which attribute vocabulary to use; pass --attributes cxr, skin or a YAML file")


def run_explain(classifier: str, image: str | Path, *, generator: str | None = None, targets: Sequence[str] = (),
                attributes: str | None = None, report_text: str | None = None, out: str | Path | None = None,
                json_path: str | Path | None = None, embed_images: bool = False, seed: int = 0,
                steps: int | None = None, trust_pickle: bool = False, oracle: str | None = None,
                alpha: float | None = None, flip_margin: float | None = None, localise: str | None = None,
                inversion: str | None = None, inversion_iterations: int | None = None, device: str = "auto",
                confirm_shortcuts: bool | None = None, anchor: str | None = None, prune: bool | None = None,
                removal_check: bool | None = None, progress: Callable[[str], None] | None = None) -> ExplainRun:
    """Load everything, explain, render the card (and sidecar) atomically. Raises XCounterError on user mistakes.

    `device` places the classifier and the generator ("auto": the GPU when there is one)."""
    import xcounter
    from xcounter.utils.devices import resolve_device
    from xcounter.report import render_html
    from xcounter.report.json_sidecar import encode_json_sidecar
    from xcounter.utils.atomic import write_text_atomic

    say = progress or (lambda _message: None)
    started = time.perf_counter()
    report = Path(out) if out else default_report_path(image)
    sidecar = Path(json_path) if json_path else None
    _check_outputs(report, sidecar)
    if steps is not None and steps < 1:
        raise XCounterError(f"--steps must be at least 1, got {steps}")
    place = resolve_device(device)

    scan = xcounter.load_scan(image)
    model = xcounter.load_classifier(classifier, trust_pickle=trust_pickle, device=place)
    for target in targets:  # a misspelt label fails now, not after the inversion
        model.target_index(target)
    sd = xcounter.load_generator(generator or _default_generator(model), steps=steps, device=place)
    tuning = {k: v for k, v in (("alpha", alpha), ("flip_margin", flip_margin),
                                ("inversion", inversion), ("inversion_iterations", inversion_iterations),
                                ("confirm_shortcuts", confirm_shortcuts), ("anchor", anchor),
                                ("prune", prune), ("removal_check", removal_check))
              if v is not None}
    if localise is not None:
        tuning["localise"] = LOCALISE_CHOICES[localise]
    explainer = xcounter.Explainer(model, sd, attributes or _default_attributes(model, sd), oracle=oracle, steps=steps,
                                   **tuning)
    say(f"Explaining {scan.name} ({scan.width}x{scan.height}) with classifier {model.name} and generator {sd.name} "
        f"on {place} ...")
    explanation = explainer.explain(scan, target=list(targets) or None, report_text=report_text, seed=seed)

    html = render_html(explanation)  # every output is complete in memory before anything is written
    encoded = encode_json_sidecar(explanation, sidecar, embed_images) if sidecar is not None else None
    write_text_atomic(report, html)
    if encoded is not None:
        encoded.write()
    return ExplainRun(explanation, report, sidecar, time.perf_counter() - started)


#: options whose False is a choice of its own (`--no-...`), not the default
NEGATABLE = ("confirm_shortcuts",)


def command_line(classifier: str, image: str | Path, **options) -> str:
    """The `xcounter explain ...` command equivalent to `run_explain(classifier, image, **options)`."""
    words = ["xcounter", "explain", "--classifier", str(classifier), "--image", str(image)]
    renamed = {"json_path": "--json", "targets": "--target"}
    for key, value in options.items():
        flag = renamed.get(key, "--" + key.replace("_", "-"))
        if value is False and key in NEGATABLE:
            words.append("--no-" + flag[2:])
            continue
        if value is None or value is False or value == ():
            continue
        if value is True:
            words.append(flag)
        elif isinstance(value, (list, tuple)):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def print_run(run: ExplainRun) -> None:
    from xcounter.report import text_summary

    click.echo(text_summary(run.explanation))
    click.echo(f"Explained in {run.seconds:.1f} s ({run.explanation.nfe} UNet evaluations).")
    click.echo(f"Report: {run.report}")
    if run.json is not None:
        click.echo(f"JSON:   {run.json}")


#: --localise values -> the Explainer's `localise` (which edits act only inside their DiffEdit region)
LOCALISE_CHOICES = {"remove": ("remove",), "add": ("add",), "both": ("add", "remove"), "none": ()}


@click.command("explain")
@click.option("--classifier", required=True, metavar="FILE|phantom:NAME|xrv:NAME",
              help="Classifier: TorchScript .pt, state dict/safetensors, phantom:NAME or xrv:NAME.")
@click.option("--image", required=True, metavar="FILE", help="The scan: PNG, JPEG, TIFF (8/16-bit) or DICOM.")
@click.option("--generator", metavar="DIR|phantom-cxr|phantom-skin",
              help="Diffusers Stable Diffusion folder or a shipped phantom generator "
                   "(default: the phantom generator of the classifier's domain).")
@click.option("--target", "targets", multiple=True, metavar="LABEL",
              help="Label to explain (repeatable; default: positive labels and the closest negative).")
@click.option("--attributes", metavar="cxr|skin|FILE.yaml", help="Attribute vocabulary (default: the domain's).")
@click.option("--report-text", metavar="TEXT", help="Report sentence used as the source prompt for inversion.")
@click.option("--out", metavar="FILE.html", help="Report card path (default: <image stem>.xcounter.html).")
@click.option("--json", "json_path", metavar="FILE.json", help="Also write a JSON sidecar (images in FILE_images/).")
@click.option("--embed-images", is_flag=True, help="Put the sidecar's images inside the JSON (base64) instead.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for every random choice.")
@click.option("--steps", type=int, help="DDIM steps (default: the generator's).")
@click.option("--trust-pickle", is_flag=True, help="Allow loading a pickled classifier (runs its code).")
@click.option("--oracle", metavar="NAME|FILE",
              help="Attribute oracle (cxr, skin or a file): measures side effects, and credits a flip to another "
                   "attribute when the edit also made that attribute's own flipping edit (verdict 'mediated').")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True),
              help="Edit scale of the language directions (default: the generator's own for the attribute's kind, "
                   "else 2).")
@click.option("--flip-margin", type=click.FloatRange(min=0),
              help="Logits past the threshold an edit must reach to count as a flip (default 1).")
@click.option("--localise", type=click.Choice(list(LOCALISE_CHOICES)),
              help="Which edits act only where the prompts disagree (DiffEdit region); default: remove.")
@click.option("--inversion", type=click.Choice(["ddim", "ddpm"]),
              help="How the scan is inverted: ddpm (edit-friendly noise maps; the reconstruction is the VAE's own) or "
                   "ddim (default: the generator's).")
@click.option("--inversion-iterations", type=click.IntRange(0, 10), metavar="N",
              help="Fixed-point refinements per DDIM inversion step (implies --inversion ddim): a reconstruction "
                   "closer to the scan, N more UNet evaluations per step (default: the generator's, 0).")
@click.option("--confirm-shortcuts/--no-confirm-shortcuts", default=None,
              help="Re-ask each shortcut flag with only the edit's strongest pixels pasted, and at the strongest "
                   "edit (the device drawn in full); when either leaves the decision, the verdict is 'unconfirmed' "
                   "(default: the generator's, on for phantom-cxr).")
@anchor_option
@prune_option
@removal_check_option
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda",
              help="Where the classifier and the generator run (auto: the GPU when torch sees one).")
def command(classifier, image, generator, targets, attributes, report_text, out, json_path, embed_images, seed,
            steps, trust_pickle, oracle, alpha, flip_margin, localise, inversion, inversion_iterations, confirm_shortcuts,
            anchor, prune, removal_check, device) -> None:
    """Explain a classifier's decision on one scan with counterfactual attribute edits."""
    run = run_explain(classifier, image, generator=generator, targets=targets, attributes=attributes,
                      report_text=report_text, out=out, json_path=json_path, embed_images=embed_images, seed=seed,
                      steps=steps, trust_pickle=trust_pickle, oracle=oracle, alpha=alpha, flip_margin=flip_margin,
                      localise=localise, inversion=inversion, inversion_iterations=inversion_iterations, device=device,
                      confirm_shortcuts=confirm_shortcuts, anchor=anchor, prune=prune, removal_check=removal_check,
                      progress=lambda message: click.echo(message, err=True))
    print_run(run)
