"""Raw logits from torchxrayvision models, whose own `forward` applies sigmoid + `op_norm`."""
from __future__ import annotations

import torch


class XRVLogits(torch.nn.Module):
    """A torchxrayvision model's raw logits: features -> classifier, skipping sigmoid and `op_norm`."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # `features2` would print range/size warnings to stdout; our preprocessing already fixed both
        if hasattr(self.model, "features2"):  # DenseNet: the body of features2, then the classifier
            features = torch.nn.functional.relu(self.model.features(x))
            pooled = torch.nn.functional.adaptive_avg_pool2d(features, (1, 1)).flatten(1)
            return self.model.classifier(pooled)
        return self.model.model(x)  # ResNet wraps a torchvision resnet as `.model`


def is_xrv_model(module: torch.nn.Module) -> bool:
    """A torchxrayvision classifier (DenseNet / ResNet), not one of its autoencoders."""
    return type(module).__module__.startswith("torchxrayvision") and hasattr(module, "targets")
