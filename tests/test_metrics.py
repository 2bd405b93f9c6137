"""Metrics against hand-computed values."""

import math
from collections import Counter

import pytest

from slm_jax import metrics


def test_normalizer():
    assert metrics.normalize_text("  Hello, WORLD!  ") == "hello world"
    assert metrics.normalize_text("L'homme est là.") == "l'homme est là"          # accents, apostrophe kept
    assert metrics.normalize_text("vingt-deux «euros»") == "vingt deux euros"      # hyphen -> space
    assert metrics.normalize_text("'quoted' words") == "quoted words"              # quote marks dropped
    assert metrics.normalize_text("Straße ﬁve") == "strasse five"                  # NFKC + casefold


def test_wer_hand_computed():
    # ref: "the cat sat on the mat" (6 words); hyp: "the cat sit on mat now"
    # alignment: the=the cat=cat sat->sit (S) on=on the->deleted (D) mat=mat +now (I) -> 3 edits / 6
    assert metrics.wer(["the cat sat on the mat"], ["the cat sit on mat now"]) == pytest.approx(3 / 6)
    assert metrics.wer(["Hello, world."], ["hello world"]) == 0.0
    assert metrics.wer(["a b"], ["a b c d"]) == pytest.approx(2 / 2)  # insertions can exceed 100%


def test_wer_is_corpus_level_not_mean_of_sentences():
    targets = ["a", "b c d e f g h i j k"]       # 1 + 10 words
    preds = ["x", "b c d e f g h i j k"]         # 1 error in 11 words
    assert metrics.wer(targets, preds) == pytest.approx(1 / 11)
    assert metrics.wer(targets, preds) != pytest.approx((1.0 + 0.0) / 2)


def test_cer_hand_computed():
    # "abcd" -> "abxd": one substitution in 4 chars; "hello" -> "helo": one deletion in 5 chars
    assert metrics.cer(["abcd", "hello"], ["abxd", "helo"]) == pytest.approx(2 / 9)


def test_empty_reference_counts_insertions():
    assert metrics.wer(["a b", ""], ["a b", "c"]) == pytest.approx(1 / 2)


def _bleu_numpy(hyp: list[str], ref: list[str]) -> float:
    """Direct BLEU: clipped n-gram precisions (n=1..4), brevity penalty, geometric mean."""
    log_p = 0.0
    for n in range(1, 5):
        h = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
        r = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        log_p += math.log(sum(min(c, r[g]) for g, c in h.items()) / sum(h.values())) / 4
    bp = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return 100 * bp * math.exp(log_p)


def test_bleu_against_direct_computation():
    ref = "the quick brown fox jumps over the lazy dog today"
    hyp = "the quick brown fox jumped over the lazy dog"
    expected = _bleu_numpy(hyp.split(), ref.split())
    assert metrics.bleu([ref], [hyp], tokenize="none") == pytest.approx(expected, abs=1e-6)
    assert metrics.bleu([ref], [ref]) == pytest.approx(100.0)
    assert 0 < metrics.chrf([ref], [hyp]) < 100 and metrics.chrf([ref], [ref]) == pytest.approx(100.0)


def test_exact_match_and_errors():
    assert metrics.exact_match(["Forty-two", "7"], ["forty two", "8"]) == 0.5
    assert metrics.seqio_wer(["a b"], ["a c"]) == {"wer": 0.5}
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        metrics.wer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        metrics.wer(["", " "], ["a", "b"])
