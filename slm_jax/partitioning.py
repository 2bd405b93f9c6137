"""Logical-axis rules: the one table mapping model axis names to mesh axes ("data", "model").

Modules only name logical axes (see `LOGICAL_AXES`); this table decides how they are laid out
on a mesh. Names absent from the table are replicated.
"""

from __future__ import annotations

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
)
