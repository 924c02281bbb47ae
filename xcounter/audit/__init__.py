"""Dataset audits: explain a classifier over many scans (resumable, serial or on Ray) and aggregate
flip rates, minimal strengths and shortcut alerts into one report. `xcounter.audit(...)` is `audit` here."""
import sys
import types

from xcounter.audit.aggregate import ALERT_MIN_SCANS, ALERT_THRESHOLD, AttributeStat, AuditAggregate, aggregate_records
from xcounter.audit.audit import AuditResult, audit
from xcounter.audit.executors import Executor, RayExecutor, SerialExecutor, make_executor
from xcounter.audit.records import RecordLog, scan_seed
from xcounter.audit.scans import ScanItem, collect_scans

__all__ = ["audit", "AuditResult", "AuditAggregate", "AttributeStat", "aggregate_records", "ALERT_THRESHOLD",
           "ALERT_MIN_SCANS", "Executor", "SerialExecutor", "RayExecutor", "make_executor", "RecordLog",
           "scan_seed", "ScanItem", "collect_scans"]


class _CallableModule(types.ModuleType):
    """Importing `xcounter.audit` binds the *module* to the name `xcounter.audit`, shadowing the lazy
    function of the same name; a callable module keeps `xcounter.audit(...)` working either way."""

    def __call__(self, *args, **kwargs) -> AuditResult:
        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
