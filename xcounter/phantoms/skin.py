"""Dermoscopy phantoms: a pigmented lesion on skin seen through a dermatoscope, with known features.

Lesion features follow the dermoscopic ABCD rule (asymmetry, border, colours, dermoscopic
structures: blue-white veil, dots/globules, diameter) and the diagnosis derives from them:

    score = 1.3 A + 0.9 B + 1.3 C + 1.6 veil + 1.0 dots + 1.6 diameter + N(0, 0.45)
    Melanoma = score > 2.9      (about a third of phantoms)

A second label reports one structure as dermoscopy 7-point-checklist models do (Derm7pt's criteria):
"Blue-white veil" = the veil is drawn. It is the skin world's analogue of CXR "Effusion": an output
that follows one finding alone, where Melanoma follows six.

Acquisition artifacts (hair, ruler, ink, gel bubbles, dark corners, colour chart) are drawn on
top and carry no diagnostic information unless a shortcut dataset ties one to the label. Skin
tone (Fitzpatrick I-VI) and lighting are identity. Every attribute has its own random stream.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from xcounter.errors import XCounterError
from xcounter.phantoms import draw
from xcounter.phantoms.streams import stream

BINARY = {
    "asymmetry": None, "border_irregularity": None, "color_variegation": None, "blue_white_veil": None,
    "dots_globules": None, "hair": None, "ruler": None, "ink_marking": None, "gel_bubbles": None,
    "dark_corner": None, "color_patch": None,
}
CONTINUOUS = ("lesion_diameter", "skin_tone", "lighting")
LABELS = ("Melanoma", "Blue-white veil")
#: labels that report one attribute's presence (a 7-point-checklist criterion)
CRITERIA = {"Blue-white veil": "blue_white_veil"}
PREVALENCE = 0.28
DETAILS = ("fitzpatrick", "lesion_x", "lesion_y", "lesion_angle", "melanoma_score", "melanoma_noise",
           "ruler_edge", "color_patch_corner")
SCORE_WEIGHTS = {"asymmetry": 1.3, "border_irregularity": 0.9, "color_variegation": 1.3,
                 "blue_white_veil": 1.6, "dots_globules": 1.0, "lesion_diameter": 1.6}
SCORE_THRESHOLD = 2.9
SCORE_NOISE = 0.45

#: Fitzpatrick I..VI skin colours (linear RGB, roughly as a dermatoscope shows them). Melanin absorbs
#: blue far more than red, so darker types are also redder: R/B rises 1.26 -> 3.56 and R/G 1.17 -> 1.78
#: over I..VI. Why it matters: lighting scales every channel alike, so types whose colours were
#: nearly proportional (V and VI before 2026-11-26: R/B 2.17, 2.20) could not be told from a lighting
#: change, and the oracle's lighting R^2 on type V-VI skin fell to 0.74.
_SKIN = np.array([[0.96, 0.82, 0.76], [0.92, 0.74, 0.64], [0.84, 0.62, 0.48],
                  [0.70, 0.47, 0.32], [0.50, 0.31, 0.185], [0.32, 0.18, 0.09]], np.float32)
_EDGES = ("bottom", "left", "top", "right")
_CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def sample_attributes(seed: int) -> dict[str, Any]:
    """Attributes and details of skin phantom `seed`, with no rendering."""
    a: dict[str, Any] = {name: bool(stream(seed, name).random() < PREVALENCE) for name in BINARY}
    a["lesion_diameter"] = float(stream(seed, "lesion_diameter").beta(2.0, 2.2))
    a["skin_tone"] = float(stream(seed, "skin_tone").random())
    a["lighting"] = float(stream(seed, "lighting").beta(2.0, 2.0))
    rng = stream(seed, "lesion")
    a["lesion_x"], a["lesion_y"] = float(rng.uniform(-0.12, 0.12)), float(rng.uniform(-0.12, 0.12))
    a["lesion_angle"] = float(rng.uniform(0, np.pi))
    a["melanoma_noise"] = float(stream(seed, "diagnosis").normal(0.0, SCORE_NOISE))
    rng = stream(seed, "ruler")
    rng.random()
    a["ruler_edge"] = _EDGES[int(rng.integers(4))]
    rng = stream(seed, "color_patch")
    rng.random()
    a["color_patch_corner"] = _CORNERS[int(rng.integers(4))]
    return a


def melanoma_score(a: dict[str, Any]) -> float:
    """The documented ABCD-like score (without its noise term) of attributes `a`."""
    return float(sum(weight * float(a[name]) for name, weight in SCORE_WEIGHTS.items()))


def finalize(a: dict[str, Any]) -> dict[str, Any]:
    """Fitzpatrick type, the melanoma score and labels; details of absent artifacts blanked."""
    if a["ruler_edge"] not in _EDGES or a["color_patch_corner"] not in _CORNERS:
        raise XCounterError(f"'ruler_edge' must be one of {', '.join(_EDGES)} and "
                            f"'color_patch_corner' one of {', '.join(_CORNERS)}")
    for key in ("lesion_x", "lesion_y"):
        if not -0.5 <= float(a[key]) <= 0.5:
            raise XCounterError(f"'{key}' must lie in [-0.5, 0.5], got {a[key]}")
    out = dict(a)
    out["fitzpatrick"] = int(min(6, 1 + int(out["skin_tone"] * 6)))
    out["melanoma_score"] = melanoma_score(out) + out["melanoma_noise"]
    out["Melanoma"] = int(out["melanoma_score"] > SCORE_THRESHOLD)
    for label, attribute in CRITERIA.items():
        out[label] = int(bool(out[attribute]))
    if not out["ruler"]:
        out["ruler_edge"] = None
    if not out["color_patch"]:
        out["color_patch_corner"] = None
    return out


def _skin_colour(tone: float) -> np.ndarray:
    position = tone * (len(_SKIN) - 1)
    low = int(np.floor(position))
    high = min(low + 1, len(_SKIN) - 1)
    return _SKIN[low] * (1 - (position - low)) + _SKIN[high] * (position - low)


def _paint(image: np.ndarray, alpha: np.ndarray, colour) -> np.ndarray:
    colour = np.asarray(colour, np.float32)
    alpha = np.clip(alpha, 0, 1)[:, :, None]
    return image * (1 - alpha) + alpha * (colour if colour.ndim == 1 else colour)


def _lesion(a: dict[str, Any], seed: int, x: np.ndarray, y: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Lesion mask (soft) and normalised radial coordinate (0 centre, 1 border), and radius."""
    rng = stream(seed, "lesion_shape")
    radius = 0.2 + 0.36 * a["lesion_diameter"]
    dx, dy = x - a["lesion_x"], y - a["lesion_y"]
    angle = np.arctan2(dy, dx)
    rel = angle - a["lesion_angle"]
    shape = np.ones_like(x) + 0.04 * np.cos(2 * rel)
    phases = rng.uniform(0, 2 * np.pi, 16)
    amplitudes = rng.uniform(0.5, 1.0, 16)
    if a["asymmetry"]:
        shape += 0.28 * np.cos(2 * rel) + 0.2 * np.cos(rel + phases[0]) + 0.1 * np.cos(3 * rel + phases[1])
    if a["border_irregularity"]:
        for k in range(6, 14):
            shape += 0.06 * amplitudes[k] * np.cos(k * angle + phases[k])
        shape += 0.14 * np.cos(5 * angle + phases[2]) * (np.cos(5 * angle + phases[2]) < 0)  # notches
    else:
        shape += 0.015 * np.cos(7 * angle + phases[3])
    rho = np.hypot(dx, dy) / (radius * shape)
    fuzz = 0.14 if a["border_irregularity"] else 0.06
    mask = 1 - draw.smoothstep(1 - fuzz, 1 + fuzz, rho)
    return mask, rho, radius


def render(a: dict[str, Any], seed: int, size: int = 128) -> np.ndarray:
    """[size, size, 3] float32 dermoscopy image in [0, 1] for attributes `a`."""
    x, y = draw.grid(size)
    pixel = 2.0 / size
    texture = stream(seed, "skin_texture")
    skin = _skin_colour(a["skin_tone"])
    mottle = 0.035 * draw.smooth_noise(texture, size, 6)[:, :, None]
    lines = 0.02 * np.sin(18 * (x * np.cos(0.7) + y * np.sin(0.7)) + 2 * draw.smooth_noise(texture, size, 4))
    image = np.broadcast_to(skin, (size, size, 3)) * (1 + mottle + lines[:, :, None]) \
        + 0.03 * np.array([0.5, -0.2, -0.2], np.float32) * draw.smooth_noise(texture, size, 3)[:, :, None]

    mask, rho, radius = _lesion(a, seed, x, y, size)
    structure = stream(seed, "lesion_colour")
    # pigment darker than the surrounding skin whatever its type, so lesions stay visible on type VI
    brown = skin * np.array([0.55, 0.40, 0.32], np.float32) * (1.0 - 0.4 * a["skin_tone"])
    centre = 1 - 0.25 * draw.smoothstep(0.0, 1.0, rho)                      # darker centre
    # reticular pigment network: the zero-crossings of band-limited noise form a honeycomb of lines
    cells = max(6, int(round(10 * radius * 2)))
    network = np.exp(-(draw.smooth_noise(structure, size, cells) / 0.35) ** 2) \
        * (1 - draw.smoothstep(0.6, 1.0, rho)) + 0.5 * np.exp(-(draw.smooth_noise(structure, size, 2 * cells) / 0.3) ** 2)
    shade = 1 + 0.12 * draw.smooth_noise(structure, size, 5)
    pigment = brown[None, None] * (shade * (1 - 0.35 * np.clip(network, 0, 1)) * (1.3 - 0.4 * centre))[:, :, None]
    lighter = 1 - 0.35 * draw.smoothstep(0.55, 1.0, rho)           # pigment fades towards the rim
    image = _paint(image, 0.92 * mask * lighter, pigment)
    if a["color_variegation"]:
        field = draw.smooth_noise(stream(seed, "variegation"), size, 5)
        black = draw.smoothstep(0.4, 0.8, field) * mask
        tan = draw.smoothstep(0.5, 0.9, -field) * mask
        red = draw.smoothstep(0.6, 1.0, draw.smooth_noise(stream(seed, "variegation_red"), size, 4)) * mask
        image = _paint(image, 0.9 * black, [0.12, 0.07, 0.06])
        image = _paint(image, 0.75 * tan, [0.78, 0.56, 0.40])
        image = _paint(image, 0.6 * red, [0.62, 0.24, 0.22])
    if a["blue_white_veil"]:
        rng = stream(seed, "veil")
        theta = rng.uniform(0, 2 * np.pi)
        cx, cy = a["lesion_x"] + 0.3 * radius * np.cos(theta), a["lesion_y"] + 0.3 * radius * np.sin(theta)
        veil = draw.soft_disk(x, y, cx, cy, 0.55 * radius, 0.45 * radius, edge=0.4)
        veil = veil * mask * np.clip(0.85 + 0.3 * draw.smooth_noise(rng, size, 6), 0, 1)
        image = _paint(image, 0.85 * veil, [0.50, 0.58, 0.70])
        image = _paint(image, 0.3 * veil, [0.85, 0.88, 0.92])
    if a["dots_globules"]:
        rng = stream(seed, "dots")
        dots = np.zeros_like(x)
        for _ in range(int(rng.integers(10, 18))):
            r = radius * (rng.uniform(0.85, 1.15) if rng.random() < 0.6 else np.sqrt(rng.uniform(0.1, 0.7)))
            t = rng.uniform(0, 2 * np.pi)
            dots = np.maximum(dots, draw.soft_disk(x, y, a["lesion_x"] + r * np.cos(t), a["lesion_y"] + r * np.sin(t),
                                                   rng.uniform(0.025, 0.045), edge=0.3))
        image = _paint(image, 0.95 * dots, [0.10, 0.06, 0.05])

    if a["ink_marking"]:
        rng = stream(seed, "ink")
        start = rng.uniform(0, 2 * np.pi)
        arc = [(a["lesion_x"] + 1.35 * radius * np.cos(t), a["lesion_y"] + 1.35 * radius * np.sin(t))
               for t in np.linspace(start, start + rng.uniform(1.5, 3.0), 5)]
        ink = draw.stroke(x, y, draw.bezier(arc, 16), 0.07, pixel)
        ink = ink * np.clip(0.8 + 0.3 * draw.smooth_noise(rng, size, 10), 0, 1)
        image = _paint(image, 0.85 * ink, [0.42, 0.20, 0.55])
    if a["hair"]:
        rng = stream(seed, "hair_strands")
        hair = np.zeros_like(x)
        for _ in range(int(rng.integers(5, 11))):
            p0 = rng.uniform(-1.2, 1.2, 2)
            direction = rng.uniform(0, 2 * np.pi)
            length = rng.uniform(0.8, 1.8)
            p2 = p0 + length * np.array([np.cos(direction), np.sin(direction)])
            p1 = (p0 + p2) / 2 + rng.normal(0, 0.25, 2)
            hair = np.maximum(hair, draw.stroke(x, y, draw.bezier([tuple(p0), tuple(p1), tuple(p2)], 12),
                                                rng.uniform(0.03, 0.045), pixel))
        image = _paint(image, 0.9 * hair, [0.09, 0.06, 0.05])
    if a["gel_bubbles"]:
        rng = stream(seed, "bubbles")
        for _ in range(int(rng.integers(3, 8))):
            cx, cy, r = rng.uniform(-0.85, 0.85), rng.uniform(-0.85, 0.85), rng.uniform(0.05, 0.13)
            d = np.hypot(x - cx, y - cy)
            rim = np.exp(-((d - r) / max(pixel, 0.018)) ** 2)
            highlight = draw.soft_disk(x, y, cx - 0.4 * r, cy - 0.4 * r, 0.25 * r, edge=0.5)
            inside = (d < r) * 0.08
            image = _paint(image, 0.7 * rim + highlight + inside, [0.97, 0.97, 0.97])
    if a["ruler"]:
        image = _paint(image, *_ruler(a["ruler_edge"], x, y, pixel))

    light = 0.8 + 0.4 * a["lighting"]
    gradient = 1 + 0.08 * draw.smooth_noise(stream(seed, "illumination"), size, 2)
    image = image * (light * gradient)[:, :, None]
    if a["dark_corner"]:
        rng = stream(seed, "vignette")
        r = np.hypot(x - rng.uniform(-0.1, 0.1), y - rng.uniform(-0.1, 0.1))
        edge = rng.uniform(0.92, 1.05)
        image = image * (1 - draw.smoothstep(edge - 0.12, edge + 0.02, r))[:, :, None]
    if a["color_patch"]:  # on the dermatoscope's faceplate: inside the field even with dark corners
        image = _colour_chart(image, a["color_patch_corner"], x, y, light)
    image = ndimage.gaussian_filter(image, (0.5 * size / 128, 0.5 * size / 128, 0))
    image = image + 0.012 * stream(seed, "sensor_noise").standard_normal(image.shape).astype(np.float32)
    return np.clip(image, 0, 1).astype(np.float32)


def _ruler(edge: str, x: np.ndarray, y: np.ndarray, pixel: float) -> tuple[np.ndarray, np.ndarray]:
    """A translucent ruler along one image edge with millimetre ticks: (alpha, colour image)."""
    along, across = {"bottom": (x, y), "top": (x, -y), "left": (y, -x), "right": (y, x)}[edge]
    strip = draw.smoothstep(0.70, 0.72, across)
    step = 0.09
    phase = np.mod(along + 1, step) / step
    tick = (np.abs(phase - 0.5) < max(0.12, 0.6 * pixel / step))
    major = np.abs(np.mod(along + 1 + step / 2, 5 * step) - 5 * step / 2) < step / 2
    length = np.where(major, 0.88, 0.8)
    ticks = tick & (across > 0.72) & (across < length)
    colour = np.ones(x.shape + (3,), np.float32) * np.array([0.93, 0.92, 0.86], np.float32)
    colour[ticks] = [0.05, 0.05, 0.05]
    return np.where(ticks, 1.0, 0.85 * strip), colour


def _colour_chart(image: np.ndarray, corner: str, x: np.ndarray, y: np.ndarray, light: float) -> np.ndarray:
    """A 2 x 2 colour calibration chart in one corner."""
    sx = -1 if "left" in corner else 1
    sy = -1 if "top" in corner else 1
    colours = [[0.80, 0.15, 0.15], [0.15, 0.65, 0.20], [0.15, 0.25, 0.80], [0.55, 0.55, 0.55]]
    for k, colour in enumerate(colours):
        cx = sx * (0.74 - 0.16 * (k % 2))
        cy = sy * (0.74 - 0.16 * (k // 2))
        cell = (np.abs(x - cx) < 0.075) & (np.abs(y - cy) < 0.075)
        image = _paint(image, cell.astype(np.float32), np.asarray(colour, np.float32) * light)
    return image
