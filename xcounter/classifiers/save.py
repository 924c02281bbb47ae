"""`save_torchscript_classifier`: the shipping format (TorchScript + `xcounter.json` metadata)."""
from __future__ import annotations

import io
import json
import math
import os
import warnings
from typing import Sequence

import torch

from xcounter.classifiers.base import Classifier
from xcounter.classifiers.load import METADATA_FILE
from xcounter.classifiers.preprocess import PreprocessProfile
from xcounter.classifiers.xrv_logits import XRVLogits, is_xrv_model
from xcounter.errors import ModelError
from xcounter.utils.atomic import write_bytes_atomic


def save_torchscript_classifier(module: torch.nn.Module, path: str | os.PathLike, labels: Sequence[str],
                                thresholds: Sequence[float] | None = None,
                                preprocess: "PreprocessProfile | dict | str" = "unit",
                                domain: str | None = None) -> None:
    """Script (or, failing that, trace) `module` and write it atomically with its metadata.

    `module` maps *preprocessed* input to `[B, len(labels)]` logits (a `Classifier` is unwrapped to its
    network; a torchxrayvision model is saved as raw logits). `thresholds` are on the logit scale
    (None/NaN = label not offered; default 0 = probability 0.5).
    """
    profile = PreprocessProfile.from_dict(preprocess)
    if isinstance(module, Classifier):
        module = module.network
    if is_xrv_model(module):
        module = XRVLogits(module)
    thresholds = [0.0] * len(labels) if thresholds is None else list(thresholds)
    if len(thresholds) != len(labels):
        raise ModelError(f"{len(labels)} labels but {len(thresholds)} thresholds")
    meta = {"labels": [str(label) for label in labels],
            "thresholds": [None if t is None or not math.isfinite(float(t)) else float(t) for t in thresholds],
            "preprocess": profile.to_dict(), "domain": domain}
    modes = [(sub, sub.training) for sub in module.modules()]  # restored exactly afterwards
    module = module.eval()
    with warnings.catch_warnings():  # TorchScript's deprecation notices
        warnings.simplefilter("ignore", FutureWarning)
        try:
            scripted = torch.jit.script(module)
        except Exception:  # many real models only trace
            side = profile.size or 64
            example = torch.zeros(1, profile.channels or 1, side, side)
            with torch.no_grad():
                scripted = torch.jit.trace(module, example, check_trace=False)
        finally:
            for sub, training in modes:
                sub.training = training
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer, _extra_files={METADATA_FILE: json.dumps(meta)})
    write_bytes_atomic(path, buffer.getvalue())
