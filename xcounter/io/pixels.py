"""Turn decoded pixel arrays of any common layout and depth into `H x W x C` float32 in [0, 1].

Kept apart from the file readers so PNG, TIFF, DICOM and in-memory arrays share one conversion.
"""
from __future__ import annotations

import numpy as np

from xcounter.errors import InputError

#: default refusal limit; a 100-megapixel scan already needs 400 MB as float32
MAX_PIXELS = 100_000_000


def check_size(height: int, width: int, max_pixels: int | None, what: str) -> None:
    """Refuse absurd sizes *before* decoding, so a hostile file cannot exhaust memory."""
    if height <= 0 or width <= 0:
        raise InputError(f"{what} has an empty size ({width}x{height} pixels)")
    if max_pixels is not None and height * width > max_pixels:
        raise InputError(
            f"{what} is {width}x{height} = {height * width / 1e6:.1f} megapixels, over the limit of "
            f"{max_pixels / 1e6:g} megapixels; downscale it first"
        )


def as_hwc(array: np.ndarray, what: str) -> np.ndarray:
    """Return `array` as H x W x C (C in 1..4), accepting H x W and channel-first C x H x W."""
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3:
        if array.shape[-1] in (1, 2, 3, 4):
            return array
        if array.shape[0] in (1, 2, 3, 4):  # planar (channel-first) layout, e.g. some TIFFs
            return np.moveaxis(array, 0, -1)
    raise InputError(f"{what} has pixel array shape {tuple(array.shape)}; expected gray, RGB or RGBA")


def unit_range(array: np.ndarray, bit_depth: int | None, what: str) -> np.ndarray:
    """Scale integer pixels by their bit depth (or check floats already lie in [0, 1])."""
    if array.dtype == bool:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.signedinteger) and array.size and array.min() < 0:
            raise InputError(f"{what} has negative integer pixels; expected unsigned values")
        bits = bit_depth or np.iinfo(array.dtype).bits
        return (array.astype(np.float64) / float(2**bits - 1)).clip(0.0, 1.0).astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise InputError(f"{what} has NaN or infinite pixel values")
        if values.size and (values.min() < 0.0 or values.max() > 1.0):
            raise InputError(
                f"{what} has floating-point pixels in [{values.min():g}, {values.max():g}]; expected [0, 1]"
            )
        return values
    raise InputError(f"{what} has unsupported pixel type {array.dtype}")


def drop_alpha(pixels: np.ndarray) -> np.ndarray:
    """Composite gray+alpha / RGBA over black: transparent areas become background, not hidden colour."""
    channels = pixels.shape[-1]
    if channels in (2, 4):
        colour, alpha = pixels[..., :-1], pixels[..., -1:]
        return (colour * alpha).astype(np.float32)
    return pixels


def to_unit_pixels(array: np.ndarray, bit_depth: int | None, what: str) -> np.ndarray:
    """Any supported array -> contiguous `H x W x C` float32 in [0, 1], C = 1 or 3."""
    pixels = drop_alpha(unit_range(as_hwc(np.asarray(array), what), bit_depth, what))
    return np.ascontiguousarray(pixels, dtype=np.float32)


def brief_error(exc: BaseException, limit: int = 160) -> str:
    """First line of a library's exception text, shortened, so our messages stay one line."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
