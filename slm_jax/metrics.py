"""Evaluation metrics: WER / CER (jiwer), BLEU / chrF (sacrebleu), exact match, accuracy, and
their SeqIO metric-function forms (`seqio_*`: (targets, predictions) -> {name: value}).

Scales: WER and CER are fractions (0.12 = 12% word errors; can exceed 1 with insertions);
BLEU and chrF are on sacrebleu's 0-100 scale; exact match and accuracy are fractions.
All are corpus-level: WER = total word edits / total reference words, not a mean of
per-sentence rates.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

import jiwer
import sacrebleu

_PUNCT = re.compile(r"[^\w\s'-]")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """The WER/CER text normaliser, applied to references and hypotheses alike:

    1. Unicode NFKC (compatibility forms folded; "ﬁ" -> "fi"), then lowercase (casefold);
    2. hyphens and dashes -> space ("vingt-deux" -> "vingt deux": the two are spoken the same);
    3. every other punctuation / symbol character removed, except apostrophes inside words
       ("l'homme", "don't" keep theirs; quotes around words are dropped);
    4. whitespace collapsed and stripped.
    Letters with accents are kept: "é" and "e" are different words in French."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = text.replace("\u2019", "'")
    text = re.sub(r"[-\u2010-\u2015]", " ", text)
    text = _PUNCT.sub(" ", text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    return _SPACES.sub(" ", text).strip()


def _check(targets: Sequence[str], predictions: Sequence[str]) -> None:
    if len(targets) != len(predictions):
        raise ValueError(f"metrics: {len(targets)} targets but {len(predictions)} predictions")


def _prepare(targets, predictions, normalize: bool):
    _check(targets, predictions)
    if normalize:
        targets = [normalize_text(t) for t in targets]
        predictions = [normalize_text(p) for p in predictions]
    if not any(t.strip() for t in targets):
        raise ValueError("metrics: every reference is empty, the error rate is undefined")
    return list(targets), list(predictions)


def _edits(ref: str, hyp: str, unit: str) -> tuple[int, int]:
    """(edit operations, reference length) in words or characters; an empty reference
    contributes only insertions."""
    n_ref = len(ref.split()) if unit == "word" else len(ref)
    if not n_ref:
        return (len(hyp.split()) if unit == "word" else len(hyp)), 0
    out = jiwer.process_words(ref, hyp) if unit == "word" else jiwer.process_characters(ref, hyp)
    return out.substitutions + out.deletions + out.insertions, n_ref


def _error_rate(targets, predictions, normalize: bool, unit: str) -> float:
    targets, predictions = _prepare(targets, predictions, normalize)
    pairs = [_edits(t, p, unit) for t, p in zip(targets, predictions)]
    return sum(e for e, _ in pairs) / sum(n for _, n in pairs)


def wer(targets: Sequence[str], predictions: Sequence[str], normalize: bool = True) -> float:
    """Corpus word error rate (fraction): total word edits / total reference words."""
    return _error_rate(targets, predictions, normalize, "word")


def cer(targets: Sequence[str], predictions: Sequence[str], normalize: bool = True) -> float:
    """Corpus character error rate (fraction), spaces counted as characters."""
    return _error_rate(targets, predictions, normalize, "char")


def bleu(targets: Sequence[str], predictions: Sequence[str], tokenize: str = "13a") -> float:
    """Corpus BLEU (sacrebleu, one reference per example), 0-100."""
    _check(targets, predictions)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(targets)], tokenize=tokenize).score)


def chrf(targets: Sequence[str], predictions: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu defaults: character 6-grams, beta 2), 0-100."""
    _check(targets, predictions)
    return float(sacrebleu.corpus_chrf(list(predictions), [list(targets)]).score)


def exact_match(targets: Sequence[str], predictions: Sequence[str], normalize: bool = True) -> float:
    """Fraction of predictions equal to their target (after `normalize_text` by default)."""
    _check(targets, predictions)
    if not targets:
        raise ValueError("metrics: exact_match of zero examples")
    f = normalize_text if normalize else (lambda s: s)
    return sum(f(t) == f(p) for t, p in zip(targets, predictions)) / len(targets)


accuracy = exact_match


def seqio_wer(targets, predictions):
    return {"wer": wer(targets, predictions)}


def seqio_cer(targets, predictions):
    return {"cer": cer(targets, predictions)}


def seqio_bleu(targets, predictions):
    return {"bleu": bleu(targets, predictions)}


def seqio_chrf(targets, predictions):
    return {"chrf": chrf(targets, predictions)}


def seqio_exact_match(targets, predictions):
    return {"exact_match": exact_match(targets, predictions)}


def seqio_accuracy(targets, predictions):
    return {"accuracy": accuracy(targets, predictions)}
