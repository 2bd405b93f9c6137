"""Adapter-only SLM train step: slm_jax (jitted Trainer step) vs PyTorch + transformers.

Both sides: the same frozen w2v-BERT-layout Conformer (transformers Wav2Vec2BertModel weights
imported into ours), the same trainable adapter, the same frozen mT5 (MT5ForConditionalGeneration
weights imported), the same batch, AdamW with global-norm clipping 1.0 on the adapter only, the
same CPU threads (or the same GPU: `--device gpu`, see common.py). Theirs: frozen params requires_grad=False, encoder under torch.no_grad, eager.
Ours: `Trainer(..., trainable_patterns=("adapter/.*",))` on a 1-device mesh.

First the two implementations are checked to compute the same loss and adapter gradients on the
batch (the script stops if they do not: a benchmark of different math is worthless). FLOPs per
step come from XLA's cost analysis of our compiled step. Ours asks the speech encoder for the
frames the stride-s adapter keeps only, so its last layer skips the work on the others (the same
loss and gradients); theirs computes every frame, so its count is our step's compiled with the
whole encoder output (`ours_train_step(..., kept_frames_only=False)`).

A third row, "slm_jax+cache", is our step fed the feature cache's batch (slm_jax.cached_features:
the frozen encoder's outputs computed once before training, exact, the same loss and update;
benchmarks/feature_cache.py checks that): what a user of slm_jax pays per step when training
many steps over a fixed data set, which the PyTorch stacks recompute every step. It does less
work per step (its own FLOP count is shown), so it is not a same-work comparison.

    python benchmarks/train_step.py [--configs tiny,small] [--threads N] [--repeats R] [--quick]
"""

from __future__ import annotations

import argparse

import common  # first: pins threads before jax / torch load
import jax
import numpy as np
import torch

from slm_jax.task_model import SLMTaskModel
from slm_jax.trainer import merge_params, split_trainable

LR, Z_LOSS = common.TRAIN_LR, common.TRAIN_Z_LOSS
LOSS_TOL, GRAD_TOL = 1e-4, 1e-3   # relative; float32, different op order
CACHED = "slm_jax+cache"          # our step from the frozen encoder's cached outputs (cached_features)


def theirs_setup(pair: common.Pair, batch):
    slm, tb = pair.torch_slm, common.to_torch(batch)
    params = list(slm.adapter.parameters())
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0)

    def loss_and_backward():
        logits = slm(tb["features"], tb["feature_mask"], tb["instruction_tokens"], tb["decoder_input_tokens"])
        loss = common.torch_loss(logits, tb["decoder_target_tokens"], Z_LOSS)
        loss.backward()
        return loss

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_and_backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    return loss_and_backward, step


def check_same_math(pair: common.Pair, model: SLMTaskModel, batch, loss_and_backward) -> dict:
    """Loss and adapter gradients of both implementations on the batch (before any update)."""
    train, frozen = split_trainable(pair.params, ("adapter/.*",))

    def loss(p):
        sums = model.loss_fn(merge_params(p, frozen), batch, jax.random.PRNGKey(0), True)
        return sums["loss_sum"] / sums["weight_sum"]

    ours_loss, ours_grads = jax.jit(jax.value_and_grad(loss))(train)
    from flax import traverse_util
    ours_grads = traverse_util.flatten_dict(jax.tree_util.tree_map(np.asarray, ours_grads["adapter"]), sep="/")
    pair.torch_slm.adapter.zero_grad(set_to_none=True)
    theirs_loss = loss_and_backward().item()
    theirs_grads = pair.torch_slm.adapter.grads_as_flax(train["adapter"])
    pair.torch_slm.adapter.zero_grad(set_to_none=True)
    scale = max(np.abs(g).max() for g in theirs_grads.values())
    grad_diff = max(np.abs(ours_grads[k] - theirs_grads[k]).max() for k in theirs_grads) / scale
    loss_diff = abs(float(ours_loss) - theirs_loss) / abs(theirs_loss)
    return dict(loss_ours=float(ours_loss), loss_torch=theirs_loss, loss_rel_diff=loss_diff,
                grad_rel_diff=grad_diff, ok=loss_diff <= LOSS_TOL and grad_diff <= GRAD_TOL)


def main():
    args = common.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0])).parse_args()
    names = common.resolve(args)
    common.header("train_step")
    peak_before = common.matmul_peak()
    checks, rows = [], []
    for name in names:
        size = common.SIZES[name]
        pair = common.build_pair(size)
        batch = common.make_batch(size)
        model, ours_step, flops, compile_s = common.ours_train_step(pair, batch)
        # the reference's work: every encoder frame computed
        torch_flops = common.ours_train_step(pair, batch, kept_frames_only=False)[2]
        loss_and_backward, theirs_step = theirs_setup(pair, batch)
        with common.exact_matmuls():
            check = check_same_math(pair, model, batch, loss_and_backward)
        checks.append(dict(config=name, **check))
        if not check["ok"]:
            common.print_table("SAME-MATH CHECK FAILED", checks)
            raise SystemExit(f"{name}: the two implementations disagree; not benchmarking different math")
        # our step fed the feature cache's batch: the encoder ran once, before training (not the same work)
        cached = common.cached_batch(model, pair.params, batch)
        _, cached_step, cached_flops, _ = common.ours_train_step(pair, cached)
        t = common.time_interleaved({"slm_jax": ours_step, "torch": theirs_step, CACHED: cached_step},
                                    args.repeats, args.warmup)
        n_total = common.count_params(pair.params)
        n_train = common.count_params(pair.params["adapter"])
        for impl, f in (("slm_jax", flops), ("torch", torch_flops), (CACHED, cached_flops)):
            m = t[impl].median
            rows.append({"config": name, "impl": impl, "params (train/total)": f"{n_train / 1e6:.2f}M/{n_total / 1e6:.1f}M",
                         "batch": f"{size.batch}x{size.frames * common.FRAME_SECONDS:.0f}s",
                         "step ms (median)": m * 1e3, "min-max ms": f"{t[impl].min * 1e3:.0f}-{t[impl].max * 1e3:.0f}",
                         "ex/s": size.batch / m, "GFLOP/step": f / 1e9, "GFLOP/s": f / m / 1e9,
                         "MFU %": None,   # filled in once the peak is measured again at the end
                         "time ours/torch": m / t["torch"].median if impl != "torch" else ""})
        print(f"[{name}] jax compile {compile_s:.1f}s (excluded); {args.repeats} timed steps each; "
              f"{common.load_note()}", flush=True)
    peak = common.print_peak(peak_before, common.matmul_peak())
    for r in rows:
        r["MFU %"] = 100 * r["GFLOP/s"] / peak
    common.print_table("Same-math check (before timing; relative diffs, loss tol "
                       f"{LOSS_TOL:g}, adapter-gradient tol {GRAD_TOL:g} of max |grad|)", checks)
    common.print_table(f"Adapter-only train step, {common.WHERE}; MFU vs the measured "
                       f"matmul peak {peak:.0f} GFLOP/s; FLOPs from XLA cost analysis (torch: our step's count "
                       "with the speech encoder's last layer run on every frame, as the reference does; "
                       "slm_jax+cache: its own)", rows)


if __name__ == "__main__":
    main()
