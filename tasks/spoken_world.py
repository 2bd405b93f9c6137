"""spoken_world: world_text items spoken by espeak-ng (and flite) in English, French, German and Spanish.

Every item of `world_text.generate_items` is synthesized once in each of the four languages,
so a split holds 4 x items utterances whose transcripts are translations of each other
(`item_id` links them). Each utterance gets a voice variant, a speed (words per minute) and a
pitch drawn deterministically from its split's pool. Voice variants are held out:

    train       m1 m2 m3 m4 m5 f1 f2 f3 (espeak-ng)   English also: slt rms awb kal16 (flite)
    validation  m6 f4
    test        m7 f5

so validation and test measure generalisation to unseen voices (the texts of each split are
drawn with their own seed, too). Speed 130-185 wpm and pitch 30-70 in every split. A share
of the English training utterances (`SpokenWorldConfig.flite_share`) is spoken by flite's
voices instead, which are built from recordings of four human speakers (CMU ARCTIC slt, rms,
awb; kal): formant synthesis alone gives an adapter that fits espeak-ng's voices and fails
on real speech. flite sets a speed on every voice and a pitch on slt and kal16 only (the
record's pitch is 0 where the voice keeps its own). The validation and test splits stay
espeak-ng only, so their numbers compare across versions.

Audio is espeak-ng's 22.05 kHz output (flite's is 16 kHz) resampled to 16 kHz (polyphase,
slm_jax.features.resample) and stored as int16 (tfds Audio, raw bytes): both produce 16-bit PCM, so
int16 keeps all the information at half the size of float32 (the resampler's extra
precision is below the 16-bit noise floor of the source); the task pipeline divides by 32768.

Configs: "tiny" (16/6/8 items = 64/24/32 utterances, builds in seconds: tests) and "demo"
(1500/50/100 items = 6000/200/400 utterances, a few minutes on 2 cores). Any size:
`SpokenWorldConfig(name="mine", train_items=..., ...)` and `tasks.register_spoken_world(config)`.
Synthesis runs cores + 1 synthesizer processes at a time ($SLM_SYNTH_WORKERS): tiny builds in
~2 s, demo in ~52 s on 2 idle cores. The build records a fingerprint of each split's
plan; loading a build whose fingerprint differs from the current code's is an error (delete
the folder to rebuild). Builds are deterministic (same config -> identical examples). Data dir: $SLM_DATA_DIR/tfds
(default <repo>/data_cache/tfds). Build ahead of time with
    python -m tasks.spoken_world --config demo
otherwise a task builds its corpus on first use.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import fcntl
import functools
import hashlib
import inspect
import json
import os
import random
import shutil
import struct
import subprocess
import time

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from slm_jax import features as features_lib
from tasks import common, paths, world_text

LANGUAGES = world_text.LANGUAGES
SPLITS = ("train", "validation", "test")
ESPEAK_VOICES = {"en": "en-us", "fr": "fr-fr", "de": "de", "es": "es"}
VOICE_POOLS = {
    "train": ("m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3"),
    "validation": ("m6", "f4"),
    "test": ("m7", "f5"),
}
# flite voices of English training utterances (flite -voice NAME); the record's voice is
# "flite-NAME". F0_MEANS: the voices whose mean pitch flite can set, with their own mean (Hz).
FLITE_POOLS = {"train": ("slt", "rms", "awb", "kal16"), "validation": (), "test": ()}
FLITE_F0_MEANS = {"slt": 165, "kal16": 105}
FLITE_PREFIX = "flite-"
SPEED_RANGE = (130, 185)  # espeak-ng -s, words per minute
PITCH_RANGE = (30, 70)  # espeak-ng -p, 0-99
_SPLIT_INDEX = {s: i + 1 for i, s in enumerate(SPLITS)}


def flite_sets_pitch(voice: str) -> bool:
    """Whether flite can set the pitch of `voice` ("flite-NAME"); the others keep their own."""
    return voice.removeprefix(FLITE_PREFIX) in FLITE_F0_MEANS


@dataclasses.dataclass(eq=False)
class SpokenWorldConfig(tfds.core.BuilderConfig):
    """Number of world_text items per split (each is spoken in all 4 languages), the seed, and
    the share of English utterances a split with flite voices (FLITE_POOLS) gives to them."""

    train_items: int = 16
    validation_items: int = 6
    test_items: int = 8
    seed: int = 0
    flite_share: float = 0.5

    def num_items(self, split: str) -> int:
        return {"train": self.train_items, "validation": self.validation_items, "test": self.test_items}[split]


CONFIGS = {
    "tiny": SpokenWorldConfig(name="tiny", description="a few dozen utterances per split (tests)",
                              train_items=16, validation_items=6, test_items=8),
    "demo": SpokenWorldConfig(name="demo", description="thousands of utterances (the demo run)",
                              train_items=1500, validation_items=50, test_items=100),
}


# ----------------------------------------------------------------------------- the plan


@functools.lru_cache(maxsize=32)
def _plan(seed: int, split: str, n: int, flite_share: float) -> tuple:
    items = world_text.generate_items(n, seed * 7919 + _SPLIT_INDEX[split])
    records = world_text.text_records(items, split)
    rng = random.Random(f"spoken_world-voices-{seed}-{split}")
    # its own stream, so the espeak-ng draws (and the splits without flite) stay as they were
    flite_rng = random.Random(f"spoken_world-flite-{seed}-{split}")
    for r in records:
        r["voice"] = rng.choice(VOICE_POOLS[split])
        r["speed"] = rng.randint(*SPEED_RANGE)
        r["pitch"] = rng.randint(*PITCH_RANGE)
        if r["language"] == "en" and FLITE_POOLS[split] and flite_rng.random() < flite_share:
            r["voice"] = FLITE_PREFIX + flite_rng.choice(FLITE_POOLS[split])
            if not flite_sets_pitch(r["voice"]):
                r["pitch"] = 0
    return tuple(records)


def _config_plan(config: SpokenWorldConfig, split: str) -> tuple:
    if not 0.0 <= config.flite_share <= 1.0:
        raise ValueError(f"SpokenWorldConfig {config.name!r}: flite_share must be in [0, 1], got {config.flite_share}")
    return _plan(config.seed, split, config.num_items(split), config.flite_share)


def plan_fingerprint(config: SpokenWorldConfig, split: str) -> str:
    """Hash of a split's plan, stored with the build to detect builds from older code."""
    text = json.dumps(_config_plan(config, split), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan(config: SpokenWorldConfig, split: str) -> list[dict]:
    """The records of `split` in a fixed order: what the builder synthesizes, without audio."""
    if split not in SPLITS:
        raise ValueError(f"spoken_world: unknown split {split!r}; it has {list(SPLITS)}")
    return [dict(r, translations=dict(r["translations"]), slots=dict(r["slots"]))
            for r in _config_plan(config, split)]


# ----------------------------------------------------------------------------- synthesis


def _parse_wav(data: bytes, what: str) -> tuple[int, np.ndarray]:
    """(sample_rate, int16 samples) of a streamed WAV (espeak-ng's size fields are bogus)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RuntimeError(f"no WAV came back for {what}: {data[:64]!r}")
    pos, sr, bits = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if cid == b"fmt ":
            channels, sr = struct.unpack("<HI", data[pos + 10:pos + 16])[0:2]
            bits = struct.unpack("<H", data[pos + 22:pos + 24])[0]
            if channels != 1 or bits != 16:
                raise RuntimeError(f"WAV for {what}: expected mono 16-bit, got {channels} ch {bits} bit")
        elif cid == b"data":
            if sr is None:
                raise RuntimeError(f"WAV for {what}: data chunk before fmt chunk")
            body = data[pos + 8:]
            return sr, np.frombuffer(body[:len(body) // 2 * 2], dtype="<i2")
        pos += 8 + size
    raise RuntimeError(f"WAV for {what}: no data chunk")


def _command(text: str, language: str, voice: str, speed: int, pitch: int) -> tuple[str, list[str], bytes]:
    """(engine, argv, stdin) that speaks `text` with `voice`: an espeak-ng variant or "flite-NAME"."""
    if voice.startswith(FLITE_PREFIX):
        name = voice[len(FLITE_PREFIX):]
        if language != "en":
            raise ValueError(f"flite voice {voice!r} speaks English only, not {language!r}")
        if bool(pitch) != flite_sets_pitch(voice):
            raise ValueError(f"flite voice {voice!r}: pitch {pitch} given, but flite sets the pitch of "
                             f"{sorted(FLITE_F0_MEANS)} only (0 for the others)")
        args = ["-voice", name, "--setf", f"duration_stretch={165 / speed:.4f}"]
        if pitch:   # pitch 30-70 -> 0.85-1.15 x the voice's own mean
            args += ["--setf", f"int_f0_target_mean={FLITE_F0_MEANS[name] * (0.85 + 0.3 * (pitch - 30) / 40):.1f}"]
        return "flite", args + ["-t", text, "-o", "/dev/stdout"], b""
    return "espeak-ng", ["--stdout", "-b", "1", "-v", f"{ESPEAK_VOICES[language]}+{voice}", "-s", str(speed),
                         "-p", str(pitch), "--stdin"], text.encode("utf-8")


def synthesize(text: str, language: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """Speech of `text` by espeak-ng or flite (`voice` "flite-NAME"): int16 samples at 16 kHz."""
    engine, args, stdin = _command(text, language, voice, speed, pitch)
    exe = shutil.which(engine)
    if exe is None:
        raise RuntimeError(f"{engine} is not installed (apt-get install {engine}); spoken_world needs it to build")
    what = f"{text!r} ({engine} {language}+{voice}, speed {speed}, pitch {pitch})"
    proc = subprocess.run([exe] + args, input=stdin, capture_output=True)
    if proc.returncode:
        raise RuntimeError(f"{engine} failed for {what}: {proc.stderr.decode(errors='replace')}")
    sr, pcm = _parse_wav(proc.stdout, what)
    if pcm.size == 0:
        raise RuntimeError(f"{engine} produced no audio for {what}")
    audio = features_lib.resample(pcm.astype(np.float32) / 32768.0, sr, common.SAMPLE_RATE, source=what)
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


def _synthesize_record(r: dict) -> np.ndarray:
    return synthesize(r["text"], r["language"], r["voice"], r["speed"], r["pitch"])


def _build_workers() -> int:
    return int(os.environ.get("SLM_SYNTH_WORKERS") or (os.cpu_count() or 1) + 1)


# ----------------------------------------------------------------------------- TFDS builder


class PCM16Audio(tfds.features.Audio):
    """tfds Audio whose int16 samples are stored as raw bytes (2 bytes a sample). The stock
    feature passes arrays straight to the proto as an int64 list, ignoring `encoding`
    (up to 10 bytes a negative sample)."""

    def encode_example(self, audio):
        return tfds.features.Tensor.encode_example(self, np.asarray(audio, np.int16))



class SpokenWorld(tfds.core.GeneratorBasedBuilder, skip_registration=__name__ == "__main__"):
    """world_text items spoken by espeak-ng (and flite, English) in en/fr/de/es, voices held out per split."""

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {"1.0.0": "First version.",
                     "1.1.0": "A share of the English training utterances spoken by flite's voices.",
                     "1.2.0": "Single digits are a third of the numbers (world_text.NUMBER_RANGES)."}
    BUILDER_CONFIGS = list(CONFIGS.values())

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # The file defining the builder: what tfds computes too, but without its import of the
        # optional `importlib_resources` package (not installed by tensorflow-datasets itself).
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "id": text(), "item_id": text(),
                "audio": PCM16Audio(shape=(None,), dtype=np.int16, sample_rate=common.SAMPLE_RATE,
                                    encoding=tfds.features.Encoding.BYTES),
                "language": text(), "text": text(), "kind": text(),
                "value": tfds.features.Scalar(np.int64), "written": text(),
                "translations": tfds.features.FeaturesDict({lang: text() for lang in LANGUAGES}),
                "slots": tfds.features.FeaturesDict({s: text() for s in world_text.SLOT_NAMES}),
                "voice": text(), "speed": tfds.features.Scalar(np.int32), "pitch": tfds.features.Scalar(np.int32),
            }),
            supervised_keys=None,
            metadata=tfds.core.MetadataDict(),
            homepage="https://espeak-ng.org",
            description=__doc__.split("\n\n")[0],
        )

    def _split_generators(self, dl_manager):
        self.info.metadata.update({f"plan_{s}": plan_fingerprint(self.builder_config, s) for s in SPLITS})
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split):
        records = plan(self.builder_config, split)
        # Each synthesis is a synthesizer *process*; threads only wait on them and run the
        # (GIL-releasing) resampler, so N threads keep N processes busy without forking a
        # process that has TensorFlow loaded.
        with concurrent.futures.ThreadPoolExecutor(_build_workers()) as pool:
            for start in range(0, len(records), 256):
                chunk = records[start:start + 256]
                for r, audio in zip(chunk, pool.map(_synthesize_record, chunk)):
                    yield r["id"], {**r, "audio": audio}


def builder(config: str | SpokenWorldConfig, data_dir: str | os.PathLike | None = None) -> SpokenWorld:
    return SpokenWorld(config=config, data_dir=os.fspath(data_dir or paths.tfds_dir()))


def prepare(config: str | SpokenWorldConfig, data_dir=None, verbose: bool = True) -> SpokenWorld:
    """The builder of `config`, built first if it is not yet."""
    b = builder(config, data_dir)
    if b.is_prepared():
        return b
    # Several processes (hosts, parallel test runs) may build the same config: one builds, the
    # others wait on the lock and then find it prepared.
    lock_path = os.path.join(b.data_dir_root, f".spoken_world_{b.builder_config.name}.lock")
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        b = builder(config, data_dir)
        if not b.is_prepared():
            _build(b, verbose)
    return b


def _build(b: SpokenWorld, verbose: bool) -> None:
    cfg = b.builder_config
    n = 4 * sum(cfg.num_items(s) for s in SPLITS)
    if verbose:
        print(f"[spoken_world] building {cfg.name} ({n} utterances) in {b.data_dir}", flush=True)
    t0 = time.time()
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    if verbose:
        print(f"[spoken_world] built {cfg.name} in {time.time() - t0:.1f} s", flush=True)


# ----------------------------------------------------------------------------- corpus


class SpokenWorldCorpus(common.Corpus):
    """The spoken_world TFDS dataset of one config as a task corpus (built on first load)."""

    splits = SPLITS

    def __init__(self, config: str | SpokenWorldConfig):
        self.config = CONFIGS[config] if isinstance(config, str) else config
        self.name = f"spoken_world/{self.config.name}"

    def records(self, split):
        self.check_split(split)
        return plan(self.config, split)

    def _builder(self, split: str):
        b = prepare(self.config)
        stored, expected = b.info.metadata.get(f"plan_{split}"), plan_fingerprint(self.config, split)
        if stored != expected:
            raise RuntimeError(
                f"{b.data_dir}: this build of spoken_world/{self.config.name} lists other utterances ({split} plan "
                f"{stored}) than the code does now ({expected}); delete that folder to rebuild it")
        return b

    def list_shards(self, split):
        self.check_split(split)
        return [f.filename for f in self._builder(split).info.splits[split].file_instructions]

    def load(self, split, *, shuffle, seed, shard_info):
        self.check_split(split)
        # no autocache: a bounded evaluation reads only the first examples, and tf.data discards (and
        # warns about) a cache its reader did not finish
        read_config = tfds.ReadConfig(shuffle_seed=seed, skip_prefetch=True, try_autocache=False)
        if shard_info:
            read_config.input_context = tf.distribute.InputContext(
                num_input_pipelines=shard_info.num_shards, input_pipeline_id=shard_info.index)
        decoders = tfds.decode.PartialDecoding({"id": True, "audio": True})  # the rest is in the plan
        ds = self._builder(split).as_dataset(split=split, shuffle_files=shuffle, read_config=read_config,
                                             decoders=decoders)
        return ds.shuffle(256, seed=seed) if shuffle else ds


def main(argv=None):
    p = argparse.ArgumentParser(description="Build the spoken_world TFDS dataset.")
    p.add_argument("--config", default="demo", help=f"one of {sorted(CONFIGS)}")
    p.add_argument("--data_dir", default=None, help="default: $SLM_DATA_DIR/tfds or <repo>/data_cache/tfds")
    args = p.parse_args(argv)
    b = prepare(args.config, args.data_dir)
    for split in SPLITS:
        print(f"{split}: {b.info.splits[split].num_examples} utterances")


if __name__ == "__main__":
    # `python -m tasks.spoken_world`: importing the package has already imported this file as
    # tasks.spoken_world (which registered the builder); run that copy, not this __main__ one.
    from tasks import spoken_world as _registered
    _registered.main()
