"""`xcounter phantoms`: write phantom datasets, contact sheets, and train phantom classifiers/oracles."""
from __future__ import annotations

from pathlib import Path

import click


def _dataset_command(domain: str) -> click.Command:
    @click.command(name=domain, help=f"Write a {domain} phantom dataset (imagefolder: PNGs + metadata.jsonl).")
    @click.option("--n", "n", type=int, default=5000, show_default=True, help="Number of images.")
    @click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder (created).")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--size", type=int, default=128, show_default=True, help="Image side in pixels (32-512).")
    @click.option("--shortcut", default=None, help="Spurious attribute to tie to --target (e.g. chest_tube).")
    @click.option("--target", default=None, help="Label the shortcut is tied to (e.g. Pneumothorax).")
    @click.option("--rho", type=float, default=None, help="P(shortcut | positive) = P(no shortcut | negative); default 0.75.")
    @click.option("--workers", type=int, default=2, show_default=True)
    @click.option("--overwrite", is_flag=True, help="Replace an existing non-empty output folder.")
    def command(n, out, seed, size, shortcut, target, rho, workers, overwrite):
        from xcounter.phantoms.dataset import write_dataset
        folder = write_dataset(domain, n, out, seed=seed, size=size, shortcut=shortcut, target=target,
                               rho=rho, workers=max(1, workers), overwrite=overwrite)
        click.echo(f"wrote {n} {domain} phantoms to {folder}")
    return command


@click.group(name="phantoms")
def command() -> None:
    """Phantom worlds with known attributes: datasets, contact sheets, phantom classifiers."""


command.add_command(_dataset_command("cxr"))
command.add_command(_dataset_command("skin"))


@command.command(name="sheet")
@click.argument("domain", type=click.Choice(["cxr", "skin"]))
@click.option("--n", "n", type=int, default=16, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", type=int, default=128, show_default=True)
def sheet(domain, n, out, seed, size):
    """Contact sheet (PNG grid) of N phantoms."""
    from xcounter.phantoms.sheet import write_sheet
    write_sheet(domain, out, n=n, seed=seed, size=size)
    click.echo(f"wrote {out}")


@command.command(name="train-classifier")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Phantom dataset folder.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Classifier .pt to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, default=None, help="Training epochs (default: the trainer's).")
def train_classifier(data, out, seed, epochs):
    """Train a phantom disease classifier (TorchScript .pt)."""
    from xcounter.phantoms.train import train_classifier as train
    kwargs = {} if epochs is None else {"epochs": epochs}
    train(data, out, seed=seed, **kwargs)
    click.echo(f"wrote {out}")


@command.command(name="train-oracle")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Phantom dataset folder.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Oracle .pt to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, default=None, help="Training epochs (default: the trainer's).")
@click.option("--width", type=click.IntRange(min=4), default=None, help="Network width (default: the trainer's).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Where to train (default auto: CUDA when present).")
def train_oracle(data, out, seed, epochs, width, device):
    """Train the attribute oracle that measures phantom attributes in images."""
    from xcounter.phantoms.oracle import train_oracle as train
    kwargs = {k: v for k, v in (("epochs", epochs), ("width", width), ("device", device)) if v is not None}
    train(data, out, seed=seed, **kwargs)
    click.echo(f"wrote {out}")
