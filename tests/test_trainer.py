"""Trainer: sharded steps match a single device, frozen weights stay frozen, accumulation,
checkpoint resume, config mismatch, and end-to-end overfitting through train_lib / eval_lib with
configs built from gin as `python -m slm_jax.main` builds them."""

import dataclasses
import json
import os
import re

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from helpers import FEATURE_LENGTHS, fixed_examples, pretrain_tiny_llm, register_fixed_task, tiny_run
from slm_jax import configs, eval_lib, gin_utils, speech_windows, train_lib
from slm_jax.array_memo import ArrayMemo, array_key
from slm_jax.checkpoints.hf_common import CheckpointError
from slm_jax.data import get_batches
from slm_jax.partitioning import MeshConfig, Partitioner, make_mesh
from slm_jax.task_model import SLMTaskModel
from slm_jax.trainer import Trainer, make_schedule, merge_params, split_trainable


def batches(n, batch_size=8):
    it = get_batches(register_fixed_task(), "train", feature_lengths=FEATURE_LENGTHS, batch_size=batch_size, seed=3)
    return [next(it) for _ in range(n)]


def build(data, model_axis, config=None, patterns=("adapter/.*",), accum=1, tx=None):
    model = SLMTaskModel(config or configs.tiny_slm(adapter_layers=1))
    mesh = make_mesh(MeshConfig(data=data, model=model_axis), devices=jax.devices()[:data * model_axis])
    part = Partitioner(mesh)
    trainer = Trainer(model.loss_fn, tx or optax.adamw(3e-3), part, model.abstract_params(), patterns, accum_steps=accum)
    params = nn.meta.unbox(model.init_boxed(jax.random.PRNGKey(0)))
    train, frozen = trainer.split(params)
    return model, part, trainer, trainer.init_state(train), frozen


def run_steps(setup, data):
    _, part, trainer, state, frozen = setup
    losses = []
    for b in data:
        state, m = trainer.train_step(state, frozen, part.shard_batch(b), jax.random.PRNGKey(1))
        losses.append(float(m["loss"]))
    return state, losses


@pytest.mark.parametrize("shape", [(2, 4), (8, 1)])
def test_sharded_step_matches_single_device(shape):
    # SGD: the update is linear in the gradient, so parameter differences reflect the sharded
    # computation itself (Adam's m/sqrt(v) would amplify float noise of near-zero gradients).
    data = batches(2)
    ref_state, ref_losses = run_steps(build(1, 1, tx=optax.sgd(0.5)), data)
    state, losses = run_steps(build(*shape, tx=optax.sgd(0.5)), data)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)          # tolerance: float32 reduction order
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert len(jax.tree_util.tree_leaves(state.params)[0].sharding.device_set) == shape[0] * shape[1]


def test_frozen_weights_untouched_and_optimizer_covers_adapter_only():
    setup = build(2, 4)
    frozen_before = jax.tree_util.tree_map(np.array, setup[4])
    state, losses = run_steps(setup, batches(3))
    assert losses[-1] < losses[0]
    for a, b in zip(jax.tree_util.tree_leaves(frozen_before), jax.tree_util.tree_leaves(setup[4])):
        assert np.array_equal(a, np.asarray(b))  # bit-identical
    assert set(state.params) == {"adapter"} and "adapter" not in setup[4]
    param_struct = jax.tree_util.tree_structure(state.params)
    adam = state.opt_state[0]
    assert jax.tree_util.tree_structure(adam.mu) == param_struct
    assert jax.tree_util.tree_structure(adam.nu) == param_struct
    n_opt = sum(x.size for x in jax.tree_util.tree_leaves(state.opt_state))
    n_adapter = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    assert n_opt == 2 * n_adapter + 1  # mu, nu, and one step count


def _weight_grad_ops(hlo: str, shape: tuple[int, int]) -> int:
    """HLO instructions (dots and fusions) whose *result* has the given weight shape."""
    pat = re.compile(r"=\s*f32\[%d,%d\]\{[^}]*\}\s+(dot|fusion|convolution)\(" % shape)
    return len(pat.findall(hlo))


def test_compiled_step_computes_no_frozen_weight_gradients():
    # odd widths make the frozen FFN kernels' shapes unique: T5 wi [32, 37], Conformer ffn [32, 41]
    base = configs.tiny_slm()
    cfg = dataclasses.replace(base, llm=dataclasses.replace(base.llm, d_ff=37),
                              speech_encoder=dataclasses.replace(base.speech_encoder, intermediate_size=41))
    b = batches(1)[0]
    counts = {}
    for name, patterns in (("adapter", ("adapter/.*",)), ("full", (".*",))):
        _, part, trainer, state, frozen = build(1, 1, cfg, patterns)
        hlo = trainer.train_step.lower(state, frozen, part.shard_batch(b), jax.random.PRNGKey(0)).compile().as_text()
        counts[name] = (_weight_grad_ops(hlo, (32, 37)), _weight_grad_ops(hlo, (32, 41)))
    assert counts["adapter"] == (0, 0), counts
    assert counts["full"][0] > 0 and counts["full"][1] > 0, counts  # the check does see weight gradients


def test_gradient_accumulation_equals_full_batch():
    data = batches(2)
    s1, l1 = run_steps(build(1, 1, tx=optax.sgd(0.5)), data)
    s2, l2 = run_steps(build(1, 1, accum=4, tx=optax.sgd(0.5)), data)
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s2.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_split_and_merge_roundtrip():
    params = {"adapter": {"w": 1}, "llm": {"a": {"b": 2}}, "speech_encoder": {"c": 3}}
    t, f = split_trainable(params, ["adapter/.*"])
    assert t == {"adapter": {"w": 1}} and merge_params(t, f) == params
    with pytest.raises(ValueError, match="match no parameter"):
        split_trainable(params, ["nothing/.*"])


# ----------------------------------------------------------------------------- train_lib / eval_lib

def _train(run_dir, *bindings):
    """train_lib.train with the configs gin builds from tiny.gin + bindings (main's train mode)."""
    tiny_run(run_dir, *bindings)
    return train_lib.train(train_lib.RunConfig(), train_lib.TrainConfig())


def _eval(run_dir, *bindings, data=None):
    """eval_lib.evaluate_run at the run's latest checkpoint (main's eval mode)."""
    tiny_run(run_dir, *bindings)
    return eval_lib.evaluate_run(train_lib.RunConfig(), eval_lib.EvalConfig(), data)


def _losses(run_dir):
    with open(os.path.join(run_dir, "train_metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def test_resume_reproduces_uninterrupted_loss_curve(tmp_path):
    common = ["RunConfig.train_steps=10", "TrainConfig.log_every=1", "RunConfig.save_every=4"]
    _train(tmp_path / "full", *common)
    _train(tmp_path / "split", *common, "TrainConfig.stop_after=6")   # "preempted" at step 6
    assert max(_losses(tmp_path / "split")) == 6
    _train(tmp_path / "split", *common)                                # resumes from step 6
    full, split = _losses(tmp_path / "full"), _losses(tmp_path / "split")
    assert sorted(split) == list(range(1, 11))
    np.testing.assert_allclose([split[s] for s in range(1, 11)], [full[s] for s in range(1, 11)], rtol=1e-6)


def test_sigterm_saves_ends_the_process_and_the_rerun_resumes(tmp_path, monkeypatch):
    """A scheduler's SIGTERM at step 3: the step is checkpointed and train() ends the process
    with status 143 (so a pipeline such as the demo does not go on to its next stage); the same
    command then finishes the run with the uninterrupted loss curve."""
    import signal
    from slm_jax.checkpoints.manager import TrainCheckpointer
    common = ["RunConfig.train_steps=6", "TrainConfig.log_every=1", "RunConfig.save_every=100"]
    save, before = TrainCheckpointer.maybe_save, signal.getsignal(signal.SIGTERM)

    def maybe_save(self, step, state, force=False):
        if step == 3 and not force:
            os.kill(os.getpid(), signal.SIGTERM)    # handled by the run's handler: sets preempted
        return save(self, step, state, force=force)

    monkeypatch.setattr(TrainCheckpointer, "maybe_save", maybe_save)
    with pytest.raises(SystemExit) as stopped:
        _train(tmp_path / "run", *common)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert max(_losses(tmp_path / "run")) == 3
    assert signal.getsignal(signal.SIGTERM) == before     # the run's handler was removed again
    monkeypatch.undo()
    _train(tmp_path / "run", *common)
    _train(tmp_path / "full", *common)
    run, full = _losses(tmp_path / "run"), _losses(tmp_path / "full")
    assert sorted(run) == list(range(1, 7))
    np.testing.assert_allclose([run[s] for s in range(1, 7)], [full[s] for s in range(1, 7)], rtol=1e-6)


def test_eval_sample_is_built_once_per_task_and_reused_across_models(tmp_path, monkeypatch):
    """An EvalDataCache keeps bounded samples (EvalConfig.max_examples=N) in memory: a second
    evaluation sharing it builds no new input pipeline and scores identical data, so does another
    model (the same targets, in the same order), a re-registered task (a new task object under
    the same name) is read again, and an evaluation without the cache builds its own pipeline."""
    import seqio
    built = []
    real = eval_lib.get_batches
    monkeypatch.setattr(eval_lib, "get_batches", lambda name, *a, **k: (built.append(name), real(name, *a, **k))[1])
    task = register_fixed_task("test_fixed_asr_eval_memo")
    args = ["EvalConfig.max_examples=3", f"EvalConfig.eval_tasks=['{task}']"]
    data = eval_lib.EvalDataCache()

    def targets(run_dir):
        (path,) = (run_dir / "eval").glob(f"{task}*.jsonl")
        return [json.loads(line)["target"] for line in path.read_text().splitlines()]

    first = _eval(tmp_path / "a", *args, data=data)[task]
    assert first["num_examples"] == 3 and built == [task]
    again = _eval(tmp_path / "b", *args, data=data)[task]                                   # same model: same scores
    assert {k: v for k, v in again.items() if k != "examples_per_s"} == \
        {k: v for k, v in first.items() if k != "examples_per_s"} and built == [task]
    _eval(tmp_path / "c", *args, "slm_jax.AdapterConfig.hidden_size=16", data=data)        # another model
    assert built == [task]
    assert targets(tmp_path / "c") == targets(tmp_path / "a") == [e["text"] for e in fixed_examples()[:3]]
    _eval(tmp_path / "e", *args)                                   # no cache: a pipeline of its own
    assert built == [task, task]
    seqio.TaskRegistry.remove(task)
    register_fixed_task.__wrapped__(task)       # past the helper's cache: a new task object
    _eval(tmp_path / "d", *args, data=data)
    assert built == [task, task, task]


def test_bounded_eval_scores_the_first_examples_with_or_without_speech_buckets(tmp_path):
    """EvalConfig.max_examples=2 scores the split's first two utterances (36 and 52 frames); with
    length buckets grouping would have picked the two short ones (36, 28) first."""
    task = register_fixed_task()
    common = ["EvalConfig.max_examples=2", f"EvalConfig.eval_tasks=['{task}']"]

    def targets(run_dir, *extra):
        _eval(run_dir, *common, *extra)
        (path,) = (run_dir / "eval").glob(f"{task}*.jsonl")
        return [json.loads(line)["target"] for line in path.read_text().splitlines()]

    want = [e["text"] for e in fixed_examples()[:2]]
    assert targets(tmp_path / "plain") == want
    assert sorted(targets(tmp_path / "buckets", "get_batches.speech_buckets=[40]")) == sorted(want)


def test_restore_with_other_config_names_the_difference(tmp_path):
    _train(tmp_path, "RunConfig.train_steps=2")
    with pytest.raises(CheckpointError, match="hidden_size"):
        _train(tmp_path, "RunConfig.train_steps=4", "slm_jax.AdapterConfig.hidden_size=16")


def test_setup_loads_foundations_and_initialises_the_rest_as_a_full_init_would(tmp_path):
    """With llm_checkpoint given, setup initialises only the other subtrees (a smaller compiled
    init): they equal a full init's, and the LLM holds exactly the checkpoint's values."""
    from helpers import gin_tiny
    from slm_jax.checkpoints.params_io import save_params
    RunConfig = train_lib.RunConfig
    gin_tiny()
    full = train_lib.setup(RunConfig(run_dir=str(tmp_path / "a"), model=SLMTaskModel(),
                                     trainable_patterns=["adapter/.*"]))
    full_params = full.params(full.trainable)
    llm = jax.tree_util.tree_map(lambda x: np.asarray(x) + 0.5, full_params["llm"])   # not the init
    save_params(str(tmp_path / "llm.msgpack"), llm)
    gin_tiny()
    part = train_lib.setup(RunConfig(run_dir=str(tmp_path / "b"), model=SLMTaskModel(),
                                     trainable_patterns=["adapter/.*"], llm_checkpoint=str(tmp_path / "llm.msgpack")))
    part_params = merge_params(part.trainable, part.frozen)
    assert list(part_params) == list(full_params)
    for kind in full_params:
        want = llm if kind == "llm" else full_params[kind]
        assert jax.tree_util.tree_structure(part_params[kind]) == jax.tree_util.tree_structure(want), kind
        for a, b in zip(jax.tree_util.tree_leaves(part_params[kind]), jax.tree_util.tree_leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    from slm_jax.task_model import CTCTaskModel
    gin_tiny()
    ctc = CTCTaskModel(gin_utils.query("slm_jax.SLMConfig.speech_encoder"), vocab_size=8)
    with pytest.raises(ValueError, match="llm_checkpoint given but the model has no 'llm' subtree"):
        train_lib.setup(RunConfig(run_dir=str(tmp_path / "c"), model=ctc, trainable_patterns=[".*"],
                                  llm_checkpoint=str(tmp_path / "llm.msgpack")))
    for s in (full, part):
        s.checkpointer.close()


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    """A tiny T5 pretrained (by our trainer, everything trainable) to copy text, then frozen."""
    path = str(tmp_path_factory.mktemp("llm") / "tiny_llm.msgpack")
    assert pretrain_tiny_llm(path, steps=1500) < 0.2
    return path


def test_schedule_warmup_as_a_fraction_of_the_run():
    """warmup_fraction warms up over that share of total_steps: the same curve as warmup_steps
    (a linear ramp from 0, checked against numpy), then the cosine; both knobs set, or a
    fraction outside [0, 1), is an error naming them."""
    lr, total = 2e-3, 400
    by_fraction = make_schedule(lr, total_steps=total, warmup_fraction=0.25)
    by_steps = make_schedule(lr, warmup_steps=100, total_steps=total)
    steps = np.arange(total + 1)
    got = np.array([float(by_fraction(i)) for i in steps])
    np.testing.assert_array_equal(got, [float(by_steps(i)) for i in steps])
    np.testing.assert_allclose(got[:101], lr * steps[:101] / 100, rtol=1e-5, atol=1e-10)   # float32
    cosine = lr * 0.5 * (1 + np.cos(np.pi * (steps[100:] - 100) / 300))
    np.testing.assert_allclose(got[100:], cosine, rtol=1e-5, atol=1e-9)
    assert float(make_schedule(lr, total_steps=total)(50)) == pytest.approx(lr / 2)   # default: 100 steps
    with pytest.raises(ValueError, match="warmup_steps.*warmup_fraction"):
        make_schedule(lr, warmup_steps=10, total_steps=total, warmup_fraction=0.1)
    with pytest.raises(ValueError, match="warmup_fraction must lie in"):
        make_schedule(lr, total_steps=total, warmup_fraction=1.5)


def test_schedule_warmup_stable_decay():
    """decay="wsd": the warmup ramp, the peak held, then a linear decay to end_fraction over the
    last decay_fraction of the run (checked against numpy); a fraction outside (0, 1] is an error."""
    lr, total = 3e-3, 600
    got = np.array([float(make_schedule(lr, warmup_steps=60, total_steps=total, decay="wsd", decay_fraction=0.25,
                                        end_fraction=0.1)(i)) for i in range(total + 1)])
    steps = np.arange(total + 1)
    want = np.where(steps < 60, lr * steps / 60,
                    np.where(steps < 450, lr, lr * (1 - 0.9 * np.minimum(steps - 450, 150) / 150)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="decay_fraction must lie in"):
        make_schedule(lr, total_steps=total, decay="wsd", decay_fraction=0.0)


def test_tiny_slm_overfits_fixed_examples_to_zero_wer(tmp_path, tiny_llm):
    task = register_fixed_task()
    llm = f"RunConfig.llm_checkpoint='{tiny_llm}'"
    untrained = _eval(tmp_path / "untrained", llm)[task]["wer"]
    res = _train(tmp_path, "RunConfig.train_steps=300", "TrainConfig.log_every=50", llm,
                 "make_schedule.learning_rate=1e-2", "make_schedule.warmup_steps=20")
    assert res["loss"] < 0.2, res
    losses = _losses(tmp_path)
    assert losses[300] < 0.1 * losses[50]
    greedy = _eval(tmp_path, llm)
    assert untrained >= 0.9 and greedy[task]["wer"] == 0.0, (untrained, greedy)
    beam1 = _eval(tmp_path, llm, "DecodeConfig.method='beam'", "DecodeConfig.beam_size=1", "DecodeConfig.alpha=0.0",
                  "EvalConfig.tag='_beam1'")
    pred = lambda tag: (tmp_path / f"eval/{task}{tag}_step300.jsonl").read_text()  # noqa: E731
    assert pred("_beam1") == pred("")
    assert beam1[task]["wer"] == 0.0
    beam4 = _eval(tmp_path, llm, "DecodeConfig.method='beam'", "DecodeConfig.beam_size=4", "EvalConfig.tag='_beam4'")
    assert beam4[task]["wer"] == 0.0


def test_eval_from_frozen_encoder_outputs_matches_eval_from_audio(tmp_path):
    """EvalDataCache(encoder=frozen_encoder(setup)) keeps the frozen speech encoder's outputs
    instead of audio features (the demo scores every adapter depth from them): the same
    predictions and scores as evaluating from the audio, and the encoder runs once per batch
    however many models are scored."""
    task = register_fixed_task("test_fixed_asr_eval_encoded")
    args = ["EvalConfig.max_examples=4", f"EvalConfig.eval_tasks=['{task}']", "RunConfig.seed=3"]
    tiny_run(tmp_path / "a", *args)
    s = train_lib.setup(train_lib.RunConfig())
    s.checkpointer.close()
    calls = []
    encode = eval_lib.frozen_encoder(s)
    data = eval_lib.EvalDataCache(encoder=lambda b: (calls.append(1), encode(b))[1])

    def preds(run_dir):
        (path,) = (run_dir / "eval").glob(f"{task}*.jsonl")
        return [json.loads(line)["prediction"] for line in path.read_text().splitlines()]

    from_audio = _eval(tmp_path / "a", *args)[task]
    from_encoded = _eval(tmp_path / "b", *args, data=data)[task]
    n_batches = len(calls)
    assert n_batches >= 1
    _eval(tmp_path / "c", *args, data=data)
    assert len(calls) == n_batches                       # a second model: the encoder does not run again
    assert preds(tmp_path / "b") == preds(tmp_path / "a")
    drop = lambda m: {k: v for k, v in m.items() if k != "examples_per_s"}
    assert drop(from_encoded) == drop(from_audio)


def test_array_memo_keys_on_contents_shape_and_dtype():
    """ArrayMemo returns the remembered result for equal arrays (another object, same contents),
    computes again for other contents, shapes or dtypes with the same bytes, and forgets the
    least recently used beyond its size."""
    memo, calls = ArrayMemo(2), []
    compute = lambda tag: lambda: (calls.append(tag), tag)[1]  # noqa: E731
    a = np.arange(6, dtype=np.int32)
    assert memo((a, None), compute("a")) == "a"
    assert memo((a.copy(), None), compute("again")) == "a"
    assert memo((a.reshape(2, 3), None), compute("shape")) == "shape"
    assert memo((a.view(np.float32), None), compute("dtype")) == "dtype"
    assert array_key((a, None)) != array_key((a,)) != array_key((a, a))
    assert memo((a, None), compute("evicted")) == "evicted"     # "a" was the least recently used of three
    assert calls == ["a", "shape", "dtype", "evicted"]
    with pytest.raises(ValueError, match="size must be >= 1"):
        ArrayMemo(0)


def test_frozen_encoder_pads_outputs_to_a_length_multiple(tmp_path):
    """The frozen encoder's outputs come back padded to a multiple of `length_multiple`
    positions (zeros, mask False), the valid positions as unpadded, and the model predicts the
    same tokens from either."""
    task = register_fixed_task("test_fixed_asr_eval_padded")
    tiny_run(tmp_path, "EvalConfig.max_examples=4", f"EvalConfig.eval_tasks=['{task}']")
    s = train_lib.setup(train_lib.RunConfig())
    s.checkpointer.close()
    (batch,) = list(eval_lib.eval_batches(task, eval_lib.EvalConfig()))
    exact = eval_lib.frozen_encoder(s, length_multiple=1)(batch)
    n = exact["encoded_speech"].shape[1]
    multiple = n + 5                                     # pads whatever the tiny encoder's length
    padded = eval_lib.frozen_encoder(s, length_multiple=multiple)(batch)
    assert padded["encoded_speech"].shape[1] == padded["encoded_mask"].shape[1] == multiple
    np.testing.assert_array_equal(padded["encoded_speech"][:, :n], exact["encoded_speech"])
    np.testing.assert_array_equal(padded["encoded_mask"][:, :n], exact["encoded_mask"])
    assert not padded["encoded_speech"][:, n:].any() and not padded["encoded_mask"][:, n:].any()
    assert eval_lib.frozen_encoder(s, length_multiple=n)(batch)["encoded_speech"].shape[1] == n
    params = s.params(s.trainable)
    tokens = lambda b: np.asarray(s.model.predict_batch(params, b)[0])  # noqa: E731
    np.testing.assert_array_equal(tokens(padded), tokens(exact))
    with pytest.raises(ValueError, match="length_multiple must be >= 1"):
        eval_lib.frozen_encoder(s, length_multiple=0)


def test_frozen_encoder_runs_once_per_audio_batch(tmp_path, monkeypatch):
    """A batch whose features and mask were encoded before (the same utterances read by another
    task, with another instruction) reuses those outputs; changed audio is encoded again, and
    only the last `remember` batches are kept."""
    task = register_fixed_task("test_fixed_asr_eval_shared_audio")
    tiny_run(tmp_path, "EvalConfig.max_examples=4", f"EvalConfig.eval_tasks=['{task}']")
    s = train_lib.setup(train_lib.RunConfig())
    s.checkpointer.close()
    calls = []
    real = speech_windows.jitted_encoder
    monkeypatch.setattr(speech_windows, "jitted_encoder", lambda config, windows=None: (
        lambda *a: (calls.append(1), real(config, windows)(*a))[1]))
    encode = eval_lib.frozen_encoder(s, remember=2)
    (batch,) = list(eval_lib.eval_batches(task, eval_lib.EvalConfig()))
    first = encode(batch)
    other_task = {**batch, "instruction_tokens": batch["instruction_tokens"] + 1}
    again = encode(other_task)
    assert len(calls) == 1
    np.testing.assert_array_equal(again["encoded_speech"], first["encoded_speech"])
    np.testing.assert_array_equal(again["instruction_tokens"], other_task["instruction_tokens"])
    louder = {**batch, "features": batch["features"] * 2}
    quieter = {**batch, "features": batch["features"] / 2}
    assert not np.array_equal(encode(louder)["encoded_speech"], first["encoded_speech"])
    encode(quieter)
    assert len(calls) == 3
    encode(batch)                                        # pushed out by the two batches after it
    assert len(calls) == 4
