"""Lung-field shapes for the chest phantoms.

Real lung outlines make the phantoms look like radiographs instead of ellipses, so they come from
torchxrayvision's bundled lung masks (`semantic_masks_v7labs_lungs.zip`), read at run time and
never copied into this repository. Each usable mask is cropped to the box around both lungs and
resampled to a square template; a derived cache (`~/.cache/xcounter/`) keeps later runs fast.
When the zip is missing a parametric pair of lungs stands in.
"""
from __future__ import annotations

import functools
import io
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

#: side of the square templates (a template maps onto the thorax box of any image size)
TEMPLATE_SIZE = 96
_CACHE_VERSION = 2


def _zip_path() -> Path | None:
    try:
        import torchxrayvision as xrv
    except ImportError:  # pragma: no cover - xrv is a dependency
        return None
    path = Path(xrv.datasets.datapath) / "semantic_masks_v7labs_lungs.zip"
    return path if path.is_file() else None


def _cache_file() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xcounter"
    return root / f"lung_templates_v{_CACHE_VERSION}_{TEMPLATE_SIZE}.npy"


def _template_from_mask(mask: np.ndarray) -> np.ndarray | None:
    """Crop a binary mask to its lungs and resample; None for masks that are not two lungs."""
    if mask.sum() < 200:  # all-zero (82 of them) or a few stray pixels
        return None
    components, count = ndimage.label(mask)
    if count > 2:  # keep the two lungs, drop annotation specks and lines
        sizes = ndimage.sum(mask, components, index=np.arange(1, count + 1))
        mask = np.isin(components, 1 + np.argsort(sizes)[-2:])
    ys, xs = np.nonzero(mask)
    if len(xs) < 200:  # all-zero (82 of them) or a few stray pixels
        return None
    crop = mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1].astype(np.uint8) * 255
    template = np.asarray(Image.fromarray(crop).resize((TEMPLATE_SIZE, TEMPLATE_SIZE), Image.BILINEAR),
                          np.float32) / 255.0
    fill = template.mean()
    half = TEMPLATE_SIZE // 2
    left, right = template[:, :half].sum(), template[:, half:].sum()
    middle = template[:, int(0.45 * TEMPLATE_SIZE): int(0.55 * TEMPLATE_SIZE)].mean()
    # two lungs of comparable size with a mediastinal gap between them
    if not (0.3 < fill < 0.8) or min(left, right) < 0.55 * max(left, right) or middle > 0.35:
        return None
    return template


def _read_zip(path: Path) -> np.ndarray:
    templates = []
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            if name.endswith("/"):
                continue
            try:
                image = Image.open(io.BytesIO(archive.read(name)))
                image.draft("L", (512, 512))  # JPEG: decode at reduced scale, much faster
                mask = np.asarray(image.convert("L")) > 100
            except OSError:
                continue
            template = _template_from_mask(mask)
            if template is not None:
                templates.append(template)
    return np.stack(templates).astype(np.float32) if templates else np.zeros((0, TEMPLATE_SIZE, TEMPLATE_SIZE), np.float32)


def parametric_lungs(count: int = 16, seed: int = 0) -> np.ndarray:
    """Fallback templates: two rounded lungs with a cardiac notch, slightly varied by seed."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:TEMPLATE_SIZE, 0:TEMPLATE_SIZE] / (TEMPLATE_SIZE - 1)
    out = []
    for _ in range(count):
        lungs = np.zeros_like(u)
        for side in (-1, 1):  # -1: image left (patient right)
            cx = 0.5 + side * (0.28 + rng.uniform(-0.02, 0.02))
            du = (u - cx) / (0.2 + rng.uniform(-0.02, 0.02))
            dv = (v - 0.55) / 0.55
            shape = (np.abs(du) ** 2.2 + np.abs(dv) ** 2.0) < 1.0
            apex = v > 0.02 + 0.25 * np.abs(du) ** 2  # rounded apex
            lungs = np.maximum(lungs, (shape & apex).astype(np.float32))
        notch = ((u - 0.62) / 0.2) ** 2 + ((v - 0.95) / 0.35) ** 2 < 1.0
        lungs[notch] = 0.0
        out.append(lungs.astype(np.float32))
    return np.stack(out)


def _clean(templates: np.ndarray) -> np.ndarray:
    """Remove thin annotation strokes attached to some masks (a morphological opening)."""
    out = np.empty_like(templates)
    for k, template in enumerate(templates):
        opened = ndimage.binary_opening(template > 0.5, structure=np.ones((5, 5), bool))
        out[k] = np.where(opened, template, np.minimum(template, 0.0))
    return out


@functools.lru_cache(maxsize=1)
def lung_templates() -> np.ndarray:
    """[K, T, T] lung templates in [0, 1]; image left = patient right, as on a PA radiograph."""
    cache = _cache_file()
    if cache.is_file():
        try:
            return _clean(np.load(cache))
        except (OSError, ValueError):
            pass
    path = _zip_path()
    templates = _read_zip(path) if path is not None else np.zeros((0,))
    if len(templates) < 8:
        return parametric_lungs()
    templates = _clean(templates)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, templates)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only home only costs speed
    return templates


@functools.lru_cache(maxsize=1)
def template_splits() -> np.ndarray:
    """Per template, the column (in [0, 1]) separating the right lung (left of it) from the left lung."""
    templates = lung_templates()
    lo, hi = int(0.35 * TEMPLATE_SIZE), int(0.65 * TEMPLATE_SIZE)
    columns = templates[:, :, lo:hi].sum(axis=1)
    return ((lo + columns.argmin(axis=1)) / (TEMPLATE_SIZE - 1)).astype(np.float32)
