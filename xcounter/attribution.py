"""Pixel attributions (captum) of the original scan, shown beside the counterfactuals for comparison.

Counterfactuals say *what* change flips a decision; saliency maps say *where* the classifier's
gradient is large. The report shows both so a reader can see when they disagree. The maps are
computed on the classifier's margin (logit minus decision threshold) because untrained or very
confident nets saturate the sigmoid and give all-zero gradients on probabilities.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam

#: Integrated Gradients path steps: enough for a stable map of a small classifier, cheap on a CPU
IG_STEPS = 24


def attribution_maps(classifier: torch.nn.Module, image: torch.Tensor, target_index: int, *,
                     ig_steps: int = IG_STEPS) -> dict[str, np.ndarray]:
    """Integrated Gradients and Grad-CAM maps of one image for one target label.

    Args:
        classifier: an `xcounter.classifiers.Classifier` (its `margins` are attributed) or any
            module mapping [B, C, H, W] images in [0, 1] to [B, L] scores.
        image: [1, C, H, W] float tensor in [0, 1].
        target_index: the label column to explain.

    Returns:
        {"integrated_gradients": H x W in [-1, 1] (signed, summed over channels),
         "gradcam": H x W in [0, 1]} as float32; "gradcam" is missing when no convolution layer
        can be hooked (e.g. a TorchScript model). Each map is scaled by its largest magnitude so it
        survives float16 storage; an all-zero map stays zero instead of dividing by zero.
        (Sundararajan et al. 2017, Integrated Gradients; Selvaraju et al. 2017, Grad-CAM.)
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"attribution_maps expects one image [1, C, H, W], got {tuple(image.shape)}")
    image = image.detach().float()
    forward = _score_function(classifier)
    height, width = image.shape[-2:]
    maps: dict[str, np.ndarray] = {}
    with torch.enable_grad():
        ig = IntegratedGradients(forward).attribute(
            image, baselines=torch.zeros_like(image), target=target_index, n_steps=ig_steps,
            internal_batch_size=min(ig_steps, 8))
        maps["integrated_gradients"] = _normalise(ig.sum(dim=1)[0], signed=True)
        gradcam = _gradcam(classifier, forward, image, target_index)
        if gradcam is not None:
            upsampled = LayerAttribution.interpolate(gradcam, (height, width), interpolate_mode="bilinear")
            maps["gradcam"] = _normalise(upsampled.sum(dim=1)[0].clamp(min=0), signed=False)
    return maps


def _score_function(classifier: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    margins = getattr(classifier, "margins", None)
    return margins if callable(margins) else classifier


def find_last_conv(module: torch.nn.Module) -> torch.nn.Module | None:
    """The layer Grad-CAM should hook: the last dense block of a DenseNet, else the last Conv2d.

    Dense blocks end in a 32-channel convolution whose output is only the newest slice of the
    features, so the block (its concatenated output) is the better Grad-CAM layer there, as in
    torchxrayvision's examples. TorchScript submodules are recognised by `original_name`.
    """
    last_conv, last_block = None, None
    for name, sub in module.named_modules():
        kind = getattr(sub, "original_name", type(sub).__name__)
        if isinstance(sub, torch.nn.Conv2d) or kind == "Conv2d":
            last_conv = sub
        if name.rsplit(".", 1)[-1].startswith("denseblock") or kind == "_DenseBlock":
            last_block = sub
    return last_block if last_block is not None else last_conv


def _gradcam(classifier: torch.nn.Module, forward, image: torch.Tensor, target_index: int) -> torch.Tensor | None:
    """Grad-CAM attributions at the last conv layer, or None where hooks are impossible."""
    layer = find_last_conv(classifier)
    if layer is None or isinstance(layer, torch.jit.ScriptModule):
        return None  # TorchScript modules do not accept forward hooks
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return LayerGradCam(forward, layer).attribute(image, target=target_index)
    except (RuntimeError, AttributeError, AssertionError):
        return None


def _normalise(values: torch.Tensor, signed: bool) -> np.ndarray:
    array = np.nan_to_num(values.detach().cpu().numpy().astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    scale = float(np.abs(array).max()) if array.size else 0.0
    if scale > 0:
        array = array / scale
    return np.clip(array, -1.0 if signed else 0.0, 1.0).astype(np.float32)
