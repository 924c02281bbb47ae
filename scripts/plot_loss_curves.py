"""Loss curves of the shipped generators (model cards), from the training logs shipped beside the weights.

Why a script: the logs are the record; the figure is redrawn from them whenever a model is retrained, so the
card never shows a curve of weights that are no longer shipped.

    python scripts/plot_loss_curves.py            # writes reports/figures/zoo_loss.png
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "xcounter" / "zoo"
#: (log file, stage in it, curve label, step offset): later logs continue an earlier stage's step count
LOGS = {
    "phantom-cxr": [("train_log.jsonl", "vae", "VAE", 0), ("train_log.jsonl", "unet", "UNet + text encoder", 0),
                    ("continue_train_log.jsonl", "unet", "UNet + text encoder, continued", 2000),
                    ("decoder_train_log.jsonl", "vae_decoder", "VAE decoder alone", 0)],
    "phantom-skin": [("train_log.jsonl", "vae", "VAE (with the detail term)", 0),
                     ("train_log.jsonl", "unet", "UNet + text encoder (batch 128)", 0),
                     ("continue_train_log.jsonl", "unet", "UNet + text encoder, continued (batch 32)", 3250)],
}
WINDOW = 25


def curve(path: Path, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and losses of one stage; a resumed run's repeated steps keep their last record."""
    by_step: dict[int, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["stage"] == stage:
            by_step[int(record["step"])] = float(record["loss"])
    steps = np.array(sorted(by_step))
    return steps, np.array([by_step[s] for s in steps])


def smooth(values: np.ndarray) -> np.ndarray:
    window = min(WINDOW, len(values))
    return np.convolve(values, np.ones(window) / window, mode="valid")


def main(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xcounter.utils.atomic import atomic_write

    fig, axes = plt.subplots(1, len(LOGS), figsize=(5.5 * len(LOGS), 3.4))
    for ax, (model, logs) in zip(axes, LOGS.items()):
        for name, stage, label, offset in logs:
            steps, losses = curve(ZOO / model / name, stage)
            if len(steps):
                ax.plot(steps[len(steps) - len(smooth(losses)):] + offset, smooth(losses), label=label)
        ax.set(title=f"{model}: training loss ({WINDOW}-step mean)", xlabel="step", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(out, "wb") as handle:
        fig.savefig(handle, dpi=100, format="png")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "reports" / "figures" / "zoo_loss.png")
