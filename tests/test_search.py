"""Minimal-flip search: bisection on synthetic curves, bracketing on Bézier trajectories, budgets."""
import pytest
import torch

from xcounter.disentangle.trajectories import select_swap_steps, swap_cost
from xcounter.search import bisect_flip, minimal_flip

torch.set_num_threads(1)


def test_bisection_finds_monotone_crossing_within_tolerance():
    crossing = 0.637
    calls = []

    def decision(t):
        calls.append(t)
        return 2.0 - 2.0 * t / crossing  # positive before the crossing, negative after

    found = bisect_flip(decision, 0.0, 1.0, reference_positive=True, tol=1e-3)
    assert found.converged
    assert found.lower <= crossing <= found.t
    assert found.t - crossing <= 1e-3
    assert found.margin < 0  # the returned point is flipped
    assert found.evaluations == len(calls) <= 12


def test_bisection_needs_a_flipped_upper_end():
    with pytest.raises(ValueError):
        bisect_flip(lambda t: 1.0, 0.0, 1.0, reference_positive=True)


def _latent_margin(threshold):
    """A 'classifier' on 1-D latents: margin = threshold - value (positive below the threshold)."""
    return lambda latents: threshold - latents.reshape(latents.shape[0], -1)[:, 0]


def test_minimal_flip_on_linear_trajectory():
    points = torch.linspace(0, 1, 5).reshape(5, 1)  # Bézier of evenly spaced points: B(t) = t
    strengths = [0.0, 0.25, 0.5, 0.75, 1.0]
    margin_of = _latent_margin(0.42)
    margins = margin_of(points).tolist()
    result = minimal_flip(points, strengths, margins, margin_of, tol=1e-3)
    assert result.flipped
    assert abs(result.strength - 0.42) <= 1e-3 and result.strength >= 0.42
    assert float(result.latent[0]) >= 0.42 and result.margin < 0


def test_minimal_flip_on_curved_trajectory_lands_on_the_decision_boundary():
    points = torch.tensor([[0.0], [0.1], [0.9], [1.0]])  # a Bézier that does not pass the middle points
    margin_of = _latent_margin(0.5)
    result = minimal_flip(points, [0.0, 1 / 3, 2 / 3, 1.0], margin_of(points).tolist(), margin_of, tol=1e-4)
    assert result.flipped
    assert abs(float(result.latent[0]) - 0.5) < 1e-3  # on the curve, exactly at the boundary


def test_no_flip_returns_the_strongest_edit():
    points = torch.linspace(0, 0.3, 4).reshape(4, 1)
    margin_of = _latent_margin(0.5)
    result = minimal_flip(points, [0, 1 / 3, 2 / 3, 1], margin_of(points).tolist(), margin_of)
    assert not result.flipped and result.strength is None and result.evaluations == 0
    assert torch.equal(result.latent, points[-1])


def test_negative_reference_flips_to_positive():
    points = torch.linspace(0, 1, 3).reshape(3, 1)
    margin_of = lambda z: z.reshape(z.shape[0], -1)[:, 0] - 0.8  # noqa: E731 - negative at the source
    result = minimal_flip(points, [0, 0.5, 1], margin_of(points).tolist(), margin_of, tol=1e-3)
    assert result.flipped and result.margin > 0 and abs(result.strength - 0.8) <= 1e-3


@pytest.mark.parametrize("steps,budget", [(20, 50), (20, 30), (50, 70), (25, 10)])
def test_candidate_budget_is_respected(steps, budget):
    chosen = select_swap_steps(steps, max_nfe=budget)
    assert chosen, "some edit must fit"
    assert sum(swap_cost(s, steps) for s in chosen) <= budget
    assert chosen == sorted(chosen, reverse=True)


@pytest.mark.parametrize("steps", [20, 25, 50])
def test_default_explanation_budget_for_six_attributes(steps):
    """Inversion + source prefix (2 x steps) once, both signs of 6 attributes: <= 150 NFE per attribute.
    (tests/test_explainer.py checks end to end that the engine spends exactly this formula.)"""
    from xcounter.methods.trajectory import DEFAULT_MAX_NFE

    per_sign = sum(swap_cost(s, steps) for s in select_swap_steps(steps, max_nfe=DEFAULT_MAX_NFE))
    if steps == 20:
        assert per_sign == 5 + 10 + 15 + 20
    assert (2 * steps + 6 * 2 * per_sign) / 6 <= 150


def test_flip_margin_requires_a_confident_crossing():
    points = torch.linspace(0, 1, 5).reshape(5, 1)
    strengths = [0.0, 0.25, 0.5, 0.75, 1.0]
    margin_of = lambda latents: 4.0 * (0.3 - latents.reshape(latents.shape[0], -1)[:, 0])  # noqa: E731
    margins = margin_of(points).tolist()
    plain = minimal_flip(points, strengths, margins, margin_of, tol=1e-3)
    confident = minimal_flip(points, strengths, margins, margin_of, tol=1e-3, flip_margin=1.0)
    assert abs(plain.strength - 0.3) <= 1e-3
    assert abs(confident.strength - 0.55) <= 1e-3  # 4 (0.3 - t) = -1 at t = 0.55
    assert confident.margin <= -1.0
    # a crossing that never gets past the margin is no flip at all
    shallow = minimal_flip(points[:3], strengths[:3], margins[:3], margin_of, flip_margin=1.0)
    assert not shallow.flipped


def test_is_flipped_in_both_directions():
    from xcounter.search import is_flipped

    assert is_flipped(-0.1, True) and not is_flipped(-0.1, True, flip_margin=0.5)
    assert is_flipped(0.6, False, flip_margin=0.5) and not is_flipped(0.4, False, flip_margin=0.5)
    assert not is_flipped(2.0, True, flip_margin=0.0)
