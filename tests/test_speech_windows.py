"""Shared encoder windows (slm_jax/speech_windows.py): packed outputs equal a by-hand packing
encoded by the model, one utterance per window equals the model's own trailing silence, the
packing depends on the stream only, the feature cache stores what evaluation computes, and
settings the run cannot honour are refused by name."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from helpers import FEATURE_LENGTHS, fixed_examples, register_fixed_task
from slm_jax import configs, train_lib
from slm_jax.cached_features import CacheReader, StaleCacheError, build_cache, cached_batches, load_manifest
from slm_jax.models.adapter import AdapterConfig
from slm_jax.models.slm import SLM, SLMConfig
from slm_jax.models.t5 import T5Config
from slm_jax.models.whisper import WhisperEncoderConfig
from slm_jax.speech_windows import FrozenSpeech, PackedStream, SpeechWindows, check_config, first_fit, positions
from slm_jax.task_model import SLMTaskModel

MEL = 80
CONFIG = SLMConfig(
    speech_encoder=WhisperEncoderConfig(num_mel_bins=MEL, d_model=16, encoder_layers=2, encoder_attention_heads=2,
                                        encoder_ffn_dim=32, max_source_positions=200, silence_frames=6),
    adapter=AdapterConfig(input_dim=16, output_dim=16, hidden_size=16, num_layers=1, num_heads=2,
                          intermediate_size=32, stride=4, subsampling="mean"),
    llm=T5Config(vocab_size=259, d_model=16, num_heads=2, d_kv=8, d_ff=32, num_encoder_layers=1,
                 num_decoder_layers=1, relative_attention_num_buckets=8, relative_attention_max_distance=32))


@pytest.fixture(scope="module")
def params():
    model = SLMTaskModel(CONFIG)
    return nn.meta.unbox(jax.jit(model.init_boxed)(jax.random.PRNGKey(0)))


def utterances(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, MEL)).astype(np.float32) for n in lengths]


def batch_of(utts):
    t = max(len(u) for u in utts)
    feats = np.zeros((len(utts), t, MEL), np.float32)
    mask = np.zeros((len(utts), t), np.int32)
    for i, u in enumerate(utts):
        feats[i, :len(u)], mask[i, :len(u)] = u, 1
    return feats, mask


def model_outputs(params, config, feats, mask):
    """SLM.speech_encoder_outputs, straight from the model."""
    return [np.asarray(x) for x in SLM(config).apply({"params": {"speech_encoder": params["speech_encoder"]}},
                                                     feats, mask, method=SLM.speech_encoder_outputs)]


def test_packed_outputs_equal_a_packing_by_hand(params):
    """Segments of 20 / 37 / 50 / 12 frames + 10 floor frames, rounded to 8 (one adapter
    position: Whisper's stride 2 x adapter stride 4): 32, 48, 64, 24 frames. First-fit
    decreasing into 120 frames: 64 opens window 0, 48 joins it (112), 32 opens window 1, 24
    joins it: [64 + 48], [32 + 24]. Each utterance keeps ceil(ceil(n / 2) / 4) positions from
    its own offset: the by-hand windows below, encoded by the model without its own silence."""
    utts = utterances([20, 37, 50, 12])
    feats, mask = batch_of(utts)
    got, got_mask = FrozenSpeech(CONFIG, params["speech_encoder"], SpeechWindows(frames=120, gap=10)).batch(feats, mask)

    def seg(u, total):
        return np.concatenate([u, np.full((total - len(u), MEL), u.max() - 2.0, np.float32)])
    windows = [np.concatenate([seg(utts[2], 64), seg(utts[1], 48)]), np.concatenate([seg(utts[0], 32), seg(utts[3], 24)])]
    w_feats, w_mask = batch_of(windows)
    w_feats = np.pad(w_feats, ((0, 0), (0, 120 - w_feats.shape[1]), (0, 0)))
    w_mask = np.pad(w_mask, ((0, 0), (0, 120 - w_mask.shape[1])))
    silent = dataclasses.replace(CONFIG, speech_encoder=dataclasses.replace(CONFIG.speech_encoder, silence_frames=0))
    hidden, _ = model_outputs(params, silent, w_feats, w_mask)
    where = [(1, 0, 3), (0, 8, 5), (0, 0, 7), (1, 4, 2)]     # (window, first position, positions)
    assert got_mask.sum(1).tolist() == [c for _, _, c in where]
    for i, (w, p, c) in enumerate(where):
        np.testing.assert_allclose(got[i, :c], hidden[w, p:p + c], rtol=1e-5, atol=1e-5)
        assert not got[i, c:].any()


def test_first_fit_decreasing_within_blocks(params):
    """first_fit places the longest first (ties in stream order) into the first window with
    room; a segment longer than the window gets one of its own; blocks never share a window."""
    assert first_fit([30, 70, 50, 50, 20], 100) == ([(0, 70), (0, 0), (1, 0), (1, 50), (2, 0)], 3)
    assert first_fit([150, 40], 100) == ([(0, 0), (1, 0)], 2)
    assert first_fit([], 100) == ([], 0)
    frozen = FrozenSpeech(CONFIG, params["speech_encoder"], SpeechWindows(frames=200, gap=0, block=2))
    stream = PackedStream(frozen, rows=8)
    for n in (16, 16, 16, 16, 16):      # blocks [16, 16] [16, 16] [16]: one window each
        stream.add(np.zeros((n, MEL), np.float32))
    stream.finish()
    assert stream.windows == 3 and len(list(stream.ready())) == 5


def test_one_utterance_per_window_is_the_models_trailing_silence(params):
    """With windows too short to share, each utterance sits alone followed by its gap: what the
    model computes with silence_frames = gap. Lengths are multiples of 8 frames, so no adapter
    position's 4 encoder frames reach into the gap (in a window they are averaged with it)."""
    utts = utterances([32, 48, 16], seed=1)        # + 8 floor frames: 40, 56, 24
    feats, mask = batch_of(utts)
    silence = dataclasses.replace(CONFIG, speech_encoder=dataclasses.replace(CONFIG.speech_encoder, silence_frames=8))
    packed, packed_mask = FrozenSpeech(silence, params["speech_encoder"], SpeechWindows(frames=8, gap=8)).batch(feats, mask)
    alone, alone_mask = model_outputs(params, silence, feats, mask)
    assert packed_mask.sum(1).tolist() == alone_mask.sum(1).tolist() == [4, 6, 2]
    for i, c in enumerate([4, 6, 2]):
        np.testing.assert_allclose(packed[i, :c], alone[i, :c], rtol=1e-5, atol=1e-5)


def test_windows_off_is_the_model_and_packing_ignores_the_encoder_batch(params):
    """Windows off: exactly the model's outputs. On: the stream's packing, whatever the number
    of windows encoded per call."""
    utts = utterances([30, 9, 41, 17, 25, 33, 8], seed=2)
    feats, mask = batch_of(utts)
    off, off_mask = FrozenSpeech(CONFIG, params["speech_encoder"]).batch(feats, mask)
    ref, ref_mask = model_outputs(params, CONFIG, feats, mask)
    np.testing.assert_allclose(off, ref, rtol=1e-6, atol=1e-6)
    assert np.array_equal(off_mask, ref_mask)
    frozen = FrozenSpeech(CONFIG, params["speech_encoder"], SpeechWindows(frames=96, gap=4))
    runs = []
    for rows in (1, 2, 5):
        stream = PackedStream(frozen, rows)
        for u in utts:
            stream.add(u)
        stream.finish()
        runs.append(list(stream.ready()))
    assert len(runs[0]) == len(utts)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # neighbours matter: the same utterance packed with others differs from it alone
    alone = frozen.batch(*batch_of(utts[:1]))[0][0, :len(runs[0][0])]
    assert not np.allclose(alone, runs[0][0], atol=1e-4)


def test_feature_cache_stores_the_streams_windows(params, tmp_path):
    """A cache built with windows holds, in its order, what the frozen path gives for the
    stream of its utterances, whatever the encoder batch; its fingerprint names the windows, so
    a run without them (or with others) refuses it."""
    task = register_fixed_task()
    windows = SpeechWindows(frames=64, gap=4)
    build = lambda d, rows: build_cache(str(tmp_path / d), task, "train", feature_lengths=FEATURE_LENGTHS,  # noqa: E731
                                        config=CONFIG, encoder_params=params["speech_encoder"], weights={"init_seed": 0},
                                        batch_size=rows, read_batch_size=2, verbose=False, windows=windows)
    m1, m3 = build("a", 1), build("b", 3)
    assert m1["fingerprint"]["speech_windows"] == {"frames": 64, "gap": 4, "block": 64}
    read = lambda d, m: CacheReader(str(tmp_path / d / task / "train"), m).batch(list(range(m["count"])))  # noqa: E731
    a, b = read("a", m1), read("b", m3)
    np.testing.assert_allclose(a["encoded_speech"], b["encoded_speech"], rtol=1e-6, atol=1e-6)
    # the fixed task's utterances (36, 52, 28, 44 frames: 5, 7, 4, 6 positions) in the cache's
    # order, through the frozen path as one stream
    utts = {positions(len(e["speech"]), CONFIG): e["speech"] for e in fixed_examples()}
    stream = PackedStream(FrozenSpeech(CONFIG, params["speech_encoder"], windows), 2)
    for n in m1["frames"]:
        stream.add(utts[n])
    stream.finish()
    got = list(stream.ready())
    assert [len(f) for f in got] == m1["frames"]
    for row, frames in enumerate(got):
        np.testing.assert_allclose(a["encoded_speech"][row, :len(frames)], frames, rtol=1e-5, atol=1e-5)
    run = lambda w: train_lib.RunConfig(run_dir="unused", model=SLMTaskModel(CONFIG), speech_windows=w)  # noqa: E731
    for other in (SpeechWindows(), SpeechWindows(frames=64, gap=8)):
        with pytest.raises(StaleCacheError, match="speech_windows"):
            next(cached_batches(task, "train", feature_lengths=FEATURE_LENGTHS, batch_size=2,
                                cache_dir=str(tmp_path / "a"), encoder_fingerprint=train_lib.cache_fingerprint(run(other))))
    assert next(cached_batches(task, "train", feature_lengths=FEATURE_LENGTHS, batch_size=2, shuffle=False,
                               cache_dir=str(tmp_path / "a"),
                               encoder_fingerprint=train_lib.cache_fingerprint(run(windows))))["encoded_speech"].shape[0] == 2
    assert load_manifest(str(tmp_path / "a"), task, "train")[0]["count"] == 4


def test_settings_the_run_cannot_honour_are_refused():
    with pytest.raises(ValueError, match="SpeechWindows needs frames >= 0.*frames=-1"):
        SpeechWindows(frames=-1)
    with pytest.raises(ValueError, match="SpeechWindows needs .*block=0"):
        SpeechWindows(frames=100, block=0)
    with pytest.raises(ValueError, match="speech encoder is a ConformerConfig"):
        check_config(SpeechWindows(frames=100), configs.tiny_slm())
    with pytest.raises(ValueError, match="longer than the Whisper encoder's window"):
        check_config(SpeechWindows(frames=401), CONFIG)
    with pytest.raises(ValueError, match="speech encoder is a ConformerConfig"):
        train_lib.RunConfig(run_dir="unused", model=SLMTaskModel(configs.tiny_slm()), speech_windows=SpeechWindows(100))
    run = train_lib.RunConfig(run_dir="unused", model=SLMTaskModel(CONFIG), speech_windows=SpeechWindows(100))
    with pytest.raises(ValueError, match="trains from a feature cache"):
        train_lib.train(run, train_lib.TrainConfig(train_task=register_fixed_task(), feature_lengths=FEATURE_LENGTHS))


def test_infer_packs_each_batch_of_files(tmp_path, monkeypatch):
    """Inference of a run with windows decodes what the shared windows give for the files of
    each batch, in the order given, not the model's own one-utterance path."""
    import seqio
    import soundfile
    from slm_jax import eval_lib
    files = []
    for i, seconds in enumerate((0.5, 0.3, 0.4)):
        files.append(str(tmp_path / f"clip{i}.wav"))
        soundfile.write(files[-1], (0.3 * np.random.default_rng(i).uniform(-1, 1, int(16000 * seconds))).astype(np.float32),
                        16000)
    windows = SpeechWindows(frames=96, gap=8)
    run = train_lib.RunConfig(run_dir=str(tmp_path / "run"), model=SLMTaskModel(CONFIG), speech_windows=windows)
    batches, decoded = [], []
    real_batch, real_predict = eval_lib.speech_batch, SLMTaskModel.predict_batch
    monkeypatch.setattr(eval_lib, "speech_batch", lambda *a: (batches.append(real_batch(*a)), batches[-1])[1])
    monkeypatch.setattr(SLMTaskModel, "predict_batch",
                        lambda self, params, batch, *a, **k: (decoded.append(batch), real_predict(self, params, batch, *a, **k))[1])
    outs = eval_lib.infer(run, eval_lib.InferConfig(audio_files=files, vocabulary=seqio.ByteVocabulary(),
                                                    instruction="transcribe", batch_size=2))
    assert len(outs) == 3 and len(batches) == len(decoded) == 2
    s = train_lib.setup(run)
    s.checkpointer.close()
    frozen = FrozenSpeech(CONFIG, s.frozen["speech_encoder"], windows)
    for audio, seen in zip(batches, decoded):
        assert "features" not in seen
        want, want_mask = frozen.batch(audio["features"], audio["feature_mask"])
        n = want.shape[1]   # eval_lib.frozen_encoder pads to a multiple of 16 positions, mask off
        assert seen["encoded_speech"].shape[1] == seen["encoded_mask"].shape[1] == -(-n // 16) * 16
        np.testing.assert_allclose(seen["encoded_speech"][:, :n], want, rtol=1e-6, atol=1e-6)
        assert np.array_equal(seen["encoded_mask"][:, :n], want_mask) and not seen["encoded_mask"][:, n:].any()
