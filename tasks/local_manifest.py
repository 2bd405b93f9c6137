"""Tasks from a user's own recordings, listed in a TSV (with a header row) or JSONL manifest.

Columns / keys:
    audio                 path of the audio file (relative paths resolve against the
                          manifest's folder); any format libsndfile reads, mono
    language              language code of the speech, e.g. "en"
    transcript            what is said (non-empty)
    translation           optional: a translation of the transcript ...
    translation_language  ... into this language (default "en")
    split                 optional: train / validation / test (default: the manifest's
                          `default_split`)
    id                    optional: utterance id (default "<manifest name>-<row>")

Every row is checked before use (file present and readable, mono, a supported sample
rate, not empty nor too short, transcript and language present). Bad rows are collected
and reported together in one warning naming each row number, file and reason; the good rows
still load. `strict=True` raises ManifestError with the same report instead.

    register_manifest("my_corpus", "/data/manifest.tsv")
    # -> my_corpus_asr (+ my_corpus_ast when the manifest has translations)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import warnings

from tasks import asr, common

SUPPORTED_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
MIN_SAMPLES_16K = 401  # log-mel needs more than 200 samples; keep a margin of one window
SPLITS = ("train", "validation", "test")
log = logging.getLogger(__name__)


class ManifestError(ValueError):
    """A manifest (or, with strict=True, one of its rows) cannot be used."""


class ManifestWarning(UserWarning):
    """Some rows of a manifest were skipped."""


@dataclasses.dataclass(frozen=True)
class BadRow:
    row: int  # line number in the file (the TSV header is line 1)
    audio: str
    reason: str

    def __str__(self):
        return f"row {self.row} ({self.audio or 'no audio path'}): {self.reason}"


def _read_rows(path: str) -> list[tuple[int, dict]]:
    """(line number, raw row dict) of a TSV or JSONL manifest."""
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: manifest not found")
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        if path.endswith((".jsonl", ".json")):
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    row = {"__error__": f"invalid JSON ({e.msg})"}
                if not isinstance(row, dict):
                    row = {"__error__": "a JSONL row must be an object"}
                rows.append((i, row))
        else:
            reader = csv.DictReader(f, delimiter="\t")
            if not reader.fieldnames or "audio" not in reader.fieldnames:
                raise ManifestError(f"{path}: a TSV manifest needs a header row with at least the columns "
                                    f"audio, language, transcript (got {reader.fieldnames})")
            for i, row in enumerate(reader, 2):
                if None in row:
                    row = {"__error__": f"{len(reader.fieldnames) + len(row[None])} fields, "
                                        f"header has {len(reader.fieldnames)}"}
                rows.append((i, row))
    return rows


def _check_audio(path: str) -> str | None:
    """Why the file cannot be used, or None."""
    import soundfile
    if not os.path.isfile(path):
        return "audio file not found"
    try:
        info = soundfile.info(path)
    except Exception as e:
        return f"unreadable audio ({str(e).strip() or type(e).__name__})"
    if info.samplerate not in SUPPORTED_SAMPLE_RATES:
        return f"unsupported sample rate {info.samplerate} Hz (supported: {', '.join(map(str, SUPPORTED_SAMPLE_RATES))})"
    if info.channels != 1:
        return f"audio has {info.channels} channels; mono is required"
    if info.frames == 0:
        return "audio is empty (0 samples)"
    if info.frames * common.SAMPLE_RATE / info.samplerate < MIN_SAMPLES_16K:
        return f"audio too short ({info.frames} samples at {info.samplerate} Hz)"
    return None


@dataclasses.dataclass
class Manifest:
    """The good records and the bad rows of one manifest."""

    path: str
    records: list[dict]
    bad_rows: list[BadRow]
    has_translations: bool

    def report(self) -> str:
        n = len(self.records) + len(self.bad_rows)
        return (f"{self.path}: {len(self.bad_rows)} of {n} rows skipped:\n"
                + "\n".join(f"  {b}" for b in self.bad_rows))


def read_manifest(path: str | os.PathLike, *, default_split: str = "train", strict: bool = False) -> Manifest:
    """Reads and checks every row; warns (or, strict, raises ManifestError) listing the bad ones."""
    path = os.path.abspath(os.fspath(path))
    if default_split not in SPLITS:
        raise ValueError(f"default_split must be one of {SPLITS}, got {default_split!r}")
    base, stem = os.path.dirname(path), os.path.splitext(os.path.basename(path))[0]
    records, bad, has_translations = [], [], False
    for line, row in _read_rows(path):
        audio = str(row.get("audio") or "").strip()
        if "__error__" in row:
            bad.append(BadRow(line, audio, row["__error__"]))
            continue
        full = os.path.normpath(os.path.join(base, audio)) if audio else ""
        transcript = str(row.get("transcript") or "").strip()
        language = str(row.get("language") or "").strip()
        split = str(row.get("split") or "").strip() or default_split
        translation = str(row.get("translation") or "").strip()
        reason = ("no audio path" if not audio else None) or _check_audio(full)
        if reason is None and not transcript:
            reason = "empty transcript"
        if reason is None and not language:
            reason = "no language"
        if reason is None and split not in SPLITS:
            reason = f"unknown split {split!r} (use one of {', '.join(SPLITS)})"
        if reason:
            bad.append(BadRow(line, full or audio, reason))
            continue
        has_translations |= bool(translation)
        records.append({
            "id": str(row.get("id") or f"{stem}-{line}"), "path": full, "language": language, "text": transcript,
            "translation": translation, "translation_language": str(row.get("translation_language") or "en").strip(),
            "split": split,
        })
    manifest = Manifest(path, records, bad, has_translations)
    if bad:
        if strict:
            raise ManifestError(manifest.report())
        log.warning("%s", manifest.report())
        warnings.warn(manifest.report(), ManifestWarning, stacklevel=2)
    if not records:
        raise ManifestError(f"{path}: no usable rows" + (f"\n{manifest.report()}" if bad else ""))
    return manifest


class ManifestCorpus(common.InMemoryCorpus):
    """The good rows of a manifest, split by their split column. The manifest is read (and
    bad rows reported) once, on first use."""

    def __init__(self, path: str | os.PathLike, *, default_split: str = "train", strict: bool = False):
        self.path, self.default_split, self.strict = os.path.abspath(os.fspath(path)), default_split, strict
        self.name = f"manifest:{self.path}"
        self._manifest: Manifest | None = None

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = read_manifest(self.path, default_split=self.default_split, strict=self.strict)
        return self._manifest

    @property
    def splits(self):
        present = {r["split"] for r in self.manifest.records}
        return tuple(s for s in SPLITS if s in present)

    def records(self, split):
        self.check_split(split)
        return [dict(r) for r in self.manifest.records if r["split"] == split]


def manifest_ast_maker(instruction: str = "Translate the speech into {language}.") -> common.Make:
    """record with a translation -> (instruction, translation)."""
    from tasks.world_text import LANGUAGE_NAMES

    def make(r):
        if not r["translation"]:
            return None
        lang = LANGUAGE_NAMES.get(r["translation_language"], r["translation_language"])
        return instruction.format(language=lang), r["translation"]

    make.__name__ = "manifest_ast"
    return make


def register_manifest(name: str, path: str | os.PathLike, *, default_split: str = "train",
                      strict: bool = False, **kw) -> list[str]:
    """{name}_asr (all languages) and, when any row has a translation, {name}_ast.

    Reads and checks the manifest now (bad rows are reported here; strict raises)."""
    corpus = ManifestCorpus(path, default_split=default_split, strict=strict)
    m = corpus.manifest
    names = [f"{name}_asr"]
    common.register_task(names[0], corpus, asr.asr_maker(None), common.METRICS["asr"], **kw)
    if m.has_translations:
        names.append(f"{name}_ast")
        common.register_task(names[1], corpus, manifest_ast_maker(), common.METRICS["ast"], **kw)
    return names
