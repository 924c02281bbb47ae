"""Generators shipped with xcounter, loadable by name ("phantom-cxr", "phantom-skin").

Why a registry: users and the CLI say `phantom-cxr`, not a path inside the installed package; a name
whose folder was not shipped must fail with the list of names that do exist.
"""
from __future__ import annotations

from pathlib import Path

from xcounter.errors import ModelError

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"
GENERATOR_NAMES = ("phantom-cxr", "phantom-skin")


def is_zoo_name(spec: str) -> bool:
    """True when `spec` names a zoo generator (shipped or not) rather than a folder."""
    return str(spec) in GENERATOR_NAMES


def available_generators(zoo_dir: Path = ZOO_DIR) -> list[str]:
    """Names whose diffusers folder (with model_index.json) is actually present in the zoo."""
    return [name for name in GENERATOR_NAMES if (zoo_dir / name / "model_index.json").is_file()]


def resolve_generator(name: str, zoo_dir: Path = ZOO_DIR) -> Path:
    """Folder of the zoo generator `name`; a clear ModelError when it is unknown or not shipped."""
    available = available_generators(zoo_dir)
    listed = ", ".join(available) if available else "none are installed"
    if name not in GENERATOR_NAMES:
        raise ModelError(f"unknown generator '{name}': give a diffusers folder or one of the shipped "
                         f"generators ({listed})")
    folder = zoo_dir / name
    if name not in available:
        raise ModelError(f"generator '{name}' is not installed in {zoo_dir} (available: {listed})")
    return folder
