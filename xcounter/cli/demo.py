"""`xcounter demo`: the whole job with no arguments, on the shipped phantom models.

Writes a phantom chest radiograph with a chest tube (and no pneumothorax) and the shipped shortcut
classifier (trained where chest tubes came with pneumothorax) to a folder, explains the
classifier's Pneumothorax decision, and prints the `xcounter explain` command it ran, so a user
can see a shortcut alert in a minute and then repeat the command on their own files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from xcounter.errors import XCounterError


@dataclass(frozen=True)
class DemoSpec:
    """What the demo runs; the defaults are the shipped phantom models."""
    classifier: Path | None = None  # None: xcounter/zoo/classifiers/<classifier_name>.pt
    classifier_name: str = "cxr-shortcut"
    generator: str = "phantom-cxr"
    attributes: str | None = None  # None: the classifier's domain
    targets: tuple[str, ...] = ("Pneumothorax",)
    seed: int = 7
    scan_size: int = 128
    scan_attributes: dict = field(default_factory=lambda: {"chest_tube": True, "pneumothorax": False})
    steps: int | None = None
    oracle: str | None = "cxr"  # used only when the shipped oracle is installed

    def classifier_path(self) -> Path:
        if self.classifier is not None:
            return Path(self.classifier)
        from xcounter.classifiers.load import ZOO_CLASSIFIERS
        return ZOO_CLASSIFIERS / f"{self.classifier_name}.pt"


DEFAULT_DEMO = DemoSpec()


def _oracle_available(name: str | None) -> bool:
    if name is None:
        return False
    from xcounter.generators.zoo import ZOO_DIR
    return (ZOO_DIR / "oracles" / f"{name}.pt").is_file()


def write_demo_inputs(spec: DemoSpec, folder: Path) -> tuple[Path, Path, str]:
    """The phantom scan (PNG), its radiology report (report.txt) and a copy of the classifier in `folder`, each
    written atomically; returns (scan, classifier, report text)."""
    from xcounter.phantoms import caption, make_phantom
    from xcounter.report.plots import png_bytes
    from xcounter.utils.atomic import write_bytes_atomic

    source = spec.classifier_path()
    if not source.is_file():
        raise XCounterError(f"the demo classifier '{source.name}' is not installed in {source.parent}")
    pixels, truth = make_phantom("cxr", spec.seed, size=spec.scan_size, **spec.scan_attributes)
    report = caption(truth, "cxr", spec.seed)
    scan = folder / f"phantom-cxr-seed{spec.seed}.png"
    write_bytes_atomic(scan, png_bytes(pixels))
    write_bytes_atomic(folder / "report.txt", (report + "\n").encode("utf-8"))
    classifier = folder / source.name
    if classifier.resolve() != source.resolve():
        write_bytes_atomic(classifier, source.read_bytes())
    return scan, classifier, report


def run_demo(folder: str | Path, spec: DemoSpec | None = None, device: str = "auto"):
    """Write the inputs, explain (models on `device`), and return (ExplainRun, the equivalent command line)."""
    from xcounter.cli.explain import command_line, run_explain
    from xcounter.utils.devices import resolve_device

    spec = spec or DEFAULT_DEMO
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise XCounterError(f"demo output '{folder}' is a file, not a folder")
    resolve_device(device)  # a bad --device is refused before the inputs are written
    folder.mkdir(parents=True, exist_ok=True)
    scan, classifier, report = write_demo_inputs(spec, folder)
    options = {"generator": spec.generator, "targets": list(spec.targets), "attributes": spec.attributes,
               "report_text": report,
               "out": folder / "report.html", "json_path": folder / "report.json", "seed": spec.seed,
               "steps": spec.steps, "oracle": spec.oracle if _oracle_available(spec.oracle) else None,
               "device": device}
    run = run_explain(str(classifier), scan, progress=lambda m: click.echo(m, err=True), **options)
    # the printed command names the device only when one was asked for (auto is the default there too)
    return run, command_line(classifier, scan, **{**options, "device": None if device == "auto" else device})


@click.command("demo")
@click.option("--out", "folder", default="xcounter-demo", show_default=True, metavar="DIR",
              help="Folder for the phantom scan, the classifier copy and the report.")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda",
              help="Where the models run (auto: the GPU when torch sees one).")
def command(folder: str, device: str) -> None:
    """Explain the shipped shortcut classifier on a phantom scan (no arguments needed)."""
    from xcounter.cli.explain import print_run

    run, line = run_demo(folder, device=device)
    print_run(run)
    click.echo("This is what ran; use the same command on your own scan and classifier:")
    click.echo(f"  {line}")
