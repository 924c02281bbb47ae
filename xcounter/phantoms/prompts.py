"""Report-style prompts for phantoms, written from their attributes.

The generator learns its text conditioning from these captions and the explainer later edits
with the yaml phrases, so captions are made of those same phrases (positive for present
findings, sometimes negative for absent ones) inside the yaml templates: one compact vocabulary.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from xcounter.attributes import AttributeSet
from xcounter.phantoms.vocab import vocabulary

#: chance of mentioning an absent finding with its negative phrase, and of a severity word
NEGATIVE_MENTION = 0.12
SEVERITY_MENTION = 0.5
ANATOMY_MENTION = 0.5


def _sentence(phrase: str) -> str:
    return phrase[:1].upper() + phrase[1:]


def _sided(phrases: tuple[str, ...], side: str | None) -> list[str]:
    """Phrases consistent with the finding's side: the sided one, or the unsided ones."""
    if side is None:
        return [p for p in phrases if not p.startswith(("right", "left"))] or list(phrases)
    sided = [p for p in phrases if p.startswith(side) or f" {side} " in f" {p} " or p.startswith(f"{side}-")]
    unsided = [p for p in phrases if not any(w in p for w in ("right", "left"))]
    return sided + unsided if sided else unsided or list(phrases)


def _severity(value: float | None) -> str | None:
    if value is None:
        return None
    return "small" if value < 0.5 else "moderate" if value < 0.8 else "large"


def _positive_phrase(name: str, attributes: dict[str, Any], vocab: AttributeSet, rng: np.random.Generator) -> str:
    phrases = vocab[name].positive
    side = None
    if name == "consolidation" and attributes.get("consolidation_lobe"):
        lobe = attributes["consolidation_lobe"]
        exact = [p for p in phrases if p.startswith(lobe)]
        side = lobe.split()[0]
        options = exact + _sided(phrases, None) if exact else _sided(phrases, None)
        return str(rng.choice(options))
    for key in (f"{name}_side", f"{name}_letter"):
        if attributes.get(key):
            side = {"R": "right", "L": "left"}.get(attributes[key], attributes[key])
    options = _sided(phrases, side) if side else list(phrases)
    if name == "laterality_marker" and side:  # the letter on the film, not a body side
        options = [p for p in phrases if p.startswith(side) or "marker" == p.split()[-1] and not p.startswith(("right", "left"))]
    phrase = str(rng.choice(options))
    size = attributes.get(f"{name}_size")
    if size is not None and rng.random() < SEVERITY_MENTION:
        phrase = f"{_severity(size)} {phrase}"
    return phrase


def caption(attributes: dict[str, Any], domain: str, rng: np.random.Generator | int | None = None) -> str:
    """A report-style prompt: present findings with positive phrases, a few absent ones negated.

    With no binary finding present the yaml's neutral prompt is returned unchanged."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    vocab = vocabulary(domain)
    order = {"acquisition": 0, "pathology": 1, "device": 2, "artifact": 2, "anatomy": 3}
    present, absent = [], []
    for attribute in sorted(vocab, key=lambda a: order.get(a.kind, 4)):
        value = attributes.get(attribute.name)
        if attribute.type == "binary":
            (present if value else absent).append(attribute.name)
    if not present:
        return vocab.neutral_prompt
    sentences = [_sentence(_positive_phrase(name, attributes, vocab, rng)) for name in present]
    for attribute in vocab:  # extremes of identity, in words a report would use
        value = attributes.get(attribute.name)
        if attribute.type == "continuous" and value is not None and rng.random() < ANATOMY_MENTION:
            if value < 0.15 and attribute.negative:
                sentences.append(_sentence(str(rng.choice(attribute.negative))))
            elif value > 0.85 and attribute.positive:
                sentences.append(_sentence(str(rng.choice(attribute.positive))))
    for name in absent:
        if rng.random() < NEGATIVE_MENTION and vocab[name].negative:
            sentences.append(_sentence(str(rng.choice(vocab[name].negative))))
    template = str(rng.choice(vocab.templates))
    return template.format(phrase=". ".join(sentences))
