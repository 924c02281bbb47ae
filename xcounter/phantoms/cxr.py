"""Chest radiograph phantoms: a PA/AP film drawn from attenuation layers with known findings.

The picture is built as a radiograph is: line-integral density (soft tissue, lung air, bone,
metal) through an exponential film response, then detector blur and quantum noise. Each finding
acts where it does in a patient (an effusion replaces basal lung air under a meniscus, a
pneumothorax removes lung markings lateral to a pleural line), so an edit of one attribute is a
local, anatomically placed change. Image left is the patient's right, as on a PA film.

Every attribute draws from its own random stream (`streams.stream(seed, name)`), so overriding
one attribute leaves all other attributes, and all pixels outside its footprint, as they were.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from xcounter.errors import XCounterError
from xcounter.phantoms import draw
from xcounter.phantoms.lungs import TEMPLATE_SIZE, lung_templates, template_splits
from xcounter.phantoms.streams import stream

#: binary findings and devices, the disease label they set, and their prevalence
BINARY = {
    "cardiomegaly": "Cardiomegaly", "pleural_effusion": "Effusion", "consolidation": "Consolidation",
    "nodule": "Nodule", "pneumothorax": "Pneumothorax", "edema": "Edema",
    "pacemaker": None, "chest_tube": None, "endotracheal_tube": None, "central_line": None,
    "laterality_marker": None, "portable_label": None,
}
CONTINUOUS = ("body_width", "inspiration", "rotation", "exposure")
LABELS = ("Cardiomegaly", "Effusion", "Consolidation", "Nodule", "Pneumothorax", "Edema")
PREVALENCE = 0.28
LOBES = ("right upper lobe", "right lower lobe", "left upper lobe", "left lower lobe")

#: detail keys a caller may override besides the yaml attributes
DETAILS = (
    "lung_shape", "cardiothoracic_ratio", "breast_shadow", "gastric_bubble",
    "pleural_effusion_side", "pleural_effusion_size", "consolidation_lobe", "consolidation_extent",
    "nodule_u", "nodule_v", "nodule_diameter", "pneumothorax_side", "pneumothorax_size",
    "chest_tube_side", "pacemaker_side", "central_line_side", "laterality_marker_letter",
)


def _side(rng: np.random.Generator, p_right: float = 0.5) -> str:
    return "right" if rng.random() < p_right else "left"


@functools.lru_cache(maxsize=1024)
def _eroded(template_index: int) -> np.ndarray:
    return ndimage.binary_erosion(lung_templates()[template_index] > 0.5, iterations=8)


def _nodule_position(rng: np.random.Generator, template_index: int) -> tuple[float, float]:
    """A point well inside a lung (template coordinates), away from apex, hilum and bases."""
    eroded = _eroded(template_index)
    candidates = rng.random((64, 2)) * [0.84, 0.4] + [0.08, 0.12]  # (u, v), clear of the heart
    for u, v in candidates:
        if abs(u - 0.5) > 0.2 and eroded[int(v * (TEMPLATE_SIZE - 1)), int(u * (TEMPLATE_SIZE - 1))]:
            return float(u), float(v)
    return (0.22 if candidates[0, 0] < 0.5 else 0.78), 0.35


def sample_attributes(seed: int) -> dict[str, Any]:
    """Attributes and details of phantom `seed`, with no rendering (fast: used by the samplers)."""
    templates = lung_templates()
    a: dict[str, Any] = {}
    streams = {name: stream(seed, name) for name in BINARY}
    for name, rng in streams.items():  # presence first: the first draw of every attribute's own stream
        a[name] = bool(rng.random() < PREVALENCE)
    for name in CONTINUOUS:
        rng = stream(seed, name)
        a[name] = float(rng.beta(2.0, 2.0))
    identity = stream(seed, "identity")
    a["lung_shape"] = int(identity.integers(len(templates)))
    a["breast_shadow"] = float(identity.random() < 0.45) * float(identity.uniform(0.5, 1.0))
    a["gastric_bubble"] = bool(identity.random() < 0.6)
    normal_ctr = float(identity.uniform(0.38, 0.47))

    def details(name: str) -> np.random.Generator:
        return streams[name]  # continues after the presence draw

    # the ratio follows `cardiomegaly` in `finalize` (after overrides) unless set explicitly
    a["cardiothoracic_ratio"] = None
    a["_ctr_normal"], a["_ctr_enlarged"] = normal_ctr, float(details("cardiomegaly").uniform(0.60, 0.70))
    rng = details("pleural_effusion")
    a["pleural_effusion_side"], a["pleural_effusion_size"] = _side(rng), float(rng.uniform(0.3, 1.0))
    rng = details("consolidation")
    a["consolidation_lobe"], a["consolidation_extent"] = LOBES[int(rng.integers(len(LOBES)))], float(rng.uniform(0.5, 1.0))
    rng = details("nodule")
    a["nodule_u"], a["nodule_v"] = _nodule_position(rng, a["lung_shape"])
    a["nodule_diameter"] = float(rng.uniform(0.0, 1.0))
    rng = details("pneumothorax")
    a["pneumothorax_side"], a["pneumothorax_size"] = _side(rng), float(rng.uniform(0.5, 1.0))
    a["chest_tube_side"] = _side(details("chest_tube"), 0.75)
    a["pacemaker_side"] = _side(details("pacemaker"), 0.15)
    a["central_line_side"] = _side(details("central_line"), 0.8)
    a["laterality_marker_letter"] = "R" if details("laterality_marker").random() < 0.5 else "L"
    return a


_CHOICES = {
    "pleural_effusion_side": ("right", "left"), "pneumothorax_side": ("right", "left"),
    "chest_tube_side": ("right", "left"), "pacemaker_side": ("right", "left"),
    "central_line_side": ("right", "left"), "laterality_marker_letter": ("R", "L"), "consolidation_lobe": LOBES,
}
_UNIT = ("pleural_effusion_size", "consolidation_extent", "nodule_u", "nodule_v", "nodule_diameter",
         "pneumothorax_size", "breast_shadow")


def _check_details(a: dict[str, Any]) -> None:
    """Overridden details must be values the renderer knows (one clear error otherwise)."""
    for key, choices in _CHOICES.items():
        if a[key] not in choices:
            raise XCounterError(f"'{key}' must be one of {', '.join(choices)}, got {a[key]!r}")
    for key in _UNIT:
        if not 0.0 <= float(a[key]) <= 1.0:
            raise XCounterError(f"'{key}' must lie in [0, 1], got {a[key]}")
    if not 0 <= int(a["lung_shape"]) < len(lung_templates()):
        raise XCounterError(f"'lung_shape' must be a template index in [0, {len(lung_templates()) - 1}]")
    if a["cardiothoracic_ratio"] is not None and not 0.25 <= float(a["cardiothoracic_ratio"]) <= 0.8:
        raise XCounterError(f"'cardiothoracic_ratio' must lie in [0.25, 0.8], got {a['cardiothoracic_ratio']}")


def finalize(a: dict[str, Any]) -> dict[str, Any]:
    """Disease labels from the findings, and details of absent findings blanked (None)."""
    out = dict(a)
    _check_details(out)
    normal, enlarged = out.pop("_ctr_normal"), out.pop("_ctr_enlarged")
    if out["cardiothoracic_ratio"] is None:
        out["cardiothoracic_ratio"] = enlarged if out["cardiomegaly"] else normal
    for name, label in BINARY.items():
        if label:
            out[label] = int(bool(out[name]))
    blank = {
        "pleural_effusion": ("pleural_effusion_side", "pleural_effusion_size"),
        "consolidation": ("consolidation_lobe", "consolidation_extent"),
        "nodule": ("nodule_u", "nodule_v", "nodule_diameter"),
        "pneumothorax": ("pneumothorax_side", "pneumothorax_size"),
        "chest_tube": ("chest_tube_side",), "pacemaker": ("pacemaker_side",),
        "central_line": ("central_line_side",),
    }  # the marker letter stays: it also fixes the corner of the portable label (opposite corner)
    for name, keys in blank.items():
        if not out[name]:
            for key in keys:
                out[key] = None
    return out


# ----------------------------------------------------------------------------------------- render
class _Geometry:
    """Where the thorax, lungs and mediastinum lie for one patient (identity attributes)."""

    def __init__(self, a: dict[str, Any], x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y
        self.thorax = 0.62 + 0.16 * a["body_width"]          # half-width of the rib cage
        self.skin = self.thorax + 0.10 + 0.14 * a["body_width"]
        self.apex = -0.72
        self.base = 0.26 + 0.34 * a["inspiration"]            # lowest lung point
        self.height = self.base - self.apex
        self.roll = (a["rotation"] - 0.5) * 2.0                # -1 .. 1
        self.midline = 0.08 * self.roll
        self.template = lung_templates()[a["lung_shape"]]
        self.split = float(template_splits()[a["lung_shape"]])
        left_edge, right_edge = -self.thorax + 0.03 * self.roll, self.thorax + 0.03 * self.roll
        # piecewise-linear x -> template u, so that rotation shifts the mediastinum between lungs
        self.u = np.where(x < self.midline,
                          self.split * (x - left_edge) / (self.midline - left_edge),
                          self.split + (1 - self.split) * (x - self.midline) / (right_edge - self.midline))
        self.v = (y - self.apex) / self.height
        self.left_edge, self.right_edge = left_edge, right_edge

    def x_of(self, u: float) -> float:
        if u < self.split:
            return self.left_edge + u / self.split * (self.midline - self.left_edge)
        return self.midline + (u - self.split) / (1 - self.split) * (self.right_edge - self.midline)

    def y_of(self, v: float) -> float:
        return self.apex + v * self.height

    def sample(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        coords = np.stack([v * (TEMPLATE_SIZE - 1), u * (TEMPLATE_SIZE - 1)])
        return ndimage.map_coordinates(self.template, coords, order=1, cval=0.0)

    def side_of(self, u: np.ndarray, side: str) -> np.ndarray:
        return (u < self.split) if side == "right" else (u >= self.split)

    def sign(self, side: str) -> float:
        return -1.0 if side == "right" else 1.0  # patient right = image left


def _body_thickness(g: _Geometry) -> np.ndarray:
    x, y = g.x, g.y
    neck = 0.26
    shoulders = g.skin + 0.14
    width = np.where(y < -0.62, neck + (shoulders - neck) * draw.smoothstep(-1.05, -0.62, y),
                     g.skin + 0.14 * (1 - draw.smoothstep(-0.62, -0.25, y)) - 0.07 * draw.smoothstep(0.3, 1.0, y))
    r = np.abs(x - 0.5 * g.midline) / width
    return np.sqrt(np.clip(1 - r ** 2, 0, 1)) * (1 - draw.smoothstep(0.97, 1.0, r))


def _markings(g: _Geometry, hila: list[tuple[float, float]], seed: int) -> np.ndarray:
    """Vessels radiating and branching from the hila, thinning and fading to the periphery.

    Ridges of noise drawn in polar coordinates around each hilum (stretched along the radius)
    look like a branching vascular tree at a fraction of the cost of drawing vessels one by one."""
    rng = stream(seed, "markings")
    out = np.zeros_like(g.x)
    for hx, hy in hila:
        coarse = rng.standard_normal((5, 28)).astype(np.float32)
        polar = np.asarray(Image.fromarray(coarse, mode="F").resize((112, 40), Image.BICUBIC), np.float32)
        polar = polar / (polar.std() + 1e-6)
        dx, dy = g.x - hx, g.y - hy
        r = np.hypot(dx, dy)
        theta = (np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * 112
        ridge_index = np.clip(r / 1.2 * 40, 0, 39)
        field = ndimage.map_coordinates(polar, [ridge_index, theta], order=1, mode="grid-wrap")
        sharpness = 0.22 + 0.25 * np.exp(-r / 0.15)    # broad near the hilum, thin peripherally
        out += np.exp(-(field / sharpness) ** 2) * np.exp(-r / 0.55)
    return np.clip(out, 0, 1.2) + 0.1 * draw.smooth_noise(rng, g.x.shape[0], 20)


def _ribs(g: _Geometry, pixel: float) -> np.ndarray:
    """Posterior ribs (curving down laterally), fainter anterior ribs, and clavicles.

    One rib-phase field per side draws all ten ribs at once: phase k + f means rib k, fraction f
    across its height."""
    out = np.zeros_like(g.x)
    spacing = g.height * 0.98 / 9.5
    cage = 1 - draw.smoothstep(g.base - 0.05, g.base + 0.1, g.y)
    for side in ("right", "left"):
        s = g.sign(side)
        d = np.clip((g.x - g.midline) * s / g.thorax, 0, None)   # 0 at the spine, 1 at the lateral wall
        inside = draw.smoothstep(0.05, 0.14, d) * (1 - draw.smoothstep(0.98, 1.1, d)) * cage
        phase = (g.y - g.apex + 0.03 + 0.12 * d - 0.62 * d ** 2) / spacing
        frac = phase - np.floor(phase)
        posterior = draw.smoothstep(0.0, 0.12, frac) * (1 - draw.smoothstep(0.38, 0.5, frac))
        cortex = np.exp(-((frac - 0.06) / 0.05) ** 2) + np.exp(-((frac - 0.44) / 0.05) ** 2)
        ribs = (phase > -0.1) & (phase < 10)
        out += inside * ribs * (0.55 * posterior + 0.35 * cortex)
        # anterior ribs: from the lateral wall running down and medially, fainter
        phase_a = (g.y - g.apex - 0.1 * g.height - 0.3 * (1 - d) * g.height * 0.4) / (spacing * 1.1)
        frac_a = phase_a - np.floor(phase_a)
        anterior = np.exp(-((frac_a - 0.25) / 0.1) ** 2) * draw.smoothstep(0.25, 0.55, d) * (phase_a > 0) * (phase_a < 6)
        out += 0.25 * inside * anterior
        # clavicle: medial end near the sternal notch, lateral end up towards the shoulder
        points = draw.bezier([(g.midline + s * 0.07, g.apex + 0.05), (g.midline + s * 0.4, g.apex - 0.0),
                              (g.midline + s * 0.9 * g.skin, g.apex - 0.12)], 12)
        out += 1.4 * draw.stroke(g.x, g.y, points, 0.075, pixel)
    return out


def _spine(g: _Geometry) -> np.ndarray:
    """Vertebral column: a band with end plates, seen faintly through the mediastinum."""
    body = 1 - draw.smoothstep(0.045, 0.085, np.abs(g.x - g.midline))
    level = (g.y - g.apex) / (g.height * 0.98 / 9.5)
    plates = 0.8 + 0.2 * np.cos(np.pi * level) ** 8
    pedicles = sum(draw.soft_disk(g.x, g.y * 0 + np.mod(level, 1.0) * 0.1, g.midline + s * 0.05, 0.05, 0.018, 0.025)
                   for s in (-1, 1))
    return body * plates + 0.3 * pedicles * body


def _heart(g: _Geometry, ctr: float) -> tuple[np.ndarray, float, float]:
    """Cardiac silhouette resting on the diaphragm, about 2/3 of it to the patient's left.

    Returns the heart+mediastinum mask and the heart centre."""
    width = ctr * 2 * g.thorax
    cx = g.midline + 0.16 * width
    cy = g.base - 0.2 * g.height
    tilt = 0.45
    dx, dy = g.x - cx, g.y - cy
    u = dx * np.cos(tilt) + dy * np.sin(tilt)
    v = -dx * np.sin(tilt) + dy * np.cos(tilt)
    r = np.sqrt((u / (0.53 * width)) ** 2 + (v / (0.36 * width + 0.06 * g.height)) ** 2)
    heart = 1 - draw.smoothstep(0.94, 1.04, r)
    mediastinum = (1 - draw.smoothstep(0.075, 0.115, np.abs(g.x - g.midline - 0.015))) * (g.y < cy)
    knob = draw.soft_disk(g.x, g.y, g.midline + 0.12, g.apex + 0.22 * g.height, 0.075, 0.06)
    return np.clip(heart + mediastinum + knob, 0, 1), float(cx), float(cy)


def _trachea(g: _Geometry) -> np.ndarray:
    """Air column of the trachea down to the carina, where the main bronchi branch off."""
    carina = g.apex + 0.3 * g.height
    column = (1 - draw.smoothstep(0.025, 0.04, np.abs(g.x - g.midline * 0.7))) * (1 - draw.smoothstep(carina - 0.03, carina, g.y))
    bronchi = np.zeros_like(g.x)
    for s in (-1, 1):
        points = np.array([(g.midline * 0.7, carina - 0.02), (g.midline + s * 0.14, carina + 0.13)], np.float32)
        bronchi = np.maximum(bronchi, np.clip((0.025 - draw.polyline_distance(g.x, g.y, points)) / 0.01, 0, 1))
    return np.clip(column + 0.8 * bronchi, 0, 1) * draw.smoothstep(-1.0, -0.85, g.y)


def _humeri(g: _Geometry) -> np.ndarray:
    """Humeral heads and the lateral scapular borders at the top corners."""
    out = np.zeros_like(g.x)
    for s in (-1, 1):
        cx = g.midline + s * (g.skin - 0.02)
        head = draw.soft_disk(g.x, g.y, cx, g.apex - 0.03, 0.12, 0.13, edge=0.1)
        shaft = (np.abs(g.x - cx - s * 0.05) < 0.09) * draw.smoothstep(g.apex - 0.05, g.apex + 0.1, g.y) \
            * (1 - draw.smoothstep(g.apex + 0.4, g.apex + 0.5, g.y))
        scapula = np.exp(-(((g.x - g.midline - s * (0.78 * g.thorax + 0.25 * (g.y - g.apex))) / 0.03) ** 2)) \
            * (g.y > g.apex) * (g.y < g.apex + 0.55 * g.height)
        out += np.clip(head + shaft, 0, 1) + 0.4 * scapula
    return out


def _devices(a: dict[str, Any], g: _Geometry, pixel: float, heart_xy: tuple[float, float]) -> dict[str, np.ndarray]:
    x, y = g.x, g.y
    hx, hy = heart_xy
    layers: dict[str, np.ndarray] = {}
    if a["chest_tube"]:
        s = g.sign(a["chest_tube_side"])
        points = draw.bezier([(s * 1.05, g.base - 0.05), (s * (g.thorax + 0.05), g.base - 0.25 * g.height),
                              (g.midline + s * 0.75 * g.thorax, g.apex + 0.3 * g.height),
                              (g.midline + s * 0.45 * g.thorax, g.apex + 0.1 * g.height)], 16)
        layers["chest_tube"] = 0.7 * draw.stroke(x, y, points, 0.075, pixel) + 0.8 * draw.stroke(x, y, points, 0.025, pixel)
    if a["pacemaker"]:
        s = g.sign(a["pacemaker_side"])
        gx, gy = g.midline + s * 0.55 * g.thorax, g.apex + 0.12
        box = draw.soft_disk(x, y, gx, gy, 0.12, 0.085, edge=0.08)
        box = np.maximum(box, (np.abs(x - gx) < 0.1) & (np.abs(y - gy) < 0.07))
        vein = (g.midline - 0.02, g.apex + 0.1)
        leads = [draw.bezier([(gx - s * 0.08, gy), vein, (g.midline - 0.05, hy - 0.2), (hx - 0.02, hy)], 14),
                 draw.bezier([(gx - s * 0.08, gy + 0.02), vein, (g.midline - 0.02, hy - 0.1), (hx + 0.18, hy + 0.12)], 14)]
        wire = sum(draw.stroke(x, y, lead, 0.03, pixel) for lead in leads)
        layers["pacemaker"] = 2.0 * box + 1.0 * np.clip(wire, 0, 1)
    if a["endotracheal_tube"]:
        tip = g.apex + 0.12
        points = np.array([(0.5 * g.midline, -1.05), (0.8 * g.midline, -0.9), (g.midline, tip)], np.float32)
        layers["endotracheal_tube"] = 1.1 * draw.stroke(x, y, points, 0.065, pixel) + 1.0 * draw.stroke(x, y, points, 0.022, pixel)
    if a["central_line"]:
        s = g.sign(a["central_line_side"])
        points = draw.bezier([(g.midline + s * 0.3, -1.05), (g.midline + s * 0.2, g.apex - 0.05),
                              (g.midline + s * 0.1, g.apex + 0.1), (g.midline - 0.06, hy - 0.22)], 14)
        layers["central_line"] = 1.2 * draw.stroke(x, y, points, 0.05, pixel)
    if a["laterality_marker"]:
        letter = a["laterality_marker_letter"]
        left = -0.92 if letter == "R" else 0.74
        layers["laterality_marker"] = 3.0 * draw.text_mask(x, y, letter, left, -0.94, 0.2)
    if a["portable_label"]:
        left = -0.94 if a["laterality_marker_letter"] == "L" else 0.4   # the corner the marker leaves free
        label = draw.text_mask(x, y, "AP", left, -0.96, 0.14) + draw.text_mask(x, y, "PORTABLE", left, -0.8, 0.07)
        layers["portable_label"] = 3.0 * np.clip(label, 0, 1)
    return layers


def render(a: dict[str, Any], seed: int, size: int = 128) -> np.ndarray:
    """[size, size, 1] float32 radiograph in [0, 1] for attributes `a` (from `sample_attributes`)."""
    x, y = draw.grid(size)
    pixel = 2.0 / size
    g = _Geometry(a, x, y)
    thickness = _body_thickness(g)
    lungs = g.sample(g.u, g.v)
    lungs = np.clip(lungs, 0, 1)
    rng_identity = stream(seed, "render")

    heart, hx, hy = _heart(g, a["cardiothoracic_ratio"])
    hila = [(g.x_of(g.split * 0.62), g.y_of(0.45)), (g.x_of(g.split + (1 - g.split) * 0.33), g.y_of(0.42))]
    markings = _markings(g, hila, seed)
    air = lungs * (1 - heart)
    extra = np.zeros_like(x)   # density added inside the chest (fluid, tissue)

    if a["pneumothorax"]:
        side = a["pneumothorax_side"]
        uh, vh = (g.split * 0.62, 0.45) if side == "right" else (g.split + (1 - g.split) * 0.33, 0.42)
        f = 1.0 - 0.5 * a["pneumothorax_size"]
        uc, vc = uh + (g.u - uh) / f, vh + (g.v - vh) / f
        collapsed = g.sample(uc, vc) * g.side_of(uc, side)
        this_lung = lungs * g.side_of(g.u, side)
        space = np.clip(this_lung - collapsed, 0, 1) * (1 - heart)
        markings = markings * (1 - space) + 0.25 * markings * collapsed   # no markings, denser stump
        near_space = ndimage.maximum_filter(space, size=3) > 0.3
        pleural_line = (np.abs(collapsed - 0.5) < 0.35) & near_space & (collapsed > 0.05)
        extra += 0.22 * pleural_line
        air = air + 0.2 * space   # no lung tissue at all in the pleural space: blacker
    if a["edema"]:
        haze = sum(draw.soft_disk(x, y, hx_, hy_, 0.32 * g.thorax, 0.32 * g.height, edge=0.9) for hx_, hy_ in hila)
        haze = np.clip(haze, 0, 1) * lungs
        kerley = np.zeros_like(x)
        for s in (-1, 1):
            lateral = draw.smoothstep(0.75, 0.9, (x - g.midline) * s / g.thorax)
            kerley += lateral * (np.cos((y - g.base) / g.height * 2 * np.pi * 9) > 0.8) * (g.v > 0.65)
        air = air * (1 - 0.6 * haze)
        markings = ndimage.gaussian_filter(markings, 1.2 * size / 128.0) * (1 + 0.8 * haze)
        extra += 0.08 * kerley * lungs
    if a["consolidation"]:
        lobe = a["consolidation_lobe"]
        side = "right" if lobe.startswith("right") else "left"
        upper = "upper" in lobe
        region = g.side_of(g.u, side) * (draw.smoothstep(0.5, 0.42, g.v) if upper else draw.smoothstep(0.45, 0.6, g.v))
        patches = draw.smooth_noise(stream(seed, "consolidation_texture"), size, 6)
        density = np.clip(0.7 + 0.35 * patches, 0, 1) * (0.65 + 0.35 * a["consolidation_extent"])
        bronchi = 0.25 * (markings > 0.45)
        opacity = region * lungs * np.clip(density - bronchi, 0, 1)
        air = air * (1 - 0.9 * opacity)
    if a["nodule"]:
        nx_, ny_ = g.x_of(a["nodule_u"]), g.y_of(a["nodule_v"])
        radius = 0.06 + 0.045 * a["nodule_diameter"]
        disk = draw.soft_disk(x, y, nx_, ny_, radius, edge=0.3)
        air = air * (1 - 0.95 * disk)
        extra += 0.3 * disk
    if a["pleural_effusion"]:
        side = a["pleural_effusion_side"]
        s = g.sign(side)
        lateral = np.clip((x - g.midline) * s / g.thorax, 0, 1.2)
        level = g.base - (0.18 + 0.28 * a["pleural_effusion_size"]) * g.height - 0.16 * g.height * lateral ** 2
        fluid = draw.smoothstep(level - 0.015, level + 0.05, y) * g.side_of(g.u, side)
        fluid *= np.clip(ndimage.maximum_filter(lungs, size=max(3, size // 40)), 0, 1)
        air = air * (1 - 0.97 * fluid)
        markings = markings * (1 - fluid)
        extra += 0.08 * fluid * g.side_of(g.u, side)
    air = np.clip(air, 0, 1.25)

    density = (1.05 + 0.05 * draw.smooth_noise(rng_identity, size, 4)) * thickness   # soft tissue
    density += 0.22 * a["breast_shadow"] * _breasts(g) * thickness
    density -= 0.85 * air * (0.35 + 0.65 * thickness)                 # lung air
    density += 0.24 * np.clip(markings, 0, 1.2) * lungs * (1 - heart)
    density += extra
    density -= 0.25 * _trachea(g) * thickness
    if a["gastric_bubble"]:
        density -= 0.45 * _gastric_bubble(g, lungs) * thickness
    density += 0.13 * _ribs(g, pixel) * (thickness > 0.05)
    density += 0.14 * _spine(g) * thickness + 0.25 * _humeri(g) * draw.smoothstep(0.0, 0.3, thickness)
    for layer in _devices(a, g, pixel, (hx, hy)).values():
        density += layer

    gain = 1.45 - 0.6 * a["exposure"]
    heel = 1.0 + 0.06 * draw.smooth_noise(rng_identity, size, 2)
    image = 1.0 - np.exp(-gain * np.clip(density, 0, None) * heel)
    image = ndimage.gaussian_filter(image, 0.55 * size / 128.0)
    noise = stream(seed, "quantum_noise").standard_normal(image.shape).astype(np.float32)
    quantum = (0.035 - 0.018 * a["exposure"]) * np.sqrt(np.clip(image, 0, 1) + 0.02)
    image = image + quantum * noise
    return np.clip(image, 0, 1).astype(np.float32)[:, :, None]


def _breasts(g: _Geometry) -> np.ndarray:
    out = np.zeros_like(g.x)
    for s in (-1, 1):
        cx = g.midline + s * 0.55 * g.thorax
        out = np.maximum(out, draw.soft_disk(g.x, g.y, cx, g.base - 0.02, 0.42 * g.thorax, 0.32 * g.height, edge=0.12))
    return out * draw.smoothstep(g.base - 0.55 * g.height, g.base - 0.25 * g.height, g.y)


def _gastric_bubble(g: _Geometry, lungs: np.ndarray) -> np.ndarray:
    bx = g.x_of(g.split + (1 - g.split) * 0.55)
    column = int(np.clip((bx + 1) / 2 * g.x.shape[1], 0, g.x.shape[1] - 1))
    rows = np.nonzero(lungs[:, column] > 0.5)[0]
    bottom = g.y[rows.max(), 0] if len(rows) else g.base
    return draw.soft_disk(g.x, g.y, bx, bottom + 0.1, 0.12, 0.06, edge=0.3)
