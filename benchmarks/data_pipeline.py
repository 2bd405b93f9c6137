"""Input pipeline vs train step on the same CPU cores: examples/s of each, and is training input-bound?

On a CPU host the SeqIO / tf.data input pipeline (`slm_jax.data.get_batches`: TFDS read of the
int16 audio, log-mel in TensorFlow, tokenisation, mixture sampling, padding, batching) and the
jitted train step share the cores, so a pipeline slower than the step wastes the model's time.
Per config of `common.SIZES`, with that config's batch size:

  pipeline ex/s    batches pulled from one shuffled `get_batches` iterator over the spoken_world
                   tiny ASR+AST mixture, in steady state: the warm-up calls fill every task's
                   shuffle buffer (128 examples each, filled when the mixture first samples the
                   task; the start-up is printed separately);
  train step ex/s  our adapter-only train step (`common.ours_train_step`) compiled for, and run on,
                   the pipeline's first batch: the same padded shapes (speech padded to
                   FEATURE_LENGTHS["speech"] frames, not the config's own `frames`);
  train loop ex/s  both together as train_lib.train runs them: next batch, shard, step without
                   blocking (so the pipeline's threads overlap the step on the same cores).

Each is timed alone with `common.time_interleaved` (a pipeline timed between steps would start
with buffers filled while the step ran). Verdict "input-bound" when pipeline < train step.
A second table splits one example's pipeline cost into stages (read, log-mel, task, mixture).

    python benchmarks/data_pipeline.py [--configs tiny,small] [--threads N] [--repeats R] [--quick]
"""

from __future__ import annotations

import argparse
import math
import time

import common  # first: pins threads before jax / torch / tensorflow load
import seqio
import tensorflow as tf

import tasks  # registers the SeqIO tasks and mixtures
from slm_jax.data import SLMFeatureConverter, get_batches

MIXTURE = "spoken_world_tiny_asr_ast"   # the paper's ASR + AST training mixture, tiny world
# tiny's longest utterance: 429 frames (train), 425 (test); longest instruction 14 tokens,
# target 16 tokens in this mixture
FEATURE_LENGTHS = {"speech": 600, "instruction": 16, "targets": 32}
CHUNK_EXAMPLES = 128   # examples per timed pipeline call (>= every task's shuffle buffer)
LOOP_EXAMPLES = 16     # examples per timed train-loop call (at least 2 batches)


def batches_fn(it, n: int):
    def pull():
        for _ in range(n):
            next(it)
    return pull


def loop_fn(it, step, n: int):
    def loop():
        for _ in range(n):
            loss = step(next(it), block=False)
        loss.block_until_ready()
    return loop


def stage_rates(n: int, repeats: int, warmup: int) -> list[dict]:
    """Examples/s of the pipeline's stages on the tiny train split (no batching), each timed
    alone: median of `repeats` calls pulling `n` examples."""
    corpus = tasks.SpokenWorldCorpus("tiny")
    audio = corpus.load("train", shuffle=False, seed=0, shard_info=None)
    audio = audio.map(lambda ex: {"id": ex["id"], "audio": ex["audio"]}).cache().repeat()
    task = seqio.get_mixture_or_task("spoken_world_tiny_asr_en")
    stages = {
        "TFDS read + decode int16 audio (all languages)":
            corpus.load("train", shuffle=True, seed=0, shard_info=None).repeat(),
        "log-mel only (TF, float64) of audio cached in memory": tasks.common.speech_features(audio),
        "one task (asr_en): read 4 languages, keep 1, log-mel, tokenize, shuffle":
            task.get_dataset(FEATURE_LENGTHS, "train", shuffle=True, seed=0, num_epochs=None),
        f"{MIXTURE} (10 tasks) + feature converter, unbatched":
            seqio.get_dataset(MIXTURE, FEATURE_LENGTHS, SLMFeatureConverter(), dataset_split="train", shuffle=True,
                              num_epochs=None, seed=0, verbose=False),
    }
    rows = []
    for name, ds in stages.items():
        it = ds.as_numpy_iterator()
        t = common.time_interleaved({name: batches_fn(it, n)}, repeats, warmup, pause=0)[name]
        rows.append({"stage": name, "examples/s": n / t.median, "ms/example": 1e3 * t.median / n})
    return rows


def main():
    args = common.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0])).parse_args()
    names = common.resolve(args)
    common.header("data_pipeline")
    print(f"tensorflow {tf.__version__}; {MIXTURE}, feature lengths {FEATURE_LENGTHS}", flush=True)
    rows = []
    for name in names:
        size = common.SIZES[name]
        b = size.batch
        n_pipe, n_loop = math.ceil(CHUNK_EXAMPLES / b), max(2, math.ceil(LOOP_EXAMPLES / b))
        t0 = time.perf_counter()
        it = get_batches(MIXTURE, "train", feature_lengths=FEATURE_LENGTHS, batch_size=b, shuffle=True, seed=0)
        batch = next(it)
        first_s = time.perf_counter() - t0
        # no idle pause before pipeline calls: tf.data's prefetch threads would fill buffers in it
        pipe = common.time_interleaved({"pipeline": batches_fn(it, n_pipe)}, args.repeats, args.warmup,
                                       pause=0)["pipeline"]

        assert max(batch[k].max() for k in ("instruction_tokens", "decoder_target_tokens")) < size.vocab
        _, step, _, compile_s = common.ours_train_step(common.build_pair(size), batch)
        stepped = common.time_interleaved({"step": step}, args.repeats, args.warmup)["step"]
        loop = common.time_interleaved({"loop": loop_fn(it, step, n_loop)}, args.repeats, 1, pause=0)["loop"]
        del it
        pipe_rate, step_rate = b * n_pipe / pipe.median, b / stepped.median
        rows.append({"config": name, "batch (ex x frames/instr/targets)":
                     f"{b} x {batch['features'].shape[1]}/{batch['instruction_tokens'].shape[1]}/"
                     f"{batch['decoder_target_tokens'].shape[1]}",
                     "pipeline ex/s": pipe_rate,
                     "pipeline min-max": f"{b * n_pipe / pipe.max:.3g}-{b * n_pipe / pipe.min:.3g}",
                     "train step ex/s": step_rate,
                     "step min-max": f"{b / stepped.max:.3g}-{b / stepped.min:.3g}",
                     "pipeline/step": pipe_rate / step_rate,
                     "verdict": "input-bound" if pipe_rate < step_rate else "compute-bound",
                     "train loop ex/s": b * n_loop / loop.median})
        print(f"[{name}] pipeline start-up (iterator + first batch) {first_s:.1f}s, warm-up {args.warmup} x "
              f"{n_pipe} batches; step compile {compile_s:.1f}s; timed: {args.repeats} x {n_pipe} batches "
              f"(pipeline), {args.repeats} steps, 1 + {args.repeats} x {n_loop} loop steps; {common.load_note()}",
              flush=True)
    stages = stage_rates(CHUNK_EXAMPLES, args.repeats, warmup=1)
    common.print_table(f"Input pipeline vs adapter-only train step, {common.WHERE}, medians; the step "
                       f"runs on the pipeline's batch shape (speech padded to {FEATURE_LENGTHS['speech']} frames); "
                       "train loop = both on the same cores", rows)
    common.print_table(f"Where one example's pipeline time goes (tiny train split; median of {args.repeats} x "
                       f"{CHUNK_EXAMPLES} examples after a warm-up; {common.load_note()})", stages)


if __name__ == "__main__":
    main()
