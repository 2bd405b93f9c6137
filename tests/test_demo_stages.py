"""The demo's SLM stage config, without training: DemoConfig.slm_mixture names the adapters'
training mixture and DemoConfig.depth_steps sets the steps of the depths it lists (the others keep
the SLM gin file's RunConfig.train_steps; a train_steps in slm_bindings, as the quick demo's,
applies to every depth)."""

from __future__ import annotations

import pytest

from slm_jax import demo, train_lib


def stage_settings(d: demo.Demo, depth: int) -> tuple[int, str]:
    with d.slm_stage(depth):
        return train_lib.RunConfig().train_steps, train_lib.TrainConfig().train_task


def test_depth_steps_and_mixture(tmp_path):
    from slm_jax import gin_utils
    with gin_utils.scoped_config(["gin/runs/demo_slm.gin"]):
        default_steps = gin_utils.query("RunConfig.train_steps")
    d = demo.Demo(demo.DemoConfig(run_dir=str(tmp_path), depths=(0, 2), slm_mixture="aug_asr_ast",
                                  depth_steps={2: default_steps + 1000}))
    assert stage_settings(d, 2) == (default_steps + 1000, "spoken_world_demo_aug_asr_ast")
    assert stage_settings(d, 0) == (default_steps, "spoken_world_demo_aug_asr_ast")
    # the defaults: every depth the gin file's steps, the plain ASR + AST mixture
    plain = demo.Demo(demo.DemoConfig(run_dir=str(tmp_path / "plain")))
    assert stage_settings(plain, 2) == (default_steps, "spoken_world_demo_asr_ast")


def test_slm_bindings_steps_win_over_depth_steps(tmp_path):
    d = demo.Demo(demo.DemoConfig(run_dir=str(tmp_path), depth_steps={2: 6000},
                                  slm_bindings=["RunConfig.train_steps = 400"]))
    assert stage_settings(d, 2)[0] == 400


def test_demo_warmup_is_a_share_of_each_depths_steps(tmp_path):
    """The demo's SLM gin file sets make_schedule.warmup_fraction, so each depth warms up over a
    ninth of its own steps: the learning rate at half that many steps is half the peak."""
    from slm_jax import gin_utils
    from slm_jax.trainer import make_schedule
    d = demo.Demo(demo.DemoConfig(run_dir=str(tmp_path), depth_steps={0: 1500, 2: 9000}))
    for depth, warmup in ((2, 1000), (0, 167)):
        with d.slm_stage(depth):
            lr = gin_utils.query("make_schedule.learning_rate")
            schedule = make_schedule(total_steps=train_lib.RunConfig().train_steps)
        assert float(schedule(warmup / 2)) == pytest.approx(lr / 2, rel=1e-6)   # float32 schedule
        assert float(schedule(warmup)) == pytest.approx(lr, rel=1e-6)


def test_demo_gin_files_depth_steps():
    def depth_steps(gin_file):
        from slm_jax import gin_utils
        with gin_utils.scoped_config([gin_file]):
            return demo.DemoConfig().depth_steps
    # the main depth trains longest; the from-scratch variant keeps its own gin file's steps
    steps = depth_steps("gin/runs/demo.gin")
    assert set(steps) == {0, 1, 2, 4} and steps[2] == max(steps.values()) > min(steps.values())
    assert not depth_steps("gin/runs/demo_conformer.gin")
