"""Write a phantom dataset as a Hugging Face imagefolder: PNGs + metadata.jsonl per split.

Item i depends only on (seed, i) (and the shortcut, if any), so a dataset is reproduced exactly
by its seed whatever the number of workers. The folder appears only when complete (built in a
temp sibling, then renamed): an error or Ctrl-C never leaves a half-written dataset.
"""
from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from xcounter.phantoms.vocab import vocabulary
from xcounter.errors import XCounterError
from xcounter.phantoms import DOMAINS, render_attributes, sample_attributes
from xcounter.phantoms.prompts import caption
from xcounter.phantoms.shortcuts import Shortcut, plan_item, validate_shortcut
from xcounter.utils.atomic import atomic_dir, write_text_atomic

SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))


def split_of(index: int, n: int) -> str:
    """80/10/10 by index: the first 80% train, then val, then test."""
    if index < round(0.8 * n):
        return "train"
    return "val" if index < round(0.9 * n) else "test"


def to_uint8(image: np.ndarray) -> Image.Image:
    """H x W x C float image in [0, 1] -> PIL image ('L' for one channel, 'RGB' for three)."""
    array = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(array[:, :, 0], "L") if array.shape[2] == 1 else Image.fromarray(array, "RGB")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return round(float(value), 5)
    if isinstance(value, float):
        return round(value, 5)
    return value


def make_item(domain: str, seed: int, index: int, size: int, shortcut: Shortcut | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Image and metadata record of dataset item `index` (no file written)."""
    phantom_seed, overrides = plan_item(domain, seed, index, shortcut)
    attributes = sample_attributes(domain, phantom_seed, **overrides)
    image = render_attributes(domain, phantom_seed, attributes, size)
    text = caption(attributes, domain, np.random.default_rng([int(seed), int(index), 7]))
    record = {"file_name": f"{index:06d}.png", "text": text, "domain": domain, "index": index,
              "phantom_seed": phantom_seed}
    record.update({key: _jsonable(value) for key, value in attributes.items()})
    return image, record


def _write_item(job: tuple[str, int, int, int, int, Shortcut | None, str]) -> tuple[str, dict[str, Any]]:
    domain, seed, index, n, size, shortcut, folder = job
    image, record = make_item(domain, seed, index, size, shortcut)
    split = split_of(index, n)
    to_uint8(image).save(Path(folder) / split / record["file_name"], optimize=False, compress_level=4)
    return split, record


def _check_writable(out: Path) -> None:
    ancestor = out.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise XCounterError(f"cannot write the dataset to '{out}': '{ancestor}' is not a writable folder")
    if out.exists() and not out.is_dir():
        raise XCounterError(f"cannot write the dataset to '{out}': it is a file")


def check_options(domain: str, n: int, size: int, shortcut: str | None, target: str | None,
                  rho: float | None) -> Shortcut | None:
    """Validate dataset options before any work; returns the shortcut spec (or None)."""
    if domain not in DOMAINS:
        raise XCounterError(f"unknown phantom domain '{domain}'; use 'cxr' or 'skin'")
    if int(n) <= 0:
        raise XCounterError(f"the number of images must be positive, got {n}")
    if not 32 <= int(size) <= 512:
        raise XCounterError(f"phantom size must be between 32 and 512 pixels, got {size}")
    if shortcut is None:
        if target is not None or rho is not None:
            raise XCounterError("--target and --rho only apply together with --shortcut")
        return None
    if target is None:
        raise XCounterError("--shortcut needs --target (the label the attribute is tied to)")
    return validate_shortcut(domain, shortcut, target, 0.75 if rho is None else rho)


def write_dataset(domain: str, n: int, out: str | os.PathLike, seed: int = 0, size: int = 128,
                  shortcut: str | None = None, target: str | None = None, rho: float | None = None,
                  workers: int = 2, overwrite: bool = False, progress: bool = True) -> Path:
    """Write `n` phantoms of `domain` to `out/{train,val,test}/` with `metadata.jsonl` files.

    Each record has `file_name`, `text` (a report-style caption), every attribute, detail keys
    and the disease labels (0/1). `shortcut`/`target`/`rho` plant a spurious correlation
    (see `xcounter.phantoms.shortcuts`). Returns the dataset folder."""
    spec = check_options(domain, n, size, shortcut, target, rho)
    out = Path(out)
    _check_writable(out)
    from xcounter.phantoms.lungs import lung_templates
    if domain == "cxr":
        lung_templates()  # load once in the parent; forked workers inherit it
    records: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in SPLITS}
    try:
        with atomic_dir(out, overwrite=overwrite) as folder:
            for name, _ in SPLITS:
                (folder / name).mkdir()
            jobs = [(domain, int(seed), i, int(n), int(size), spec, str(folder)) for i in range(int(n))]
            bar = tqdm(total=int(n), desc=f"{domain} phantoms", unit="img", disable=not progress)
            if workers > 1 and n > 32:
                context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
                with context.Pool(int(workers)) as pool:
                    for split, record in pool.imap(_write_item, jobs, chunksize=16):
                        records[split].append(record)
                        bar.update()
            else:
                for job in jobs:
                    split, record = _write_item(job)
                    records[split].append(record)
                    bar.update()
            bar.close()
            for name, items in records.items():
                lines = "".join(json.dumps(record) + "\n" for record in items)
                write_text_atomic(folder / name / "metadata.jsonl", lines)
            info = {
                "domain": domain, "n": int(n), "seed": int(seed), "size": int(size),
                "splits": {name: len(items) for name, items in records.items()},
                "labels": list(vocabulary(domain).labels), "attributes": vocabulary(domain).names,
                "shortcut": None if spec is None else {"attribute": spec.attribute, "target": spec.target, "rho": spec.rho},
            }
            write_text_atomic(folder / "dataset.json", json.dumps(info, indent=2) + "\n")
    except OSError as exc:  # permission, read-only or full disk: the temp folder is already gone
        raise XCounterError(f"cannot write the dataset to '{out}': {exc.strerror or exc}") from None
    return out


def read_metadata(folder: str | os.PathLike, split: str = "train") -> list[dict[str, Any]]:
    """Records of one split of a dataset written by `write_dataset`."""
    path = Path(folder) / split / "metadata.jsonl"
    if not path.is_file():
        raise XCounterError(f"'{folder}' is not a phantom dataset (no {split}/metadata.jsonl)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
