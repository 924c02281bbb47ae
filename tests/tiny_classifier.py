"""A tiny, randomly initialised torchxrayvision DenseNet (fixed seed) and savers for every format.

Built from a config like diffusers' `get_dummy_components`, so the real load paths run in
milliseconds. Labels mimic torchxrayvision's (including an empty name, which must not be offered).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torchxrayvision as xrv

TINY_LABELS = ["Effusion", "Pneumothorax", "Cardiomegaly", ""]
TINY_CONFIG = {"growth_rate": 4, "block_config": (1, 1), "num_init_features": 8, "bn_size": 2,
               "num_classes": len(TINY_LABELS), "in_channels": 1}
#: probability thresholds as torchxrayvision stores them (`op_threshs`); NaN = no operating point
TINY_OP_THRESHS = [0.2, 0.6, float("nan"), 0.5]


def make_tiny_densenet(seed: int = 0, labels: list[str] | None = None,
                       op_threshs: list[float] | None = None) -> xrv.models.DenseNet:
    """Untrained xrv DenseNet; like a fresh `DenseNet()` it has no `.pathologies` attribute."""
    labels = TINY_LABELS if labels is None else labels
    torch.manual_seed(seed)
    config = dict(TINY_CONFIG, num_classes=len(labels))
    op = torch.tensor(op_threshs, dtype=torch.float32) if op_threshs is not None else None
    model = xrv.models.DenseNet(op_threshs=op, **config)
    model.targets = list(labels)  # instance attribute, as a user sets it on an untrained net
    # random BatchNorm statistics so the net is not an identity around zero
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


def tiny_xrv_classifier(seed: int = 0):
    """The tiny DenseNet wrapped as an xcounter Classifier with torchxrayvision's preprocessing at 32 px."""
    from xcounter.classifiers import Classifier, logit, make_profile

    return Classifier(make_tiny_densenet(seed), TINY_LABELS, logit(TINY_OP_THRESHS), make_profile("xrv", size=32),
                      name="tiny-densenet")


def noise_scan(side: int = 16, seed: int = 0):
    """A uint8 gray scan of uniform noise: the tiny generator's resolution, content that means nothing."""
    import numpy as np

    return (np.random.default_rng(seed).random((side, side)) * 255).astype(np.uint8)


def save_state_dict(model: torch.nn.Module, path: Path, metadata: dict | None = None) -> Path:
    """`torch.save` of a state_dict, optionally wrapped as {"state_dict": ..., **metadata}."""
    state = model.state_dict()
    torch.save({"state_dict": state, **metadata} if metadata else state, path)
    return path


def save_safetensors(model: torch.nn.Module, path: Path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"xcounter.json": json.dumps(metadata)} if metadata else None)
    return path


def save_pickled_module(model: torch.nn.Module, path: Path) -> Path:
    """A whole pickled module, the format only `trust_pickle=True` may load."""
    torch.save(model, path)
    return path


def save_torchscript(model: torch.nn.Module, path: Path, labels: list[str] | None = None,
                     thresholds: list[float] | None = None, preprocess: str | dict = "xrv") -> Path:
    from xcounter.classifiers import save_torchscript_classifier

    labels = TINY_LABELS if labels is None else labels
    save_torchscript_classifier(model, path, labels, thresholds, preprocess=preprocess, domain="cxr")
    return path


def put_in_xrv_cache(model: torch.nn.Module, cache_dir: Path, name: str = "densenet121-res224-all",
                     pickled: bool = False) -> Path:
    """Save under the file name torchxrayvision would download `name` to, inside `cache_dir`."""
    import os

    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / os.path.basename(xrv.models.model_urls[name]["weights_url"])
    return save_pickled_module(model, path) if pickled else save_state_dict(model, path)


class ConstantLogits(torch.nn.Module):
    """A misbehaving classifier for error tests: returns `value` in a `[B, outputs]` tensor."""

    def __init__(self, outputs: int, value: float) -> None:
        super().__init__()
        self.outputs, self.value = outputs, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3)).unsqueeze(1) * 0.0 + torch.full((1, self.outputs), self.value)
