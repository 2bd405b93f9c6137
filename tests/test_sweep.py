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
from slm_jax import eval_lib, gin_utils, train_lib
from slm_jax import sweep as sweep_lib

UNBOUND = object()


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
                                         "EvalConfig.decode": "@DecodeConfig()"})   # a gin reference: unquoted
    assert bindings == ["DecodeConfig.method = 'beam'", "EvalConfig.decode = @DecodeConfig()",
                        "EvalConfig.eval_tasks = ['a']"]


def test_point_key_is_stable_and_covers_base_bindings():
    a = {"DecodeConfig.method": "beam", "DecodeConfig.beam_size": 2, "task": "x"}
    b = dict(reversed(list(a.items())))
    key = sweep_lib.point_key(a)
    assert key == sweep_lib.point_key(b) and len(key) == 12
    assert key == "32d027910901"   # the same in every process and release: finished points stay found
    assert sweep_lib.point_key(a, ["EvalConfig.max_examples = 10"]) != key
    assert sweep_lib.point_key(a, checkpoint_dir="/other/run") != key
    assert sweep_lib.point_key({**a, "DecodeConfig.beam_size": 3}) != key


def test_bad_binding_fails_before_any_evaluation(tmp_path, monkeypatch):
    gin_tiny()
    monkeypatch.setattr(eval_lib, "evaluate", lambda *a, **k: pytest.fail("evaluate must not run"))
    with pytest.raises(ValueError, match="does not parse"):
        sweep_lib.sweep(str(tmp_path), points=[{"DecodeConfig.method": "greedy"}, {"DecodeConfig.methd": "beam"}])
    with pytest.raises(ValueError, match="identical points"):
        sweep_lib.sweep(str(tmp_path), points=[{"task": "a"}, {"task": "a"}])
    # the base config is restored: nothing of the points leaks
    assert gin_utils.query("slm_jax.T5Config.num_heads") == 2
    assert gin_utils.query("DecodeConfig.method", UNBOUND) is UNBOUND


# ----------------------------------------------------------------------------- resume logic (fakes)

class _FakeCheckpointer:
    def __init__(self, log):
        self.log, self.directory = log, "fake/checkpoints"
        self.manager = types.SimpleNamespace(all_steps=lambda: [5, 7])

    def latest_step(self):
        return 7

    def restore(self, abstract, step):
        self.log.append(("restore", step))
        return types.SimpleNamespace(params=f"params@{step}", step=step)

    def close(self):
        self.log.append(("close",))


def test_resume_after_crash_shares_setups_and_isolates_points(tmp_path, monkeypatch):
    """Model-free: train_lib.setup / eval_lib.evaluate replaced by fakes to check which points run,
    with what (the Setup is a real one around a fake checkpointer, so Setup.restore runs)."""
    gin.clear_config()
    gin.parse_config(["RunConfig.model = 'no model'", "EvalConfig.eval_tasks = ['t']",
                      "EvalConfig.feature_lengths = {}"])
    log = []

    def fake_setup(run):
        assert run.run_dir == str(tmp_path)                     # the checkpoint dir: sweep.run_dir
        log.append(("setup", run.seed))
        return train_lib.Setup(run=run, model=None, partitioner=None,
                               trainer=types.SimpleNamespace(abstract_state=lambda: None),
                               trainable="init", frozen=None, checkpointer=_FakeCheckpointer(log))

    def fake_evaluate(s, cfg, trainable, step, data=None):
        assert isinstance(data, eval_lib.EvalDataCache)
        point_dirs.append(s.run.run_dir)                        # where its predictions go
        log.append(("evaluate", trainable, cfg.decode.beam_size))
        if crash[0] and sum(e[0] == "evaluate" for e in log) == 2:
            raise RuntimeError("simulated kill")
        return {"t": {"score": float(step * 10 + cfg.decode.beam_size)}}

    monkeypatch.setattr(train_lib, "setup", fake_setup)
    monkeypatch.setattr(eval_lib, "evaluate", fake_evaluate)
    points = [{"DecodeConfig.beam_size": 1},                  # latest step (7)
              {"DecodeConfig.beam_size": 2, "step": 5},
              {"RunConfig.seed": 1, "DecodeConfig.beam_size": 1},   # another set-up: evaluated last
              {"DecodeConfig.beam_size": 3},
              {"EvalConfig.max_examples": 3}]                   # default beam_size: nothing leaked
    point_dirs = []
    crash = [True]
    with pytest.raises(RuntimeError, match="simulated kill"):
        sweep_lib.sweep(str(tmp_path), points=points)
    assert [e for e in log if e[0] == "evaluate"] == [("evaluate", "params@7", 1), ("evaluate", "params@5", 2)]
    assert len([f for f in os.listdir(tmp_path / "sweep") if f.endswith(".json")]) == 1
    assert log[-1] == ("close",)                                # the set-up is closed on the way out

    log.clear()
    point_dirs.clear()
    crash[0] = False
    out = sweep_lib.sweep(str(tmp_path), points=points)
    assert len(out["skipped"]) == 1 and len(out["evaluated"]) == 4 and out["remaining"] == []
    assert point_dirs == [str(tmp_path / "sweep" / k) for k in out["evaluated"]]   # run_dir/sweep/<key>/
    assert log == [("setup", 0), ("restore", 5), ("evaluate", "params@5", 2),
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
    common = [f"EvalConfig.feature_lengths = {FEATURE_LENGTHS}", "EvalConfig.batch_size = 8",
              "RunConfig.async_save = False"]
    gin_utils.parse_config([TINY_GIN], [*common, f"RunConfig.run_dir = '{run_dir}'", "RunConfig.train_steps = 2",
                                        f"TrainConfig.train_task = '{asr}'", "TrainConfig.batch_size = 8",
                                        f"TrainConfig.feature_lengths = {FEATURE_LENGTHS}"])
    train_lib.train(train_lib.RunConfig(), train_lib.TrainConfig())   # a checkpoint at step 2 to evaluate
    grid = {"decode": [{"DecodeConfig.method": "greedy"},
                       {"DecodeConfig.method": "beam", "DecodeConfig.beam_size": 2}],
            "task": [asr, cer]}
    argv = [f"--gin_file={TINY_GIN}", *(f"--gin.{b}" for b in common), f"--gin.sweep.run_dir='{run_dir}'",
            f"--gin.sweep.grid={grid!r}"]
    state = os.path.join(run_dir, "sweep")

    calls = []
    real_evaluate = eval_lib.evaluate

    def counting(s, cfg, *args, **kw):
        calls.append(cfg.decode.method)
        return real_evaluate(s, cfg, *args, **kw)

    monkeypatch.setattr(eval_lib, "evaluate", counting)
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

def test_example_gin_file_expands_to_registered_tasks():
    gin_utils.parse_config(["gin/runs/sweep_example.gin"])   # includes resolve against the repository root
    grid = gin_utils.query("sweep.grid")
    points = sweep_lib.expand_grid(grid)
    assert len(points) == 9
    for p in points:
        sweep_lib.check_point(p)
        seqio.get_mixture_or_task(p["task"])   # raises if the example names an unknown task
    base, base_bindings = gin.config_str(), list(gin_utils.query("sweep.base_bindings"))
    assert base_bindings == ["EvalConfig.max_examples = 50"]
    sweep_lib.check_bindings_parse(base, base_bindings, points)   # every point's bindings parse on top of the file
    gin.clear_config()
