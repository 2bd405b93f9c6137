"""The demo's Whisper baseline helpers, without a model: numbers written as the world writes
them, the languages a task name tells, and each utterance decoded once across tasks."""

from __future__ import annotations

import numpy as np

from slm_jax import demo_baselines


def test_spell_numbers_writes_digits_as_the_world_does():
    assert demo_baselines.spell_numbers("David has 4 red keys, 69 of them.", "en") == \
        "David has four red keys, sixty-nine of them."
    assert demo_baselines.spell_numbers("the 21st of January", "en") == "the twenty-first of January"
    assert demo_baselines.spell_numbers("1,000 euros", "en") == "one thousand euros"
    assert demo_baselines.spell_numbers("69", "fr") == "soixante-neuf"
    assert demo_baselines.spell_numbers("69", "de") == "neunundsechzig"
    assert demo_baselines.spell_numbers("no digits", "es") == "no digits"


def test_task_languages():
    assert demo_baselines.task_languages("spoken_world_demo_asr_fr") == ("fr", None)
    assert demo_baselines.task_languages("fsdd_asr_en") == ("en", None)
    assert demo_baselines.task_languages("spoken_world_demo_ast_de_en") == ("de", "de")
    assert demo_baselines.task_languages("spoken_world_demo_ast_en_de") == ("en", None)
    assert demo_baselines.task_languages("spoken_world_demo_qa") == (None, None)


def test_compression_ratio_flags_loops_only():
    assert demo_baselines.compression_ratio(" ".join(["3"] * 60)) > demo_baselines.COMPRESSION_RATIO_LIMIT
    assert demo_baselines.compression_ratio("There are two grey dogs at the market.") < 1.5


class FakeASR:
    """Stands in for WhisperASR: text = language/task and the utterance's first value; loops
    (a repeated token) at the default window for utterances whose first value is negative."""

    def __init__(self):
        self.calls, self.beams = [], []

    def transcribe_features(self, features, mask, language=None, task="transcribe", pad_to_30s=False, beam_size=1):
        self.calls.append((len(features), pad_to_30s))
        self.beams.append(beam_size)
        return [(f"{language}-{task}-{f[0, 0]:g}" if f[0, 0] >= 0 or pad_to_30s else "7 " * 50) for f in features]


def test_whisper_texts_decode_each_utterance_once_and_redo_loops_at_30s():
    asr = FakeASR()
    texts = demo_baselines.WhisperTexts(asr)
    feats = np.zeros((3, 5, 2), np.float32)
    feats[:, 0, 0] = [1, -2, 3]
    mask = np.ones((3, 5), bool)
    first = texts(feats, mask, "fr")
    assert first == ["fr-transcribe-1", "fr-transcribe--2", "fr-transcribe-3"]
    assert asr.calls == [(3, False), (1, True)]           # the looping one again, at 30 s
    assert texts(feats[::-1], mask, "fr") == first[::-1]   # the same utterances: no decoding
    assert len(asr.calls) == 2
    assert texts(feats[:1], mask[:1], "fr", "translate") == ["fr-translate-1"]   # another task decodes
    padded = np.concatenate([feats[:1], np.full((1, 5, 2), 9, np.float32)], axis=1)   # padding is not the utterance
    assert texts(padded, np.concatenate([mask[:1], np.zeros((1, 5), bool)], axis=1), "fr") == ["fr-transcribe-1"]
    assert len(asr.calls) == 3
    # a task whose speech language is not known (None) reuses the utterance's transcript
    assert texts(feats, mask, None) == first and len(asr.calls) == 3
    assert asr.beams == [1, 1, 1]   # greedy unless told


def test_whisper_texts_beam_size_reaches_both_decodings():
    asr = FakeASR()
    feats = np.zeros((2, 5, 2), np.float32)
    feats[:, 0, 0] = [1, -2]
    demo_baselines.WhisperTexts(asr, beam_size=4)(feats, np.ones((2, 5), bool), "en")
    assert asr.calls == [(2, False), (1, True)] and asr.beams == [4, 4]
