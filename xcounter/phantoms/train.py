"""The demo-classifier recipe: a small DenseNet trained on a phantom dataset, thresholds chosen on
val, AUROC on test, saved as a TorchScript classifier that `xcounter.load_classifier` reads.

Also the check that makes a shortcut classifier honest: render the same phantom with one attribute
toggled (via `make_phantom` overrides) and count how often the decision follows it.

    python -m xcounter.phantoms.train classifier --data data/cxr-clean --out cxr-clean.pt --epochs 15
    python -m xcounter.phantoms.train dependence --classifier cxr-clean.pt --domain cxr \
        --attribute pleural_effusion --label Effusion --n 200
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score, roc_curve
from torch import Tensor

from xcounter.errors import XCounterError
from xcounter.phantoms.nets import phantom_densenet
from xcounter.utils.atomic import write_text_atomic

#: side of the images the phantom classifiers and the oracle see (the phantom generators make 64 px)
MODEL_SIZE = 64
SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------------- data
@dataclass
class PhantomSplit:
    """One split of a phantom dataset held in memory: uint8 images (small) and metadata rows."""

    images: Tensor            # [N, C, S, S] uint8
    records: list[dict]
    domain: str

    def __len__(self) -> int:
        return len(self.records)

    def batch(self, index: Tensor) -> Tensor:
        """Float images in [0, 1] for the given row indices."""
        return self.images[index].float() / 255.0

    def targets(self, names: list[str]) -> Tensor:
        """[N, len(names)] float targets (bools and 0/1 labels as 0/1, continuous values as is)."""
        return torch.tensor([[float(r[n]) for n in names] for r in self.records], dtype=torch.float32)


def resize_to(images: Tensor, size: int) -> Tensor:
    """Antialiased square resize: the one way phantoms (128 px) and scans come down to model size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def infer_domain(record: dict) -> str:
    """The phantom domain of a metadata row (explicit `domain`, else skin if it carries Melanoma)."""
    if record.get("domain") in ("cxr", "skin"):
        return record["domain"]
    return "skin" if "Melanoma" in record else "cxr"


def load_split(data_dir: str | Path, split: str, *, size: int = MODEL_SIZE, limit: int | None = None) -> PhantomSplit:
    """Read `data_dir/split/metadata.jsonl` and its PNGs, downsampled to `size` px."""
    folder = Path(data_dir) / split
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        raise XCounterError(f"no phantom split at '{folder}' (missing metadata.jsonl); "
                            "create one with `xcounter phantoms cxr|skin --out DIR`")
    records = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
    if limit is not None:
        records = records[:limit]
    if not records:
        raise XCounterError(f"phantom split '{folder}' is empty")
    domain = infer_domain(records[0])
    mode, channels = ("L", 1) if domain == "cxr" else ("RGB", 3)
    images = torch.empty((len(records), channels, size, size), dtype=torch.uint8)
    for start in range(0, len(records), 256):
        chunk = []
        for record in records[start:start + 256]:
            with Image.open(folder / record["file_name"]) as im:
                array = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
            chunk.append(torch.from_numpy(array.reshape(array.shape[0], array.shape[1], channels)).permute(2, 0, 1))
        small = resize_to(torch.stack(chunk), size)
        images[start:start + len(chunk)] = (small.clamp(0, 1) * 255.0).round().to(torch.uint8)
    return PhantomSplit(images=images, records=records, domain=domain)


def light_augment(images: Tensor, generator: torch.Generator, shift: int = 2) -> Tensor:
    """Shift by up to `shift` px and jitter brightness/contrast a little: enough against
    memorising pixels, too little to erase a 1-pixel device line (no blur, no flips: sides matter)."""
    b = images.shape[0]
    padded = F.pad(images, (shift, shift, shift, shift), mode="replicate")
    dx = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    size = images.shape[-1]
    out = torch.stack([padded[i, :, dy[i]:dy[i] + size, dx[i]:dx[i] + size] for i in range(b)])
    gain = 1.0 + (torch.rand(b, 1, 1, 1, generator=generator) - 0.5) * 0.2
    bias = (torch.rand(b, 1, 1, 1, generator=generator) - 0.5) * 0.1
    return (out * gain + bias).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------- metrics
def youden_thresholds(logits: Tensor, targets: Tensor) -> list[float]:
    """Per label, the logit threshold maximising TPR - FPR on val (0.0 = p 0.5 if val has one class).
    The cut lies midway between neighbouring scores, so `logit - threshold > 0` reproduces it."""
    thresholds = []
    for j in range(targets.shape[1]):
        y, s = targets[:, j].numpy(), logits[:, j].double().numpy()
        if y.min() == y.max():
            thresholds.append(0.0)
            continue
        fpr, tpr, cuts = roc_curve(y, s)
        best = int(np.argmax(tpr - fpr))
        upper = float(min(cuts[best], s.max() + 1.0))  # roc_curve's first cut is +inf
        below = s[s < upper]
        lower = float(below.max()) if below.size else upper - 1.0
        thresholds.append(float((upper + lower) / 2.0))
    return thresholds


def aurocs(logits: Tensor, targets: Tensor, labels: list[str]) -> dict[str, float | None]:
    """Per-label AUROC (None where the split has one class only)."""
    out: dict[str, float | None] = {}
    for j, label in enumerate(labels):
        y = targets[:, j].numpy()
        out[label] = None if y.min() == y.max() else float(roc_auc_score(y, logits[:, j].numpy()))
    return out


@torch.no_grad()
def predict_logits(net: torch.nn.Module, split: PhantomSplit, prepare: Callable[[Tensor], Tensor],
                   batch_size: int = 256) -> Tensor:
    net.eval()
    outs = [net(prepare(split.batch(torch.arange(i, min(i + batch_size, len(split))))))
            for i in range(0, len(split), batch_size)]
    return torch.cat(outs)


# ----------------------------------------------------------------------------------- recipe
def preprocess_for(domain: str, size: int = MODEL_SIZE):
    """The torchxrayvision profile (1 channel, [-1024, 1024]) for CXR, imagenet (3 channels) for skin."""
    from xcounter.classifiers.preprocess import make_profile
    return make_profile("xrv" if domain == "cxr" else "imagenet", size=size)


def default_labels(domain: str, record: dict) -> list[str]:
    from xcounter.attributes import load_attributes
    labels = [label for label in load_attributes(domain).labels if label in record]
    if not labels:
        raise XCounterError(f"the phantom dataset carries none of the {domain} labels")
    return labels


def train_classifier(data_dir: str | Path, out_path: str | Path, *, labels: list[str] | None = None,
                     epochs: int = 15, seed: int = 0, size: int = MODEL_SIZE, batch_size: int = 64,
                     lr: float = 2e-3, weight_decay: float = 1e-4, augment: bool = True,
                     limit: int | None = None, net_kwargs: dict | None = None,
                     log: Callable[[str], None] = print) -> dict:
    """Train a multi-label phantom DenseNet on `data_dir/{train,val,test}` and save it to `out_path`.

    The checkpoint with the lowest val loss is kept; thresholds are Youden-optimal on val (logit
    scale); per-label test AUROCs are printed and written to `<out>.metrics.json`, which is returned.
    """
    from xcounter.classifiers import save_torchscript_classifier

    started = time.time()
    train, val, test = (load_split(data_dir, s, size=size, limit=limit) for s in SPLITS)
    domain = train.domain
    labels = list(labels) if labels else default_labels(domain, train.records[0])
    missing = [label for label in labels if label not in train.records[0]]
    if missing:
        raise XCounterError(f"labels {missing} are not in the metadata of '{data_dir}'")
    profile = preprocess_for(domain, size)
    y_train, y_val, y_test = (s.targets(labels) for s in (train, val, test))
    log(f"{domain}: train {len(train)} val {len(val)} test {len(test)}; labels {labels}; "
        f"train prevalence {[round(v, 3) for v in y_train.mean(0).tolist()]}")

    net = phantom_densenet(len(labels), profile.channels, seed=seed, **(net_kwargs or {}))
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                   pct_start=0.15)
    best_loss, best_state, history = float("inf"), None, []
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(train), generator=gen)
        total = 0.0
        for i in range(steps_per_epoch):
            index = order[i * batch_size:(i + 1) * batch_size]
            images = train.batch(index)
            if augment:
                images = light_augment(images, gen)
            loss = F.binary_cross_entropy_with_logits(net(profile.apply(images)), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(index)
        val_logits = predict_logits(net, val, profile.apply)
        val_loss = float(F.binary_cross_entropy_with_logits(val_logits, y_val))
        val_auc = aurocs(val_logits, y_val, labels)
        history.append({"epoch": epoch + 1, "train_loss": total / len(train), "val_loss": val_loss,
                        "val_auroc": val_auc})
        log(f"epoch {epoch + 1}/{epochs} train {total / len(train):.4f} val {val_loss:.4f} "
            f"auroc {_fmt(val_auc)} ({time.time() - started:.0f}s)")
        if val_loss < best_loss:
            best_loss = val_loss
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    net.eval()

    thresholds = youden_thresholds(predict_logits(net, val, profile.apply), y_val)
    test_logits = predict_logits(net, test, profile.apply)
    test_auc = aurocs(test_logits, y_test, labels)
    cut = torch.tensor(thresholds)
    accuracy = {label: float(((test_logits[:, j] > cut[j]).float() == y_test[:, j]).float().mean())
                for j, label in enumerate(labels)}
    log(f"test auroc {_fmt(test_auc)}; test accuracy at val thresholds {_fmt(accuracy)}")

    out_path = Path(out_path)
    save_torchscript_classifier(net, out_path, labels, thresholds, profile, domain)
    metrics = {
        "model": out_path.name, "data": str(data_dir), "domain": domain, "labels": labels,
        "thresholds": thresholds, "test_auroc": test_auc, "test_accuracy": accuracy,
        "n": {"train": len(train), "val": len(val), "test": len(test)},
        "train_prevalence": dict(zip(labels, y_train.mean(0).tolist())),
        "epochs": epochs, "seed": seed, "size": size, "batch_size": batch_size, "lr": lr,
        "best_val_loss": best_loss, "history": history, "seconds": round(time.time() - started, 1),
    }
    write_text_atomic(metrics_path(out_path), json.dumps(metrics, indent=1) + "\n")
    return metrics


def metrics_path(model_path: str | Path) -> Path:
    """`cxr-clean.pt` -> `cxr-clean.metrics.json` (the training summary kept beside the model)."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".metrics.json")


def _fmt(values: dict) -> str:
    return ", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in values.items())


# ----------------------------------------------------------------------------------- dependence check
def render_pairs(domain: str, attribute: str, seeds: list[int], fixed: dict | None = None,
                 size: int = MODEL_SIZE) -> tuple[Tensor, Tensor, list[dict]]:
    """The same phantoms (same seeds) rendered with `attribute` off and on, at model size."""
    from xcounter.phantoms import make_phantom

    off, on, attrs = [], [], []
    for seed in seeds:
        for value, bucket in ((False, off), (True, on)):
            image, a = make_phantom(domain, seed, **{**(fixed or {}), attribute: value})
            bucket.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
            if value:
                attrs.append(a)
    return resize_to(torch.stack(off), size), resize_to(torch.stack(on), size), attrs


@torch.no_grad()
def attribute_dependence(classifier, domain: str, attribute: str, label: str, *, n: int = 200,
                         seed: int = 1_000_000, fixed: dict | None = None,
                         pairs: tuple[Tensor, Tensor] | None = None) -> dict:
    """How often `classifier`'s decision on `label` follows `attribute` toggled on identical phantoms.

    Returns flip_rate (share of pairs whose decision differs), positive rates with the attribute
    off / on, and the mean margin shift (on - off). `fixed` pins other attributes (e.g. the disease);
    `pairs` = (off, on) from `render_pairs` lets several classifiers share one rendering.
    """
    index = classifier.target_index(label)
    if pairs is None:
        pairs = render_pairs(domain, attribute, list(range(seed, seed + n)), fixed)[:2]
    off, on = pairs
    margin_off = classifier.margins(off)[:, index]
    margin_on = classifier.margins(on)[:, index]
    pos_off, pos_on = margin_off > 0, margin_on > 0
    return {"attribute": attribute, "label": label, "n": int(off.shape[0]), "seed": seed, "fixed": fixed or {},
            "flip_rate": float((pos_off != pos_on).float().mean()),
            "positive_rate_off": float(pos_off.float().mean()),
            "positive_rate_on": float(pos_on.float().mean()),
            "mean_margin_shift": float((margin_on - margin_off).mean())}


# ----------------------------------------------------------------------------------- command line
def _parse_fixed(items: tuple[str, ...]) -> dict:
    fixed = {}
    for item in items:
        name, _, value = item.partition("=")
        low = value.strip().lower()
        fixed[name] = True if low in ("1", "true", "yes") else False if low in ("0", "false", "no") else float(value)
    return fixed


def _main() -> None:
    import click

    @click.group()
    def cli() -> None:
        """Train and check the phantom demo classifiers (set OMP_NUM_THREADS=1)."""
        torch.set_num_threads(1)

    @cli.command("classifier")
    @click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False))
    @click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False))
    @click.option("--label", "labels", multiple=True, help="label(s) to train (default: all in the data)")
    @click.option("--epochs", default=15, show_default=True)
    @click.option("--seed", default=0, show_default=True)
    @click.option("--batch-size", default=64, show_default=True)
    @click.option("--lr", default=2e-3, show_default=True)
    def classifier_cmd(data_dir, out_path, labels, epochs, seed, batch_size, lr) -> None:
        train_classifier(data_dir, out_path, labels=list(labels) or None, epochs=epochs, seed=seed,
                         batch_size=batch_size, lr=lr, log=lambda m: print(m, flush=True))

    @cli.command("dependence")
    @click.option("--classifier", "models", required=True, multiple=True, help="one or more classifiers")
    @click.option("--domain", required=True, type=click.Choice(["cxr", "skin"]))
    @click.option("--attribute", required=True)
    @click.option("--label", required=True)
    @click.option("--n", default=200, show_default=True)
    @click.option("--seed", default=1_000_000, show_default=True)
    @click.option("--fix", multiple=True, help="NAME=VALUE attribute pinned in every pair")
    def dependence_cmd(models, domain, attribute, label, n, seed, fix) -> None:
        """Toggle ATTRIBUTE on the same phantoms; print one JSON line per classifier."""
        from xcounter.classifiers import load_classifier
        fixed = _parse_fixed(fix)
        pairs = render_pairs(domain, attribute, list(range(seed, seed + n)), fixed)[:2]
        for model in models:
            result = attribute_dependence(load_classifier(model), domain, attribute, label, seed=seed,
                                          fixed=fixed, pairs=pairs)
            print(json.dumps({"classifier": str(model), **result}), flush=True)

    try:
        cli(standalone_mode=False)
    except XCounterError as exc:  # a wrong name or path: one line, as the xcounter CLI gives
        raise SystemExit(f"Error: {exc}") from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None


if __name__ == "__main__":
    _main()
