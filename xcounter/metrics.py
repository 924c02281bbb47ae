"""Measures of a counterfactual: proximity (L1, SSIM), faithfulness (flip rate, CFRT),
realism (Fréchet distance on pluggable features) and trajectory shape (direction cosine).

Inputs are numpy arrays or torch tensors; images are H x W x C (or [B, C, H, W] tensors) in [0, 1].
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _hwc(image) -> np.ndarray:
    """One image as H x W x C: accepts HxWxC, HxW, CxHxW or 1xCxHxW (tensors are channel-first)."""
    is_tensor = isinstance(image, torch.Tensor)
    array = _numpy(image)
    if array.ndim == 4:
        array = array[0]
    if array.ndim == 2:
        return array[..., None]
    if is_tensor and array.ndim == 3:
        return np.moveaxis(array, 0, -1)
    return array


def l1(a, b) -> float:
    """Mean absolute difference (images in [0, 1])."""
    return float(np.mean(np.abs(_numpy(a) - _numpy(b))))


def ssim(a, b) -> float:
    """Structural similarity (skimage, data_range 1) of two images, averaged over channels."""
    from skimage.metrics import structural_similarity
    a, b = _hwc(a), _hwc(b)
    side = min(a.shape[0], a.shape[1])
    win_size = min(7, side if side % 2 == 1 else side - 1)
    return float(structural_similarity(a, b, data_range=1.0, channel_axis=-1, win_size=win_size))


def cosine(a, b) -> float:
    """Cosine similarity of two flattened vectors (0 when either is zero)."""
    a, b = _numpy(a).ravel(), _numpy(b).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else 0.0


def direction_cosine_along(points) -> list[float]:
    """Cosine between successive steps P_{k+1} - P_k of a trajectory [K, ...]: 1 = straight, lower = curving."""
    array = _numpy(points)
    steps = np.diff(array.reshape(array.shape[0], -1), axis=0)
    return [cosine(steps[k], steps[k + 1]) for k in range(len(steps) - 1)]


def cfrt(prob_changes: Mapping[str, Sequence[float]], target: str, sign: float = 1.0) -> float:
    """Classifier Flip Rate along a Trajectory.

    `prob_changes[attr][t]` is the change of attribute `attr`'s (oracle or classifier)
    probability at trajectory point t relative to the source. The rate is the share of points
    where the edited attribute moves in the intended direction (`sign` +1 add, -1 remove) by more
    than any other attribute moves in either direction: the edit is the dominant change.
    """
    if target not in prob_changes:
        raise KeyError(f"no probability changes for '{target}'")
    own = sign * _numpy(prob_changes[target]).ravel()
    if own.size == 0:
        return float("nan")
    others = [np.abs(_numpy(v).ravel()) for k, v in prob_changes.items() if k != target]
    if not others:
        return float(np.mean(own > 0))
    strongest_other = np.max(np.stack(others), axis=0)
    return float(np.mean(own > strongest_other))


def flip_rate(before, after, threshold: float = 0.0) -> float:
    """Share of samples whose decision (score > threshold) differs between `before` and `after`."""
    b, a = _numpy(before).ravel(), _numpy(after).ravel()
    if b.size == 0:
        return float("nan")
    return float(np.mean((b > threshold) != (a > threshold)))


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, F] (the FID formula).

    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)); features come from any extractor
    (Inception, an xrv DenseNet's `features2`, the oracle), which is why they are passed in.
    """
    from scipy import linalg
    a, b = _numpy(features_a), _numpy(features_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError("frechet_distance needs two [N, F] arrays with the same F")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # singular product: regularise as in the reference FID code
        offset = np.eye(cov_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(max(0.0, diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean)))
