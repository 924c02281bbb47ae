"""`Classifier`: any external network plus the domain facts it needs (labels, thresholds, preprocessing).

Decisions live on the logit scale: label `i` is positive when `logit_i > threshold_i`. This keeps
gradients alive (torchxrayvision's `op_norm` is flat for NaN thresholds) and puts the flip point
at a margin of 0 for every label.
"""
from __future__ import annotations

import difflib
import math
from typing import Sequence

import numpy as np
import torch

from xcounter.classifiers.preprocess import PreprocessProfile
from xcounter.classifiers.xrv_logits import XRVLogits, is_xrv_model
from xcounter.errors import ModelError, XCounterError
from xcounter.explanation import Prediction


def _brief(exc: BaseException, limit: int = 160) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Classifier(torch.nn.Module):
    """Wraps `network` (input: preprocessed images, output: `[B, L]` logits) for images in [0, 1].

    A torchxrayvision model passed as `network` is wrapped in `XRVLogits` (logits, not op_norm).
    """

    def __init__(self, network: torch.nn.Module, labels: Sequence[str],
                 thresholds: "Sequence[float] | torch.Tensor | None" = None,
                 preprocess: PreprocessProfile | None = None, name: str = "classifier",
                 sha256: str | None = None, domain: str | None = None) -> None:
        super().__init__()
        # a bare torchxrayvision model would apply op_norm and print warnings: use its raw logits
        self.network = XRVLogits(network) if is_xrv_model(network) else network
        self.labels = [str(label) for label in labels]
        if not self.labels:
            raise ModelError(f"classifier '{name}' has no labels")
        values = torch.zeros(len(self.labels)) if thresholds is None else torch.as_tensor(
            [float("nan") if t is None else float(t) for t in thresholds], dtype=torch.float32)
        if values.shape != (len(self.labels),):
            raise ModelError(f"classifier '{name}' has {len(self.labels)} labels but {values.numel()} thresholds")
        self.register_buffer("thresholds", values.float())
        self.preprocess = preprocess or PreprocessProfile("unit")
        self.name, self.sha256, self.domain = name, sha256, domain

    @property
    def targets(self) -> list[str]:
        """Labels a user may ask about: a finite decision threshold and a non-empty name."""
        return [label for label, t in zip(self.labels, self.thresholds.tolist())
                if label.strip() and math.isfinite(t)]

    @property
    def device(self) -> torch.device:
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """`[B, C, H, W]` images in [0, 1] -> `[B, L]` logits, differentiable w.r.t. the images."""
        if hasattr(images, "to_tensor"):  # a Scan
            images = images.to_tensor()
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
            raise ModelError(f"classifier '{self.name}' needs images shaped [B, C, H, W], got {shape}")
        inputs = self.preprocess.apply(images.to(self.device, torch.float32))
        try:
            output = self.network(inputs)
        except XCounterError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ModelError(f"classifier '{self.name}' failed on input {tuple(inputs.shape)}: {_brief(exc)}") from None
        return self._checked(output, images.shape[0])

    def _checked(self, output, batch: int) -> torch.Tensor:
        """Refuse outputs that would silently produce nonsense explanations."""
        if not isinstance(output, torch.Tensor):
            raise ModelError(f"classifier '{self.name}' returned {type(output).__name__}, not a tensor of logits")
        expected = (batch, len(self.labels))
        if tuple(output.shape) != expected:
            raise ModelError(f"classifier '{self.name}' returned shape {tuple(output.shape)}, expected "
                             f"{expected} (batch x {len(self.labels)} labels)")
        if not torch.isfinite(output).all():
            raise ModelError(f"classifier '{self.name}' returned NaN or infinite logits")
        return output.float()

    def margins(self, images: torch.Tensor) -> torch.Tensor:
        """`logits - thresholds`: > 0 is a positive decision (NaN for labels without a threshold)."""
        return self.logits(images) - self.thresholds

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """`sigmoid(margin)`: 0.5 exactly at the decision threshold, like torchxrayvision's op_norm."""
        return torch.sigmoid(self.margins(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[list[Prediction]]:
        """Per image, one `Prediction` for each offered target (labels without a threshold are left out)."""
        logits = self.logits(images).cpu()
        targets = set(self.targets)
        offered = [i for i, label in enumerate(self.labels) if label in targets]
        thresholds = self.thresholds.cpu()
        return [[Prediction(label=self.labels[i], logit=float(row[i]), threshold=float(thresholds[i]),
                            probability=float(torch.sigmoid(row[i] - thresholds[i])),
                            positive=bool(row[i] > thresholds[i])) for i in offered] for row in logits]

    def target_index(self, label: str) -> int:
        """Index of an offered target; unknown names raise a "did you mean" error."""
        if label in self.targets:
            return self.labels.index(label)
        folded = {t.lower(): t for t in self.targets}
        if label.lower() in folded:
            return self.labels.index(folded[label.lower()])
        if label in self.labels:
            raise XCounterError(f"label '{label}' has no decision threshold in classifier '{self.name}'; "
                                f"offered targets: {', '.join(self.targets)}")
        close = difflib.get_close_matches(label, self.targets, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise XCounterError(f"unknown target '{label}' for classifier '{self.name}'; {hint}"
                            f"offered targets: {', '.join(self.targets)}")

    def finding(self, label: str) -> str:
        """The disease label an output reports (the label itself; a wrapper that renames outputs says otherwise),
        used to match a target with the pathology attribute of the same label."""
        return label

    def identity(self) -> dict:
        """What a report needs to say which model decided: file, hash, labels, thresholds, preprocessing."""
        return {"name": self.name, "sha256": self.sha256, "domain": self.domain, "labels": list(self.labels),
                "thresholds": [None if not math.isfinite(t) else t for t in self.thresholds.tolist()],
                "targets": self.targets, "preprocess": self.preprocess.to_dict()}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, labels={len(self.labels)}, preprocess={self.preprocess.name!r}"


def logit(probability: "float | Sequence[float] | np.ndarray") -> list[float]:
    """Probability thresholds (torchxrayvision `op_threshs`) -> logit thresholds; NaN stays NaN."""
    values = np.atleast_1d(np.asarray(probability, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(values) - np.log1p(-values)
    return [float(v) for v in out]
