"""RunConfig defines a run the same way in every mode: eval reads back the params training used
(including frozen subtrees no checkpoint holds, initialised from RunConfig.seed), and a gin
binding the run would ignore is an error rather than a silent no-op."""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import REPO, TINY_GIN, tiny_run
from slm_jax import eval_lib, gin_utils, train_lib
from slm_jax.checkpoints.params_io import load_params


def _assert_trees_equal(got, want):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_eval_params_equal_the_trained_params_including_uncheckpointed_frozen_subtrees(tmp_path):
    """Seed 7, no foundation checkpoints: the frozen speech encoder and LLM exist only as an init
    from RunConfig.seed, and the checkpoint holds the adapter alone. Setting the same RunConfig up
    again and restoring gives exactly the params training exported; another seed would not."""
    export = str(tmp_path / "params.msgpack")
    tiny_run(tmp_path / "run", "RunConfig.seed=7", "RunConfig.train_steps=2", "TrainConfig.log_every=1",
             f"TrainConfig.export_to='{export}'")
    run = train_lib.RunConfig()
    assert run.seed == 7 and run.speech_encoder_checkpoint is None and run.llm_checkpoint is None
    assert train_lib.train(run, train_lib.TrainConfig())["step"] == 2
    exported = load_params(export)
    assert set(exported) == {"speech_encoder", "adapter", "llm"}

    tiny_run(tmp_path / "run", "RunConfig.seed=7")        # what an eval of the run builds
    s = train_lib.setup(train_lib.RunConfig())
    try:
        trainable, step = s.restore()
        assert step == 2 and set(trainable) == {"adapter"}     # the checkpoint holds no frozen subtree
        _assert_trees_equal(jax.device_get(s.params(trainable)), exported)
    finally:
        s.checkpointer.close()

    tiny_run(tmp_path / "other", "RunConfig.seed=8")       # the check can fail: the seed matters
    other = train_lib.setup(train_lib.RunConfig())
    other.checkpointer.close()
    for kind in ("speech_encoder", "llm"):
        pairs = zip(jax.tree_util.tree_leaves(other.frozen[kind]), jax.tree_util.tree_leaves(exported[kind]))
        assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs), kind


@pytest.mark.parametrize("binding", ["setup.seed=3", "train.seed=3", "train.train_steps=5",
                                     "evaluate.max_examples=2", "run.run_dir='/tmp/x'"])
def test_old_binding_names_are_errors_naming_the_binding(binding):
    """Bindings of configurables that no longer exist (the names before RunConfig / TrainConfig /
    EvalConfig) fail when gin parses them, as `python -m slm_jax.main --gin.<binding>` does."""
    files, bindings = gin_utils.parse_flags([f"--gin_file={TINY_GIN}", f"--gin.{binding}"])
    name = binding.split("=")[0]
    configurable = name.split(".")[0]
    # `run` (run.mode) is a configurable of slm_jax.main once that is imported: then the
    # parameter is what gin reports missing
    missing = f"(No configurable matching '{configurable}'|'{configurable}' doesn't have a parameter named)"
    with pytest.raises(ValueError, match=f"(?s){missing}.*{re.escape(name)}"):
        gin_utils.parse_config(files, bindings)


def test_cli_refuses_an_old_binding_before_running(tmp_path):
    """The command line: `--gin.setup.seed=3` ends the process with gin's error naming the
    binding, before any run directory is made."""
    out = subprocess.run([sys.executable, "-m", "slm_jax.main", f"--gin_file={TINY_GIN}",
                          f"--gin.RunConfig.run_dir='{tmp_path / 'run'}'", "--gin.setup.seed=3"],
                         cwd=REPO, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode != 0
    assert "No configurable matching 'setup'" in out.stderr and "setup.seed=3" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_misspelt_parameter_is_an_error():
    with pytest.raises(ValueError, match="(?s)'RunConfig' doesn't have a parameter named 'sed'.*RunConfig.sed=3"):
        gin_utils.parse_config([TINY_GIN], ["RunConfig.sed=3"])


def test_mesh_binding_is_applied_to_the_run(tmp_path):
    """RunConfig.mesh is built from MeshConfig's bindings, and setup builds the mesh from it: a
    data axis that does not fit the devices is refused instead of being ignored."""
    n = jax.device_count()
    data = 3 if n % 3 else n + 1                  # 3 when it does not divide the device count
    tiny_run(tmp_path, f"MeshConfig.data={data}")
    run = train_lib.RunConfig()
    assert run.mesh.data == data
    with pytest.raises(ValueError, match=f"MeshConfig data={data} x model=1 does not fit {n} devices"):
        train_lib.setup(run)


def test_eval_every_without_an_eval_config_fails_before_training(tmp_path):
    """TrainConfig.eval_every needs an evaluation: without EvalConfig bindings, building the
    EvalConfig main would pass fails naming it, and train() without an evaluator refuses to
    start; no step runs (no metrics, no checkpoint)."""
    from helpers import FEATURE_LENGTHS, register_fixed_task
    gin_utils.parse_config([TINY_GIN], [f"RunConfig.run_dir='{tmp_path}'", "RunConfig.train_steps=4",
                                        f"TrainConfig.train_task='{register_fixed_task()}'",
                                        f"TrainConfig.feature_lengths={FEATURE_LENGTHS}", "TrainConfig.eval_every=2"])
    run, cfg = train_lib.RunConfig(), train_lib.TrainConfig()
    assert cfg.eval_every == 2
    with pytest.raises(ValueError, match="EvalConfig.eval_tasks is not set"):
        eval_lib.EvalConfig()
    with pytest.raises(ValueError, match="TrainConfig.eval_every is set .* EvalConfig"):
        train_lib.train(run, cfg)
    assert not list(tmp_path.iterdir())
