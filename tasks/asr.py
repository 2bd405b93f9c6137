"""ASR tasks: plain transcription per language and contextual-biasing transcription (a bias list
with the utterance's content words and distractors in the instruction). Their makers are in
tasks/prompts.py; `asr_maker` adds the TensorFlow form that corpora without a listing run
(LibriSpeech, tasks/librispeech.py).

Metrics: WER and CER (slm_jax.metrics.seqio_wer / seqio_cer).
"""

from __future__ import annotations

import tensorflow as tf

from tasks import common, prompts, world_text


def asr_maker(language: str | None = None, instruction: str = prompts.ASR_INSTRUCTION) -> common.Make:
    """prompts.transcript_maker (record -> (instruction, transcript) for records in `language`,
    None: any language) with its TensorFlow form `make.tf`, for corpora without a listing
    (LibriSpeech)."""
    make = prompts.transcript_maker(language, instruction)

    def make_tf(ex):
        keep = tf.strings.length(tf.strings.strip(ex["text"])) > 0
        if language:
            keep = tf.logical_and(keep, tf.equal(ex["language"], language))
        return tf.constant(instruction), ex["text"], keep

    make.tf = make_tf
    return make


def _register_per_language(prefix: str, maker, corpus: common.Corpus, languages, **kw) -> list[str]:
    """{prefix}_{lang} for each language, made by maker(lang) and scored by the ASR metrics."""
    names = []
    for lang in languages:
        names.append(f"{prefix}_{lang}")
        common.register_task(names[-1], corpus, maker(lang), common.METRICS["asr"], **kw)
    return names


def register_asr_tasks(prefix: str, corpus: common.Corpus, languages=world_text.LANGUAGES, **kw) -> list[str]:
    """{prefix}_asr_{lang} for each language."""
    return _register_per_language(f"{prefix}_asr", asr_maker, corpus, languages, **kw)


def register_char_asr_tasks(prefix: str, corpus: common.Corpus, languages=world_text.LANGUAGES,
                            **kw) -> list[str]:
    """{prefix}_asr_chars_{lang}: the ASR tasks with UTF-8 byte targets (seqio.ByteVocabulary),
    for CTC pretraining of a speech encoder on characters."""
    import seqio
    return _register_per_language(f"{prefix}_asr_chars", asr_maker, corpus, languages,
                                  vocabulary=seqio.ByteVocabulary(), **kw)


def register_biasing_tasks(prefix: str, corpus: common.Corpus, languages=world_text.LANGUAGES, **kw) -> list[str]:
    """{prefix}_biasing_{lang} for each language (needs world_text sentence records)."""
    return _register_per_language(f"{prefix}_biasing", prompts.biasing_maker, corpus, languages, **kw)
