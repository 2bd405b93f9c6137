"""FLEURS ASR in each language, and speech translation X -> English by joining on the FLoRes
sentence id, read in place from FLEURS in its published TSV layout (the one the dataset's
own repository ships; the TFDS `xtreme_s` form is not read here):

    $SLM_FLEURS_DIR/<lang>/{train,dev,test}.tsv
    $SLM_FLEURS_DIR/<lang>/audio/{train,dev,test}/<file name>.wav     (16 kHz)

<lang> is a FLEURS code such as en_us, fr_fr, cmn_hans_cn. The TSVs have no header; their
columns: id (the FLoRes sentence id, shared by every language's recordings of that
sentence), file name, raw transcription, normalized transcription, phonemes, number of
samples, gender.

Tasks: fleurs_asr_<lang> ("Transcribe the speech." -> the raw transcription, as written, or
the normalized one with transcript="normalized") and, when the English copy (en_us) is there,
fleurs_ast_<lang>_en for every other language ("Translate the speech into English." -> the
English transcription of the same sentence id, from any English split; recordings whose
sentence has no English recording give no AST example). Splits: train, validation (FLEURS
dev), test; utterance ids are the file names without extension.

Each split's rows are checked on first use as CoVoST's are (tasks.covost2.check_rows): a
missing or unreadable clip or an empty transcription makes the row skipped and named (TSV
file, line number, clip, reason); strict=True raises local_manifest.ManifestError instead.

    from tasks import fleurs
    fleurs.register_fleurs("/data/fleurs", ["fr_fr", "en_us"])
    # -> fleurs_asr_fr_fr, fleurs_asr_en_us, fleurs_ast_fr_fr_en
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Sequence

from tasks import asr, common, covost2, local_manifest

log = logging.getLogger(__name__)

ENV = "SLM_FLEURS_DIR"
ENGLISH = "en_us"
COLUMNS = ("id", "file", "raw", "normalized", "phonemes", "num_samples", "gender")
SPLITS = {"train": "train", "validation": "dev", "test": "test"}  # task split -> FLEURS split
TRANSCRIPTS = ("raw", "normalized")
LAYOUT = (f"${ENV}/<lang>/{{train,dev,test}}.tsv (no header; columns id, file name, raw transcription, "
          "normalized transcription, phonemes, num samples, gender) and "
          f"${ENV}/<lang>/audio/{{train,dev,test}}/<file name>.wav")


def read_fleurs_tsv(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line number, row {id, file, raw, normalized, ...}) of one FLEURS TSV."""
    return covost2.read_tsv(path, header=COLUMNS, escapechar=None)


@functools.lru_cache(maxsize=8)
def english_by_id(directory: str, transcript: str = "raw") -> dict:
    """{sentence id: English transcription} over every split of an English FLEURS folder."""
    out = {}
    for split in SPLITS.values():
        tsv = os.path.join(directory, f"{split}.tsv")
        if os.path.isfile(tsv):
            for _, row in read_fleurs_tsv(tsv):
                text = row.get(transcript, "").strip()
                if text:
                    out.setdefault(row["id"], text)
    return out


class FleursCorpus(common.InMemoryCorpus):
    """One FLEURS language: records {id, sentence_id, path, language, text, translations {en},
    gender}, checked (and bad rows named) when a split is first used."""

    def __init__(self, root: str | os.PathLike, language: str, *, transcript: str = "raw",
                 english: str | None = ENGLISH, strict: bool = False):
        if transcript not in TRANSCRIPTS:
            raise ValueError(f"FLEURS: transcript must be one of {TRANSCRIPTS}, got {transcript!r}")
        self.root, self.language, self.transcript = Path(root), language, transcript
        self.english, self.strict = english, strict
        self.directory = self.root / language
        self.name = f"fleurs:{language}"
        self._checked: dict[str, local_manifest.Manifest] = {}

    @property
    def splits(self):
        return tuple(s for s, f in SPLITS.items() if (self.directory / f"{f}.tsv").is_file())

    def check_layout(self) -> None:
        """FileNotFoundError naming the expected files when the language's TSVs are absent."""
        if not self.splits:
            raise FileNotFoundError(f"FLEURS {self.language}: no {{train,dev,test}}.tsv in {self.directory}. "
                                    f"Expected layout: {LAYOUT}")

    def checked(self, split: str) -> local_manifest.Manifest:
        """The split's good records and named bad rows (read and checked once)."""
        self.check_split(split)
        if split not in self._checked:
            name = SPLITS[split]
            tsv, audio = self.directory / f"{name}.tsv", self.directory / "audio" / name
            english = {}
            if self.english and self.english != self.language:
                english = english_by_id(str(self.root / self.english), self.transcript)
            records = ((line, {
                "id": os.path.splitext(r.get("file", ""))[0], "sentence_id": r.get("id", ""),
                "path": str(audio / r.get("file", "")), "language": self.language,
                "text": r.get(self.transcript, "").strip(), "translations": {"en": english.get(r.get("id"), "")},
                "gender": r.get("gender", ""),
            }) for line, r in read_fleurs_tsv(tsv))
            self._checked[split] = covost2.check_rows(str(tsv), records, {"text": "empty transcript"},
                                                      strict=self.strict)
        return self._checked[split]

    def records(self, split):
        return [dict(r) for r in self.checked(split).records]


def find_languages(root: str | os.PathLike) -> list[str]:
    """The language folders of a FLEURS copy (those holding a train, dev or test TSV), sorted."""
    root = Path(root)
    return sorted(d.name for d in root.iterdir()
                  if d.is_dir() and any((d / f"{s}.tsv").is_file() for s in SPLITS.values()))


def register_fleurs(root: str | os.PathLike | None = None, languages: Sequence[str] | None = None, *,
                    transcript: str = "raw", with_ast: bool = True, strict: bool = False, **kw) -> list[str]:
    """fleurs_asr_<lang> for each language (default: every language folder of the copy) and,
    with_ast and when <root>/en_us holds TSVs, fleurs_ast_<lang>_en for the other languages.

    Folder: `root`, else $SLM_FLEURS_DIR. A missing folder or a language without TSVs is a
    FileNotFoundError here, naming the path and the expected layout; rows are checked when a
    split is first used. `kw` goes to common.register_task (vocabulary, feature_config, ...);
    names registered before (by `import tasks`, from the environment) are replaced unless
    replace=False."""
    kw.setdefault("replace", True)
    root = covost2.resolve_dir(root, ENV, "FLEURS", LAYOUT)
    languages = list(languages) if languages is not None else find_languages(root)
    if not languages:
        raise FileNotFoundError(f"FLEURS: no language folder with TSVs in {root}. Expected layout: {LAYOUT}")
    english = ENGLISH if with_ast and FleursCorpus(root, ENGLISH).splits else None
    names = []
    for lang in languages:
        corpus = FleursCorpus(root, lang, transcript=transcript, english=english, strict=strict)
        corpus.check_layout()
        names.append(f"fleurs_asr_{lang}")
        common.register_task(names[-1], corpus, asr.asr_maker(lang), common.METRICS["asr"], **kw)
        if english and lang != english:
            names.append(f"fleurs_ast_{lang}_en")
            common.register_task(names[-1], corpus, covost2.translation_maker(lang, "en", "English"),
                                 common.METRICS["ast"], **kw)
    return names


def register_default() -> list[str]:
    """Every language of the copy named by $SLM_FLEURS_DIR, or nothing when it is unset; a
    copy that cannot be registered is logged, never raised, so an optional corpus never
    breaks the other registrations."""
    if not os.environ.get(ENV):
        return []
    try:
        return register_fleurs()
    except Exception as e:
        log.warning("fleurs tasks not registered: %s", e)
        return []
