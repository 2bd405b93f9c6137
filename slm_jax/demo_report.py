"""The demo's report, rendered from its results alone: `markdown(results)` and
`plots(results, out_dir)` read nothing else and run nothing (slm_jax/demo.py gathers the
results). `results` holds, per system, {task name: {metric: value}}, and a "meta" entry naming
the world, split, adapter depths and the tasks shown."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

LANGS = ("en", "fr", "de", "es")
AST_PAIRS = ("fr_en", "de_en", "es_en", "en_fr", "en_de", "en_es")
INSTRUCT = ("qa", "digits", "compare", "add")


def task_name(world: str, suffix: str) -> str:
    return f"spoken_world_{world}_{suffix}"


def value(scores: Mapping[str, Any], key: str) -> float:
    return float(scores.get(key, float("nan")))


def fmt(x: float, pct: bool = False) -> str:
    if x != x:
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.1f}"


def asr_ast_means(world: str, scores: Mapping[str, Mapping], wer_key: str = "wer") -> tuple[list[float], float, float]:
    """(WER per language, mean WER, mean BLEU over the AST pairs) of one system."""
    wers = [value(scores.get(task_name(world, f"asr_{lang}"), {}), wer_key) for lang in LANGS]
    bleus = [value(scores.get(task_name(world, f"ast_{p}"), {}), "bleu") for p in AST_PAIRS]
    return wers, float(np.mean(wers)), float(np.mean(bleus))


def asr_ast_table(rep: Mapping[str, Any]) -> list[str]:
    meta = rep["meta"]
    where = "held-out voices" if meta["eval_split"] == "test" else f"the {meta['eval_split']} split"
    lines = [f"## ASR (WER, {where}) and AST (BLEU)\n",
             "| system | " + " | ".join(f"WER {lang}" for lang in LANGS) + " | WER avg | BLEU avg (6 pairs) |",
             "|" + "---|" * (len(LANGS) + 3)]
    systems = [(f"SLM, adapter depth {d}", rep["per_depth"][str(d)], "wer") for d in meta["depths"]]
    systems += [("untrained adapter", rep["untrained"], "wer"), ("cascade (CTC ASR -> LLM)", rep["cascade"], "ctc_wer"),
                ("text input (upper bound)", rep["text_after"], "wer")]
    for name, scores, wer_key in systems:
        wers, wer, bleu = asr_ast_means(meta["world"], scores, wer_key)
        lines.append(f"| {name} | " + " | ".join(fmt(w, True) for w in wers) + f" | {fmt(wer, True)} | {fmt(bleu)} |")
    return lines + [""]


def zero_shot_tables(rep: Mapping[str, Any]) -> list[str]:
    world = rep["meta"]["world"]
    lines = ["## Zero-shot instruction following (never trained with speech)\n",
             "| task | speech (SLM) | text (LLM) | cascade | speech / text |", "|---|---|---|---|---|"]
    for n in INSTRUCT:
        s, x, k = (value(rep[part].get(task_name(world, n), {}), "exact_match")
                   for part in ("zero_shot", "text_after", "cascade"))
        lines.append(f"| {n} | {fmt(s, True)} | {fmt(x, True)} | {fmt(k, True)} | "
                     f"{fmt(s / x if x else float('nan'), True)} |")
    lines += ["", "## Contextual biasing ASR (sentences; WER)\n",
              "| language | with bias list | without | text input with list |", "|---|---|---|---|"]
    for lang, nolist in zip(LANGS, rep["meta"]["nolist_tasks"]):
        w = value(rep["zero_shot"].get(task_name(world, f"biasing_{lang}"), {}), "wer")
        wo = value(rep["zero_shot"].get(nolist, {}), "wer")
        tx = value(rep["text_after"].get(task_name(world, f"biasing_{lang}"), {}), "wer")
        lines.append(f"| {lang} | {fmt(w, True)} | {fmt(wo, True)} | {fmt(tx, True)} |")
    return lines + [""]


def frozen_llm_table(rep: Mapping[str, Any]) -> list[str]:
    same = rep["text_before"] == rep["text_after"]
    lines = ["## The frozen LLM keeps its text abilities\n",
             f"llm.msgpack sha256 before/after SLM training: {rep['llm_sha'][0]} / {rep['llm_sha'][1]}; "
             f"text-task scores identical: **{same}**.\n", "| task | before | after |", "|---|---|---|"]
    for k, before in rep["text_before"].items():
        key = next(iter(before))
        lines.append(f"| {k} | {key} {before[key]:.4g} | {key} {rep['text_after'].get(k, {}).get(key, float('nan')):.4g} |")
    return lines + [""]


def markdown(rep: Mapping[str, Any]) -> str:
    """The report as Markdown."""
    meta, c = rep["meta"], rep["param_counts"]
    lines = [f"# SLM in miniature: report ({meta['run_dir']})\n",
             f"Trainable (adapter, depth {meta['main_depth']}): {c['trainable']:,} of {c['total']:,} parameters "
             f"= **{100 * c['trainable_fraction']:.2f}%** (speech encoder {c['speech_encoder']:,}, LLM {c['llm']:,}).\n"]
    lines += asr_ast_table(rep) + zero_shot_tables(rep) + frozen_llm_table(rep)
    lines.append("## Real human speech: FSDD spoken digits (English, 8 kHz, zero-shot)\n")
    if meta["fsdd_tasks"]:
        for n in meta["fsdd_tasks"]:
            lines.append(f"- {n}: " + ", ".join(f"{k} {v:.3g}" for k, v in rep["zero_shot"].get(n, {}).items()))
    else:
        lines.append(f"- not evaluated: {meta['fsdd_note']}")
    lines += ["", "## Adapter training\n", "| depth | final loss | accuracy | steps |", "|---|---|---|---|"]
    for k, v in rep["train"].items():
        lines.append(f"| {k} | {v.get('loss', float('nan')):.4f} | {v.get('accuracy', float('nan')):.3f} | {v.get('step')} |")
    return "\n".join(lines) + "\n"


def plots(rep: Mapping[str, Any], out_dir: str) -> None:
    """report_depth.png (ASR WER and AST BLEU vs adapter depth, the cascade's BLEU) and
    report_training.png (the adapters' training loss curves, rep["train_curves"])."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    meta = rep["meta"]
    depths = list(meta["depths"])
    means = [asr_ast_means(meta["world"], rep["per_depth"][str(d)]) for d in depths]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(depths, [100 * m[1] for m in means], "o-")
    axes[0].set(xlabel="adapter depth", ylabel="WER (%)", title="ASR vs adapter depth")
    axes[1].plot(depths, [m[2] for m in means], "o-", label="SLM")
    axes[1].axhline(asr_ast_means(meta["world"], rep["cascade"], "ctc_wer")[2], color="gray", ls="--", label="cascade")
    axes[1].set(xlabel="adapter depth", ylabel="BLEU", title="AST vs adapter depth")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "report_depth.png"), dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for depth, rows in rep["train_curves"].items():
        ax.plot([r[0] for r in rows], [r[1] for r in rows], label=f"depth {depth}")
    ax.set(xlabel="step", ylabel="train loss", yscale="log", title="adapter training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "report_training.png"), dpi=100)
    plt.close(fig)
