"""Text data that makes the miniature LLM foundation mT5/mT0-like, from the same world as the
speech corpus:

* span corruption (T5's pretraining objective) on world_text renderings in all languages;
* instruction tuning on text: every spoken-world instruction (transcribe, biasing, translate
  between all language pairs, QA, digits, compare, add) with the *text* of a record in place of
  its speech. The encoder input is tokens(text) + tokens(instruction), exactly the layout the
  SLM gives the frozen LLM with speech embeddings in place of tokens(text).

Items come from a seed disjoint from spoken_world's, so the LLM never sees the speech corpus'
test sentences as text. Batches are numpy dicts for `T5TaskModel` and are a pure function of
(seed, batch index): resuming at `start_batch` continues the same stream.
"""

from __future__ import annotations

import functools
import itertools
import random
from typing import Iterator, Mapping, Sequence

import gin
import numpy as np

from slm_jax.data import bucket_bound
from tasks import prompts, vocab as vocab_lib, world_text

TEXT_SEED = {"train": 424242, "validation": 515151, "test": 616161}
NUM_SENTINELS = 24


@functools.lru_cache(maxsize=8)
def _records(split: str, n_items: int) -> tuple:
    return tuple(world_text.text_records(world_text.generate_items(n_items, TEXT_SEED[split]), f"text-{split}"))


def instruction_examples(split: str, n_items: int, makers=None) -> list[tuple[str, str, str, str]]:
    """(task name, text, instruction, target) for every (record, maker) pair that applies."""
    makers = makers or prompts.world_makers()
    out = []
    for r in _records(split, n_items):
        for make in makers:
            ex = make(r)
            if ex:
                out.append((make.__name__, r["text"], ex[0], ex[1]))
    return out


def span_corruption(ids: list[int], rng: random.Random, vocab_size: int, noise: float = 0.15,
                    mean_span: float = 3.0) -> tuple[list[int], list[int]]:
    """T5 span corruption: replace ~noise of the tokens in spans of mean length mean_span by
    sentinels (ids vocab_size-1, vocab_size-2, ...); the target lists each sentinel and its span."""
    n = len(ids)
    n_noise = max(1, round(n * noise))
    n_spans = max(1, round(n_noise / mean_span))
    starts = sorted(rng.sample(range(n), min(n_spans, n)))
    inputs, targets, i, k = [], [], 0, 0
    for s in starts:
        if s < i:
            continue
        length = max(1, min(n - s, round(rng.expovariate(1 / mean_span)) or 1))
        inputs += ids[i:s] + [vocab_size - 1 - k]
        targets += [vocab_size - 1 - k] + ids[s:s + length]
        i, k = s + length, k + 1
        if k >= NUM_SENTINELS:
            break
    inputs += ids[i:]
    return inputs, targets


def pad_ids(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """Token-id rows -> int32 [len(rows), length], cut at `length`, zero-padded."""
    out = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
        r = list(r)[:length]
        out[i, :len(r)] = r
    return out


def pack_rows(examples: Sequence[tuple[Sequence[int], Sequence[int]]], n_rows: int, input_len: int,
              target_len: int) -> tuple[dict[str, np.ndarray], int]:
    """Packs (input ids, target ids) examples, in order, into `n_rows` rows as t5x does: each
    row takes examples while both its inputs and targets still fit, then the next row begins.
    Examples longer than a row are cut to it; rows left when the examples run out stay padding.
    Returns the T5TaskModel batch (with encoder_segment_ids / decoder_segment_ids numbering the
    examples of a row from 1, and decoder inputs shifted right within each example) and the
    number of examples used."""
    enc = np.zeros((n_rows, input_len), np.int32)
    tgt, dec_in = np.zeros((n_rows, target_len), np.int32), np.zeros((n_rows, target_len), np.int32)
    enc_seg, dec_seg = np.zeros_like(enc), np.zeros_like(tgt)
    row, used, pos_in, pos_t = 0, 0, 0, 0
    for inputs, targets in examples:
        inputs, targets = list(inputs)[:input_len], list(targets)[:target_len]
        if pos_in + len(inputs) > input_len or pos_t + len(targets) > target_len:
            row, pos_in, pos_t = row + 1, 0, 0
        if row == n_rows:
            break
        seg = enc_seg[row].max() + 1
        enc[row, pos_in:pos_in + len(inputs)], enc_seg[row, pos_in:pos_in + len(inputs)] = inputs, seg
        tgt[row, pos_t:pos_t + len(targets)], dec_seg[row, pos_t:pos_t + len(targets)] = targets, seg
        dec_in[row, pos_t + 1:pos_t + len(targets)] = targets[:-1]
        pos_in, pos_t, used = pos_in + len(inputs), pos_t + len(targets), used + 1
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in, "decoder_target_tokens": tgt,
            "decoder_loss_weights": (tgt > 0).astype(np.int32), "encoder_segment_ids": enc_seg,
            "decoder_segment_ids": dec_seg}, used


def _rated_picker(examples: Sequence[tuple], rates: Mapping[str, float] | None):
    """rng -> one example of `examples`: uniformly, or from a family drawn with `rates`."""
    if rates is None:
        return lambda rng: rng.choice(examples)
    families: dict[str, list] = {}
    for e in examples:
        families.setdefault(e[0].split("_")[0], []).append(e)
    unknown = sorted(set(rates) - set(families))
    if unknown:
        raise ValueError(f"text_batches.task_rates: no instruction family {unknown}; the families are {sorted(families)}")
    if any(w < 0 for w in rates.values()) or not any(w > 0 for w in rates.values()):
        raise ValueError(f"text_batches.task_rates: weights must be >= 0 with one > 0, got {dict(rates)}")
    names = sorted(rates)
    weights = [float(rates[n]) for n in names]
    return lambda rng: rng.choice(families[rng.choices(names, weights)[0]])


@gin.configurable
def text_batches(task: str = "world_text", split: str = "train", *, feature_lengths: Mapping[str, int],
                 batch_size: int = 32, seed: int = 0, shuffle: bool = True, start_batch: int = 0,
                 shard_index: int = 0, num_shards: int = 1, n_items: int = 4000, span_fraction: float = 0.3,
                 model_vocab_size: int = 1024, first_tasks: Sequence[str] = (), first_batches: int = 0,
                 target_buckets: Sequence[int] = (), pack: bool = False,
                 task_rates: Mapping[str, float] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches for T5TaskModel: a `span_fraction` share of span-corruption examples,
    the rest instruction examples. feature_lengths: {"inputs": L, "targets": L}. The first nine
    parameters are the input_fn contract of slm_jax's `train`; `task` and `shuffle` select
    nothing (there is one text stream, always drawn at random from `seed`).

    `target_buckets` (e.g. (16,)): pad each batch's targets only to the smallest bucket that
    holds its longest target (else to feature_lengths["targets"]): one compiled step per bucket,
    no decoder work on padding that every row has.

    `pack=True`: each row holds as many examples as fit (`pack_rows`), as t5x packs for
    pretraining: with this world's short texts a row of 48 input / 24 target tokens holds ~2-3
    examples, so a step trains on that many times more examples for about the same compute.

    `task_rates` ({family: weight}, a family being a task name's part before "_": "ast", "asr",
    "biasing", "qa", "digits", "compare", "add"): an instruction example is drawn from a family
    chosen with these weights, then uniformly within it, as T5 mixtures set rates per task;
    families left out are not drawn. None: uniformly over all examples (so in proportion to each
    family's examples, which gives translation, 12 language pairs, half of them).

    Curriculum: the first `first_batches` batches hold only instruction examples of the tasks
    whose names start with one of `first_tasks` (e.g. ("asr_",): repeating the text). A small
    model learns to carry content from its input to its output quickly on such a task alone, and
    slowly, if at all, inside the full mixture, where the target's language model is an easier
    way down the loss; translation and the other tasks then build on it."""
    vocab = vocab_lib.get_vocabulary()
    if model_vocab_size - NUM_SENTINELS < vocab.vocab_size:
        raise ValueError(f"text_batches: model_vocab_size {model_vocab_size} leaves no room for "
                         f"{NUM_SENTINELS} sentinels above the {vocab.vocab_size}-piece vocabulary")
    examples = instruction_examples(split, n_items)
    first = [e for e in examples if e[0].startswith(tuple(first_tasks))] if first_tasks else examples
    if first_batches and not first:
        raise ValueError(f"text_batches: no instruction task starts with any of first_tasks={list(first_tasks)}")
    pick = _rated_picker(examples, task_rates)
    texts = [r["text"] for r in _records(split, n_items)]
    eos = 1
    local = batch_size // num_shards
    b = start_batch
    while True:
        rng = random.Random(f"{seed}-{b}")
        warm = b < first_batches

        def draw():
            while True:
                if not warm and rng.random() < span_fraction:
                    i, t = span_corruption(vocab.encode(rng.choice(texts)), rng, model_vocab_size)
                else:
                    _, text, instruction, target = rng.choice(first) if warm else pick(rng)
                    i, t = vocab.encode(text) + vocab.encode(instruction), vocab.encode(target)
                yield i, t + [eos]

        if pack:
            batch, _ = pack_rows(draw(), batch_size, feature_lengths["inputs"], feature_lengths["targets"])
            yield {k: v[shard_index * local:(shard_index + 1) * local] for k, v in batch.items()}
            b += 1
            continue
        enc, tgt = zip(*itertools.islice(draw(), batch_size))
        enc, tgt = enc[shard_index * local:(shard_index + 1) * local], tgt[shard_index * local:(shard_index + 1) * local]
        full = feature_lengths["targets"]
        targets = pad_ids(tgt, bucket_bound(min(max(map(len, tgt)), full), target_buckets, full))
        yield {"encoder_input_tokens": pad_ids(enc, feature_lengths["inputs"]),
               "decoder_input_tokens": np.concatenate([np.zeros((local, 1), np.int32), targets[:, :-1]], 1),
               "decoder_target_tokens": targets,
               "decoder_loss_weights": (targets > 0).astype(np.int32)}
        b += 1
