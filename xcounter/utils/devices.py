"""Where the models run: `--device auto | cpu | cuda` resolved once, with a one-line error for a missing GPU.

Why one helper: explain, demo, audit, traverse and the oracle's training all take the same option; a user who
asks for a GPU the machine does not have must hear it in one sentence, not from a CUDA traceback.
"""
from __future__ import annotations

import re

import torch

from xcounter.errors import XCounterError

#: what the `--device` options accept
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def device_name(name: "str | torch.device | None" = "auto") -> str:
    """The normalised name ("auto", "cpu", "cuda", "cuda:N"), checked without asking for a GPU: a Ray audit's GPUs
    are on its workers, not necessarily here."""
    name = "auto" if name is None else str(name).strip().lower()
    if name in DEVICE_CHOICES or re.fullmatch(r"cuda:\d+", name):
        return name
    raise XCounterError(f"device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got '{name}'")


def resolve_device(name: "str | torch.device | None" = "auto") -> torch.device:
    """"auto" (or None): the GPU when torch sees one, else the CPU; "cuda" / "cuda:N" only when there is one."""
    name = device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise XCounterError(f"device '{name}' asked for, but torch sees no CUDA GPU here; use --device cpu")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise XCounterError(f"device '{name}' asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    return device
