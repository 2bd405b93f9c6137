"""Bad data and damaged checkpoints, injected on the tiny config: each is named where it is
found (a manifest row at registration, a checkpoint step at resume, the user's setting in an
error) and skipped or fallen back from; none stops a run midway.

| case                                                    | test                                             |
|---------------------------------------------------------|--------------------------------------------------|
| utterance longer than the speech feature length         | test_too_long_utterance_is_skipped_or_cut        |
| NaN / inf samples in a float wav                        | test_non_finite_samples_are_named_at_registration |
| a non-UTF-8 line in a TSV or JSONL manifest             | test_non_utf8_line_is_named_and_the_rest_loads   |
| truncated wav whose header claims more data             | test_truncated_wav_is_named_at_registration      |
| (all four in one manifest) the good rows train          | test_good_rows_of_a_bad_manifest_train           |
| newest step's arrays truncated / random bytes,          | test_damaged_newest_step_is_moved_aside_...      |
|   _METADATA deleted, fingerprint emptied, empty folder  |   test_resume_after_damage_...                   |
| no intact step left                                     | test_no_intact_step_is_an_error_listing_each     |
| a run that fails before step 1                          | test_no_checkpoint_before_the_first_step         |
| batch size not divisible by the data axis               | test_batch_size_not_divisible_names_the_setting  |
| garbage msgpack / a whole-SLM file as a foundation      | test_bad_foundation_file_is_named_with_contents  |
| infer on audio longer than the model's window           | test_infer_cuts_long_audio_into_windows_or_refuses |
| train_metrics.jsonl after kill -9 and resume            | test_metrics_log_has_one_row_per_step_after_resume |
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import warnings

import jax
import numpy as np
import pytest
import seqio
import soundfile

from helpers import FEATURE_LENGTHS, tiny_run
from slm_jax import eval_lib, train_lib
from slm_jax.checkpoints.hf_common import CheckpointError
from slm_jax.checkpoints.manager import DamagedCheckpointError, TrainCheckpointer
from slm_jax.checkpoints.params_io import load_foundation, save_params
from slm_jax.data import get_batches
from tasks import local_manifest

# a failed orbax restore leaves asyncio callbacks that run after their event loop closed
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

BYTES = seqio.ByteVocabulary()
MAX_FRAMES = FEATURE_LENGTHS["speech"]          # 64 frames = 0.64 s of log-mel


# ----------------------------------------------------------------------------- manifests

def _wav(path, seconds=0.5, subtype="PCM_16", nonfinite=False, seed=0):
    x = (0.3 * np.random.default_rng(seed).uniform(-1, 1, int(16000 * seconds))).astype(np.float32)
    if nonfinite:
        x[100], x[200] = np.nan, np.inf
    soundfile.write(path, x, 16000, subtype=subtype)
    return path


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Good clips (0.4-0.6 s: 40-60 frames) and one of each fault, in one folder."""
    d = tmp_path_factory.mktemp("audio")
    for i, s in enumerate((0.5, 0.4, 0.6, 0.45)):
        _wav(d / f"good{i}.wav", s, seed=i)
    _wav(d / "float_ok.wav", 0.5, subtype="FLOAT", seed=9)
    _wav(d / "long.wav", 3.0)                                     # 300 frames
    _wav(d / "nan.wav", 0.5, subtype="FLOAT", nonfinite=True)
    _wav(d / "truncated.wav", 1.0)
    with open(d / "truncated.wav", "r+b") as f:                   # the header still says 1 s
        f.truncate(os.path.getsize(d / "truncated.wav") // 2)
    return d


def _tsv(path, rows: list[bytes]) -> str:
    path.write_bytes(b"audio\tlanguage\ttranscript\n" + b"".join(r + b"\n" for r in rows))
    return str(path)


GOOD_ROWS = [b"good0.wav\ten\tone", b"good1.wav\ten\ttwo", b"good2.wav\ten\tthree", b"float_ok.wav\ten\tfour"]


def _register(name, path, **kw) -> str:
    """register_manifest with the byte vocabulary; the warning it gives (or '')."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        local_manifest.register_manifest(name, path, vocabulary=BYTES, replace=True, **kw)
    return "\n".join(str(w.message) for w in caught if issubclass(w.category, local_manifest.ManifestWarning))


def _epoch(task) -> list[int]:
    """Frames of every example of one pass over the task's train split (speech length 64)."""
    batches = get_batches(task, "train", feature_lengths=FEATURE_LENGTHS, batch_size=1, shuffle=False,
                          num_epochs=1, drop_remainder=False)
    return sorted(int(b["feature_mask"].sum()) for b in batches)


GOOD_FRAMES = [40, 50, 50, 60]


def test_too_long_utterance_is_skipped_or_cut(audio):
    """A 3-s clip (300 frames) with speech length 64: named and skipped when the manifest is
    registered with max_frames, kept as its first 64 frames with too_long='cut', and without
    max_frames dropped by the pipeline (naming it) instead of stopping at the batch that has it."""
    path = _tsv(audio / "long.tsv", GOOD_ROWS + [b"long.wav\ten\tlong one"])
    msg = _register("fault_long", path, max_frames=MAX_FRAMES)
    assert "4 of 5 rows kept; 1 of 5 rows skipped: 1 too long" in msg, msg
    assert "row 6 (" in msg and "long.wav): too long: 3.00 s gives 300 feature frames, more than max_frames=64" in msg
    assert _epoch("fault_long_asr") == GOOD_FRAMES

    msg = _register("fault_long_cut", path, max_frames=MAX_FRAMES, too_long="cut")
    assert msg == ""
    m = seqio.get_mixture_or_task("fault_long_cut_asr").source.corpus.manifest
    assert m.summary().endswith("5 of 5 rows kept (1 cut to max_frames=64)")
    assert _epoch("fault_long_cut_asr") == sorted(GOOD_FRAMES + [64])

    assert _register("fault_long_late", path) == ""              # no max_frames: the run's length decides
    assert _epoch("fault_long_late_asr") == GOOD_FRAMES


def test_non_finite_samples_are_named_at_registration(audio):
    path = _tsv(audio / "nan.tsv", GOOD_ROWS + [b"nan.wav\ten\tnot a number"])
    msg = _register("fault_nan", path)
    assert "1 of 5 rows skipped: 1 non-finite samples" in msg, msg
    assert "row 6 (" in msg and "nan.wav): audio has 2 non-finite (NaN/inf) samples" in msg
    assert _epoch("fault_nan_asr") == GOOD_FRAMES


def test_non_utf8_line_is_named_and_the_rest_loads(audio, tmp_path):
    good = str(audio / "good0.wav")
    tsv = _tsv(tmp_path / "m.tsv", [b"%s\ten\tcaf\xe9 latin-1" % good.encode()]
               + [b"%s\ten\tone" % str(audio / "good1.wav").encode()])
    msg = _register("fault_utf8_tsv", tsv)
    assert "1 of 2 rows skipped: 1 not UTF-8" in msg, msg
    assert f"row 2 ({good}): line is not valid UTF-8 (invalid continuation byte at byte" in msg
    assert _epoch("fault_utf8_tsv_asr") == [40]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_bytes(b"".join(json.dumps({"audio": str(audio / f"good{i}.wav"), "language": "en",
                                           "transcript": t}).encode() + b"\n" for i, t in enumerate(["a", "b"]))
                      + b'{"audio": "x.wav", "language": "en", "transcript": "\xff\xfe"}\n')
    msg = _register("fault_utf8_jsonl", jsonl)
    assert "2 of 3 rows kept; 1 of 3 rows skipped: 1 not UTF-8" in msg and "row 3 (x.wav): line is not valid UTF-8" in msg
    assert _epoch("fault_utf8_jsonl_asr") == [40, 50]


def test_truncated_wav_is_named_at_registration(audio, tmp_path):
    path = _tsv(tmp_path / "m.tsv", [b"%s\ten\tcut short" % str(audio / "truncated.wav").encode(),
                                     b"%s\ten\tone" % str(audio / "good0.wav").encode()])
    msg = _register("fault_truncated", path)
    assert "1 of 2 rows skipped: 1 truncated audio" in msg, msg
    assert ("truncated.wav): truncated file: its header declares 32000 bytes (1.00 s) of audio, the file holds "
            "15978 bytes (0.50 s)") in msg
    assert _epoch("fault_truncated_asr") == [50]


def test_good_rows_of_a_bad_manifest_train(audio, tmp_path):
    """Every fault of the table in one manifest registered without max_frames: training runs its
    steps on the good rows (the long one dropped by the pipeline, the others at registration)."""
    rows = GOOD_ROWS + [b"long.wav\ten\tlong one", b"nan.wav\ten\tnan", b"good3.wav\ten\tcaf\xe9",
                        b"truncated.wav\ten\tcut short"]
    msg = _register("fault_all", _tsv(audio / "all.tsv", rows))
    assert "5 of 8 rows kept; 3 of 8 rows skipped: " in msg
    assert all(k in msg for k in ("1 non-finite samples", "1 not UTF-8", "1 truncated audio")), msg
    tiny_run(tmp_path / "run", "RunConfig.train_steps=2", "TrainConfig.log_every=1", task="fault_all_asr")
    assert train_lib.train(train_lib.RunConfig(), train_lib.TrainConfig())["step"] == 2


# ----------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained 4 steps without interruption (checkpoints at 2 and 4, every step
    logged), with the setup that reads it back (abstract state, fingerprint)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    tiny_run(run_dir, "RunConfig.train_steps=4", "RunConfig.save_every=2", "RunConfig.keep=5",
             "TrainConfig.log_every=1")
    train_lib.train(train_lib.RunConfig(), train_lib.TrainConfig())
    s = train_lib.setup(train_lib.RunConfig())
    s.checkpointer.close()
    return run_dir, s


def _damage(step_dir: str, kind: str) -> None:
    arrays = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
    assert arrays, step_dir
    if kind == "arrays truncated":
        for f in arrays:
            with open(f, "r+b") as fh:
                fh.truncate(os.path.getsize(f) // 2)
    elif kind == "arrays random bytes":
        rng = np.random.default_rng(0)
        for f in arrays:
            with open(f, "wb") as fh:
                fh.write(rng.bytes(os.path.getsize(f)))
    elif kind == "_METADATA deleted":
        os.remove(os.path.join(step_dir, "state", "_METADATA"))
    elif kind == "fingerprint emptied":
        open(os.path.join(step_dir, "fingerprint", "metadata"), "w").close()
    elif kind == "empty folder":
        shutil.rmtree(step_dir)
        os.makedirs(step_dir)


DAMAGE = ["arrays truncated", "arrays random bytes", "_METADATA deleted", "fingerprint emptied", "empty folder"]
REASONS = {"_METADATA deleted": "state/_METADATA is missing", "fingerprint emptied": "fingerprint/metadata is empty",
           "empty folder": "the step folder is empty", "arrays truncated": "Error", "arrays random bytes": "Error"}


def _copy_checkpoints(trained, tmp_path) -> str:
    d = str(tmp_path / "checkpoints")
    shutil.copytree(trained[0] / "checkpoints", d)
    return d


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_newest_step_is_moved_aside_and_the_previous_restored(trained, tmp_path, capsys, kind):
    d = _copy_checkpoints(trained, tmp_path)
    _damage(os.path.join(d, "4"), kind)
    files_before = sorted(os.path.relpath(p, os.path.join(d, "4")) for p in glob.glob(f"{d}/4/**", recursive=True))
    s = trained[1]
    ckpt = TrainCheckpointer(d, s.checkpointer.fingerprint, async_save=False)
    try:
        state = ckpt.restore_latest(s.trainer.abstract_state())
        assert int(state.step) == 2 and ckpt.latest_step() == 2
    finally:
        ckpt.close()
    out = capsys.readouterr().out
    assert f"{d}/4: checkpoint cannot be restored (" in out and REASONS[kind].lower() in out.lower(), out
    assert f"moved damaged step 4 aside to {d}/4.damaged" in out and "restored step 2" in out
    assert not os.path.exists(f"{d}/4")                          # moved aside, nothing deleted
    assert sorted(os.path.relpath(p, f"{d}/4.damaged")
                  for p in glob.glob(f"{d}/4.damaged/**", recursive=True)) == files_before


def test_no_intact_step_is_an_error_listing_each(trained, tmp_path):
    d = _copy_checkpoints(trained, tmp_path)
    _damage(os.path.join(d, "4"), "fingerprint emptied")
    _damage(os.path.join(d, "2"), "_METADATA deleted")
    s = trained[1]
    ckpt = TrainCheckpointer(d, s.checkpointer.fingerprint, async_save=False)
    try:
        with pytest.raises(DamagedCheckpointError, match=(
                rf"(?s)no intact checkpoint to resume from.*{d}/4: .*fingerprint/metadata is empty"
                rf".*{d}/2: .*state/_METADATA is missing.*Move these step folders aside")):
            ckpt.restore_latest(s.trainer.abstract_state())
    finally:
        ckpt.close()
    assert sorted(os.listdir(d)) == ["2", "4"]                    # nothing moved when nothing is intact


def _losses(run_dir) -> list[tuple[int, float]]:
    with open(os.path.join(run_dir, "train_metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f)]


def test_resume_after_damage_restores_the_previous_step_and_ends_as_uninterrupted(trained, tmp_path):
    """The newest step's arrays truncated: train() resumes from step 2 and steps 3-4 are the
    uninterrupted run's, bit for bit; the log has each step once."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained[0], run_dir)
    _damage(str(run_dir / "checkpoints" / "4"), "arrays truncated")
    tiny_run(run_dir, "RunConfig.train_steps=4", "RunConfig.save_every=2", "RunConfig.keep=5",
             "TrainConfig.log_every=1")
    assert train_lib.train(train_lib.RunConfig(), train_lib.TrainConfig())["step"] == 4
    assert _losses(run_dir) == _losses(trained[0])
    assert os.path.isdir(run_dir / "checkpoints" / "4.damaged") and os.path.isdir(run_dir / "checkpoints" / "4")


def test_metrics_log_has_one_row_per_step_after_resume(trained, tmp_path):
    """As after kill -9 between step 4's log row and its checkpoint, mid-way through a row:
    the rerun resumes from step 2, drops the rows past it and the torn one, and logs 3-4 once."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained[0], run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "4")
    with open(run_dir / "train_metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')
    tiny_run(run_dir, "RunConfig.train_steps=4", "RunConfig.save_every=2", "TrainConfig.log_every=1")
    train_lib.train(train_lib.RunConfig(), train_lib.TrainConfig())
    assert _losses(run_dir) == _losses(trained[0])
    assert [s for s, _ in _losses(run_dir)] == [1, 2, 3, 4]


def test_no_checkpoint_before_the_first_step(tmp_path):
    """A run that fails before its first step writes no checkpoint, so a run with another
    config then starts in the same directory instead of being refused as a mismatch."""
    def failing_input(*args, **kwargs):          # fails at the first batch, inside the train loop
        raise RuntimeError("input pipeline broke")
        yield

    tiny_run(tmp_path, "RunConfig.train_steps=1")
    with pytest.raises(RuntimeError, match="input pipeline broke"):
        train_lib.train(train_lib.RunConfig(), dataclasses.replace(train_lib.TrainConfig(), input_fn=failing_input))
    assert not [p for p in os.listdir(tmp_path / "checkpoints") if p.isdigit()]
    tiny_run(tmp_path, "RunConfig.train_steps=1", "slm_jax.AdapterConfig.hidden_size=16")
    assert train_lib.train(train_lib.RunConfig(), train_lib.TrainConfig())["step"] == 1


def test_batch_size_not_divisible_names_the_setting(tmp_path):
    """Batch 3 on a data axis of 2: refused before any step or checkpoint, naming
    TrainConfig.batch_size and the axis size."""
    tiny_run(tmp_path, "TrainConfig.batch_size=3", "MeshConfig.data=2", "MeshConfig.model=4")
    with pytest.raises(ValueError, match=r"TrainConfig.batch_size=3 is not divisible by the mesh's 'data' axis "
                                         r"of size 2 .*use a multiple of 2"):
        train_lib.train(train_lib.RunConfig(), train_lib.TrainConfig())
    assert not [p for p in os.listdir(tmp_path / "checkpoints") if p.isdigit()]


def test_bad_foundation_file_is_named_with_contents(trained, tmp_path):
    garbage = tmp_path / "garbage.msgpack"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    tiny_run(tmp_path / "run", f"RunConfig.llm_checkpoint='{garbage}'")
    with pytest.raises(CheckpointError, match=rf"RunConfig.llm_checkpoint: {garbage}: not a flax msgpack "
                                              r"parameter file \(1,000 bytes; "):
        train_lib.setup(train_lib.RunConfig())
    s = trained[1]
    whole = str(tmp_path / "slm.msgpack")
    save_params(whole, jax.device_get(s.params(s.trainable)))       # a whole SLM, not its LLM
    abstract = jax.eval_shape(lambda: s.params(s.trainable))["llm"]
    with pytest.raises(CheckpointError, match=(
            rf"(?s){whole}: converted params lack .*the file holds top-level keys \['adapter', 'llm', "
            r"'speech_encoder'\] .*its 'llm' subtree has the keys the model expects")):
        load_foundation(whole, "llm", abstract)


def test_infer_cuts_long_audio_into_windows_or_refuses(trained, audio, monkeypatch, capsys):
    """A 3-s file (300 frames) for a model run on 64 frames at once: decoded in 5 windows of at
    most 64 frames, one output line; refused naming the file and the setting with
    long_audio='refuse'."""
    from slm_jax.task_model import SLMTaskModel
    seen = []
    real = SLMTaskModel.predict_batch
    monkeypatch.setattr(SLMTaskModel, "predict_batch",
                        lambda self, params, batch, *a, **k: (seen.append(batch["features"].shape),
                                                              real(self, params, batch, *a, **k))[1])
    tiny_run(trained[0])
    files = [str(audio / "long.wav"), str(audio / "good0.wav")]
    cfg = eval_lib.InferConfig(audio_files=files, vocabulary=BYTES, instruction="transcribe", max_frames=MAX_FRAMES)
    outs = eval_lib.infer(train_lib.RunConfig(), cfg)
    assert len(outs) == 2 and max(shape[1] for shape in seen) <= MAX_FRAMES
    assert sum(shape[0] for shape in seen) == 5 + 1
    out = capsys.readouterr().out
    assert f"[infer] {files[0]}: 300 frames (3.0 s) is longer than InferConfig.max_frames=64: decoding 5 windows" in out
    with pytest.raises(ValueError, match=r"long.wav: 300 feature frames \(3.0 s\) is longer than "
                                         r"InferConfig.max_frames=64.*InferConfig.long_audio='windows'"):
        eval_lib.infer(train_lib.RunConfig(), dataclasses.replace(cfg, long_audio="refuse"))
