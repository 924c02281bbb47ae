"""`xcounter traverse`: the paper's swap-step and Bézier strips from a noise seed, plus the curvature table.

Thin view of `xcounter.traverse`: parse, run, write the PNG and the CSV beside it, print the table.
"""
from __future__ import annotations

import click

from xcounter.errors import XCounterError


@click.command("traverse")
@click.option("--generator", "generator_spec", required=True,
              help="Generator: phantom-cxr, phantom-skin or a diffusers Stable Diffusion folder.")
@click.option("--prompt", required=True, help="Source prompt (a report sentence).")
@click.option("--attribute", required=True, help="Attribute to edit, e.g. pleural_effusion.")
@click.option("--attributes", default=None,
              help="Attribute vocabulary: cxr, skin or a YAML file (default: the generator's domain, else cxr).")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed of z_T.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="DDIM steps (default: the generator's).")
@click.option("--alpha", type=float, default=1.0, show_default=True, help="Edit scale: E(src) ± alpha·d.")
@click.option("--sign", type=click.Choice(["add", "remove"]), default="add", show_default=True,
              help="Add the attribute (+d) or remove it (-d).")
@click.option("--points", type=click.IntRange(min=2), default=6, show_default=True,
              help="Swap steps shown, evenly spaced from steps (no edit) to 0 (full edit).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output PNG; the table goes to .csv.")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda",
              help="Where the generator runs (auto: the GPU when torch sees one).")
def command(generator_spec: str, prompt: str, attribute: str, attributes: str | None, seed: int, steps: int | None,
            alpha: float, sign: str, points: int, out: str, device: str) -> None:
    """Draw the swap-step strip and the Bézier strip of one attribute edit from a noise seed."""
    from pathlib import Path

    from xcounter.attributes import load_attributes
    from xcounter.traverse import traverse, write_traversal

    if Path(out).suffix.lower() != ".png":
        raise XCounterError(f"--out must be a .png file, got '{out}'")
    if attributes is not None:
        load_attributes(attributes)[attribute]  # fail on a bad name before loading any model
    from xcounter.generators import load_generator
    from xcounter.utils.devices import resolve_device

    generator = load_generator(generator_spec, steps=steps, device=resolve_device(device))
    vocabulary = attributes or generator.domain or "cxr"
    result = traverse(generator, prompt, attribute, attributes=vocabulary, seed=seed, steps=steps, alpha=alpha,
                      sign=sign, points=points)
    png, table = write_traversal(result, out)
    click.echo(result.format_table())
    click.echo(f"wrote {png} and {table} ({result.nfe} UNet evaluations)")
