"""The demo's baselines beside the SLM, on the utterances the SLM is scored on: the LLM
foundation on the text of each utterance (the upper bound of speech input); the speech
foundation's own ASR (Whisper base's decoder, or the CTC head of the from-scratch Conformer) and
Whisper's own X -> en translation; the cascade (that ASR -> the text LLM)."""

from __future__ import annotations

import re
import zlib
from typing import Any, Iterable, Sequence

import numpy as np
import seqio

from slm_jax import metrics
from slm_jax.array_memo import array_key
from slm_jax.data import pad_frames, pad_rows
from slm_jax.eval_lib import EvalConfig, EvalDataCache, score, tokens_to_text
from slm_jax.task_model import CTCTaskModel, EncDecTaskModel
from slm_jax.whisper_asr import WhisperASR
from tasks.llm_text import pad_ids

TEXT_INPUT_LEN = 96     # LLM input tokens: transcript + instruction
TEXT_BATCH = 64


def text_examples(task_name: str, split: str, limit: int | None = None) -> list[tuple[str, str, str]]:
    """(text, instruction, target) of a speech task's records, with the text in place of speech,
    in the order the speech pipeline reads the split (the corpus's unshuffled `load`, which
    need not be the listing's order): the first `limit` are the utterances that a bounded speech
    evaluation (EvalConfig.max_examples) scores."""
    src = seqio.get_mixture_or_task(task_name).source
    records = {r["id"]: r for r in src.corpus.records(split)}
    ids = src.corpus.load(split, shuffle=False, seed=None, shard_info=None).map(lambda ex: ex["id"])
    out = []
    for i in ids.as_numpy_iterator():
        r = records[i.decode()]
        ex = src.make(r)
        if ex:
            out.append((r["text"], ex[0], ex[1]))
            if limit and len(out) == limit:
                break
    return out


def decode_text(model: EncDecTaskModel, params: Any, inputs: Sequence[Sequence[int]], vocab: seqio.Vocabulary,
                cfg: EvalConfig) -> list[str]:
    """The LLM's output text for token-id inputs (cfg.decode), in batches of TEXT_BATCH."""
    out = []
    for i in range(0, len(inputs), TEXT_BATCH):
        chunk = list(inputs[i:i + TEXT_BATCH])
        x = pad_ids(chunk + [[model.eos_id]] * (TEXT_BATCH - len(chunk)), TEXT_INPUT_LEN)
        tokens, _ = model.predict_batch(params, {"encoder_input_tokens": x}, cfg.decode)
        out += [tokens_to_text(vocab, t, model.eos_id) for t in np.asarray(tokens)[:len(chunk)]]
    return out


def text_scores(model: EncDecTaskModel, params: Any, names: Iterable[str], cfg: EvalConfig) -> dict:
    """The LLM on text inputs (transcript + instruction) for every task of `names`, scored with
    the task's metrics on cfg.split's first cfg.max_examples utterances."""
    out = {}
    for name in names:
        vocab = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
        exs = text_examples(name, cfg.split, limit=cfg.max_examples)
        preds = decode_text(model, params, [vocab.encode(t) + vocab.encode(i) for t, i, _ in exs], vocab, cfg)
        out[name] = score(name, [g for _, _, g in exs], preds)
    return out


def majority_scores(names: Iterable[str], cfg: EvalConfig) -> dict:
    """The floor of each exact-match task: always giving its most frequent answer, on the
    utterances cfg scores (cfg.split's first cfg.max_examples). {name: {"exact_match": rate,
    "answer": that answer}}: a yes/no task sits near 50% whatever a system understands."""
    out = {}
    for name in names:
        answers = [g for _, _, g in text_examples(name, cfg.split, limit=cfg.max_examples)]
        top = max(set(answers), key=lambda a: (answers.count(a), a)) if answers else ""
        out[name] = {"exact_match": answers.count(top) / max(len(answers), 1), "answer": top}
    return out


def full_width(batch: dict, rows: int, frames: int) -> dict:
    """A batch padded to `rows` rows and `frames` speech frames (zeros, mask 0): one compiled
    CTC program for every length bucket."""
    batch = pad_rows(batch, rows)
    features, mask = pad_frames(batch["features"], batch["feature_mask"], frames)
    return {**batch, "features": features, "feature_mask": mask}


def cascade_scores(ctc: CTCTaskModel, ctc_params: Any, ctc_vocab: seqio.Vocabulary, llm: EncDecTaskModel,
                   llm_params: Any, names: Iterable[str], cfg: EvalConfig, data: EvalDataCache) -> dict:
    """CTC ASR of the speech encoder (decoded to text with its training task's vocabulary) ->
    the text LLM with the task's instruction, on the batches an SLM evaluation with `cfg` scores
    (taken from `data`). ASR tasks also get the CTC transcripts' own WER (asr_wer)."""
    out = {}
    for name in names:
        vocab = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
        inputs, targets, asr = [], [], []
        for batch in data.batches(name, cfg):
            n = batch["features"].shape[0]
            ids = np.asarray(ctc.predict_batch(ctc_params, full_width(batch, cfg.batch_size,
                                                                      cfg.feature_lengths["speech"]))[0])[:n]
            for row, inst, tgt in zip(ids, batch["instruction_tokens"], batch["decoder_target_tokens"]):
                asr.append(ctc_vocab.decode([int(t) for t in row if t > 0]))   # CTC's text, re-tokenised for the LLM
                inputs.append(vocab.encode(asr[-1]) + [int(t) for t in inst if t > 0])
                targets.append(tokens_to_text(vocab, tgt, llm.eos_id))
        out[name] = score(name, targets, decode_text(llm, llm_params, inputs, vocab, cfg))
        if "_asr_" in name:
            out[name]["asr_wer"] = metrics.wer(targets, asr)
    return out


def spell_numbers(text: str, lang: str) -> str:
    """Digits as words in `lang` ("69" -> "sixty-nine"; "1,000" -> "one thousand"; English
    "21st" -> "twenty-first"), the way the world's transcripts write numbers: Whisper writes
    digits, and scoring its ASR on the world's spelled-out transcripts without this would count
    formatting as errors."""
    from num2words import num2words

    def words(m: re.Match) -> str:
        n = int(re.sub(r"[,.]", "", m.group(1)))
        ordinal = lang == "en" and m.group(2) is not None
        return num2words(n, lang=lang, to="ordinal" if ordinal else "cardinal")
    return re.sub(r"(\d+(?:[,.]\d{3})*)(st|nd|rd|th)?\b", words, text)


def task_languages(name: str) -> tuple[str | None, str | None]:
    """(speech language, X -> en translation source) a task name tells; None where the speech
    is in any language (instruction and biasing tasks: Whisper detects it)."""
    if m := re.search(r"_asr_([a-z]{2})$", name):
        return m.group(1), None
    if m := re.search(r"_ast_([a-z]{2})_([a-z]{2})$", name):
        return m.group(1), (m.group(1) if m.group(2) == "en" else None)
    return None, None


COMPRESSION_RATIO_LIMIT = 2.4   # faster-whisper's threshold for a degenerate (looping) output


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / max(1, len(zlib.compress(raw)))


def whisper_texts(whisper: WhisperASR, features: np.ndarray, mask: np.ndarray, language: str | None,
                  task: str = "transcribe", beam_size: int = 1) -> list[str]:
    """Whisper's text for a batch of log-mel: decoded (greedy, or beam search of `beam_size`)
    with the audio padded to WhisperASR's default window (10 s of silence), and again in
    Whisper's training condition (30 s) where that output loops (compression ratio over 2.4,
    faster-whisper's fallback test)."""
    texts = whisper.transcribe_features(features, mask, language=language, task=task, beam_size=beam_size)
    redo = [i for i, t in enumerate(texts) if compression_ratio(t) > COMPRESSION_RATIO_LIMIT]
    if redo:
        again = whisper.transcribe_features(np.asarray(features)[redo], np.asarray(mask)[redo], language=language,
                                            task=task, pad_to_30s=True, beam_size=beam_size)
        for i, t in zip(redo, again):
            texts[i] = t
    return texts


class WhisperTexts:
    """`whisper_texts` with each (utterance, language, task) decoded once: the demo's tasks read
    the same test utterances (asr_fr and ast_fr_en, the biasing tasks), so their cascade and
    Whisper rows share one decoding."""

    def __init__(self, whisper: WhisperASR, beam_size: int = 1):
        self.whisper, self.beam_size, self.done = whisper, beam_size, {}

    def __call__(self, features: np.ndarray, mask: np.ndarray, language: str | None,
                 task: str = "transcribe") -> list[str]:
        features, mask = np.asarray(features), np.asarray(mask).astype(bool)
        keys = [(array_key((f[:n],)), language, task)
                for f, n in zip(features, mask.sum(1))]
        todo = [i for i, k in enumerate(keys) if self.known(k) is None]
        if todo:
            for i, text in zip(todo, whisper_texts(self.whisper, features[todo], mask[todo], language, task,
                                                        self.beam_size)):
                self.done[keys[i]] = text
        return [self.known(k) for k in keys]

    def known(self, key: tuple) -> str | None:
        """The text decoded for `key`; for an unknown language (None) also one decoded with the
        utterance's language given (the same utterance read by a per-language task)."""
        if key in self.done or key[1] is not None:
            return self.done.get(key)
        return next((t for (h, _, task), t in self.done.items() if (h, task) == (key[0], key[2])), None)


def whisper_scores(whisper: WhisperTexts, llm: EncDecTaskModel, llm_params: Any, names: Iterable[str], cfg: EvalConfig,
                   data: EvalDataCache) -> dict:
    """Whisper's ASR -> the text LLM with the task's instruction (the cascade), per task of
    `names`, on the batches an SLM evaluation with `cfg` scores. ASR tasks also get Whisper's
    own WER (asr_wer, numbers spelled out); X -> en AST tasks Whisper's own translation BLEU
    (whisper_bleu)."""
    out = {}
    for name in names:
        vocab = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
        lang, translate_from = task_languages(name)
        inputs, targets, asr, translations = [], [], [], []
        for batch in data.batches(name, cfg):
            texts = whisper(batch["features"], batch["feature_mask"], lang)
            if translate_from:
                translations += whisper(batch["features"], batch["feature_mask"], lang, "translate")
            for text, inst, tgt in zip(texts, batch["instruction_tokens"], batch["decoder_target_tokens"]):
                asr.append(spell_numbers(text, lang) if lang else text)
                inputs.append(vocab.encode(asr[-1]) + [int(t) for t in inst if t > 0])
                targets.append(tokens_to_text(vocab, tgt, llm.eos_id))
        out[name] = score(name, targets, decode_text(llm, llm_params, inputs, vocab, cfg))
        if "_asr_" in name:
            out[name]["asr_wer"] = metrics.wer(targets, asr)
        if translate_from:
            out[name]["whisper_bleu"] = score(name, targets, translations)["bleu"]
    return out
