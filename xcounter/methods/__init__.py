"""Counterfactual methods behind one interface (`CounterfactualMethod.generate`), found by name.

Each lives in its own module and is imported only when asked for, so a missing optional
dependency of one baseline never breaks the others.
"""
from __future__ import annotations

import difflib
import importlib

from xcounter.errors import XCounterError
from xcounter.methods.base import SIGNS, CounterfactualMethod, EditContext

#: method name -> module defining a class whose `name` is that method name
METHODS = {
    "trajectory": "xcounter.methods.trajectory",
    "latent_shift": "xcounter.methods.latent_shift",
    "sdedit": "xcounter.methods.sdedit",
    "random": "xcounter.methods.random_direction",
}


def method_class(name: str) -> type:
    """The class implementing method `name` (unknown names raise XCounterError with a hint)."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise XCounterError(f"unknown counterfactual method '{name}'; {hint}known: {', '.join(METHODS)}")
    module = importlib.import_module(METHODS[name])
    for value in vars(module).values():
        if isinstance(value, type) and getattr(value, "name", None) == name and hasattr(value, "generate"):
            return value
    raise XCounterError(f"module {METHODS[name]} defines no method class named '{name}'")


def get_method(name: str, **kwargs) -> CounterfactualMethod:
    """An instance of counterfactual method `name` ("trajectory" | "latent_shift" | "sdedit" | "random")."""
    return method_class(name)(**kwargs)


__all__ = ["METHODS", "SIGNS", "CounterfactualMethod", "EditContext", "get_method", "method_class"]
