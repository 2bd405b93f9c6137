"""slm_jax.tpu_compile: the tiny SLM's real train / eval / decode steps compile for a v5e:2x2
topology from this CPU host (libtpu's compile-only client), with the shardings the rules table
gives; jaxpr cost counting multiplies loop bodies; JAX's default backend stays the CPU."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

pytest.importorskip("libtpu", reason="libtpu (the compile-only TPU client) is not installed")

from slm_jax import chips, configs, tpu_compile  # noqa: E402
from slm_jax.partitioning import MeshConfig  # noqa: E402
from slm_jax.task_model import SLMTaskModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CFG = tpu_compile.CompileConfig(topology="v5e:2x2", global_batch=4, audio_seconds=0.64, instruction_len=8,
                                target_len=8, decode_len=4)


def tiny_model(**llm):
    # vocab 256 and widths that 2 model shards divide, so nothing is replicated for lack of divisibility
    c = configs.tiny_slm(vocab_size=256)
    return SLMTaskModel(dataclasses.replace(c, llm=dataclasses.replace(c.llm, **llm)))


@pytest.fixture(scope="module")
def report():
    return tpu_compile.compile_steps(tiny_model(), CFG, mesh=MeshConfig(data=2, model=2, fsdp=True),
                                     log=lambda s: None)


def specs(shardings):
    return jax.tree_util.tree_map(lambda s: tuple(s.spec), shardings,
                                  is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))


def test_default_backend_stays_cpu(report):
    assert jax.default_backend() == "cpu"
    assert all(d.platform == "cpu" for d in jax.devices())
    assert report.n_devices == 4 and report.chip.name == "v5e"


def test_every_step_compiles_and_fits(report):
    assert [s.step for s in report.steps] == ["train", "eval", "decode"]
    for s in report.steps:
        assert s.oom is None and s.compiled is not None
        assert 0 < s.total_bytes < report.chip.hbm_bytes
        assert s.argument_bytes > 0 and s.flops > 0 and s.bytes_accessed > 0
    assert report.fits()
    train = report.steps[0]
    assert train.alias_bytes > 0           # the train state is donated
    table = tpu_compile.format_report(report, "tiny")
    assert "| train |" in table and "| decode |" in table and "roofline" in table
    json.dumps(tpu_compile.report_dict(report), default=str)


def test_shardings_follow_the_rules(report):
    train = report.steps[0].compiled
    state_in, frozen_in, batch_in, _ = train.input_shardings[0]
    frozen = specs(frozen_in)
    llm = frozen["llm"]
    # vocabulary over "model", the FSDP "embed" axis over "data": neither matrix replicated
    assert llm["token_embedder"]["embedding"] == ("model", "data")
    assert llm["lm_head"]["kernel"] == ("data", "model")
    mlp = llm["encoder"]["layers_0"]["mlp"]
    assert mlp["wi_0"]["kernel"] == ("data", "model") and mlp["wo"]["kernel"] == ("model", "data")
    attn = llm["decoder"]["layers_0"]["self_attention"]
    assert attn["query"]["kernel"] == ("data", "model", None)
    ffn = frozen["speech_encoder"]["layers_0"]["ffn1"]["intermediate_dense"]["kernel"]
    assert ffn == ("data", "model")
    assert specs(batch_in)["features"] == ("data",)
    # the state comes out laid out as it went in (no resharding between steps)
    state_out = train.output_shardings[0]
    assert specs(state_out.params) == specs(state_in.params)
    assert specs(state_in.params)["adapter"]["layer_0"]["ffn_in"]["kernel"] == ("data", "model")


def test_decode_step_shardings(report):
    params_in, batch_in = report.steps[2].compiled.input_shardings[0]
    p = specs(params_in)
    assert p["llm"]["token_embedder"]["embedding"] == ("model", "data")
    assert p["adapter"]["output_proj"]["kernel"] == (None, "data")
    tokens, scores = report.steps[2].compiled.output_shardings
    assert tuple(tokens.spec) == ("data",)


def test_frozen_weights_stored_bf16_halve_their_bytes_and_executables_serialise(tmp_path):
    model = tiny_model()
    kw = dict(mesh=MeshConfig(data=4, model=1), log=lambda s: None)
    f32 = tpu_compile.compile_steps(model, dataclasses.replace(CFG, steps=("eval",), frozen_dtype=None), **kw)
    bf16 = tpu_compile.compile_steps(model, dataclasses.replace(CFG, steps=("eval",), serialize_dir=str(tmp_path)),
                                     **kw)
    assert (tmp_path / "eval.pkl").stat().st_size > 0
    frozen = f32.param_counts["frozen"]
    saved = f32.steps[0].argument_bytes - bf16.steps[0].argument_bytes
    assert saved >= 2 * frozen * 0.9          # ~2 bytes per frozen parameter (replicated on a 4x1 mesh)


def test_jaxpr_costs_multiply_loop_bodies():
    def unrolled(ws, x):
        for i in range(ws.shape[0]):
            x = jnp.tanh(x @ ws[i])
        return x.sum()

    def scanned(ws, x):
        return jax.lax.scan(lambda x, w: (jnp.tanh(x @ w), None), x, ws)[0].sum()

    ws, x = jax.ShapeDtypeStruct((6, 64, 32 * 2), jnp.float32), jax.ShapeDtypeStruct((16, 64), jnp.float32)
    ws = jax.ShapeDtypeStruct((6, 64, 64), jnp.float32)
    expected = 6 * 2 * 16 * 64 * 64
    for fn in (unrolled, scanned):
        c = tpu_compile.jaxpr_costs(jax.make_jaxpr(fn)(ws, x), [True, False], n_devices=4, model_shards=2)
        assert c.flops == pytest.approx(expected / 4)
        # per layer: the weight read over 2 model shards, activations in and out over 4 devices
        assert c.bytes == pytest.approx(6 * (64 * 64 * 4 / 2 + 2 * 16 * 64 * 4 / 4) + 16 * 64 * 4 / 4)

    def loop(x):
        return jax.lax.fori_loop(0, 5, lambda i, x: x @ x, x)

    c = tpu_compile.jaxpr_costs(jax.make_jaxpr(loop)(jax.ShapeDtypeStruct((8, 8), jnp.float32)), [False],
                                n_devices=1, model_shards=1, while_trips=5)
    assert c.flops == 5 * 2 * 8 ** 3


def test_out_of_memory_messages_are_read():
    msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
           "(56.33G) exceeds available HBM (15.75G).")
    assert tpu_compile.oom_excess(msg) == pytest.approx(40.58 * 2 ** 30)
    assert tpu_compile.oom_excess("Used 20G of 16G hbm. Exceeded hbm capacity by 4.5G.") == 4.5 * 2 ** 30
    assert tpu_compile.oom_excess("something else") is None


def test_slice_names():
    assert chips.topology_name("v5e-256") == "v5e:16x16"
    assert chips.topology_name("v4:4x4x4") == "v4:4x4x4"
    with pytest.raises(ValueError, match="unknown TPU slice"):
        chips.topology_name("v9-8")
    assert len(tpu_compile.tpu_devices("v4-8")) == 4        # megacore: one device per chip
    assert chips.CHIPS["TPU v5 lite"].ridge_point == pytest.approx(197e12 / 819e9)


def test_entry_point_refuses_a_config_that_does_not_fit(tmp_path):
    # 8 GiB each of f32 embedding and lm_head, replicated on a 4x1 mesh: more than a v5e chip holds
    out = tmp_path / "report.json"
    cmd = [sys.executable, str(REPO / "benchmarks/tpu_compile.py"), "--gin_file=gin/models/tiny.gin",
           "--topology=v5e:2x2", "--global_batch=4", "--audio_seconds=0.64", "--instruction_len=8",
           "--target_len=8", "--steps=eval", "--frozen_dtype=float32", f"--json={out}",
           "--gin.slm_jax.T5Config.vocab_size=262144", "--gin.slm_jax.T5Config.d_model=8192",
           "--gin.slm_jax.AdapterConfig.output_dim=8192"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "does not fit" in proc.stdout
    data = json.loads(out.read_text())
    assert data["fits"] is False and data["steps"][0]["step"] == "eval"
