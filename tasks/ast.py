"""AST (speech translation) tasks: speech in one language, text in another.

On spoken_world every utterance's item is rendered in all four languages, so the target is
the aligned rendering `record["translations"][target]` (prompts.ast_maker). The default pairs
follow the paper's CoVoST-style setup: X -> English and English -> X.

Metrics: BLEU and chrF (slm_jax.metrics.seqio_bleu / seqio_chrf).
"""

from __future__ import annotations

from tasks import common, prompts

DEFAULT_PAIRS = tuple((x, "en") for x in ("fr", "de", "es")) + tuple(("en", y) for y in ("fr", "de", "es"))


def register_ast_tasks(prefix: str, corpus: common.Corpus, pairs=DEFAULT_PAIRS, **kw) -> list[str]:
    """{prefix}_ast_{source}_{target} for each (source, target) pair."""
    names = []
    for src, tgt in pairs:
        names.append(f"{prefix}_ast_{src}_{tgt}")
        common.register_task(names[-1], corpus, prompts.ast_maker(src, tgt), common.METRICS["ast"], **kw)
    return names
