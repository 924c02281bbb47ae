"""Generators: any local diffusers Stable Diffusion folder wrapped as `SDGenerator`."""
