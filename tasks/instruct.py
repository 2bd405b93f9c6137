"""Instruction tasks on spoken content (the paper's zero-shot instruction following, in
miniature): qa, digits, compare and add (makers and their prompts in tasks/prompts.py). Each
is multilingual (speech in any of the four languages); instructions and answers are in
English. Metric: exact match (accuracy).
"""

from __future__ import annotations

from tasks import common, prompts


def register_instruct_tasks(prefix: str, corpus: common.Corpus, names=tuple(prompts.INSTRUCT_MAKERS),
                            **kw) -> list[str]:
    """{prefix}_{qa,digits,compare,add} (exact-match metric)."""
    out = []
    for n in names:
        out.append(f"{prefix}_{n}")
        common.register_task(out[-1], corpus, prompts.INSTRUCT_MAKERS[n](), common.METRICS["exact_match"], **kw)
    return out
