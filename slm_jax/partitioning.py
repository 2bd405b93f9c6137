"""Logical-axis rules: the one table mapping model axis names to mesh axes ("data", "model").

Modules only name logical axes (see `LOGICAL_AXES`); this table decides how they are laid out
on a mesh. Every name in LOGICAL_AXES has a rule. A name outside LOGICAL_AXES is an error:
`Partitioner.sharding` raises ValueError (`check_logical_axes`) rather than replicate it.
A dimension is replicated where its rule maps to None, where its mesh axis already shards
another dimension of the same array, or where the mesh axis size does not divide it; parameters
without logical names are replicated.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import gin
import jax
import numpy as np
import flax.linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Logical axis names used by the model families. Activations: batch, length, embed, heads, kv,
# mlp, vocab. Parameters additionally use the names below.
LOGICAL_AXES = (
    "batch",           # examples in a batch (activations)
    "length",          # time / token positions (activations)
    "embed",           # model width (d_model)
    "mlp",             # feed-forward hidden width
    "heads",           # attention heads
    "kv",              # per-head width
    "vocab",           # token vocabulary
    "relpos_buckets",  # T5 relative-position buckets / Conformer relative distances
    "mel",             # input feature channels (log-mel bins)
    "conv_width",      # convolution kernel taps
    "conv_in",         # convolution input channels (non-depthwise)
    "layers",          # the stacked-layer axis of scanned stacks (models.layers.layer_stack)
)

# (logical name, mesh axis or None). FSDP-style: large frozen weights shard their "embed" axis
# over "data" when `fsdp=True` (see `axis_rules`).
LOGICAL_AXIS_RULES = (
    ("batch", "data"),
    ("length", None),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("vocab", "model"),
    ("relpos_buckets", None),
    ("mel", None),
    ("conv_width", None),
    ("conv_in", None),
    ("layers", None),       # every device holds its shard of every layer (scan slices it)
)


MESH_AXES = ("data", "model")


def axis_rules(fsdp: bool = False) -> tuple[tuple[str, str | None], ...]:
    """The rules table, optionally sharding "embed" over "data" (FSDP for big frozen weights).
    It has a rule for every name in LOGICAL_AXES and checks nothing itself: `Partitioner`
    rejects names outside LOGICAL_AXES (`check_logical_axes`), while flax's
    `nn.logical_to_mesh_axes` given this table would replicate them."""
    rules = dict(LOGICAL_AXIS_RULES)
    if fsdp:
        rules["embed"] = "data"
    return tuple(rules.items())


def check_logical_axes(specs) -> None:
    """Raise if a logical spec tree names an axis outside LOGICAL_AXES."""
    for spec in jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, P)):
        for name in spec:
            if name is not None and name not in LOGICAL_AXES:
                raise ValueError(f"logical axis {name!r} is not in partitioning.LOGICAL_AXES")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape: `data` x `model` devices. -1 for `data` means "all remaining devices"."""
    data: int = -1
    model: int = 1
    fsdp: bool = False


def make_mesh(config: MeshConfig | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """A ("data", "model") mesh over `devices` (default: all global, multi-host devices).
    config None: `MeshConfig()`, built at the call, so gin bindings of MeshConfig apply."""
    config = MeshConfig() if config is None else config
    devices = list(devices if devices is not None else jax.devices())
    model = config.model
    data = config.data if config.data != -1 else len(devices) // model
    if data * model != len(devices) or data < 1:
        raise ValueError(f"MeshConfig data={config.data} x model={config.model} does not fit "
                         f"{len(devices)} devices")
    return Mesh(np.asarray(devices).reshape(data, model), MESH_AXES)


class Partitioner:
    """Turns logical axis annotations into NamedShardings on one mesh with one rules table."""

    def __init__(self, mesh: Mesh, fsdp: bool = False):
        self.mesh = mesh
        self.rules = axis_rules(fsdp)

    def sharding(self, names: Sequence[str | None], shape: Sequence[int]) -> NamedSharding:
        """NamedSharding for an array of `shape` whose axes have logical `names`.

        A mesh axis is used at most once per array, and only where it divides the dimension:
        otherwise that dimension is replicated (e.g. a 259-entry byte vocabulary on 4 model
        shards) instead of failing."""
        check_logical_axes(P(*names))
        rules = dict(self.rules)
        used, spec = set(), []
        for name, dim in zip(names, shape):
            axis = rules.get(name) if name is not None else None
            if axis is None or axis in used or dim % self.mesh.shape[axis]:
                spec.append(None)
            else:
                used.add(axis)
                spec.append(axis)
        return NamedSharding(self.mesh, P(*spec))

    def tree_shardings(self, boxed_abstract):
        """Shardings for a tree whose leaves are nn.LogicallyPartitioned (names + shape);
        leaves without names (or whose names do not fit their rank) are replicated."""
        def one(x):
            if isinstance(x, nn.LogicallyPartitioned) and len(x.names) == len(x.value.shape):
                return self.sharding(x.names, x.value.shape)
            return self.replicated
        return jax.tree_util.tree_map(one, boxed_abstract, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))

    params_shardings = tree_shardings

    def batch_sharding(self, ndim: int) -> NamedSharding:
        """Batch arrays: leading axis over "data", the rest replicated."""
        return NamedSharding(self.mesh, P("data", *([None] * (ndim - 1))))

    def check_batch_size(self, batch_size: int, knob: str = "batch size") -> None:
        """A ValueError naming `knob` (the user's setting, e.g. "TrainConfig.batch_size") when
        `batch_size` rows cannot be split evenly over the mesh's "data" axis."""
        n = self.mesh.shape["data"]
        if batch_size % n:
            fits = ", ".join(str(n * k) for k in range(max(1, batch_size // n), batch_size // n + 3))
            raise ValueError(f"{knob}={batch_size} is not divisible by the mesh's 'data' axis of size {n} "
                             f"({self.mesh.size} devices, MeshConfig.data={n} x MeshConfig.model="
                             f"{self.mesh.shape['model']}): use a multiple of {n} (e.g. {fits}) or another mesh")

    def batch_shardings(self, batch):
        return jax.tree_util.tree_map(lambda x: self.batch_sharding(np.ndim(x)), batch)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def shard_batch(self, batch):
        """Place a host-local numpy batch on the mesh (single- or multi-process)."""
        if jax.process_count() == 1:
            return jax.device_put(batch, self.batch_shardings(batch))
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(self.batch_sharding(np.ndim(x)), x), batch)
