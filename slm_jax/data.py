"""Input pipeline glue: the SLM feature converter and a resumable numpy batch iterator.

Task examples (see tasks/) carry
    speech       float32 [frames, channels]  log-mel (or other) features of the audio
    instruction  int32   [tokens]            the text instruction (may be empty)
    targets      int32   [tokens]            the expected output text, EOS-terminated
and `SLMFeatureConverter` turns them into the batch the trainer expects:
    features [B, T, C], feature_mask [B, T], instruction_tokens [B, L],
    decoder_input_tokens / decoder_target_tokens / decoder_loss_weights [B, Y].
Speech longer than its feature length is an error (it is never silently cut); text features
are trimmed as in seqio.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

FeatureSpec = seqio.FeatureConverter.FeatureSpec


def _pad_to(x: tf.Tensor, length: int) -> tf.Tensor:
    pad = [[0, length - tf.shape(x)[0]]] + [[0, 0]] * (len(x.shape) - 1)
    return tf.pad(x, pad)


class SLMFeatureConverter(seqio.FeatureConverter):
    """Task features (speech, instruction, targets) -> padded SLM model features (no packing)."""

    TASK_FEATURES = {
        "speech": FeatureSpec(dtype=tf.float32, rank=2),
        "instruction": FeatureSpec(dtype=tf.int32),
        "targets": FeatureSpec(dtype=tf.int32),
    }
    MODEL_FEATURES = {
        "features": FeatureSpec(dtype=tf.float32, rank=2),
        "feature_mask": FeatureSpec(dtype=tf.int32),
        "instruction_tokens": FeatureSpec(dtype=tf.int32),
        "decoder_input_tokens": FeatureSpec(dtype=tf.int32),
        "decoder_target_tokens": FeatureSpec(dtype=tf.int32),
        "decoder_loss_weights": FeatureSpec(dtype=tf.int32),
    }
    PACKING_FEATURE_DTYPES = {}

    def __init__(self, **kwargs):
        kwargs.setdefault("pack", False)
        if kwargs["pack"]:
            raise ValueError("SLMFeatureConverter does not pack examples (pack must be False)")
        super().__init__(**kwargs)

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        max_frames = task_feature_lengths["speech"]
        inst_len, tgt_len = task_feature_lengths["instruction"], task_feature_lengths["targets"]

        def convert(ex):
            speech = ex["speech"]
            n = tf.shape(speech)[0]
            with tf.control_dependencies([tf.debugging.assert_less_equal(
                    n, max_frames, message=f"speech is longer than task_feature_lengths['speech']={max_frames}")]):
                speech = tf.identity(speech)
            targets = ex["targets"][:tgt_len]
            dec_in = seqio.utils.make_autoregressive_inputs(targets, bos_id=self.bos_id)
            return {
                "features": _pad_to(speech, max_frames),
                "feature_mask": _pad_to(tf.ones([n], tf.int32), max_frames),
                "instruction_tokens": _pad_to(ex["instruction"][:inst_len], inst_len),
                "decoder_input_tokens": _pad_to(dec_in, tgt_len),
                "decoder_target_tokens": _pad_to(targets, tgt_len),
                "decoder_loss_weights": _pad_to(tf.cast(targets > 0, tf.int32), tgt_len),
            }
        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        return {"features": task_feature_lengths["speech"], "feature_mask": task_feature_lengths["speech"],
                "instruction_tokens": task_feature_lengths["instruction"],
                "decoder_input_tokens": task_feature_lengths["targets"],
                "decoder_target_tokens": task_feature_lengths["targets"],
                "decoder_loss_weights": task_feature_lengths["targets"]}


def _bucket_by_speech_length(ds: tf.data.Dataset, buckets: Sequence[int], max_frames: int, batch_size: int,
                             drop_remainder: bool) -> tf.data.Dataset:
    """Group converted examples by valid speech length into batches cut to their bucket bound."""
    bounds = sorted(int(b) for b in buckets if int(b) < max_frames) + [max_frames]
    edges = tf.constant(bounds, tf.int32)

    def key(ex):
        n = tf.reduce_sum(ex["feature_mask"])
        return tf.cast(tf.reduce_sum(tf.cast(edges < n, tf.int32)), tf.int64)  # first bound >= n

    def reduce(_, window):
        return window.batch(batch_size, drop_remainder=drop_remainder)

    def trim(batch):
        n = tf.reduce_max(tf.reduce_sum(batch["feature_mask"], axis=1))
        bound = tf.gather(edges, tf.reduce_sum(tf.cast(edges < n, tf.int32)))
        return {**batch, "features": batch["features"][:, :bound], "feature_mask": batch["feature_mask"][:, :bound]}

    ds = ds.group_by_window(key, reduce, window_size=batch_size)
    return ds.map(trim)


def bucket_bound(longest: int, buckets: Sequence[int], full: int) -> int:
    """The length a batch whose longest row is `longest` is padded to: the smallest bucket that
    holds it, else `full` (the feature length)."""
    return min([int(b) for b in buckets if b >= longest] + [full])


def sort_by_length(batches: Sequence[Mapping[str, np.ndarray]], batch_size: int, buckets: Sequence[int], full: int,
                   drop_remainder: bool = False) -> list[dict[str, np.ndarray]]:
    """The examples of `batches` (padded to `full` frames) re-batched in order of valid speech
    length (stable), each batch's frames cut to `bucket_bound` of its longest example."""
    if not batches:
        return []
    rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    lengths = rows["feature_mask"].sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    out = []
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        if drop_remainder and len(idx) < batch_size:
            break
        bound = bucket_bound(int(lengths[idx].max()), buckets, full)
        out.append({k: v[idx][:, :bound] if k in ("features", "feature_mask") else v[idx] for k, v in rows.items()})
    return out


def pad_rows(batch: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """A short (last) numpy batch padded with zero rows to `rows`, so it reuses the step compiled
    for full batches; callers cut the outputs back to the real rows."""
    return {k: np.concatenate([v, np.zeros((rows - v.shape[0],) + v.shape[1:], v.dtype)]) if v.shape[0] < rows else v
            for k, v in batch.items()}


def pad_frames(values: np.ndarray, mask: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """[B, T, ...] values and their [B, T] mask zero-padded along T to `frames` (mask 0 there),
    so batches of several lengths share one compiled program."""
    pad = frames - values.shape[1]
    return (np.pad(values, [(0, 0), (0, pad)] + [(0, 0)] * (values.ndim - 2)), np.pad(mask, ((0, 0), (0, pad))))


@gin.configurable
def get_batches(mixture_or_task_name: str = gin.REQUIRED, split: str = "train", *,
                feature_lengths: Mapping[str, int] = gin.REQUIRED, batch_size: int = 8,
                shuffle: bool = True, seed: int = 0, num_epochs: int | None = None,
                start_batch: int = 0, shard_index: int = 0, num_shards: int = 1,
                drop_remainder: bool = True, speech_buckets: Sequence[int] = (),
                max_examples: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches of a SeqIO task or mixture through SLMFeatureConverter.

    Deterministic for a given seed, so resuming at `start_batch` gives exactly the batches an
    uninterrupted run would have seen. Each host reads shard `shard_index` of `num_shards` and
    yields its local `batch_size // num_shards` rows.

    `speech_buckets` (e.g. (200, 400)): batch examples of similar audio length together and pad
    the batch's frames only to its bucket's bound (the last bucket is feature_lengths["speech"]),
    so short audio is not padded to the longest; one compiled step per bucket. Single-process
    only: with several hosts, each host's local batch must have the same shape, so multi-host
    runs pad every batch to feature_lengths["speech"].
    `max_examples`: only the first N examples (per shard) of the stream, taken before any length
    bucketing (grouping first would keep whichever lengths fill a bucket first: a bounded
    evaluation sample must be the same utterances with or without buckets). With buckets, the N
    examples are then sorted by length and batched in that order, each batch cut to its bucket:
    the fewest batches and the least padding for a small sample."""
    if batch_size % num_shards:
        raise ValueError(f"get_batches: batch_size {batch_size} is not divisible by num_shards {num_shards}")
    if speech_buckets and num_shards > 1:
        raise ValueError("get_batches: speech_buckets needs a single input shard (num_shards=1); "
                         "hosts would otherwise build batches of different shapes")
    # SeqIO keeps a small task's examples in memory, which pays off over epochs; a bounded read
    # would leave that cache unfinished, and tf.data discards it with a warning each time
    ds = seqio.get_mixture_or_task(mixture_or_task_name).get_dataset(
        dict(feature_lengths), split=split, shuffle=shuffle, num_epochs=num_epochs, seed=seed,
        shard_info=seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None,
        try_in_mem_cache=max_examples is None)
    ds = SLMFeatureConverter()(ds, task_feature_lengths=dict(feature_lengths))
    local = batch_size // num_shards
    if max_examples is not None:
        ds = ds.take(max_examples)
        if speech_buckets:
            sample = list(ds.batch(local).as_numpy_iterator())
            return iter(sort_by_length(sample, local, speech_buckets, feature_lengths["speech"],
                                       drop_remainder)[start_batch:])
    if speech_buckets:
        ds = _bucket_by_speech_length(ds, speech_buckets, feature_lengths["speech"], local, drop_remainder)
    else:
        ds = ds.batch(local, drop_remainder=drop_remainder)
    if start_batch:
        ds = ds.skip(start_batch)
    return ds.prefetch(2).as_numpy_iterator()
