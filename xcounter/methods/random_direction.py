"""Random-direction control: the same trajectory search along a random text-embedding direction.

Why it is here: if a random direction of the same length flipped decisions as easily as an
attribute's language direction, a flip would say nothing about the attribute. The random direction
has exactly the norm of the attribute's direction, is seeded (scan seed + attribute name), and runs
through the "trajectory" method itself (same candidates, budget and Bézier search), so the only
difference is the direction.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import TYPE_CHECKING

import torch

from xcounter.errors import XCounterError
from xcounter.explanation import Counterfactual
from xcounter.methods.base import SIGNS, EditContext

if TYPE_CHECKING:
    from xcounter.attributes import Attribute


def random_direction(like: torch.Tensor, seed: int) -> torch.Tensor:
    """A Gaussian direction shaped like `like`, rescaled to exactly `like`'s norm (seeded)."""
    draw = torch.randn(like.shape, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    norm = float(like.detach().double().norm())
    return (draw / draw.norm() * norm).to(like.dtype).to(like.device)


def direction_seed(seed: int, attribute: str) -> int:
    """A stable per-attribute seed (Python's hash() is salted per process; crc32 is not)."""
    return (int(seed) * 1_000_003 + zlib.crc32(attribute.encode("utf-8"))) % (2 ** 63)


def language_direction(context: EditContext, name: str) -> torch.Tensor:
    """The attribute's direction from the context, or fitted from its phrases when the context has none."""
    if name in context.directions:
        return context.directions[name]
    from xcounter.disentangle.directions import LanguageDirections

    # norm only: orthogonalisation keeps norms, so the raw direction has the length the engine uses
    return LanguageDirections(context.generator, context.attributes, names=[name], disentangle=False) \
        .fit().directions_[name]


class RandomDirection:
    """The "trajectory" method with the attribute's direction d_a replaced by `random_direction(d_a, seed)`.

    Keyword arguments (alpha, strengths, swap_steps, tolerance, max_nfe, refine_nfe, oracle) go to
    `TrajectoryMethod`, so both share every setting but the direction.
    """

    name = "random"

    def __init__(self, **trajectory_options) -> None:
        from xcounter.methods.trajectory import TrajectoryMethod

        # the control edits by its direction alone: restating the report would be the real attribute edit
        self.search = TrajectoryMethod(**{**trajectory_options, "restate": False})
        self._scan: tuple[int, int] | None = None

    def reset(self) -> None:
        """Forget cached trajectories (the explainer calls this per scan)."""
        self.search.reset()
        self._scan = None

    def direction(self, context: EditContext, attribute: "Attribute") -> torch.Tensor:
        reference = language_direction(context, attribute.name)
        return random_direction(reference, direction_seed(context.seed, attribute.name))

    def generate(self, context: EditContext, attribute: "Attribute | None", sign: str) -> Counterfactual:
        if attribute is None:
            raise XCounterError("the random-direction control needs the attribute whose direction norm it matches")
        if sign not in SIGNS:
            raise XCounterError(f"sign must be one of {', '.join(SIGNS)}, got '{sign}'")
        scan = (id(context.inversion), int(context.seed))
        if scan != self._scan:  # the search caches trajectories per inversion; a new seed is a new direction
            self.reset()
            self._scan = scan
        randomised = dataclasses.replace(
            context, directions={**context.directions, attribute.name: self.direction(context, attribute)})
        counterfactual = self.search.generate(randomised, attribute, sign)
        counterfactual.method = self.name
        return counterfactual
