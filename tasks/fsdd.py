"""Free Spoken Digit Dataset: real recordings of the English digits 0-9 (8 kHz WAV,
`{digit}_{speaker}_{n}.wav`), used as a real-speech evaluation set (split "test" only).

Read in place from $SLM_FSDD_DIR or <repo>/../shared/data/fsdd (either the folder of WAVs
or its parent with recordings/); never copied into the repo. The audio is resampled to
16 kHz when read. Records follow the spoken_world schema (kind "number", value = the digit,
written = "7", text = "seven", translations in all four languages, voice = the speaker), so
the same task makers apply. Tasks: fsdd_asr_en (transcript = the English digit word) and
fsdd_digits ("Write the spoken number as digits." -> "7"). Nothing is registered when the
folder is missing.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from tasks import asr, common, paths, prompts, world_text

FILE_RE = re.compile(r"^(\d)_([A-Za-z0-9]+)_(\d+)\.wav$")


def fsdd_dir() -> Path | None:
    """The folder holding the WAV files, or None when absent."""
    root = Path(os.environ.get("SLM_FSDD_DIR") or paths.REPO_ROOT.parent / "shared" / "data" / "fsdd")
    for d in (root / "recordings", root):
        if d.is_dir() and any(FILE_RE.match(f) for f in os.listdir(d)):
            return d
    return None


def _order(m: re.Match) -> tuple:
    """Take number, then speaker, then digit: every first N of the records spreads over all
    digits and speakers (a bounded evaluation reads the first N; sorted file names would give
    N takes of "0" by one speaker)."""
    digit, speaker, n = m.groups()
    return int(n), speaker, int(digit)


@functools.lru_cache(maxsize=4)
def _records(directory: str) -> tuple:
    out = []
    for m in sorted(filter(None, map(FILE_RE.match, os.listdir(directory))), key=_order):
        name = m.string
        digit, speaker = int(m.group(1)), m.group(2)
        texts = {lang: world_text.cardinal(digit, lang) for lang in world_text.LANGUAGES}
        out.append({
            "id": f"fsdd-{name[:-4]}", "item_id": f"fsdd-{name[:-4]}", "language": "en", "text": texts["en"],
            "kind": "number", "value": digit, "written": str(digit), "translations": texts,
            "slots": {k: "" for k in world_text.SLOT_NAMES}, "voice": speaker, "speed": 0, "pitch": 0,
            "path": os.path.join(directory, name),
        })
    return tuple(out)


class FSDDCorpus(common.InMemoryCorpus):
    """All recordings of the folder as one "test" split."""

    splits = ("test",)

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        self.name = f"fsdd:{self.directory}"

    def records(self, split):
        self.check_split(split)
        return [dict(r) for r in _records(self.directory)]


def register_fsdd(directory: str | os.PathLike | None = None) -> list[str]:
    """fsdd_asr_en and fsdd_digits, if the recordings are there (else nothing)."""
    directory = directory or fsdd_dir()
    if directory is None:
        return []
    corpus = FSDDCorpus(directory)
    names = asr.register_asr_tasks("fsdd", corpus, ["en"])
    common.register_task("fsdd_digits", corpus, prompts.digits_maker(), common.METRICS["exact_match"])
    return names + ["fsdd_digits"]
