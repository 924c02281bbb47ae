"""Read DICOM with pydicom: modality LUT, then VOI LUT / window, then MONOCHROME1 inversion.

Only allowlisted, non-identifying attributes leave this module (DICOM PS3.15 Annex E lists what
identifies a patient: names, IDs, dates, institutions, UIDs, free text). We copy the few acquisition
facts a classifier report needs and drop everything else, rather than trying to blank a denylist.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from xcounter.errors import InputError
from xcounter.io.pixels import brief_error, check_size, to_unit_pixels

#: the only DICOM attributes xcounter ever returns
ALLOWED_KEYWORDS = ("Modality", "ViewPosition", "Rows", "Columns", "PixelSpacing", "ImagerPixelSpacing",
                    "BitsStored", "PhotometricInterpretation", "BurnedInAnnotation")
_CODE_STRING = re.compile(r"^[A-Z0-9 _]{0,16}$")  # DICOM CS value: anything else is not a code


def _code(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or isinstance(value, (list, tuple)):
        return None
    text = str(value).strip().upper()
    return text if text and _CODE_STRING.match(text) else None


def _spacing(ds, keyword: str) -> list[float] | None:
    value = ds.get(keyword)
    try:
        numbers = [float(v) for v in value] if value is not None else None
    except (TypeError, ValueError):
        return None
    return numbers if numbers and len(numbers) == 2 and all(np.isfinite(numbers)) else None


def safe_metadata(ds, channels: int, frames: int) -> dict:
    """Build metadata from the allowlist only; values are re-typed so no raw element escapes."""
    burned = _code(ds, "BurnedInAnnotation")
    metadata = {
        "Format": "DICOM",
        "Modality": _code(ds, "Modality"),
        "ViewPosition": _code(ds, "ViewPosition"),
        "Rows": int(ds.Rows),
        "Columns": int(ds.Columns),
        "Channels": int(channels),
        "BitsStored": int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0) or None,
        "PhotometricInterpretation": _code(ds, "PhotometricInterpretation"),
        "PixelSpacing": _spacing(ds, "PixelSpacing"),
        "ImagerPixelSpacing": _spacing(ds, "ImagerPixelSpacing"),
        # text burned into the pixels (names, dates) cannot be removed by metadata filtering: flag it
        "BurnedInAnnotation": {"YES": True, "NO": False}.get(burned or ""),
    }
    if frames > 1:
        metadata["Frames"] = int(frames)
    return metadata


def _check_decoder(ds, name: str) -> None:
    """Fail with the packages to install when the pixel data is compressed with a missing codec."""
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise InputError(f"DICOM '{name}' uses transfer syntax {syntax} that pydicom cannot decode") from None
    if not decoder.is_available:
        raise InputError(
            f"DICOM '{name}' is compressed with {syntax.name} and no decoder for it is installed; "
            "install pylibjpeg with its plugins (pip install pylibjpeg pylibjpeg-libjpeg "
            "pylibjpeg-openjpeg) or python-gdcm (pip install python-gdcm)"
        )


def _display_range(ds, bits: int) -> tuple[float, float] | None:
    """Output range of modality + VOI transforms over every storable value (None: > 16 bits).

    Normalising by this range, not by the image's own min/max, keeps absolute intensities:
    a window saturates to exactly 0 and 1, and an unwindowed image is not contrast-stretched.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if bits > 16:
        return None
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ramp = np.arange(low, high + 1, dtype=np.int64)
    shown = apply_voi_lut(apply_modality_lut(ramp, ds), ds, index=0)
    return float(np.min(shown)), float(np.max(shown))


def _grayscale(array: np.ndarray, ds, name: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    bits = int(ds.get("BitsStored") or array.dtype.itemsize * 8)
    shown = apply_voi_lut(apply_modality_lut(array, ds), ds, index=0).astype(np.float64)
    value_range = _display_range(ds, bits) or (float(shown.min()), float(shown.max()))
    low, high = value_range
    if not np.isfinite(shown).all():
        raise InputError(f"DICOM '{name}' has NaN or infinite pixel values")
    scaled = (shown - low) / (high - low) if high > low else np.zeros_like(shown)
    pixels = scaled.clip(0.0, 1.0).astype(np.float32)[:, :, None]
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # high values mean dark: invert
        pixels = 1.0 - pixels
    return pixels


def read_dicom(path: Path, max_pixels: int | None) -> tuple[np.ndarray, dict, int]:
    """Decode the first frame of a DICOM file; returns (pixels HxWxC float32, safe metadata, bits stored).

    pydicom's warnings about odd-but-readable files are silenced: they can quote element values.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _read_dicom(path, max_pixels)


def _read_dicom(path: Path, max_pixels: int | None) -> tuple[np.ndarray, dict, int]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_color_lut, pixel_array

    name = path.name
    try:
        ds = pydicom.dcmread(path, force=path.suffix.lower() in (".dcm", ".dicom"))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"'{name}' is not a readable DICOM file ({type(exc).__name__})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(f"DICOM '{name}' holds no image (no Pixel Data element)")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise InputError(f"DICOM '{name}' lacks valid Rows/Columns") from None
    check_size(rows, columns, max_pixels, f"DICOM '{name}'")
    _check_decoder(ds, name)
    frames = int(ds.get("NumberOfFrames") or 1)
    try:
        array = pixel_array(ds, index=0) if frames > 1 else ds.pixel_array
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        if photometric in ("MONOCHROME1", "MONOCHROME2"):
            pixels = _grayscale(array, ds, name)
        elif photometric == "PALETTE COLOR":
            colour = apply_color_lut(array, ds)
            pixels = to_unit_pixels(colour, colour.dtype.itemsize * 8, f"DICOM '{name}'")
        else:  # RGB, or YBR already converted to RGB by pydicom
            pixels = to_unit_pixels(array, int(ds.get("BitsStored") or 0) or None, f"DICOM '{name}'")
    except InputError:
        raise
    except Exception as exc:  # pydicom raises many types for damaged pixel data
        detail = f"{type(exc).__name__}: {brief_error(exc)}"
        raise InputError(f"DICOM '{name}' pixel data cannot be decoded ({detail})") from None
    bits = int(ds.get("BitsStored") or 16)
    return pixels, safe_metadata(ds, pixels.shape[-1], frames), bits
