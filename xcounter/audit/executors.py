"""Where scans are explained: in this process (`SerialExecutor`) or on Ray actors (`RayExecutor`).

Both take an `AuditJob` and the scans still to do, and yield one record per scan *as it completes*;
the driver appends each record to the journal, so only the driver ever writes files.
"""
from __future__ import annotations

import time
from typing import Any, Iterator, Protocol, Sequence

from xcounter.audit.scans import ScanItem
from xcounter.audit.worker import AuditJob, ScanExplainer
from xcounter.errors import XCounterError


class Executor(Protocol):
    name: str
    workers: int

    def run(self, job: AuditJob, items: Sequence[ScanItem]) -> Iterator[dict]:
        """Yield one record per item, in completion order."""


class SerialExecutor:
    """One Explainer in this process; reuses loaded model objects when the job holds them, else loads its
    models on `device` ("cpu", "cuda", "cuda:N"; resolve "auto" with `xcounter.utils.devices.resolve_device`)."""
    name = "serial"
    workers = 1

    def __init__(self, device: str = "cpu") -> None:
        self.device = str(device)
        self.timing: dict[str, float] = {}

    def run(self, job: AuditJob, items: Sequence[ScanItem]) -> Iterator[dict]:
        started = time.perf_counter()
        worker = ScanExplainer(job, device=self.device)
        self.timing = {"startup_s": time.perf_counter() - started}
        ready = time.perf_counter()
        for item in items:
            yield worker.explain(item)
        self.timing["run_s"] = time.perf_counter() - ready


#: a local Ray node gives up when its agents start slowly (a loaded machine); the second try finds warm caches
LOCAL_START_ATTEMPTS = 2


class _RayWorker:
    """A Ray actor body: loads both models once (on its GPU when Ray gave it one), then explains scans."""

    def __init__(self, job: AuditJob, threads: int) -> None:
        import ray
        import torch

        torch.set_num_threads(threads)
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.worker = ScanExplainer(job, device=device)

    def ready(self) -> bool:
        return True

    def explain(self, item: ScanItem) -> dict:
        return self.worker.explain(item)


def import_ray():
    try:
        import ray
    except ImportError:
        raise XCounterError("the Ray executor needs ray: pip install 'xcounter[ray]'") from None
    return ray


class RayExecutor:
    """`workers` Ray actors, each holding its own models; results stream back as they complete.

    address: an existing cluster ("auto", "ray://host:10001", ...); None starts a local Ray with
    `workers` CPUs (and stops it afterwards). Each actor asks for one CPU (Ray then sets OMP_NUM_THREADS=1 in
    it) and, when the cluster has GPUs, `gpus_per_worker` GPUs (default: one each, or an equal share when
    workers outnumber GPUs). Scan files must be readable by every worker (shared storage).
    """
    name = "ray"

    def __init__(self, workers: int = 2, address: str | None = None, gpus_per_worker: float | None = None,
                 threads_per_worker: int = 1, require_gpus: bool = False) -> None:
        if workers < 1:
            raise XCounterError(f"workers must be at least 1, got {workers}")
        self.workers, self.address = int(workers), address
        self.gpus_per_worker, self.threads_per_worker = gpus_per_worker, int(threads_per_worker)
        self.require_gpus = bool(require_gpus)  # `--device cuda`: refuse a cluster without GPUs, never fall back
        self.timing: dict[str, float] = {}

    def _init(self, ray) -> bool:
        """Connect or start Ray; True when this executor started it (and so must stop it)."""
        if ray.is_initialized():
            return False
        if self.address:
            try:
                ray.init(address=self.address, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:  # unreachable, malformed, no ray[client]
                detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise XCounterError(f"cannot connect to the Ray cluster at '{self.address}': {detail}") from None
            return True
        for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
            try:
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False)
                return True
            except Exception as exc:  # noqa: BLE001 - Ray raises bare Exception when its node times out starting
                if "timed out" not in str(exc).lower() or attempt == LOCAL_START_ATTEMPTS:
                    raise XCounterError(
                        f"a local Ray could not start ({str(exc).splitlines()[0]}); on a busy machine start one with "
                        "`ray start --head` and pass its address with --ray ADDRESS") from None
        return True

    def _gpus(self, ray) -> float:
        """GPUs per actor: as given, else one each (shared when there are more workers than GPUs), else none."""
        total = float(ray.cluster_resources().get("GPU", 0))
        if self.require_gpus and total <= 0:
            raise XCounterError("--device cuda asked for GPUs, but the Ray cluster has none; use --device auto or cpu")
        if self.gpus_per_worker is not None:
            return float(self.gpus_per_worker)
        return min(1.0, total / self.workers) if total > 0 else 0.0

    def run(self, job: AuditJob, items: Sequence[ScanItem]) -> Iterator[dict]:
        ray = import_ray()
        from ray.util import ActorPool

        portable = job.portable()
        started_at = time.perf_counter()
        started_here = self._init(ray)
        actors: list[Any] = []
        try:
            actor_class = ray.remote(num_cpus=1, num_gpus=self._gpus(ray))(_RayWorker)
            actors = [actor_class.remote(portable, self.threads_per_worker) for _ in range(self.workers)]
            try:
                ray.get([actor.ready.remote() for actor in actors])
            except ray.exceptions.RayError as exc:
                raise XCounterError(f"a Ray worker could not load the models: {_cause(exc)}") from None
            self.timing = {"startup_s": time.perf_counter() - started_at}
            ready = time.perf_counter()
            pool = ActorPool(actors)
            try:
                yield from pool.map_unordered(lambda actor, item: actor.explain.remote(item), list(items))
            except ray.exceptions.RayError as exc:  # a worker died (not a bad scan: those come back as records)
                raise XCounterError(f"a Ray worker failed ({_cause(exc)}); finished scans are saved, "
                                    "run the audit again to continue") from None
            self.timing["run_s"] = time.perf_counter() - ready
        finally:
            for actor in actors:
                ray.kill(actor)
            if started_here:
                ray.shutdown()


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    return str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__


def make_executor(workers: int = 1, ray: bool | str | None = None, device: str = "cpu") -> Executor:
    """The CLI's choice: Ray when asked for (or when more than one worker is wanted), serial otherwise.

    `device` places a serial audit's models ("auto": the GPU when there is one). Ray actors take the GPUs Ray
    gives them; `device="cpu"` asks Ray for none."""
    from xcounter.utils.devices import device_name, resolve_device

    if ray or workers > 1:
        address = ray if isinstance(ray, str) and ray not in ("", "local") else None
        name = device_name(device)  # checked here; the GPUs themselves are the cluster's
        return RayExecutor(workers=max(workers, 1), address=address,
                           gpus_per_worker=0.0 if name == "cpu" else None, require_gpus=name.startswith("cuda"))
    return SerialExecutor(device=str(resolve_device(device)))


__all__ = ["Executor", "SerialExecutor", "RayExecutor", "make_executor", "import_ray"]
