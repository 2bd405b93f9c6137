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

Every row is checked once, when the manifest is registered: its line is valid UTF-8 (a bad
line is named, the other lines load), the file is present and readable, mono, at a supported
sample rate, not empty nor too short, holds as much audio as its header declares (a truncated
WAV is refused rather than trained on half its audio with the whole transcript), float samples
are finite (no NaN/inf), transcript and language are present, and, with `max_frames` (the run's
`TrainConfig.feature_lengths["speech"]`), the audio fits that many feature frames: a longer
row is skipped and named, or cut to its first `max_frames` frames with `too_long="cut"`. A
summary line says how many rows were kept and why the others were not; bad rows are
reported together in one warning naming each row number, file and reason; the good rows
still load. `strict=True` raises ManifestError with the same report instead. Rows longer than
the feature length of the run that reads them (when it is shorter than `max_frames`, or when
no `max_frames` was given) are dropped by the pipeline with a warning naming the utterance
instead of stopping training.

    register_manifest("my_corpus", "/data/manifest.tsv", max_frames=3000)
    # -> my_corpus_asr (+ my_corpus_ast when the manifest has translations)
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import logging
import os
import warnings

import numpy as np

from slm_jax import features as features_lib
from tasks import asr, common

SUPPORTED_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
MIN_SAMPLES_16K = 401  # log-mel needs more than 200 samples; keep a margin of one window
SPLITS = ("train", "validation", "test")
TOO_LONG = ("skip", "cut")
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
    kind: str = "other"  # what the summary line counts it as: "too long", "not UTF-8", ...

    def __str__(self):
        return f"row {self.row} ({self.audio or 'no audio path'}): {self.reason}"


def _decoded_lines(path: str):
    """(line number, text, why the line is not valid UTF-8 or None) of each line of a file read
    as bytes: a bad line is named (its text decoded with replacement characters) instead of
    failing the whole file."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            encoding = "utf-8-sig" if i == 1 else "utf-8"
            try:
                yield i, raw.decode(encoding), None
            except UnicodeDecodeError as e:
                yield i, raw.decode(encoding, errors="replace"), (
                    f"line is not valid UTF-8 ({e.reason} at byte {e.start}: {raw[e.start:e.start + 4]!r})")


def _jsonl_row(text: str) -> dict:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return {"__error__": f"invalid JSON ({e.msg})"}
    return row if isinstance(row, dict) else {"__error__": "a JSONL row must be an object"}


def _tsv_row(text: str, header: list[str]) -> dict:
    fields = next(csv.reader([text.rstrip("\r\n")], delimiter="\t"))
    if len(fields) > len(header):
        return {"__error__": f"{len(fields)} fields, header has {len(header)}"}
    return dict(zip(header, fields))


def _read_rows(path: str) -> list[tuple[int, dict]]:
    """(line number, raw row dict) of a TSV or JSONL manifest; a row that cannot be read holds
    "__error__" (and "__kind__") instead."""
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: manifest not found")
    jsonl, header, rows = path.endswith((".jsonl", ".json")), None, []
    for i, text, undecodable in _decoded_lines(path):
        if not jsonl and header is None:
            if undecodable:
                raise ManifestError(f"{path}: the header row (line 1): {undecodable}")
            header = next(csv.reader([text.rstrip("\r\n")], delimiter="\t"), [])
            if "audio" not in header:
                raise ManifestError(f"{path}: a TSV manifest needs a header row with at least the columns "
                                    f"audio, language, transcript (got {header})")
            continue
        if undecodable:
            row = _jsonl_row(text) if jsonl else _tsv_row(text, header)
            rows.append((i, {"audio": row.get("audio"), "__error__": undecodable, "__kind__": "not UTF-8"}))
        elif text.strip():
            rows.append((i, _jsonl_row(text) if jsonl else _tsv_row(text, header)))
    if not jsonl and header is None:
        raise ManifestError(f"{path}: a TSV manifest needs a header row with at least the columns "
                            "audio, language, transcript (the file is empty)")
    return rows


def _bytes_and_seconds(n: int, byte_rate: int) -> str:
    return f"{n} bytes ({n / byte_rate:.2f} s)" if byte_rate else f"{n} bytes"


def wav_shortfall(path: str) -> str | None:
    """Why a RIFF/WAVE file holds less audio than its header declares, or None (also for
    other formats; libsndfile itself reads a truncated WAV silently as the part present)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        order = "little" if head[:4] == b"RIFF" else "big"
        pos, byte_rate = 12, 0
        while pos + 8 <= size:
            f.seek(pos)
            chunk, n = f.read(4), int.from_bytes(f.read(4), order)
            if chunk == b"fmt ":
                fmt = f.read(min(n, 16))
                byte_rate = int.from_bytes(fmt[8:12], order) if len(fmt) >= 12 else 0
            elif chunk == b"data":
                present = size - pos - 8
                if n == 0xFFFFFFFF or n <= present:   # 0xFFFFFFFF: a streamed file of unknown length
                    return None
                return (f"truncated file: its header declares {_bytes_and_seconds(n, byte_rate)} of audio, "
                        f"the file holds {_bytes_and_seconds(present, byte_rate)}")
            pos += 8 + n + (n & 1)
    return None


def _nonfinite_samples(path: str) -> int:
    """How many samples of a float-encoded file are NaN or inf (read in blocks)."""
    import soundfile
    return sum(int(np.count_nonzero(~np.isfinite(b)))
               for b in soundfile.blocks(path, blocksize=1 << 18, dtype="float32", always_2d=True))


def _check_audio(path: str) -> tuple[str, str] | None:
    """(kind, why) the file cannot be used, or None."""
    import soundfile
    if not os.path.isfile(path):
        return "missing audio", "audio file not found"
    try:
        info = soundfile.info(path)
    except Exception as e:
        return "unreadable audio", f"unreadable audio ({str(e).strip() or type(e).__name__})"
    if info.samplerate not in SUPPORTED_SAMPLE_RATES:
        return "unreadable audio", (f"unsupported sample rate {info.samplerate} Hz (supported: "
                                    f"{', '.join(map(str, SUPPORTED_SAMPLE_RATES))})")
    if info.channels != 1:
        return "unreadable audio", f"audio has {info.channels} channels; mono is required"
    if info.frames == 0:
        return "empty audio", "audio is empty (0 samples)"
    if info.frames * common.SAMPLE_RATE / info.samplerate < MIN_SAMPLES_16K:
        return "empty audio", f"audio too short ({info.frames} samples at {info.samplerate} Hz)"
    short = wav_shortfall(path)
    if short:
        return "truncated audio", short
    if info.subtype in ("FLOAT", "DOUBLE"):
        try:
            bad = _nonfinite_samples(path)
        except Exception as e:
            return "unreadable audio", f"unreadable audio ({str(e).strip() or type(e).__name__})"
        if bad:
            return "non-finite samples", f"audio has {bad} non-finite (NaN/inf) samples"
    return None


def check_audio(path: str) -> tuple[str, str] | None:
    """(kind, why) an audio file cannot be used, or None: the per-file checks of a manifest
    row (missing, unreadable, unsupported rate, not mono, empty or too short, truncated,
    non-finite samples), for other corpora that list audio files."""
    return _check_audio(path)


def samples_16k(path: str) -> int:
    """Samples the file has once resampled to 16 kHz (as features.load_audio returns it)."""
    import soundfile
    info = soundfile.info(path)
    return -(-info.frames * common.SAMPLE_RATE // info.samplerate)


def max_samples_for(frames: int, feature_config: features_lib.FeatureConfig) -> int:
    """The most 16 kHz samples whose features have at most `frames` frames."""
    lo, hi = 0, (frames + 2) * 400 * max(feature_config.stride, 1)
    while lo < hi:                                   # num_frames is non-decreasing in the samples
        mid = (lo + hi + 1) // 2
        if feature_config.num_frames(mid) <= frames:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclasses.dataclass(frozen=True)
class LengthLimit:
    """Rows whose audio gives more than `max_frames` feature frames (of `feature_config`) are
    skipped (too_long="skip") or cut to their first max_frames frames (too_long="cut")."""
    max_frames: int
    too_long: str = "skip"
    feature_config: features_lib.FeatureConfig = common.DEFAULT_FEATURES

    def __post_init__(self):
        if self.too_long not in TOO_LONG:
            raise ValueError(f"too_long must be one of {TOO_LONG}, got {self.too_long!r}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be positive, got {self.max_frames}")

    def check(self, path: str) -> tuple[str | None, int | None]:
        """(why the row is skipped, or None; the samples to keep when it is cut, or None)."""
        n = samples_16k(path)
        frames = self.feature_config.num_frames(n)
        if frames <= self.max_frames:
            return None, None
        if self.too_long == "cut":
            return None, max_samples_for(self.max_frames, self.feature_config)
        return (f"too long: {n / common.SAMPLE_RATE:.2f} s gives {frames} feature frames, more than "
                f"max_frames={self.max_frames} (pass too_long='cut' to keep its first {self.max_frames})"), None


@dataclasses.dataclass
class Manifest:
    """The good records and the bad rows of one manifest (`cut`: how many records were cut to
    the length limit)."""

    path: str
    records: list[dict]
    bad_rows: list[BadRow]
    has_translations: bool
    cut: int = 0
    max_frames: int | None = None

    def summary(self) -> str:
        """One line: how many rows were kept, and how many were skipped for which reason."""
        n = len(self.records) + len(self.bad_rows)
        line = f"{self.path}: {len(self.records)} of {n} rows kept"
        if self.cut:
            line += f" ({self.cut} cut to max_frames={self.max_frames})"
        if self.bad_rows:
            kinds = collections.Counter(b.kind for b in self.bad_rows)
            line += (f"; {len(self.bad_rows)} of {n} rows skipped: "
                     + ", ".join(f"{c} {k}" for k, c in kinds.most_common()))
        return line

    def report(self) -> str:
        """The summary line, then each skipped row."""
        return "\n".join([self.summary()] + [f"  {b}" for b in self.bad_rows])


def _row_text(row: dict, key: str) -> str:
    return str(row.get(key) or "").strip()


def _unencodable(*texts: str) -> bool:
    """Text a JSON row can hold (lone surrogates from \\ud800 escapes) that is no UTF-8."""
    try:
        for t in texts:
            t.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_row(row: dict, full: str, split: str, limit: LengthLimit | None) -> tuple[tuple[str, str] | None, int | None]:
    """((kind, why) the row is skipped, or None; the samples it is cut to, or None)."""
    if not full:
        return ("other", "no audio path"), None
    bad = _check_audio(full)
    if bad:
        return bad, None
    if not _row_text(row, "transcript"):
        return ("other", "empty transcript"), None
    if not _row_text(row, "language"):
        return ("other", "no language"), None
    if split not in SPLITS:
        return ("other", f"unknown split {split!r} (use one of {', '.join(SPLITS)})"), None
    if _unencodable(*(_row_text(row, k) for k in ("transcript", "translation", "language", "id"))):
        return ("not UTF-8", "text is not valid Unicode (a lone surrogate escape)"), None
    if limit is None:
        return None, None
    why, cut = limit.check(full)
    return (("too long", why) if why else None), cut


def read_manifest(path: str | os.PathLike, *, default_split: str = "train", strict: bool = False,
                  limit: LengthLimit | None = None) -> Manifest:
    """Reads and checks every row (see the module docstring); logs the summary line, and warns
    (or, strict, raises ManifestError) listing the bad rows. `limit`: the length check."""
    path = os.path.abspath(os.fspath(path))
    if default_split not in SPLITS:
        raise ValueError(f"default_split must be one of {SPLITS}, got {default_split!r}")
    base, stem = os.path.dirname(path), os.path.splitext(os.path.basename(path))[0]
    records, bad, has_translations, cut = [], [], False, 0
    for line, row in _read_rows(path):
        audio = _row_text(row, "audio")
        if "__error__" in row:
            bad.append(BadRow(line, audio, row["__error__"], row.get("__kind__", "other")))
            continue
        full = os.path.normpath(os.path.join(base, audio)) if audio else ""
        split = _row_text(row, "split") or default_split
        reason, max_samples = _check_row(row, full, split, limit)
        if reason:
            bad.append(BadRow(line, full or audio, reason[1], reason[0]))
            continue
        has_translations |= bool(_row_text(row, "translation"))
        cut += max_samples is not None
        records.append({
            "id": str(row.get("id") or f"{stem}-{line}"), "path": full, "language": _row_text(row, "language"),
            "text": _row_text(row, "transcript"), "translation": _row_text(row, "translation"),
            "translation_language": _row_text(row, "translation_language") or "en", "split": split,
            **({"max_samples": max_samples} if max_samples is not None else {}),
        })
    manifest = Manifest(path, records, bad, has_translations, cut, limit.max_frames if limit else None)
    if bad:
        if strict:
            raise ManifestError(manifest.report())
        log.warning("%s", manifest.report())
        warnings.warn(manifest.report(), ManifestWarning, stacklevel=2)
    else:
        log.info("%s", manifest.summary())
    if not records:
        raise ManifestError(f"{path}: no usable rows" + (f"\n{manifest.report()}" if bad else ""))
    return manifest


class ManifestCorpus(common.InMemoryCorpus):
    """The good rows of a manifest, split by their split column. The manifest is read (and
    bad rows reported) once, on first use; a row cut to the length limit loads cut."""

    def __init__(self, path: str | os.PathLike, *, default_split: str = "train", strict: bool = False,
                 limit: LengthLimit | None = None):
        self.path, self.default_split, self.strict = os.path.abspath(os.fspath(path)), default_split, strict
        self.limit = limit
        self.name = f"manifest:{self.path}"
        self._manifest: Manifest | None = None

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = read_manifest(self.path, default_split=self.default_split, strict=self.strict,
                                           limit=self.limit)
        return self._manifest

    @property
    def splits(self):
        present = {r["split"] for r in self.manifest.records}
        return tuple(s for s in SPLITS if s in present)

    def records(self, split):
        self.check_split(split)
        return [dict(r) for r in self.manifest.records if r["split"] == split]

    def load_samples(self, record: dict) -> np.ndarray:
        return super().load_samples(record)[:record.get("max_samples")]


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
                      strict: bool = False, max_frames: int | None = None, too_long: str = "skip",
                      **kw) -> list[str]:
    """{name}_asr (all languages) and, when any row has a translation, {name}_ast.

    Reads and checks the manifest now: the summary line is logged and bad rows are reported
    here (strict raises). `max_frames`: the speech feature length of the runs that train on it
    (TrainConfig.feature_lengths["speech"], in frames of the task's `feature_config`); a longer
    row is skipped and named, or with too_long="cut" cut to its first max_frames frames. Rows
    longer than a run's own feature length are dropped by its pipeline with a warning. Without a
    `feature_config` the task uses the run's front end, and `max_frames` counts log-mel frames
    (100 per second; w2v-BERT's fbank gives 50, so the limit is then stricter than needed).
    Other keyword arguments go to tasks.common.register_task (vocabulary, feature_config, ...)."""
    feature_config = kw.get("feature_config") or common.DEFAULT_FEATURES
    limit = LengthLimit(max_frames, too_long, feature_config) if max_frames is not None else None
    if too_long not in TOO_LONG:
        raise ValueError(f"register_manifest: too_long must be one of {TOO_LONG}, got {too_long!r}")
    corpus = ManifestCorpus(path, default_split=default_split, strict=strict, limit=limit)
    m = corpus.manifest
    names = [f"{name}_asr"]
    kw.setdefault("long_speech", "skip")
    common.register_task(names[0], corpus, asr.asr_maker(None), common.METRICS["asr"], **kw)
    if m.has_translations:
        names.append(f"{name}_ast")
        common.register_task(names[1], corpus, manifest_ast_maker(), common.METRICS["ast"], **kw)
    return names
