"""Frozen-encoder feature caching: run the frozen speech encoder once over a dataset, store its
outputs, and train the adapter from them instead of recomputing them at every step.

What is cached. For each example of a task split: the speech encoder's output (inference mode)
after the adapter's uniform subsampling, `SLM.speech_encoder_outputs`, trimmed to the example's
valid frames (the cache holds no padding), plus the example's instruction / decoder tokens as
`SLMFeatureConverter` produced them (trimmed after their last non-padding token). The frames
are stored in the adapter's compute dtype (`AdapterConfig.dtype`: float32, or bfloat16 when the
adapter computes in bfloat16), i.e. exactly the values the adapter's first parameterised layer
would see; the manifest records the dtype.

Why after the subsampling. The subsampling belongs to the adapter, but it is parameter-free
(`adapter.prepare_input`: a cast to the adapter dtype, then keep every `stride`-th frame or
average `stride`-frame windows, over valid frames only); so caching its output is exact, and
the cache is `stride` times smaller and faster to read. The price: the cache is tied to the
adapter's stride / subsampling mode / dtype, which are therefore part of its fingerprint
(changing them makes the cache stale, like changing the encoder).

Exactness. Training from the cache gives the same losses and adapter gradients as training from
audio features (tests/test_feature_cache.py checks it), because the encoder is frozen and its
training-mode output equals its inference-mode output. So:
  * no SpecAugment or other augmentation of the features or of the encoder input can apply to
    cached batches (this pipeline has none; one added later would be silently skipped, so
    train from audio features instead);
  * an encoder with dropout (`dropout_rate > 0`) is refused: its training output is random;
  * task preprocessing must be deterministic: the cache holds one pass over the split;
  * the cache is valid only for the encoder it was computed with. `manifest.json` records a
    fingerprint: the encoder config, the adapter's stride / subsampling / dtype, and the
    weights (sha256 of `RunConfig.speech_encoder_checkpoint`, or the init seed of a randomly
    initialised encoder); reading a cache whose fingerprint or feature lengths differ from the
    model's raises `StaleCacheError` naming the manifest and the differing fields.

Format. `<cache_dir>/<task>/<split>/`: `manifest.json` and ArrayRecord shards
(`<split>-NNNNN.array_record`, `group_size:1`, uncompressed, so any example is one random read)
of serialised `tf.train.Example`s with features `encoded` (raw bytes, [frames, D_enc] in the
manifest's dtype, little-endian), `frames`, `instruction_tokens`, `decoder_input_tokens`,
`decoder_target_tokens`. The manifest is written last: a cache without one is incomplete.

Usage. In the training gin file set

    TrainConfig.feature_cache_dir = "/data/slm_cache"

build the cache once with the same gin files (`CacheConfig.*` bindings choose the split, the
encoder's batch size and the shard size):

    python -m slm_jax.feature_cache --gin_file=my_run.gin [--gin.NAME=VALUE ...]

(slm_jax/feature_cache.py calls `train_lib.build_feature_cache`, which encodes with exactly the
weights `train_lib.setup(run)` builds: from `RunConfig.speech_encoder_checkpoint`, or initialised
from `RunConfig.seed` without one), then train as usual (`python -m slm_jax.main
--gin_file=my_run.gin`): train_lib reads `cached_batches`, passing
`encoder_fingerprint=cache_fingerprint(run)`. Rebuilding an up-to-date cache is a no-op; a stale
one is replaced. Evaluation and inference still run from audio.

`cached_batches` has `get_batches`' contract: deterministic for a seed, resumable at
`start_batch` in O(1), one epoch after another (`num_epochs=None`: forever). Shuffling is its
own: a fresh permutation of the whole split per epoch (from `seed` and the epoch), not seqio's
buffer order; unshuffled (and without `speech_buckets`), its batches are exactly
`get_batches(shuffle=False)`'s. With several hosts each global batch is the same as on one
host, and host `shard_index` gets its rows
`[shard_index * B / num_shards, (shard_index + 1) * B / num_shards)`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import time
from typing import Any, Iterator, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from slm_jax.array_memo import array_key
from slm_jax.data import bucket_bound
from slm_jax.fingerprint import differences, hash_path, jsonable
from slm_jax.models.slm import SLMConfig
from slm_jax.speech_windows import FrozenSpeech, PackedStream, SpeechWindows

CACHE_FORMAT = 1
MANIFEST = "manifest.json"
WRITER_OPTIONS = "group_size:1,uncompressed"   # one record per chunk: O(1) random access


class StaleCacheError(ValueError):
    """A feature cache that does not belong to the model / data it is read for."""


# ----------------------------------------------------------------------------- fingerprint

def weights_id(speech_encoder_checkpoint: str | None, seed: int = 0) -> dict:
    """What identifies the encoder weights: the checkpoint's sha256, or the init seed (setup()
    initialises an encoder without checkpoint from PRNGKey(RunConfig.seed))."""
    if speech_encoder_checkpoint:
        return {"speech_encoder_checkpoint_sha256": hash_path(speech_encoder_checkpoint)}
    return {"init_seed": int(seed)}


def fingerprint(config: SLMConfig, weights: Mapping[str, Any], windows: SpeechWindows | None = None) -> dict:
    """Everything the cached values depend on besides the data (and, with shared encoder
    windows, the order the examples are stored in)."""
    enc, ad = config.speech_encoder, config.adapter
    shared = {"speech_windows": dataclasses.asdict(windows)} if windows is not None and windows.on else {}
    return {**shared, "speech_encoder": {"type": type(enc).__name__, **jsonable(dataclasses.asdict(enc))},
            "adapter_input": {"stride": ad.stride, "subsampling": ad.subsampling, "dtype": jsonable(ad.dtype),
                              "input_dim": ad.input_dim},
            "weights": jsonable(dict(weights))}


# ----------------------------------------------------------------------------- manifest

def cache_path(cache_dir: str, task: str, split: str) -> str:
    return os.path.join(cache_dir, task, split)


def load_manifest(cache_dir: str, task: str, split: str) -> tuple[dict, str]:
    """(manifest, its path); FileNotFoundError naming the path when there is no (complete) cache."""
    path = os.path.join(cache_path(cache_dir, task, split), MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no feature cache at {path} (build it: python -m slm_jax.feature_cache "
                                f"--gin_file=... ; see slm_jax/feature_cache.py)")
    with open(path) as f:
        return json.load(f), path


def check_manifest(manifest: Mapping, path: str, *, fingerprint_: Mapping | None = None,
                   feature_lengths: Mapping[str, int] | None = None) -> None:
    """Raise StaleCacheError, naming `path` and each differing field, if the cache was built for
    another encoder (config, weights, adapter subsampling) or other feature lengths."""
    problems = []
    if manifest.get("format") != CACHE_FORMAT:
        problems.append(f"format: cache has {manifest.get('format')!r}, this code reads {CACHE_FORMAT}")
    if fingerprint_ is not None:
        problems += differences(manifest.get("fingerprint", {}), fingerprint_, "cache", "model/run")
    if feature_lengths is not None:
        problems += differences({"feature_lengths": manifest.get("feature_lengths", {})},
                                {"feature_lengths": jsonable(dict(feature_lengths))}, "cache", "model/run")
    if problems:
        raise StaleCacheError(f"stale feature cache {path}: it was built for another encoder or data "
                              f"config; rebuild it (python -m slm_jax.feature_cache ...). Differences:\n  "
                              + "\n  ".join(problems))


# ----------------------------------------------------------------------------- build

def _int_feature(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _serialize(encoded: np.ndarray, instruction: np.ndarray, dec_in: np.ndarray, targets: np.ndarray) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        "encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[np.ascontiguousarray(encoded).tobytes()])),
        "frames": _int_feature([encoded.shape[0]]),
        "instruction_tokens": _int_feature(instruction),
        "decoder_input_tokens": _int_feature(dec_in),
        "decoder_target_tokens": _int_feature(targets),
    })).SerializeToString()


def _valid_length(mask_row: np.ndarray, what: str) -> int:
    n = int(mask_row.sum())
    if not (mask_row[:n].all() and not mask_row[n:].any()):
        raise ValueError(f"build_cache: {what} mask is not a prefix of valid frames")
    return n


def _trim(row: np.ndarray) -> np.ndarray:
    return np.trim_zeros(row, "b")


def _task_names(name: str) -> list[str]:
    """[name] for a task; a mixture's task names (recursively) for a mixture."""
    import seqio
    found = seqio.get_mixture_or_task(name)
    if isinstance(found, seqio.Mixture):
        return [t.name for t in found.tasks]
    return [name]


class ShardWriter:
    """Writes serialised examples to ArrayRecord shards `<split>-NNNNN.array_record` in
    `directory`, starting a new shard every `examples_per_shard` examples. Records each shard's
    file and count (`shards`, as the manifest lists them), each example's valid frames in key
    order (`lengths`, for length bucketing), and the examples / frame bytes written."""

    def __init__(self, directory: str, split: str, examples_per_shard: int):
        self.directory, self.split, self.examples_per_shard = directory, split, examples_per_shard
        self.shards: list[dict] = []
        self.lengths: list[int] = []
        self.count, self.nbytes = 0, 0
        self._writer = None

    def write(self, frames: np.ndarray, tokens: tuple) -> None:
        """Append one example: its encoder frames and (instruction, decoder input, target) tokens."""
        if self._writer is None or self.shards[-1]["count"] >= self.examples_per_shard:
            self._roll_over()
        self._writer.write(_serialize(frames, *tokens))
        self.shards[-1]["count"] += 1
        self.lengths.append(int(frames.shape[0]))
        self.count, self.nbytes = self.count + 1, self.nbytes + frames.nbytes

    def _roll_over(self) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter
        self.close()
        self.shards.append({"file": f"{self.split}-{len(self.shards):05d}.array_record", "count": 0})
        self._writer = ArrayRecordWriter(os.path.join(self.directory, self.shards[-1]["file"]), WRITER_OPTIONS)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class SharedAudioEncoder:
    """Runs the frozen speech encoder (jitted) over examples' audio and hands each example, in
    the order added, to `write(frames, tokens)`.

    Audio is queued and encoded in batches of `batch_size` rows (the last one padded); a batch
    runs on the device while the previous one is brought back and its examples written. With
    shared encoder windows (`windows` on) the distinct utterances form one stream packed into
    windows, `batch_size` windows per encoder call (speech_windows.PackedStream).
    Examples with the same audio (the same valid feature frames: one utterance in an ASR and in
    AST tasks) are encoded once: their frames are kept, up to `share_bytes` of them in all, for
    later examples with that audio (beyond it they are encoded again). `encoded` counts the
    utterances the encoder ran on; `encoded_length`, `dim` and `dtype` describe its outputs
    (the longest padded length seen: batches may be cut to get_batches' length buckets)."""

    def __init__(self, config: SLMConfig, encoder_params: Mapping[str, Any], batch_size: int,
                 share_bytes: int, write, windows: SpeechWindows | None = None):
        frozen = FrozenSpeech(config, encoder_params, windows)
        self._encode = frozen.encode
        self._stream = PackedStream(frozen, batch_size) if frozen.windows.on else None
        self._stream_keys: collections.deque = collections.deque()   # audio keys in the stream, in order
        self.params, self.batch_size, self.share_bytes, self.write = encoder_params, batch_size, share_bytes, write
        self.encoded, self.encoded_length, self.dim, self.dtype = 0, 0, None, None
        self._frames_of: dict[bytes, np.ndarray] = {}   # audio key -> encoder frames (kept or awaiting writing)
        self._kept: set[bytes] = set()                  # keys whose frames stay for later examples
        self._kept_bytes = 0
        self._waiting: collections.deque = collections.deque()   # examples in order: (key, tokens)
        self._uses = collections.Counter()              # waiting examples per audio key
        self._queue: list[tuple[bytes, np.ndarray, np.ndarray]] = []   # audio to encode: (key, features, mask)
        self._in_flight = None                          # (keys, outputs) of the batch the encoder is running

    def add(self, features: np.ndarray, mask: np.ndarray, tokens: tuple) -> None:
        """Queue one example: its padded features [T, F], feature mask [T] and tokens."""
        valid = _valid_length(mask, "feature")
        key = array_key((features[:valid],))
        new = key not in self._frames_of and not self._uses[key]   # neither kept, nor queued / in flight
        self._waiting.append((key, tokens))
        self._uses[key] += 1
        if new and self._stream is not None:
            self._stream_keys.append(key)
            self.encoded += 1
            self._stream.add(features[:valid])
            self._take_stream()
        elif new:
            self._queue.append((key, features, mask))
            if len(self._queue) == self.batch_size:
                self._dispatch()

    def finish(self) -> None:
        """Encode what is still queued and write every remaining example."""
        if self._stream is not None:
            self._stream.finish()
            self._take_stream()
        if self._queue:
            self._dispatch()
        self._collect()
        if self._waiting:   # cannot happen: every waiting example's audio was encoded above
            raise RuntimeError(f"build_cache: {len(self._waiting)} examples were not written")

    def _dispatch(self) -> None:
        """Encode the queued audio (one batch, padded to batch_size rows) while the last batch is collected."""
        queue = self._queue
        width = max(f.shape[0] for _, f, _ in queue)
        feats = np.zeros((self.batch_size, width, queue[0][1].shape[1]), queue[0][1].dtype)
        masks = np.zeros((self.batch_size, width), queue[0][2].dtype)
        for i, (_, f, m) in enumerate(queue):
            feats[i, :f.shape[0]], masks[i, :m.shape[0]] = f, m
        outputs = self._encode(self.params, feats, masks)   # runs while the previous batch is written
        self._collect()
        self._in_flight = ([k for k, _, _ in queue], outputs)
        self.encoded += len(queue)
        queue.clear()

    def _take_stream(self) -> None:
        """Store the frames the window stream has brought back, then write the examples ready."""
        for frames in self._stream.ready():
            self._store(self._stream_keys.popleft(), frames)
        self._write_ready()

    def _store(self, key: bytes, frames: np.ndarray) -> None:
        self.encoded_length = max(self.encoded_length, frames.shape[0])
        self.dim, self.dtype = frames.shape[1], frames.dtype.name
        self._frames_of[key] = frames
        if self._kept_bytes + frames.nbytes <= self.share_bytes:
            self._kept_bytes += frames.nbytes
            self._kept.add(key)

    def _collect(self) -> None:
        """Bring the encoded batch in flight to the host, then write every example now ready."""
        if self._in_flight is not None:
            (keys, outputs), self._in_flight = self._in_flight, None
            hidden, mask = (np.asarray(x) for x in jax.device_get(outputs))
            self.encoded_length = max(self.encoded_length, hidden.shape[1])
            for i, key in enumerate(keys):
                self._store(key, hidden[i, :_valid_length(mask[i], "encoder output")].copy())
        self._write_ready()

    def _write_ready(self) -> None:
        while self._waiting and self._waiting[0][0] in self._frames_of:
            key, tokens = self._waiting.popleft()
            self.write(self._frames_of[key], tokens)
            self._uses[key] -= 1
            if not self._uses[key] and key not in self._kept:
                del self._frames_of[key]


def _existing_cache(out_dir: str, fp: Mapping, feature_lengths: Mapping[str, int], overwrite: bool,
                    verbose: bool) -> dict | None:
    """The manifest of an up-to-date cache in out_dir (same fingerprint and feature lengths,
    every shard present) unless `overwrite`; otherwise None, after deleting an existing
    cache's manifest and shards."""
    manifest_path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(manifest_path):
        return None
    with open(manifest_path) as f:
        old = json.load(f)
    try:
        check_manifest(old, manifest_path, fingerprint_=fp, feature_lengths=feature_lengths)
        up_to_date = all(os.path.isfile(os.path.join(out_dir, s["file"])) for s in old.get("shards", []))
    except StaleCacheError:
        up_to_date = False
    if up_to_date and not overwrite:
        if verbose:
            print(f"[feature_cache] {manifest_path} is up to date ({old['count']} examples)", flush=True)
        return old
    os.remove(manifest_path)
    for s in old.get("shards", []):
        if os.path.isfile(os.path.join(out_dir, s["file"])):
            os.remove(os.path.join(out_dir, s["file"]))
    return None


PROGRESS_EVERY_S = 30.0   # seconds between progress lines while a cache is built


def _encode_split(task: str, split: str, feature_lengths: Mapping[str, int], read_batch_size: int, seed: int,
                  encoder: SharedAudioEncoder) -> dict[str, int]:
    """Add every example of the task's (or each of the mixture's tasks') split to `encoder`,
    unshuffled, one epoch, read in get_batches' batches of `read_batch_size`, tokens trimmed
    after their last non-padding token. Returns the examples per task."""
    from slm_jax.data import get_batches
    per_task: dict[str, int] = {}
    t0 = last = time.perf_counter()
    for name in _task_names(task):
        for batch in get_batches(name, split, feature_lengths=feature_lengths, batch_size=read_batch_size,
                                 shuffle=False, seed=seed, num_epochs=1, drop_remainder=False):
            n = batch["features"].shape[0]
            per_task[name] = per_task.get(name, 0) + n
            if time.perf_counter() - last > PROGRESS_EVERY_S:
                last = time.perf_counter()
                done = sum(per_task.values())
                print(f"[feature cache] {name}: {done} examples read, {encoder.encoded} utterances encoded, "
                      f"{done / (last - t0):.1f} examples/s", flush=True)
            for i in range(n):
                targets = _trim(batch["decoder_target_tokens"][i])
                tokens = (_trim(batch["instruction_tokens"][i]), batch["decoder_input_tokens"][i, :len(targets)],
                          targets)
                encoder.add(batch["features"][i], batch["feature_mask"][i], tokens)
    return per_task


def build_cache(cache_dir: str, task: str, split: str = "train", *, feature_lengths: Mapping[str, int],
                config: SLMConfig, encoder_params: Mapping[str, Any], weights: Mapping[str, Any],
                batch_size: int = 8, read_batch_size: int | None = None, seed: int = 0,
                examples_per_shard: int = 4096, overwrite: bool = False, verbose: bool = True,
                share_bytes: int = 2 ** 30, windows: SpeechWindows | None = None) -> dict:
    """Run the frozen speech encoder (jitted, batches of `batch_size`) once over `task`'s `split`
    (a task or a mixture name: via get_batches, unshuffled, one epoch, every example: the last
    batch is padded, then cut) and write the cache (see the module docstring). Returns the
    manifest.

    Examples are read in get_batches' batches of `read_batch_size` (None: `batch_size`). With
    length buckets bound (get_batches.speech_buckets) that batch sets the cache's example order,
    and with it which example each training key draws; the encoder's batch does not, so it can be
    tuned for speed alone. An existing cache with the same fingerprint, task, split and feature
    lengths is kept (returned as is) unless `overwrite`; otherwise its files are replaced.

    encoder_params: the "speech_encoder" subtree of the SLM params; weights: `weights_id(...)`,
    what identifies them in the fingerprint. A mixture's cache holds one full epoch of each of
    its tasks, one task after the other (every example exactly once; the manifest lists the
    tasks and their counts), so training from it samples the tasks in proportion to their
    example counts, which is seqio's `mixing_rate_num_examples`; other mixing rates are not
    reproduced (cache the tasks separately for those).

    Examples with the same audio are encoded once (`SharedAudioEncoder`, up to `share_bytes` of
    kept frames); the manifest's build.encoded_utterances counts the encoder's work. With
    `windows` on, the distinct utterances are packed into shared encoder windows in the order
    the cache stores them, `batch_size` windows per encoder call (slm_jax.speech_windows)."""
    enc_cfg = config.speech_encoder
    if getattr(enc_cfg, "dropout_rate", 0.0) > 0:
        raise ValueError(f"build_cache: the speech encoder has dropout_rate={enc_cfg.dropout_rate}; its training "
                         "outputs are random, so a cache of them cannot be exact. Set it to 0.")
    fp = fingerprint(config, weights, windows)
    out_dir = cache_path(cache_dir, task, split)
    os.makedirs(out_dir, exist_ok=True)
    existing = _existing_cache(out_dir, fp, feature_lengths, overwrite, verbose)
    if existing is not None:
        return existing

    read_batch_size = read_batch_size or batch_size
    t0 = time.perf_counter()
    shards = ShardWriter(out_dir, split, examples_per_shard)
    encoder = SharedAudioEncoder(config, encoder_params, batch_size, share_bytes, shards.write, windows)
    per_task = _encode_split(task, split, feature_lengths, read_batch_size, seed, encoder)
    encoder.finish()
    shards.close()
    if not shards.count:
        raise ValueError(f"build_cache: {task!r} split {split!r} has no examples")
    seconds = time.perf_counter() - t0
    manifest = {"format": CACHE_FORMAT, "task": task, "split": split,
                "feature_lengths": jsonable(dict(feature_lengths)), "count": shards.count,
                "encoded_length": int(encoder.encoded_length), "dim": int(encoder.dim), "dtype": encoder.dtype,
                "encoded_bytes": int(shards.nbytes), "shards": shards.shards, "tasks": per_task,
                "frames": shards.lengths, "fingerprint": fp,
                "build": {"seconds": round(seconds, 3), "examples_per_s": round(shards.count / seconds, 3),
                          "encoded_utterances": encoder.encoded,
                          "batch_size": batch_size, "read_batch_size": read_batch_size,
                          "device": jax.devices()[0].platform}}
    manifest_path = os.path.join(out_dir, MANIFEST)
    with open(manifest_path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(manifest_path + ".tmp", manifest_path)   # last: a cache without a manifest is incomplete
    if verbose:
        print(f"[feature_cache] wrote {shards.count} examples ({shards.nbytes / 2 ** 20:.1f} MiB of "
              f"{encoder.dtype} frames, {len(shards.shards)} shard(s)) to {out_dir} in {seconds:.1f}s", flush=True)
    return manifest


# ----------------------------------------------------------------------------- read

def _parse(record: bytes) -> dict[str, Any]:
    feats = tf.train.Example.FromString(record).features.feature
    ints = lambda k: np.asarray(feats[k].int64_list.value, np.int32)  # noqa: E731
    return {"encoded": feats["encoded"].bytes_list.value[0], "frames": int(feats["frames"].int64_list.value[0]),
            "instruction_tokens": ints("instruction_tokens"), "decoder_input_tokens": ints("decoder_input_tokens"),
            "decoder_target_tokens": ints("decoder_target_tokens")}


class CacheReader:
    """Batches of given global example keys from one cache: `CacheReader(directory, manifest)`,
    with the cache's split directory and its loaded manifest (see `load_manifest`)."""

    def __init__(self, directory: str, manifest: Mapping):
        from array_record.python.array_record_data_source import ArrayRecordDataSource
        self.source = ArrayRecordDataSource([os.path.join(directory, s["file"]) for s in manifest["shards"]])
        if len(self.source) != manifest["count"]:
            raise StaleCacheError(f"feature cache {directory}: shards hold {len(self.source)} examples, "
                                  f"{MANIFEST} says {manifest['count']}")
        self.frames, self.dim = manifest["encoded_length"], manifest["dim"]
        self.dtype = jnp.dtype(manifest["dtype"])
        lengths = manifest["feature_lengths"]
        self.inst_len, self.tgt_len = lengths["instruction"], lengths["targets"]
        self._lengths = manifest.get("frames")

    def lengths(self) -> np.ndarray:
        """Valid frames of every example, by key: from the manifest (or, for a cache written
        before the manifest listed them, one pass over the records)."""
        if self._lengths is None:
            n = len(self.source)
            self._lengths = [tf.train.Example.FromString(r).features.feature["frames"].int64_list.value[0]
                             for lo in range(0, n, 1024)
                             for r in self.source.__getitems__(list(range(lo, min(lo + 1024, n))))]
        return np.asarray(self._lengths, np.int64)

    def batch(self, keys: Sequence[int], frames: int | None = None) -> dict[str, np.ndarray]:
        """The examples `keys`, padded to `frames` (None: the cache's longest, `encoded_length`)."""
        b, frames = len(keys), frames or self.frames
        records = [_parse(r) for r in self.source.__getitems__([int(k) for k in keys])]
        out = {"encoded_speech": np.zeros((b, frames, self.dim), self.dtype),
               "encoded_mask": np.zeros((b, frames), np.int32),
               "instruction_tokens": np.zeros((b, self.inst_len), np.int32),
               "decoder_input_tokens": np.zeros((b, self.tgt_len), np.int32),
               "decoder_target_tokens": np.zeros((b, self.tgt_len), np.int32)}
        for i, rec in enumerate(records):
            n = rec["frames"]
            out["encoded_speech"][i, :n] = np.frombuffer(rec["encoded"], self.dtype).reshape(n, self.dim)
            out["encoded_mask"][i, :n] = 1
            for k in ("instruction_tokens", "decoder_input_tokens", "decoder_target_tokens"):
                out[k][i, :len(rec[k])] = rec[k]
        out["decoder_loss_weights"] = (out["decoder_target_tokens"] > 0).astype(np.int32)
        return out


@gin.configurable
def cached_batches(mixture_or_task_name: str = gin.REQUIRED, split: str = "train", *,
                   feature_lengths: Mapping[str, int] = gin.REQUIRED, batch_size: int = 8,
                   shuffle: bool = True, seed: int = 0, num_epochs: int | None = None,
                   start_batch: int = 0, shard_index: int = 0, num_shards: int = 1,
                   drop_remainder: bool = True, cache_dir: str = gin.REQUIRED,
                   encoder_fingerprint: Mapping[str, Any] = gin.REQUIRED, prefetch: int = 2, speech_buckets: Sequence[int] = (),
                   bucket_window: int = 16) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches from a feature cache, with get_batches' contract (what train_lib trains from when
    TrainConfig.feature_cache_dir is set):
    encoded_speech [b, T', D_enc] / encoded_mask [b, T'] instead of features / feature_mask,
    the same token features. See the module docstring for order, resumption and host shards.

    `speech_buckets` (cached frames, e.g. (25, 38, 50)): batch examples of similar length
    together and pad each batch only to the smallest bucket that holds it (else to the cache's
    longest), so short utterances are not padded to the longest: one compiled step per bucket.
    The stream is cut into windows of `bucket_window` batches; each window's examples (the same
    examples as without bucketing, in the same windows) are sorted by length, cut into batches,
    and the batches put in a random order (from seed and window). Still deterministic and
    resumable at `start_batch`; every host gets its rows of the same global batches.

    The cache is checked first against `encoder_fingerprint` (`fingerprint(config, weights)` of
    the model that reads it) and `feature_lengths`: StaleCacheError naming its manifest."""
    if batch_size % num_shards:
        raise ValueError(f"cached_batches: batch_size {batch_size} is not divisible by num_shards {num_shards}")
    manifest, path = load_manifest(cache_dir, mixture_or_task_name, split)
    check_manifest(manifest, path, fingerprint_=encoder_fingerprint,
                   feature_lengths=feature_lengths)
    reader = CacheReader(os.path.dirname(path), manifest)
    return _iterate(reader, manifest["count"], batch_size, shuffle, seed, num_epochs, start_batch,
                    shard_index, num_shards, drop_remainder, prefetch, tuple(speech_buckets), bucket_window)


def epoch_order(count: int, epoch: int, shuffle: bool, seed: int) -> np.ndarray:
    """The example keys of one epoch, in reading order."""
    if not shuffle:
        return np.arange(count)
    return np.random.default_rng([seed, epoch]).permutation(count)


def _iterate(reader: CacheReader, count: int, batch_size: int, shuffle: bool, seed: int, num_epochs: int | None,
             start_batch: int, shard_index: int, num_shards: int, drop_remainder: bool,
             prefetch: int, buckets: tuple[int, ...] = (), window: int = 16) -> Iterator[dict[str, np.ndarray]]:
    total = None if num_epochs is None else count * num_epochs      # positions in the epoch stream
    local = batch_size // num_shards
    orders: dict[int, np.ndarray] = {}
    windows: dict[int, list[list[int]]] = {}
    lengths = reader.lengths() if buckets else None

    def stream(first: int, last: int) -> list[int]:
        """Example keys at stream positions [first, last), cut at the end of the stream."""
        out = []
        for p in range(first, last if total is None else min(last, total)):
            e = p // count
            if e not in orders:
                if len(orders) > 2:
                    orders.clear()
                orders[e] = epoch_order(count, e, shuffle, seed)
            out.append(int(orders[e][p % count]))
        return out

    def window_batches(w: int) -> list[list[int]]:
        """Global batches of window w: its examples sorted by length, cut, randomly ordered."""
        if w not in windows:
            ks = sorted(stream(w * window * batch_size, (w + 1) * window * batch_size), key=lambda k: (lengths[k], k))
            cut = [ks[i:i + batch_size] for i in range(0, len(ks), batch_size)]
            if cut and drop_remainder and len(cut[-1]) < batch_size:
                cut.pop()
            order = np.random.default_rng([seed, w, 1]).permutation(len(cut)) if shuffle else range(len(cut))
            windows.clear()
            windows[w] = [cut[i] for i in order]
        return windows[w]

    def keys(g: int) -> tuple[list[int], int | None] | None:
        """This host's keys of global batch g and the frames to pad them to, or None past the
        end. Bucketed, the padding is the global batch's bucket, the same on every host."""
        if buckets:
            w, j = divmod(g, window)
            batches = window_batches(w)
            mine = batches[j][shard_index * local:(shard_index + 1) * local] if j < len(batches) else []
            if not mine:
                return None
            return mine, bucket_bound(max(lengths[k] for k in batches[j]), buckets, reader.frames)
        lo = g * batch_size
        if total is not None and (lo >= total or (drop_remainder and lo + batch_size > total)):
            return None
        mine = stream(lo + shard_index * local, lo + (shard_index + 1) * local)
        return (mine, None) if mine else None

    with concurrent.futures.ThreadPoolExecutor(1) as pool:   # reads ahead while the step runs
        queue, g = [], start_batch
        while True:
            while len(queue) <= prefetch:
                k = keys(g)
                g += 1
                if k is None:
                    break
                queue.append(pool.submit(reader.batch, *k))
            if not queue:
                return
            yield queue.pop(0).result()
