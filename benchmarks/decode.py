"""Batched SLM decoding (ASR-style: audio + instruction -> text): slm_jax vs transformers.

Ours: `SLMTaskModel.predict_batch` (speech encoder, adapter, packing, mT5 encoder, then the
jitted KV-cache loop: greedy, or beam search with 4 beams). Theirs: the same weights in PyTorch
(`common.TorchSLM.encode`, then `MT5ForConditionalGeneration.generate(encoder_outputs=...)`),
under torch.inference_mode. Both decode from the same inputs, so from the same encoder states.

Both always produce exactly `max_new_tokens` tokens: EOS is set to an id outside the vocabulary
on both sides (our T5Config.eos_id, transformers' eos_token_id), so no sequence ever stops and
the argmax / beam ranking is otherwise untouched. The table says how many decoded sequences
are identical across the two implementations (a check that both run the same math).

Two scopes, timed interleaved in one run: "audio->text" (the whole batch from audio features,
as above) and "decoder only": the decoding loop from the same precomputed LLM encoder states,
ours `SLMTaskModel.decode_encoded`, theirs `generate(encoder_outputs=...)` (what `generate`
itself does). The encoders before decoding are matmul-bound and cost the same on both sides, so
the first scope mixes them in; the second measures decoding alone.

tokens/s counts output tokens (batch x max_new_tokens, not beams x ...); RTF (real-time factor)
= wall time of the whole batch / seconds of audio in the batch (valid frames x 10 ms).

    python benchmarks/decode.py [--configs tiny,small] [--threads N] [--repeats R] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses

import common  # first: pins threads before jax / torch load
import jax
import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutput

from slm_jax.task_model import DecodeConfig, SLMTaskModel

BEAMS, ALPHA = 4, 0.6


def main():
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--max_new_tokens", type=int, default=0, help="default: the config's target length")
    args = parser.parse_args()
    names = common.resolve(args)
    common.header("decode")
    rows = []
    for name in names:
        size = common.SIZES[name]
        pair = common.build_pair(size)
        batch = common.make_batch(size)
        n_new = args.max_new_tokens or size.target_len
        never = size.vocab   # an EOS id no step can produce
        cfg = dataclasses.replace(pair.config, llm=dataclasses.replace(pair.config.llm, eos_id=never))
        model = SLMTaskModel(cfg)
        params = jax.device_put(pair.params)
        dev_batch = jax.device_put({k: v for k, v in batch.items() if not k.startswith("decoder")})
        tb = common.to_torch(batch)
        slm = pair.torch_slm
        audio_s = common.audio_seconds(batch)
        encoded, enc_mask = jax.block_until_ready(jax.jit(model.encode)(params, dev_batch))
        with torch.inference_mode():
            t_enc, t_mask = slm.encode(tb["features"], tb["feature_mask"], tb["instruction_tokens"])
        for method, beams in (("greedy", 1), ("beam", BEAMS)):
            dcfg = DecodeConfig(method=method, max_len=n_new, beam_size=BEAMS, alpha=ALPHA)
            out = {}

            def generate(enc, mask):
                seqs = slm.llm.generate(
                    encoder_outputs=BaseModelOutput(last_hidden_state=enc), attention_mask=mask,
                    max_new_tokens=n_new, do_sample=False, num_beams=beams, eos_token_id=never,
                    **({"length_penalty": ALPHA} if beams > 1 else {}))
                return seqs[:, 1:].cpu().numpy()   # drop the decoder start token

            def ours():
                out["ours"] = np.asarray(jax.block_until_ready(model.predict_batch(params, dev_batch, dcfg)[0]))

            def theirs():
                with torch.inference_mode():
                    enc, mask = slm.encode(tb["features"], tb["feature_mask"], tb["instruction_tokens"])
                    out["theirs"] = generate(enc, mask)

            def ours_dec():
                out["ours_dec"] = np.asarray(jax.block_until_ready(
                    model.decode_encoded(params, encoded, enc_mask, dcfg)[0]))

            def theirs_dec():
                with torch.inference_mode():
                    out["theirs_dec"] = generate(t_enc, t_mask)

            fns = {("audio->text", "slm_jax"): ours, ("audio->text", "torch"): theirs,
                   ("decoder only", "slm_jax"): ours_dec, ("decoder only", "torch"): theirs_dec}
            t = common.time_interleaved(fns, args.repeats, args.warmup)
            for key in out:
                assert out[key].shape == (size.batch, n_new), (key, out[key].shape)
            for scope, o, th in (("audio->text", "ours", "theirs"), ("decoder only", "ours_dec", "theirs_dec")):
                same = int(np.sum(np.all(out[o] == out[th], axis=1)))
                ratio = t[scope, "slm_jax"].median / t[scope, "torch"].median
                for impl in ("slm_jax", "torch"):
                    m = t[scope, impl].median
                    rows.append({"config": name, "method": method if beams == 1 else f"beam{beams}", "scope": scope,
                                 "impl": impl, "batch x tokens": f"{size.batch}x{n_new}", "ms (median)": m * 1e3,
                                 "min-max ms": f"{t[scope, impl].min * 1e3:.0f}-{t[scope, impl].max * 1e3:.0f}",
                                 "tokens/s": size.batch * n_new / m,
                                 "RTF": m / audio_s if scope == "audio->text" else "",
                                 "same output": f"{same}/{size.batch}",
                                 "time ours/torch": ratio if impl == "slm_jax" else ""})
            print(f"[{name} {method}] {args.repeats} timed batches each; {common.load_note()}", flush=True)
    common.print_table(f"Batched decoding, {common.WHERE}; audio->text: speech encoder + adapter + mT5 encoder + "
                       "decoding; decoder only: from the same LLM encoder states; RTF = batch time / audio "
                       "seconds in the batch", rows)


if __name__ == "__main__":
    main()
