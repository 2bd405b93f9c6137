"""Where generated data lives: <data dir> = $SLM_DATA_DIR or <repo>/data_cache (TFDS builds
under <data dir>/tfds, the world vocabulary under <data dir>/vocab)."""

from __future__ import annotations

from pathlib import Path

from slm_jax.data_paths import REPO_ROOT, data_dir

__all__ = ["REPO_ROOT", "data_dir", "tfds_dir"]


def tfds_dir() -> Path:
    return data_dir() / "tfds"
