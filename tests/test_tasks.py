"""Tasks, mixtures and corpora (tasks/): tiny builds in a temporary data dir, every tiny task
and mixture through SLMFeatureConverter, honest example counts and mixture rates, manifests
with bad rows, held-out voices, determinism, FSDD (skipped when absent)."""

import collections
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import seqio
import soundfile
import tensorflow as tf

import tasks
from slm_jax import features as features_lib
from slm_jax.data import bucket_bound, get_batches
from tasks import common, fsdd, local_manifest, paths, spoken_world, vocab, world_text

LENGTHS = {"speech": 800, "instruction": 48, "targets": 48}
REPO = Path(__file__).resolve().parents[1]
EOS = 1


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A fresh SLM_DATA_DIR with spoken_world/tiny built in it."""
    d = tmp_path_factory.mktemp("slm_data")
    mp = pytest.MonkeyPatch()
    mp.setenv("SLM_DATA_DIR", str(d))
    spoken_world.prepare("tiny", verbose=False)
    yield d
    mp.undo()


def _stored(data_dir_path, split):
    """{id: example} of a built tiny split, numpy, strings decoded."""
    b = spoken_world.builder("tiny", data_dir_path)
    out = {}
    for ex in b.as_dataset(split=split, shuffle_files=False).as_numpy_iterator():
        ex = tf.nest.map_structure(common.to_py, ex)
        out[ex["id"]] = ex
    return out


def _tiny_tasks():
    return sorted(n for n in seqio.TaskRegistry.names() if n.startswith("spoken_world_tiny_"))


def _tiny_mixtures():
    return sorted(n for n in seqio.MixtureRegistry.names() if n.startswith("spoken_world_tiny_"))


# ----------------------------------------------------------------------------- text


def test_world_text_aligned_and_deterministic():
    a, b = world_text.generate_items(40, seed=3), world_text.generate_items(40, seed=3)
    assert [x.as_dict() for x in a] == [x.as_dict() for x in b]
    assert [x.as_dict() for x in a] != [x.as_dict() for x in world_text.generate_items(40, seed=4)]
    assert {x.kind for x in a} == set(world_text.KINDS)
    for item in a:
        assert set(item.texts) == set(world_text.LANGUAGES) and all(t.strip() for t in item.texts.values())
        if item.kind in ("number", "year"):
            assert item.written == str(item.value)
        if item.kind == "number":
            assert item.texts["fr"] == world_text.cardinal(item.value, "fr")
        if item.kind == "sentence":  # the slots are said in every language
            s = item.slots
            for lang in world_text.LANGUAGES:
                assert world_text.cardinal(int(s["count"]), lang) in item.texts[lang].lower()
                assert world_text.colour_text(s["colour"], s["object"], lang) in item.texts[lang]
                assert world_text.object_text(s["object"], lang) in item.texts[lang]


def test_number_values_follow_their_ranges_and_shares():
    """A number item's value falls in NUMBER_RANGES with about each range's share (the shares sum
    to 1), so single digits are a third of the numbers and every digit occurs."""
    ranges = world_text.NUMBER_RANGES
    assert sum(share for _, _, share in ranges) == pytest.approx(1.0)
    values = [x.value for x in world_text.generate_items(10_000, seed=0) if x.kind == "number"]
    assert len(values) == 3000   # 3 in every 10 items (KIND_CYCLE)
    for low, high, share in ranges:
        inside = sum(low <= v <= high for v in values) / len(values)
        assert abs(inside - share) < 0.03, (low, high, inside, share)
    assert min(values) >= ranges[0][0] and max(values) <= ranges[-1][1]
    assert set(range(10)) <= set(values)


def test_registered_names():
    names = set(seqio.TaskRegistry.names())
    for size in ("tiny", "demo"):
        for t in ["asr_en", "asr_fr", "asr_de", "asr_es", "ast_fr_en", "ast_en_fr", "biasing_de", "qa", "digits",
                  "compare", "add"]:
            assert f"spoken_world_{size}_{t}" in names
        for m in ["asr", "asr_ast", "instruct", "all"]:
            assert f"spoken_world_{size}_{m}" in seqio.MixtureRegistry.names()
    assert "librispeech_asr_en" in names  # registered, never touched here
    metric_names = lambda n: sorted(f.__name__ for f in seqio.get_mixture_or_task(n).metric_fns)
    assert metric_names("spoken_world_tiny_asr_en") == ["seqio_cer", "seqio_wer"]
    assert metric_names("spoken_world_tiny_ast_fr_en") == ["seqio_bleu", "seqio_chrf"]
    assert metric_names("spoken_world_tiny_qa") == ["seqio_exact_match"]
    pytest.importorskip("slm_jax.metrics")
    scores = {}
    for name in ("spoken_world_tiny_asr_en", "spoken_world_tiny_qa"):
        for fn in seqio.get_mixture_or_task(name).metric_fns:
            scores.update(fn(["red car", "blue"], ["red car", "green"]))
    assert scores["wer"] == pytest.approx(1 / 3) and scores["exact_match"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- spoken_world build


def test_tiny_build_determinism_and_heldout_voices(data_dir, tmp_path):
    spoken_world.prepare("tiny", data_dir=tmp_path / "tfds", verbose=False)
    for split, pool in spoken_world.VOICE_POOLS.items():
        first, second = _stored(paths.tfds_dir(), split), _stored(tmp_path / "tfds", split)
        assert sorted(first) == sorted(second)
        plan = {r["id"]: r for r in spoken_world.plan(spoken_world.CONFIGS["tiny"], split)}
        assert sorted(first) == sorted(plan)
        for uid, ex in first.items():
            np.testing.assert_array_equal(ex["audio"], second[uid]["audio"])
            assert {k: v for k, v in ex.items() if k != "audio"} == plan[uid]  # stored records == plan
            flite = ex["voice"].removeprefix(spoken_world.FLITE_PREFIX)
            assert ex["voice"] in pool or (ex["language"] == "en" and flite in spoken_world.FLITE_POOLS[split]), ex
            seconds = ex["audio"].size / 16000
            assert 0.3 < seconds < 8 and np.abs(ex["audio"]).max() > 1000, (uid, seconds)
        assert 10 <= len(first) <= 100  # "a few dozen"
    voices = {s: {ex["voice"] for ex in _stored(paths.tfds_dir(), s).values()} for s in spoken_world.SPLITS}
    assert not voices["train"] & voices["test"] and not voices["train"] & voices["validation"]
    assert not voices["validation"] & voices["test"]


def test_flite_voices_speak_a_share_of_english_training_only():
    """flite's voices take about flite_share of the English training utterances and nothing
    else; a voice whose pitch flite cannot set records pitch 0; the espeak-ng draws of the
    other records are those of a plan without flite."""
    cfg = dataclasses.replace(spoken_world.CONFIGS["demo"], name="flite_check")
    without = dataclasses.replace(cfg, flite_share=0.0)
    for split in spoken_world.SPLITS:
        recs, plain = spoken_world.plan(cfg, split), spoken_world.plan(without, split)
        flite = [r for r in recs if r["voice"].startswith(spoken_world.FLITE_PREFIX)]
        english = [r for r in recs if r["language"] == "en"]
        if split != "train":
            assert not flite and recs == plain
            continue
        assert {r["language"] for r in flite} == {"en"}
        assert abs(len(flite) / len(english) - cfg.flite_share) < 0.05, len(flite) / len(english)
        assert {r["voice"] for r in flite} == {spoken_world.FLITE_PREFIX + v for v in spoken_world.FLITE_POOLS[split]}
        for r in flite:
            settable = r["voice"].removeprefix(spoken_world.FLITE_PREFIX) in spoken_world.FLITE_F0_MEANS
            assert (r["pitch"] != 0) == settable, r
        same = [(a, b) for a, b in zip(recs, plain) if not a["voice"].startswith(spoken_world.FLITE_PREFIX)]
        assert len(same) == len(recs) - len(flite) and all(a == b for a, b in same)
    with pytest.raises(ValueError, match="flite_share"):
        spoken_world.plan(dataclasses.replace(cfg, flite_share=1.5), "train")


def test_flite_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="English only"):
        spoken_world.synthesize("sept", "fr", "flite-slt", 150, 40)
    with pytest.raises(ValueError, match="flite-rms.*pitch 40"):
        spoken_world.synthesize("seven", "en", "flite-rms", 150, 40)


def test_counts_match_pipeline(data_dir):
    """num_input_examples (counted from the plan) == what each task's pipeline yields."""
    for name in _tiny_tasks():
        task = seqio.get_mixture_or_task(name)
        n = sum(1 for _ in task.source.get_dataset("validation", shuffle=False))
        assert n == task.num_input_examples("validation") > 0, name
    # all splits: the make functions see the same records in the plan and in the stored data
    for split in spoken_world.SPLITS:
        stored = [{k: v for k, v in ex.items() if k != "audio"} for ex in _stored(paths.tfds_dir(), split).values()]
        for name in _tiny_tasks():
            src = seqio.get_mixture_or_task(name).source
            assert sum(src.make(r) is not None for r in stored) == src.num_input_examples(split), (name, split)


def test_stale_build_is_detected(data_dir, tmp_path, monkeypatch):
    """A build made from other text than the code lists now is refused, naming its folder."""
    monkeypatch.setenv("SLM_DATA_DIR", str(tmp_path))
    b = spoken_world.prepare("tiny", verbose=False)
    meta = os.path.join(b.data_dir, "metadata.json")
    with open(meta) as f:
        fingerprints = json.load(f)
    with open(meta, "w") as f:  # as if built by code listing other utterances
        json.dump({**fingerprints, "plan_train": "0123456789abcdef"}, f)
    with pytest.raises(RuntimeError, match=r"spoken_world/tiny.*delete that folder"):
        spoken_world.SpokenWorldCorpus("tiny").load("train", shuffle=False, seed=None, shard_info=None)


# ----------------------------------------------------------------------------- features


def test_tf_log_mel_matches_numpy_front_end(data_dir):
    """The pipeline's TensorFlow front ends equal slm_jax.features: log-mel to 1e-6 (float64
    inside both; bit-identical in practice), w2v-BERT fbank to 1e-4."""
    rng = np.random.default_rng(0)
    utterance = next(iter(_stored(paths.tfds_dir(), "test").values()))["audio"].astype(np.float32) / 32768
    noise = (0.1 * rng.standard_normal(16000 + 77)).astype(np.float32)
    noise[:5000] *= 1e-5  # near-silence exercises the clamp
    for audio in (utterance, noise, noise[:201]):
        ref = features_lib.log_mel(audio)
        got = common.tf_whisper_log_mel(tf.constant(audio)).numpy()
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    for audio in (utterance, noise):  # w2v-BERT fbank: normalisation sums in another order
        np.testing.assert_allclose(common.tf_w2v_bert_fbank(tf.constant(audio)).numpy(),
                                   features_lib.w2v_bert_fbank(audio), rtol=0, atol=1e-4)
    ref30 = features_lib.whisper_log_mel(noise, pad_to_30s=True)
    np.testing.assert_allclose(common.tf_whisper_log_mel(tf.constant(noise), pad_to_30s=True).numpy(), ref30,
                               rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- feature converter


def _check_batch(batch, bs, lengths=LENGTHS):
    assert batch["features"].shape == (bs, lengths["speech"], 80) and batch["features"].dtype == np.float32
    for k, n in [("feature_mask", lengths["speech"]), ("instruction_tokens", lengths["instruction"]),
                 ("decoder_input_tokens", lengths["targets"]), ("decoder_target_tokens", lengths["targets"]),
                 ("decoder_loss_weights", lengths["targets"])]:
        assert batch[k].shape == (bs, n) and batch[k].dtype == np.int32, k
    frames = batch["feature_mask"].sum(1)
    assert (frames > 20).all()
    for i in range(bs):  # features are finite where valid and zero-padded after
        assert np.isfinite(batch["features"][i, :frames[i]]).all()
        assert not batch["features"][i, frames[i]:].any()
        tgt_len = batch["decoder_loss_weights"][i].sum()
        assert tgt_len >= 2 and batch["decoder_target_tokens"][i, tgt_len - 1] == EOS
        np.testing.assert_array_equal(batch["decoder_input_tokens"][i, 1:tgt_len],
                                      batch["decoder_target_tokens"][i, :tgt_len - 1])


def test_every_tiny_task_and_mixture_batches(data_dir):
    v = vocab.get_vocabulary()
    for name in _tiny_tasks() + _tiny_mixtures():
        batch = next(get_batches(name, "train", feature_lengths=LENGTHS, batch_size=2, shuffle=False))
        _check_batch(batch, 2)
        assert (batch["instruction_tokens"].sum(1) > 0).all(), name
    task = seqio.get_mixture_or_task("spoken_world_tiny_ast_de_en")
    ex = next(task.get_dataset(LENGTHS, split="train", shuffle=False).as_numpy_iterator())
    rec = {r["id"]: r for r in spoken_world.plan(spoken_world.CONFIGS["tiny"], "train")}[ex["id"].decode()]
    assert v.decode(ex["targets"].tolist()) == rec["translations"]["en"] and rec["language"] == "de"
    assert v.decode(ex["instruction"].tolist()) == "Translate the speech into English."


def test_too_long_speech_is_an_error_naming_the_utterance(data_dir):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"utterance.*train-0000"):
        next(get_batches("spoken_world_tiny_asr_en", "train", feature_lengths={**LENGTHS, "speech": 30},
                         batch_size=2, shuffle=False))


def test_new_task_registered_here_is_usable_by_name(data_dir):
    name = "spoken_world_tiny_kind_test"
    tasks.register_task(name, tasks.SpokenWorldCorpus("tiny"),
                        lambda r: ("What kind of thing is spoken?", r["kind"]) if r["language"] == "en" else None,
                        tasks.METRICS["exact_match"], replace=True)
    assert seqio.get_mixture_or_task(name).num_input_examples("train") == spoken_world.CONFIGS["tiny"].train_items
    batch = next(get_batches(name, "train", feature_lengths=LENGTHS, batch_size=4, shuffle=False))
    _check_batch(batch, 4)
    v = vocab.get_vocabulary()
    kinds = {v.decode([t for t in row if t > EOS]) for row in batch["decoder_target_tokens"]}
    assert kinds <= set(world_text.KINDS) and kinds


def test_process_exits_with_live_iterators(data_dir):
    """Iterators still alive at interpreter exit must not hang it (a tf.numpy_function in
    flight at exit deadlocks the iterator's destructor: the pipelines avoid them)."""
    import subprocess
    import sys
    code = ("import tasks\nfrom slm_jax.data import get_batches\n"
            f"L = {LENGTHS!r}\n"
            "its = [get_batches(n, 'train', feature_lengths=L, batch_size=2) for n in "
            "('spoken_world_tiny_all', 'spoken_world_tiny_qa')]\n"
            "[next(i) for i in its]\nprint('batched', flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(paths.REPO_ROOT), capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(paths.REPO_ROOT)})
    assert proc.returncode == 0 and "batched" in proc.stdout, proc.stderr[-2000:]


def test_makers_tf_form_matches_python():
    """Corpora without a listing (LibriSpeech) run asr_maker's TensorFlow form: same output."""
    from tasks import asr
    rows = [{"id": "a", "language": "en", "text": "hello there"}, {"id": "b", "language": "fr", "text": "salut"},
            {"id": "c", "language": "en", "text": "  "}]
    ds = tf.data.Dataset.from_tensor_slices({k: [r[k] for r in rows] for k in rows[0]})
    ds = ds.map(lambda ex: {**ex, "audio": tf.zeros([400], tf.int16)})
    make = asr.asr_maker("en")
    got = [(ex["id"].decode(), ex["instruction"].decode(), ex["targets"].decode())
           for ex in common.apply_make(ds, make, "t").as_numpy_iterator()]
    assert got == [(r["id"], *make(r)) for r in rows if make(r) is not None] == [
        ("a", "Transcribe the speech.", "hello there")]


# ----------------------------------------------------------------------------- mixtures


def test_mixture_rates_follow_example_counts(data_dir):
    name = "spoken_world_tiny_all"
    mix = seqio.get_mixture_or_task(name)
    counts = {t.name: t.num_input_examples("train") for t in mix.tasks}
    total = sum(counts.values())
    expected = {k: c / total for k, c in counts.items()}
    assert common.mixture_rates(name) == pytest.approx(expected, rel=1e-9)
    # tempered variant: rates proportional to counts ** (1/2)
    common.register_mixture("spoken_world_tiny_all_t2_test", list(counts), temperature=2.0, replace=True)
    tempered = common.mixture_rates("spoken_world_tiny_all_t2_test")
    z = sum(math.sqrt(c) for c in counts.values())
    assert tempered == pytest.approx({k: math.sqrt(c) / z for k, c in counts.items()}, rel=1e-9)

    n = 2000  # (shuffle=False: the tasks' own shuffle buffers would featurise far more than n examples)
    ds = mix.get_dataset(LENGTHS, split="train", shuffle=False, seed=1, num_epochs=None,
                         passthrough_features=["task"])
    seen = collections.Counter(t.decode() for t in ds.map(lambda ex: ex["task"]).take(n).as_numpy_iterator())
    # tolerance: 4.5 binomial standard deviations (+0.002) per task
    for task, p in expected.items():
        tol = 4.5 * math.sqrt(p * (1 - p) / n) + 0.002
        assert abs(seen[task] / n - p) <= tol, (task, seen[task] / n, p, tol)


# ----------------------------------------------------------------------------- vocabulary


def test_world_vocabulary_deterministic_with_t5_ids(data_dir, tmp_path):
    assert vocab.get_vocabulary().resolved is vocab.world_vocabulary()   # before a run names its own
    v = vocab.get_vocabulary("world")
    assert (v.pad_id, v.eos_id, v.unk_id, v.vocab_size) == (0, 1, 2, vocab.VOCAB_SIZE)
    again = vocab.world_spm_path(vocab.VOCAB_SIZE, str(tmp_path))  # trained afresh elsewhere
    assert again.read_bytes() == open(v.sentencepiece_model_file, "rb").read()
    for s in vocab.training_sentences()[::97] + ["Übermäßig ñ ç 42!"]:
        assert v.decode(v.encode(s)) == s


# ----------------------------------------------------------------------------- manifests


def _wav(path, sr=16000, seconds=0.5, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * 220 * t)
    soundfile.write(path, np.stack([x] * channels, 1) if channels > 1 else x, sr, subtype="PCM_16")


def test_manifest_bad_rows_are_named_and_good_rows_load(data_dir, tmp_path):
    (tmp_path / "audio").mkdir()
    _wav(tmp_path / "audio" / "good16k.wav")
    _wav(tmp_path / "audio" / "good8k.wav", sr=8000)
    _wav(tmp_path / "audio" / "rate7k.wav", sr=7000)
    _wav(tmp_path / "audio" / "stereo.wav", channels=2)
    (tmp_path / "audio" / "garbage.wav").write_bytes(b"not a wav file at all")
    rows = [
        ("audio/good16k.wav", "en", "hello world", "bonjour le monde", "fr"),
        ("audio/missing.wav", "en", "lost", "", ""),
        ("audio/good8k.wav", "fr", "bonjour", "hello", ""),
        ("audio/rate7k.wav", "en", "odd rate", "", ""),
        ("audio/good16k.wav", "en", "  ", "", ""),
        ("audio/garbage.wav", "en", "garbage", "", ""),
        ("audio/stereo.wav", "en", "two channels", "", ""),
    ]
    tsv = tmp_path / "manifest.tsv"
    tsv.write_text("audio\tlanguage\ttranscript\ttranslation\ttranslation_language\n"
                   + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.warns(local_manifest.ManifestWarning) as w:
        names = local_manifest.register_manifest("test_manifest", tsv, replace=True)
    msg = str(w[0].message)
    assert "5 of 7 rows skipped" in msg
    for line, file, reason in [(3, "missing.wav", "not found"), (5, "rate7k.wav", "unsupported sample rate 7000"),
                               (6, "good16k.wav", "empty transcript"), (7, "garbage.wav", "unreadable audio"),
                               (8, "stereo.wav", "2 channels")]:
        assert any(f"row {line} (" in ln and file in ln and reason in ln for ln in msg.splitlines()), (line, msg)
    assert names == ["test_manifest_asr", "test_manifest_ast"]
    asr_task = seqio.get_mixture_or_task("test_manifest_asr")
    assert asr_task.num_input_examples("train") == 2
    v = vocab.get_vocabulary()
    batch = next(get_batches("test_manifest_asr", "train", feature_lengths=LENGTHS, batch_size=2, shuffle=False))
    _check_batch(batch, 2)
    assert batch["feature_mask"].sum(1).tolist() == [50, 50]  # 0.5 s at 100 frames/s, 8 kHz resampled
    assert sorted(v.decode([t for t in r if t > EOS]) for r in batch["decoder_target_tokens"]) == ["bonjour",
                                                                                                   "hello world"]
    ast = next(seqio.get_mixture_or_task("test_manifest_ast").get_dataset(LENGTHS, "train", shuffle=False)
               .as_numpy_iterator())
    assert v.decode(ast["instruction"].tolist()) == "Translate the speech into French."

    # a split too long to hold in memory is streamed from disk: same audio, same features
    corpus = seqio.get_mixture_or_task("test_manifest_asr").source.corpus
    held = {ex["id"]: ex["audio"] for ex in corpus.load("train", shuffle=False, seed=None, shard_info=None)
            .as_numpy_iterator()}
    streamed = local_manifest.ManifestCorpus(tsv)
    streamed.max_in_memory_hours = 0.0
    with pytest.warns(local_manifest.ManifestWarning):
        for ex in streamed.load("train", shuffle=False, seed=None, shard_info=None).as_numpy_iterator():
            np.testing.assert_allclose(ex["audio"], held[ex["id"]] / 32768.0, atol=1 / 32768)

    with pytest.raises(local_manifest.ManifestError, match=r"row 5 \(.*rate7k.wav\)"):
        local_manifest.read_manifest(tsv, strict=True)
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps({"audio": "audio/good16k.wav", "language": "en", "transcript": "hi", "split": "test"})
                     + "\n{broken\n", encoding="utf-8")
    with pytest.warns(local_manifest.ManifestWarning, match=r"row 2 .*invalid JSON"):
        m = local_manifest.read_manifest(jsonl)
    assert [r["split"] for r in m.records] == ["test"]


# ----------------------------------------------------------------------------- FSDD


@pytest.mark.skipif(fsdd.fsdd_dir() is None, reason="FSDD recordings not found (../shared/data/fsdd)")
def test_fsdd_eval_tasks():
    assert tasks.FSDD_TASKS == ["fsdd_asr_en", "fsdd_digits"]
    task = seqio.get_mixture_or_task("fsdd_asr_en")
    assert task.splits == ("test",) and task.num_input_examples("test") == len(
        [f for f in os.listdir(fsdd.fsdd_dir()) if f.endswith(".wav")])
    v = vocab.get_vocabulary()
    words = {world_text.cardinal(d, "en"): d for d in range(10)}
    for name in ("fsdd_asr_en", "fsdd_digits"):
        batch = next(get_batches(name, "test", feature_lengths=LENGTHS, batch_size=4, shuffle=False))
        _check_batch(batch, 4)
        targets = [v.decode([t for t in r if t > EOS]) for r in batch["decoder_target_tokens"]]
        assert all((t in words) if name == "fsdd_asr_en" else t in "0123456789" for t in targets), targets
    # any first N records spread over digits and speakers (a bounded evaluation reads the first N)
    recs = task.source.corpus.records("test")
    assert {r["value"] for r in recs[:10]} == set(range(10))
    assert len({r["voice"] for r in recs[:50]}) == min(5, len({r["voice"] for r in recs}))


def test_speech_buckets_pad_to_their_bound_lose_nothing_and_resume(data_dir):
    name, kw = "spoken_world_tiny_asr_en", dict(feature_lengths=LENGTHS, batch_size=4, seed=3)

    def rows(batches):   # (valid frames, targets) of every example, order-free
        return sorted((int(b["feature_mask"][i].sum()), tuple(b["decoder_target_tokens"][i].tolist()))
                      for b in batches for i in range(len(b["feature_mask"])))

    plain = list(get_batches(name, "train", num_epochs=1, drop_remainder=False, **kw))
    lengths = np.array([n for n, _ in rows(plain)])
    buckets = sorted({int(np.quantile(lengths, 1 / 3)), int(np.quantile(lengths, 2 / 3))})
    bounds = buckets + [LENGTHS["speech"]]
    bucketed = list(get_batches(name, "train", num_epochs=1, drop_remainder=False, speech_buckets=buckets, **kw))
    assert rows(bucketed) == rows(plain)        # the same examples: none dropped, none repeated
    widths = set()
    for b in bucketed:
        width = b["features"].shape[1]
        assert width in bounds and b["feature_mask"].shape[1] == width
        lower = max([x for x in bounds if x < width], default=0)
        valid = b["feature_mask"].sum(1)
        assert (valid <= width).all() and (valid > lower).all()   # each example in its own bucket
        assert not b["features"][b["feature_mask"] == 0].any()    # padding is zeros
        widths.add(width)
    assert len(widths) >= 2
    # resuming at batch k yields exactly the batches an uninterrupted run yields from k on
    full = list(itertools.islice(get_batches(name, "train", speech_buckets=buckets, **kw), 8))
    tail = list(itertools.islice(get_batches(name, "train", speech_buckets=buckets, start_batch=5, **kw), 3))
    for a, b in zip(full[5:], tail):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(ValueError, match="single input shard"):
        get_batches(name, "train", speech_buckets=buckets, num_shards=2, **kw)
    # a bounded sample is the first N examples, with or without buckets (grouping by length
    # must not pick whichever lengths fill a bucket first)
    first = rows(itertools.islice(get_batches(name, "train", num_epochs=1, drop_remainder=False, shuffle=False,
                                              batch_size=1, feature_lengths=LENGTHS), 9))
    for bk in ((), buckets):
        sample = list(get_batches(name, "train", num_epochs=1, drop_remainder=False, shuffle=False, batch_size=4,
                                  feature_lengths=LENGTHS, speech_buckets=bk, max_examples=9))
        assert rows(sample) == first, bk
    # bucketed, the sample is batched shortest first, each batch cut to its longest example's bucket
    valid = [b["feature_mask"].sum(1) for b in sample]
    assert all(a.max() <= b.min() for a, b in zip(valid, valid[1:]))
    assert [b["features"].shape[1] for b in sample] == [bucket_bound(int(v.max()), buckets, LENGTHS["speech"])
                                                         for v in valid]


def test_text_examples_are_the_utterances_a_bounded_speech_evaluation_scores(data_dir):
    """The demo's text-input rows score the same first N utterances as its speech rows: the
    corpus's unshuffled read order, which differs from the listing's (tfds shards)."""
    from slm_jax.demo_baselines import text_examples
    v = vocab.get_vocabulary()
    for name in ("spoken_world_tiny_asr_fr", "spoken_world_tiny_ast_en_de"):
        speech = [v.decode([t for t in row if t > EOS]) for b in get_batches(
            name, "train", feature_lengths=LENGTHS, batch_size=4, shuffle=False, num_epochs=1,
            drop_remainder=False, max_examples=6) for row in b["decoder_target_tokens"]]
        text = text_examples(name, "train", limit=6)
        assert [target for _, _, target in text] == speech, name
        assert len(text) == 6


def test_char_asr_targets_are_the_utf8_text(data_dir):
    """The `_asr_chars` tasks (CTC pretraining on characters) hold the same utterances as `_asr`,
    with UTF-8 byte targets (seqio.ByteVocabulary: byte + 3, then EOS = 1); accents survive."""
    task = seqio.get_mixture_or_task("spoken_world_tiny_asr_chars_fr")
    assert isinstance(task.output_features["targets"].vocabulary, seqio.ByteVocabulary)
    recs = {r["id"]: r for r in spoken_world.plan(spoken_world.CONFIGS["tiny"], "train")}
    n = 0
    for ex in task.get_dataset({**LENGTHS, "targets": 96}, split="train", shuffle=False).as_numpy_iterator():
        text = recs[ex["id"].decode()]["text"]
        assert ex["targets"][-1] == EOS
        assert bytes(int(t) - 3 for t in ex["targets"][:-1]).decode("utf-8") == text
        n += 1
    assert n == spoken_world.CONFIGS["tiny"].train_items
    assert "spoken_world_tiny_asr_chars" in seqio.MixtureRegistry.names()


def test_bounded_read_warns_of_no_unfinished_cache(data_dir):
    """get_batches with max_examples reads the first examples of a split; neither SeqIO nor the
    corpus may cache the split in memory on the way, or tf.data discards the unfinished cache
    with a warning on every bounded evaluation. Run with TF's C++ log on (the tests silence it)."""
    code = ("from slm_jax.data import get_batches; import tasks, gc\n"
            "b = get_batches('spoken_world_tiny_asr_en', 'test', feature_lengths=%r, batch_size=2, shuffle=False,"
            " num_epochs=1, max_examples=2)\n"
            "print('rows', sum(x['features'].shape[0] for x in b)); del b; gc.collect()\n" % LENGTHS)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rows 2" in proc.stdout
    assert "did not fully read the dataset being cached" not in proc.stderr, proc.stderr[-3000:]


def test_corpus_does_not_autocache_a_split(data_dir):
    """A bounded evaluation reads only the first examples of a split. Were the split autocached
    in memory (TFDS does so for small datasets), tf.data would discard the unfinished cache and
    warn on every evaluation (the tests silence TF's C++ log, so the dataset graph is checked)."""
    corpus = seqio.get_mixture_or_task("spoken_world_tiny_asr_en").source.corpus
    ds = corpus.load("test", shuffle=False, seed=None, shard_info=None)
    assert b"CacheDataset" not in ds._as_serialized_graph().numpy()
    first = list(ds.take(1).as_numpy_iterator())
    assert len(first) == 1 and first[0]["audio"].size > 0
