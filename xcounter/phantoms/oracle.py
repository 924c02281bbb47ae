"""The attribute oracle: a small multi-head CNN trained on phantoms that measures every attribute of
the domain's yaml on any image (probability for binary attributes, value in [0, 1] for continuous).

Controllability, identity preservation and CFRT need to know what an edit really changed; on
phantoms the truth is known at render time, so a network trained on it is a faithful ruler. It is
trained on phantoms downsampled to 64 px and on lightly blurred / noised copies, so it also reads
the (slightly soft) images the phantom generators produce.

    python -m xcounter.phantoms.oracle --data data/cxr-clean --out xcounter/zoo/oracles/cxr.pt --domain cxr
"""
from __future__ import annotations

import json
import math
import time
import warnings
from importlib import resources
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from xcounter.errors import ModelError, XCounterError
from xcounter.phantoms.nets import OracleNet
from xcounter.phantoms.train import MODEL_SIZE, PhantomSplit, load_split, resize_to
from xcounter.utils.atomic import atomic_write, write_text_atomic
from xcounter.utils.devices import resolve_device

CONFIG_NAME = "xcounter.json"


class Oracle:
    """Measures the attributes of a domain on images `[B, C, H, W]` in [0, 1] (any square size)."""

    def __init__(self, module: torch.nn.Module, config: dict) -> None:
        self.module = module.eval()
        self.config = config
        self.domain: str = config["domain"]
        self.attributes: list[str] = list(config["attributes"])
        self.types: dict[str, str] = dict(config["types"])
        self.size: int = int(config["size"])
        self.channels: int = int(config["channels"])

    @property
    def device(self) -> torch.device:
        """Where the oracle's weights are; images from any device are measured there (it is small)."""
        for parameter in self.module.parameters():
            return parameter.device
        return torch.device("cpu")

    def _prepare(self, images: Tensor) -> Tensor:
        if images.ndim != 4:
            raise XCounterError(f"the oracle expects images [B, C, H, W]; got shape {tuple(images.shape)}")
        if images.shape[1] != self.channels:
            if self.channels == 1 and images.shape[1] == 3:
                images = images.mean(dim=1, keepdim=True)
            elif self.channels == 3 and images.shape[1] == 1:
                images = images.expand(-1, 3, -1, -1)
            else:
                raise XCounterError(f"the {self.domain} oracle expects {self.channels}-channel images; "
                                    f"got {images.shape[1]} channels")
        return resize_to(images.float().to(self.device), self.size)

    def logits(self, images: Tensor) -> Tensor:
        """[B, A] raw head outputs (sigmoid gives the measurements)."""
        out = self.module(self._prepare(images))
        if not torch.isfinite(out).all():
            raise ModelError("the oracle produced NaN or infinite outputs")
        return out

    def measure(self, images: Tensor) -> dict[str, Tensor]:
        """{attribute: Tensor[B]}: probability (binary) or value in [0, 1] (continuous)."""
        values = torch.sigmoid(self.logits(images))
        return {name: values[:, j] for j, name in enumerate(self.attributes)}

    def __repr__(self) -> str:
        return f"Oracle(domain={self.domain!r}, attributes={len(self.attributes)}, size={self.size})"


# ----------------------------------------------------------------------------------- loading / saving
def save_oracle(net: OracleNet, path: str | Path, config: dict) -> None:
    """TorchScript (no pickle) with the config as an extra file, like the phantom classifiers."""
    with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript deprecated; it still is the safe format
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(net.eval())
        with atomic_write(Path(path), "wb") as handle:
            torch.jit.save(scripted, handle, _extra_files={CONFIG_NAME: json.dumps(config)})


def _shipped(domain: str) -> Path:
    return Path(str(resources.files("xcounter") / "zoo" / "oracles" / f"{domain}.pt"))


def load_oracle(spec: str | Path = "cxr") -> Oracle:
    """`"cxr"` / `"skin"` (the shipped oracles) or a path to an oracle `.pt` file."""
    path = _shipped(str(spec)) if str(spec) in ("cxr", "skin") else Path(spec)
    if not path.is_file():
        raise XCounterError(f"no oracle at '{path}'; use 'cxr', 'skin' or a file written by train_oracle")
    extra = {CONFIG_NAME: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            config = json.loads(extra[CONFIG_NAME])
    except Exception as error:  # a corrupt or foreign file
        raise ModelError(f"'{path}' is not an xcounter oracle ({type(error).__name__})") from None
    return Oracle(module, config)


# ----------------------------------------------------------------------------------- training
def degrade(images: Tensor, generator: torch.Generator, max_sigma: float = 1.0, max_noise: float = 0.03) -> Tensor:
    """Lightly blur and/or noise half of a batch: the softness a small diffusion model adds."""
    b = images.shape[0]
    out = images.clone()
    pick = torch.rand(b, generator=generator) < 0.5
    if pick.any():
        sigma = float(torch.rand(1, generator=generator)) * max_sigma + 0.3
        radius = 2
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
        kernel = kernel / kernel.sum()
        c = images.shape[1]
        sub = F.pad(out[pick], (radius,) * 4, mode="replicate")
        sub = F.conv2d(sub, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        sub = F.conv2d(sub, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
        noise = torch.randn(sub.shape, generator=generator) * (torch.rand(sub.shape[0], 1, 1, 1, generator=generator) * max_noise)
        out[pick] = (sub + noise).clamp(0.0, 1.0)
    return out


def _attribute_table(domain: str) -> tuple[list[str], dict[str, str]]:
    from xcounter.attributes import load_attributes
    attrs = load_attributes(domain)
    return attrs.names, {a.name: a.type for a in attrs}


def evaluate_oracle(oracle: Oracle, split: PhantomSplit, *, degrade_seed: int | None = None) -> dict[str, dict]:
    """Per attribute: accuracy at 0.5 (binary) or R^2 (continuous) on a split, optionally degraded."""
    from sklearn.metrics import r2_score
    targets = split.targets(oracle.attributes)
    outs = []
    gen = torch.Generator().manual_seed(degrade_seed or 0)
    with torch.no_grad():
        for i in range(0, len(split), 256):
            images = split.batch(torch.arange(i, min(i + 256, len(split))))
            if degrade_seed is not None:
                images = degrade(images, gen)
            outs.append(torch.sigmoid(oracle.logits(images)))
    values = torch.cat(outs)
    table = {}
    for j, name in enumerate(oracle.attributes):
        if oracle.types[name] == "binary":
            acc = float(((values[:, j] > 0.5).float() == targets[:, j]).float().mean())
            table[name] = {"type": "binary", "accuracy": acc, "prevalence": float(targets[:, j].mean())}
        else:
            table[name] = {"type": "continuous", "r2": float(r2_score(targets[:, j].numpy(), values[:, j].numpy()))}
    return table


def train_oracle(data_dir: str | Path, out_path: str | Path, domain: str | None = None, *, epochs: int = 20,
                 seed: int = 0, size: int = MODEL_SIZE, batch_size: int = 64, lr: float = 3e-3,
                 width: int = 24, limit: int | None = None, device: str | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Train the oracle on `data_dir/{train,val,test}`; keep the best val epoch; save TorchScript to
    `out_path` and the per-attribute test table (clean and degraded) to `<out>.metrics.json`.

    `device` (default: CUDA when present) only places the network: batches, their degradation and the
    shuffling stay on the CPU generator, so the data a run sees depends on the seed alone."""
    started = time.time()
    device = resolve_device(device)
    train, val, test = (load_split(data_dir, s, size=size, limit=limit) for s in ("train", "val", "test"))
    domain = domain or train.domain
    if domain != train.domain:
        raise XCounterError(f"'{data_dir}' holds {train.domain} phantoms, not {domain}")
    names, types = _attribute_table(domain)
    missing = [n for n in names if n not in train.records[0]]
    if missing:
        raise XCounterError(f"attributes {missing} are not in the metadata of '{data_dir}'")
    channels = train.images.shape[1]
    y_train, y_val = train.targets(names), val.targets(names)
    config = {"domain": domain, "attributes": names, "types": types, "size": size, "channels": channels,
              "width": width, "seed": seed, "epochs": epochs, "data": str(data_dir)}

    torch.manual_seed(seed)
    net = OracleNet(channels, len(names), width=width).to(device)
    y_train, y_val = y_train.to(device), y_val.to(device)
    gen = torch.Generator().manual_seed(seed)
    steps = math.ceil(len(train) / batch_size)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps, pct_start=0.15)
    best, best_state, history = float("inf"), None, []
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(train), generator=gen)
        total = 0.0
        for i in range(steps):
            index = order[i * batch_size:(i + 1) * batch_size]
            images = degrade(train.batch(index), gen).to(device)
            loss = F.binary_cross_entropy_with_logits(net(images), y_train[index.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(index)
        net.eval()
        with torch.no_grad():
            val_logits = torch.cat([net(val.batch(torch.arange(i, min(i + 256, len(val)))).to(device))
                                    for i in range(0, len(val), 256)])
        val_loss = float(F.binary_cross_entropy_with_logits(val_logits, y_val))
        history.append({"epoch": epoch + 1, "train_loss": total / len(train), "val_loss": val_loss})
        log(f"epoch {epoch + 1}/{epochs} train {total / len(train):.4f} val {val_loss:.4f} "
            f"({time.time() - started:.0f}s)")
        if val_loss < best:
            best, best_state = val_loss, {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    oracle = Oracle(net.to("cpu").eval(), config)
    clean = evaluate_oracle(oracle, test)
    degraded = evaluate_oracle(oracle, test, degrade_seed=seed + 1)
    for name in names:
        key = "accuracy" if types[name] == "binary" else "r2"
        log(f"  {name:22s} {key} {clean[name][key]:.3f} (degraded {degraded[name][key]:.3f})")
    save_oracle(net, out_path, config)
    metrics = {**config, "n": {"train": len(train), "val": len(val), "test": len(test)}, "test": clean,
               "test_degraded": degraded, "history": history, "seconds": round(time.time() - started, 1)}
    out_path = Path(out_path)
    write_text_atomic(out_path.with_name(out_path.stem + ".metrics.json"), json.dumps(metrics, indent=1) + "\n")
    return metrics


def _main() -> None:
    import click

    @click.command()
    @click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False))
    @click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False))
    @click.option("--domain", type=click.Choice(["cxr", "skin"]), default=None)
    @click.option("--epochs", default=20, show_default=True)
    @click.option("--seed", default=0, show_default=True)
    @click.option("--width", default=24, show_default=True, type=click.IntRange(min=4))
    @click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                  help="auto = CUDA when present")
    def cli(data_dir, out_path, domain, epochs, seed, width, device) -> None:
        """Train the attribute oracle of a domain on a phantom dataset (set OMP_NUM_THREADS=1)."""
        torch.set_num_threads(1)
        train_oracle(data_dir, out_path, domain, epochs=epochs, seed=seed, width=width, device=device,
                     log=lambda m: print(m, flush=True))

    cli()


if __name__ == "__main__":
    _main()
