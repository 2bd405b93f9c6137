"""Whisper's own speech recognition and X -> English translation, in JAX: a CTranslate2 Whisper
directory (e.g. checkpoints/whisper_base.py's) imported once into our Flax modules
(models/whisper.py), decoded greedily or with beam search through slm_jax/decoding.py.

Decoding follows ctranslate2's `Whisper.generate` defaults without timestamps, so the tokens
are the same: prompt <|startoftranscript|><|lang|><|task|><|notimestamps|> (the first three
fill the KV cache, the last starts decoding); config.json's suppress_ids disabled at every
step and suppress_ids_begin at the first step; greedy stops a row at <|endoftext|>; beam search
ranks by summed log-probability (alpha = 0: ctranslate2's length_penalty=0, which is what gives
identical tokens; ctranslate2's own default, length_penalty=1, normalises by length). A row
whose language is None gets the language token the model ranks highest after
<|startoftranscript|> (ctranslate2's detect_language).

Batching: utterances are sorted by length, cut into batches of `batch_size`, their log-mel
zero-padded to a multiple of `frame_bucket` frames with a mask (the encoder and the
cross-attention ignore padded frames, so a row decodes as it would alone), so one compiled
encoder and one compiled decoding program (per beam size and max_new_tokens) serve each (rows,
frames) bucket. The encoder states of recent batches are kept (`WhisperASR.encode`): a batch
decoded again for another task reuses them.

Padding with silence. Whisper was trained on 30 s windows; unpadded short utterances (1-6 s)
often send base into repetition loops that run to max_new_tokens. `pad_seconds` pads each
utterance's audio with silence first (pad_to_30s: Whisper's own 3000 frames). Measured on 80
utterances (10 synthesized world utterances per language en/fr/de/es, ~2 s, and 40 FSDD digits,
~0.4 s; greedy, batch 16, 2 busy CPU cores), mean WER over the 5 sets / wall time: unpadded
8.65 / 16 s; 8 s 0.59 / 33 s; 10 s 0.59 / 35 s; 30 s 0.85 / 151 s (5 s: FSDD loops again). The
default pads to 10 s.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax import decoding
from slm_jax.array_memo import ArrayMemo
from slm_jax.checkpoints.ct2_whisper import load_whisper
from slm_jax.features import SAMPLE_RATE, WHISPER_HOP, whisper_log_mel
from slm_jax.models.whisper import (SILENCE_BELOW_MAX, WhisperDecoderConfig, WhisperEncoder, WhisperEncoderConfig,
                                    decoder_cross_kv, decoder_step, init_decoder_cache)
from slm_jax.whisper_tokenizer import TASKS, WhisperTokenizer

Array = jax.Array
DETECT = -1      # a prompt's language token to be detected
PAD_SECONDS = 10.0   # default silence padding of short utterances (measured; module docstring)


def _prefill(step, cache, prompts: Array, beams: int, language_mask: Array) -> tuple[dict, Array]:
    """Run prompts [B, P] but their last token through `step(tokens [B * beams, 1], cache)`.
    prompts[:, 1] == DETECT takes the language token the first step's logits rank highest
    among `language_mask`. Returns (cache, language token per row)."""
    b, p = prompts.shape
    languages = prompts[:, 1]
    for t in range(p - 1):
        tok = languages if t == 1 else prompts[:, t]
        logits, cache = step(jnp.repeat(tok, beams)[:, None], cache)
        if t == 0:
            first = logits.reshape(b, beams, -1)[:, 0]
            detected = jnp.argmax(jnp.where(language_mask, first, decoding.NEG_INF), -1).astype(jnp.int32)
            languages = jnp.where(languages == DETECT, detected, languages)
    return cache, languages


def encode(encoder_config: WhisperEncoderConfig, params, features: Array, mask: Array | None) -> tuple[Array, Array | None]:
    """features [B, T, mel] (mask [B, T] or None) -> encoder states [B, T', D] and the mask the
    decoder's cross-attention reads (None when the input had none)."""
    encoded, encoded_mask = WhisperEncoder(encoder_config).apply({"params": params["encoder"]}, features, mask)
    return encoded, (None if mask is None else encoded_mask)


def generate_encoded(decoder_config: WhisperDecoderConfig, params, encoded: Array, encoded_mask: Array | None,
                     prompts: Array, suppress: Array, suppress_begin: Array, language_mask: Array, *,
                     beam_size: int = 1, max_new_tokens: int = 64, eos_id: int = 50257) -> tuple[Array, Array]:
    """Decoding from encoder states (`encode`'s output): prompts [B, P] (sharing their last
    token), boolean [V] masks of suppressed ids (every step / first step) and of language tokens
    -> (tokens [B, max_new_tokens]: EOS where produced, 0 after; language token per row [B])."""
    b, p = prompts.shape
    cross_kv = decoder_cross_kv(decoder_config, params["decoder"], encoded)
    length = p - 1 + max_new_tokens
    cache = init_decoder_cache(decoder_config, b, length, beams=beam_size)

    def step(tokens, cache, slots=None):
        first = cache["index"] == p - 1              # the step that reads the prompt's last token
        logits, cache = decoder_step(decoder_config, params["decoder"], cache, tokens, cross_kv, encoded_mask,
                                     beam_slots=slots)
        logits = jnp.where(suppress | (first & suppress_begin), decoding.NEG_INF, logits)
        return logits, cache

    start = prompts[0, -1]
    if beam_size == 1:
        cache, languages = _prefill(step, cache, prompts, 1, language_mask)
        tokens, _ = decoding.greedy(step, cache, b, max_new_tokens, eos_id=eos_id, start_id=start)
        return tokens, languages
    # the prompt's positions: every hypothesis reads its own slot (all slots hold the same)
    own = jnp.broadcast_to(jnp.arange(beam_size, dtype=jnp.int32)[None, :, None], (b, beam_size, length))
    cache, languages = _prefill(lambda t, c: step(t, c, own), cache, prompts, beam_size, language_mask)
    beam_step = lambda t, c, slots: step(t, c, jnp.concatenate([own[:, :, :p - 1], slots], axis=-1))
    tokens, _ = decoding.beam_search(beam_step, cache, b, beam_size, max_new_tokens, eos_id=eos_id,
                                     start_id=start, alpha=0.0)
    return tokens, languages


# compiled once per (config, shapes[, beam_size, max_new_tokens]), shared by every WhisperASR
encode_jit = jax.jit(encode, static_argnums=(0,))
generate_encoded_jit = jax.jit(generate_encoded, static_argnums=(0,),
                               static_argnames=("beam_size", "max_new_tokens", "eos_id"))


def until_eos(tokens, eos_id: int) -> list[int]:
    """The ids before the first EOS (all of them if there is none)."""
    out = []
    for t in np.asarray(tokens).tolist():
        if t == eos_id:
            break
        out.append(int(t))
    return out


def batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices of utterances sorted by length (longest first), cut into batches."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def padded_batch(features: Sequence[np.ndarray], rows: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Features zero-padded to [rows, frames, mel] with a [rows, frames] mask; rows past
    len(features) repeat the first one (their output is dropped)."""
    mel = features[0].shape[1]
    x = np.zeros((rows, frames, mel), np.float32)
    mask = np.zeros((rows, frames), bool)
    for i in range(rows):
        f = features[i] if i < len(features) else features[0]
        x[i, :len(f)], mask[i, :len(f)] = f, True
    return x, mask


def bucket(n: int, step: int, limit: int) -> int:
    """n rounded up to a multiple of `step`, at most `limit`."""
    return min(limit, -(-n // step) * step)


class WhisperASR:
    """A CTranslate2 Whisper directory loaded once; `transcribe` audio (or
    `transcribe_features` log-mel) in batches. Jitted programs per (batch rows, frames): the
    encoder, and decoding per beam size and max_new_tokens; batch rows are batch_size or the
    next power of two below it. The encoder states of the last `encoded_batches` batches are
    kept, so a batch decoded again (another task or language) skips the encoder.
    encoder_matmul_dtype: WhisperEncoderConfig.matmul_dtype (None: float32, ctranslate2's numbers)."""

    def __init__(self, model_dir: str, *, batch_size: int = 16, frame_bucket: int = 100,
                 max_new_tokens: int = 64, dtype=jnp.float32, encoded_batches: int = 16,
                 encoder_matmul_dtype=None):
        self.model_dir = str(model_dir)
        self.encoder_config, self.decoder_config, params = load_whisper(self.model_dir, dtype=dtype,
                                                                        matmul_dtype=encoder_matmul_dtype)
        self.params = jax.device_put(params)
        self.tokenizer = WhisperTokenizer(self.model_dir)
        self.batch_size, self.frame_bucket, self.max_new_tokens = batch_size, frame_bucket, max_new_tokens
        self.recent_encodings: ArrayMemo[tuple] = ArrayMemo(encoded_batches)
        self.suppress = self.id_mask(self.tokenizer.suppressed)
        self.suppress_begin = self.id_mask(self.tokenizer.suppressed_at_begin)
        self.language_mask = self.id_mask(list(self.tokenizer.languages.values()))

    def encode(self, x: np.ndarray, mask: np.ndarray | None) -> tuple[Array, Array | None]:
        """`encode_jit` of one padded batch, remembered for the next `encoded_batches` batches
        asked for: transcribing and translating the same audio run the encoder once."""
        return self.recent_encodings((x, mask), lambda: encode_jit(self.encoder_config, self.params, x, mask))

    def id_mask(self, ids: Sequence[int]) -> np.ndarray:
        mask = np.zeros(self.decoder_config.vocab_size, bool)
        mask[np.asarray(ids, np.int64)] = True
        return mask

    def features(self, audio: np.ndarray, pad_seconds: float | None = PAD_SECONDS, source=None) -> np.ndarray:
        """Whisper log-mel [frames, mel] of 16 kHz audio, the audio first padded with silence to
        `pad_seconds` (None: unpadded; never truncated)."""
        audio = np.asarray(audio, np.float32)
        if pad_seconds:
            audio = np.pad(audio, (0, max(0, int(pad_seconds * SAMPLE_RATE) - len(audio))))
        return whisper_log_mel(audio, SAMPLE_RATE, self.encoder_config.num_mel_bins, source=source)

    def prompts(self, languages: Sequence[str | None], task: str) -> np.ndarray:
        """[N, 4] prompt ids; a None language is detected (DETECT)."""
        if task not in TASKS:
            raise ValueError(f"Whisper task must be one of {TASKS}, got {task!r}")
        tok = self.tokenizer
        task_id = tok.transcribe if task == "transcribe" else tok.translate
        return np.asarray([[tok.sot, DETECT if lang is None else tok.language(lang), task_id, tok.no_timestamps]
                           for lang in languages], np.int32)

    def generate_ids(self, features: Sequence[np.ndarray], language: str | None | Sequence[str | None] = None,
                     task: str = "transcribe", *, beam_size: int = 1, max_new_tokens: int | None = None,
                     batch_size: int | None = None, padded: bool = True) -> tuple[list[list[int]], list[int]]:
        """Text token ids (without EOS) and the language token of each utterance's log-mel
        [frames, mel] (what `features` returns). padded=False: every utterance has the same
        frames (e.g. 3000) and the encoder runs without a mask (rows of a partial batch repeat
        the first one); the tokens are the same either way."""
        n = len(features)
        languages = [language] * n if language is None or isinstance(language, str) else list(language)
        if len(languages) != n:
            raise ValueError(f"{len(languages)} languages for {n} utterances")
        prompts = self.prompts(languages, task)
        max_new = max_new_tokens or self.max_new_tokens
        limit = self.encoder_config.max_input_frames
        for i, f in enumerate(features):
            if len(f) > limit:
                raise ValueError(f"utterance {i}: {len(f)} frames, Whisper reads at most {limit} (30 s)")
        if not padded and len({len(f) for f in features}) > 1:
            raise ValueError(f"padded=False needs features of one length, got {sorted({len(f) for f in features})}")
        out, langs = [None] * n, [None] * n
        size = batch_size or self.batch_size
        for idx in batches([len(f) for f in features], size):
            rows = min(size, 1 << (len(idx) - 1).bit_length())
            longest = max(len(features[i]) for i in idx)
            frames = bucket(longest, self.frame_bucket, limit) if padded else longest
            x, mask = padded_batch([features[i] for i in idx], rows, frames)
            p = prompts[np.resize(idx, rows)]
            p[len(idx):] = prompts[idx[0]]
            encoded, encoded_mask = self.encode(x, mask if padded else None)
            tokens, lang = generate_encoded_jit(self.decoder_config, self.params, encoded, encoded_mask, p,
                                                self.suppress, self.suppress_begin, self.language_mask,
                                                beam_size=beam_size, max_new_tokens=max_new,
                                                eos_id=self.tokenizer.eot)
            tokens, lang = np.asarray(tokens), np.asarray(lang)
            for r, i in enumerate(idx):
                out[i], langs[i] = until_eos(tokens[r], self.tokenizer.eot), int(lang[r])
        return out, langs

    def transcribe(self, audios: Sequence[np.ndarray], language: str | None | Sequence[str | None] = None,
                   task: str = "transcribe", *, beam_size: int = 1, max_new_tokens: int | None = None,
                   batch_size: int | None = None, pad_to_30s: bool = False,
                   pad_seconds: float | None = PAD_SECONDS) -> list[str]:
        """Text of each 16 kHz float32 utterance: its transcript (task "transcribe", in
        `language`; None: detected) or its English translation (task "translate").
        pad_to_30s: pad with silence to Whisper's 30 s window (overrides pad_seconds);
        pad_seconds: pad to this many seconds (None: unpadded; see the module docstring)."""
        seconds = 30.0 if pad_to_30s else pad_seconds
        features = [self.features(a, seconds, source=f"utterance {i}") for i, a in enumerate(audios)]
        ids, _ = self.generate_ids(features, language, task, beam_size=beam_size, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size)
        return [self.tokenizer.decode(t).strip() for t in ids]

    def transcribe_features(self, features: np.ndarray, feature_mask: np.ndarray,
                            language: str | None | Sequence[str | None] = None, task: str = "transcribe", *,
                            pad_to_30s: bool = False, pad_seconds: float | None = PAD_SECONDS, **kwargs) -> list[str]:
        """`transcribe` on a batch of unpadded Whisper log-mel features [B, T, mel] (valid frames
        first) with their mask [B, T]; padding to `pad_seconds` appends silence frames
        (`silence_padded`). kwargs: beam_size, max_new_tokens, batch_size."""
        seconds = 30.0 if pad_to_30s else pad_seconds
        lengths = np.asarray(feature_mask).astype(bool).sum(1)
        rows = [np.asarray(f[:n], np.float32) for f, n in zip(np.asarray(features), lengths)]
        if seconds:
            rows = [silence_padded(f, int(seconds * SAMPLE_RATE) // WHISPER_HOP) for f in rows]
        ids, _ = self.generate_ids(rows, language, task, **kwargs)
        return [self.tokenizer.decode(t).strip() for t in ids]


def silence_padded(features: np.ndarray, frames: int) -> np.ndarray:
    """Unpadded Whisper log-mel [T, mel] extended to `frames` frames of silence. Silence sits
    at the log-mel's floor, (global max - 8 + 4) / 4 in whisper_log_mel's terms, i.e. the
    features' max - SILENCE_BELOW_MAX; only the frames whose window straddles the audio's end differ from
    the log-mel of silence-padded audio."""
    if len(features) >= frames:
        return features
    pad = np.full((frames - len(features), features.shape[1]), features.max() - SILENCE_BELOW_MAX, np.float32)
    return np.concatenate([features, pad])
