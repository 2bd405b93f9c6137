"""Instruction tasks on spoken content (the paper's zero-shot instruction following, in
miniature). Each is multilingual (speech in any of the four languages); instructions and
answers are in English:

    qa        spoken sentence + a question about it -> short English answer
              ("What colour are the cars?" -> "red", "How many ...? Answer with a digit."
              -> "3", "Who buys the cars?" -> "Anna" / "the girl", "Where does it happen?"
              -> "in the garden")
    digits    spoken number or year -> its digits ("1234")
    compare   spoken number + threshold -> "yes" / "no"
    add       spoken number + k -> the sum in digits

Questions, thresholds and addends are drawn per utterance from a hash of its id, so they
are fixed across epochs and runs. Metric: exact match (accuracy).
"""

from __future__ import annotations

import random

from tasks import asr, ast, common, world_text

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


def qa_questions(r) -> dict[str, tuple[str, str]]:
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


def qa_maker(question_types=tuple(QA_INSTRUCTIONS), language: str | None = None) -> common.Make:
    def make(r):
        if r["kind"] != "sentence" or (language and r["language"] != language):
            return None
        qa = qa_questions(r)
        options = [t for t in question_types if t in qa]
        return qa[_rng("qa", r).choice(options)] if options else None

    make.__name__ = "qa"
    return make


def digits_maker(kinds=("number", "year"), language: str | None = None) -> common.Make:
    def make(r):
        if r["kind"] not in kinds or not r["written"] or (language and r["language"] != language):
            return None
        return DIGITS_INSTRUCTION, r["written"]

    make.__name__ = "digits"
    return make


def compare_maker(language: str | None = None) -> common.Make:
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


def add_maker(language: str | None = None) -> common.Make:
    def make(r):
        if r["kind"] != "number" or (language and r["language"] != language):
            return None
        k = _rng("add", r).randint(1, 9)
        return ADD_INSTRUCTION.format(k=k), str(r["value"] + k)

    make.__name__ = "add"
    return make


INSTRUCT_MAKERS = {"qa": qa_maker, "digits": digits_maker, "compare": compare_maker, "add": add_maker}


def register_instruct_tasks(prefix: str, corpus: common.Corpus, names=tuple(INSTRUCT_MAKERS), **kw) -> list[str]:
    """{prefix}_{qa,digits,compare,add} (exact-match metric)."""
    out = []
    for n in names:
        out.append(f"{prefix}_{n}")
        common.register_task(out[-1], corpus, INSTRUCT_MAKERS[n](), common.METRICS["exact_match"], **kw)
    return out


def world_makers() -> list[common.Make]:
    """Every maker the spoken-world registrations use (the vocabulary is trained on their
    instructions and targets)."""
    makers = [asr.asr_maker(lang) for lang in world_text.LANGUAGES]
    makers += [asr.biasing_maker(lang) for lang in world_text.LANGUAGES]
    makers += [ast.ast_maker(s, t) for s in world_text.LANGUAGES for t in world_text.LANGUAGES if s != t]
    makers += [m() for m in INSTRUCT_MAKERS.values()]
    return makers
