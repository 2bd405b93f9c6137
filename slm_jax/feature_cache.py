"""Entry point: build the feature cache a training run reads (see slm_jax/cached_features.py).

    python -m slm_jax.feature_cache --gin_file=my_run.gin [--gin.CacheConfig.split="'train'" ...]

The same gin files as the training run (RunConfig, TrainConfig with feature_cache_dir set);
CacheConfig.* bindings choose the split, batch size and shard size. Rebuilding an up-to-date
cache is a no-op; a stale one is replaced."""

from __future__ import annotations

import sys
from typing import Sequence

if __name__ == "__main__":
    # run the module as imported under its package name, so gin registers each configurable
    # once (not also as __main__.*)
    from slm_jax.feature_cache import main as _entry
    _entry()
    sys.exit(0)

from slm_jax import configs  # noqa: F401  (registers the model configs with gin)
from slm_jax import eval_lib  # noqa: F401  (registers EvalConfig, which run gin files bind)
from slm_jax import gin_utils, train_lib


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse flags into gin, build the run's configs once, write the cache; returns its manifest."""
    gin_utils.parse_argv(argv)
    return train_lib.build_feature_cache(train_lib.RunConfig(), train_lib.TrainConfig(), train_lib.CacheConfig())
