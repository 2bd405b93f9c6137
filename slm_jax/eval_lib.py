"""Evaluation and inference, as a library: decode a task split to text, score it with the task's
metric functions, write predictions and metrics; run a trained model on audio files.
`EvalConfig` / `InferConfig` are built once by an entry point from gin and passed here."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import gin
import jax
import numpy as np
import seqio

from slm_jax import gin_utils, run_inputs
from slm_jax.array_memo import ArrayMemo
from slm_jax.speech_windows import FrozenSpeech
from slm_jax.data import get_batches, pad_frames, pad_rows
from slm_jax.features import FeatureConfig, compute_features, load_audio
from slm_jax.progress import MetricsWriter
from slm_jax.task_model import DecodeConfig
from slm_jax.train_lib import RunConfig, Setup, setup


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What evaluation reads: the tasks and split to score, their feature lengths, the batch
    size, decoding, `max_examples` (a bounded sample: each task's first N examples), and a `tag`
    added to output file names."""
    eval_tasks: Sequence[str] | None = None
    split: str = "validation"
    feature_lengths: Mapping[str, int] | None = None
    batch_size: int = 8
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    max_examples: int | None = None
    tag: str = ""

    def __post_init__(self):
        gin_utils.require(self, "eval_tasks", "feature_lengths")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class InferConfig:
    """What inference reads: audio files, one text instruction, and decoding. vocabulary /
    features: None (the default) for the run's own (its LLM's SentencePiece model, its speech
    encoder's front end, see RunConfig.inputs; the tasks' default vocabulary when the run names
    none); set them only for a model trained with others.

    max_frames: the longest stretch of speech (feature frames) the model is run on at once: the
    speech length it was trained with (TrainConfig.feature_lengths["speech"]); 3000 is 30 s of
    log-mel. Longer audio is decoded in consecutive windows of max_frames, their outputs joined
    by spaces (long_audio="windows"), or refused with an error naming the file
    (long_audio="refuse"). batch_size: utterances or windows decoded together."""
    audio_files: Sequence[str] = ()
    instruction: str = ""
    vocabulary: Any = None
    features: FeatureConfig | None = None
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    max_frames: int = 3000
    long_audio: str = "windows"
    batch_size: int = 8

    def __post_init__(self):
        if not self.audio_files:
            raise ValueError("InferConfig.audio_files is empty: which audio files should be transcribed?")
        if self.long_audio not in ("windows", "refuse"):
            raise ValueError(f"InferConfig.long_audio must be 'windows' or 'refuse', got {self.long_audio!r}")
        if self.max_frames < 1 or self.batch_size < 1:
            raise ValueError(f"InferConfig.max_frames and batch_size must be positive, got {self.max_frames}, "
                             f"{self.batch_size}")


def tokens_to_text(vocab: seqio.Vocabulary, ids: Sequence[int], eos_id: int) -> str:
    """Text of decoded (or target) token ids: cut at the first EOS, padding dropped."""
    ids = [int(t) for t in ids]
    if eos_id in ids:
        ids = ids[:ids.index(eos_id)]
    return vocab.decode([t for t in ids if t > 0])


def score(task_name: str, targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """The task's metric functions on target / prediction strings."""
    out: dict[str, float] = {}
    for fn in seqio.get_mixture_or_task(task_name).metric_fns:
        out.update({k: float(v) for k, v in fn(targets, predictions).items()})
    return out


def check_split(name: str, split: str) -> None:
    """An evaluation split the task lacks is refused naming the ones it has."""
    splits = list(seqio.get_mixture_or_task(name).splits)
    if split not in splits:
        raise ValueError(f"eval task {name!r} has no {split!r} split (it has {splits}): set EvalConfig.split")


def eval_batches(name: str, cfg: EvalConfig) -> Iterator[dict[str, np.ndarray]]:
    """One pass over a task's split in file order (the first cfg.max_examples when set)."""
    return get_batches(name, cfg.split, feature_lengths=cfg.feature_lengths, batch_size=cfg.batch_size,
                       shuffle=False, num_epochs=1, drop_remainder=False, max_examples=cfg.max_examples)


class EvalDataCache:
    """Bounded evaluation samples (EvalConfig.max_examples) kept in memory, so evaluating several
    models on the same data (the demo's adapter depths, the cascade) builds each seqio pipeline
    once. The key holds everything that shapes the batches: the task name and registered object
    (re-registering a name gives a new entry; the entry holds the task, so its id is not reused
    while the entry lives), the split, lengths, batch size, sample size, and get_batches' gin
    bindings. Unbounded evaluations are streamed, never kept."""

    def __init__(self, entries: int = 64, encoder: Callable[[dict], dict] | None = None):
        """encoder: applied to every batch once (e.g. `frozen_encoder(setup)`: the frozen speech
        encoder's outputs in place of the audio features), so models sharing that frozen encoder
        are evaluated without running it again."""
        self.entries, self.encoder = entries, encoder or (lambda batch: batch)
        self.kept: collections.OrderedDict[tuple, tuple[Any, list]] = collections.OrderedDict()

    def batches(self, name: str, cfg: EvalConfig) -> Iterator[dict[str, np.ndarray]]:
        if not cfg.max_examples:
            yield from map(self.encoder, eval_batches(name, cfg))
            return
        task = seqio.get_mixture_or_task(name)
        key = (name, id(task), cfg.split, tuple(sorted(cfg.feature_lengths.items())), cfg.batch_size,
               cfg.max_examples, repr(sorted(gin_utils.bindings_of("get_batches").items())))
        hit = self.kept.get(key)
        if hit is None:
            hit = self.kept[key] = (task, list(map(self.encoder, eval_batches(name, cfg))))
            while len(self.kept) > self.entries:
                self.kept.popitem(last=False)
        self.kept.move_to_end(key)
        yield from hit[1]


def frozen_encoder(s: Setup, remember: int = 32, length_multiple: int = 16) -> Callable[[dict], dict]:
    """batch -> the batch with the frozen speech encoder's outputs (`encoded_speech` /
    `encoded_mask`, what a feature cache stores) in place of `features` / `feature_mask`; an SLM
    predicts from either the same way (task_model.speech_inputs). With RunConfig.speech_windows
    on, the batch's utterances share encoder windows (slm_jax.speech_windows). A batch with the
    same features and mask as one of the last `remember` encoded (one split's utterances read by
    several tasks: ASR and AST of the same audio, an instruction changed) reuses its outputs.
    The outputs are padded (mask False) to a multiple of `length_multiple` positions: decoding is
    compiled for each length it sees, and batches packed in shared windows come back in every
    length up to the longest utterance."""
    if length_multiple < 1:
        raise ValueError(f"frozen_encoder: length_multiple must be >= 1, got {length_multiple}")
    frozen = FrozenSpeech(s.model.config, s.frozen["speech_encoder"], s.run.speech_windows)
    memo: ArrayMemo[tuple[np.ndarray, ...]] = ArrayMemo(remember)

    def encode(features: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hidden, encoded_mask = frozen.batch(features, mask)
        return pad_frames(hidden, encoded_mask, -(-hidden.shape[1] // length_multiple) * length_multiple)

    def apply(batch: dict) -> dict:
        features, mask = np.asarray(batch["features"]), np.asarray(batch["feature_mask"])
        hidden, encoded_mask = memo((features, mask), lambda: encode(features, mask))
        rest = {k: v for k, v in batch.items() if k not in ("features", "feature_mask")}
        return {**rest, "encoded_speech": hidden, "encoded_mask": encoded_mask}
    return apply


def decode_task(s: Setup, params: Any, name: str, cfg: EvalConfig,
                data: EvalDataCache | None = None) -> tuple[list[str], list[str]]:
    """(targets, predictions) as text for task `name`'s evaluation split."""
    vocab = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
    eos = s.model.eos_id
    targets, preds = [], []
    batches = data.batches(name, cfg) if data is not None else eval_batches(name, cfg)
    for batch in batches:
        n = batch["decoder_target_tokens"].shape[0]
        tokens, _ = s.model.predict_batch(params, s.partitioner.shard_batch(pad_rows(batch, cfg.batch_size)),
                                          cfg.decode)
        preds += [tokens_to_text(vocab, t, eos) for t in np.asarray(jax.device_get(tokens))[:n]]
        targets += [tokens_to_text(vocab, t, eos) for t in batch["decoder_target_tokens"]]
    if not preds:
        raise ValueError(f"eval task {name!r} split {cfg.split!r} produced no examples")
    return targets, preds


def evaluate(s: Setup, cfg: EvalConfig, trainable: Any, step: int,
             data: EvalDataCache | None = None) -> dict[str, dict[str, float]]:
    """Decode each task of cfg.eval_tasks with params `trainable` (+ the frozen subtrees) and
    score it. Writes predictions (JSONL) and metrics (JSON, TensorBoard) under run_dir/eval/."""
    params = s.params(trainable)
    if data is None and s.run.speech_windows.on:   # packed on the host: through the frozen encoder
        data = EvalDataCache(encoder=frozen_encoder(s))
    out_dir = os.path.join(s.run.run_dir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    writer = MetricsWriter(s.run.run_dir, f"eval{cfg.tag}")
    results = {}
    for name in cfg.eval_tasks:
        check_split(name, cfg.split)
    for name in cfg.eval_tasks:
        t0 = time.time()
        targets, preds = decode_task(s, params, name, cfg, data)
        scores = score(name, targets, preds)
        scores["num_examples"] = len(preds)
        scores["examples_per_s"] = len(preds) / (time.time() - t0)
        results[name] = scores
        with open(os.path.join(out_dir, f"{name}{cfg.tag}_step{step}.jsonl"), "w") as f:
            for t, p in zip(targets, preds):
                f.write(json.dumps({"target": t, "prediction": p}, ensure_ascii=False) + "\n")
        writer.write(step, {f"{name}/{k}": v for k, v in scores.items()})
        print(f"[eval] step {step} {name}: " + " ".join(f"{k}={v:.4g}" for k, v in scores.items()), flush=True)
    with open(os.path.join(out_dir, f"metrics{cfg.tag}_step{step}.json"), "w") as f:
        json.dump(results, f, indent=2)
    writer.close()
    return results


def evaluate_run(run: RunConfig, cfg: EvalConfig, data: EvalDataCache | None = None) -> dict[str, dict[str, float]]:
    """`evaluate` at the run's latest checkpoint (the initial params when it has none)."""
    s = setup(run)
    try:
        trainable, step = s.restore()
        return evaluate(s, cfg, trainable, step, data)
    finally:
        s.checkpointer.close()


def speech_batch(features: Sequence[np.ndarray], instruction: Sequence[int]) -> dict[str, np.ndarray]:
    """A batch of utterances' features (padded to the longest, with masks) and one instruction."""
    frames = max(f.shape[0] for f in features)
    return {"features": np.stack([np.pad(f, ((0, frames - f.shape[0]), (0, 0))) for f in features]),
            "feature_mask": np.stack([(np.arange(frames) < f.shape[0]).astype(np.int32) for f in features]),
            "instruction_tokens": np.tile(np.asarray(list(instruction) + [0], np.int32), (len(features), 1))}


def infer_windows(path: str, cfg: InferConfig, features: FeatureConfig) -> list[np.ndarray]:
    """The `features` of one audio file in windows of at most cfg.max_frames frames (one window
    when it fits); a longer file is refused (long_audio="refuse") or announced."""
    audio = load_audio(path, features.sample_rate)
    feats = compute_features(audio, features.sample_rate, config=features, source=path)
    n = feats.shape[0]
    if n <= cfg.max_frames:
        return [feats]
    seconds = f"{audio.size / features.sample_rate:.1f} s"
    if cfg.long_audio == "refuse":
        raise ValueError(f"{path}: {n} feature frames ({seconds}) is longer than InferConfig.max_frames="
                         f"{cfg.max_frames}, the speech the model takes at once; set InferConfig.long_audio="
                         f"'windows' to decode it in windows of {cfg.max_frames} frames, or cut the file")
    windows = [feats[i:i + cfg.max_frames] for i in range(0, n, cfg.max_frames)]
    print(f"[infer] {path}: {n} frames ({seconds}) is longer than InferConfig.max_frames={cfg.max_frames}: "
          f"decoding {len(windows)} windows, outputs joined", flush=True)
    return windows


def infer(run: RunConfig, cfg: InferConfig) -> list[str]:
    """The trained model (latest checkpoint) on cfg.audio_files with cfg.instruction; prints
    and returns the outputs. Audio longer than cfg.max_frames is decoded in windows (or
    refused, see InferConfig), never run whole. With RunConfig.speech_windows on, the audio of
    each batch shares encoder windows in the order given (slm_jax.speech_windows)."""
    s = setup(run)
    try:
        trainable, _ = s.restore()
    finally:
        s.checkpointer.close()
    vocab = cfg.vocabulary or run_inputs.vocabulary()
    if vocab is None:
        raise ValueError("InferConfig.vocabulary is not set and the run names none (RunConfig.vocabulary, or an "
                         "LLM checkpoint directory with spiece.model; or import the tasks the model was trained on)")
    features = cfg.features or run_inputs.feature_config(FeatureConfig())
    windows = [infer_windows(p, cfg, features) for p in cfg.audio_files]     # every file checked before decoding
    flat = [w for ws in windows for w in ws]
    instruction, params, texts = vocab.encode(cfg.instruction), s.params(trainable), []
    # with shared encoder windows, each batch's windows of audio are packed in the order given
    encode = frozen_encoder(s) if s.run.speech_windows.on else (lambda batch: batch)
    for i in range(0, len(flat), cfg.batch_size):
        batch = encode(speech_batch(flat[i:i + cfg.batch_size], instruction))
        tokens, _ = s.model.predict_batch(params, batch, cfg.decode)
        texts += [tokens_to_text(vocab, t, s.model.eos_id) for t in np.asarray(tokens)]
    outs, at = [], 0
    for p, ws in zip(cfg.audio_files, windows):
        outs.append(" ".join(t for t in texts[at:at + len(ws)] if t))
        at += len(ws)
        print(f"{p}\t{outs[-1]}", flush=True)
    return outs
