"""Contact sheets: a grid of phantoms in one PNG, for looking at what the generator learns from."""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np

from xcounter.errors import XCounterError
from xcounter.phantoms import make_phantom
from xcounter.phantoms.streams import item_seed
from xcounter.utils.atomic import write_bytes_atomic


def contact_sheet(domain: str, n: int = 16, seed: int = 0, size: int = 128, gap: int = 2) -> np.ndarray:
    """H x W x 3 float grid of phantoms 0..n-1 of a dataset made with `seed` (near-square)."""
    if n <= 0:
        raise XCounterError(f"the number of phantoms must be positive, got {n}")
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    sheet = np.ones((rows * (size + gap) - gap, columns * (size + gap) - gap, 3), np.float32)
    for i in range(n):
        image, _ = make_phantom(domain, item_seed(seed, i), size=size)
        r, c = divmod(i, columns)
        sheet[r * (size + gap): r * (size + gap) + size, c * (size + gap): c * (size + gap) + size] = \
            np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    return sheet


def write_sheet(domain: str, out: str | os.PathLike, n: int = 16, seed: int = 0, size: int = 128) -> Path:
    """Write `contact_sheet(...)` as a PNG at `out`."""
    from xcounter.phantoms.dataset import to_uint8
    if Path(out).suffix.lower() != ".png" and not Path(out).is_dir():  # a folder gets its own one line on writing
        raise XCounterError(f"--out must be a .png file, got '{out}'")
    buffer = io.BytesIO()
    to_uint8(contact_sheet(domain, n, seed, size)).save(buffer, format="PNG")
    write_bytes_atomic(out, buffer.getvalue())
    return Path(out)
