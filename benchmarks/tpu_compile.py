"""Compile the real train / eval / decode steps of a gin config for a TPU slice, on this CPU host,
and print per-device memory (XLA), flops, and a roofline step-time estimate (slm_jax.tpu_compile).

    python benchmarks/tpu_compile.py --gin_file=gin/tpu/paper.gin --topology=v5e-256 \
        [--num_slices=1] [--global_batch=256] [--audio_seconds=30] [--steps=train,eval,decode] \
        [--frozen_dtype=bfloat16|none] [--json=out.json] [--serialize_dir=DIR] [--gin.BINDING=VALUE ...]

Exit status 0 when every compiled step fits the chip's HBM, 3 when one does not (the table says
by how much), so a launcher can refuse the config before creating TPU VMs. Needs `libtpu`
(`pip install -e '.[tpu]'`); JAX itself stays on the CPU. The flags override CompileConfig's
gin bindings; RunConfig's model, mesh and trainable patterns come from the gin files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TPU_STDERR_LOG_LEVEL", "3")
os.environ.setdefault("TPU_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slm_jax import configs, gin_utils, tpu_compile  # noqa: E402,F401
from slm_jax.train_lib import RunConfig  # noqa: E402

NOT_FITTING = 3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gin_file", action="append", default=[], required=True)
    p.add_argument("--topology", help="slice (v5e-256) or topology (v5e:16x16)")
    p.add_argument("--num_slices", type=int)
    p.add_argument("--global_batch", type=int)
    p.add_argument("--audio_seconds", type=float)
    p.add_argument("--instruction_len", type=int)
    p.add_argument("--target_len", type=int)
    p.add_argument("--decode_len", type=int)
    p.add_argument("--decode_batch", type=int)
    p.add_argument("--steps", help="comma-separated, from train,eval,decode")
    p.add_argument("--frozen_dtype", help="bfloat16, float32, or none (as initialised)")
    p.add_argument("--serialize_dir")
    p.add_argument("--json", help="also write the report as JSON here")
    p.add_argument("--title", default="")
    args, rest = p.parse_known_args(argv)
    bindings = []
    for flag in rest:
        if not flag.startswith("--gin."):
            p.error(f"unknown flag {flag!r}")
        bindings.append(flag[len("--gin."):])
    gin_utils.parse_config(args.gin_file, bindings)
    overrides = {k: getattr(args, k) for k in ("topology", "num_slices", "global_batch", "audio_seconds",
                                               "instruction_len", "target_len", "decode_len", "decode_batch",
                                               "serialize_dir") if getattr(args, k) is not None}
    if args.steps:
        overrides["steps"] = tuple(args.steps.split(","))
    if args.frozen_dtype:
        overrides["frozen_dtype"] = None if args.frozen_dtype.lower() == "none" else args.frozen_dtype
    cfg = tpu_compile.CompileConfig(**overrides)
    run = RunConfig(run_dir=gin_utils.query("RunConfig.run_dir") or "(compile only)")
    report = tpu_compile.compile_steps(run.model, cfg, mesh=run.mesh, trainable_patterns=run.trainable_patterns,
                                       accum_steps=run.accum_steps, train_steps=run.train_steps)
    print()
    print(tpu_compile.format_report(report, args.title or ", ".join(args.gin_file)))
    print("\n(per device; GFLOP and GB counted from the step's jaxpr, roofline time and MFU are estimates "
          "at published peaks, not measurements; memory is XLA's)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(tpu_compile.report_dict(report), f, indent=1, default=str)
    if not report.fits():
        print(f"\n!! does not fit {report.chip.name}'s {report.chip.hbm_bytes / 2 ** 30:g} GiB HBM", flush=True)
        return NOT_FITTING
    return 0


if __name__ == "__main__":
    sys.exit(main())
