"""A trained demo SLM on FSDD with each evaluation batch's clips sharing Whisper's encoder window.

The clips of each evaluation batch (32, in the task's order: spread over speakers and digits)
are packed into shared windows of `--window` log-mel frames (slm_jax.speech_windows: each clip
followed by ~1 s of its log-mel floor), encoded together, cut back out and scored through the
adapter and LLM as the report scores them. With `--window 250` a window holds one clip: each
clip alone. The demo trains and scores with 1000-frame windows (gin/runs/demo_slm.gin); this
measures other window sizes on the same adapter, eval only (benchmarks/README.md, "Shared
encoder windows"). Predictions and metrics are written beside the run's own, under
RUN_DIR/slm_depth<d>/eval/ with the tag `_fsdd_window<N>`.

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
from slm_jax.demo_report import LANGS
from slm_jax.speech_windows import (FrozenSpeech, SpeechWindows, frames_per_position, jitted_encoder, padded, positions,
                                    segment, stacked)

SILENCE = 100   # log-mel floor frames after each clip (1 s)


def clip_segments(batch: dict, config) -> tuple[list[np.ndarray], list[int]]:
    """Each clip's valid log-mel frames + ~1 s of its floor (speech_windows.segment), and its
    adapter positions when encoded alone."""
    feats, mask = np.asarray(batch["features"]), np.asarray(batch["feature_mask"]).astype(bool)
    lengths = mask.sum(1).astype(int)
    return ([segment(f[:n], SILENCE, frames_per_position(config)) for f, n in zip(feats, lengths)],
            [positions(int(n), config) for n in lengths])


def encoded_batch(batch: dict, frames) -> dict:
    """The batch with each clip's adapter-input `frames` in place of its audio."""
    out, out_mask = stacked(frames)
    rest = {k: v for k, v in batch.items() if k not in ("features", "feature_mask")}
    return {**rest, "encoded_speech": out, "encoded_mask": out_mask}


def packed_encoder(frozen: FrozenSpeech):
    """(batch -> the batch with `encoded_speech` / `encoded_mask` from its clips packed in
    shared windows (slm_jax.speech_windows), the list it appends each batch's clips per window to)."""
    sizes: list[float] = []

    def apply(batch: dict) -> dict:
        stream = frozen.packed(batch["features"], batch["feature_mask"])
        sizes.append(len(batch["features"]) / stream.windows)
        return encoded_batch(batch, stream.ready())
    return apply, sizes


def copies_encoder(encode, params, copies: int, config):
    """batch -> the batch with `encoded_speech` / `encoded_mask` from each clip encoded alone, in
    its own window, `copies` times in a row (each copy + ~1 s of its log-mel floor), the copies'
    adapter-input frames averaged position by position: context from the clip itself only."""

    def apply(batch: dict) -> dict:
        segments, counts = clip_segments(batch, config)
        align = frames_per_position(config)
        frames = -(-max(len(seg) for seg in segments) * copies // 100) * 100
        hidden = np.asarray(encode(params, *padded([np.concatenate([seg] * copies) for seg in segments], frames))[0])
        return encoded_batch(batch, [np.mean([hidden[i, k * (len(seg) // align):k * (len(seg) // align) + c]
                                              for k in range(copies)], 0)
                                     for i, (seg, c) in enumerate(zip(segments, counts))])
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
    config, params = s.model.config, s.frozen["speech_encoder"]
    encode = jitted_encoder(config)
    print("| encoder window | clips per window (mean) | FSDD digit accuracy | fsdd_asr_en WER |\n|---|---|---|---|")
    for window in args.window:
        encoder, sizes = packed_encoder(FrozenSpeech(config, params, SpeechWindows(window, SILENCE)))
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
        data = eval_lib.EvalDataCache(encoder=copies_encoder(encode, params, copies, config))
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
