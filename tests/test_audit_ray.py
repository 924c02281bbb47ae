"""The Ray executor (2 local actors on 2 CPUs) gives the same journal and aggregate as the serial one."""
from __future__ import annotations

import json

import pytest

from xcounter.audit import RayExecutor, SerialExecutor, audit
from xcounter.errors import XCounterError

ray = pytest.importorskip("ray", reason="the Ray executor test needs `pip install xcounter[ray]`")

from test_audit import OPTIONS, build_models, write_scans  # noqa: E402


def test_ray_executor_matches_serial(tmp_path):
    classifier, generator = build_models(tmp_path / "models")
    scans = write_scans(tmp_path / "scans", 4, seed=1)
    (scans / "broken.png").write_bytes(b"junk")
    serial = audit(str(classifier), str(generator), scans, out_dir=tmp_path / "serial", seed=5,
                   executor=SerialExecutor(), **OPTIONS)
    executor = RayExecutor(workers=2)
    distributed = audit(str(classifier), str(generator), scans, out_dir=tmp_path / "ray", seed=5, executor=executor,
                        **OPTIONS)
    assert not ray.is_initialized()  # the local Ray it started was stopped again
    assert distributed.aggregate.to_dict() == serial.aggregate.to_dict()
    assert distributed.aggregate.ok == 4 and distributed.aggregate.failures[0]["scan_id"] == "broken.png"
    assert distributed.metadata["executor"] == "ray (2 workers)" and "ray" in distributed.metadata["versions"]
    lines = (tmp_path / "ray" / "explanations.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["scan_id"] for line in lines) == sorted(serial.scan_ids)
    assert executor.timing["run_s"] > 0


def test_ray_executor_needs_model_specs(tmp_path):
    import xcounter

    classifier, generator = build_models(tmp_path / "models")
    with pytest.raises(XCounterError, match="file path or a zoo name"):
        audit(xcounter.load_classifier(str(classifier)), str(generator), write_scans(tmp_path / "s", 1),
              out_dir=tmp_path / "out", executor=RayExecutor(workers=2), **OPTIONS)


def test_a_bad_ray_address_is_one_error(tmp_path):
    """Ray raises ValueError for a malformed address (and for ray:// without ray[client]), not ConnectionError."""
    classifier, generator = build_models(tmp_path / "models")
    with pytest.raises(XCounterError, match="cannot connect to the Ray cluster at 'notanaddress': Invalid address"):
        audit(str(classifier), str(generator), write_scans(tmp_path / "s", 1), out_dir=tmp_path / "out",
              executor=RayExecutor(workers=1, address="notanaddress"), **OPTIONS)
    assert not ray.is_initialized()
