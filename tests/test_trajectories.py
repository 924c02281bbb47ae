"""Swap-step schedules, Bézier curves and batched swap-step points."""
import pytest
import torch

from xcounter.disentangle.trajectories import (bezier, edited_embedding, select_swap_steps, strength_of,
                                               swap_cost, swap_step_of, swap_step_points)

torch.set_num_threads(1)


def test_bezier_endpoints_and_quadratic_midpoint():
    points = torch.tensor([[0.0, 0.0], [2.0, 4.0], [4.0, 0.0]])
    assert torch.allclose(bezier(points, 0.0), points[0])
    assert torch.allclose(bezier(points, 1.0), points[-1])
    # B(1/2) = P0/4 + P1/2 + P2/4 for three control points
    assert torch.allclose(bezier(points, 0.5), torch.tensor([2.0, 2.0]))


def test_bezier_batched_parameters_and_linear_control_points():
    points = torch.linspace(0, 1, 5).reshape(5, 1, 1)  # evenly spaced: the curve is the identity
    t = torch.tensor([0.0, 0.3, 0.77, 1.0])
    curve = bezier(points, t)
    assert curve.shape == (4, 1, 1)
    assert torch.allclose(curve.reshape(-1), t, atol=1e-6)


def test_swap_schedule_strengths():
    assert strength_of(20, 20) == 0.0
    assert strength_of(15, 20) == 0.25
    assert strength_of(0, 20) == 1.0
    assert [swap_step_of(s, 20) for s in (0.25, 0.5, 0.75, 1.0)] == [15, 10, 5, 0]
    assert swap_cost(5, 20) == 15 and swap_cost(5, 20, guidance_scale=3.0) == 30


def test_select_swap_steps_respects_budget():
    assert select_swap_steps(20) == [15, 10, 5, 0]  # 5 + 10 + 15 + 20 = 50 NFE
    chosen = select_swap_steps(50, max_nfe=70)
    assert 0 in chosen and sum(swap_cost(s, 50) for s in chosen) <= 70
    small = select_swap_steps(20, max_nfe=12)
    assert small and sum(swap_cost(s, 20) for s in small) <= 12
    assert select_swap_steps(20, max_nfe=0) == []


def test_edited_embedding_sign():
    source, direction = torch.zeros(3), torch.ones(3)
    assert torch.equal(edited_embedding(source, direction, "add", 2.0), torch.full((3,), 2.0))
    assert torch.equal(edited_embedding(source, direction, "remove", 2.0), torch.full((3,), -2.0))


@pytest.fixture(scope="module")
def generator():
    from tests.tiny_generator import tiny_pipeline
    from xcounter.generators import SDGenerator
    return SDGenerator(tiny_pipeline(1, seed=0), steps=6)


def test_swap_step_points_equal_separate_runs(generator):
    z_T = torch.randn(1, *generator.latent_shape, generator=torch.Generator().manual_seed(0))
    source = generator.embed(["chest radiograph"])[0].detach()
    edited = generator.embed(["right chest tube in place"])[0].detach()
    prefix = generator.denoise_prefix(z_T, source, 6)
    generator.reset_nfe()
    batch = swap_step_points(generator, z_T, source, edited, [5, 3, 0], prefix=prefix)
    assert batch.shape == (3, *generator.latent_shape)
    assert generator.nfe == 1 + 3 + 6  # only the post-swap steps are paid for
    for row, swap_step in enumerate([5, 3, 0]):
        alone = swap_step_points(generator, z_T, source, edited, [swap_step])
        assert torch.allclose(batch[row], alone[0], atol=1e-5)
    assert not torch.allclose(batch[0], batch[2])  # the edit changes the result


def test_edit_settings_come_from_the_caller_then_the_generators_kind_then_its_default():
    from types import SimpleNamespace

    from xcounter.disentangle.trajectories import (DEFAULT_ALPHA, DEFAULT_EDIT_GUIDANCE, resolve_edit_settings)

    generator = SimpleNamespace(edit_guidance=2.0, kind_edits={"pathology": {"alpha": 1.0, "edit_guidance": 1.0},
                                                              "device": {"edit_guidance": 2.5}})
    assert resolve_edit_settings(None, None, generator, "pathology") == (1.0, 1.0)
    assert resolve_edit_settings(None, None, generator, "device") == (DEFAULT_ALPHA, 2.5)
    assert resolve_edit_settings(None, None, generator, "artifact") == (DEFAULT_ALPHA, 2.0)
    assert resolve_edit_settings(None, None, generator) == (DEFAULT_ALPHA, 2.0)
    assert resolve_edit_settings(3.0, None, generator, "pathology") == (3.0, 1.0)  # each value on its own
    assert resolve_edit_settings(None, 1.5, generator, "pathology") == (1.0, 1.5)
    assert resolve_edit_settings(None, None, SimpleNamespace(), "pathology") == (DEFAULT_ALPHA, DEFAULT_EDIT_GUIDANCE)
    # "KIND:SIGN" sets one sign's edits over its kind's, value by value; the caller still wins
    generator.kind_edits["pathology:add"] = {"alpha": 1.5}
    assert resolve_edit_settings(None, None, generator, "pathology", "add") == (1.5, 1.0)
    assert resolve_edit_settings(None, None, generator, "pathology", "remove") == (1.0, 1.0)
    assert resolve_edit_settings(None, None, generator, "pathology") == (1.0, 1.0)
    assert resolve_edit_settings(2.0, None, generator, "pathology", "add") == (2.0, 1.0)
