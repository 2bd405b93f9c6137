"""Eval sweeps: grid expansion and stable point keys; a decode x task sweep on the tiny model that
is interrupted twice (a max_points stop, then a crash) and resumed, evaluating each point once;
the results table and plot; the example gin file."""

import csv
import json
import os
import types

import gin
import pytest
import seqio

from helpers import FEATURE_LENGTHS, TINY_GIN, gin_tiny, register_fixed_task
from slm_jax import main as main_lib
from slm_jax import sweep as sweep_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- points and keys

def test_grid_expansion_dict_values_and_errors():
    pts = sweep_lib.expand_grid({"decode": [{"DecodeConfig.method": "greedy"},
                                            {"DecodeConfig.method": "beam", "DecodeConfig.beam_size": 2}],
                                 "task": ["a", "b"]})
    assert pts == [{"DecodeConfig.method": "greedy", "task": "a"}, {"DecodeConfig.method": "greedy", "task": "b"},
                   {"DecodeConfig.method": "beam", "DecodeConfig.beam_size": 2, "task": "a"},
                   {"DecodeConfig.method": "beam", "DecodeConfig.beam_size": 2, "task": "b"}]
    with pytest.raises(ValueError, match="sets"):
        sweep_lib.expand_grid({"x": [{"DecodeConfig.alpha": 0.1}], "DecodeConfig.alpha": [0.2]})
    with pytest.raises(ValueError, match="non-empty list"):
        sweep_lib.expand_grid({"task": "a"})
    with pytest.raises(ValueError, match="neither a gin binding"):
        sweep_lib.check_point({"beam_size": 2})
    bindings = sweep_lib.point_bindings({"task": "a", "DecodeConfig.method": "beam",
                                         "evaluate.decode": "@DecodeConfig()"})   # a gin reference: unquoted
    assert bindings == ["DecodeConfig.method = 'beam'", "evaluate.decode = @DecodeConfig()",
                        "evaluate.eval_tasks = ['a']"]


def test_point_key_is_stable_and_covers_base_bindings():
    a = {"DecodeConfig.method": "beam", "DecodeConfig.beam_size": 2, "task": "x"}
    b = dict(reversed(list(a.items())))
    key = sweep_lib.point_key(a)
    assert key == sweep_lib.point_key(b) and len(key) == 12
    assert key == "32d027910901"   # the same in every process and release: finished points stay found
    assert sweep_lib.point_key(a, ["evaluate.max_examples = 10"]) != key
    assert sweep_lib.point_key(a, checkpoint_dir="/other/run") != key
    assert sweep_lib.point_key({**a, "DecodeConfig.beam_size": 3}) != key


def test_bad_binding_fails_before_any_evaluation(tmp_path, monkeypatch):
    gin_tiny()
    monkeypatch.setattr(main_lib, "evaluate", lambda *a, **k: pytest.fail("evaluate must not run"))
    with pytest.raises(ValueError, match="does not parse"):
        sweep_lib.sweep(str(tmp_path), points=[{"DecodeConfig.method": "greedy"}, {"DecodeConfig.methd": "beam"}])
    with pytest.raises(ValueError, match="identical points"):
        sweep_lib.sweep(str(tmp_path), points=[{"task": "a"}, {"task": "a"}])
    # the base config is restored: nothing of the points leaks
    assert gin.query_parameter("slm_jax.T5Config.num_heads") == 2 and not sweep_lib._bound("DecodeConfig.method")


# ----------------------------------------------------------------------------- resume logic (fakes)

class _FakeCheckpointer:
    def __init__(self, log):
        self.log, self.directory = log, "fake/checkpoints"
        self.manager = types.SimpleNamespace(all_steps=lambda: [5, 7])

    def latest_step(self):
        return 7

    def restore(self, abstract, step):
        self.log.append(("restore", step))
        return types.SimpleNamespace(params=f"params@{step}")

    def close(self):
        self.log.append(("close",))


def test_resume_after_crash_shares_setups_and_isolates_points(tmp_path, monkeypatch):
    """Model-free: setup/evaluate replaced by fakes to check which points run, with what."""
    gin.clear_config()
    log = []

    def fake_setup(run_dir):
        log.append(("setup", gin.query_parameter("setup.seed") if sweep_lib._bound("setup.seed") else None))
        return types.SimpleNamespace(checkpointer=_FakeCheckpointer(log), trainable="init",
                                     trainer=types.SimpleNamespace(abstract_state=lambda: None))

    def fake_evaluate(run_dir, *, setup_, trainable, step, decode):
        log.append(("evaluate", trainable, decode.beam_size))
        if crash[0] and sum(e[0] == "evaluate" for e in log) == 2:
            raise RuntimeError("simulated kill")
        return {"t": {"score": float(step * 10 + decode.beam_size)}}

    monkeypatch.setattr(main_lib, "setup", fake_setup)
    monkeypatch.setattr(main_lib, "evaluate", fake_evaluate)
    points = [{"DecodeConfig.beam_size": 1},                  # latest step (7)
              {"DecodeConfig.beam_size": 2, "step": 5},
              {"setup.seed": 1, "DecodeConfig.beam_size": 1},   # another set-up: evaluated last
              {"DecodeConfig.beam_size": 3},
              {"evaluate.max_examples": 3}]                     # default beam_size: nothing leaked
    crash = [True]
    with pytest.raises(RuntimeError, match="simulated kill"):
        sweep_lib.sweep(str(tmp_path), points=points)
    assert [e for e in log if e[0] == "evaluate"] == [("evaluate", "params@7", 1), ("evaluate", "params@5", 2)]
    assert len([f for f in os.listdir(tmp_path / "sweep") if f.endswith(".json")]) == 1
    assert log[-1] == ("close",)                                # the set-up is closed on the way out

    log.clear()
    crash[0] = False
    out = sweep_lib.sweep(str(tmp_path), points=points)
    assert len(out["skipped"]) == 1 and len(out["evaluated"]) == 4 and out["remaining"] == []
    assert log == [("setup", None), ("restore", 5), ("evaluate", "params@5", 2),
                   ("restore", 7), ("evaluate", "params@7", 3), ("evaluate", "params@7", 4), ("close",),
                   ("setup", 1), ("restore", 7), ("evaluate", "params@7", 1), ("close",)]
    scores = [r["results"]["t"]["score"] for r in out["records"]]
    assert scores == [71.0, 52.0, 71.0, 73.0, 74.0]               # table order = sweep order
    rows = _read_csv(out["csv"])
    assert [r["score"] for r in rows] == ["71.0", "52.0", "71.0", "73.0", "74.0"]
    assert [r["step"] for r in rows] == ["7", "5", "7", "7", "7"]

    with pytest.raises(ValueError, match=r"no checkpoint step 9 .*\[5, 7\]"):
        sweep_lib.sweep(str(tmp_path), points=[{"step": 9}])


# ----------------------------------------------------------------------------- a real sweep on the tiny model

def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_sweep_on_tiny_model_resumes_and_tabulates(tmp_path, monkeypatch):
    asr, cer = register_fixed_task(), register_fixed_task("test_fixed_asr_cer", "seqio_cer")
    run_dir = str(tmp_path / "run")
    common = [f"--gin_file={TINY_GIN}", f"--gin.evaluate.feature_lengths={FEATURE_LENGTHS}",
              "--gin.evaluate.batch_size=8", "--gin.setup.async_save=False"]
    main_lib.main([*common, f"--gin.run.run_dir='{run_dir}'", f"--gin.train.train_task='{asr}'",
                   f"--gin.train.feature_lengths={FEATURE_LENGTHS}", "--gin.train.batch_size=8",
                   "--gin.train.train_steps=2"])   # a checkpoint at step 2 to evaluate
    grid = {"decode": [{"DecodeConfig.method": "greedy"},
                       {"DecodeConfig.method": "beam", "DecodeConfig.beam_size": 2}],
            "task": [asr, cer]}
    argv = [*common, f"--gin.sweep.run_dir='{run_dir}'", f"--gin.sweep.grid={grid!r}"]
    state = os.path.join(run_dir, "sweep")

    calls = []
    real_evaluate = main_lib.evaluate

    def counting(*args, **kw):
        calls.append(kw["decode"].method)
        return real_evaluate(*args, **kw)

    monkeypatch.setattr(main_lib, "evaluate", counting)
    first = sweep_lib.main([*argv, "--gin.sweep.max_points=2"])          # "killed" after 2 points
    assert len(first["evaluated"]) == 2 and len(first["remaining"]) == 2 and calls == ["greedy", "greedy"]
    assert len([f for f in os.listdir(state) if f.endswith(".json")]) == 2
    assert len(_read_csv(first["csv"])) == 2                              # partial table

    calls.clear()
    final = sweep_lib.main(argv)                                          # only the 2 missing points run
    assert calls == ["beam", "beam"] and len(final["evaluated"]) == 2 and len(final["skipped"]) == 2
    assert final["remaining"] == [] and not [f for f in os.listdir(state) if ".tmp" in f]

    rows = _read_csv(final["csv"])
    assert len(rows) == 4
    assert {(r["DecodeConfig.method"], r["DecodeConfig.beam_size"], r["task"]) for r in rows} == {
        ("greedy", "", asr), ("greedy", "", cer), ("beam", "2", asr), ("beam", "2", cer)}
    for r in rows:
        assert r["step"] == "2"
        assert (r["wer"] != "") == (r["task"] == asr) and (r["cer"] != "") == (r["task"] == cer)
        assert float(r["num_examples"]) == 4
        assert float(r["wer"] or r["cer"]) >= 0
    md = open(final["markdown"]).read().splitlines()
    assert len(md) == 2 + 4 and md[0].startswith("| point | step |") and "cer" in md[0] and "wer" in md[0]
    with open(final["plot"], "rb") as f:
        png = f.read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    # each point's record: the decoding it really ran with, and its predictions on disk
    for rec in final["records"]:
        with open(os.path.join(state, f"{rec['key']}.json")) as f:
            saved = json.load(f)
        want = rec["point"]
        assert saved["decode"]["method"] == want["DecodeConfig.method"]
        assert saved["decode"]["beam_size"] == want.get("DecodeConfig.beam_size", 4)
        assert os.path.exists(os.path.join(state, rec["key"], "eval", f"{want['task']}_step2.jsonl"))

    calls.clear()
    again = sweep_lib.main(argv)                                          # all done: nothing runs
    assert calls == [] and len(again["skipped"]) == 4 and len(_read_csv(again["csv"])) == 4


# ----------------------------------------------------------------------------- the example gin file

def test_example_gin_file_expands_to_registered_tasks(monkeypatch):
    monkeypatch.chdir(REPO)   # its include is relative to the repository root, as in `make demo`
    gin.clear_config()
    gin.parse_config_file("gin/runs/sweep_example.gin")
    grid = gin.query_parameter("sweep.grid")
    points = sweep_lib.expand_grid(grid)
    assert len(points) == 9
    for p in points:
        sweep_lib.check_point(p)
        seqio.get_mixture_or_task(p["task"])   # raises if the example names an unknown task
    base, base_bindings = gin.config_str(), list(gin.query_parameter("sweep.base_bindings"))
    for p in points:                           # every point's bindings parse on top of the file
        sweep_lib._parse_point_config(base, base_bindings + sweep_lib.point_bindings(p))
    gin.clear_config()
