"""What one audit worker does: build the models and the Explainer once, then turn scans into records.

`AuditJob` is the picklable recipe shipped to every worker (model *specs*, not objects, so each worker
loads its own copy); `ScanExplainer` holds the loaded Explainer and explains one `ScanItem` at a time,
turning every per-scan problem into a "failed" record with a reason instead of stopping the audit.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from xcounter.attributes import AttributeSet, load_attributes
from xcounter.audit.records import STATUS_FAILED, STATUS_OK, make_record, scan_seed, slim_explanation
from xcounter.audit.scans import ScanItem
from xcounter.errors import XCounterError


def restrict(attributes: AttributeSet, only: Sequence[str] | None) -> AttributeSet:
    """The vocabulary with only the named attributes examined (anatomy stays: directions are disentangled
    against it). Unknown names raise XCounterError with a suggestion."""
    if not only:
        return attributes
    wanted = {attributes[name].name for name in only}  # __getitem__ validates each name
    kept = tuple(a for a in attributes if a.name in wanted or a.kind == "anatomy")
    return dataclasses.replace(attributes, attributes=kept)


def is_spec(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


@dataclass
class AuditJob:
    """Everything a worker needs to explain scans exactly like every other worker.

    classifier / generator / oracle: specs (paths or zoo names) or already loaded objects (objects only
    work in-process; distributed executors need specs). explainer_options go to `xcounter.Explainer`.
    """
    classifier: Any
    generator: Any
    attributes: AttributeSet
    targets: list[str] | None = None
    seed: int = 0
    steps: int | None = None
    oracle: Any = None
    trust_pickle: bool = False
    explainer_options: dict = field(default_factory=dict)

    def portable(self) -> "AuditJob":
        """This job with specs only (for workers in other processes); raises if a model was passed as an object."""
        for name in ("classifier", "generator"):
            if not is_spec(getattr(self, name)):
                raise XCounterError(f"distributed audits load the {name} in every worker: pass it as a file path "
                                    f"or a zoo name, not as a loaded object")
        if self.oracle is not None and not is_spec(self.oracle):
            raise XCounterError("distributed audits need the oracle as a name or path, not a loaded object")
        return dataclasses.replace(self, classifier=os.fspath(self.classifier), generator=os.fspath(self.generator),
                                   oracle=None if self.oracle is None else os.fspath(self.oracle))

    def load_models(self, device: str = "cpu") -> tuple[Any, Any]:
        """(classifier, generator), loading specs and passing objects through."""
        from xcounter.classifiers import load_classifier
        from xcounter.generators import load_generator

        classifier = load_classifier(self.classifier, trust_pickle=self.trust_pickle, device=device) \
            if is_spec(self.classifier) else self.classifier
        generator = load_generator(self.generator, device=device, steps=self.steps) \
            if is_spec(self.generator) else self.generator
        return classifier, generator


class ScanExplainer:
    """A loaded Explainer plus the job's settings: `explain(item) -> record` (never raises for a bad scan)."""

    def __init__(self, job: AuditJob, models: tuple[Any, Any] | None = None, device: str = "cpu"):
        from xcounter.explainer import Explainer

        self.job = job
        self.classifier, self.generator = models if models is not None else job.load_models(device)
        options = {"attribution": False, **job.explainer_options}
        self.explainer = Explainer(self.classifier, self.generator, job.attributes, oracle=job.oracle,
                                   steps=job.steps, **options)

    def explain(self, item: ScanItem) -> dict:
        seed = scan_seed(self.job.seed, item.scan_id)
        started = time.perf_counter()
        try:
            if not Path(item.path).is_file():
                raise XCounterError(f"file not found: {item.path}")
            explanation = self.explainer.explain(item.path, target=self.job.targets, report_text=item.report_text,
                                                 seed=seed)
        except XCounterError as exc:
            return make_record(item.scan_id, item.path, STATUS_FAILED, str(exc), seed=seed,
                               seconds=time.perf_counter() - started)
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - one bad scan must not sink an audit of thousands
            return make_record(item.scan_id, item.path, STATUS_FAILED, f"{type(exc).__name__}: {exc}", seed=seed,
                               seconds=time.perf_counter() - started)
        return make_record(item.scan_id, item.path, STATUS_OK, None, slim_explanation(explanation.to_dict()),
                           seed=seed, seconds=time.perf_counter() - started)


def load_vocabulary(attributes: "str | os.PathLike | AttributeSet", only: Sequence[str] | None) -> AttributeSet:
    return restrict(load_attributes(attributes), only)
