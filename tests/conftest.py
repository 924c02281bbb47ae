"""Shared test setup: one thread (small models are many times slower with torch's default
threading on these shared cores) and tests/ on sys.path for the tiny-model builders."""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


@pytest.fixture(scope="module")
def generator():
    """A tiny random gray Stable Diffusion pipeline (16 px, 4 steps): the engine's tests run real diffusers code."""
    from tiny_generator import TINY_STEPS, tiny_pipeline
    from xcounter.generators import SDGenerator
    return SDGenerator(tiny_pipeline(1, seed=0), steps=TINY_STEPS, name="tiny-sd")


@pytest.fixture(scope="module")
def classifier():
    """The tiny DenseNet as an xcounter Classifier (torchxrayvision preprocessing)."""
    from tiny_classifier import tiny_xrv_classifier
    return tiny_xrv_classifier(0)


@pytest.fixture(scope="module")
def scan():
    """A 16 x 16 noise scan at the tiny generator's resolution."""
    from tiny_classifier import noise_scan
    return noise_scan(16, seed=0)
