"""Whisper base's encoder with float32 against bfloat16 matmul operands
(WhisperEncoderConfig.matmul_dtype: the projections and MLP; products accumulate in float32).

The demo's frozen encoder work (the feature cache, its evaluations, Whisper's own rows) runs
Whisper base's encoder on 10 s windows. One batch of `--rows` windows of 1,000 log-mel frames
(90% valid, the rest masked) of real FSDD speech where ../shared/data/fsdd exists (noise
otherwise), Whisper base's weights; both variants compiled in one process and timed alternately.
Also printed: how far the bfloat16 outputs are from float32 (max abs and relative L2 over valid
frames) and the matmul peaks of both dtypes on this host.

    python benchmarks/encoder_matmul_dtype.py [--rows 8] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import common  # first: pins threads before jax loads
import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.checkpoints.ct2_whisper import load_whisper
from slm_jax.checkpoints.whisper_base import whisper_base_dir
from slm_jax.features import load_audio, whisper_log_mel
from slm_jax.models.whisper import WhisperEncoder
from tasks import fsdd

FRAMES = 1000


def speech_windows(rows: int, mel: int) -> tuple[np.ndarray, np.ndarray]:
    """[rows, FRAMES, mel] log-mel of consecutive FSDD clips (noise without FSDD), 90% valid."""
    valid = int(0.9 * FRAMES)
    x = np.zeros((rows, FRAMES, mel), np.float32)
    folder = fsdd.fsdd_dir()
    clips = sorted(folder.glob("*.wav"))[:rows * 40] if folder else []
    if clips:
        feats = np.concatenate([whisper_log_mel(load_audio(str(p)), 16000, mel) for p in clips])
        for r in range(rows):
            x[r, :valid] = feats[(r * valid) % max(1, len(feats) - valid):][:valid]
    else:
        x[:, :valid] = np.random.default_rng(0).normal(size=(rows, valid, mel)) * 0.5
    mask = np.zeros((rows, FRAMES), bool)
    mask[:, :valid] = True
    return x, mask


def bf16_peak(n: int = 2048, repeats: int = 5) -> float:
    a = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda a: jax.lax.dot(a, a, preferred_element_type=jnp.float32))
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(repeats):
        f(a).block_until_ready()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)   # read by common at import
    args = p.parse_args()
    common.header("encoder_matmul_dtype")
    enc_cfg, _, params = load_whisper(whisper_base_dir())
    params = jax.device_put(params["encoder"])
    x, mask = speech_windows(args.rows, enc_cfg.num_mel_bins)
    fns, outs = {}, {}
    for name, dtype in (("float32", None), ("bfloat16 operands", "bfloat16")):
        module = WhisperEncoder(dataclasses.replace(enc_cfg, matmul_dtype=dtype))
        fn = jax.jit(lambda p, x, m, module=module: module.apply({"params": p}, x, m)[0])
        outs[name] = np.asarray(fn(params, x, mask))
        fns[name] = lambda fn=fn: fn(params, x, mask).block_until_ready()
    times = common.time_interleaved(fns, args.repeats, warmup=1)
    valid = mask[:, ::2]
    ref, low = outs["float32"][valid], outs["bfloat16 operands"][valid]
    base = times["float32"].median
    common.print_table(f"Whisper base encoder, {args.rows} windows x {FRAMES} frames (median of {args.repeats})", [
        {"matmul operands": k, "ms": 1000 * t.median, "min ms": 1000 * t.min, "speed vs float32": base / t.median,
         "max abs diff": float(np.abs(outs[k][valid] - ref).max()),
         "relative L2 diff": float(np.linalg.norm(outs[k][valid] - ref) / np.linalg.norm(ref))}
        for k, t in times.items()])
    print(f"\nmatmul peak (2048^3): float32 {common.matmul_peak()['jax']:.0f} GFLOP/s, "
          f"bfloat16 operands {bf16_peak():.0f} GFLOP/s; max |float32 output| {np.abs(ref).max():.1f}, "
          f"relative L2 of bfloat16 {np.linalg.norm(low - ref) / np.linalg.norm(ref):.4f}")


if __name__ == "__main__":
    main()
