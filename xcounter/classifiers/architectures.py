"""Networks rebuilt from an architecture name and a state_dict (no pickled code is ever run).

"xrv-densenet": torchxrayvision's DenseNet, any config (read from the tensor shapes, so tiny test
nets and DenseNet-121 load alike); "densenet121" / "resnet50": torchvision models, 1 or 3 channels.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from xcounter.classifiers.base import logit
from xcounter.classifiers.preprocess import PreprocessProfile, make_profile
from xcounter.classifiers.xrv_logits import XRVLogits
from xcounter.errors import ModelError

ARCHITECTURES = ("xrv-densenet", "densenet121", "resnet50")
_ALIASES = {"xrv": "xrv-densenet", "xrv-densenet121": "xrv-densenet", "densenet": "densenet121", "resnet": "resnet50"}


def xrv_facts(model: torch.nn.Module) -> tuple[list[str], list[float] | None, PreprocessProfile]:
    """Labels, logit thresholds and preprocessing carried by a torchxrayvision model."""
    labels = list(getattr(model, "pathologies", None) or model.targets)  # untrained nets lack .pathologies
    op_threshs = getattr(model, "op_threshs", None)
    thresholds = logit(op_threshs.detach().cpu().numpy()) if op_threshs is not None else None
    return labels, thresholds, make_profile("xrv", size=int(getattr(model, "input_resolution", 224)))


def canonical_arch(arch: str) -> str:
    name = _ALIASES.get(arch.lower(), arch.lower())
    if name not in ARCHITECTURES:
        raise ModelError(f"unknown architecture '{arch}'; choose one of {', '.join(ARCHITECTURES)}")
    return name


def strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DataParallel's `module.` and torchxrayvision ResNet's `model.` prefixes."""
    state = dict(state)
    for prefix in ("module.", "model."):
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def densenet_config(state: Mapping[str, torch.Tensor]) -> dict:
    """DenseNet constructor arguments implied by a state_dict's keys and shapes."""
    try:
        conv0 = state["features.conv0.weight"]
        growth = state["features.denseblock1.denselayer1.conv2.weight"].shape[0]
        bottleneck = state["features.denseblock1.denselayer1.conv1.weight"].shape[0]
    except KeyError as exc:
        raise ModelError(f"state_dict is not a DenseNet (missing {exc.args[0]})") from None
    layers: dict[int, int] = {}
    for key in state:
        match = re.match(r"features\.denseblock(\d+)\.denselayer(\d+)\.", key)
        if match:
            block, layer = int(match[1]), int(match[2])
            layers[block] = max(layers.get(block, 0), layer)
    return {"growth_rate": int(growth), "block_config": tuple(layers[b] for b in sorted(layers)),
            "num_init_features": int(conv0.shape[0]), "bn_size": int(bottleneck // growth),
            "in_channels": int(conv0.shape[1])}


def num_outputs(state: Mapping[str, torch.Tensor]) -> int:
    for key in ("classifier.weight", "fc.weight"):
        if key in state:
            return int(state[key].shape[0])
    raise ModelError("state_dict has no 'classifier.weight' or 'fc.weight'; is the architecture right?")


def _torchvision(arch: str, state: Mapping[str, torch.Tensor], outputs: int) -> torch.nn.Module:
    import torchvision

    if arch == "densenet121":
        net = torchvision.models.densenet121(weights=None, num_classes=outputs)
        if state.get("features.conv0.weight", torch.empty(0, 3)).shape[1] == 1:
            net.features.conv0 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    else:
        net = torchvision.models.resnet50(weights=None, num_classes=outputs)
        if state.get("conv1.weight", torch.empty(0, 3)).shape[1] == 1:
            net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def build_network(arch: str, state: Mapping[str, torch.Tensor]
                  ) -> tuple[torch.nn.Module, PreprocessProfile, list[float] | None]:
    """Rebuild `arch`, load `state` strictly; returns (logit network, default preprocessing,
    logit thresholds when the weights carry torchxrayvision's `op_threshs`, else None)."""
    arch = canonical_arch(arch)
    state = strip_prefix(state)
    outputs = num_outputs(state)
    thresholds = None
    if arch == "xrv-densenet":
        import torchxrayvision as xrv

        op_threshs = state.get("op_threshs")
        model = xrv.models.DenseNet(num_classes=outputs, op_threshs=op_threshs, **densenet_config(state))
        network, profile = XRVLogits(model), make_profile("xrv")
        thresholds = logit(op_threshs.numpy()) if op_threshs is not None else None
        target = model
    else:
        network = target = _torchvision(arch, state, outputs)
        first = state.get("features.conv0.weight", state.get("conv1.weight"))
        profile = make_profile("imagenet", channels=int(first.shape[1]) if first is not None else 3)
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"weights do not fit architecture '{arch}': {str(exc).splitlines()[0]}") from None
    return network, profile, thresholds
