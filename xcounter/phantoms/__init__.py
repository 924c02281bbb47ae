"""Phantom worlds: procedural chest radiographs and dermoscopy images whose attributes are known.

`make_phantom(domain, seed, **overrides)` is the ground truth the rest of xcounter is checked
against: the same seed with one attribute overridden is that image's exact counterfactual.
"""
from __future__ import annotations

import difflib
from types import ModuleType
from typing import Any

import numpy as np

from xcounter.errors import XCounterError

DOMAINS = ("cxr", "skin")


def domain_module(domain: str) -> ModuleType:
    """The module drawing `domain` ('cxr' or 'skin')."""
    if domain == "cxr":
        from xcounter.phantoms import cxr
        return cxr
    if domain == "skin":
        from xcounter.phantoms import skin
        return skin
    raise XCounterError(f"unknown phantom domain '{domain}'; use 'cxr' or 'skin'")


def attribute_keys(domain: str) -> list[str]:
    """Names an override may set: yaml attributes and detail keys."""
    module = domain_module(domain)
    return [*module.BINARY, *module.CONTINUOUS, *module.DETAILS]


def _coerce(module: ModuleType, name: str, value: Any) -> Any:
    if name in module.BINARY:
        return bool(value)
    if name in module.CONTINUOUS:
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise XCounterError(f"attribute '{name}' must lie in [0, 1], got {value}")
    return value


def sample_attributes(domain: str, seed: int, **overrides: Any) -> dict[str, Any]:
    """Attributes of phantom `seed` with `overrides` applied, without drawing it (fast)."""
    module = domain_module(domain)
    attributes = module.sample_attributes(int(seed))
    known = attribute_keys(domain)
    for name, value in overrides.items():
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            raise XCounterError(f"unknown {domain} phantom attribute '{name}'"
                                + (f"; did you mean '{hint[0]}'?" if hint else ""))
        attributes[name] = _coerce(module, name, value)
    return module.finalize(attributes)


def render_attributes(domain: str, seed: int, attributes: dict[str, Any], size: int = 128) -> np.ndarray:
    """Draw the phantom described by `attributes` (from `sample_attributes`) as H x W x C."""
    if not 32 <= int(size) <= 512:
        raise XCounterError(f"phantom size must be between 32 and 512 pixels, got {size}")
    return domain_module(domain).render(attributes, int(seed), int(size))


def make_phantom(domain: str, seed: int, size: int = 128, **attribute_overrides: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """(image H x W x C float32 in [0, 1], attributes) of phantom `seed` in `domain`.

    Overrides set attributes (e.g. `chest_tube=True`); everything else stays as the seed made it,
    so two calls differing in one override differ only in that attribute's pixels.
    """
    attributes = sample_attributes(domain, seed, **attribute_overrides)
    return render_attributes(domain, seed, attributes, size), attributes


def caption(attributes: dict[str, Any], domain: str, rng: np.random.Generator | int | None = None) -> str:
    """Report-style prompt for `attributes` (see `xcounter.phantoms.prompts`)."""
    from xcounter.phantoms.prompts import caption as _caption
    return _caption(attributes, domain, rng)


__all__ = ["make_phantom", "sample_attributes", "render_attributes", "caption", "attribute_keys", "DOMAINS"]
