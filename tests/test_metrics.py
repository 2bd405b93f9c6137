"""Metrics: hand-computed WER / CER / BLEU, the normaliser's rules, errors."""

import collections
import inspect
import math

import numpy as np
import pytest

from slm_jax import metrics


# ----------------------------------------------------------------------------- normaliser


@pytest.mark.parametrize("raw, expected", [
    ("Hello,   World!", "hello world"),                      # case, punctuation, whitespace
    ("  tabs\tand\nnewlines  ", "tabs and newlines"),
    ("Don't STOP", "don't stop"),                            # intra-word apostrophe kept
    ("It\u2019s", "it's"),                                   # typographic apostrophe -> ASCII
    ("'quoted' rock 'n' roll", "quoted rock n roll"),        # non-intra-word apostrophes dropped
    ("state-of-the-art \u2014 done", "state of the art done"),  # hyphen / em dash -> space
    ("vingt-deux \u00abeuros\u00bb", "vingt deux euros"),       # guillemets are punctuation
    ("Élève à l'école, Straße. ¿Qué tal? Niño!", "élève à l'école straße qué tal niño"),
    ("e\u0301t\u00e9", "été"),                               # NFKC composes e + combining acute
    ("\uff21\uff22\uff23 \ufb01ne", "abc fine"),             # full-width letters, fi ligature
    ("5 $ + 3%", "5 $ + 3"),                                 # symbols kept, "%" is punctuation
    ("...", ""),
])
def test_normalize_text(raw, expected):
    assert metrics.normalize_text(raw) == expected
    assert metrics.normalize_text(expected) == expected      # idempotent


def test_normalize_text_turkish():
    assert metrics.normalize_text("İSTANBUL DIŞ", lang="tr") == "istanbul dış"
    assert metrics.normalize_text("İSTANBUL DIŞ", lang="tr-TR") == "istanbul dış"
    # Without the Turkic rule, str.lower() gives "i" + combining dot above and "i" for "I".
    assert metrics.normalize_text("İSTANBUL DIŞ") == "i\u0307stanbul diş"
    assert metrics.normalize_text("I", lang="fr") == "i"


# ----------------------------------------------------------------------------- WER / CER


def test_wer_hand_computed():
    # ref: the cat sat on the mat   (6 words)
    # hyp: the cat sit on mat today
    # one optimal alignment: sat->sit (S), second "the" deleted (D), "today" inserted (I):
    # 3 edits; no alignment with 2 exists (only 3 positional matches, LCS is 4 of 6).
    # WER = 3 / 6 = 0.5.
    assert metrics.wer(["the cat sat on the mat"], ["the cat sit on mat today"]) == pytest.approx(0.5)
    # Two deletions and one substitution over 4 words: a b c d -> a x  => 3/4.
    assert metrics.wer(["a b c d"], ["a x"]) == pytest.approx(0.75)
    # Insertions only: WER can exceed 1.  ref "yes" (1 word), hyp "yes yes yes" => 2/1.
    assert metrics.wer(["yes"], ["yes yes yes"]) == pytest.approx(2.0)
    assert metrics.wer(["same words here"], ["same words here"]) == 0.0


def test_wer_normalisation_switch():
    refs, hyps = ["Hello, World!"], ["hello world"]
    assert metrics.wer(refs, hyps) == 0.0
    # Raw: "Hello,"->"hello" and "World!"->"world" are both substitutions => 2/2.
    assert metrics.wer(refs, hyps, normalize=False) == pytest.approx(1.0)


def test_wer_is_corpus_level_not_mean_of_sentences():
    refs = ["one two three four five six seven eight nine ten", "hello"]
    hyps = ["one two three four five six seven eight nine ten", "goodbye"]
    # per sentence: 0/10 and 1/1 -> mean 0.5; corpus: 1 edit / 11 reference words.
    assert metrics.wer(refs, hyps) == pytest.approx(1 / 11)
    per_sentence = np.mean([metrics.wer([r], [h]) for r, h in zip(refs, hyps)])
    assert per_sentence == pytest.approx(0.5)


def _levenshtein(a, b):
    d = np.arange(len(b) + 1)
    for i, x in enumerate(a, 1):
        prev, d[0] = d.copy(), i
        for j, y in enumerate(b, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (x != y))
    return int(d[-1])


def test_wer_cer_match_independent_levenshtein():
    refs = ["the quick brown fox", "jumps over the lazy dog", "", "a b c"]
    hyps = ["the quack brown fox fox", "jumps the lazy dog", "extra words", "c b a"]
    w_ref, w_hyp = [r.split() for r in refs], [h.split() for h in hyps]
    expected_wer = sum(map(_levenshtein, w_ref, w_hyp)) / sum(map(len, w_ref))
    assert metrics.wer(refs, hyps) == pytest.approx(expected_wer)
    expected_cer = sum(map(_levenshtein, refs, hyps)) / sum(map(len, refs))
    assert metrics.cer(refs, hyps) == pytest.approx(expected_cer)


def test_empty_reference_counts_insertions():
    # "" -> "c" is one insertion; the corpus has 2 reference words.
    assert metrics.wer(["a b", ""], ["a b", "c"]) == pytest.approx(1 / 2)


def test_cer_hand_computed():
    # abcd -> abxde: c->x (S), e inserted (I): 2 edits / 4 characters.
    assert metrics.cer(["abcd"], ["abxde"]) == pytest.approx(0.5)
    # The space counts as a character: "ab cd" (5 chars) -> "abcd" is one deletion.
    assert metrics.cer(["ab cd"], ["abcd"]) == pytest.approx(0.2)
    # Normalisation applies: case and punctuation differences vanish.
    assert metrics.cer(["Élève!"], ["élève"]) == 0.0
    assert metrics.cer(["Élève!"], ["élève"], normalize=False) == pytest.approx(2 / 6)


# ----------------------------------------------------------------------------- BLEU / chrF


def _ngrams(words, n):
    return collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _bleu_by_hand(refs, hyps, max_n=4):
    """Corpus BLEU: clipped n-gram matches and totals summed over the corpus, geometric mean of
    the 4 precisions, brevity penalty exp(1 - r/c) when c < r; times 100."""
    matches, totals = np.zeros(max_n), np.zeros(max_n)
    ref_len = hyp_len = 0
    for ref, hyp in zip(refs, hyps):
        r, h = ref.split(), hyp.split()
        ref_len, hyp_len = ref_len + len(r), hyp_len + len(h)
        for n in range(1, max_n + 1):
            h_counts, r_counts = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, r_counts[g]) for g, c in h_counts.items())  # clipping
            totals[n - 1] += max(len(h) - n + 1, 0)
    assert np.all(matches > 0), "example must not need smoothing"
    precisions = matches / totals
    bp = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(np.mean(np.log(precisions)))


def test_bleu_hand_computed():
    refs = ["the quick brown fox jumps over the lazy dog",
            "a stitch in time saves nine stitches today"]
    hyps = ["the quick brown fox jumped over the the lazy dog",   # "the" x3 is clipped to 2
            "a stitch in time saves nine"]                        # short: brevity penalty
    expected = _bleu_by_hand(refs, hyps)
    # 16 hypothesis words vs 17 reference words, so the brevity penalty is active.
    assert 0 < expected < 100
    assert metrics.bleu(refs, hyps, tokenize="none") == pytest.approx(expected, abs=1e-6)
    # 13a tokenisation is the identity on these lower-case, punctuation-free strings.
    assert metrics.bleu(refs, hyps) == pytest.approx(expected, abs=1e-6)


def test_bleu_chrf_perfect_and_disjoint():
    refs = ["Das ist ein kleiner Test.", "Noch ein Satz, bitte."]
    assert metrics.bleu(refs, refs) == pytest.approx(100.0)
    assert metrics.chrf(refs, refs) == pytest.approx(100.0)
    assert metrics.bleu(["aaa bbb ccc ddd"], ["www xxx yyy zzz"]) == pytest.approx(0.0)
    assert metrics.chrf(["abc"], ["xyz"]) == pytest.approx(0.0)
    partial = metrics.chrf(refs, ["Das ist ein grosser Test.", "Noch ein Satz."])
    assert 0 < partial < 100


# ----------------------------------------------------------------------------- exact match, accuracy


def test_exact_match_and_accuracy():
    targets = ["Hello, world!", "Yes", "no"]
    preds = ["hello world", "yes.", "maybe"]
    assert metrics.exact_match(targets, preds) == pytest.approx(2 / 3)
    assert metrics.exact_match(targets, preds, normalize=False) == 0.0
    assert metrics.accuracy([1, 2, 3, 4], [1, 0, 3, 0]) == pytest.approx(0.5)
    assert metrics.accuracy(["Yes", "no"], ["yes", "no"]) == pytest.approx(0.5)  # no normalisation


# ----------------------------------------------------------------------------- SeqIO metric_fns


def test_seqio_metric_fns():
    refs, hyps = ["the cat sat on the mat"], ["the cat sit on mat today"]
    fns = {metrics.seqio_wer: "wer", metrics.seqio_cer: "cer", metrics.seqio_bleu: "bleu",
           metrics.seqio_chrf: "chrf", metrics.seqio_exact_match: "exact_match",
           metrics.seqio_accuracy: "accuracy"}
    for fn, key in fns.items():
        assert list(inspect.signature(fn).parameters) == ["targets", "predictions"]  # SeqIO's rule
        out = fn(refs, hyps)
        assert list(out) == [key] and isinstance(out[key], float)
    assert metrics.seqio_wer(refs, hyps)["wer"] == pytest.approx(0.5)
    assert metrics.seqio_bleu(refs, refs)["bleu"] == pytest.approx(100.0)
    assert metrics.seqio_exact_match([b"Yes!"], ["yes"])["exact_match"] == 1.0  # bytes decoded


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("fn", [metrics.wer, metrics.cer, metrics.bleu, metrics.chrf,
                                metrics.exact_match, metrics.accuracy])
def test_length_mismatch_names_both_lengths(fn):
    with pytest.raises(ValueError, match="3 targets but 2 predictions"):
        fn(["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(TypeError, match="single str"):
        fn("abc", "abc")


def test_error_rates_undefined_without_reference_words():
    with pytest.raises(ValueError, match="all 2 references are empty"):
        metrics.wer(["", "  "], ["a", ""])
    with pytest.raises(ValueError, match="after normalisation"):
        metrics.cer(["...", "!"], ["a", "b"])
    with pytest.raises(TypeError, match=r"predictions\[1\] is a int"):
        metrics.wer(["a", "b"], ["a", 3])
