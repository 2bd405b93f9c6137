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


def test_task_rates_draw_families_with_their_weights():
    """task_rates: each instruction example comes from a family drawn with its weight (a family
    left out never appears); bad keys and weights are refused by name."""
    v = vocab_lib.get_vocabulary()
    family = {(v.decode(v.encode(t) + v.encode(i)), g): name.split("_")[0]
              for name, t, i, g in llm_text.instruction_examples("train", KW["n_items"])}
    rates = {"digits": 3.0, "qa": 1.0}
    seen = []
    for b in _take(40, span_fraction=0.0, task_rates=rates):
        for enc, tgt in zip(b["encoder_input_tokens"], b["decoder_target_tokens"]):
            seen.append(family[(v.decode([int(x) for x in enc if x > 0]), v.decode([int(x) for x in tgt if x > 1]))])
    share = seen.count("digits") / len(seen)
    assert set(seen) == {"digits", "qa"} and 0.68 < share < 0.82, share   # 0.75 expected; 320 draws
    with pytest.raises(ValueError, match="no instruction family.*'digit'"):
        _take(1, task_rates={"digit": 1.0})
    with pytest.raises(ValueError, match="weights must be"):
        _take(1, task_rates={"qa": 0.0})


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


def _segments(row_tokens, row_segments):
    return [[int(t) for t, s in zip(row_tokens, row_segments) if s == k] for k in range(1, row_segments.max() + 1)]


def test_pack_rows_keeps_every_example_whole_and_in_order():
    rng = np.random.default_rng(0)
    examples = [(list(rng.integers(2, 100, rng.integers(3, 20))), list(rng.integers(2, 100, rng.integers(2, 9))) + [1])
                for _ in range(40)]
    batch, used = llm_text.pack_rows(examples, 6, 48, 24)
    got = []
    for r in range(6):
        ins = _segments(batch["encoder_input_tokens"][r], batch["encoder_segment_ids"][r])
        outs = _segments(batch["decoder_target_tokens"][r], batch["decoder_segment_ids"][r])
        dec_in = _segments(batch["decoder_input_tokens"][r], batch["decoder_segment_ids"][r])
        assert len(ins) == len(outs) >= 1
        for t, d in zip(outs, dec_in):
            assert d == [0] + t[:-1]          # shifted right within its own example
        got += list(zip(ins, outs))
        # a row is closed only when the next example would not fit
        if r < 5:
            nxt = examples[len(got)]
            assert (len(nxt[0]) + (batch["encoder_segment_ids"][r] > 0).sum() > 48
                    or len(nxt[1]) + (batch["decoder_segment_ids"][r] > 0).sum() > 24)
    assert got == [(list(map(int, i)), list(map(int, t))) for i, t in examples[:used]]
    assert used > 6 * 1.5                     # rows hold several of these short examples
    np.testing.assert_array_equal(batch["decoder_loss_weights"], batch["decoder_target_tokens"] > 0)


def test_packed_text_batches_resume_and_hold_more_examples_per_row():
    full, tail = _take(4, pack=True), _take(2, pack=True, start_batch=2)
    for a, b in zip(full[2:], tail):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    b = full[0]
    assert b["encoder_input_tokens"].shape == (8, 48) and b["decoder_target_tokens"].shape == (8, 24)
    per_row = b["decoder_segment_ids"].max(1)
    assert per_row.min() >= 1 and per_row.mean() >= 1.5
    np.testing.assert_array_equal(b["encoder_segment_ids"].max(1), per_row)
    targets = (_take(1)[0]["decoder_target_tokens"] > 0).sum()
    assert (b["decoder_target_tokens"] > 0).sum() > 1.5 * targets   # more target tokens per batch


def test_packed_rows_give_each_example_the_logits_it_gets_alone():
    """The model's packed path (segment-id masks) against the reference of running every example
    in a row of its own: same logits at every target position, float32 tolerance 1e-5."""
    import jax
    from slm_jax.models.t5 import T5, T5Config
    cfg = T5Config(vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_encoder_layers=2,
                   num_decoder_layers=2, relative_attention_num_buckets=8, relative_attention_max_distance=16)
    model = T5(cfg)
    rng = np.random.default_rng(1)
    examples = [(list(rng.integers(2, 128, n)), list(rng.integers(2, 128, m)) + [1])
                for n, m in [(9, 4), (14, 6), (5, 3), (20, 7), (11, 2), (7, 5)]]
    batch, used = llm_text.pack_rows(examples, 2, 32, 16)
    assert used >= 4 and batch["decoder_segment_ids"].max() >= 2
    params = model.init(jax.random.PRNGKey(0), batch["encoder_input_tokens"], batch["decoder_input_tokens"])["params"]
    packed = np.asarray(model.apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                                    batch["encoder_segment_ids"], batch["decoder_segment_ids"]))
    rows = [llm_text.pack_rows([ex], 1, 32, 16)[0] for ex in examples[:used]]   # one example per row
    alone_batch = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
    alone = np.asarray(model.apply({"params": params}, alone_batch["encoder_input_tokens"],
                                   alone_batch["decoder_input_tokens"]))
    k = 0
    for r in range(2):
        for s in range(1, batch["decoder_segment_ids"][r].max() + 1):
            cols = np.flatnonzero(batch["decoder_segment_ids"][r] == s)
            diff = np.abs(packed[r, cols] - alone[k, :len(cols)]).max()
            assert diff <= 1e-5, (r, s, diff)
            k += 1
    assert k == used
    # without the segment ids the packed row's examples see each other: the logits differ
    mixed = np.asarray(model.apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"]))
    assert np.abs(mixed - packed).max() > 1e-3
