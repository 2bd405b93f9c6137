"""Instruction prompts and the makers that turn a record into one example's text.

A maker is `make(record) -> (instruction, target) | None` (None: the record gives no example);
its `__name__` names the task kind ("asr_en", "ast_fr_en", "qa", ...). Makers are pure
Python over the records of tasks/world_text.py: the task registrations (asr, ast, instruct,
fsdd, local_manifest), the world vocabulary's training text (tasks/vocab.py) and the LLM's
text data (tasks/llm_text.py) all use these. This module imports no task registration.

    asr       record in a language -> its transcript
    biasing   sentence -> its transcript, with a bias list of its content words and distractors
              in the instruction
    ast       record in one language -> its aligned rendering in another
    qa        spoken sentence + a question about it -> short English answer
              ("What colour are the cars?" -> "red", "How many ...? Answer with a digit."
              -> "3", "Who buys the cars?" -> "Anna" / "the girl", "Where does it happen?"
              -> "in the garden")
    digits    spoken number or year -> its digits ("1234")
    compare   spoken number + threshold -> "yes" / "no"
    add       spoken number + k -> the sum in digits

Bias lists, questions, thresholds and addends are drawn per utterance from a hash of its id,
so they are fixed across epochs and runs.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Mapping

from tasks import world_text

Make = Callable[[Mapping[str, Any]], "tuple[str, str] | None"]

ASR_INSTRUCTION = "Transcribe the speech."
BIASING_INSTRUCTION = "Transcribe the speech. It may contain these words: {words}."
AST_INSTRUCTION = "Translate the speech into {language}."
QA_INSTRUCTIONS = {
    "colour": "What colour are the {object}?",
    "count": "How many {object} are mentioned? Answer with a digit.",
    "who": "Who {verb} the {object}?",
    "where": "Where does it happen?",
}
DIGITS_INSTRUCTION = "Write the spoken number as digits."
COMPARE_INSTRUCTION = "Is the spoken number greater than {threshold}? Answer yes or no."
ADD_INSTRUCTION = "Add {k} to the spoken number. Answer with digits."


def _rng(task: str, r) -> random.Random:
    return random.Random(f"{task}-{r['id']}")


# ----------------------------------------------------------------------------- ASR


def transcript_maker(language: str | None = None, instruction: str = ASR_INSTRUCTION) -> Make:
    """record -> (instruction, transcript) for records in `language` (None: any language).
    tasks.asr.asr_maker adds its TensorFlow form."""

    def make(r):
        if (language and r["language"] != language) or not r["text"].strip():
            return None
        return instruction, r["text"]

    make.__name__ = f"asr_{language or 'any'}"
    return make


def bias_words(r: Mapping[str, Any], num_distractors: int = 4) -> list[str]:
    """The bias list of a sentence record: its object, colour and subject words in the
    record's language plus `num_distractors` other lexicon words of the same categories,
    in a deterministic per-utterance order."""
    lang, s = r["language"], r["slots"]
    right = [world_text.object_text(s["object"], lang), world_text.colour_text(s["colour"], s["object"], lang)]
    if s["subject"]:
        right.append(world_text.content_word(world_text.subject_text(s["subject"], lang)))
    rng = random.Random(f"bias-{r['id']}")
    lexicon = world_text.lexicon_words(lang)
    pool = sorted({w for cat in ("object", "colour", "subject") for w in lexicon[cat]} - set(right))
    words = right + rng.sample(pool, num_distractors)
    rng.shuffle(words)
    return words


def biasing_maker(language: str, num_distractors: int = 4) -> Make:
    """Contextual-biasing ASR on spoken sentences in `language`."""

    def make(r):
        if r["language"] != language or r["kind"] != "sentence":
            return None
        words = ", ".join(bias_words(r, num_distractors))
        return BIASING_INSTRUCTION.format(words=words), r["text"]

    make.__name__ = f"biasing_{language}"
    return make


# ----------------------------------------------------------------------------- AST


def ast_maker(source: str, target: str) -> Make:
    """record in `source` -> (instruction, translation into `target`)."""
    if source == target:
        raise ValueError(f"ast_maker: source and target language are both {source!r}")
    instruction = AST_INSTRUCTION.format(language=world_text.LANGUAGE_NAMES[target])

    def make(r):
        if r["language"] != source:
            return None
        translation = r["translations"][target]
        return (instruction, translation) if translation.strip() else None

    make.__name__ = f"ast_{source}_{target}"
    return make


# ----------------------------------------------------------------------------- instructions


def qa_questions(r: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """All (question, answer) pairs that apply to a sentence record, by question type."""
    s = r["slots"]
    obj = world_text.object_text(s["object"], "en")
    qa = {
        "colour": (QA_INSTRUCTIONS["colour"].format(object=obj), s["colour"]),
        "count": (QA_INSTRUCTIONS["count"].format(object=obj), s["count"]),
    }
    if s["subject"]:
        verb = world_text.verb_text(s["verb"], "en")
        qa["who"] = (QA_INSTRUCTIONS["who"].format(verb=verb, object=obj), world_text.subject_text(s["subject"], "en"))
    if s["location"]:
        qa["where"] = (QA_INSTRUCTIONS["where"], world_text.location_text(s["location"], "en"))
    return qa


def qa_maker(question_types=tuple(QA_INSTRUCTIONS), language: str | None = None) -> Make:
    def make(r):
        if r["kind"] != "sentence" or (language and r["language"] != language):
            return None
        qa = qa_questions(r)
        options = [t for t in question_types if t in qa]
        return qa[_rng("qa", r).choice(options)] if options else None

    make.__name__ = "qa"
    return make


def digits_maker(kinds=("number", "year"), language: str | None = None) -> Make:
    def make(r):
        if r["kind"] not in kinds or not r["written"] or (language and r["language"] != language):
            return None
        return DIGITS_INSTRUCTION, r["written"]

    make.__name__ = "digits"
    return make


def compare_maker(language: str | None = None) -> Make:
    def make(r):
        if r["kind"] != "number" or (language and r["language"] != language):
            return None
        rng, v = _rng("compare", r), r["value"]
        spread = max(3, v // 2)
        threshold = max(0, v + rng.choice((-1, 1)) * rng.randint(1, spread))
        if threshold == v:
            threshold += 1
        return COMPARE_INSTRUCTION.format(threshold=threshold), "yes" if v > threshold else "no"

    make.__name__ = "compare"
    return make


def add_maker(language: str | None = None) -> Make:
    def make(r):
        if r["kind"] != "number" or (language and r["language"] != language):
            return None
        k = _rng("add", r).randint(1, 9)
        return ADD_INSTRUCTION.format(k=k), str(r["value"] + k)

    make.__name__ = "add"
    return make


INSTRUCT_MAKERS = {"qa": qa_maker, "digits": digits_maker, "compare": compare_maker, "add": add_maker}


def world_makers() -> list[Make]:
    """Every maker the spoken-world registrations use, in a fixed order (the vocabulary is
    trained on their instructions and targets)."""
    makers = [transcript_maker(lang) for lang in world_text.LANGUAGES]
    makers += [biasing_maker(lang) for lang in world_text.LANGUAGES]
    makers += [ast_maker(s, t) for s in world_text.LANGUAGES for t in world_text.LANGUAGES if s != t]
    makers += [m() for m in INSTRUCT_MAKERS.values()]
    return makers
