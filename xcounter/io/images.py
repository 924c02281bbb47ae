"""Read PNG / JPEG / TIFF (8- and 16-bit) into float pixels; no text chunks or EXIF leave this module.

PIL decodes PNG and JPEG; tifffile decodes TIFF because PIL cannot hold 16-bit RGB or planar TIFFs.
The size is checked from the header before any pixel is decoded.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xcounter.errors import InputError
from xcounter.io.pixels import brief_error, check_size, to_unit_pixels

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# PIL modes -> (mode to convert to or None, bit depth of the stored samples)
_PIL_MODES = {
    "1": (None, 1), "L": (None, 8), "LA": (None, 8), "RGB": (None, 8), "RGBA": (None, 8),
    "I;16": (None, 16), "I;16L": (None, 16), "I;16B": (None, 16), "I;16N": (None, 16),
    "F": (None, None), "P": ("RGBA", 8), "PA": ("RGBA", 8), "La": ("LA", 8), "RGBa": ("RGBA", 8),
    "RGBX": ("RGB", 8), "CMYK": ("RGB", 8), "YCbCr": ("RGB", 8), "LAB": ("RGB", 8), "HSV": ("RGB", 8),
}


def is_tiff(head: bytes) -> bool:
    return head[:4] in TIFF_MAGIC


def _basic_metadata(fmt: str, height: int, width: int, channels: int, bits: int | None) -> dict:
    """The only facts an ordinary image file contributes: format and geometry, never its text chunks."""
    return {"Format": fmt, "Rows": int(height), "Columns": int(width), "Channels": int(channels),
            "BitsStored": int(bits) if bits else None}


def read_pil_image(image: Image.Image, name: str, max_pixels: int | None) -> tuple[np.ndarray, dict, int]:
    """Decode an opened PIL image; returns (pixels HxWxC float32, metadata, bit depth)."""
    width, height = image.size
    check_size(height, width, max_pixels, f"image '{name}'")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"image '{name}' is damaged or truncated ({brief_error(exc)})") from None
    mode = image.mode
    if mode == "I":  # 32-bit integer mode: PNG uses it for 16-bit gray in some Pillow versions
        convert, bits = None, 16 if image.format == "PNG" else 32
    elif mode in _PIL_MODES:
        convert, bits = _PIL_MODES[mode]
    else:
        raise InputError(f"image '{name}' has unsupported pixel mode '{mode}'")
    if mode == "P" and "transparency" not in image.info:
        convert = "RGB"
    if convert:
        image = image.convert(convert)
    array = np.asarray(image)
    pixels = to_unit_pixels(array, bits, f"image '{name}'")
    channels = array.shape[-1] if array.ndim == 3 else 1
    return pixels, _basic_metadata(image.format or "image", height, width, channels, bits), bits or 32


_PIL_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _own_size_limit() -> Iterator[None]:
    """Let `check_size` (with its clear message) judge sizes instead of PIL's decompression-bomb guard."""
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def read_pil_file(path: Path, max_pixels: int | None) -> tuple[np.ndarray, dict, int]:
    """PNG, JPEG and the other formats PIL knows."""
    try:
        with _own_size_limit():
            image = Image.open(path)  # reads the header only
        with image:
            fmt = image.format
            pixels, metadata, bits = read_pil_image(image, path.name, max_pixels)
    except UnidentifiedImageError:
        raise InputError(
            f"'{path.name}' is not a readable image (expected PNG, JPEG, TIFF or DICOM)"
        ) from None
    metadata["Format"] = fmt or metadata["Format"]
    return pixels, metadata, bits


def read_tiff(path: Path, max_pixels: int | None) -> tuple[np.ndarray, dict, int]:
    """First page of a TIFF, keeping 16-bit precision; MINISWHITE is inverted to the usual convention."""
    import tifffile

    what = f"TIFF '{path.name}'"
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            check_size(int(page.imagelength), int(page.imagewidth), max_pixels, what)
            photometric = getattr(page.photometric, "name", str(page.photometric))
            if photometric not in ("MINISBLACK", "MINISWHITE", "RGB"):
                return read_pil_file(path, max_pixels)  # palette, YCbCr, CMYK: let PIL convert
            array = page.asarray()
            bits = int(page.bitspersample) if np.issubdtype(array.dtype, np.integer) else None
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many kinds for damaged files
        raise InputError(f"{what} is damaged or unreadable ({type(exc).__name__}: {brief_error(exc)})") from None
    if array.ndim == 3 and page.samplesperpixel == 1 and array.shape[0] > 4:
        raise InputError(f"{what} is a volume of shape {array.shape}; pass one 2-D image")
    pixels = to_unit_pixels(array, bits, what)
    if photometric == "MINISWHITE":
        pixels = 1.0 - pixels
    channels = array.shape[-1] if array.ndim == 3 else 1
    return pixels, _basic_metadata("TIFF", pixels.shape[0], pixels.shape[1], channels, bits), bits or 32
