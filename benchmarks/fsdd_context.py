"""A trained demo SLM on FSDD with each evaluation batch's clips sharing Whisper's encoder window.

The report encodes every FSDD clip alone, followed by 1 s of log-mel silence. Here the clips of
each evaluation batch (32, in the task's order: spread over speakers and digits) are packed
into windows of `--window` log-mel frames, each clip followed by its own log-mel floor for about
1 s (100-107 frames, so each clip starts on an adapter position), and encoded together; each
clip's frames are then cut out and scored through the adapter and LLM as the report scores them.
With `--window 250` a window holds one clip: the report's condition, up to the extra second of
silence the encoder adds after every window. The context is other test clips, so a clip's answer
depends on the others in its window: a measurement of what context does, not the report's
protocol (benchmarks/README.md, "FSDD clips in context"). Predictions and metrics are written
beside the run's own, under RUN_DIR/slm_depth<d>/eval/ with the tag `_fsdd_window<N>`.

With `--copies K`, each clip is instead encoded alone in its own window, K times in a row, and
the copies' frames are averaged: context from the clip itself, nothing else from the test set;
`--world` scores the world's held-out-voice ASR tasks the same way (the adapter's own domain).

    python benchmarks/fsdd_context.py RUN_DIR [--depth 2] [--window 250 1000 3000] [--copies 1 2 3]
        [--world] [--gin.BINDING ...]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from slm_jax import demo, eval_lib, gin_utils, train_lib
from slm_jax.cached_features import jitted_encoder
from slm_jax.demo_report import LANGS
from slm_jax.models.whisper import SILENCE_BELOW_MAX

SILENCE = 100   # log-mel frames after each clip (1 s), rounded up to a multiple of the 8 frames per adapter position


def clip_segments(batch: dict) -> tuple[list[np.ndarray], list[int]]:
    """Each clip's valid log-mel frames followed by ~1 s of its floor (SILENCE frames, rounded up so
    the next segment starts on an adapter position), and each clip's valid adapter positions when
    encoded alone: ceil(ceil(n / 2) / 4), as the encoder's masks give."""
    feats, mask = np.asarray(batch["features"]), np.asarray(batch["feature_mask"]).astype(bool)
    segments, counts = [], []
    for f, n in zip(feats, mask.sum(1).astype(int)):
        pad = SILENCE + (-(n + SILENCE)) % 8
        segments.append(np.concatenate([f[:n], np.full((pad, f.shape[1]), f[:n].max() - SILENCE_BELOW_MAX, f.dtype)]))
        counts.append(-(-(-(-int(n) // 2)) // 4))
    return segments, counts


def encoded_batch(batch: dict, frames: list[np.ndarray], counts: list[int]) -> dict:
    """The batch with each clip's adapter-input `frames` (its first `counts` positions) in place of its audio."""
    out = np.zeros((len(frames), max(counts), frames[0].shape[-1]), frames[0].dtype)
    out_mask = np.zeros((len(frames), max(counts)), bool)
    for i, (f, c) in enumerate(zip(frames, counts)):
        out[i, :c], out_mask[i, :c] = f[:c], True
    rest = {k: v for k, v in batch.items() if k not in ("features", "feature_mask")}
    return {**rest, "encoded_speech": out, "encoded_mask": out_mask}


def padded(windows: list[np.ndarray], frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel windows zero-padded to `frames` frames, with their masks."""
    x = np.zeros((len(windows), frames, windows[0].shape[1]), np.float32)
    mask = np.zeros((len(windows), frames), np.int32)
    for i, win in enumerate(windows):
        x[i, :len(win)], mask[i, :len(win)] = win, 1
    return x, mask


def packed_encoder(encode, params, window: int):
    """(batch -> the batch with `encoded_speech` / `encoded_mask` from its clips packed in
    windows, the list it appends each window's clip count to)."""
    sizes: list[int] = []

    def apply(batch: dict) -> dict:
        segments, counts = clip_segments(batch)
        windows, where, current, pos = [], [], [], 0
        for seg in segments:
            if current and pos + len(seg) > window:
                windows.append(np.concatenate(current))
                current, pos = [], 0
            where.append((len(windows), pos))
            current.append(seg)
            pos += len(seg)
        windows.append(np.concatenate(current))
        sizes.extend(np.bincount([w for w, _ in where]).tolist())
        hidden = np.asarray(encode(params, *padded(windows, window))[0])
        return encoded_batch(batch, [hidden[w, p // 8:p // 8 + c] for (w, p), c in zip(where, counts)], counts)
    return apply, sizes


def copies_encoder(encode, params, copies: int):
    """batch -> the batch with `encoded_speech` / `encoded_mask` from each clip encoded alone, in
    its own window, `copies` times in a row (each copy + ~1 s of its log-mel floor), the copies'
    adapter-input frames averaged position by position: context from the clip itself only."""

    def apply(batch: dict) -> dict:
        segments, counts = clip_segments(batch)
        frames = -(-max(len(seg) for seg in segments) * copies // 100) * 100
        hidden = np.asarray(encode(params, *padded([np.concatenate([seg] * copies) for seg in segments], frames))[0])
        return encoded_batch(batch, [np.mean([hidden[i, k * (len(seg) // 8):k * (len(seg) // 8) + c]
                                              for k in range(copies)], 0)
                                     for i, (seg, c) in enumerate(zip(segments, counts))], counts)
    return apply


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--window", type=int, nargs="+", default=[250, 1000, 3000], help="log-mel frames per window")
    p.add_argument("--copies", type=int, nargs="*", default=[1, 2, 3],
                   help="also each clip alone, repeated this many times, copies averaged")
    p.add_argument("--world", action="store_true",
                   help="with --copies: also the world's held-out-voice ASR tasks encoded that way")
    args, rest = p.parse_known_args()
    run_dir = os.path.abspath(args.run_dir)
    gin_utils.parse_argv(["--gin_file=gin/runs/demo.gin", f"--gin.DemoConfig.run_dir='{run_dir}'",
                          f"--gin.DemoConfig.depths=[{args.depth}]", *rest])
    d = demo.Demo(demo.DemoConfig())
    d.speech_foundation()
    with d.slm_stage(args.depth):
        s = train_lib.setup(train_lib.RunConfig())
    s.checkpointer.close()
    encode = jitted_encoder(s.model.config)
    print("| encoder window | clips per window (mean) | FSDD digit accuracy | fsdd_asr_en WER |\n|---|---|---|---|")
    for window in args.window:
        encoder, sizes = packed_encoder(encode, s.frozen["speech_encoder"], window)
        data = eval_lib.EvalDataCache(encoder=encoder)
        with d.slm_stage(args.depth):
            cfg = d.eval_config(d.fsdd_tasks(), "test", f"_fsdd_window{window}")
            res = eval_lib.evaluate_run(train_lib.RunConfig(), cfg, data)
        print(f"| {window} frames ({window / 100:.1f} s) | {np.mean(sizes):.1f} | "
              f"{res['fsdd_digits']['exact_match']:.1%} | {res['fsdd_asr_en']['wer']:.1%} |", flush=True)
        print(json.dumps(res))
    print("\n| each clip alone, encoded | FSDD digit accuracy | fsdd_asr_en WER |"
          + (" world ASR WER en / fr / de / es, mean |\n|---|---|---|---|" if args.world else "\n|---|---|---|"))
    for copies in args.copies:
        data = eval_lib.EvalDataCache(encoder=copies_encoder(encode, s.frozen["speech_encoder"], copies))
        with d.slm_stage(args.depth):
            cfg = d.eval_config(d.fsdd_tasks(), "test", f"_fsdd_copies{copies}")
            res = eval_lib.evaluate_run(train_lib.RunConfig(), cfg, data)
        line = f"| {copies} time(s), copies averaged | {res['fsdd_digits']['exact_match']:.1%} | {res['fsdd_asr_en']['wer']:.1%} |"
        if args.world:
            names = [d.task(f"asr_{lang}") for lang in LANGS]
            with d.slm_stage(args.depth):
                world = eval_lib.evaluate_run(train_lib.RunConfig(), d.eval_config(names, None, f"_world_copies{copies}"),
                                              data)
            wers = [world[n]["wer"] for n in names]
            line += " " + " / ".join(f"{w:.1%}" for w in wers) + f", mean {np.mean(wers):.1%} |"
        print(line, flush=True)


if __name__ == "__main__":
    main()
