"""The command line:  python -m slm_jax.main --gin_file=FILE [--gin_file=...] [--gin.BINDING=VALUE ...]

Modes (`run.mode`): train, eval, infer. Everything a user tunes is a gin binding, e.g.
    --gin.run.mode="'eval'"  --gin.RunConfig.train_steps=200  --gin.DecodeConfig.method="'beam'"
This module parses flags, builds the configs gin binds (RunConfig, TrainConfig, EvalConfig,
InferConfig) once, and hands them to slm_jax.train_lib / slm_jax.eval_lib. The demo has its own
entry point (python -m slm_jax.demo)."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # `python -m slm_jax.main`: run the module as imported under its package name, so gin
    # registers each configurable once (not also as __main__.*).
    from slm_jax.main import main as _entry
    _entry()
    sys.exit(0)

import logging
from typing import Any, Sequence

import gin

from slm_jax import configs  # noqa: F401  (registers the model configs with gin)
from slm_jax import eval_lib, gin_utils, train_lib

MODES = ("train", "eval", "infer")


def train_mode() -> dict:
    """Train; with EvalConfig bound, evaluate every TrainConfig.eval_every steps and at the end."""
    run, cfg = train_lib.RunConfig(), train_lib.TrainConfig()
    evaluator = None
    if cfg.eval_every or gin_utils.bindings_of("EvalConfig"):
        eval_cfg, data = eval_lib.EvalConfig(), eval_lib.EvalDataCache()
        evaluator = lambda s, trainable, step: eval_lib.evaluate(s, eval_cfg, trainable, step, data)  # noqa: E731
    return train_lib.train(run, cfg, evaluator)


@gin.configurable
def run(mode: str = "train") -> Any:
    """Dispatch to a mode, with the configs gin binds."""
    if mode == "train":
        return train_mode()
    if mode == "eval":
        return eval_lib.evaluate_run(train_lib.RunConfig(), eval_lib.EvalConfig())
    if mode == "infer":
        return eval_lib.infer(train_lib.RunConfig(), eval_lib.InferConfig())
    raise ValueError(f"run.mode must be one of {list(MODES)}, got {mode!r}"
                     + (" (the demo has its own entry point: python -m slm_jax.demo)" if mode == "demo" else ""))


def main(argv: Sequence[str] | None = None) -> Any:
    gin_utils.parse_argv(argv)
    logging.basicConfig(level=logging.WARNING)
    return run()
