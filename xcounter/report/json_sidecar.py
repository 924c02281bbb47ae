"""The JSON sidecar: an Explanation's content for programs, with its images as PNG (docs/report-schema.md).

Unlike `Explanation.to_json` (float16 arrays, exact, for audits), the sidecar is meant to be opened by
people and tools: every array is an 8-bit PNG, either a file in `<name>_images/` beside the JSON or
embedded as base64, with the value range needed to map pixels back to numbers.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from xcounter.explanation import Explanation, encode_array
from xcounter.utils.atomic import atomic_dir, write_text_atomic

FORMAT = "xcounter-report"
FORMAT_VERSION = "1.0"


# -- arrays <-> PNG ----------------------------------------------------------------------------
def _value_range(array: np.ndarray, signed: bool) -> tuple[float, float]:
    """[0, 1] for images; symmetric [-a, a] for signed maps (differences, attributions), so that
    mid-grey always means zero; anything outside [0, 1] that claims to be an image also goes signed."""
    finite = array[np.isfinite(array)]
    if not signed and (finite.size == 0 or (finite.min() >= 0.0 and finite.max() <= 1.0)):
        return 0.0, 1.0
    bound = float(np.abs(finite).max()) if finite.size else 0.0
    return (-bound, bound) if bound > 0 else (-1.0, 1.0)


def encode_png(array: np.ndarray, signed: bool = False) -> tuple[bytes, dict]:
    """An HxW, HxWx1 or HxWx3 float array as PNG bytes and the facts needed to decode it."""
    array = np.asarray(array, dtype=np.float32)
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3))):
        raise ValueError(f"cannot store an array of shape {array.shape} as PNG")
    low, high = _value_range(array, signed)
    scaled = (np.nan_to_num(array, nan=low) - low) / (high - low)
    pixels = (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB").save(buffer, format="PNG")
    return buffer.getvalue(), {"shape": list(array.shape), "range": [low, high]}


def decode_png(data: bytes, meta: dict) -> np.ndarray:
    """Inverse of `encode_png` (to within one 8-bit step of the value range)."""
    pixels = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32) / 255.0
    low, high = meta["range"]
    return (low + pixels * (high - low)).reshape(meta["shape"]).astype(np.float32)


# -- walking the explanation's arrays -------------------------------------------------------------
def _array_slots(explanation: Explanation) -> Iterator[tuple[str, list[Any], np.ndarray, bool]]:
    """(file stem, path into the dict form, array, signed) for every array; stems use indices, never labels."""
    yield "image", ["image"], explanation.image, False
    yield "reconstruction", ["reconstruction"], explanation.reconstruction, False
    for t_index, (target, maps) in enumerate(explanation.attributions.items()):
        for m_index, (method, saliency) in enumerate(maps.items()):
            if saliency is not None:
                yield f"attribution-t{t_index}-m{m_index}", ["attributions", target, method], saliency, True
    for r_index, result in enumerate(explanation.results):
        for c_index, counterfactual in enumerate(result.counterfactuals):
            stem, base = f"r{r_index}-c{c_index}", ["results", r_index, "counterfactuals", c_index]
            if counterfactual.image is not None:
                yield f"{stem}-image", base + ["image"], counterfactual.image, False
            if counterfactual.difference is not None:
                yield f"{stem}-difference", base + ["difference"], counterfactual.difference, True
            if counterfactual.region is not None:
                yield f"{stem}-region", base + ["region"], counterfactual.region, False
            if counterfactual.sample is not None:
                yield f"{stem}-sample", base + ["sample"], counterfactual.sample, False
            if counterfactual.kept is not None:
                yield f"{stem}-kept", base + ["kept"], counterfactual.kept, False
            for f_index, frame in enumerate(counterfactual.film):
                if frame is not None:
                    yield f"{stem}-film{f_index}", base + ["film", f_index], frame, False


def _set(tree: Any, path: list[Any], value: Any) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _get(tree: Any, path: list[Any]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def sidecar_content(explanation: Explanation, images_dir_name: str | None) -> tuple[dict, dict[str, bytes]]:
    """The sidecar document and the PNG files it refers to (empty when images are embedded)."""
    document = explanation.to_dict()
    files: dict[str, bytes] = {}
    for stem, path, array, signed in _array_slots(explanation):
        try:
            png, meta = encode_png(array, signed)
        except ValueError:  # an unusual shape: keep the exact float16 form rather than lose it
            _set(document, path, {"encoding": "float16", **encode_array(array)})
            continue
        if images_dir_name is None:
            reference = {"encoding": "png", "png_base64": base64.b64encode(png).decode("ascii"), **meta}
        else:
            name = f"{stem}.png"
            files[name] = png
            reference = {"encoding": "png", "file": f"{images_dir_name}/{name}", **meta}
        _set(document, path, reference)
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "images": "embedded" if images_dir_name is None else "files", "explanation": document}, files


@dataclass
class EncodedSidecar:
    """A sidecar fully encoded in memory, so a caller can finish every rendering before writing anything."""
    path: Path
    text: str
    files: dict[str, bytes]

    @property
    def images_dir(self) -> Path:
        return self.path.with_name(f"{self.path.stem}_images")

    def write(self) -> Path:
        """The images folder, then the JSON, each renamed into place; the folder goes again if the JSON fails."""
        if self.files:
            with atomic_dir(self.images_dir, overwrite=True) as tmp:
                for name, data in self.files.items():
                    (tmp / name).write_bytes(data)
        try:
            write_text_atomic(self.path, self.text)
        except BaseException:
            if self.files:
                with contextlib.suppress(OSError):
                    shutil.rmtree(self.images_dir)
            raise
        return self.path


def encode_json_sidecar(explanation: Explanation, path: str | Path, embed_images: bool = False) -> EncodedSidecar:
    """Encode the sidecar for `path` (PNG files for `<stem>_images/` unless `embed_images`) without writing."""
    path = Path(path)
    images_dir_name = None if embed_images else f"{path.stem}_images"
    document, files = sidecar_content(explanation, images_dir_name)
    return EncodedSidecar(path, json.dumps(document, indent=1, allow_nan=False), files)


def write_json_sidecar(explanation: Explanation, path: str | Path, embed_images: bool = False) -> Path:
    """Encode everything in memory, then write the sidecar atomically (see `EncodedSidecar.write`)."""
    return encode_json_sidecar(explanation, path, embed_images).write()


def read_json_sidecar(path: str | Path) -> Explanation:
    """Read a sidecar back into an Explanation (images to within one 8-bit step)."""
    path = Path(path)
    document = json.loads(path.read_text(encoding="utf-8"))
    if document.get("format") != FORMAT:
        raise ValueError(f"{path} is not an xcounter report sidecar")
    if str(document.get("format_version", "0")).split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise ValueError(f"{path}: sidecar format {document.get('format_version')} is not readable by this version")
    tree = document["explanation"]
    for path_in_tree in list(_reference_paths(tree)):
        reference = _get(tree, path_in_tree)
        if reference.get("encoding") == "float16":
            continue  # already in Explanation's own array form
        if "file" in reference:
            data = (path.parent / reference["file"]).read_bytes()
        else:
            data = base64.b64decode(reference["png_base64"])
        _set(tree, path_in_tree, encode_array(decode_png(data, reference)))
    return Explanation.from_dict(tree)


def _reference_paths(tree: dict) -> Iterator[list[Any]]:
    """Where arrays live in the explanation's dict form (the same slots `_array_slots` fills)."""
    candidates: list[list[Any]] = [["image"], ["reconstruction"]]
    for target, maps in (tree.get("attributions") or {}).items():
        candidates += [["attributions", target, method] for method in maps]
    for r_index, result in enumerate(tree.get("results", [])):
        for c_index, counterfactual in enumerate(result.get("counterfactuals", [])):
            base = ["results", r_index, "counterfactuals", c_index]
            candidates += [base + ["image"], base + ["difference"]]
            for slot in ("region", "sample", "kept"):  # none before schema 1.1 (region), 1.5 (sample), 1.8 (kept)
                if slot in counterfactual:
                    candidates.append(base + [slot])
            candidates += [base + ["film", f] for f in range(len(counterfactual.get("film", [])))]
    for candidate in candidates:
        value = _get(tree, candidate)
        if isinstance(value, dict) and value.get("encoding") in ("png", "float16"):
            yield candidate
