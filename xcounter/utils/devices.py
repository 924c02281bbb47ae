"""Where the models run: `--device auto | cpu | cuda` resolved once, with a one-line error for a missing GPU.

Why one helper: explain, demo, audit, traverse and the oracle's training all take the same option; a user who
asks for a GPU the machine does not have must hear it in one sentence, not from a CUDA traceback.
"""
from __future__ import annotations

import torch

from xcounter.errors import XCounterError

#: what the `--device` options accept
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: "str | torch.device | None" = "auto") -> torch.device:
    """"auto" (or None): the GPU when torch sees one, else the CPU; "cuda" / "cuda:N" only when there is one."""
    if isinstance(name, torch.device):
        name = str(name)
    name = "auto" if name is None else str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise XCounterError(f"device '{name}' asked for, but torch sees no CUDA GPU here; use --device cpu")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise XCounterError(f"device '{name}' is not a CUDA device name (cuda or cuda:N)") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise XCounterError(f"device '{name}' asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
        return device
    raise XCounterError(f"device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got '{name}'")
