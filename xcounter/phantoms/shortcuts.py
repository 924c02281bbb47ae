"""Planted shortcuts (FastDiME's protocol): a spurious attribute tied to a label with strength rho.

In a shortcut dataset the target label is positive in about half the images; the spurious
attribute is present in a fraction `rho` of positives and `1 - rho` of negatives (rho = 0.5: no
shortcut, rho = 1: the attribute alone predicts the label). Only attributes are sampled here, no
pixels, so planning 5,000 items takes a moment.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xcounter.phantoms.vocab import vocabulary
from xcounter.errors import XCounterError
from xcounter.phantoms import sample_attributes
from xcounter.phantoms.streams import item_seed, stream

MAX_ATTEMPTS = 400


@dataclass(frozen=True)
class Shortcut:
    attribute: str   # the spurious attribute (binary yaml attribute)
    target: str      # the disease label it is tied to
    rho: float       # P(attribute | label positive) = P(no attribute | label negative)


def validate_shortcut(domain: str, attribute: str, target: str, rho: float) -> Shortcut:
    """Check names and rho; raise XCounterError with one clear sentence otherwise."""
    vocab = vocabulary(domain)
    spec = vocab[attribute]  # unknown attribute -> XCounterError with a suggestion
    if spec.type != "binary":
        raise XCounterError(f"shortcut attribute '{attribute}' is continuous; use a binary attribute")
    if target not in vocab.labels:
        raise XCounterError(f"unknown {domain} label '{target}'; known: {', '.join(vocab.labels)}")
    if target in spec.labels and (domain == "cxr" or target == spec.criterion):
        raise XCounterError(f"'{attribute}' is the finding that defines '{target}', not a spurious attribute")
    if not 0.0 <= float(rho) <= 1.0:
        raise XCounterError(f"rho must lie in [0, 1], got {rho}")
    return Shortcut(attribute, target, float(rho))


def plan_item(domain: str, seed: int, index: int, shortcut: Shortcut | None) -> tuple[int, dict[str, Any]]:
    """(phantom seed, overrides) of dataset item `index`; depends only on (seed, index, shortcut).

    With a shortcut, the item's label y ~ Bernoulli(0.5) and attribute a ~ Bernoulli(rho if y else
    1 - rho) are drawn first; phantoms are then drawn (attempt 0, 1, ...) with `a` fixed until
    one carries label y, so labels that derive from several features (Melanoma) work too."""
    if shortcut is None:
        return item_seed(seed, index), {}
    rng = stream(item_seed(seed, index), "shortcut")
    label = bool(rng.random() < 0.5)
    present = bool(rng.random() < (shortcut.rho if label else 1.0 - shortcut.rho))
    vocab = vocabulary(domain)
    defining = [a.name for a in vocab if shortcut.target in a.labels]
    overrides: dict[str, Any] = {shortcut.attribute: present}
    if len(defining) == 1:  # the label is one finding: set it directly
        overrides[defining[0]] = label
        return item_seed(seed, index), overrides
    for attempt in range(MAX_ATTEMPTS):
        phantom_seed = item_seed(seed, index, attempt)
        if bool(sample_attributes(domain, phantom_seed, **overrides)[shortcut.target]) == label:
            return phantom_seed, overrides
    raise XCounterError(f"could not draw a phantom with {shortcut.target}={int(label)} and "
                        f"{shortcut.attribute}={present} in {MAX_ATTEMPTS} tries")


def plan(domain: str, n: int, seed: int, shortcut: Shortcut | None = None) -> list[tuple[int, dict[str, Any]]]:
    """Plans of items 0..n-1 (see `plan_item`)."""
    return [plan_item(domain, seed, i, shortcut) for i in range(n)]


def measured_rho(attributes: list[dict[str, Any]], shortcut: Shortcut) -> tuple[float, float, float]:
    """(P(attribute | positive), P(no attribute | negative), label prevalence) of sampled items."""
    labels = np.array([bool(a[shortcut.target]) for a in attributes])
    present = np.array([bool(a[shortcut.attribute]) for a in attributes])
    positives = present[labels].mean() if labels.any() else float("nan")
    negatives = (~present[~labels]).mean() if (~labels).any() else float("nan")
    return float(positives), float(negatives), float(labels.mean())
