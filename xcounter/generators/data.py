"""Training data for generator fine-tuning: a Hugging Face imagefolder read into memory, and
batches / noise that are a pure function of (seed, step).

Why a pure function: an interrupted-then-resumed run must end with exactly the weights of an
uninterrupted one, so nothing may depend on how many steps ran in this process.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xcounter.errors import InputError

CAPTIONS_FILE = "metadata.jsonl"


@dataclass
class ImageCaptionSet:
    """All training images as uint8 `[N, C, H, W]` plus one caption per image."""

    images: torch.Tensor
    captions: list[str]
    folder: Path

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, list[str]]:
        """Images in [-1, 1] (the VAE's range) and their captions."""
        images = self.images[indices].float() / 127.5 - 1.0
        return images, [self.captions[i] for i in indices]


def resolve_split(data_dir: str | Path) -> Path:
    """`DIR` with metadata.jsonl, or `DIR/train` (the phantom dataset layout)."""
    data_dir = Path(data_dir)
    for folder in (data_dir, data_dir / "train"):
        if (folder / CAPTIONS_FILE).is_file():
            return folder
    raise InputError(f"no captions file: expected {data_dir / CAPTIONS_FILE} or "
                     f"{data_dir / 'train' / CAPTIONS_FILE} (Hugging Face imagefolder with file_name and text)")


def read_metadata(folder: Path) -> list[tuple[str, str]]:
    """(file_name, text) rows of an imagefolder's metadata.jsonl."""
    rows = []
    for number, line in enumerate((folder / CAPTIONS_FILE).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            rows.append((str(record["file_name"]), str(record["text"])))
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{folder / CAPTIONS_FILE} line {number}: expected JSON with 'file_name' and 'text'") from None
    if not rows:
        raise InputError(f"{folder / CAPTIONS_FILE} lists no images")
    return rows


def load_image_captions(data_dir: str | Path, channels: int | None = None,
                        resolution: int | None = None) -> ImageCaptionSet:
    """Read every image of the split; all must share one size and one mode.

    `channels` converts to 1 (L) or 3 (RGB) for the generator; `resolution` resizes (bicubic).
    """
    from PIL import Image

    folder = resolve_split(data_dir)
    rows = read_metadata(folder)
    arrays, sizes, modes = [], set(), set()
    for file_name, _ in rows:
        path = folder / file_name
        if not path.is_file():
            raise InputError(f"{folder / CAPTIONS_FILE} lists '{file_name}', which does not exist")
        with Image.open(path) as image:
            sizes.add(image.size)
            modes.add(image.mode)
            if len(sizes) > 1 or len(modes) > 1:
                raise InputError(f"images of mixed sizes or modes in {folder}: "
                                 f"sizes {sorted(sizes)}, modes {sorted(modes)}; make them all alike first")
            if image.size[0] != image.size[1]:
                raise InputError(f"images must be square, {path.name} is {image.size[0]}x{image.size[1]}")
            target_mode = {1: "L", 3: "RGB", None: "L" if image.mode in ("L", "I", "I;16", "F") else "RGB"}[channels]
            converted = image.convert(target_mode)
            if resolution is not None and converted.size != (resolution, resolution):
                converted = converted.resize((resolution, resolution), Image.BICUBIC)
            array = np.asarray(converted, dtype=np.uint8)
        arrays.append(array[:, :, None] if array.ndim == 2 else array)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageCaptionSet(images=images, captions=[text for _, text in rows], folder=folder)


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """A CPU generator seeded from (seed, step, salt) only."""
    mixed = np.random.SeedSequence([seed, step, salt]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed) & ((1 << 63) - 1))


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of the global batch at `step`: consecutive slices of per-epoch permutations."""
    start, indices = step * batch_size, []
    while len(indices) < batch_size:
        epoch, position = divmod(start, n)
        order = torch.randperm(n, generator=step_generator(seed, epoch, salt=1))
        take = min(batch_size - len(indices), n - position)
        indices.extend(order[position:position + take].tolist())
        start += take
    return indices
