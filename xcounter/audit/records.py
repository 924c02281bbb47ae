"""The audit's journal: one JSON line per finished scan, appended, flushed and fsynced one at a time.

A crash (even `kill -9`) can only tear the line being written. `RecordLog.recover` cuts such a torn
tail off before anything new is appended, so a resumed audit loses at most the scan in flight and
never holds a record twice or a corrupt one. The journal is the source of truth: aggregates and
reports are recomputed from it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

from xcounter.errors import XCounterError

STATUS_OK, STATUS_FAILED = "ok", "failed"


def scan_seed(seed: int, scan_id: str) -> int:
    """A per-scan seed from (audit seed, scan id): independent of scan order, worker and resume."""
    digest = hashlib.sha256(f"{int(seed)}:{scan_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def slim_explanation(explanation_dict: dict) -> dict:
    """Drop what an audit does not need (films, saliency maps, images of non-best counterfactuals) so a
    line stays a few tens of kB; keep the scan, its reconstruction and each result's best counterfactual."""
    data = dict(explanation_dict)
    data["attributions"] = {}
    results = []
    for result in data.get("results", []):
        result = dict(result)
        counterfactuals = [dict(c, film=[]) for c in result.get("counterfactuals", [])]
        best = best_index(counterfactuals)
        for index, counterfactual in enumerate(counterfactuals):
            if index != best:
                counterfactual["image"] = counterfactual["difference"] = None
        result["counterfactuals"] = counterfactuals
        results.append(result)
    data["results"] = results
    return data


def best_index(counterfactuals: list[dict]) -> int | None:
    """Index of the best counterfactual as `AttributeResult.best` picks it (smallest flip, else largest change)."""
    if not counterfactuals:
        return None
    flips = [i for i, c in enumerate(counterfactuals) if c.get("flipped") and c.get("minimal_strength") is not None]
    if flips:
        return min(flips, key=lambda i: counterfactuals[i]["minimal_strength"])
    return max(range(len(counterfactuals)),
               key=lambda i: abs(counterfactuals[i]["probability_after"] - counterfactuals[i]["probability_before"]))


def make_record(scan_id: str, path: str, status: str, reason: str | None = None,
                explanation: dict | None = None, seed: int | None = None, seconds: float | None = None) -> dict:
    return {"scan_id": scan_id, "path": path, "status": status, "reason": reason, "seed": seed,
            "seconds": seconds, "explanation": explanation}


def _finite(value: Any) -> Any:
    """NaN / inf -> None: a journal line must be strict JSON that any reader accepts."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def dumps_record(record: dict) -> str:
    """One record as one line of compact, strict JSON."""
    try:
        return json.dumps(record, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(record), separators=(",", ":"), allow_nan=False)


class RecordLog:
    """`explanations.jsonl`: recover (truncate a torn tail, index finished scans), then append records."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def recover(self) -> dict[str, str]:
        """Cut off a torn last line; return {scan_id: status} of the complete records.

        Only the *last* line may be torn (appends are sequential); a bad line elsewhere means the file
        was edited by hand and is reported rather than guessed at.
        """
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        finished: dict[str, str] = {}
        position = 0
        while position < len(data):
            newline = data.find(b"\n", position)
            if newline == -1:  # no newline: the write of this line was cut short
                break
            raw = data[position:newline]
            if raw.strip():
                try:
                    record = json.loads(raw)
                except ValueError:
                    record = None
                if not isinstance(record, dict) or "scan_id" not in record:
                    if data[newline + 1:].strip():
                        raise XCounterError(f"'{self.path}' holds an invalid record before its last line; "
                                            "the journal was edited or corrupted (remove that line to resume)")
                    break
                if record["scan_id"] in finished:
                    raise XCounterError(f"'{self.path}' holds scan '{record['scan_id']}' twice")
                finished[record["scan_id"]] = record.get("status", STATUS_OK)
            position = newline + 1
        if position != len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(position)
                handle.flush()
                os.fsync(handle.fileno())
        return finished

    def append(self, record: dict) -> None:
        """One line, flushed and fsynced before returning: once this returns, the scan is done for good."""
        line = dumps_record(record) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def records(self) -> Iterator[dict[str, Any]]:
        """Complete records in file order (call `recover` first after a crash)."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as handle:
            for raw in handle:
                if raw.endswith("\n") and raw.strip():
                    yield json.loads(raw)

    def drop(self, scan_ids: set[str]) -> None:
        """Rewrite the journal without `scan_ids` (to retry failed scans), atomically."""
        from xcounter.utils.atomic import atomic_write

        with atomic_write(self.path, "w") as handle:
            for record in self.records():
                if record["scan_id"] not in scan_ids:
                    handle.write(dumps_record(record) + "\n")
