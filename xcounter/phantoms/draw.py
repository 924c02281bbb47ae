"""Resolution-free drawing primitives on a normalised grid (x, y in [-1, 1], y pointing down).

Shapes are analytic functions of the coordinates, so a phantom renders at any size from the same
parameters, and a 128 px image downsampled to 64 px shows the same anatomy.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each [size, size]."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return x, y


def smoothstep(edge0: float, edge1: float, value: np.ndarray) -> np.ndarray:
    t = np.clip((value - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def soft_disk(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float | None = None,
              edge: float = 0.15) -> np.ndarray:
    """1 inside an ellipse, 0 outside, with a soft rim `edge` (fraction of the radius)."""
    ry = rx if ry is None else ry
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return 1.0 - smoothstep(1.0 - edge, 1.0 + edge, r)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise with about `cells` blobs across, unit variance, [size, size]."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC), np.float32)
    return (field - field.mean()) / (field.std() + 1e-6)


def bezier(points: list[tuple[float, float]], samples: int = 24) -> np.ndarray:
    """Points along the Bezier curve through control `points` ([samples, 2])."""
    pts = np.asarray(points, np.float32)
    t = np.linspace(0.0, 1.0, samples, dtype=np.float32)[:, None, None]
    current = np.broadcast_to(pts, (samples, *pts.shape))
    while current.shape[1] > 1:  # de Casteljau
        current = current[:, :-1] * (1 - t) + current[:, 1:] * t
    return current[:, 0]


def polyline_distance(x: np.ndarray, y: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance from every pixel to the polyline through `points` ([N, 2]), all segments at once."""
    points = np.asarray(points, np.float32)
    a, b = points[:-1, :, None, None], points[1:, :, None, None]          # [S, 2, 1, 1]
    seg = b - a
    length2 = (seg ** 2).sum(axis=1) + 1e-12                                 # [S, 1, 1]
    px, py = x[None] - a[:, 0], y[None] - a[:, 1]                            # [S, h, w]
    t = np.clip((px * seg[:, 0] + py * seg[:, 1]) / length2, 0.0, 1.0)
    return np.sqrt(((px - t * seg[:, 0]) ** 2 + (py - t * seg[:, 1]) ** 2).min(axis=0))


def stroke(x: np.ndarray, y: np.ndarray, points: np.ndarray, width: float, pixel: float) -> np.ndarray:
    """An antialiased line of full `width` along `points` (1 on the line, 0 off it).

    Only the pixels in the curve's bounding box are visited (x, y must come from `grid`)."""
    out = np.zeros(x.shape, np.float32)
    size = x.shape[0]
    margin = width + 2 * pixel
    lo = np.clip(((points.min(axis=0) - margin + 1) / 2 * size).astype(int), 0, size)
    hi = np.clip(((points.max(axis=0) + margin + 1) / 2 * size).astype(int) + 1, 0, size)
    if hi[0] <= lo[0] or hi[1] <= lo[1]:
        return out
    window = (slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    d = polyline_distance(x[window], y[window], points)
    out[window] = np.clip((width / 2 - d) / pixel + 0.5, 0.0, 1.0)
    return out


# 5x7 bitmap glyphs for the lead markers and labels radiographs carry
_GLYPHS = {
    "A": ["01110", "10001", "10001", "11111", "10001", "10001", "10001"],
    "B": ["11110", "10001", "10001", "11110", "10001", "10001", "11110"],
    "E": ["11111", "10000", "10000", "11110", "10000", "10000", "11111"],
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "O": ["01110", "10001", "10001", "10001", "10001", "10001", "01110"],
    "P": ["11110", "10001", "10001", "11110", "10000", "10000", "10000"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
    "T": ["11111", "00100", "00100", "00100", "00100", "00100", "00100"],
    " ": ["00000"] * 7,
}


def text_mask(x: np.ndarray, y: np.ndarray, text: str, left: float, top: float, height: float) -> np.ndarray:
    """Pixels covered by `text` in the bitmap font, top-left at (left, top), glyph height `height`."""
    cell = height / 7.0
    col = np.floor((x - left) / cell).astype(np.int64)
    row = np.floor((y - top) / cell).astype(np.int64)
    out = np.zeros(x.shape, np.float32)
    for k, char in enumerate(text.upper()):
        bitmap = np.array([[c == "1" for c in line] for line in _GLYPHS[char]], bool)
        c = col - 6 * k
        inside = (c >= 0) & (c < 5) & (row >= 0) & (row < 7)
        out[inside] = np.maximum(out[inside], bitmap[row[inside], c[inside]])
    return out
