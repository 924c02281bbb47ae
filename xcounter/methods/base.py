"""One small interface for every counterfactual method (ours, Latent Shift, SDEdit, random),
so benchmarks and reports can swap them like captum swaps attribution methods."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from xcounter.attributes import Attribute, AttributeSet
    from xcounter.classifiers import Classifier
    from xcounter.explanation import Counterfactual
    from xcounter.generators import Inversion, SDGenerator

SIGNS = ("add", "remove")


@dataclass
class EditContext:
    """What every method needs about one scan, computed once and shared across attributes."""
    classifier: "Classifier"
    generator: "SDGenerator"
    attributes: "AttributeSet"
    inversion: "Inversion"
    source_embedding: torch.Tensor  # [77, D] embedding of the source prompt
    target: str  # classifier label being explained
    target_index: int
    seed: int = 0
    steps: int | None = None
    prefix: list[torch.Tensor] | None = None  # shared denoising prefix from z_T with the source prompt
    directions: dict[str, torch.Tensor] = field(default_factory=dict)  # attribute -> [77, D] direction
    max_nfe: int | None = None  # budget per counterfactual
    flip_margin: float = 0.0  # logits past the threshold a decision must move to count as flipped
    prompt: str | None = None  # the source prompt's text (lets an edit restate what the report says)


@runtime_checkable
class CounterfactualMethod(Protocol):
    """`generate` returns a Counterfactual whose `minimal_strength` is on the method's own [0, 1] scale."""
    name: str

    def generate(self, context: EditContext, attribute: "Attribute | None", sign: str) -> "Counterfactual":
        ...
