"""CoVoST 2 speech translation (X -> en and en -> X) and ASR on its source speech, read in
place from Common Voice clips and the CoVoST TSVs, in their published layout:

    $SLM_COMMON_VOICE_DIR/<src>/clips/<clip>.mp3      Common Voice (4.0 for CoVoST 2), one
                                                      folder per language as released
    $SLM_COVOST_DIR/covost_v2.<src>_<tgt>.<split>.tsv split = train, dev, test: the output of
                                                      CoVoST's get_covost_splits.py, a header
                                                      row, columns path sentence translation
                                                      client_id

Without the split files, the released `covost_v2.<src>_<tgt>.tsv` (columns path, translation,
split, and sentence when present) is read instead, its sentences taken from Common Voice's
`<src>/validated.tsv` when it has none; its rows of split `train`/`train_covost` etc. form the
task's train split. TSVs are read as CoVoST writes them: tab-separated, unquoted, backslash
escapes.

Tasks (language codes as CoVoST spells them, lowercased with "-" -> "_" in the names):
covost2_ast_<src>_<tgt> ("Translate the speech into German." -> the translation) and
covost2_asr_<src> ("Transcribe the speech." -> the Common Voice sentence, as written). Splits:
train, validation (CoVoST dev), test; utterance ids are the clip names without extension.

Audio: whatever libsndfile decodes; the installed one (1.2) decodes Common Voice's 48 kHz
MP3, and WAV/FLAC clips under the same names work too. Clips are resampled to 16 kHz
(slm_jax.features.load_audio / resample) when a split is first loaded.

Each split's rows are checked on first use: a missing clip, unreadable audio (any check of
tasks.local_manifest.check_audio), an empty sentence or an empty translation makes the row
skipped and named (TSV file, line number, clip, reason) in one warning, as manifests do;
strict=True raises local_manifest.ManifestError instead.

    from tasks import covost2
    covost2.register_covost2("/data/covost", "/data/cv4", pairs=[("fr", "en"), ("en", "de")])
    # -> covost2_ast_fr_en, covost2_ast_en_de, covost2_asr_fr, covost2_asr_en
"""

from __future__ import annotations

import csv
import functools
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from tasks import asr, common, local_manifest, prompts

log = logging.getLogger(__name__)

COVOST_ENV, COMMON_VOICE_ENV = "SLM_COVOST_DIR", "SLM_COMMON_VOICE_DIR"
SPLITS = {"train": "train", "validation": "dev", "test": "test"}  # task split -> CoVoST split
LANGUAGE_NAMES = {
    "en": "English", "fr": "French", "de": "German", "es": "Spanish", "ca": "Catalan", "it": "Italian",
    "ru": "Russian", "zh-CN": "Chinese", "pt": "Portuguese", "fa": "Persian", "et": "Estonian",
    "mn": "Mongolian", "nl": "Dutch", "tr": "Turkish", "ar": "Arabic", "sv-SE": "Swedish", "lv": "Latvian",
    "sl": "Slovenian", "ta": "Tamil", "ja": "Japanese", "id": "Indonesian", "cy": "Welsh",
}
TSV_RE = re.compile(r"^covost_v2\.([A-Za-z-]+)_([A-Za-z-]+)(?:\.(train|dev|test))?\.tsv$")
LAYOUT = (f"${COMMON_VOICE_ENV}/<src>/clips/<clip>.mp3 (Common Voice, as released) and "
          f"${COVOST_ENV}/covost_v2.<src>_<tgt>.{{train,dev,test}}.tsv (CoVoST's get_covost_splits.py output; "
          "columns path sentence translation client_id) or covost_v2.<src>_<tgt>.tsv")


def task_code(language: str) -> str:
    """A language code as it appears in task names: "zh-CN" -> "zh_cn"."""
    return language.replace("-", "_").lower()


def translation_maker(source: str, target: str, target_name: str | None = None) -> common.Make:
    """record in `source` with a non-empty translations[target] -> ("Translate the speech into
    <target_name>.", that translation); target_name defaults to LANGUAGE_NAMES[target]."""
    instruction = prompts.AST_INSTRUCTION.format(language=target_name or LANGUAGE_NAMES.get(target, target))

    def make(r):
        if r["language"] != source:
            return None
        translation = r["translations"].get(target, "")
        return (instruction, translation) if translation.strip() else None

    make.__name__ = f"ast_{task_code(source)}_{task_code(target)}"
    return make


# ----------------------------------------------------------------------------- reading and checking


def read_tsv(path: str | os.PathLike, header: Sequence[str] | None = None,
             escapechar: str | None = "\\") -> list[tuple[int, dict]]:
    """(line number, row dict) of a tab-separated, unquoted file, backslash-escaped by default
    (as CoVoST and Common Voice write them); its first line is the header unless `header`
    names the columns. Lines are numbered from 1 (the header, when there is one)."""
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar=escapechar)
        for fields in reader:
            if header is None:
                header = fields
            elif any(x.strip() for x in fields):
                rows.append((reader.line_num, dict(zip(header, fields))))
    return rows


def is_empty(value) -> bool:
    """A text field with nothing but blanks, or a dict of such (all translations empty)."""
    if isinstance(value, Mapping):
        return all(is_empty(v) for v in value.values())
    return not str(value).strip()


def check_rows(path: str, rows: Iterable[tuple[int, dict]], required: Mapping[str, str], *,
               strict: bool = False) -> local_manifest.Manifest:
    """The records (each with "path") of a corpus file's rows whose audio passes
    local_manifest.check_audio and whose `required` fields ({field: reason when empty}) are
    non-empty; every other row is a BadRow (line, clip, reason), reported as manifests report
    theirs: logged and warned (local_manifest.ManifestWarning) together, or, strict, raised as
    local_manifest.ManifestError. No usable row at all is a ManifestError."""
    records, bad = [], []
    for line, record in rows:
        problem = local_manifest.check_audio(record["path"])
        if problem is None:
            problem = next((("other", why) for key, why in required.items() if is_empty(record[key])), None)
        if problem:
            bad.append(local_manifest.BadRow(line, record["path"], problem[1], problem[0]))
        else:
            records.append(record)
    manifest = local_manifest.Manifest(path, records, bad, has_translations=False)
    if bad:
        if strict:
            raise local_manifest.ManifestError(manifest.report())
        log.warning("%s", manifest.report())
        warnings.warn(manifest.report(), local_manifest.ManifestWarning, stacklevel=3)
    if not records:
        raise local_manifest.ManifestError(f"{path}: no usable rows" + (f"\n{manifest.report()}" if bad else ""))
    return manifest


def resolve_dir(value: str | os.PathLike | None, env: str, what: str, layout: str) -> Path:
    """`value`, else $`env`, as an existing folder; FileNotFoundError naming the path (or the
    variable) and the expected layout otherwise."""
    chosen = value or os.environ.get(env)
    if not chosen:
        raise FileNotFoundError(f"{what}: no copy given: pass its folder or set ${env}. Expected layout: {layout}")
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: {path} is not a folder (from {'the argument' if value else '$' + env}). "
                                f"Expected layout: {layout}")
    return path


@functools.lru_cache(maxsize=16)
def _validated_sentences(tsv: str) -> dict:
    return {r["path"]: r.get("sentence", "") for _, r in read_tsv(tsv)}


class CoVoSTCorpus(common.InMemoryCorpus):
    """One CoVoST 2 language pair: records {id, path, language, text, translations {tgt},
    client_id}, checked (and bad rows named) when a split is first used."""

    def __init__(self, source: str, target: str, covost_dir: str | os.PathLike,
                 common_voice_dir: str | os.PathLike, *, strict: bool = False):
        self.source, self.target, self.strict = source, target, strict
        self.covost_dir, self.common_voice_dir = Path(covost_dir), Path(common_voice_dir)
        self.name = f"covost2:{source}_{target}"
        self.clips = self.common_voice_dir / source / "clips"
        self.split_files = {s: self.covost_dir / f"covost_v2.{source}_{target}.{c}.tsv" for s, c in SPLITS.items()}
        self.full_file = self.covost_dir / f"covost_v2.{source}_{target}.tsv"
        self._checked: dict[str, local_manifest.Manifest] = {}

    @property
    def splits(self):
        if any(f.is_file() for f in self.split_files.values()):
            return tuple(s for s, f in self.split_files.items() if f.is_file())
        return tuple(SPLITS) if self.full_file.is_file() else ()

    def check_layout(self) -> None:
        """FileNotFoundError naming the expected files when the pair's TSVs or clips are absent."""
        if not self.splits:
            raise FileNotFoundError(
                f"CoVoST 2 {self.source}->{self.target}: neither {self.split_files['train']} (and its dev/test "
                f"siblings) nor {self.full_file} exists. Expected layout: {LAYOUT}")
        if not self.clips.is_dir():
            raise FileNotFoundError(f"CoVoST 2 {self.source}->{self.target}: Common Voice clips folder {self.clips} "
                                    f"not found. Expected layout: {LAYOUT}")

    def _rows(self, split: str) -> tuple[str, list[tuple[int, dict]]]:
        """(TSV read, its rows of `split` with sentence and translation)."""
        if self.split_files[split].is_file():
            return str(self.split_files[split]), read_tsv(self.split_files[split])
        rows = [(i, r) for i, r in read_tsv(self.full_file)
                if r.get("split", "").removesuffix("_covost") == SPLITS[split]]
        if rows and "sentence" not in rows[0][1]:
            sentences = _validated_sentences(str(self.common_voice_dir / self.source / "validated.tsv"))
            rows = [(i, {**r, "sentence": sentences.get(r["path"], "")}) for i, r in rows]
        return str(self.full_file), rows

    def checked(self, split: str) -> local_manifest.Manifest:
        """The split's good records and named bad rows (read and checked once)."""
        self.check_split(split)
        if split not in self._checked:
            self.check_layout()
            path, rows = self._rows(split)
            records = ((line, {
                "id": os.path.splitext(r.get("path", ""))[0], "path": str(self.clips / r.get("path", "")),
                "language": self.source, "text": r.get("sentence", "").strip(),
                "translations": {self.target: r.get("translation", "").strip()}, "client_id": r.get("client_id", ""),
            }) for line, r in rows)
            self._checked[split] = check_rows(path, records, {"text": "empty transcript",
                                                              "translations": "empty translation"},
                                              strict=self.strict)
        return self._checked[split]

    def records(self, split):
        return [dict(r) for r in self.checked(split).records]


def find_pairs(covost_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """The (source, target) pairs whose CoVoST TSVs are in `covost_dir`, sorted."""
    found = {m.group(1, 2) for m in map(TSV_RE.match, os.listdir(covost_dir)) if m}
    return sorted(found)


def register_covost2(covost_dir: str | os.PathLike | None = None,
                     common_voice_dir: str | os.PathLike | None = None,
                     pairs: Sequence[tuple[str, str]] | None = None, *, with_asr: bool = True,
                     strict: bool = False, **kw) -> list[str]:
    """covost2_ast_<src>_<tgt> for each pair (default: every pair whose TSVs are in the CoVoST
    folder) and, with_asr, covost2_asr_<src> once per source language.

    Folders: the arguments, else $SLM_COVOST_DIR and $SLM_COMMON_VOICE_DIR. A missing folder,
    TSV or clips folder is a FileNotFoundError here, naming the path and the expected layout;
    rows are checked when a split is first used (see the module docstring). `kw` goes to
    common.register_task (vocabulary, feature_config, ...); names registered before (by
    `import tasks`, from the environment) are replaced unless replace=False."""
    kw.setdefault("replace", True)
    covost_dir = resolve_dir(covost_dir, COVOST_ENV, "CoVoST 2 TSVs", LAYOUT)
    common_voice_dir = resolve_dir(common_voice_dir, COMMON_VOICE_ENV, "Common Voice clips", LAYOUT)
    pairs = list(pairs) if pairs is not None else find_pairs(covost_dir)
    if not pairs:
        raise FileNotFoundError(f"CoVoST 2: no covost_v2.<src>_<tgt>[.<split>].tsv in {covost_dir}. "
                                f"Expected layout: {LAYOUT}")
    names, asr_done = [], set()
    for src, tgt in pairs:
        corpus = CoVoSTCorpus(src, tgt, covost_dir, common_voice_dir, strict=strict)
        corpus.check_layout()
        names.append(f"covost2_ast_{task_code(src)}_{task_code(tgt)}")
        common.register_task(names[-1], corpus, translation_maker(src, tgt), common.METRICS["ast"], **kw)
        if with_asr and src not in asr_done:
            asr_done.add(src)
            names.append(f"covost2_asr_{task_code(src)}")
            common.register_task(names[-1], corpus, asr.asr_maker(src), common.METRICS["asr"], **kw)
    return names


def register_default() -> list[str]:
    """Every pair of the copy named by $SLM_COVOST_DIR and $SLM_COMMON_VOICE_DIR, or nothing
    when they are unset; a copy that cannot be registered is logged, never raised, so an
    optional corpus never breaks the other registrations."""
    if not (os.environ.get(COVOST_ENV) and os.environ.get(COMMON_VOICE_ENV)):
        return []
    try:
        return register_covost2()
    except Exception as e:
        log.warning("covost2 tasks not registered: %s", e)
        return []
