"""Published per-chip peaks of TPU generations, and slice names -> compile-only topologies.

The numbers are the vendor's datasheet figures (cloud.google.com/tpu/docs, per chip): dense
bf16 matmul peak, HBM capacity and HBM bandwidth. They feed roofline *estimates*
(slm_jax.tpu_compile); nothing here is measured.
"""

from __future__ import annotations

import dataclasses
import re

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """One TPU chip as one JAX device sees it (v4 / v5p: megacore, both TensorCores)."""
    name: str
    device_kind: str        # jax Device.device_kind
    bf16_flops: float       # peak dense bf16 FLOP/s
    hbm_bytes: int
    hbm_bandwidth: float    # bytes/s

    @property
    def ridge_point(self) -> float:
        """FLOPs per HBM byte above which a step is compute-bound by the roofline."""
        return self.bf16_flops / self.hbm_bandwidth


CHIPS = {c.device_kind: c for c in (
    ChipSpec("v4", "TPU v4", 275e12, 32 * GiB, 1228e9),
    ChipSpec("v5e", "TPU v5 lite", 197e12, 16 * GiB, 819e9),
    ChipSpec("v5p", "TPU v5", 459e12, 95 * GiB, 2765e9),
    ChipSpec("v6e", "TPU v6 lite", 918e12, 32 * GiB, 1640e9),
)}

# Cloud TPU slice names (accelerator types) -> topology_name for
# jax.experimental.topologies.get_topology_desc. v4 / v5p names count TensorCores (2 per chip);
# v5e / v6e names count chips.
SLICES = {
    "v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2", "v4-32": "v4:2x2x4", "v4-64": "v4:2x4x4",
    "v4-128": "v4:4x4x4", "v4-256": "v4:4x4x8", "v4-512": "v4:4x8x8", "v4-1024": "v4:8x8x8",
    "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4", "v5p-64": "v5p:2x4x4",
    "v5p-128": "v5p:4x4x4", "v5p-256": "v5p:4x4x8", "v5p-512": "v5p:4x8x8",
    "v5e-1": "v5e:1x1", "v5e-4": "v5e:2x2", "v5e-8": "v5e:2x4", "v5e-16": "v5e:4x4",
    "v5e-32": "v5e:4x8", "v5e-64": "v5e:8x8", "v5e-128": "v5e:8x16", "v5e-256": "v5e:16x16",
    "v6e-1": "v6e:1x1", "v6e-4": "v6e:2x2", "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4",
    "v6e-32": "v6e:4x8", "v6e-64": "v6e:8x8", "v6e-128": "v6e:8x16", "v6e-256": "v6e:16x16",
}

_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):\d+(x\d+){1,2}$")


def topology_name(name: str) -> str:
    """A slice name ("v5e-256") or a topology ("v5e:16x16") -> the topology name."""
    if name in SLICES:
        return SLICES[name]
    if _TOPOLOGY.match(name):
        return name
    raise ValueError(f"unknown TPU slice or topology {name!r}: use one of {sorted(SLICES)} "
                     "or GEN:AxB[xC] with GEN in v4, v5e, v5p, v6e (e.g. v5e:16x16)")


def chip_for(device_kind: str) -> ChipSpec:
    if device_kind not in CHIPS:
        raise ValueError(f"no published peaks for device kind {device_kind!r} (known: {sorted(CHIPS)})")
    return CHIPS[device_kind]
