"""captum attribution maps on tiny classifiers: shapes, scale, Grad-CAM layer choice, TorchScript fallback."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny_classifier import ConstantLogits, make_tiny_densenet, save_torchscript
from xcounter.attribution import attribution_maps, find_last_conv
from xcounter.classifiers import load_classifier


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def classifier():
    return load_classifier(make_tiny_densenet(), preprocess="xrv", domain="cxr")


def _check(saliency: np.ndarray, low: float) -> None:
    assert saliency.shape == (32, 32) and saliency.dtype == np.float32
    assert np.isfinite(saliency).all() and saliency.min() >= low and saliency.max() <= 1.0


def test_integrated_gradients_and_gradcam_on_a_densenet(classifier, image):
    found_gradcam = []
    for label in classifier.targets:
        maps = attribution_maps(classifier, image, classifier.target_index(label))
        assert set(maps) == {"integrated_gradients", "gradcam"}
        _check(maps["integrated_gradients"], -1.0)
        _check(maps["gradcam"], 0.0)
        ig = maps["integrated_gradients"]
        assert np.abs(ig).max() == pytest.approx(1.0)  # scaled by its peak, and not all zero
        assert (ig > 0).any() and (ig < 0).any()  # signed: evidence for and against
        found_gradcam.append(maps["gradcam"].max())
    # Grad-CAM keeps only positive evidence (ReLU); a random net shows some for at least one label
    assert max(found_gradcam) == pytest.approx(1.0)


def test_maps_depend_on_the_target(classifier, image):
    first, second = (attribution_maps(classifier, image, classifier.target_index(t))["integrated_gradients"]
                     for t in classifier.targets[:2])
    assert not np.allclose(first, second)


def test_gradcam_layer_choice():
    densenet = make_tiny_densenet()
    assert find_last_conv(densenet) is densenet.features.denseblock2
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 8, 3),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    assert find_last_conv(plain) is plain[2]
    assert find_last_conv(torch.nn.Linear(2, 2)) is None


def test_plain_conv_net_gets_gradcam(image):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():  # positive read-out weights: every activation is evidence for label 0
        net[-1].weight.abs_()
    maps = attribution_maps(net, image, 0)
    _check(maps["gradcam"], 0.0)
    assert maps["gradcam"].max() == pytest.approx(1.0) and (maps["gradcam"] > 0).mean() > 0.2


def test_torchscript_classifier_gives_integrated_gradients_only(tmp_path, image):
    path = save_torchscript(make_tiny_densenet(), tmp_path / "tiny.pt", thresholds=[0.0, 0.0, float("nan"), 0.0])
    scripted = load_classifier(path)
    maps = attribution_maps(scripted, image, scripted.target_index("Effusion"))
    assert set(maps) == {"integrated_gradients"}
    _check(maps["integrated_gradients"], -1.0)
    assert np.abs(maps["integrated_gradients"]).max() == pytest.approx(1.0)


def test_all_zero_gradients_stay_zero(image):
    constant = load_classifier(ConstantLogits(outputs=2, value=1.0), labels=["A", "B"])
    maps = attribution_maps(constant, image, 0)
    assert maps and all(np.isfinite(m).all() and not m.any() for m in maps.values())


def test_rejects_batches(classifier):
    with pytest.raises(ValueError, match=r"\[1, C, H, W\]"):
        attribution_maps(classifier, torch.rand(2, 1, 32, 32), 0)
