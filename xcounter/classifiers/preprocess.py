"""Preprocessing profiles: how images in [0, 1] become a classifier's input, differentiably.

A classifier carries its profile so nobody downstream guesses ranges, channels or sizes
(torchxrayvision: 1 channel in [-1024, 1024], square 224 px; ImageNet CNNs: 3 channels, mean/std).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from xcounter.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROFILE_NAMES = ("xrv", "imagenet", "unit")


@dataclass(frozen=True)
class PreprocessProfile:
    """name: "xrv" | "imagenet" | "unit"; channels: 1 or 3 (None = keep); size: square side (None = keep)."""
    name: str
    channels: int | None = None
    size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.name not in PROFILE_NAMES:
            raise ModelError(f"unknown preprocess profile '{self.name}'; choose one of {', '.join(PROFILE_NAMES)}")
        if self.channels not in (None, 1, 3):
            raise ModelError(f"preprocess channels must be 1 or 3, not {self.channels}")
        if self.size is not None and int(self.size) < 1:
            raise ModelError(f"preprocess size must be positive, not {self.size}")

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """`[B, C, H, W]` in [0, 1] -> model input (channels, square crop + resize, intensity scale)."""
        x = _match_channels(images, self.channels)
        if self.size is not None:
            x = _square_resize(x, int(self.size))
        if self.name == "xrv":
            return x * 2048.0 - 1024.0
        if self.name == "imagenet":
            mean, std = _broadcast(self.mean or IMAGENET_MEAN, x), _broadcast(self.std or IMAGENET_STD, x)
            return (x - mean) / std
        return x

    def to_dict(self) -> dict:
        data = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items() if v is not None}

    @classmethod
    def from_dict(cls, data: "dict | str | PreprocessProfile | None") -> "PreprocessProfile":
        """Accept a profile, a name ("xrv") or the JSON dict written by `to_dict`."""
        if isinstance(data, PreprocessProfile):
            return data
        if data is None:
            return make_profile("unit")
        if isinstance(data, str):
            return make_profile(data)
        if not isinstance(data, dict) or "name" not in data:
            raise ModelError(f"preprocess metadata must be a name or a dict with 'name', not {data!r}")
        unknown = set(data) - {"name", "channels", "size", "mean", "std"}
        if unknown:
            raise ModelError(f"unknown preprocess field(s): {', '.join(sorted(unknown))}")
        base = make_profile(data["name"])
        return cls(name=data["name"],
                   channels=data.get("channels", base.channels),
                   size=data.get("size", base.size),
                   mean=tuple(data["mean"]) if data.get("mean") is not None else base.mean,
                   std=tuple(data["std"]) if data.get("std") is not None else base.std)


def make_profile(name: str, size: int | None = None, channels: int | None = None) -> PreprocessProfile:
    """The standard profiles; `size` / `channels` override the defaults (any size is allowed)."""
    if name == "xrv":
        return PreprocessProfile("xrv", channels=channels or 1, size=size or 224)
    if name == "imagenet":
        ch = channels or 3
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if ch == 3 else ((0.449,), (0.226,))
        return PreprocessProfile("imagenet", channels=ch, size=size or 224, mean=mean, std=std)
    if name == "unit":
        return PreprocessProfile("unit", channels=channels, size=size)
    raise ModelError(f"unknown preprocess profile '{name}'; choose one of {', '.join(PROFILE_NAMES)}")


def _broadcast(values: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    tensor = torch.tensor(values, dtype=x.dtype, device=x.device)
    if tensor.numel() not in (1, x.shape[1]):
        raise ModelError(f"preprocess mean/std has {tensor.numel()} values for {x.shape[1]} channels")
    return tensor.view(1, -1, 1, 1)


def _match_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    have = x.shape[1]
    if channels is None or channels == have:
        return x
    if channels == 1 and have == 3:
        return x.mean(dim=1, keepdim=True)
    if channels == 3 and have == 1:
        return x.expand(-1, 3, -1, -1)
    raise ModelError(f"cannot turn {have}-channel images into the {channels} channels the classifier expects")


def _square_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre square crop (torchxrayvision refuses non-square input), then bilinear resize."""
    height, width = x.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    x = x[..., top:top + side, left:left + side]
    if side == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)
