"""Where the time goes in an SLM train step and in decoding (slm_jax only).

Two views of the same model, batch and threads as the other benchmarks (`common.SIZES`):

1. Pieces. Each part of the adapter-only train step and of decoding is jitted on its own and
   timed (median of --repeats blocking calls, pieces alternating): speech encoder forward,
   adapter forward+backward, packing + LLM encoder forward (+ backward to its inputs: no weight
   gradients), LLM decoder + lm_head + loss forward (+ backward to the encoder states), the
   optimizer update, and the whole train step; for decoding the prefill (speech encoder,
   adapter, LLM encoder), one cached decoder step, and whole greedy / beam-4 `predict_batch`
   calls (per-token cost = (total - prefill) / tokens).
2. Trace. A few whole train steps and decoding calls run under `jax.profiler.trace(--logdir)`
   (open it in TensorBoard's profile plugin or Perfetto). The script reads the trace back
   (`jax.profiler.ProfileData`), maps every XLA op event to the op's name stack in the compiled
   HLO (`jit(step)/transpose(jvp(SLM))/llm/decoder/layers_0/...`) and prints CPU time per
   module and direction (forward / backward), and the most expensive ops.

CPU time in the trace is summed over XLA's threads, so it can exceed wall time; compare shares.

    python benchmarks/profile_step.py [--configs small] [--threads N] [--repeats R] [--logdir DIR]
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import time

import common  # first: pins threads before jax / torch load
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from slm_jax.compile_stats import count_compilations
from slm_jax.losses import cross_entropy_sums
from slm_jax.models import t5 as t5_lib
from slm_jax.models.slm import SLM, pack
from slm_jax.task_model import DecodeConfig, SLMTaskModel

BEAMS = 4


# ----------------------------------------------------------------------------- pieces

def build(name: str):
    size = common.SIZES[name]
    cfg = common.slm_config(size)
    model = SLMTaskModel(cfg)
    part, trainer = common.adapter_trainer(model)
    params = nn.meta.unbox(jax.jit(model.init_boxed)(jax.random.PRNGKey(0)))
    batch = part.shard_batch(common.make_batch(size))
    return size, model, trainer, trainer.tx, params, batch


def train_pieces(model: SLMTaskModel, tx, params, batch) -> dict:
    """name -> zero-argument blocking callable, one per part of the adapter-only train step."""
    slm: SLM = model.module
    apply = lambda p, *a, method: slm.apply({"params": p}, *a, method=method)  # noqa: E731
    enc_fn = lambda p, f, m: apply(p, f, m, method=lambda s, f, m: s.speech_encoder(f, m))  # noqa: E731
    adapter_fn = lambda p, h, m: apply(p, h, m, method=lambda s, h, m: s.adapter(h, m))  # noqa: E731

    def llm_enc(p, speech, speech_mask, instr):
        def f(s, speech, speech_mask, instr):
            x, mask = pack(speech, speech_mask, s.llm.embed(instr), instr > 0)
            return s.llm.encode_embedded(x, mask), mask
        return apply(p, speech, speech_mask, instr, method=f)

    def dec_loss(p, encoded, mask):
        def f(s, encoded, mask):
            return s.decode(encoded, mask, batch["decoder_input_tokens"])
        logits = apply(p, encoded, mask, method=f)
        tgt = batch["decoder_target_tokens"]
        return cross_entropy_sums(logits, tgt, tgt > 0, z_loss=model.z_loss)["loss_sum"]

    enc_p, ad_p, llm_p = ({"speech_encoder": params["speech_encoder"]}, {"adapter": params["adapter"]},
                          {"llm": params["llm"]})
    hidden, hmask = jax.jit(enc_fn)(enc_p, batch["features"], batch["feature_mask"])
    speech, smask = jax.jit(adapter_fn)(ad_p, hidden, hmask)
    encoded, emask = jax.jit(llm_enc)(llm_p, speech, smask, batch["instruction_tokens"])
    rng = np.random.default_rng(0)
    ct_speech = jnp.asarray(rng.standard_normal(speech.shape), jnp.float32)
    ct_enc = jnp.asarray(rng.standard_normal(encoded.shape), jnp.float32)

    j_enc = jax.jit(enc_fn)
    j_adapter = jax.jit(lambda p, h, m, ct: jax.vjp(lambda p: adapter_fn(p, h, m)[0], p)[1](ct))
    j_llm_enc_fwd = jax.jit(llm_enc)
    j_llm_enc = jax.jit(lambda p, s, m, i, ct: jax.vjp(lambda s: llm_enc(p, s, m, i)[0], s)[1](ct))
    j_dec_fwd = jax.jit(dec_loss)
    j_dec = jax.jit(jax.grad(dec_loss, argnums=1))
    grads = jax.tree_util.tree_map(lambda x: jnp.full_like(x, 1e-3), ad_p)
    opt_state = jax.jit(tx.init)(ad_p)

    def opt_step(g, s, p):
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s
    j_opt = jax.jit(opt_step)
    block = jax.block_until_ready
    return {
        "speech encoder fwd": lambda: block(j_enc(enc_p, batch["features"], batch["feature_mask"])),
        "adapter fwd+bwd": lambda: block(j_adapter(ad_p, hidden, hmask, ct_speech)),
        "pack + LLM encoder fwd": lambda: block(j_llm_enc_fwd(llm_p, speech, smask, batch["instruction_tokens"])),
        "pack + LLM encoder fwd+bwd (to inputs)": lambda: block(
            j_llm_enc(llm_p, speech, smask, batch["instruction_tokens"], ct_enc)),
        "LLM decoder + lm_head + loss fwd": lambda: block(j_dec_fwd(llm_p, encoded, emask)),
        "LLM decoder + lm_head + loss fwd+bwd (to encoder states)": lambda: block(j_dec(llm_p, encoded, emask)),
        "optimizer update (AdamW + clipping)": lambda: block(j_opt(grads, opt_state, ad_p)),
    }


def decode_pieces(model: SLMTaskModel, params, batch, max_len: int) -> dict:
    feats = {k: v for k, v in batch.items() if not k.startswith("decoder")}
    j_prefill = jax.jit(lambda p, b: model.encode(p, b))
    encoded, mask = j_prefill(params, feats)
    llm = model.llm
    cache = t5_lib.init_cache(llm, params["llm"], encoded.shape[0], max_len, encoded.shape[1])
    tokens = jnp.zeros((encoded.shape[0], 1), jnp.int32)
    j_step = jax.jit(lambda p, c, e, m, t: t5_lib.decode_step(llm, p, c, e, m, t))
    greedy = DecodeConfig(method="greedy", max_len=max_len)
    beam = DecodeConfig(method="beam", max_len=max_len, beam_size=BEAMS)
    block = jax.block_until_ready
    return {
        "prefill (speech enc + adapter + LLM enc)": lambda: block(j_prefill(params, feats)),
        "one cached decoder step (greedy batch)": lambda: block(j_step(params["llm"], cache, encoded, mask, tokens)),
        "predict_batch greedy": lambda: block(model.predict_batch(params, feats, greedy)),
        f"predict_batch beam{BEAMS}": lambda: block(model.predict_batch(params, feats, beam)),
    }


# ----------------------------------------------------------------------------- trace analysis

_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?(?P<name>[^\s=]+)\s*=\s.*?metadata=\{[^}]*op_name="(?P<op>[^"]*)"')
# name-stack component -> module (the first match from the innermost side wins)
_MODULES = {"speech_encoder": "speech encoder", "adapter": "adapter", "encoder": "LLM encoder",
            "decoder": "LLM decoder", "lm_head": "LLM lm_head", "token_embedder": "LLM embed"}


def hlo_op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> jax name stack (`op_name` metadata) for one compiled program."""
    out = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if m:
            out[m.group("name")] = m.group("op")
    return out


def categorise(op_name: str) -> tuple[str, str, str]:
    """(module, part, direction) of an op from its name stack, e.g.
    "jit(step)/transpose(jvp(SLM))/SLM.encode/llm.encode_embedded/encoder/layers_1/mlp/wo/dot_general"
    -> ("LLM encoder", "mlp", "bwd"). `part` is the sub-module below the layer index, the same
    for every layer of a stack; ops inside the decoding loop are marked "(loop)"."""
    direction = "bwd" if "transpose(" in op_name else "fwd"
    path = op_name
    for _ in range(4):   # strip transform wrappers: transpose(jvp(SLM)) -> SLM
        path = re.sub(r"[\w.]+\(([^()]*)\)", r"\1", path)
    parts = path.split("/")[:-1]                     # drop the primitive's name
    in_loop = "while" in parts
    for i, p in enumerate(parts):
        name = p.split(".")[-1]                      # "llm.encode_embedded" is a method, not a module
        if name in _MODULES and "." not in p:
            sub = [q for q in parts[i + 1:] if not re.fullmatch(r"layers?_\d+", q) and "." not in q]
            return _MODULES[name] + (" (loop)" if in_loop else ""), (sub[0] if sub else "-"), direction
    return "outside modules" + (" (loop)" if in_loop else ""), "loss, optimizer, packing, search", direction


def trace_summary(logdir: str, hlo_texts: dict[str, str], top: int = 12) -> None:
    """Read the newest trace under logdir and print CPU time per module/direction and top ops."""
    paths = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not paths:
        print(f"(no trace found under {logdir})")
        return
    names = {}
    for text in hlo_texts.values():
        names.update(hlo_op_names(text))
    pd = jax.profiler.ProfileData.from_file(paths[-1])
    per_op = collections.Counter()
    for plane in pd.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            if line.name == "python":
                continue
            for ev in line.events:
                if ev.name in names and not ev.name.startswith(("while", "conditional", "call")):
                    per_op[ev.name] += ev.duration_ns
    total = sum(per_op.values())
    if not total:
        print("(trace has no XLA op events)")
        return
    per_mod = collections.Counter()
    for op, ns in per_op.items():
        per_mod[categorise(names[op])] += ns
    rows = [{"module": m, "part": p, "direction": d, "CPU ms": ns / 1e6, "share %": 100 * ns / total}
            for (m, p, d), ns in per_mod.most_common() if ns >= 0.005 * total]
    common.print_table(f"Trace {paths[-1]}: XLA op CPU time by module (all threads; parts under 0.5% left out)", rows)
    rows = [{"op": op, "name stack": names[op][-110:], "CPU ms": ns / 1e6, "share %": 100 * ns / total}
            for op, ns in per_op.most_common(top)]
    common.print_table(f"Top {top} ops", rows)


# ----------------------------------------------------------------------------- main

def main():
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]),
                                    configs=("small",))
    parser.add_argument("--logdir", default="/tmp/slm_jax_profile", help="where jax.profiler.trace writes")
    parser.add_argument("--trace_steps", type=int, default=3, help="train steps / decode calls traced")
    args = parser.parse_args()
    names = common.resolve(args)
    common.header("profile")
    for name in names:
        size, model, trainer, tx, params, batch = build(name)
        max_len = size.target_len
        train, frozen = trainer.split(params)
        state = trainer.init_state(train)
        rng = jax.random.PRNGKey(0)
        with count_compilations() as cc:
            t0 = time.perf_counter()
            compiled_step = trainer.train_step.lower(state, frozen, batch, rng).compile()
            compile_s = time.perf_counter() - t0
        holder = {"state": state}

        def step():
            holder["state"], metrics = compiled_step(holder["state"], frozen, batch, rng)
            return jax.block_until_ready(metrics["loss"])

        pieces = train_pieces(model, tx, params, batch)
        t = common.time_interleaved({**pieces, "whole train step": step}, args.repeats, args.warmup)
        whole = t["whole train step"].median
        rows = [{"piece": k, "ms (median)": v.median * 1e3, "min-max ms": f"{v.min * 1e3:.0f}-{v.max * 1e3:.0f}",
                 "% of step": 100 * v.median / whole} for k, v in t.items()]
        print(f"[{name}] train step compiled in {compile_s:.1f}s ({cc.count()} compilation(s)); "
              f"{common.load_note()}", flush=True)
        common.print_table(f"{name}: adapter-only train step, pieces jitted separately ({common.THREADS} "
                           "thread(s); the pieces overlap: fwd+bwd includes fwd)", rows)

        dec_feats = {k: v for k, v in batch.items() if not k.startswith("decoder")}
        dpieces = decode_pieces(model, params, batch, max_len)
        t = common.time_interleaved(dpieces, args.repeats, args.warmup)
        prefill = t["prefill (speech enc + adapter + LLM enc)"].median
        rows = []
        for k, v in t.items():
            r = {"piece": k, "ms (median)": v.median * 1e3, "min-max ms": f"{v.min * 1e3:.0f}-{v.max * 1e3:.0f}"}
            if k.startswith("predict_batch"):
                r["per token ms"] = (v.median - prefill) / max_len * 1e3
                r["prefill %"] = 100 * prefill / v.median
            rows.append(r)
        print(f"[{name}] decoding {size.batch} x {max_len} tokens; {common.load_note()}", flush=True)
        common.print_table(f"{name}: decoding pieces ({common.THREADS} thread(s))", rows)

        # ------------------------------------------------------------ traces
        greedy = DecodeConfig(method="greedy", max_len=max_len)
        enc, enc_mask = model.encode_batch(params, dec_feats)
        compiled_greedy = SLMTaskModel.decode_encoded.lower(model, params, enc, enc_mask, greedy).compile()
        for what, fn, text in (("train", step, compiled_step.as_text()),
                               ("decode", lambda: jax.block_until_ready(compiled_greedy(params, enc, enc_mask)),
                                compiled_greedy.as_text())):
            logdir = os.path.join(args.logdir, f"{name}_{what}")
            fn()
            with jax.profiler.trace(logdir):
                for _ in range(args.trace_steps):
                    fn()
            print(f"\n[{name}] {what}: {args.trace_steps} calls traced to {logdir}")
            trace_summary(logdir, {what: text})


if __name__ == "__main__":
    main()
