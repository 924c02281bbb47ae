"""`audit`: explain a classifier over many scans, resumably, and aggregate what drives its decisions.

The journal (`explanations.jsonl`) is the source of truth: every finished scan is one fsynced line,
a re-run skips what is there, and the report is recomputed from it. So an audit killed at any moment and
re-run ends with every scan exactly once and the same numbers as an uninterrupted run.
"""
from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from xcounter.attributes import AttributeSet
from xcounter.audit.aggregate import ALERT_MIN_SCANS, ALERT_THRESHOLD, AttributeStat, AuditAggregate, aggregate_records
from xcounter.audit.executors import Executor, SerialExecutor
from xcounter.audit.records import STATUS_FAILED, STATUS_OK, RecordLog
from xcounter.audit.scans import ScanItem, collect_scans
from xcounter.audit.stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES
from xcounter.audit.worker import AuditJob, load_vocabulary
from xcounter.errors import XCounterError
from xcounter.utils.atomic import write_text_atomic

JOURNAL_NAME = "explanations.jsonl"
CONFIG_NAME = "audit.json"
#: settings that must match for a re-run to continue an existing journal
CONFIG_KEYS = ("classifier_sha256", "classifier_name", "generator_config_sha256", "generator_settings", "seed",
               "targets", "attributes", "attributes_sha256", "steps", "oracle", "explainer_options")
#: the generator's own settings (its xcounter.json) that change every explanation: the config digest covers the
#: networks' configurations only
GENERATOR_SETTINGS = ("guidance_scale", "edit_guidance", "kind_edits", "inversion", "inversion_eta",
                      "inversion_iterations", "confirm_shortcuts", "anchor", "prune_fractions", "fill_removals")


@dataclass
class AuditResult:
    """What an audit produced: the aggregate (stats, alerts, failures), run metadata and file paths."""
    out_dir: Path
    aggregate: AuditAggregate
    metadata: dict
    report_html: Path | None = None
    report_json: Path | None = None
    scan_ids: frozenset[str] = frozenset()

    @property
    def journal(self) -> Path:
        return self.out_dir / JOURNAL_NAME

    @property
    def alerts(self) -> list[AttributeStat]:
        return self.aggregate.alerts

    @property
    def failures(self) -> list[dict]:
        return self.aggregate.failures

    def stat(self, target: str, attribute: str) -> AttributeStat | None:
        return self.aggregate.stat(target, attribute)

    def records(self) -> Iterator[dict]:
        """The journal's records of this audit's scans (streamed)."""
        for record in RecordLog(self.journal).records():
            if not self.scan_ids or record["scan_id"] in self.scan_ids:
                yield record

    def explanations(self) -> Iterator[tuple[str, Any]]:
        """(scan id, Explanation) for every explained scan; films and saliency maps are not stored."""
        from xcounter.explanation import Explanation

        for record in self.records():
            if record["status"] == STATUS_OK:
                yield record["scan_id"], Explanation.from_dict(record["explanation"])


def _versions(executor: Executor) -> dict[str, str]:
    import xcounter

    versions = {"xcounter": xcounter.__version__}
    names = ["torch", "diffusers", "transformers", "numpy"] + (["ray"] if executor.name == "ray" else [])
    for name in names:
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            versions[name] = "missing"
    return versions


def _default_attributes(classifier: Any, generator: Any) -> str:
    for domain in (getattr(classifier, "domain", None), getattr(generator, "domain", None)):
        if domain in ("cxr", "skin"):
            return domain
    raise XCounterError("cannot tell which attribute vocabulary to use; pass attributes='cxr', 'skin' or a YAML file")


def _settled(value: Any) -> Any:
    """A config value as compared on resume: a dict without its unset (None) entries."""
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value


def _check_config(out_dir: Path, config: dict, journal_has_records: bool) -> None:
    path = out_dir / CONFIG_NAME
    if journal_has_records and path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        # a key an older audit.json lacks is not held against it (it was written before the key existed), nor a
        # generator setting it lacks that is unset now
        changed = [k for k in CONFIG_KEYS if k in previous and _settled(previous[k]) != _settled(config.get(k))]
        if changed:
            raise XCounterError(f"'{out_dir}' holds an audit with different {', '.join(changed)}; "
                                "use another output folder or start over (resume=False / --fresh)")
    write_text_atomic(path, json.dumps(config, indent=2, default=str))


def audit(classifier: Any, generator: Any, scans: "str | os.PathLike | Sequence[str | os.PathLike | ScanItem]", *,
          out_dir: str | os.PathLike, targets: str | Sequence[str] | None = None,
          attributes: "str | os.PathLike | AttributeSet | None" = None, only: Sequence[str] | None = None,
          seed: int = 0, executor: Executor | None = None, resume: bool = True, retry_failed: bool = False,
          limit: int | None = None, steps: int | None = None, oracle: Any = None, trust_pickle: bool = False,
          explainer_options: dict | None = None, threshold: float = ALERT_THRESHOLD,
          min_scans: int = ALERT_MIN_SCANS, level: float = DEFAULT_LEVEL, n_resamples: int = DEFAULT_RESAMPLES,
          report: bool = True, progress: Callable[[int, int, dict], None] | None = None) -> AuditResult:
    """Audit `classifier` over `scans` and write `explanations.jsonl` plus the aggregate report into `out_dir`.

    classifier, generator: specs (file, folder or zoo name) or loaded objects (objects: serial executor only).
    scans: an image folder, a manifest .csv (`path`, optional `report_text`), `nih:PATH` / `openi:PATH` /
        `chexpert:PATH`, or a list of paths / ScanItems. Scan ids are paths relative to the folder or manifest.
    targets: labels to explain on every scan (None: each scan's positive labels and its closest negative).
    attributes: vocabulary ("cxr", "skin", YAML; default: the classifier's domain); only: examine just these.
    seed: per-scan seeds derive from (seed, scan id), so results do not depend on order or workers.
    executor: `SerialExecutor()` (default) or `RayExecutor(workers, address)`.
    resume: skip scans already in the journal (True) or start over (False); retry_failed: redo failed scans.
    limit: audit only the first `limit` scans (sorted by scan id).
    threshold, min_scans, level, n_resamples: the shortcut rule and bootstrap settings (see aggregate.py).
    explainer_options: extra `xcounter.Explainer` keyword arguments (e.g. {"max_nfe": 40, "signs": ["add"]}).
    progress: called as progress(done, total, record) after each journal append.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise XCounterError(f"output '{out_dir}' exists and is not a folder")
    if limit is not None and limit < 1:
        raise XCounterError(f"limit must be at least 1, got {limit}")
    if not 0 <= threshold <= 1:  # NaN too: it would silence every alert, then fail to write the report
        raise XCounterError(f"threshold must be a flip rate in [0, 1], got {threshold}")
    items = collect_scans(scans, exclude=[out_dir])
    items = items[:limit] if limit is not None else items
    if not items:
        where = f" in '{scans}'" if isinstance(scans, (str, os.PathLike)) else ""
        raise XCounterError(f"no scans found{where}")
    executor = executor or SerialExecutor()

    job = AuditJob(classifier=classifier, generator=generator, attributes=None,  # type: ignore[arg-type]
                   seed=int(seed), steps=steps, oracle=oracle, trust_pickle=trust_pickle, explainer_options=dict(explainer_options or {}))
    if executor.name != "serial":
        job.portable()  # fail before loading anything when models were passed as objects
    loaded_classifier, loaded_generator = job.load_models()
    job.attributes = load_vocabulary(attributes or _default_attributes(loaded_classifier, loaded_generator), only)
    if isinstance(targets, str):
        targets = [targets]
    job.targets = [loaded_classifier.labels[loaded_classifier.target_index(t)] for t in targets] if targets else None
    if executor.name == "serial":
        job.classifier, job.generator = loaded_classifier, loaded_generator  # load once, reuse in-process
    else:
        job = job.portable()

    classifier_identity, generator_identity = loaded_classifier.identity(), loaded_generator.identity()
    examined = [a.name for a in job.attributes if a.kind != "anatomy"]
    config = {"classifier_name": classifier_identity.get("name"),
              "classifier_sha256": classifier_identity.get("sha256"),
              "generator_config_sha256": generator_identity.get("config_sha256"),
              "generator_settings": {k: generator_identity.get(k) for k in GENERATOR_SETTINGS}, "seed": int(seed),
              "targets": job.targets, "attributes": examined, "attributes_sha256": job.attributes.sha256(examined),
              "steps": steps,
              "oracle": None if oracle is None else str(oracle), "explainer_options": job.explainer_options}

    log = RecordLog(out_dir / JOURNAL_NAME)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume and log.path.exists():
        log.path.unlink()
    finished = log.recover()
    _check_config(out_dir, config, bool(finished))
    if retry_failed:
        failed = {scan_id for scan_id, status in finished.items() if status == STATUS_FAILED}
        if failed:
            log.drop(failed)
            finished = {k: v for k, v in finished.items() if k not in failed}
    todo = [item for item in items if item.scan_id not in finished]
    done = len(items) - len(todo)
    for record in executor.run(job, todo) if todo else ():  # nothing left: start no worker
        log.append(record)
        done += 1
        if progress is not None:
            progress(done, len(items), record)

    scan_ids = frozenset(item.scan_id for item in items)
    result_records = lambda: (r for r in log.records() if r["scan_id"] in scan_ids)  # noqa: E731
    aggregate = aggregate_records(result_records(), seed=int(seed), threshold=threshold, min_scans=min_scans,
                                  level=level, n_resamples=n_resamples)
    metadata = {
        "classifier": classifier_identity, "generator": generator_identity, "seed": int(seed),
        "targets": job.targets, "attributes": examined, "oracle": config["oracle"],
        "settings": {"steps": steps or generator_identity.get("steps"), **job.explainer_options},
        "executor": f"{executor.name} ({executor.workers} worker{'s' if executor.workers != 1 else ''}"
                    f"{', ' + executor.device if getattr(executor, 'device', None) else ''})",
        "counts": {"scans": len(items), "explained_now": len(todo), "resumed": len(items) - len(todo),
                   "ok": aggregate.ok, "failed": aggregate.failed},
        "versions": _versions(executor), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "journal": JOURNAL_NAME,
    }
    html_path = json_path = None
    if report:
        from xcounter.audit.report import write_audit_report

        html_path, json_path = write_audit_report(out_dir, aggregate, metadata, result_records)
    return AuditResult(out_dir=out_dir, aggregate=aggregate, metadata=metadata, report_html=html_path,
                       report_json=json_path, scan_ids=scan_ids)
