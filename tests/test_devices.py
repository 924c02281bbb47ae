"""`resolve_device`: what --device means on this machine, and the one-line refusals."""
from __future__ import annotations

import pytest
import torch

from xcounter.audit import RayExecutor, SerialExecutor, make_executor
from xcounter.errors import XCounterError
from xcounter.utils.devices import resolve_device


def test_auto_and_cpu_resolve_to_what_torch_sees():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected


@pytest.mark.parametrize("name, message", [("tpu", "device must be one of"), ("cuda:x", "cuda"),
                                           ("", "device must be one of")])
def test_bad_names_are_refused_in_one_line(name, message):
    with pytest.raises(XCounterError, match=message) as error:
        resolve_device(name)
    assert "\n" not in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_a_missing_gpu_is_named_with_what_to_pass_instead():
    for name in ("cuda", "CUDA", "cuda:0"):
        with pytest.raises(XCounterError, match="no CUDA GPU here; use --device cpu"):
            resolve_device(name)


def test_executors_carry_the_device():
    serial = make_executor(1, None, "cpu")
    assert isinstance(serial, SerialExecutor) and serial.device == "cpu"
    assert make_executor(1, None, "auto").device == str(resolve_device("auto"))
    ray_cpu = make_executor(2, None, "cpu")
    assert isinstance(ray_cpu, RayExecutor) and ray_cpu.gpus_per_worker == 0.0  # Ray is asked for no GPU
    assert make_executor(2, None, "auto").gpus_per_worker is None  # Ray's own share of whatever GPUs it has
    assert make_executor(2, None, "cuda").require_gpus and not make_executor(2, None, "auto").require_gpus
    with pytest.raises(XCounterError, match="device must be one of"):
        make_executor(2, None, "tpu")  # a Ray audit checks the name too, though its GPUs are elsewhere


class _Cluster:
    """Stands in for the `ray` module where RayExecutor only asks for the cluster's resources."""

    def __init__(self, gpus: float) -> None:
        self.gpus = gpus

    def cluster_resources(self) -> dict:
        return {"CPU": 8.0, **({"GPU": self.gpus} if self.gpus else {})}


def test_ray_gpu_share_and_the_refusal_of_a_cluster_without_gpus():
    assert RayExecutor(workers=4)._gpus(_Cluster(2)) == 0.5  # shared when workers outnumber GPUs
    assert RayExecutor(workers=2)._gpus(_Cluster(0)) == 0.0
    assert RayExecutor(workers=2, gpus_per_worker=0.0)._gpus(_Cluster(2)) == 0.0  # --device cpu
    assert RayExecutor(workers=2, require_gpus=True)._gpus(_Cluster(4)) == 1.0
    with pytest.raises(XCounterError, match="Ray cluster has none"):
        RayExecutor(workers=2, require_gpus=True)._gpus(_Cluster(0))  # --device cuda never falls back to CPUs
