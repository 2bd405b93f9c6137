"""slm_jax.cpu_lanes: the second lane runs in another process on the other half of the CPUs
while the body runs on its own half; every CPU comes back after; a failure on either side is
raised by name; with one CPU the lanes run in turn."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from slm_jax import cpu_lanes

HERE = Path(__file__).resolve().parent


def record(path: str, sleep: float = 0.0) -> None:
    """The second lane's work: write this process's pid and CPUs to `path` (after `sleep` s)."""
    time.sleep(sleep)
    Path(path).write_text(json.dumps({"pid": os.getpid(), "cpus": sorted(os.sched_getaffinity(0))}))


def fail() -> None:
    raise ValueError("the lane's own error")


@pytest.fixture
def importable(monkeypatch):
    """The second process imports this module (the functions above) by name."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))


def test_split_cpus():
    assert cpu_lanes.split_cpus([0]) is None
    assert cpu_lanes.split_cpus([3, 1]) == ({1}, {3})
    assert cpu_lanes.split_cpus([0, 1, 2, 3, 4]) == ({0, 1}, {2, 3, 4})


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_lanes_run_side_by_side_on_their_own_cpus(importable, tmp_path):
    before = os.sched_getaffinity(0)
    mine, theirs = cpu_lanes.split_cpus()
    out = tmp_path / "lane.json"
    with cpu_lanes.second_lane(record, (str(out), 1.0)) as side_by_side:
        assert side_by_side
        assert os.sched_getaffinity(0) == mine
        assert not out.exists()     # still sleeping: the body runs meanwhile
    lane = json.loads(out.read_text())   # written before second_lane returned: it waited
    assert lane["pid"] != os.getpid() and set(lane["cpus"]) == theirs
    assert os.sched_getaffinity(0) == before


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_failures_are_raised(importable, tmp_path):
    with pytest.raises(RuntimeError, match="scoring lane: the second process failed with exit code 1"):
        with cpu_lanes.second_lane(fail, name="scoring lane"):
            pass
    # an error in the body stops the second lane (which would otherwise sleep 60 s)
    t0 = time.time()
    with pytest.raises(KeyError):
        with cpu_lanes.second_lane(record, (str(tmp_path / "never.json"), 60.0)):
            raise KeyError("body")
    assert time.time() - t0 < 30 and not (tmp_path / "never.json").exists()


def test_one_cpu_runs_the_lanes_in_turn(tmp_path):
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        out = tmp_path / "lane.json"
        with cpu_lanes.second_lane(record, (str(out),)) as side_by_side:
            assert not side_by_side and json.loads(out.read_text())["pid"] == os.getpid()
    finally:
        os.sched_setaffinity(0, before)
