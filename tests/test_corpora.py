"""Real corpora read from a prepared copy in their published layout (tasks/librispeech.py,
tasks/covost2.py, tasks/fleurs.py), each on a tiny fake copy built here in exactly that
layout: examples read through seqio by task name, transcripts / translations / ids checked,
and the errors for a missing copy and for bad rows."""

import os
import warnings

import numpy as np
import pytest
import seqio
import soundfile
import tensorflow_datasets as tfds

from tasks import covost2, fleurs, librispeech, local_manifest

VOCAB = seqio.ByteVocabulary()


def _tone(seconds: float, rate: int, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _read(task: str, split: str) -> dict:
    """{id: (instruction, target, speech frames)} of a task's split, read through seqio."""
    ds = seqio.get_mixture_or_task(task).get_dataset(sequence_length=None, split=split, shuffle=False)
    out = {}
    for ex in ds.as_numpy_iterator():
        out[ex["id"].decode()] = (ex["instruction_pretokenized"].decode(), ex["targets_pretokenized"].decode(),
                                  ex["speech"].shape[0])
        assert VOCAB.decode(ex["targets"].tolist()) == ex["targets_pretokenized"].decode()
    return out


def _register_kw():
    return {"vocabulary": VOCAB}   # the caller's vocabulary reaches the tasks


# ----------------------------------------------------------------------------- LibriSpeech


class FakeLibriSpeech(tfds.builder_cls("librispeech"), skip_registration=True):
    """The TFDS librispeech builder (same name, configs, version, features and splits), its
    examples two short tones per split instead of the downloaded archives."""

    name = "librispeech"

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in librispeech.TFDS_SPLITS}

    def _generate_examples(self, split):
        for i in range(2):
            chapter = librispeech.TFDS_SPLITS.index(split)
            key = f"{100 + i}-{chapter}-{i:04d}"
            speech = np.round(_tone(0.5 + 0.25 * i, 16000) * 32767).astype(np.int16)
            yield key, {"id": key, "speaker_id": 100 + i, "chapter_id": chapter, "speech": speech,
                        "text": f"HE SAID {split.upper()} NUMBER {i}"}


@pytest.fixture(scope="module")
def librispeech_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    FakeLibriSpeech(data_dir=str(d)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    assert (d / "librispeech" / "default" / "2.1.1" / "dataset_info.json").is_file()
    return d


def test_librispeech_reads_the_tfds_layout(librispeech_dir):
    names = librispeech.register_librispeech(librispeech_dir, train_splits=("train_clean100", "train_other500"),
                                             **_register_kw())
    assert names == ["librispeech_asr_en"]
    task = seqio.get_mixture_or_task("librispeech_asr_en")
    assert task.num_input_examples("train") == 4 and task.num_input_examples("test_other") == 2
    got = _read("librispeech_asr_en", "validation")
    assert {k: v[:2] for k, v in got.items()} == {
        "100-3-0000": ("Transcribe the speech.", "he said dev_clean number 0"),   # lowercased
        "101-3-0001": ("Transcribe the speech.", "he said dev_clean number 1")}
    assert got["101-3-0001"][2] == 75  # 0.75 s of 16 kHz audio -> 75 log-mel frames
    train = _read("librispeech_asr_en", "train")
    assert sorted(t for _, t, _ in train.values()) == [
        f"he said {s} number {i}" for s in ("train_clean100", "train_other500") for i in (0, 1)]


def test_librispeech_missing_copy_names_the_folder(tmp_path, monkeypatch):
    expected = str(tmp_path / "librispeech" / "default" / "2.1.1")
    with pytest.raises(FileNotFoundError, match="tfds build librispeech") as e:
        librispeech.register_librispeech(tmp_path, **_register_kw())
    assert expected in str(e.value)
    # From the environment: registering touches nothing; first use says where the copy belongs.
    monkeypatch.setenv(librispeech.ENV_VAR, str(tmp_path))
    assert librispeech.register_librispeech(**_register_kw()) == ["librispeech_asr_en"]
    with pytest.raises(FileNotFoundError) as e:
        seqio.get_mixture_or_task("librispeech_asr_en").num_input_examples("test")
    assert expected in str(e.value) and "SLM_LIBRISPEECH_DIR" in str(e.value)


# ----------------------------------------------------------------------------- CoVoST 2


def _clip(path, seconds, rate=48000, fmt="MP3"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, _tone(seconds, rate), rate, format=fmt)


def _tsv(path, rows, header=None):
    with open(path, "w", encoding="utf-8") as f:
        for row in ([header] if header else []) + rows:
            f.write("\t".join(row) + "\n")


@pytest.fixture(scope="module")
def covost_copy(tmp_path_factory):
    """Common Voice clips (48 kHz MP3) and CoVoST split TSVs for fr->en and en->de, plus the
    released covost_v2.es_en.tsv (no sentence column) with Common Voice's validated.tsv."""
    root = tmp_path_factory.mktemp("covost")
    cv, cov = root / "cv", root / "covost"
    cov.mkdir()
    header = ["path", "sentence", "translation", "client_id"]
    fr = {"train": [("common_voice_fr_1.mp3", "Bonjour à tous.", "Hello everyone."),
                    ("common_voice_fr_2.mp3", "Il pleut.", "It is raining."),
                    ("common_voice_fr_3.mp3", "Le clip manque.", "The clip is missing."),
                    ("common_voice_fr_4.mp3", "", "No sentence."),
                    ("common_voice_fr_5.mp3", "Fichier abîmé.", "Damaged file.")],
          "dev": [("common_voice_fr_6.mp3", "Merci beaucoup.", "Thank you very much.")],
          "test": [("common_voice_fr_7.mp3", "Au revoir.", "Goodbye.")]}
    for split, rows in fr.items():
        _tsv(cov / f"covost_v2.fr_en.{split}.tsv", [[p, s, t, "c1"] for p, s, t in rows], header)
        for i, (p, _, _) in enumerate(rows):
            if p != "common_voice_fr_3.mp3":
                _clip(str(cv / "fr" / "clips" / p), 0.4 + 0.1 * i)
    (cv / "fr" / "clips" / "common_voice_fr_5.mp3").write_bytes(b"not audio at all" * 20)
    en = {"train": [("common_voice_en_1.mp3", "Good morning.", "Guten Morgen.")],
          "dev": [("common_voice_en_2.mp3", "See you.", "Bis bald.")],
          "test": [("common_voice_en_3.mp3", "Thanks.", "Danke.")]}
    for split, rows in en.items():
        _tsv(cov / f"covost_v2.en_de.{split}.tsv", [[p, s, t, "c2"] for p, s, t in rows], header)
        for p, _, _ in rows:
            _clip(str(cv / "en" / "clips" / p), 0.5)
    _tsv(cov / "covost_v2.es_en.tsv", [["common_voice_es_1.mp3", "Hello.", "train"],
                                       ["common_voice_es_2.mp3", "Bye.", "dev"],
                                       ["common_voice_es_3.mp3", "Extra.", "train_covost"]],
         ["path", "translation", "split"])
    (cv / "es").mkdir()
    _tsv(cv / "es" / "validated.tsv",
         [["c3", "common_voice_es_1.mp3", "Hola."], ["c3", "common_voice_es_2.mp3", "Adiós."],
          ["c3", "common_voice_es_3.mp3", "Más."]], ["client_id", "path", "sentence"])
    for n in (1, 2, 3):
        _clip(str(cv / "es" / "clips" / f"common_voice_es_{n}.mp3"), 0.5)
    return cov, cv


def test_covost2_ast_and_asr_tasks(covost_copy, monkeypatch):
    cov, cv = covost_copy
    monkeypatch.setenv(covost2.COVOST_ENV, str(cov))          # the folders may come from the environment
    monkeypatch.setenv(covost2.COMMON_VOICE_ENV, str(cv))
    names = covost2.register_covost2(**_register_kw())
    assert names == ["covost2_ast_en_de", "covost2_asr_en", "covost2_ast_es_en", "covost2_asr_es",
                     "covost2_ast_fr_en", "covost2_asr_fr"]
    with pytest.warns(local_manifest.ManifestWarning) as caught:
        train = _read("covost2_ast_fr_en", "train")
    report = str(caught[0].message)
    tsv = str(cov / "covost_v2.fr_en.train.tsv")
    assert f"{tsv}: 2 of 5 rows kept; 3 of 5 rows skipped" in report
    assert f"row 4 ({cv / 'fr' / 'clips' / 'common_voice_fr_3.mp3'}): audio file not found" in report
    assert f"row 5 ({cv / 'fr' / 'clips' / 'common_voice_fr_4.mp3'}): empty transcript" in report
    assert f"row 6 ({cv / 'fr' / 'clips' / 'common_voice_fr_5.mp3'}): unreadable audio" in report
    assert {k: v[:2] for k, v in train.items()} == {
        "common_voice_fr_1": ("Translate the speech into English.", "Hello everyone."),
        "common_voice_fr_2": ("Translate the speech into English.", "It is raining.")}
    assert abs(train["common_voice_fr_2"][2] - 50) <= 2  # 0.5 s of 48 kHz MP3 -> ~50 frames at 16 kHz
    assert _read("covost2_asr_fr", "test") == {"common_voice_fr_7": ("Transcribe the speech.", "Au revoir.", 40)}
    assert _read("covost2_ast_en_de", "validation")["common_voice_en_2"][:2] == (
        "Translate the speech into German.", "Bis bald.")
    assert _read("covost2_asr_en", "train")["common_voice_en_1"][1] == "Good morning."
    es = _read("covost2_ast_es_en", "train")                  # released TSV + validated.tsv sentences
    assert {k: v[1] for k, v in es.items()} == {"common_voice_es_1": "Hello.", "common_voice_es_3": "Extra."}
    assert {k: v[1] for k, v in _read("covost2_asr_es", "validation").items()} == {"common_voice_es_2": "Adiós."}


def test_covost2_missing_copy_and_strict_bad_rows(covost_copy, tmp_path, monkeypatch):
    cov, cv = covost_copy
    monkeypatch.delenv(covost2.COVOST_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=r"set \$SLM_COVOST_DIR.*covost_v2\.<src>_<tgt>"):
        covost2.register_covost2(common_voice_dir=cv)
    with pytest.raises(FileNotFoundError, match="is not a folder") as e:
        covost2.register_covost2(tmp_path / "nowhere", cv)
    assert str(tmp_path / "nowhere") in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        covost2.register_covost2(cov, cv, [("it", "en")])
    assert str(cov / "covost_v2.it_en.train.tsv") in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        covost2.register_covost2(cov, tmp_path, [("fr", "en")])
    assert f"clips folder {tmp_path / 'fr' / 'clips'} not found" in str(e.value)
    covost2.register_covost2(cov, cv, [("fr", "en")], strict=True, **_register_kw())
    with pytest.raises(local_manifest.ManifestError, match="row 4 .*audio file not found"):
        seqio.get_mixture_or_task("covost2_asr_fr").num_input_examples("train")


# ----------------------------------------------------------------------------- FLEURS


@pytest.fixture(scope="module")
def fleurs_copy(tmp_path_factory):
    """en_us and fr_fr in the FLEURS TSV layout (16 kHz WAV); sentence 12 has no English
    recording, one French clip is missing and one transcription is empty."""
    root = tmp_path_factory.mktemp("fleurs")
    rows = {
        ("en_us", "train"): [("10", "1001.wav", "The cat sat.", "the cat sat"),
                             ("11", "1002.wav", "It is cold.", "it is cold")],
        ("en_us", "dev"): [("13", "1003.wav", "Hello, Paris!", "hello paris")],
        ("en_us", "test"): [("14", "1004.wav", "Good night.", "good night")],
        ("fr_fr", "train"): [("10", "2001.wav", "Le chat s'assit.", "le chat s'assit"),
                             ("10", "2002.wav", "Le chat s'assit.", "le chat s'assit"),
                             ("12", "2003.wav", "Sans anglais.", "sans anglais"),
                             ("11", "2004.wav", "Manquant.", "manquant"),
                             ("11", "2005.wav", "", "")],
        ("fr_fr", "dev"): [("13", "2006.wav", "Bonjour, Paris !", "bonjour paris")],
        ("fr_fr", "test"): [("14", "2007.wav", "Bonne nuit.", "bonne nuit")],
    }
    for (lang, split), items in rows.items():
        lines = []
        for sid, name, raw, norm in items:
            audio = _tone(0.3 + 0.1 * len(lines), 16000)
            lines.append([sid, name, raw, norm, "| p h o n e s |", str(audio.size), "FEMALE"])
            if name != "2004.wav":
                _clip(str(root / lang / "audio" / split / name), audio.size / 16000, 16000, "WAV")
        _tsv(root / lang / f"{split}.tsv", lines)
    return root


def test_fleurs_asr_and_ast_joined_on_sentence_id(fleurs_copy):
    names = fleurs.register_fleurs(fleurs_copy, **_register_kw())
    assert names == ["fleurs_asr_en_us", "fleurs_asr_fr_fr", "fleurs_ast_fr_fr_en"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asr = _read("fleurs_asr_fr_fr", "train")
    report = "\n".join(str(w.message) for w in caught if issubclass(w.category, local_manifest.ManifestWarning))
    tsv, audio = fleurs_copy / "fr_fr" / "train.tsv", fleurs_copy / "fr_fr" / "audio" / "train"
    assert f"{tsv}: 3 of 5 rows kept; 2 of 5 rows skipped" in report
    assert f"row 4 ({audio / '2004.wav'}): audio file not found" in report
    assert f"row 5 ({audio / '2005.wav'}): empty transcript" in report
    assert {k: v[1:] for k, v in asr.items()} == {
        "2001": ("Le chat s'assit.", 30), "2002": ("Le chat s'assit.", 40), "2003": ("Sans anglais.", 50)}
    ast = _read("fleurs_ast_fr_fr_en", "train")   # 2003's sentence has no English recording
    assert {k: v[:2] for k, v in ast.items()} == {
        "2001": ("Translate the speech into English.", "The cat sat."),
        "2002": ("Translate the speech into English.", "The cat sat.")}
    assert _read("fleurs_ast_fr_fr_en", "validation")["2006"][1] == "Hello, Paris!"
    assert _read("fleurs_asr_en_us", "test") == {"1004": ("Transcribe the speech.", "Good night.", 30)}
    fleurs.register_fleurs(fleurs_copy, ["fr_fr"], transcript="normalized", with_ast=True, **_register_kw())
    assert _read("fleurs_ast_fr_fr_en", "test")["2007"][1] == "good night"


def test_fleurs_missing_copy_names_the_layout(tmp_path, fleurs_copy, monkeypatch):
    monkeypatch.delenv(fleurs.ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=r"set \$SLM_FLEURS_DIR.*<lang>/audio/"):
        fleurs.register_fleurs()
    monkeypatch.setenv(fleurs.ENV, str(tmp_path / "fleurs"))
    with pytest.raises(FileNotFoundError, match="from \\$SLM_FLEURS_DIR") as e:
        fleurs.register_fleurs()
    assert str(tmp_path / "fleurs") in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        fleurs.register_fleurs(fleurs_copy, ["de_de"])
    assert f"no {{train,dev,test}}.tsv in {fleurs_copy / 'de_de'}" in str(e.value)


# ----------------------------------------------------------------------------- import-time registration


def test_environment_registrations_never_raise(covost_copy, fleurs_copy, tmp_path, monkeypatch, caplog):
    """What `import tasks` runs: nothing without the variables, the copy's tasks with them, a
    logged warning (not an error) for a broken copy; a later explicit call replaces them."""
    for var in (covost2.COVOST_ENV, covost2.COMMON_VOICE_ENV, fleurs.ENV):
        monkeypatch.delenv(var, raising=False)
    assert covost2.register_default() == [] and fleurs.register_default() == []
    monkeypatch.setenv(fleurs.ENV, str(tmp_path / "absent"))
    monkeypatch.setenv(covost2.COVOST_ENV, str(tmp_path))
    monkeypatch.setenv(covost2.COMMON_VOICE_ENV, str(covost_copy[1]))
    assert covost2.register_default() == [] and fleurs.register_default() == []
    assert "covost2 tasks not registered" in caplog.text and str(tmp_path / "absent") in caplog.text
    monkeypatch.setenv(fleurs.ENV, str(fleurs_copy))
    assert fleurs.register_default() == ["fleurs_asr_en_us", "fleurs_asr_fr_fr", "fleurs_ast_fr_fr_en"]
    assert fleurs.register_fleurs(fleurs_copy, ["fr_fr"], with_ast=False, **_register_kw()) == ["fleurs_asr_fr_fr"]
