"""xcounter: counterfactual explanations for medical image classifiers.

Public API (imported lazily so `xcounter --help` stays fast)::

    import xcounter
    classifier = xcounter.load_classifier("densenet.pt")
    generator = xcounter.load_generator("phantom-cxr")
    explanation = xcounter.Explainer(classifier, generator, attributes="cxr").explain("scan.png")
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_scan": "xcounter.io",
    "Scan": "xcounter.io",
    "load_classifier": "xcounter.classifiers",
    "Classifier": "xcounter.classifiers",
    "load_generator": "xcounter.generators",
    "SDGenerator": "xcounter.generators",
    "load_attributes": "xcounter.attributes",
    "Explainer": "xcounter.explainer",
    "Explanation": "xcounter.explanation",
    "audit": "xcounter.audit",
    "load_oracle": "xcounter.phantoms.oracle",
    "XCounterError": "xcounter.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xcounter' has no attribute '{name}'")
