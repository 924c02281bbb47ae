"""Swap-step traversal from a noise seed: the paper's figures, without a scan or a classifier.

From z_T ~ N(0, I) (seeded) the source prompt is denoised once (the shared prefix); the
attribute-edited embedding E(src) ± α·d_a takes over at each swap step λ = steps .. 0. Three views:

- the swap-step strip: z_0(λ) decoded, from no edit (λ = steps) to the full edit (λ = 0);
- the Bézier strip: the curve through those points decoded at evenly spaced t (VAE only, no NFE);
- the curvature table: the cosine of the latent edit direction z_0(λ) - z_0(source) between successive λ
  and against the full edit. Values near 1 mean the edit grows along one direction (a straight,
  controllable trajectory); low values mean early swaps change *what* is edited, not only how much.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from xcounter.errors import XCounterError

if TYPE_CHECKING:
    from xcounter.attributes import AttributeSet
    from xcounter.generators import SDGenerator

SIGNS = ("add", "remove")
CSV_COLUMNS = ("swap_step", "strength", "cosine_previous", "cosine_full_edit", "shift_norm")


@dataclass
class Traversal:
    """One seed's swap-step trajectory and its Bézier interpolation (images H x W x C in [0, 1])."""
    prompt: str
    attribute: str
    sign: str
    alpha: float
    seed: int
    steps: int
    swap_steps: list[int]  # descending: steps (no edit) .. 0 (edit from the start)
    strengths: list[float]  # 1 - λ/steps
    swap_images: list[np.ndarray]
    bezier_t: list[float]
    bezier_images: list[np.ndarray]
    cosine_previous: list[float | None]  # cos(v(λ_k), v(λ_k-1)); None where a direction is undefined
    cosine_full_edit: list[float | None]  # cos(v(λ_k), v(0))
    shift_norm: list[float]  # |z_0(λ) - z_0(source)|
    nfe: int = 0
    generator: dict = field(default_factory=dict)

    def table(self) -> list[dict]:
        """The curvature table, one row per swap step (what the CSV holds)."""
        return [dict(zip(CSV_COLUMNS, row)) for row in zip(self.swap_steps, self.strengths, self.cosine_previous,
                                                           self.cosine_full_edit, self.shift_norm)]

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.table():
            writer.writerow({k: "" if v is None else (f"{v:.6f}" if isinstance(v, float) else v)
                             for k, v in row.items()})
        return buffer.getvalue()

    def format_table(self) -> str:
        """Plain-text view of the table for the terminal."""
        def cell(value: float | None) -> str:
            return f"{value:>9.4f}" if value is not None else f"{'-':>9}"
        lines = [f"{'λ':>4} {'strength':>8} {'cos prev':>9} {'cos full':>9} {'|Δz0|':>9}"]
        for row in self.table():
            lines.append(f"{row['swap_step']:>4} {row['strength']:>8.3f} {cell(row['cosine_previous'])} "
                         f"{cell(row['cosine_full_edit'])} {row['shift_norm']:>9.4f}")
        return "\n".join(lines)


def swap_steps_for(steps: int, points: int | None) -> list[int]:
    """`points` swap steps evenly spaced from `steps` down to 0 (every step when `points` is None)."""
    if points is None or points >= steps + 1:
        return list(range(steps, -1, -1))
    if points < 2:
        raise XCounterError(f"a traversal needs at least 2 points, got {points}")
    return sorted({int(round(v)) for v in np.linspace(steps, 0, points)}, reverse=True)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    from xcounter.metrics import cosine

    if float(a.norm()) == 0.0 or float(b.norm()) == 0.0:
        return None
    return cosine(a, b)


def curvature(points: torch.Tensor) -> tuple[list[float | None], list[float | None], list[float]]:
    """Cosines of v_k = P_k - P_0 with v_(k-1) and with v_K (the full edit), and |v_k|, for points [K, ...]."""
    shifts = [p - points[0] for p in points]
    previous = [None] + [_cosine(shifts[k], shifts[k - 1]) for k in range(1, len(shifts))]
    full = [_cosine(v, shifts[-1]) for v in shifts]
    return previous, full, [float(v.norm()) for v in shifts]


def attribute_direction(generator: "SDGenerator", attributes: "AttributeSet", name: str) -> torch.Tensor:
    """The disentangled language direction of one attribute, as the explainer computes it."""
    from xcounter.disentangle.directions import LanguageDirections

    names = [a.name for a in attributes if a.kind != "anatomy"]
    if name not in names:
        names.append(name)
    return LanguageDirections(generator, attributes, names=names).fit().directions_[name]


def traverse(generator: "SDGenerator", prompt: str, attribute: str, *, attributes: "str | AttributeSet" = "cxr",
             seed: int = 0, steps: int | None = None, alpha: float = 1.0, sign: str = "add",
             points: int | None = 6) -> Traversal:
    """Sample the swap-step trajectory of `attribute` from noise seed `seed` under `prompt`."""
    from xcounter.attributes import load_attributes
    from xcounter.disentangle.trajectories import bezier, edited_embedding, strength_of, swap_step_points

    vocabulary = load_attributes(attributes)
    attribute = vocabulary[attribute].name  # unknown names raise with a "did you mean"
    if sign not in SIGNS:
        raise XCounterError(f"sign must be 'add' or 'remove', got '{sign}'")
    if not math.isfinite(alpha) or alpha <= 0:
        raise XCounterError(f"alpha must be a positive number, got {alpha}")
    if not prompt.strip():
        raise XCounterError("the prompt is empty")
    steps = int(steps or generator.steps)
    if steps < 1:
        raise XCounterError(f"steps must be at least 1, got {steps}")
    swap_steps = swap_steps_for(steps, points)

    nfe_before = generator.nfe
    with torch.no_grad():
        z_T = torch.randn((1, *generator.latent_shape), generator=torch.Generator().manual_seed(seed))
        source = generator.embed([prompt])[0]
        edited = edited_embedding(source, attribute_direction(generator, vocabulary, attribute), sign, alpha)
        prefix = generator.denoise_prefix(z_T, source, steps)
        edits = swap_step_points(generator, z_T, source, edited, [s for s in swap_steps if s < steps],
                                 prefix=prefix, steps=steps)
        latents = torch.cat([prefix[-1], edits])  # swap_steps[0] == steps: the unedited source
        t = torch.linspace(0.0, 1.0, len(swap_steps))
        curve = bezier(latents, t).to(latents.dtype)
        images = generator.decode(torch.cat([latents, curve])).clamp(0, 1)
    frames = [image.permute(1, 2, 0).cpu().numpy().astype(np.float32) for image in images]
    previous, full, norms = curvature(latents)
    return Traversal(prompt=prompt, attribute=attribute, sign=sign, alpha=float(alpha), seed=int(seed), steps=steps,
                     swap_steps=swap_steps, strengths=[strength_of(s, steps) for s in swap_steps],
                     swap_images=frames[:len(swap_steps)], bezier_t=[float(v) for v in t],
                     bezier_images=frames[len(swap_steps):], cosine_previous=previous, cosine_full_edit=full,
                     shift_norm=norms, nfe=generator.nfe - nfe_before, generator=generator.identity())


def render_strip(traversal: Traversal) -> bytes:
    """The two strips as one labelled PNG (matplotlib's object API: no global figure state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = len(traversal.swap_images)
    figure = Figure(figsize=(1.6 * columns + 0.8, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, columns, squeeze=False)
    rows = [(traversal.swap_images, [f"λ={s}  s={v:.2f}" for s, v in zip(traversal.swap_steps, traversal.strengths)],
             "swap step"),
            (traversal.bezier_images, [f"t={v:.2f}" for v in traversal.bezier_t], "Bézier")]
    for row, (images, titles, label) in enumerate(rows):
        for column, (image, title) in enumerate(zip(images, titles)):
            ax = axes[row][column]
            picture = image[..., 0] if image.shape[-1] == 1 else image[..., :3]
            ax.imshow(np.clip(picture, 0, 1), cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(label, fontsize=9)
    verb = "+" if traversal.sign == "add" else "-"
    figure.suptitle(f"{verb}{traversal.attribute} (α={traversal.alpha:g}, seed {traversal.seed}): "
                    f"{traversal.prompt}", fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_traversal(traversal: Traversal, out: str | Path) -> tuple[Path, Path]:
    """Write the PNG to `out` and the curvature table to the same name with `.csv`, each atomically."""
    from xcounter.utils.atomic import write_bytes_atomic, write_text_atomic

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise XCounterError(f"--out must be a .png file, got '{out}'")
    png = render_strip(traversal)
    table = out.with_suffix(".csv")
    write_bytes_atomic(out, png)
    write_text_atomic(table, traversal.to_csv())
    return out, table
