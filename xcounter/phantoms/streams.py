"""Named random streams: one independent generator per attribute.

Overriding one attribute (say `chest_tube=True`) must leave every other attribute and every other
pixel as the seed made them; giving each attribute its own stream, keyed by (seed, name), does
that, because no draw for one attribute can shift the draws of another.
"""
from __future__ import annotations

import zlib

import numpy as np


def stream(seed: int, name: str) -> np.random.Generator:
    """The generator for `name` in phantom `seed` (stable across runs and platforms)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFF, zlib.crc32(name.encode())])


def item_seed(seed: int, index: int, attempt: int = 0) -> int:
    """Phantom seed of item `index` of a dataset made with `seed` (depends on nothing else)."""
    return int(np.random.SeedSequence([int(seed), int(index), int(attempt)]).generate_state(1, np.uint64)[0] >> 16)
