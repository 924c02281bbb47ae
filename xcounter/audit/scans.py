"""Which scans an audit covers: a folder, a manifest CSV, a list of paths or a torchxrayvision dataset.

Every scan gets a stable id (its path relative to the folder / manifest, POSIX style): resuming,
de-duplication and per-scan seeds all key on it, so an audit never depends on listing order.
Workers read the files themselves, so paths must be visible to every worker (a shared disk on a cluster).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from xcounter.errors import XCounterError

#: files in an image folder that are clearly not scans (reports, manifests, our own outputs)
NOT_SCANS = {".csv", ".json", ".jsonl", ".html", ".htm", ".md", ".txt", ".yaml", ".yml", ".py", ".log", ".tmp"}
#: torchxrayvision dataset adapters: name -> (class name, its label table -> image paths relative to imgpath),
#: the same paths the dataset's own __getitem__ would read
DATASETS = {
    "nih": ("NIH_Dataset", lambda table: table["Image Index"].astype(str)),
    "openi": ("Openi_Dataset", lambda table: table["imageid"].astype(str) + ".png"),
    "chexpert": ("CheX_Dataset", lambda table: table["Path"].astype(str)
                 .str.replace("CheXpert-v1.0-small/", "", regex=False).str.replace("CheXpert-v1.0/", "", regex=False)),
}


@dataclass(frozen=True)
class ScanItem:
    """One scan to audit: a stable id, the file to read, and an optional report used as the source prompt."""
    scan_id: str
    path: str
    report_text: str | None = None


def _posix(path: str) -> str:
    return Path(path).as_posix()


def scans_from_folder(folder: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()) -> list[ScanItem]:
    """Every non-hidden file below `folder` (recursively) except obvious non-scans; unreadable files stay in
    the list so the audit can report them with a reason rather than silently skipping them."""
    root = Path(folder)
    if not root.is_dir():
        raise XCounterError(f"image folder '{root}' does not exist or is not a folder")
    excluded = [Path(e).resolve() for e in exclude]
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (here / d).resolve() not in excluded)
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() in NOT_SCANS:
                continue
            path = here / name
            items.append(ScanItem(_posix(os.path.relpath(path, root)), str(path)))
    return sorted(items, key=lambda item: item.scan_id)


def scans_from_manifest(manifest: str | os.PathLike) -> list[ScanItem]:
    """A CSV with a `path` column (relative to the CSV's folder or absolute) and an optional `report_text`."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise XCounterError(f"manifest '{manifest}' does not exist")
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            return _read_manifest(manifest, csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as exc:  # a spreadsheet's binary file, a Latin-1 export
        raise XCounterError(f"manifest '{manifest}' is not a UTF-8 CSV text file ({type(exc).__name__})") from None


def _read_manifest(manifest: Path, reader: csv.DictReader) -> list[ScanItem]:
    if reader.fieldnames is None or "path" not in reader.fieldnames:
        raise XCounterError(f"manifest '{manifest}' needs a 'path' column (found: "
                            f"{', '.join(reader.fieldnames or []) or 'no header'})")
    items: dict[str, ScanItem] = {}
    for line, row in enumerate(reader, start=2):
        value = (row.get("path") or "").strip()
        if not value:
            raise XCounterError(f"manifest '{manifest}' line {line} has an empty path")
        path = Path(value) if Path(value).is_absolute() else manifest.parent / value
        report = (row.get("report_text") or "").strip() or None
        items.setdefault(_posix(value), ScanItem(_posix(value), str(path), report))
    return sorted(items.values(), key=lambda item: item.scan_id)


def scans_from_dataset(spec: str) -> list[ScanItem]:
    """`nih:PATH`, `openi:PATH` or `chexpert:PATH`: the image list of a torchxrayvision dataset whose
    images the user has on disk (the label tables ship with torchxrayvision; images are read later)."""
    name, _, imgpath = spec.partition(":")
    if name.lower() not in DATASETS or not imgpath:
        raise XCounterError(f"dataset '{spec}' is not one of {', '.join(f'{d}:PATH' for d in DATASETS)}")
    class_name, relative = DATASETS[name.lower()]
    if not Path(imgpath).is_dir():
        raise XCounterError(f"dataset image folder '{imgpath}' does not exist or is not a folder")
    import torchxrayvision as xrv

    kwargs = {"imgpath": imgpath}
    if name.lower() == "chexpert":  # CheXpert's label table ships with the images, not with the library
        csvs = [Path(imgpath) / f for f in ("train.csv", "valid.csv") if (Path(imgpath) / f).is_file()]
        if not csvs:
            raise XCounterError(f"CheXpert folder '{imgpath}' has no train.csv or valid.csv")
        kwargs["csvpath"] = str(csvs[0])
    try:
        dataset = getattr(xrv.datasets, class_name)(**kwargs)
    except Exception as exc:  # noqa: BLE001 - torchxrayvision raises bare Exception for bad paths
        raise XCounterError(f"cannot open dataset '{spec}': {exc}") from None
    items = {}
    for rel in relative(dataset.csv):
        rel = _posix(rel)
        items.setdefault(rel, ScanItem(rel, str(Path(imgpath) / rel)))
    return sorted(items.values(), key=lambda item: item.scan_id)


def collect_scans(scans: "str | os.PathLike | Sequence[str | os.PathLike | ScanItem]",
                  exclude: Iterable[str | os.PathLike] = ()) -> list[ScanItem]:
    """Normalise what a user passes (folder, manifest .csv, `name:PATH` dataset, list of paths or ScanItems)."""
    if isinstance(scans, (str, os.PathLike)):
        text = os.fspath(scans)
        if Path(text).is_dir():
            return scans_from_folder(text, exclude)
        if Path(text).suffix.lower() == ".csv":
            return scans_from_manifest(text)
        if ":" in text and text.split(":", 1)[0].lower() in DATASETS:
            return scans_from_dataset(text)
        if not Path(text).exists():
            raise XCounterError(f"scans '{text}' does not exist")
        raise XCounterError(f"scans '{text}' is neither a folder, a manifest .csv nor a dataset "
                            f"({', '.join(f'{d}:PATH' for d in DATASETS)})")
    items: dict[str, ScanItem] = {}
    for entry in scans:
        item = entry if isinstance(entry, ScanItem) else ScanItem(_posix(os.fspath(entry)), os.fspath(entry))
        if item.scan_id in items:
            raise XCounterError(f"scan '{item.scan_id}' is listed twice")
        items[item.scan_id] = item
    return sorted(items.values(), key=lambda item: item.scan_id)
