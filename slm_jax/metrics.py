"""Evaluation metrics: WER / CER (ASR), BLEU / chrF (AST), exact match and accuracy.

Conventions (all metrics are corpus-level, never a mean of per-example scores):
- `targets` are the references and `predictions` the model outputs, one string per example,
  in the same order (the argument order of SeqIO metric functions).
- WER and CER are *fractions* in [0, inf): total edits / total reference words (characters).
  They can exceed 1 when predictions insert many words. Text is normalised with
  `normalize_text` first unless `normalize=False`.
- BLEU and chrF are on sacrebleu's 0-100 scale and computed on the raw (cased, punctuated)
  strings, as sacrebleu intends.
- exact_match and accuracy are fractions in [0, 1].
- The `seqio_*` functions have SeqIO's metric_fn signature `(targets, predictions) -> dict`
  and report under the keys "wer", "cer" (fractions), "bleu", "chrf" (0-100),
  "exact_match" and "accuracy" (fractions).
Bad input (different lengths, an empty corpus, references with no words, non-strings) raises
ValueError / TypeError instead of returning a silently wrong number.
"""

from __future__ import annotations

import unicodedata
from typing import Sequence

import jiwer
import sacrebleu

# Typographic apostrophes mapped to ASCII "'" (NFKC leaves them alone).
_APOSTROPHES = {"\u2019": "'", "\u02bc": "'", "\u2018": "'", "\uff07": "'"}
# Languages whose dotted / dotless i make plain str.lower() wrong.
_TURKIC = ("tr", "az")


def _is_word_char(c: str) -> bool:
    return c.isalnum() or unicodedata.category(c).startswith("M")


def normalize_text(s: str, lang: str | None = None) -> str:
    """Normalise a transcript for WER / CER / exact match. Deterministic; steps, in order:

    1. Unicode NFKC (compatibility forms folded: full-width letters -> ASCII, "ﬁ" -> "fi";
       accents end up composed: "e" + U+0301 -> "é").
    2. Lowercase with `str.lower()` (not casefold, so "ß" stays "ß"). For lang "tr" / "az"
       (the prefix of a code such as "tr-TR"), "I" -> "ı" and "İ" -> "i" first, the Turkic
       rule. `lang` changes nothing else; None means no language-specific rule.
    3. Typographic apostrophes (U+2019, U+02BC, U+2018, U+FF07) -> ASCII "'".
    4. Every Unicode punctuation character (category P*) becomes a space, except an
       apostrophe "'" with a word character (letter, digit or combining mark) on both sides,
       which is kept: "don't" and "l'homme" stay; "'quoted'" -> "quoted". Hyphens and dashes
       are punctuation, so "state-of-the-art" -> "state of the art" ("vingt-deux" and
       "vingt deux" are spoken alike). Symbols (category S*: "$", "+", "€") and digits stay.
    5. Whitespace runs collapse to one space; leading / trailing whitespace is removed.
    Accented and non-Latin letters are kept as they are ("Élève" -> "élève", "Straße" ->
    "straße", "¿Qué?" -> "qué"): "é" and "e" are different words in French.
    """
    if not isinstance(s, str):
        raise TypeError(f"normalize_text expects a str, got {type(s).__name__}")
    s = unicodedata.normalize("NFKC", s)
    if lang is not None and lang.lower().replace("_", "-").split("-")[0] in _TURKIC:
        s = s.replace("I", "ı").replace("İ", "i")
    s = s.lower()
    s = "".join(_APOSTROPHES.get(c, c) for c in s)
    out = []
    for i, c in enumerate(s):
        if unicodedata.category(c).startswith("P"):
            intra_word = (c == "'" and 0 < i < len(s) - 1
                          and _is_word_char(s[i - 1]) and _is_word_char(s[i + 1]))
            out.append(c if intra_word else " ")
        else:
            out.append(c)
    return " ".join("".join(out).split())


def _pairs(name: str, targets: Sequence, predictions: Sequence, strings: bool = True) -> tuple[list, list]:
    """Checks the two lists: same non-zero length; with `strings`, every item a str (bytes are
    decoded as UTF-8)."""
    for arg, value in (("targets", targets), ("predictions", predictions)):
        if isinstance(value, (str, bytes)):
            raise TypeError(f"{name}: {arg} must be a list, got a single {type(value).__name__}")
    targets, predictions = list(targets), list(predictions)
    if len(targets) != len(predictions):
        raise ValueError(f"{name}: got {len(targets)} targets but {len(predictions)} predictions; "
                         "they must pair up one to one")
    if not targets:
        raise ValueError(f"{name}: empty corpus (0 targets and 0 predictions)")
    if not strings:
        return targets, predictions

    def text(x, arg, i):
        if isinstance(x, bytes):
            return x.decode("utf-8")
        if not isinstance(x, str):
            raise TypeError(f"{name}: {arg}[{i}] is a {type(x).__name__}, expected str")
        return x

    return ([text(t, "targets", i) for i, t in enumerate(targets)],
            [text(p, "predictions", i) for i, p in enumerate(predictions)])


def _error_rate(name: str, process, targets, predictions, normalize: bool, unit: str) -> float:
    targets, predictions = _pairs(name, targets, predictions)
    if normalize:
        targets = [normalize_text(t) for t in targets]
        predictions = [normalize_text(p) for p in predictions]
    else:  # the same whitespace handling as normalize_text (any whitespace separates words)
        targets = [" ".join(t.split()) for t in targets]
        predictions = [" ".join(p.split()) for p in predictions]
    if not any(targets):
        raise ValueError(f"{name}: all {len(targets)} references are empty"
                         f"{' after normalisation' if normalize else ''}; {name} divides by the number "
                         f"of reference {unit} and is undefined")
    # jiwer aligns each pair; an empty reference contributes its prediction as insertions.
    out = process(targets, predictions)
    n_ref = out.hits + out.substitutions + out.deletions
    return (out.substitutions + out.deletions + out.insertions) / n_ref


def wer(targets: Sequence[str], predictions: Sequence[str], normalize: bool = True) -> float:
    """Corpus word error rate, a fraction: (S + D + I) summed over the corpus / reference words.

    Words are the whitespace-separated tokens of the (normalised, if `normalize`) strings."""
    return _error_rate("wer", jiwer.process_words, targets, predictions, normalize, "words")


def cer(targets: Sequence[str], predictions: Sequence[str], normalize: bool = True) -> float:
    """Corpus character error rate, a fraction: character edits / reference characters.

    The single space between words counts as a character (jiwer's convention); whitespace
    runs are collapsed and the ends stripped first."""
    return _error_rate("cer", jiwer.process_characters, targets, predictions, normalize, "characters")


def bleu(targets: Sequence[str], predictions: Sequence[str], tokenize: str = "13a") -> float:
    """Corpus BLEU (sacrebleu defaults: up to 4-grams, "exp" smoothing, one reference per
    example), 0-100. `tokenize` is sacrebleu's tokenizer name: "13a" (default, the WMT
    standard), "intl", "zh", "char", "none" (split on spaces only), ..."""
    targets, predictions = _pairs("bleu", targets, predictions)
    return float(sacrebleu.corpus_bleu(predictions, [targets], tokenize=tokenize).score)


def chrf(targets: Sequence[str], predictions: Sequence[str], word_order: int = 0) -> float:
    """Corpus chrF (character 6-grams, beta 2), 0-100; `word_order=2` gives chrF++."""
    targets, predictions = _pairs("chrf", targets, predictions)
    return float(sacrebleu.corpus_chrf(predictions, [targets], word_order=word_order).score)


def exact_match(targets: Sequence[str], predictions: Sequence[str], normalize: bool = True) -> float:
    """Fraction of examples whose prediction equals the target (after `normalize_text`)."""
    targets, predictions = _pairs("exact_match", targets, predictions)
    if normalize:
        targets = [normalize_text(t) for t in targets]
        predictions = [normalize_text(p) for p in predictions]
    return sum(t == p for t, p in zip(targets, predictions)) / len(targets)


def accuracy(targets: Sequence, predictions: Sequence) -> float:
    """Fraction of examples with prediction == target: any comparable values (class labels,
    ids, strings), compared as they are, without normalisation."""
    targets, predictions = _pairs("accuracy", targets, predictions, strings=False)
    return sum(t == p for t, p in zip(targets, predictions)) / len(targets)


# ----------------------------------------------------------------------------- SeqIO metric_fns
# SeqIO inspects the parameter names: they must be exactly (targets, predictions).


def seqio_wer(targets, predictions) -> dict[str, float]:
    """{"wer": fraction}, normalised text."""
    return {"wer": wer(targets, predictions)}


def seqio_cer(targets, predictions) -> dict[str, float]:
    """{"cer": fraction}, normalised text."""
    return {"cer": cer(targets, predictions)}


def seqio_bleu(targets, predictions) -> dict[str, float]:
    """{"bleu": 0-100}, sacrebleu's 13a tokenizer."""
    return {"bleu": bleu(targets, predictions)}


def seqio_chrf(targets, predictions) -> dict[str, float]:
    """{"chrf": 0-100}."""
    return {"chrf": chrf(targets, predictions)}


def seqio_exact_match(targets, predictions) -> dict[str, float]:
    """{"exact_match": fraction}, normalised text."""
    return {"exact_match": exact_match(targets, predictions)}


def seqio_accuracy(targets, predictions) -> dict[str, float]:
    """{"accuracy": fraction}, values compared as they are."""
    return {"accuracy": accuracy(targets, predictions)}
