"""slm_jax.cpu_lanes: each lane runs in its own process on its own share of the CPUs, side by
side; a failing lane is raised by name and stops the others; with too few CPUs (or parallel
off) the lanes run here one after the other."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from slm_jax import cpu_lanes

HERE = Path(__file__).resolve().parent
TWO_CPUS = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")


def record(path: str, sleep: float = 0.0) -> None:
    """A lane's work: write this process's pid, CPUs and start / end times to `path`."""
    start = time.time()
    time.sleep(sleep)
    Path(path).write_text(json.dumps({"pid": os.getpid(), "cpus": sorted(os.sched_getaffinity(0)),
                                      "start": start, "end": time.time()}))


def fail() -> None:
    raise ValueError("the lane's own error")


@pytest.fixture
def importable(monkeypatch):
    """The lanes' processes import this module (the functions above) by name."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))


def test_share_cpus():
    assert cpu_lanes.share_cpus(2, [0]) is None
    assert cpu_lanes.share_cpus(2, [3, 1]) == [{1}, {3}]
    assert cpu_lanes.share_cpus(2, [0, 1, 2, 3, 4]) == [{0, 1}, {2, 3, 4}]
    assert cpu_lanes.share_cpus(3, [0, 1, 2, 3]) == [{0}, {1}, {2, 3}]


@TWO_CPUS
def test_lanes_run_side_by_side_on_their_own_cpus(importable, tmp_path):
    before = os.sched_getaffinity(0)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert cpu_lanes.run_side_by_side([(record, (str(a), 1.0)), (record, (str(b), 1.0))], ["a", "b"])
    lanes = [json.loads(p.read_text()) for p in (a, b)]
    assert [set(x["cpus"]) for x in lanes] == cpu_lanes.share_cpus(2, before)
    assert len({x["pid"] for x in lanes} | {os.getpid()}) == 3
    assert lanes[0]["start"] < lanes[1]["end"] and lanes[1]["start"] < lanes[0]["end"]   # they overlapped
    assert os.sched_getaffinity(0) == before


@TWO_CPUS
def test_a_failing_lane_is_named_and_stops_the_others(importable, tmp_path):
    t0 = time.time()
    with pytest.raises(RuntimeError, match="lane 'scoring' failed with exit code 1"):
        cpu_lanes.run_side_by_side([(record, (str(tmp_path / "never.json"), 60.0)), (fail, ())],
                                   ["training", "scoring"])
    assert time.time() - t0 < 30 and not (tmp_path / "never.json").exists()


def test_without_parallel_or_cpus_the_lanes_run_here_in_turn(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    calls = [(record, (str(a),)), (record, (str(b),))]
    assert not cpu_lanes.run_side_by_side(calls, ["a", "b"], parallel=False)
    first, second = (json.loads(p.read_text()) for p in (a, b))
    assert first["pid"] == second["pid"] == os.getpid() and first["end"] <= second["start"]
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        assert not cpu_lanes.run_side_by_side(calls, ["a", "b"])
    finally:
        os.sched_setaffinity(0, before)
    with pytest.raises(ValueError, match="2 calls but 1 names"):
        cpu_lanes.run_side_by_side(calls, ["a"])
