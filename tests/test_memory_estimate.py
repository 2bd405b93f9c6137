"""benchmarks/memory_estimate.py: the abstract per-device memory estimate of the paper config.
Sharding accounting, the Partitioner's divisibility rule (checked against the real Partitioner on
an 8-device mesh), hand-computed leaves and activations, optimizer state, FSDP, the printed table."""

import importlib.util
import sys
from pathlib import Path

import jax
import flax.linen as nn
import pytest

from slm_jax import configs
from slm_jax.models.slm import param_counts
from slm_jax.partitioning import MeshConfig, Partitioner, axis_rules, make_mesh

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("memory_estimate", REPO / "benchmarks/memory_estimate.py")
me = importlib.util.module_from_spec(_spec)
sys.modules["memory_estimate"] = me   # dataclasses look their module up
_spec.loader.exec_module(me)

SLICES = [me.SLICES["v4-128"], me.SLICES["v5e-256"]]


@pytest.fixture(scope="module")
def paper():
    config = me.paper_config()
    return config, me.abstract_boxed(config)


@pytest.fixture(scope="module")
def estimates(paper):
    config, boxed = paper
    return {(s.name, opt, fsdp): me.estimate(config, s, optimizer=opt, fsdp=fsdp, boxed=boxed)
            for s in SLICES for opt in ("adafactor", "adamw") for fsdp in (False, True)}


def _frozen(e):
    return sum(v for k, v in e.rows.items() if k.startswith("frozen"))


def test_numbers_positive_and_fsdp_shrinks_frozen_params(estimates):
    for (name, opt, fsdp), e in estimates.items():
        assert all(v > 0 for v in e.rows.values()), (name, opt, fsdp, e.rows)
        assert all(v > 0 for v in e.notes.values())
        assert e.total == sum(e.rows.values()) > 0
    for s in SLICES:
        for opt in ("adafactor", "adamw"):
            plain, fsdp = estimates[(s.name, opt, False)], estimates[(s.name, opt, True)]
            assert _frozen(fsdp) < _frozen(plain)
            # nearly every frozen byte is also cut over "data": about data x smaller
            assert _frozen(plain) / _frozen(fsdp) > 0.9 * s.data
            assert fsdp.rows["trainable params (f32)"] < plain.rows["trainable params (f32)"]


def test_sharding_accounting_is_consistent(paper, estimates):
    config, boxed = paper
    n_params = param_counts(nn.meta.unbox(boxed))["total"]
    for (name, _, _), e in estimates.items():
        params = e.frozen + e.trainable
        assert me.total_bytes(params) == 4 * n_params           # f32 as stored, every leaf once
        for leaf in params + e.opt_state:
            # the rule shards only dimensions the mesh axis divides: the pieces tile the array exactly
            assert leaf.device_bytes * leaf.shards == leaf.total_bytes, leaf
        # summed over devices, each device's share covers everything (replicas counted again)
        assert me.device_bytes(params) * e.slice.chips >= me.total_bytes(params)
        assert me.device_bytes(params) * e.slice.chips > me.total_bytes(params)  # norms etc. are replicated


def test_hand_computed_leaves(estimates):
    def leaf(e, path):
        return next(x for x in e.frozen + e.trainable if x.path == path)

    emb = "['llm']['token_embedder']['embedding']"              # [250112, 4096] ("vocab", "embed")
    v4 = estimates[("v4-128", "adamw", False)]
    assert leaf(v4, emb).spec == ("model", None)
    assert leaf(v4, emb).device_bytes == 250112 // 8 * 4096 * 4 == 512_229_376
    v4f = estimates[("v4-128", "adamw", True)]
    assert leaf(v4f, emb).spec == ("model", "data")
    assert leaf(v4f, emb).device_bytes == 250112 // 8 * (4096 // 8) * 4 == 64_028_672
    v5f = estimates[("v5e-256", "adamw", True)]
    assert leaf(v5f, emb).device_bytes == 250112 // 8 * (4096 // 32) * 4 == 16_007_168
    # adapter input projection [1536, 2560] (None, "embed"): replicated unless FSDP
    proj = "['adapter']['input_proj']['kernel']"
    assert leaf(v4, proj).spec == (None, None) and leaf(v4, proj).device_bytes == 1536 * 2560 * 4
    assert leaf(v5f, proj).spec == (None, "data") and leaf(v5f, proj).device_bytes == 1536 * 2560 // 32 * 4


def test_divisibility_rule():
    mesh = {"data": 2, "model": 4}
    rules = dict(axis_rules(False))
    assert me.mesh_axes_for(("vocab", "embed"), (259, 32), rules, mesh) == (None, None)      # 259 % 4 != 0
    assert me.mesh_axes_for(("vocab", "embed"), (256, 32), rules, mesh) == ("model", None)
    assert me.mesh_axes_for(("vocab", "embed"), (259, 32), dict(axis_rules(True)), mesh) == (None, "data")
    assert me.mesh_axes_for(("heads", "mlp"), (64, 512), rules, mesh) == ("model", None)     # once per array
    assert me.mesh_axes_for(("heads", "mlp"), (6, 512), rules, mesh) == (None, "model")      # 6 % 4: next one
    with pytest.raises(ValueError, match="LOGICAL_AXES"):
        me.mesh_axes_for(("nonsense",), (8,), rules, mesh)


@pytest.mark.parametrize("fsdp", [False, True])
@pytest.mark.parametrize("which", ["paper", "tiny"])
def test_rule_matches_the_partitioner_on_a_real_mesh(paper, fsdp, which):
    """Every leaf gets the same spec and per-device shape as from the real Partitioner on the
    simulated 2x4 CPU mesh (the tiny model's 259-entry vocabulary does not divide by 4)."""
    boxed = paper[1] if which == "paper" else me.abstract_boxed(configs.tiny_slm())
    part = Partitioner(make_mesh(MeshConfig(data=2, model=4)), fsdp=fsdp)
    mesh, rules = {"data": 2, "model": 4}, dict(axis_rules(fsdp))
    leaves = me.layout(boxed, rules, mesh)
    shardings = jax.tree_util.tree_leaves(part.params_shardings(boxed))
    boxes = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert len(leaves) == len(shardings) == len(boxes) > 20
    undivided = 0
    for leaf, sh, box in zip(leaves, shardings, boxes):
        spec = tuple(sh.spec) + (None,) * (len(leaf.shape) - len(sh.spec))
        assert spec == leaf.spec, leaf.path
        assert tuple(sh.shard_shape(leaf.shape)) == leaf.device_shape, leaf.path
        undivided += any(rules.get(n) and d % mesh[rules[n]] for n, d in zip(box.names, leaf.shape))
    if which == "tiny":
        assert undivided > 0   # the comparison covers dimensions the rule must leave replicated


def test_optimizer_state(estimates):
    for s in SLICES:
        for fsdp in (False, True):
            adamw, ada = estimates[(s.name, "adamw", fsdp)], estimates[(s.name, "adafactor", fsdp)]
            train = me.device_bytes(adamw.trainable)
            # AdamW: mu and nu shaped and sharded like the adapter, plus replicated int32 step counts
            assert 2 * train <= adamw.rows["optimizer state"] <= 2 * train + 64
            moments = [x for x in adamw.opt_state if x.shape != ()]
            key = lambda x: (x.shape, str(x.spec))  # noqa: E731
            assert sorted(map(key, moments)) == sorted(map(key, adamw.trainable + adamw.trainable))
            # Adafactor: factored second moments only, far smaller than the params themselves (in
            # total; per device they are replicated, so with FSDP on 256 chips they are ~10% of
            # the sharded adapter)
            assert 0 < me.total_bytes(ada.opt_state) < me.total_bytes(ada.trainable) / 20
            assert ada.rows["optimizer state"] < adamw.rows["optimizer state"] / 10


def test_activation_formula_by_hand(paper):
    config, _ = paper
    shapes = me.Shapes(3000, 64, 128)
    acts = me.activation_bytes(config, 1, shapes, model_axis=8)
    assert acts["lengths"] == dict(frames=3000, speech_encoder=750, adapter=188, llm_encoder=252, llm_decoder=128)
    S, d, n, dk, f = 252, 4096, 64 // 8, 64, 10240 // 8
    per_layer = (2 * S * d + 3 * S * n * dk + 2 * S * f) * 2 + n * S * S * 4     # bf16 + f32 probs
    assert acts["saved"]["llm_encoder"] == 24 * per_layer
    assert acts["saved"]["logits"] == 128 * (250112 // 8) * 4
    double = me.activation_bytes(config, 2, shapes, model_axis=8)
    for k in acts["saved"]:
        assert double["saved"][k] == 2 * acts["saved"][k]
    assert 0 < acts["saved_with_remat"] < sum(acts["saved"].values()) + max(acts["transient"].values())


def test_table_for_two_slices_and_a_slice_that_does_not_fit(paper, capsys):
    out = me.main(["--slices", "v4-128,v5e-256", "--custom", "small:8:2:8x1"])
    text = capsys.readouterr().out
    for name in ("v4-128", "v5e-256", "small"):
        assert f"== {name}:" in text
    assert text.count("fits in 90%") == 3 and "max per-device batch that fits" in text
    assert all(e.fits for e in out["v4-128"]) and not any(e.fits for e in out["small"])
    assert "!! small adafactor: " in text and "NO (+" in text
    # the largest batch that fits does fit, and one more does not
    config, boxed = paper
    e = out["v5e-256"][0]
    b = me.max_batch_that_fits(config, e, me.Shapes(3000, 64, 128))
    assert me.estimate(config, e.slice, batch_per_device=b, boxed=boxed).fits
    assert not me.estimate(config, e.slice, batch_per_device=b + 1, boxed=boxed).fits
