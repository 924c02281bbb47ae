"""`load_classifier`: one entry point for every way a user can hand us a classifier.

Specs: a TorchScript `.pt` (metadata in `_extra_files["xcounter.json"]`); a state_dict (`.pt`/`.pth`)
or `.safetensors` plus `arch=`; `xrv:NAME` from the torchxrayvision cache (never downloads);
`phantom:NAME` from xcounter's zoo; a pickled module only with `trust_pickle=True` (pickle runs code).
"""
from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Sequence

import torch

from xcounter.classifiers.architectures import build_network, canonical_arch, num_outputs, strip_prefix, xrv_facts
from xcounter.classifiers.base import Classifier, logit
from xcounter.classifiers.preprocess import PreprocessProfile, make_profile
from xcounter.classifiers.xrv_logits import XRVLogits, is_xrv_model
from xcounter.errors import InputError, ModelError
from xcounter.utils.hashing import sha256_file

METADATA_FILE = "xcounter.json"
ZOO_CLASSIFIERS = Path(__file__).resolve().parent.parent / "zoo" / "classifiers"
PICKLE_HINT = ("it is a pickled Python object and loading it can run arbitrary code; "
               "pass --trust-pickle (trust_pickle=True) only if you trust the file")


def load_classifier(spec: "str | os.PathLike | torch.nn.Module", *, arch: str | None = None,
                    labels: Sequence[str] | None = None, trust_pickle: bool = False, device: str = "cpu",
                    preprocess: "PreprocessProfile | dict | str | None" = None,
                    domain: str | None = None) -> Classifier:
    """Load a classifier for images in [0, 1]; `labels` / `preprocess` / `domain` override file metadata.

    The result is in eval mode with frozen parameters (explanations need gradients w.r.t. images only).
    """
    overrides = {"labels": list(labels) if labels is not None else None, "preprocess": preprocess, "domain": domain}
    if isinstance(spec, Classifier):
        classifier = spec
    elif isinstance(spec, torch.nn.Module):
        classifier = from_module(spec, type(spec).__name__, None, {}, overrides)
    else:
        text = os.fspath(spec)
        if text.startswith("xrv:"):
            classifier = _load_xrv(text[4:], trust_pickle, overrides)
        elif text.startswith("phantom:"):
            classifier = _load_file(_phantom_path(text[8:]), arch, trust_pickle, overrides, text)
        else:
            classifier = _load_file(Path(text).expanduser(), arch, trust_pickle, overrides, None)
    classifier.eval().requires_grad_(False)
    return classifier.to(device)


# ----------------------------------------------------------------------------- assembling

def _settle(meta: dict, overrides: dict, defaults: dict) -> dict:
    """Explicit arguments beat file metadata, which beats what the architecture implies."""
    return {key: next((src[key] for src in (overrides, meta, defaults) if src.get(key) is not None), None)
            for key in ("labels", "thresholds", "preprocess", "domain")}


def _assemble(network: torch.nn.Module, name: str, sha256: str | None, facts: dict,
              outputs: int | None = None) -> Classifier:
    labels = facts["labels"]
    if not labels:
        raise ModelError(f"classifier '{name}' does not name its labels; pass labels (--labels A,B,...)")
    if outputs is not None and outputs != len(labels):
        raise ModelError(f"classifier '{name}' has {outputs} outputs but {len(labels)} labels were given")
    thresholds = facts["thresholds"]
    if thresholds is not None:
        thresholds = [float("nan") if t is None else float(t) for t in thresholds]
    return Classifier(network, labels, thresholds, PreprocessProfile.from_dict(facts["preprocess"]),
                      name=name, sha256=sha256, domain=facts["domain"])


def from_module(module: torch.nn.Module, name: str, sha256: str | None, meta: dict, overrides: dict) -> Classifier:
    """Wrap an in-memory module; torchxrayvision models bring their own labels and thresholds."""
    if isinstance(module, Classifier):
        return module
    if is_xrv_model(module):
        labels, thresholds, profile = xrv_facts(module)
        facts = _settle(meta, overrides, {"labels": labels, "thresholds": thresholds,
                                          "preprocess": profile, "domain": "cxr"})
        return _assemble(XRVLogits(module), name, sha256, facts)
    own_labels = next((getattr(module, a) for a in ("labels", "pathologies", "targets", "classes")
                       if isinstance(getattr(module, a, None), (list, tuple))), None)
    facts = _settle(meta, overrides, {"labels": own_labels, "preprocess": "unit"})
    return _assemble(module, name, sha256, facts)


# ----------------------------------------------------------------------------- files

def _read_metadata(text: "str | bytes | None", name: str) -> dict:
    if not text:
        return {}
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(f"classifier '{name}' has unreadable {METADATA_FILE} metadata") from None
    if not isinstance(meta, dict):
        raise ModelError(f"classifier '{name}' metadata must be a JSON object")
    return meta


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in entry or entry.endswith("constants.pkl") for entry in archive.namelist())


def _load_file(path: Path, arch: str | None, trust_pickle: bool, overrides: dict, display: str | None) -> Classifier:
    if not path.exists():
        raise InputError(f"classifier file not found: {path} (other specs: xrv:NAME, phantom:NAME)")
    if not path.is_file() or path.stat().st_size == 0:
        raise ModelError(f"classifier file '{path.name}' is empty or not a file")
    name, sha256 = display or path.name, sha256_file(path)
    if path.suffix.lower() == ".safetensors":
        state, meta = _read_safetensors(path)
        return _from_state(state, meta, arch, name, sha256, overrides)
    if _is_torchscript(path):
        extra = {METADATA_FILE: ""}
        try:
            with warnings.catch_warnings():  # TorchScript's deprecation notice is not the user's problem
                warnings.simplefilter("ignore", FutureWarning)
                network = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as exc:  # torch raises RuntimeError subclasses with multi-line text
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise ModelError(f"TorchScript file '{path.name}' cannot be loaded: {detail}") from None
        meta = _read_metadata(extra[METADATA_FILE], name)
        return _assemble(network, name, sha256, _settle(meta, overrides, {"preprocess": "unit"}))
    obj = _torch_load(path, trust_pickle)
    if isinstance(obj, torch.nn.Module):
        return from_module(obj, name, sha256, {}, overrides)
    state, meta = _split_checkpoint(obj, path.name)
    return _from_state(state, meta, arch, name, sha256, overrides)


def _torch_load(path: Path, trust_pickle: bool, safe_classes: Sequence[type] = ()) -> Any:
    """weights_only first (tensors and plain containers only); full unpickling only when trusted."""
    try:
        with torch.serialization.safe_globals(list(safe_classes)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # only a pickle naming a class or function the weights-only loader will not import is a refused one; torch
        # wraps any other failure (text, an image: "Unsupported operand") in the same "Weights only load failed"
        if "Weights only load failed" not in str(exc) or "GLOBAL" not in str(exc):
            raise ModelError(_not_a_model(path)) from None
        if not trust_pickle:
            raise ModelError(f"classifier '{path.name}' was refused: {PICKLE_HINT}") from None
    except Exception:  # text or damaged files make the unpickler fail in many ways
        raise ModelError(_not_a_model(path)) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # code inside the pickle may raise anything
        raise ModelError(f"pickled classifier '{path.name}' cannot be loaded: {type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ''}") from None


def _not_a_model(path: Path) -> str:
    return f"classifier file '{path.name}' is not a TorchScript, state_dict or safetensors file"


def _split_checkpoint(obj: Any, filename: str) -> tuple[dict, dict]:
    """A bare state_dict, or {"state_dict": ..., "labels": ..., ...} with metadata beside the weights."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                meta = {k: v for k, v in obj.items() if k != key}
                return obj[key], meta
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj, {}
    raise ModelError(f"'{filename}' holds a {type(obj).__name__} that is neither a module nor a state_dict")


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = _read_metadata((handle.metadata() or {}).get(METADATA_FILE), path.name)
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"safetensors file '{path.name}' cannot be read: {str(exc).splitlines()[0]}") from None
    return state, meta


def _from_state(state: dict, meta: dict, arch: str | None, name: str, sha256: str, overrides: dict) -> Classifier:
    arch = arch or meta.get("arch")
    if not arch:
        raise ModelError(f"'{name}' holds only weights (a state_dict); pass the architecture with "
                         "--arch (xrv-densenet, densenet121 or resnet50)")
    network, profile, thresholds = build_network(arch, state)
    outputs = _count_outputs(state)
    defaults = {"preprocess": profile, "thresholds": thresholds}
    if canonical_arch(arch) == "xrv-densenet":
        import torchxrayvision as xrv

        defaults["domain"] = "cxr"
        if outputs == len(xrv.models.DenseNet.targets):
            defaults["labels"] = list(xrv.models.DenseNet.targets)
    return _assemble(network, name, sha256, _settle(meta, overrides, defaults), outputs)


def _count_outputs(state: dict) -> int:
    return num_outputs(strip_prefix(state))


# ----------------------------------------------------------------------------- named models

def _phantom_path(name: str) -> Path:
    available = sorted(p.stem for p in ZOO_CLASSIFIERS.glob("*.pt")) if ZOO_CLASSIFIERS.is_dir() else []
    path = ZOO_CLASSIFIERS / f"{name}.pt"
    if not name or "/" in name or "\\" in name or name.startswith(".") or not path.is_file():
        listing = ", ".join(f"phantom:{n}" for n in available) if available else "none are installed"
        raise ModelError(f"no phantom classifier named '{name}'; available: {listing}")
    return path


def xrv_weights_path(name: str) -> Path:
    """Where torchxrayvision keeps (or would download) the weights for `name`."""
    import torchxrayvision as xrv

    url = xrv.models.model_urls[name]["weights_url"]
    return Path(os.path.expanduser(xrv.utils.get_cache_dir())) / os.path.basename(url)


def _xrv_pickle_classes() -> list[type]:
    """Classes in torchxrayvision's released pickles, allowed for weights_only loading (no code runs)."""
    import collections

    import torchxrayvision as xrv
    from torch import nn

    from torchvision.models import densenet

    return [xrv.models.DenseNet, xrv.models._DenseBlock, xrv.models._DenseLayer, xrv.models._Transition,
            densenet.DenseNet, densenet._DenseBlock, densenet._DenseLayer, densenet._Transition,
            nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Sequential, nn.Linear,
            nn.ModuleDict, collections.OrderedDict, set]


def _load_xrv(name: str, trust_pickle: bool, overrides: dict) -> Classifier:
    import difflib

    import torchxrayvision as xrv

    urls = xrv.models.model_urls
    if name not in urls:
        close = difflib.get_close_matches(name, list(urls), n=2)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ModelError(f"unknown torchxrayvision model '{name}'; {hint}known: {', '.join(sorted(urls))}")
    path = xrv_weights_path(name)
    if not path.is_file():  # checked before anything could try to download
        raise ModelError(f"torchxrayvision weights for '{name}' are not in the local cache: expected {path}; "
                         f"download {urls[name]['weights_url']} there on a machine with internet, "
                         "or pass a local weights file with --arch xrv-densenet")
    info = urls[name]
    defaults = {"labels": list(info["labels"]),
                "thresholds": logit(info["op_threshs"]) if info.get("op_threshs") is not None else None,
                "preprocess": make_profile("xrv", size=int(info.get("input_resolution", 224))),
                "domain": "cxr"}
    facts = _settle({}, overrides, defaults)
    obj = _torch_load(path, trust_pickle, safe_classes=_xrv_pickle_classes())
    sha256, display = sha256_file(path), f"xrv:{name}"
    # like torchxrayvision itself, keep only the weights of a pickled module and rebuild the network
    state = obj.state_dict() if isinstance(obj, torch.nn.Module) else _split_checkpoint(obj, path.name)[0]
    state = {key: value for key, value in state.items() if key != "op_threshs"}  # thresholds come from xrv
    network, _, _ = build_network("resnet50" if name.startswith("resnet") else "xrv-densenet", state)
    return _assemble(network, display, sha256, facts, _count_outputs(state))
