"""`Scan`: the pixels and the safe metadata of one image, and `load_scan`, the one way to get it."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from xcounter.errors import InputError
from xcounter.io.pixels import MAX_PIXELS, check_size, to_unit_pixels


@dataclass(eq=False)  # pixel arrays have no single truth value; compare fields explicitly
class Scan:
    """One image as xcounter sees it.

    pixels: `H x W x C` float32 in [0, 1] (C = 1 gray, 3 RGB; alpha is composited over black).
    metadata: allowlisted facts only (format, size, bit depth; for DICOM also Modality, ViewPosition,
        spacing, photometric, BurnedInAnnotation). Never names, IDs, dates, institutions or UIDs.
    name: the file's base name (no folders), or "array" / "image" for in-memory input.
    bit_depth: bits per stored sample in the source (8, 16, 12 for many DICOMs, ...).
    """
    pixels: np.ndarray
    metadata: dict = field(default_factory=dict)
    name: str = "array"
    bit_depth: int = 32

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])

    def to_tensor(self, channels: int | None = None) -> torch.Tensor:
        """`[1, C, H, W]` float32 in [0, 1]; `channels` 1 averages RGB, 3 repeats gray."""
        tensor = torch.from_numpy(self.pixels.transpose(2, 0, 1).copy()).unsqueeze(0)  # never aliases pixels
        if channels is None or channels == tensor.shape[1]:
            return tensor
        if channels == 1:
            return tensor.mean(dim=1, keepdim=True)
        if channels == 3 and tensor.shape[1] == 1:
            return tensor.repeat(1, 3, 1, 1)
        raise InputError(f"cannot convert a {tensor.shape[1]}-channel scan to {channels} channels")

    def summary(self) -> dict:
        """JSON-ready description (no pixels)."""
        return {"name": self.name, "height": self.height, "width": self.width, "channels": self.channels,
                "bit_depth": self.bit_depth, "metadata": dict(self.metadata)}

    def __repr__(self) -> str:  # the dataclass default would dump every pixel
        return (f"Scan(name={self.name!r}, size={self.width}x{self.height}, channels={self.channels}, "
                f"bit_depth={self.bit_depth}, metadata={self.metadata!r})")


def _sniff(path: Path) -> str:
    """Pick the reader from the file's first bytes, not its (often wrong) extension."""
    with open(path, "rb") as handle:
        head = handle.read(132)
    if not head:
        raise InputError(f"'{path.name}' is an empty file (0 bytes)")
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    from xcounter.io.images import is_tiff

    if is_tiff(head):
        return "tiff"
    if path.suffix.lower() in (".dcm", ".dicom"):  # DICOM without the 128-byte preamble
        return "dicom"
    return "pil"


def _load_file(path: Path, max_pixels: int | None) -> Scan:
    if not path.exists():
        raise InputError(f"file not found: {path}")
    if not path.is_file():
        raise InputError(f"'{path}' is not a file")
    try:
        kind = _sniff(path)
    except PermissionError:
        raise InputError(f"'{path.name}' cannot be read (permission denied)") from None
    if kind == "dicom":
        from xcounter.io.dicom import read_dicom as reader
    elif kind == "tiff":
        from xcounter.io.images import read_tiff as reader
    else:
        from xcounter.io.images import read_pil_file as reader
    pixels, metadata, bits = reader(path, max_pixels)
    return Scan(pixels=pixels, metadata=metadata, name=path.name, bit_depth=bits)


def _load_array(array: np.ndarray, max_pixels: int | None) -> Scan:
    """In-memory arrays: uint8 / uint16 scale by their type, floats must already lie in [0, 1]."""
    if array.ndim not in (2, 3):
        raise InputError(f"array of shape {tuple(array.shape)} is not an image (expected HxW or HxWxC)")
    check_size(array.shape[0], array.shape[1], max_pixels, "array")
    pixels = to_unit_pixels(array, None, "array")
    bits = array.dtype.itemsize * 8 if np.issubdtype(array.dtype, np.integer) else 32
    metadata = {"Format": "array", "Rows": pixels.shape[0], "Columns": pixels.shape[1],
                "Channels": int(array.shape[2]) if array.ndim == 3 else 1, "BitsStored": bits}
    return Scan(pixels=pixels, metadata=metadata, name="array", bit_depth=bits)


def load_scan(source: "str | os.PathLike | np.ndarray | Image.Image | Scan",
              max_pixels: int | None = MAX_PIXELS) -> Scan:
    """Load PNG / JPEG / TIFF (8/16-bit) / DICOM, a numpy array or a PIL image as a `Scan`.

    Raises `InputError` (one clear sentence) for missing, empty, damaged, unsupported, compressed
    without codec, or over-large (`max_pixels`, default 100 megapixels) inputs.
    """
    if isinstance(source, Scan):
        check_size(source.height, source.width, max_pixels, f"scan '{source.name}'")
        return source
    if isinstance(source, np.ndarray):
        return _load_array(source, max_pixels)
    if isinstance(source, Image.Image):
        from xcounter.io.images import read_pil_image

        pixels, metadata, bits = read_pil_image(source, "image", max_pixels)
        return Scan(pixels=pixels, metadata=metadata, name="image", bit_depth=bits)
    if isinstance(source, (str, os.PathLike)):
        return _load_file(Path(source).expanduser(), max_pixels)
    raise InputError(f"cannot load a scan from a {type(source).__name__}; pass a file path, array or PIL image")
