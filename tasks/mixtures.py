"""Registration of the spoken_world tasks and mixtures, for any builder config.

For a config C ("tiny", "demo", or your own SpokenWorldConfig) `register_spoken_world(C)`
registers (prefix spoken_world_C):

    tasks     _asr_{en,fr,de,es}                        WER, CER
              _asr_chars_{en,fr,de,es}                  the same, UTF-8 byte targets (CTC)
              _ast_{fr,de,es}_en, _ast_en_{fr,de,es}     BLEU, chrF
              _biasing_{en,fr,de,es}                     WER, CER
              _qa, _digits, _compare, _add               exact match
    mixtures  _asr       the four ASR tasks
              _asr_chars the four byte-target ASR tasks (speech encoder CTC pretraining)
              _asr_ast   ASR + AST: the paper's training mixture
              _instruct  biasing + qa + digits + compare + add
              _all       everything

Mixture rates are the tasks' numbers of train examples (seqio.mixing_rate_num_examples),
counted from the corpus listing without reading audio; `temperature` > 1 flattens them.
"""

from __future__ import annotations

from tasks import asr, ast, common, instruct, spoken_world


def register_spoken_world(config: str | spoken_world.SpokenWorldConfig, *, temperature: float = 1.0,
                          **task_kw) -> dict[str, list[str]]:
    """Registers every spoken_world task and mixture of `config`; returns {group: names}."""
    corpus = spoken_world.SpokenWorldCorpus(config)
    prefix = f"spoken_world_{corpus.config.name}"
    groups = {
        "asr": asr.register_asr_tasks(prefix, corpus, **task_kw),
        "asr_chars": asr.register_char_asr_tasks(prefix, corpus, **task_kw),
        "ast": ast.register_ast_tasks(prefix, corpus, **task_kw),
        "biasing": asr.register_biasing_tasks(prefix, corpus, **task_kw),
        "instruct": instruct.register_instruct_tasks(prefix, corpus, **task_kw),
    }
    mixtures = {
        f"{prefix}_asr": groups["asr"],
        f"{prefix}_asr_chars": groups["asr_chars"],
        f"{prefix}_asr_ast": groups["asr"] + groups["ast"],
        f"{prefix}_instruct": groups["biasing"] + groups["instruct"],
        f"{prefix}_all": groups["asr"] + groups["ast"] + groups["biasing"] + groups["instruct"],
    }
    for name, tasks in mixtures.items():
        common.register_mixture(name, tasks, temperature=temperature, replace=task_kw.get("replace", False))
    groups["mixtures"] = list(mixtures)
    return groups
