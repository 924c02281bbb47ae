"""Proximity, faithfulness, realism and trajectory-shape metrics on synthetic data."""
import numpy as np
import pytest
import torch

from xcounter import metrics


def test_l1_and_ssim():
    rng = np.random.default_rng(0)
    image = rng.random((16, 16, 1)).astype(np.float32)
    assert metrics.l1(image, image) == 0.0
    assert metrics.ssim(image, image) == pytest.approx(1.0)
    noisy = np.clip(image + rng.normal(0, 0.3, image.shape), 0, 1)
    assert metrics.l1(image, noisy) > 0.1
    assert metrics.ssim(image, noisy) < 0.9
    # a [1, C, H, W] tensor is the same image as H x W x C
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    assert metrics.ssim(tensor, torch.from_numpy(noisy).permute(2, 0, 1)[None].float()) == pytest.approx(
        metrics.ssim(image, noisy), abs=1e-5)


def test_cosine_and_direction_cosine_along():
    assert metrics.cosine([1, 0], [0, 1]) == 0.0
    assert metrics.cosine([1, 1], [2, 2]) == pytest.approx(1.0)
    straight = torch.linspace(0, 1, 5).reshape(5, 1, 1) * torch.ones(5, 2, 2)
    assert metrics.direction_cosine_along(straight) == pytest.approx([1.0, 1.0, 1.0])
    turn = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    assert metrics.direction_cosine_along(turn) == pytest.approx([0.0])


def test_cfrt_counts_points_where_the_edited_attribute_dominates():
    changes = {"chest_tube": [0.1, 0.5, 0.9, 0.2], "pacemaker": [0.2, 0.1, 0.1, 0.0], "nodule": [0, -0.6, 0, 0.1]}
    # point 0: tube 0.1 < 0.2; point 1: 0.5 < |-0.6|; points 2 and 3 dominate
    assert metrics.cfrt(changes, "chest_tube") == pytest.approx(0.5)
    assert metrics.cfrt({"a": [-0.4, 0.1], "b": [0.1, 0.0]}, "a", sign=-1) == pytest.approx(0.5)
    with pytest.raises(KeyError):
        metrics.cfrt(changes, "ruler")


def test_flip_rate():
    assert metrics.flip_rate([1.0, -1.0, 2.0, 0.5], [-1.0, -1.0, 3.0, -0.1]) == pytest.approx(0.5)


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (400, 3))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + np.array([2.0, 0.0, 0.0])
    assert metrics.frechet_distance(a, shifted) == pytest.approx(4.0, rel=1e-6)  # only the mean moved
    b = rng.normal(0, 1, (400, 3))
    assert metrics.frechet_distance(a, b) < 0.2
    with pytest.raises(ValueError):
        metrics.frechet_distance(a, a[:, :2])
