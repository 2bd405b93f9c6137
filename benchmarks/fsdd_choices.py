"""What a trained demo SLM would get on FSDD if its output were restricted to a closed set.

For each FSDD clip the SLM (a demo run's adapter at its latest checkpoint) scores candidate
outputs by their log-likelihood under teacher forcing, and the best one is its choice:

* the ASR instruction, the digit words of the four world languages (40 candidates): is the
  number right whatever the language, and how often is English chosen;
* the same, English words only (10 candidates): what a perfect language prior would give;
* the digits instruction, "0".."9": constrained digit classification.

Beside the free (greedy) decoding the report scores, this separates errors of language from
errors of the number, on the SLM itself rather than a probe (benchmarks/whisper_silence.py).

    python benchmarks/fsdd_choices.py RUN_DIR [--depth 2] [--gin.BINDING ...]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from slm_jax import demo, gin_utils, train_lib
from slm_jax.models.t5 import shift_right
from tasks import world_text


def candidate_tokens(vocab: seqio.Vocabulary, texts: list[str], eos: int,
                     start: int) -> tuple[np.ndarray, np.ndarray]:
    """(decoder targets, decoder inputs) [C, L] of each candidate text, EOS-terminated, 0-padded."""
    ids = [vocab.encode(t) + [eos] for t in texts]
    targets = np.zeros((len(ids), max(map(len, ids))), np.int32)
    for i, x in enumerate(ids):
        targets[i, :len(x)] = x
    return targets, np.asarray(shift_right(targets, start))


def candidate_scores(model, params, batches, targets: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """Log-likelihood [N, C] of every candidate for every example of `batches`."""
    @jax.jit
    def score(params, batch):
        logp = jax.nn.log_softmax(model.logits(params, batch, None, True), -1)
        tok = jnp.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]
        return (tok * (batch["decoder_target_tokens"] > 0)).sum(-1)

    out = []
    for b in batches:
        n = b["encoded_speech"].shape[0]
        speech = {k: b[k] for k in ("encoded_speech", "encoded_mask", "instruction_tokens")}
        out.append(np.stack([np.asarray(score(params, {**speech, "decoder_input_tokens": np.tile(i, (n, 1)),
                                                "decoder_target_tokens": np.tile(t, (n, 1))}))
                             for t, i in zip(targets, inputs)], 1))
    return np.concatenate(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--depth", type=int, default=2)
    args, rest = p.parse_known_args()
    gin_utils.parse_argv(["--gin_file=gin/runs/demo.gin", f"--gin.DemoConfig.run_dir='{args.run_dir}'",
                          f"--gin.DemoConfig.depths=[{args.depth}]", *rest])
    d = demo.Demo(demo.DemoConfig())
    d.speech_foundation()
    if not d.fsdd_tasks():
        raise SystemExit("FSDD not found (../shared/data/fsdd or $SLM_FSDD_DIR)")
    data = d.slm_eval_data()
    langs = world_text.LANGUAGES
    words = [world_text.cardinal(digit, lang) for lang in langs for digit in range(10)]
    rows = []
    with d.slm_stage(args.depth):
        s = train_lib.setup(train_lib.RunConfig())
        try:
            trainable, step = s.restore()
        finally:
            s.checkpointer.close()
        params = s.params(trainable)
        for task, texts in (("fsdd_asr_en", words), ("fsdd_digits", [str(k) for k in range(10)])):
            cfg = d.eval_config([task], split="test")
            vocab = seqio.get_mixture_or_task(task).output_features["targets"].vocabulary
            batches = list(data.batches(task, cfg))
            scores = candidate_scores(s.model, params, batches, *candidate_tokens(
                vocab, texts, s.model.eos_id, s.model.llm_config.decoder_start_token_id))
            truth = [vocab.decode([t for t in row if t > 1]) for b in batches for row in b["decoder_target_tokens"]]
            if task == "fsdd_asr_en":
                digit = np.array([words.index(t) for t in truth])
                pick40, pick10 = scores.argmax(1), scores[:, :10].argmax(1)
                rows += [("ASR instruction, 40 words (4 languages)", np.mean(pick40 % 10 == digit), np.mean(pick40 < 10)),
                         ("ASR instruction, 10 English words", np.mean(pick10 == digit), 1.0)]
            else:
                rows.append(("digits instruction, \"0\"..\"9\"", np.mean(scores.argmax(1) == np.array(list(map(int, truth)))),
                             float("nan")))
    print(f"\n{args.run_dir}, depth {args.depth}, step {step}, {len(truth)} FSDD clips\n")
    print("| closed set | right number | English chosen |\n|---|---|---|")
    for name, right, english in rows:
        print(f"| {name} | {100 * right:.1f}% | {'n/a' if np.isnan(english) else f'{100 * english:.1f}%'} |")


if __name__ == "__main__":
    main()
