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


class _LinearSampler:
    """A stand-in for `SwapSampler`: the sample at swap step λ is an 'image' whose value is its strength
    (1 - λ/steps), at 2 UNet evaluations per step after λ (edit guidance), counting what it draws."""

    def __init__(self, steps):
        self.steps, self.drawn = steps, []

    def cost(self, swap_step):
        return swap_cost(swap_step, self.steps, 1.0, 2.0)

    def draw(self, swap_step):
        self.drawn.append(swap_step)
        value = torch.full((1, 1, 2, 2), 1.0 - swap_step / self.steps)
        return value, value


def _coarse_trajectory(steps=20):
    """Control points at strengths 0, 0.25, 0.5, 1.0 (the default budget's), values = strengths."""
    from xcounter.search import Trajectory

    swap_steps = [steps, 15, 10, 0]
    strengths = [1.0 - s / steps for s in swap_steps]
    images = torch.tensor(strengths).reshape(4, 1, 1, 1).expand(4, 1, 2, 2).clone()
    return Trajectory(attribute="chest_tube", sign="remove", swap_steps=swap_steps, strengths=strengths,
                      points=images.clone(), images=images, nfe=0, sampler=_LinearSampler(steps))


@pytest.mark.parametrize("threshold, crossing, expected", [
    (0.62, 0.62, 0.65),  # the step just past the crossing flips: one further sample
    (0.62, 0.55, 0.65),  # the curve crossed early: bisection walks up to the first flipping step
    (0.93, 0.90, 0.95),
])
def test_shown_sample_is_the_weakest_flipping_swap_step_past_the_crossing(threshold, crossing, expected):
    from xcounter.search import FlipResult, shown_sample

    trajectory = _coarse_trajectory()
    flip = FlipResult(True, crossing, crossing, trajectory.points[3], -1.0, 0, point=3)
    margin_of = lambda image: float(threshold - image.mean())  # positive (the reference) below threshold
    shown = shown_sample(trajectory, flip, margin_of, reference_positive=True, max_nfe=None)
    assert shown.strength == pytest.approx(expected)
    assert shown.margin < 0 and shown.image.mean().item() == pytest.approx(expected)
    assert shown.nfe == sum(trajectory.sampler.cost(s) for s in trajectory.sampler.drawn)
    assert all(s >= crossing - 1e-9 for s, _ in shown.visited)  # never below the minimal edit
    # a second target of the same scan reuses the samples: no further UNet call, the same NFE counted
    drawn = list(trajectory.sampler.drawn)
    again = shown_sample(trajectory, flip, margin_of, reference_positive=True, max_nfe=None)
    assert trajectory.sampler.drawn == drawn and again.nfe == shown.nfe and again.strength == shown.strength


def test_shown_sample_respects_its_budget_and_falls_back_to_the_control_point():
    from xcounter.search import FlipResult, shown_sample

    trajectory = _coarse_trajectory()
    flip = FlipResult(True, 0.55, 0.55, trajectory.points[3], -1.0, 0, point=3)
    margin_of = lambda image: float(0.97 - image.mean())  # only strength 1.0 flips
    none = shown_sample(trajectory, flip, margin_of, reference_positive=True, max_nfe=0)
    assert none.strength == 1.0 and none.nfe == 0 and trajectory.sampler.drawn == []
    some = shown_sample(trajectory, flip, margin_of, reference_positive=True, max_nfe=60)
    assert some.nfe <= 60 and some.nfe > 0 and some.strength == 1.0  # probed, nothing weaker flipped
    assert all(margin > 0 for _, margin in some.visited)
