"""Swap-step trajectories: the paper's edit path through latent space.

Denoise with the source embedding until step λ, then with the attribute-edited embedding
E(src) + sign·α·d_a. A late λ leaves little denoising to the edit (small edit), λ = 0 edits from
the start (strongest edit, anatomy may drift). The z_0 reached for each λ is a point P_k of the
trajectory; a Bézier curve through the ordered points gives a continuous edit parameter t
that is decoded by the VAE alone (no UNet, no NFE) so the minimal flip can be bisected cheaply.
"""
from __future__ import annotations

from math import comb
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from xcounter.generators import SDGenerator

SIGN_VALUE = {"add": 1.0, "remove": -1.0}
#: default edit scale α of E(src) + sign·α·d_a. A template-averaged prompt difference (α = 1) moves the
#: small generators without guidance too little to change a decision; α = 2 with edit guidance 3 draws the
#: attribute fully at the strongest swap step while anatomy stays (measured on the phantom models,
#: reports/benchmarks.md); much larger α leaves the embedding manifold and blurs the image
DEFAULT_ALPHA = 2.0
#: default edit guidance w after the swap: eps_src + w (eps_edit - eps_src). Small generators sampled without
#: classifier-free guidance (so DDIM inversion stays exact) follow an edited prompt only weakly; w = 3 draws
#: a device or finding the classifier and the oracle both see, at two UNet evaluations per edited step. A
#: generator that needs less (or more) sets its own (`resolve_edit_guidance`): both phantom models use 2
DEFAULT_EDIT_GUIDANCE = 3.0
#: default candidate edit strengths (1 - λ/steps) evaluated in one batch per attribute and sign
DEFAULT_STRENGTHS = (0.25, 0.5, 0.75, 1.0)


def resolve_edit_guidance(explicit: float | None, generator) -> float:
    """The w edits are drawn with: an explicit one, else the generator's own (`edit_guidance` in its
    xcounter.json), else `DEFAULT_EDIT_GUIDANCE`."""
    if explicit is not None:
        return float(explicit)
    own = getattr(generator, "edit_guidance", None)
    return DEFAULT_EDIT_GUIDANCE if own is None else float(own)


def resolve_edit_settings(alpha: float | None, edit_guidance: float | None, generator,
                          kind: str | None = None, sign: str | None = None) -> tuple[float, float]:
    """(α, w) an edit of an attribute of `kind` (toward `sign`) is drawn with. Each is the explicit value when
    given, else the generator's own for that kind and sign (`kind_edits` in its xcounter.json: "KIND:SIGN"
    over "KIND"), else its own default (`resolve_edit_guidance`; α: `DEFAULT_ALPHA`)."""
    edits = getattr(generator, "kind_edits", None) or {}
    own = {}
    if kind is not None:
        own = {**edits.get(kind, {}), **(edits.get(f"{kind}:{sign}", {}) if sign else {})}
    alpha = float(alpha) if alpha is not None else float(own.get("alpha", DEFAULT_ALPHA))
    return alpha, resolve_edit_guidance(edit_guidance if edit_guidance is not None else own.get("edit_guidance"),
                                        generator)


def strength_of(swap_step: int, steps: int) -> float:
    """Edit strength of a swap at denoising step λ: 1 - λ/steps (0 = no edit, 1 = edit from the start)."""
    if steps <= 0:
        raise ValueError("steps must be positive")
    return 1.0 - float(swap_step) / float(steps)


def swap_step_of(strength: float, steps: int) -> int:
    """The denoising step λ whose swap gives (approximately) this strength."""
    return int(min(steps, max(0, round(steps * (1.0 - float(strength))))))


def evaluations_per_step(guidance_scale: float = 1.0, edit_guidance: float = 1.0) -> int:
    """UNet evaluations per edited denoising step: CFG doubles it, and so does edit guidance."""
    return (2 if guidance_scale > 1.0 else 1) * (2 if edit_guidance != 1.0 else 1)


def swap_cost(swap_step: int, steps: int, guidance_scale: float = 1.0, edit_guidance: float = 1.0) -> int:
    """UNet sample-evaluations a swap at λ costs once the source prefix is shared."""
    return (steps - swap_step) * evaluations_per_step(guidance_scale, edit_guidance)


def select_swap_steps(steps: int, strengths: Sequence[float] = DEFAULT_STRENGTHS, max_nfe: int | None = None,
                      guidance_scale: float = 1.0, edit_guidance: float = 1.0) -> list[int]:
    """Swap steps for the candidate strengths that fit in `max_nfe`, sorted late (weak) to early (strong).

    The strongest edit is kept first when it fits (it decides whether any flip exists and ends the
    Bézier curve); then the cheapest intermediate candidates fill the rest of the budget. When not
    even the strongest fits, the strongest edit the budget allows replaces it.
    """
    wanted = sorted({swap_step_of(s, steps) for s in strengths if s > 0}, reverse=True)
    wanted = [w for w in wanted if w < steps]
    if not wanted:
        return []
    if max_nfe is None:
        return wanted
    unit = evaluations_per_step(guidance_scale, edit_guidance)
    strongest = wanted[-1]
    if swap_cost(strongest, steps, guidance_scale, edit_guidance) > max_nfe:
        strongest = steps - max_nfe // unit
        if strongest >= steps:
            return []
    chosen, spent = [strongest], swap_cost(strongest, steps, guidance_scale, edit_guidance)
    for swap_step in wanted:  # cheapest (latest) first
        if swap_step <= strongest:
            continue
        cost = swap_cost(swap_step, steps, guidance_scale, edit_guidance)
        if spent + cost <= max_nfe:
            chosen.append(swap_step)
            spent += cost
    return sorted(chosen, reverse=True)


def edited_embedding(source: torch.Tensor, direction: torch.Tensor, sign: str | float, alpha: float) -> torch.Tensor:
    """E(src) + sign·α·d_a, with sign "add" (+1) or "remove" (-1)."""
    value = SIGN_VALUE[sign] if isinstance(sign, str) else float(sign)
    return source + value * float(alpha) * direction.to(source)


def swap_schedules(source: torch.Tensor, edited: torch.Tensor, swap_steps: Sequence[int],
                   region: torch.Tensor | None = None) -> list:
    """One `SwapSchedule` per swap step (same source and edited embeddings, same edit region)."""
    from xcounter.generators import SwapSchedule
    return [SwapSchedule(source=source, edited=edited, swap_step=int(s), region=region) for s in swap_steps]


def swap_step_points(generator: "SDGenerator", z_T: torch.Tensor, source: torch.Tensor, edited: torch.Tensor,
                     swap_steps: list[int], prefix: list[torch.Tensor] | None = None,
                     steps: int | None = None, edit_guidance: float = 1.0,
                     region: torch.Tensor | None = None) -> torch.Tensor:
    """z_0 for every swap step λ, computed in one batch branching off the shared source prefix: [K, 4, h, w].
    With a `region` the edit acts only there (the full source prefix is then needed)."""
    if steps is None:
        steps = len(prefix) - 1 if prefix is not None else generator.steps
    if not swap_steps:
        return z_T.new_zeros((0, *z_T.shape[1:]))
    schedules = swap_schedules(source, edited, swap_steps, region)
    with torch.no_grad():
        if edit_guidance == 1.0:  # plain call: generators without edit guidance keep working
            return generator.sample(z_T, schedules, steps=steps, prefix=prefix)
        return generator.sample(z_T, schedules, steps=steps, prefix=prefix, edit_guidance=edit_guidance)


def bernstein_weights(n_points: int, t: torch.Tensor) -> torch.Tensor:
    """[T, n_points] Bernstein basis C(n,i) t^i (1-t)^(n-i), n = n_points - 1."""
    n = n_points - 1
    t = t.reshape(-1, 1).to(torch.float64)
    i = torch.arange(n_points, dtype=torch.float64).reshape(1, -1)
    binomials = torch.tensor([comb(n, k) for k in range(n_points)], dtype=torch.float64).reshape(1, -1)
    return binomials * t.pow(i) * (1 - t).pow(n - i)


def bezier(points: torch.Tensor, t: torch.Tensor | float | Sequence[float]) -> torch.Tensor:
    """The Bézier curve with control points `points` [K, ...] at parameter(s) t in [0, 1].

    B(0) = points[0] (the source reconstruction), B(1) = points[-1] (the strongest edit).
    A scalar t gives one point shaped like points[0]; a 1-D t gives [T, ...].
    """
    if points.shape[0] == 0:
        raise ValueError("bezier needs at least one control point")
    scalar = not isinstance(t, (torch.Tensor, list, tuple)) or (isinstance(t, torch.Tensor) and t.dim() == 0)
    t_tensor = torch.as_tensor(t, dtype=torch.float64).reshape(-1).clamp(0.0, 1.0)
    weights = bernstein_weights(points.shape[0], t_tensor).to(points.device)
    flat = points.reshape(points.shape[0], -1).to(torch.float64)  # float64: high powers of t stay exact
    dtype = points.dtype if points.is_floating_point() else torch.float32
    curve = (weights @ flat).to(dtype).reshape(t_tensor.shape[0], *points.shape[1:])
    return curve[0] if scalar else curve


def point_parameters(n_points: int) -> list[float]:
    """The Bézier parameter associated with each control point (k / (K-1)), used to bracket flips."""
    if n_points <= 1:
        return [0.0] * n_points
    return [k / (n_points - 1) for k in range(n_points)]

