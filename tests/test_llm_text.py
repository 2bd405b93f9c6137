"""Text data of the LLM foundation (tasks/llm_text.py): resumable batches, span corruption and
the repeat-first curriculum."""

import itertools

import numpy as np
import pytest

from tasks import llm_text, vocab as vocab_lib

LENGTHS = {"inputs": 48, "targets": 24}
KW = dict(feature_lengths=LENGTHS, batch_size=8, n_items=40, model_vocab_size=1024)


def _take(n, **kw):
    return list(itertools.islice(llm_text.text_batches(**{**KW, **kw}), n))


def test_batches_resume_and_are_well_formed():
    full, tail = _take(5), _take(2, start_batch=3)
    for a, b in zip(full[3:], tail):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    b = full[0]
    assert b["encoder_input_tokens"].shape == (8, 48) and b["decoder_target_tokens"].shape == (8, 24)
    np.testing.assert_array_equal(b["decoder_input_tokens"][:, 1:], b["decoder_target_tokens"][:, :-1])
    np.testing.assert_array_equal(b["decoder_loss_weights"], b["decoder_target_tokens"] > 0)


def test_span_corruption_round_trips():
    import random
    ids = list(range(10, 40))
    inputs, targets = llm_text.span_corruption(ids, random.Random(0), 1024)
    # replacing each sentinel of the inputs by its span in the targets gives the text back
    spans, cur = {}, None
    for t in targets:
        if t >= 1024 - llm_text.NUM_SENTINELS:
            cur = t
            spans[cur] = []
        else:
            spans[cur].append(t)
    restored = [x for t in inputs for x in (spans[t] if t in spans else [t])]
    assert restored == ids and len(spans) >= 1


def test_curriculum_batches_hold_only_the_first_tasks():
    v = vocab_lib.get_vocabulary()
    first = llm_text.instruction_examples("train", KW["n_items"])
    allowed = {(v.decode(v.encode(t) + v.encode(i)), g) for name, t, i, g in first if name.startswith("asr_")}
    warm = _take(3, first_tasks=("asr_",), first_batches=2, span_fraction=1.0)
    for b in warm[:2]:   # the curriculum's batches: repeating the text only, no span corruption
        for enc, tgt in zip(b["encoder_input_tokens"], b["decoder_target_tokens"]):
            pair = (v.decode([int(x) for x in enc if x > 0]), v.decode([int(x) for x in tgt if x > 1]))
            assert pair in allowed, pair
    # afterwards the mixture (here all span corruption) takes over: sentinels appear
    assert (warm[2]["encoder_input_tokens"] >= 1024 - llm_text.NUM_SENTINELS).any()
    with pytest.raises(ValueError, match="first_tasks"):
        _take(1, first_tasks=("no_such_task",), first_batches=1)


def test_target_buckets_trim_only_padding():
    full, bucketed = _take(6), _take(6, target_buckets=(8, 16))
    for a, b in zip(full, bucketed):
        n = b["decoder_target_tokens"].shape[1]
        longest = int((a["decoder_target_tokens"] > 0).sum(1).max())
        assert n == min([x for x in (8, 16) if x >= longest] + [24])   # the smallest bucket that holds it
        np.testing.assert_array_equal(a["encoder_input_tokens"], b["encoder_input_tokens"])
        for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"):
            np.testing.assert_array_equal(a[k][:, :n], b[k])
            assert not a[k][:, n:].any(), k    # only padding was cut
    assert {b["decoder_target_tokens"].shape[1] for b in bucketed} - {24}   # some batch was cut
