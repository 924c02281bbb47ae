"""One checkpointed optimisation loop shared by the VAE stage and the UNet stage.

Why its own module: exact resume (same final weights whether or not a run was interrupted) needs
three things done the same way in every stage: the loss at a step depends only on (seed, step),
the checkpoint holds models + optimizer + EMA + RNG states + step, and the log is cut back to the
checkpoint on resume.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from xcounter.utils.atomic import atomic_write


@dataclass
class Stage:
    """What one training stage optimises. `loss_at(step)` must be a pure function of step."""

    name: str
    modules: dict[str, torch.nn.Module]
    parameters: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    loss_at: Callable[[int], torch.Tensor]
    steps: int
    lr: float
    warmup: int = 0
    ema: object | None = None           # diffusers.training_utils.EMAModel over `parameters`
    max_grad_norm: float = 1.0
    history: list[float] = field(default_factory=list)

    def lr_at(self, step: int) -> float:
        """Linear warm-up then constant: a function of the step, so nothing to checkpoint."""
        return self.lr * min(1.0, (step + 1) / self.warmup) if self.warmup else self.lr


def checkpoint_path(folder: Path, stage: str) -> Path:
    return folder / f"{stage}.pt"


def _rng_states() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _restore_rng(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def save_checkpoint(stage: Stage, step: int, folder: Path, accelerator, elapsed: float) -> None:
    """Write models, optimizer, EMA, RNG states and step atomically (one file per stage)."""
    state = {
        "stage": stage.name, "step": step, "elapsed": elapsed,
        "modules": {k: accelerator.unwrap_model(m).state_dict() for k, m in stage.modules.items()},
        "optimizer": stage.optimizer.state_dict(),
        "ema": stage.ema.state_dict() if stage.ema is not None else None,
        "rng": _rng_states(),
    }
    if accelerator.is_main_process:
        with atomic_write(checkpoint_path(folder, stage.name), "wb") as handle:
            torch.save(state, handle)


def load_checkpoint(stage: Stage, folder: Path, accelerator) -> tuple[int, float]:
    """Restore a stage from its checkpoint if there is one; return (step, seconds so far)."""
    path = checkpoint_path(folder, stage.name)
    if not path.is_file():
        return 0, 0.0
    state = torch.load(path, map_location="cpu", weights_only=False)
    for key, module in stage.modules.items():
        accelerator.unwrap_model(module).load_state_dict(state["modules"][key])
    stage.optimizer.load_state_dict(state["optimizer"])
    if stage.ema is not None and state["ema"] is not None:
        stage.ema.load_state_dict(state["ema"])
        stage.ema.to(stage.parameters[0].device)  # the checkpoint was read onto the CPU
    _restore_rng(state["rng"])
    return int(state["step"]), float(state["elapsed"])


def trim_log(log_path: Path, stage: str, step: int) -> None:
    """Drop log lines of `stage` after `step` (they will be recomputed after a resume)."""
    if not log_path.is_file():
        return
    kept = []
    for line in log_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("stage") != stage or record["step"] <= step:
            kept.append(line)
    with atomic_write(log_path) as handle:
        handle.write("".join(line + "\n" for line in kept))


def run_stage(stage: Stage, accelerator, checkpoint_dir: Path, log_path: Path,
              checkpoint_every: int, resume: bool, progress: bool = True) -> float:
    """Optimise `stage` up to `stage.steps`; return the mean loss of the last (up to) 50 steps."""
    from tqdm.auto import tqdm

    start, elapsed = load_checkpoint(stage, checkpoint_dir, accelerator) if resume else (0, 0.0)
    trim_log(log_path, stage.name, start)
    for module in stage.modules.values():
        module.train()
    began = time.perf_counter() - elapsed
    bar = tqdm(total=stage.steps, initial=start, desc=stage.name, dynamic_ncols=True,
               disable=not (progress and accelerator.is_main_process))
    with open(log_path, "a", encoding="utf-8") as log:
        for step in range(start, stage.steps):
            lr = stage.lr_at(step)
            for group in stage.optimizer.param_groups:
                group["lr"] = lr
            loss = stage.loss_at(step)
            accelerator.backward(loss)
            if stage.max_grad_norm:
                accelerator.clip_grad_norm_(stage.parameters, stage.max_grad_norm)
            stage.optimizer.step()
            stage.optimizer.zero_grad(set_to_none=True)
            if stage.ema is not None:
                stage.ema.step(stage.parameters)
            value = float(loss.detach())
            stage.history.append(value)
            seconds = time.perf_counter() - began
            if accelerator.is_main_process:
                log.write(json.dumps({"stage": stage.name, "step": step + 1, "loss": value, "lr": lr,
                                      "seconds": round(seconds, 3)}) + "\n")
                log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
            done = step + 1
            if done == stage.steps or (checkpoint_every and done % checkpoint_every == 0):
                save_checkpoint(stage, done, checkpoint_dir, accelerator, seconds)
    bar.close()
    if not stage.history:  # resumed a finished stage: report the logged losses
        stage.history = [json.loads(line)["loss"] for line in log_path.read_text().splitlines()
                         if json.loads(line).get("stage") == stage.name]
    tail = stage.history[-50:]
    return float(sum(tail) / len(tail)) if tail else float("nan")
