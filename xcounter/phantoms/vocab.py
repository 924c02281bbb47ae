"""The bundled attribute vocabularies, parsed once per process (YAML parsing costs ~0.1 s)."""
from __future__ import annotations

import functools

from xcounter.attributes import AttributeSet, load_attributes


@functools.lru_cache(maxsize=4)
def vocabulary(domain: str) -> AttributeSet:
    """`load_attributes(domain)`, cached: AttributeSet is frozen, so sharing it is safe."""
    return load_attributes(domain)
