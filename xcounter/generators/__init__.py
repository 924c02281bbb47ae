"""Generators: any local diffusers Stable Diffusion folder (or a shipped phantom) as an `SDGenerator`."""
from xcounter.generators.stable_diffusion import (
    DenoisePrefix,
    Inversion,
    SDGenerator,
    SwapSchedule,
    load_generator,
)
from xcounter.generators.zoo import available_generators

__all__ = ["DenoisePrefix", "Inversion", "SDGenerator", "SwapSchedule", "available_generators", "load_generator"]
