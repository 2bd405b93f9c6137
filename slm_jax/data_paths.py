"""Where generated data lives: <data dir> = $SLM_DATA_DIR or <repo>/data_cache (TFDS builds under
<data dir>/tfds, the world vocabulary under <data dir>/vocab, assembled foundation checkpoints
such as Whisper base under <data dir>/foundations). The directory is ignored by git."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Root of generated data: $SLM_DATA_DIR or <repo>/data_cache.

    Read at use time, not at import time, so changing the variable redirects everything."""
    return Path(os.environ.get("SLM_DATA_DIR") or REPO_ROOT / "data_cache")
