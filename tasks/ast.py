"""AST (speech translation) tasks: speech in one language, text in another.

On spoken_world every utterance's item is rendered in all four languages, so the target is
the aligned rendering `record["translations"][target]`. The default pairs follow the
paper's CoVoST-style setup: X -> English and English -> X.

Metrics: BLEU and chrF (slm_jax.metrics.seqio_bleu / seqio_chrf).
"""

from __future__ import annotations

from tasks import common, world_text

AST_INSTRUCTION = "Translate the speech into {language}."
DEFAULT_PAIRS = tuple((x, "en") for x in ("fr", "de", "es")) + tuple(("en", y) for y in ("fr", "de", "es"))


def ast_maker(source: str, target: str) -> common.Make:
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


def register_ast_tasks(prefix: str, corpus: common.Corpus, pairs=DEFAULT_PAIRS, **kw) -> list[str]:
    """{prefix}_ast_{source}_{target} for each (source, target) pair."""
    names = []
    for src, tgt in pairs:
        names.append(f"{prefix}_ast_{src}_{tgt}")
        common.register_task(names[-1], corpus, ast_maker(src, tgt), common.METRICS["ast"], **kw)
    return names
