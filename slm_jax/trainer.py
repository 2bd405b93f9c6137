"""T5X-style partitioned trainer.

Parameters are split by a gin-configurable rule into a *trainable* subtree (the SLM adapter; or
everything, for foundation pretraining) and a *frozen* pytree. Only the trainable subtree is in
`TrainState`, reaches optax, gets gradients and optimizer state, and is written by checkpoints;
the frozen pytree is an ordinary argument of the step. Steps are pure functions of
(state, frozen, batch, rng), jitted once with explicit in/out shardings from the partitioner.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P

from slm_jax.partitioning import Partitioner

Params = Mapping[str, Any]
# loss_fn(params, batch, rng, deterministic) -> dict with loss_sum, weight_sum (+ other *_sum)
LossFn = Callable[[Params, Mapping[str, jax.Array], jax.Array, bool], dict]


@flax.struct.dataclass
class TrainState:
    """What training changes: step, trainable params, optimizer state. Nothing frozen."""
    step: jax.Array
    params: Any
    opt_state: Any


# ----------------------------------------------------------------------------- trainable split

def _flat(tree) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep="/") if tree else {}


def split_trainable(params: Params, patterns: Sequence[str]) -> tuple[dict, dict]:
    """(trainable, frozen): leaves whose "a/b/c" path full-matches any regex in `patterns`
    are trainable. Works on boxed or unboxed trees. Raises if nothing matches."""
    flat = traverse_util.flatten_dict(params, sep="/",
                                      is_leaf=lambda _, x: not isinstance(x, Mapping))
    compiled = [re.compile(p) for p in patterns]
    is_train = {k: any(c.fullmatch(k) for c in compiled) for k in flat}
    if not any(is_train.values()):
        raise ValueError(f"trainable patterns {list(patterns)} match no parameter; "
                         f"top-level keys are {sorted(params)}")
    unflat = lambda sel: traverse_util.unflatten_dict(  # noqa: E731
        {k: v for k, v in flat.items() if is_train[k] == sel}, sep="/")
    return unflat(True), unflat(False)


def merge_params(trainable: Params, frozen: Params) -> dict:
    """Inverse of split_trainable."""
    flat = {**_flat(frozen), **_flat(trainable)}
    return traverse_util.unflatten_dict(flat, sep="/")


# ----------------------------------------------------------------------------- optimizer

@gin.configurable
def make_schedule(learning_rate: float = 1e-3, warmup_steps: int | None = None, total_steps: int = 1000,
                  decay: str = "cosine", end_fraction: float = 0.0,
                  warmup_fraction: float | None = None, decay_fraction: float = 0.2) -> optax.Schedule:
    """Linear warmup to `learning_rate`, then `decay` in cosine / linear / rsqrt / constant /
    wsd (warmup-stable-decay: constant, then linear to end_fraction over the last
    `decay_fraction` of total_steps, rounded).

    The warmup is `warmup_steps` long, or `warmup_fraction` of `total_steps` (rounded), so runs
    of different lengths under one config warm up alike; neither set: 100 steps."""
    if warmup_steps is not None and warmup_fraction is not None:
        raise ValueError(f"make_schedule: set warmup_steps ({warmup_steps}) or warmup_fraction "
                         f"({warmup_fraction}), not both")
    if warmup_fraction is not None:
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"make_schedule.warmup_fraction must lie in [0, 1), got {warmup_fraction}")
        warmup_steps = round(warmup_fraction * total_steps)
    warmup_steps = 100 if warmup_steps is None else warmup_steps
    if warmup_steps < 0:
        raise ValueError(f"make_schedule.warmup_steps must be >= 0, got {warmup_steps}")
    warm = optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
    rest = max(total_steps - warmup_steps, 1)
    if decay == "cosine":
        after = optax.cosine_decay_schedule(learning_rate, rest, alpha=end_fraction)
    elif decay == "linear":
        after = optax.linear_schedule(learning_rate, learning_rate * end_fraction, rest)
    elif decay == "rsqrt":
        after = lambda s: learning_rate * jnp.sqrt(max(warmup_steps, 1) / (s + max(warmup_steps, 1)))  # noqa: E731
    elif decay == "constant":
        after = optax.constant_schedule(learning_rate)
    elif decay == "wsd":
        if not 0.0 < decay_fraction <= 1.0:
            raise ValueError(f"make_schedule.decay_fraction must lie in (0, 1], got {decay_fraction}")
        tail = min(max(round(decay_fraction * total_steps), 1), rest)
        after = optax.join_schedules([optax.constant_schedule(learning_rate),
                                      optax.linear_schedule(learning_rate, learning_rate * end_fraction, tail)],
                                     [rest - tail])
    else:
        raise ValueError(f"make_schedule.decay must be cosine/linear/rsqrt/constant/wsd, got {decay!r}")
    return optax.join_schedules([warm, after], [warmup_steps])


@gin.configurable
def make_optimizer(name: str = "adamw", schedule: optax.Schedule | None = None, weight_decay: float = 0.0,
                   clip_norm: float | None = 1.0, b1: float = 0.9, b2: float = 0.98) -> optax.GradientTransformation:
    """AdamW or Adafactor (T5X's default), with optional global-norm clipping."""
    schedule = schedule or make_schedule()
    if name == "adamw":
        tx = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay)
    elif name == "adafactor":
        tx = optax.adafactor(schedule, multiply_by_parameter_scale=False, weight_decay_rate=weight_decay or None)
    else:
        raise ValueError(f"make_optimizer.name must be 'adamw' or 'adafactor', got {name!r}")
    return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm else tx


# ----------------------------------------------------------------------------- steps

def _reduce_metrics(sums: dict) -> dict:
    w = jnp.maximum(sums["weight_sum"], 1e-8)
    out = {"loss": sums["loss_sum"] / w, "tokens": sums["weight_sum"]}
    for k, v in sums.items():
        if k.endswith("_sum") and k not in ("loss_sum", "weight_sum"):
            out[k[:-4] if k != "correct_sum" else "accuracy"] = v / w
    return out


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, accum_steps: int = 1,
                    schedule: optax.Schedule | None = None):
    """(state, frozen, batch, rng) -> (state, metrics). Gradients only for state.params.

    With accum_steps > 1 the batch is split into that many microbatches along axis 0 and the
    summed gradients are normalised by the total weight, so the update equals the full-batch one."""

    def sums_and_grads(params, frozen, batch, rng):
        def f(p):
            sums = loss_fn(merge_params(p, frozen), batch, rng, False)
            return sums["loss_sum"], sums
        (_, sums), grads = jax.value_and_grad(f, has_aux=True)(params)
        return sums, grads

    def step(state: TrainState, frozen, batch, rng):
        rng = jax.random.fold_in(rng, state.step)
        if accum_steps == 1:
            sums, grads = sums_and_grads(state.params, frozen, batch, rng)
        else:
            micro = jax.tree_util.tree_map(
                lambda x: x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:]), batch)

            def body(carry, inputs):
                i, mb = inputs
                s, g = sums_and_grads(state.params, frozen, mb, jax.random.fold_in(rng, i))
                return jax.tree_util.tree_map(jnp.add, carry, (s, g)), None

            zero_sums = jax.tree_util.tree_map(
                jnp.zeros_like, jax.eval_shape(lambda: sums_and_grads(
                    state.params, frozen, jax.tree_util.tree_map(lambda x: x[0], micro), rng)))
            (sums, grads), _ = jax.lax.scan(body, zero_sums, (jnp.arange(accum_steps), micro))
        grads = jax.tree_util.tree_map(lambda g: g / jnp.maximum(sums["weight_sum"], 1e-8), grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = _reduce_metrics(sums)
        metrics["grad_norm"] = optax.tree.norm(grads)
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step)
        # A non-finite loss or gradient leaves params and optimizer state as they were (the loop
        # stops on `nonfinite`, see train_lib.train), so no NaN reaches a checkpoint.
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        params = jax.tree_util.tree_map(keep, params, state.params)
        opt_state = jax.tree_util.tree_map(keep, opt_state, state.opt_state)
        metrics["nonfinite"] = (~finite).astype(jnp.float32)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def make_eval_step(loss_fn: LossFn):
    """(params_trainable, frozen, batch) -> loss sums (summed across batches by the caller)."""

    def step(params, frozen, batch):
        return loss_fn(merge_params(params, frozen), batch, jax.random.PRNGKey(0), True)

    return step


# ----------------------------------------------------------------------------- partitioned setup

class Trainer:
    """Builds the jitted, sharded train/eval steps for one model, optimizer and mesh.

    boxed_abstract_params: `jax.eval_shape(model.init, ...)["params"]` (LogicallyPartitioned)."""

    def __init__(self, loss_fn: LossFn, tx: optax.GradientTransformation, partitioner: Partitioner,
                 boxed_abstract_params: Params, trainable_patterns: Sequence[str] = ("adapter/.*",),
                 accum_steps: int = 1, schedule: optax.Schedule | None = None):
        self.tx, self.partitioner = tx, partitioner
        self.trainable_patterns = tuple(trainable_patterns)
        boxed_train, boxed_frozen = split_trainable(boxed_abstract_params, self.trainable_patterns)
        self.abstract_trainable = nn.meta.unbox(boxed_train)
        self.abstract_frozen = nn.meta.unbox(boxed_frozen)
        self.trainable_shardings = partitioner.params_shardings(boxed_train)
        self.frozen_shardings = partitioner.params_shardings(boxed_frozen)
        # optax maps over the boxed params, so moments keep their names; counts and factored
        # Adafactor moments (whose rank differs) are replicated.
        opt_shardings = partitioner.tree_shardings(jax.eval_shape(tx.init, boxed_train))
        self.state_shardings = TrainState(step=partitioner.replicated, params=self.trainable_shardings,
                                          opt_state=opt_shardings)
        batch_sh = NamedSharding(partitioner.mesh, P("data"))
        rep = partitioner.replicated
        self.train_step = jax.jit(
            make_train_step(loss_fn, tx, accum_steps, schedule),
            in_shardings=(self.state_shardings, self.frozen_shardings, batch_sh, rep),
            out_shardings=(self.state_shardings, rep), donate_argnums=(0,))
        self.eval_step = jax.jit(
            make_eval_step(loss_fn), in_shardings=(self.trainable_shardings, self.frozen_shardings, batch_sh),
            out_shardings=rep)
        self._init_state = jax.jit(
            lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p)),
            in_shardings=(self.trainable_shardings,), out_shardings=self.state_shardings)

    def split(self, params: Params) -> tuple[dict, dict]:
        """Split unboxed params and place both parts with their shardings."""
        train, frozen = split_trainable(params, self.trainable_patterns)
        return (jax.device_put(train, self.trainable_shardings), jax.device_put(frozen, self.frozen_shardings))

    def init_state(self, trainable_params: Params) -> TrainState:
        return self._init_state(trainable_params)

    def abstract_state(self) -> TrainState:
        """ShapeDtypeStructs (with shardings) of the train state, for checkpoint restore."""
        shapes = jax.eval_shape(self._init_state, self.abstract_trainable)
        return jax.tree_util.tree_map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, self.state_shardings)
