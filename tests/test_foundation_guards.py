"""Foundations define the run: configs, vocabulary and front end from checkpoint directories,
and the guards (contradicting config field, vocabulary larger than the embedding table,
non-finite loss, changed vocabulary or foundation on resume), each showing its error text."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import gin
import jax
import numpy as np
import pytest

from slm_jax import run_inputs, train_lib
from slm_jax.checkpoints.hf_common import CheckpointError
from slm_jax.data import get_batches
from slm_jax.features import FeatureConfig
from slm_jax.models.adapter import AdapterConfig
from slm_jax.models.conformer import ConformerConfig
from slm_jax.models.slm import SLMConfig
from slm_jax.models.t5 import T5Config
from slm_jax.task_model import SLMTaskModel
from tasks import local_manifest
from tests.own_foundations import MT5_VOCAB, build_mt5, build_w2v_bert, recordings, spiece_model, write_manifest

LENGTHS = {"speech": 200, "instruction": 8, "targets": 8}
ADAPTER = AdapterConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, stride=2)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("guards")
    speech, llm = build_w2v_bert(root / "w2v_bert"), build_mt5(root / "mt5")
    rows = recordings(root / "recordings", {"train": 8, "test": 4})
    local_manifest.register_manifest("guard_digits", write_manifest(root / "manifest.tsv", rows), replace=True)
    return root, speech, llm


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    run_inputs.use(None, None)


def run_config(run_dir, speech, llm, config: SLMConfig | None = None, **kw) -> train_lib.RunConfig:
    return train_lib.RunConfig(run_dir=str(run_dir), model=SLMTaskModel(config or SLMConfig(adapter=ADAPTER)),
                               speech_encoder_checkpoint=str(speech), llm_checkpoint=str(llm), async_save=False,
                               save_every=2, **kw)


def train_config(**kw) -> train_lib.TrainConfig:
    return train_lib.TrainConfig(**{"train_task": "guard_digits_asr", "feature_lengths": LENGTHS, "batch_size": 8,
                                    "log_every": 1, **kw})


def test_configs_vocabulary_and_front_end_come_from_the_checkpoints(dirs, tmp_path):
    _, speech, llm = dirs
    run = run_config(tmp_path / "run", speech, llm)
    cfg = run.model.config
    hf = json.loads((llm / "config.json").read_text())
    assert cfg.llm == T5Config.from_hf(hf, dropout_rate=0.0)
    assert (cfg.llm.vocab_size, cfg.llm.d_model, cfg.llm.feed_forward_proj) == (MT5_VOCAB, 32, "gated-gelu")
    assert isinstance(cfg.speech_encoder, ConformerConfig) and cfg.speech_encoder.input_dim == 160
    assert (cfg.adapter.input_dim, cfg.adapter.output_dim) == (32, 32)
    vocab, features = run.inputs()
    assert vocab.sp_model == (llm / "spiece.model").read_bytes()
    assert features == FeatureConfig(kind="w2v_bert", n_mels=80, stride=2)
    # setup makes them every task's: the manifest task (registered without either) follows
    train_lib.setup(run).checkpointer.close()
    batch = next(get_batches("guard_digits_asr", "train", feature_lengths=LENGTHS, batch_size=2, shuffle=False))
    assert batch["features"].shape[-1] == 160
    assert vocab.decode([int(t) for t in batch["decoder_target_tokens"][0] if t > 1]) in (
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def test_a_field_that_contradicts_the_checkpoint_is_named_with_both_values(dirs, tmp_path):
    _, speech, llm = dirs
    hf = json.loads((llm / "config.json").read_text())
    agreeing = T5Config.from_hf(hf, dtype=np.float32)
    run = run_config(tmp_path / "a", speech, llm, SLMConfig(adapter=ADAPTER, llm=agreeing))
    assert run.model.config.llm == agreeing                          # an agreeing config is accepted
    for field, value, theirs in (("layer_norm_epsilon", 1e-5, "1e-06"), ("feed_forward_proj", "gated-relu", "'gated-gelu'")):
        given = dataclasses.replace(agreeing, **{field: value})
        with pytest.raises(ValueError) as e:
            run_config(tmp_path / "b", speech, llm, SLMConfig(adapter=ADAPTER, llm=given))
        print(e.value)
        assert f"T5Config.{field} = {value!r}" in str(e.value) and f"has {field} = {theirs}" in str(e.value)
        assert str(llm / "config.json") in str(e.value)
    with pytest.raises(ValueError, match=r"ConformerConfig.layer_norm_eps = 0.001 contradicts .* has layer_norm_eps "
                                         r"= 1e-05"):
        run_config(tmp_path / "c", speech, llm, speech_encoder_overrides={"layer_norm_eps": 1e-3})
    run = run_config(tmp_path / "d", speech, llm, llm_overrides={"dtype": np.dtype("bfloat16")})
    assert run.model.config.llm.dtype == np.dtype("bfloat16")          # a setting the checkpoint leaves open
    with pytest.raises(ValueError, match="is a T5Config, but RunConfig.speech_encoder_checkpoint holds a ConformerConfig"):
        run_config(tmp_path / "e", speech, llm, SLMConfig(adapter=ADAPTER, speech_encoder=agreeing))


def test_a_vocabulary_larger_than_the_embedding_table_stops_before_step_one(dirs, tmp_path):
    root, speech, llm = dirs
    bare = tmp_path / "mt5_no_spiece"
    shutil.copytree(llm, bare)
    os.remove(bare / "spiece.model")      # the tasks fall back to the world vocabulary (1000 pieces)
    run = run_config(tmp_path / "run", speech, bare)
    with pytest.raises(ValueError) as e:
        train_lib.train(run, train_config())
    print(e.value)
    assert "1000 ids" in str(e.value) and f"T5Config.vocab_size={MT5_VOCAB}" in str(e.value)
    assert not os.listdir(tmp_path / "run" / "checkpoints")


def nan_at(step: int):
    """get_batches, with non-finite features in the batch of `step` (1-based)."""
    def input_fn(task, split, start_batch=0, **kw):
        for i, batch in enumerate(get_batches(task, split, start_batch=start_batch, **kw), start_batch + 1):
            if i == step:
                batch = {**batch, "features": np.full_like(batch["features"], np.nan)}
            yield batch
    return input_fn


def test_a_non_finite_loss_stops_training_naming_the_step_and_saves_no_nan_state(dirs, tmp_path):
    _, speech, llm = dirs
    run = dataclasses.replace(run_config(tmp_path / "run", speech, llm), train_steps=6)
    with pytest.raises(FloatingPointError) as e:
        train_lib.train(run, train_config(input_fn=nan_at(3)))
    print(e.value)
    assert "non-finite loss or gradient at step 3" in str(e.value) and "nothing after step 2 is saved" in str(e.value)
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2"]
    s = train_lib.setup(run)
    params, step = s.restore()
    s.checkpointer.close()
    assert step == 2 and all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(jax.device_get(params)))


def test_a_changed_vocabulary_or_foundation_is_refused_on_resume(dirs, tmp_path):
    root, speech, llm = dirs
    llm_copy, vocab_file = tmp_path / "mt5", tmp_path / "other.model"
    shutil.copytree(llm, llm_copy)
    run = dataclasses.replace(run_config(tmp_path / "run", speech, llm_copy), train_steps=2)
    assert train_lib.train(run, train_config())["step"] == 2
    vocab_file.write_bytes(spiece_model(vocab_size=36))
    more = dict(train_steps=4)
    with pytest.raises(CheckpointError) as e:
        train_lib.train(dataclasses.replace(run, vocabulary=str(vocab_file), **more), train_config())
    print(e.value)
    assert "vocabulary.sentencepiece_sha256: checkpoint has" in str(e.value)
    build_mt5(llm_copy, seed=1)            # same config, other weights
    with pytest.raises(CheckpointError) as e:
        train_lib.train(dataclasses.replace(run, **more), train_config())
    print(e.value)
    assert "foundations_sha256.llm: checkpoint has" in str(e.value)
    assert "vocabulary" not in str(e.value).split("config: ")[1]      # the same spiece.model: only the weights differ


@pytest.mark.parametrize("run_file, builder, kind", [("gin/runs/whisper_mt0_manifest.gin", "whisper", "whisper"),
                                                      ("gin/runs/w2v_bert_mt0_manifest.gin", "w2v_bert", "w2v_bert")])
def test_public_foundation_run_files_train_on_a_manifest(dirs, tmp_path, run_file, builder, kind):
    """The run files of the public foundations, on their tiny random twins: the model comes from
    the checkpoints alone (the gin files bind no foundation field), and a few adapter steps run."""
    from slm_jax import gin_utils
    from tests import own_foundations
    root, _, llm = dirs
    speech = getattr(own_foundations, f"build_{builder}")(tmp_path / builder)
    gin_utils.parse_config([run_file], [f"SPEECH_CHECKPOINT='{speech}'", f"LLM_CHECKPOINT='{llm}'",
                                        f"RUN_DIR='{tmp_path / 'run'}'", "TASK='guard_digits_asr'",
                                        "RunConfig.train_steps=3", "RunConfig.async_save=False",
                                        "TrainConfig.batch_size=8"])
    run, cfg = train_lib.RunConfig(), train_lib.TrainConfig()
    assert run.model.config.llm.vocab_size == MT5_VOCAB and run.model.config.adapter.input_dim == 32
    assert run.inputs()[1].kind == kind
    out = train_lib.train(run, cfg)
    assert out["step"] == 3 and np.isfinite(out["loss"])


def test_checkpoints_load_into_scanned_layer_stacks(dirs, tmp_path):
    """RunConfig.*_overrides = {"scan_layers": True}: the importers' unrolled layers are stacked
    into the scanned layout, and the SLM's loss is that of the unrolled model (float32, 1e-5)."""
    from slm_jax.models.layers import unstack_layers
    _, speech, llm = dirs
    scan = {"scan_layers": True}
    s_plain = train_lib.setup(run_config(tmp_path / "a", speech, llm))
    s_scan = train_lib.setup(run_config(tmp_path / "b", speech, llm, llm_overrides=scan, speech_encoder_overrides=scan))
    for s in (s_plain, s_scan):
        s.checkpointer.close()
    assert "layers" in s_scan.frozen["llm"]["encoder"] and "layers_0" in s_plain.frozen["llm"]["encoder"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(unstack_layers(s_scan.frozen)),
                           jax.device_get(s_plain.frozen))
    batch = next(get_batches("guard_digits_asr", "train", feature_lengths=LENGTHS, batch_size=8, shuffle=False))
    losses = [float(s.model.loss_fn(s.params(s.trainable), batch, jax.random.PRNGKey(0), True)["loss_sum"])
              for s in (s_plain, s_scan)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


def test_an_eval_split_the_task_lacks_is_named_with_the_ones_it_has(dirs, tmp_path):
    from slm_jax import eval_lib
    _, speech, llm = dirs
    cfg = eval_lib.EvalConfig(eval_tasks=["guard_digits_asr"], feature_lengths=LENGTHS)     # split "validation"
    with pytest.raises(ValueError, match=r"eval task 'guard_digits_asr' has no 'validation' split \(it has "
                                         r"\['train', 'test'\]\): set EvalConfig.split"):
        eval_lib.evaluate_run(run_config(tmp_path / "run", speech, llm), cfg)


def test_a_ctranslate2_whisper_directory_defines_the_speech_encoder(dirs, tmp_path):
    """Whisper base's CTranslate2 directory (model.bin, shapes only) gives the encoder config and
    Whisper's log-mel front end; a contradicting override names model.bin and both values."""
    from slm_jax.checkpoints.whisper_base import whisper_base_dir
    from slm_jax.models.whisper import WhisperEncoderConfig
    _, _, llm = dirs
    base = whisper_base_dir()
    run = run_config(tmp_path / "run", base, llm)
    assert run.model.config.speech_encoder == WhisperEncoderConfig(
        num_mel_bins=80, d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048,
        max_source_positions=1500)
    assert run.inputs()[1] == FeatureConfig(kind="whisper", n_mels=80)
    with pytest.raises(ValueError, match=r"WhisperEncoderConfig.encoder_layers = 4 contradicts the checkpoint "
                                         r".*model.bin, which has encoder_layers = 6"):
        run_config(tmp_path / "run", base, llm, speech_encoder_overrides={"encoder_layers": 4})
