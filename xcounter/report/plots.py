"""Pictures for the report card, as PNG bytes: images, difference heat maps, saliency overlays and
probability-along-the-trajectory plots.

Uses matplotlib's object API (Figure + Agg canvas) rather than pyplot, so rendering a report never
touches global figure state or needs a display.
"""
from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

#: diverging map for signed changes: red = brighter in the counterfactual, blue = darker
DIVERGING = "RdBu_r"
#: outline of the region an edit was confined to, on the white-centred difference map
REGION_COLOUR = (0.25, 0.25, 0.25)
#: sequential map for non-negative saliency (Grad-CAM)
SEQUENTIAL = "inferno"
#: saliency overlays saturate at this percentile of the non-zero magnitudes
SALIENCY_PERCENTILE = 99.0
#: where the report's probabilities cross the decision (classifier probabilities are threshold-normalised)
DECISION_PROBABILITY = 0.5


def data_uri(png: bytes) -> str:
    """Embed PNG bytes in the HTML itself: the card must never fetch anything."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _as_uint8(image: np.ndarray) -> np.ndarray:
    array = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _squeeze_channels(image: np.ndarray) -> np.ndarray:
    """HxWx1 -> HxW; HxWx3 stays; anything else (HxWx2, HxWx4) keeps its first or first three."""
    array = np.asarray(image)
    if array.ndim == 3:
        if array.shape[-1] == 1:
            return array[..., 0]
        if array.shape[-1] >= 3:
            return array[..., :3]
        return array[..., 0]
    return array


def png_bytes(image: np.ndarray) -> bytes:
    """An HxW, HxWx1 or HxWx3 float image in [0, 1] as an 8-bit PNG (grey or RGB)."""
    pixels = _as_uint8(_squeeze_channels(image))
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _grey(image: np.ndarray) -> np.ndarray:
    array = _squeeze_channels(np.asarray(image, dtype=np.float32))
    return array.mean(axis=-1) if array.ndim == 3 else array


def region_outline(region: np.ndarray) -> np.ndarray:
    """H x W bool: the inner boundary of a 0/1 region (inside pixels with a 4-neighbour outside)."""
    inside = np.asarray(region) > 0.5
    padded = np.pad(inside, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inside & ~interior


def difference_png(difference: np.ndarray, region: np.ndarray | None = None) -> tuple[bytes, float]:
    """A signed difference image as a symmetric diverging heat map; returns (png, scale).

    The colour scale runs from -scale (blue) to +scale (red) with white at zero, where scale is
    the largest absolute change; an unchanged image (scale 0) renders plain white. A `region` (where
    the edit was allowed to act) is outlined in dark grey.
    """
    signed = np.nan_to_num(_grey(difference), nan=0.0)
    scale = float(np.abs(signed).max()) if signed.size else 0.0
    normalised = 0.5 + 0.5 * (signed / scale if scale > 0 else signed * 0.0)
    rgb = colormaps[DIVERGING](normalised)[..., :3]
    if region is not None and np.shape(region) == signed.shape:
        rgb[region_outline(region)] = REGION_COLOUR
    return png_bytes(rgb), scale


def overlay_png(base: np.ndarray, saliency: np.ndarray, signed: bool) -> bytes:
    """A saliency map drawn over the grey scan, opaque where the map is strong, clear where it is zero."""
    grey = _grey(base)
    values = np.nan_to_num(np.asarray(saliency, dtype=np.float32), nan=0.0)
    if values.shape != grey.shape:
        values = np.asarray(Image.fromarray(values).resize(grey.shape[::-1], Image.BILINEAR))
    # scale by a high percentile, not the peak: attributions are spiky and a few pixels would hide the rest
    magnitudes = np.abs(values[values != 0])
    peak = float(np.percentile(magnitudes, SALIENCY_PERCENTILE)) if magnitudes.size else 0.0
    values = np.clip(values / peak, -1.0, 1.0) if peak > 0 else values * 0.0
    colours = colormaps[DIVERGING](0.5 + 0.5 * values)[..., :3] if signed else colormaps[SEQUENTIAL](values)[..., :3]
    alpha = 0.75 * np.abs(values)[..., None]
    blended = (1.0 - alpha) * grey[..., None] + alpha * colours
    return png_bytes(blended)


def colorbar_png(cmap: str, signed: bool, width: int = 160, height: int = 10) -> bytes:
    """A small horizontal legend strip for a colormap."""
    ramp = np.linspace(0.0, 1.0, width)[None, :].repeat(height, axis=0)
    return png_bytes(colormaps[cmap](ramp)[..., :3])


def probability_plot_png(strengths: list[float], probabilities: list[float], minimal_strength: float | None,
                         title: str, threshold: float = DECISION_PROBABILITY) -> bytes:
    """Target probability along the edit trajectory, the decision line and the flip point."""
    figure = Figure(figsize=(4.2, 2.5), dpi=110)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.14, right=0.97, bottom=0.19, top=0.88)  # fixed: one draw, no layout engine
    axes = figure.add_subplot()
    points = sorted((float(s), float(p)) for s, p in zip(strengths, probabilities)
                    if s is not None and p is not None and np.isfinite(s) and np.isfinite(p))
    axes.axhline(threshold, color="#888888", linestyle="--", linewidth=1.0)
    starts_above = bool(points) and points[0][1] > threshold  # label on the side the curve leaves from
    axes.text(0.01, threshold + (-0.07 if starts_above else 0.03), "decision threshold", fontsize=6.5,
              color="#555555", ha="left")
    if points:
        xs, ys = zip(*points)
        axes.plot(xs, ys, color="#1f4e79", marker="o", markersize=3.5, linewidth=1.6)
    if minimal_strength is not None and points:
        flip_probability = float(np.interp(minimal_strength, *zip(*points)))
        axes.axvline(minimal_strength, color="#b3261e", linewidth=1.0, alpha=0.6)
        axes.plot([minimal_strength], [flip_probability], marker="D", color="#b3261e", markersize=6)
        axes.annotate(f"flip at {minimal_strength:.2f}", (minimal_strength, flip_probability), fontsize=7,
                      color="#b3261e", xytext=(5, 6), textcoords="offset points")
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("edit strength (0 = no edit)", fontsize=8)
    axes.set_ylabel("target probability", fontsize=8)
    axes.set_title(title.replace("$", r"\$"), fontsize=9)  # labels are untrusted: no mathtext
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.25)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
