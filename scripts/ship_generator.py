"""Copy a trained generator folder for shipping: fp16 safetensors, no checkpoints.

Why fp16: the zoo must stay under 40 MB, and these small models lose nothing measurable in half
precision (`load_generator` casts the weights back to float32). The copy is written beside the
destination and renamed into place, so a failed run never leaves a half-written model.

    python scripts/ship_generator.py runs/skin-gpu/phantom-skin xcounter/zoo/phantom-skin
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file


def ship(source: Path, destination: Path) -> float:
    """Write the fp16 copy of `source` at `destination`; return its size in MB."""
    staging = destination.with_name(destination.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("checkpoints"))
    for path in staging.rglob("*.safetensors"):
        tensors = load_file(path)
        save_file({k: (v.half() if v.is_floating_point() else v) for k, v in tensors.items()}, path,
                  metadata={"format": "pt"})
    if destination.exists():
        shutil.rmtree(destination)
    staging.rename(destination)
    return sum(p.stat().st_size for p in destination.rglob("*") if p.is_file()) / 1e6


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/ship_generator.py TRAINED_DIR DESTINATION_DIR")
    print(f"shipped {sys.argv[2]}: {ship(Path(sys.argv[1]), Path(sys.argv[2])):.1f} MB")
