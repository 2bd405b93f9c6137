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


X_EN = ("fr_en", "de_en", "es_en")
EN_X = ("en_fr", "en_de", "en_es")
FOUNDATION_NAMES = {"whisper_base": "Whisper base", "ctc_conformer": "CTC Conformer"}


def asr_ast_means(world: str, scores: Mapping[str, Mapping], wer_key: str = "wer",
                  bleu_key: str = "bleu") -> tuple[list[float], float, float, float]:
    """(WER per language, mean WER, mean BLEU X -> en, mean BLEU en -> X) of one system."""
    wers = [value(scores.get(task_name(world, f"asr_{lang}"), {}), wer_key) for lang in LANGS]
    bleu = lambda pairs: float(np.mean([value(scores.get(task_name(world, f"ast_{p}"), {}), bleu_key) for p in pairs]))
    return wers, float(np.mean(wers)), bleu(X_EN), bleu(EN_X)


def systems(rep: Mapping[str, Any]) -> list[tuple[str, Mapping, str, str]]:
    """(row name, scores, WER key, BLEU key) of every system in the ASR / AST tables."""
    meta = rep["meta"]
    own = FOUNDATION_NAMES.get(meta.get("speech_foundation", "ctc_conformer"), "speech foundation")
    rows = [(f"SLM, adapter depth {d}", rep["per_depth"][str(d)], "wer", "bleu") for d in meta["depths"]]
    rows += [("untrained adapter", rep["untrained"], "wer", "bleu"),
             (f"{own}'s own ASR" + (" / X -> en translation" if own == "Whisper base" else ""), rep["cascade"],
              "asr_wer", "whisper_bleu"),
             (f"cascade ({own} ASR -> LLM)", rep["cascade"], "wer", "bleu"),
             ("text input (upper bound)", rep["text_after"], "wer", "bleu")]
    return rows


def asr_ast_table(rep: Mapping[str, Any]) -> list[str]:
    meta = rep["meta"]
    where = "held-out voices" if meta["eval_split"] == "test" else f"the {meta['eval_split']} split"
    lines = [f"## ASR (WER, {where}) and AST (BLEU)\n",
             "| system | " + " | ".join(f"WER {lang}" for lang in LANGS) + " | WER avg | BLEU X->en | BLEU en->X |",
             "|" + "---|" * (len(LANGS) + 4)]
    for name, scores, wer_key, bleu_key in systems(rep):
        wers, wer, x_en, en_x = asr_ast_means(meta["world"], scores, wer_key, bleu_key)
        lines.append(f"| {name} | " + " | ".join(fmt(w, True) for w in wers)
                     + f" | {fmt(wer, True)} | {fmt(x_en)} | {fmt(en_x)} |")
    lines += ["", "Whisper's own ASR is scored after writing its digits as words (the world's transcripts "
              "spell numbers out); its WER row is its transcripts, the cascade row the LLM's output.", "",
              "### AST per pair (BLEU)\n", "| system | " + " | ".join(AST_PAIRS) + " |", "|" + "---|" * (len(AST_PAIRS) + 1)]
    for name, scores, _, bleu_key in systems(rep):
        if name.startswith("SLM") and f"depth {meta['main_depth']}" not in name or name.startswith("untrained"):
            continue
        cells = [fmt(value(scores.get(task_name(meta["world"], f"ast_{p}"), {}), bleu_key)) for p in AST_PAIRS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def zero_shot_tables(rep: Mapping[str, Any]) -> list[str]:
    world = rep["meta"]["world"]
    lines = ["## Zero-shot instruction following (never trained with speech)\n",
             "Most frequent answer: the score of always giving the scored utterances' commonest answer "
             "(a system at that level has learned nothing of the task).\n",
             "| task | speech (SLM) | text (LLM) | cascade | speech / text | most frequent answer |",
             "|---|---|---|---|---|---|"]
    for n in INSTRUCT:
        s, x, k, m = (value(rep.get(part, {}).get(task_name(world, n), {}), "exact_match")
                      for part in ("zero_shot", "text_after", "cascade", "majority"))
        answer = rep.get("majority", {}).get(task_name(world, n), {}).get("answer")
        lines.append(f"| {n} | {fmt(s, True)} | {fmt(x, True)} | {fmt(k, True)} | "
                     f"{fmt(s / x if x else float('nan'), True)} | {fmt(m, True)}"
                     + (f' ("{answer}")' if answer is not None else "") + " |")
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


def fsdd_table(rep: Mapping[str, Any]) -> list[str]:
    meta, alone = rep["meta"], rep.get("fsdd_alone") or {}
    lines = ["## Real human speech: FSDD spoken digits (English, 8 kHz, 4 speakers, zero-shot)\n"]
    if not meta["fsdd_tasks"]:
        return lines + [f"- not evaluated: {meta['fsdd_note']}", ""]
    lines.append(f"Clips scored per task: {meta.get('fsdd_examples') or 'all'} (spread over every speaker and digit).\n")
    if alone:
        lines.append("The SLM encodes speech as it was trained: consecutive utterances share Whisper's encoder "
                     "window (`SpeechWindows`), here each evaluation batch's clips in the task's order; "
                     "\"each clip alone\" is the same adapter with every clip alone in its window.\n")
    lines += ["| task | SLM (speech) |" + (" SLM, each clip alone |" if alone else "")
              + " foundation's own ASR | cascade (ASR -> LLM) |", "|---|---|---|---|" + ("---|" if alone else "")]
    for n in meta["fsdd_tasks"]:
        key = "wer" if "_asr_" in n else "exact_match"
        slm, casc = value(rep["zero_shot"].get(n, {}), key), value(rep["cascade"].get(n, {}), key)
        own = value(rep["cascade"].get(n, {}), "asr_wer") if key == "wer" else float("nan")
        lines.append(f"| {n} ({'WER' if key == 'wer' else 'digit accuracy'}) | {fmt(slm, True)} |"
                     + (f" {fmt(value(alone.get(n, {}), key), True)} |" if alone else "")
                     + f" {fmt(own, True)} | {fmt(casc, True)} |")
    return lines + [""]


def at_least(x: float, *refs: float) -> bool:
    """x >= every reference that was measured (NaN: not measured)."""
    return all(r != r or x >= r for r in refs)


def targets(rep: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, reached) for the embedded default's stated targets."""
    meta, world = rep["meta"], rep["meta"]["world"]
    main = rep["per_depth"][str(meta["main_depth"])]
    _, wer, _, _ = asr_ast_means(world, main)
    _, own_wer, _, _ = asr_ast_means(world, rep["cascade"], "asr_wer")
    _, casc_wer, _, _ = asr_ast_means(world, rep["cascade"])
    bleu = lambda scores, p, key="bleu": value(scores.get(task_name(world, f"ast_{p}"), {}), key)
    ast_ok = all(at_least(bleu(main, p), bleu(rep["cascade"], p), bleu(rep["cascade"], p, "whisper_bleu"))
                 for p in X_EN)
    qa = [value(rep[k].get(task_name(world, "qa"), {}), "exact_match") for k in ("zero_shot", "text_after")]
    digits = value(rep["zero_shot"].get("fsdd_digits", {}), "exact_match")
    alone = value((rep.get("fsdd_alone") or {}).get("fsdd_digits", {}), "exact_match")
    frac = rep["param_counts"]["trainable_fraction"]
    llm_same = rep["llm_sha"][0] == rep["llm_sha"][1] and rep["text_before"] == rep["text_after"]
    return [
        ("SLM ASR WER <= 15% (mean of 4 languages)", fmt(wer, True), wer <= 0.15),
        ("... and below the foundation's own ASR and the cascade", f"{fmt(own_wer, True)} / {fmt(casc_wer, True)}",
         wer < own_wer and wer < casc_wer),
        ("AST BLEU >= cascade and >= Whisper-translate, every X -> en pair",
         ", ".join(f"{p} {fmt(bleu(main, p))} vs {fmt(bleu(rep['cascade'], p))} / "
                   f"{fmt(bleu(rep['cascade'], p, 'whisper_bleu'))}" for p in X_EN), ast_ok),
        ("zero-shot spoken QA >= 70% of text", f"{fmt(qa[0], True)} of {fmt(qa[1], True)}",
         qa[1] > 0 and qa[0] >= 0.7 * qa[1]),
        ("FSDD digit accuracy >= 90% (zero-shot)", fmt(digits, True)
         + (f" (each clip alone in its window: {fmt(alone, True)})" if alone == alone else ""), digits >= 0.9),
        ("adapter <= 2% of all parameters", f"{100 * frac:.2f}%", frac <= 0.02),
        ("frozen LLM: file hash and text scores unchanged", str(llm_same), llm_same),
    ]


def targets_table(rep: Mapping[str, Any]) -> list[str]:
    lines = ["## Targets\n", "| target | measured | reached |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in targets(rep)]
    return lines + [""]


def markdown(rep: Mapping[str, Any]) -> str:
    """The report as Markdown."""
    meta, c = rep["meta"], rep["param_counts"]
    lines = [f"# SLM in miniature: report ({meta['run_dir']})\n",
             f"Trainable (adapter, depth {meta['main_depth']}): {c['trainable']:,} of {c['total']:,} parameters "
             f"= **{100 * c['trainable_fraction']:.2f}%** (speech encoder {c['speech_encoder']:,}, LLM {c['llm']:,}).\n"]
    if meta.get("decoding"):
        lines.append(f"Decoding (every system's text, baselines included): {meta['decoding']}.\n")
    lines += targets_table(rep) + asr_ast_table(rep) + zero_shot_tables(rep) + frozen_llm_table(rep)
    lines += fsdd_table(rep)
    lines += ["", "## Adapter training\n"]
    if meta.get("slm_mixture"):
        lines += [f"Training mixture: `{meta['slm_mixture']}`; each depth's steps below.\n"]
    lines += ["| depth | final loss | accuracy | steps |", "|---|---|---|---|"]
    for k, v in rep["train"].items():
        lines.append(f"| {k} | {v.get('loss', float('nan')):.4f} | {v.get('accuracy', float('nan')):.3f} | {v.get('step')} |")
    lines += stage_times_table(rep.get("stage_times") or {}, rep.get("stage_lanes") or {}, rep.get("wall_seconds"))
    return "\n".join(lines) + "\n"


def stage_times_table(times: Mapping[str, float], lanes: Mapping[str, str] | None = None,
                      wall_seconds: float | None = None) -> list[str]:
    """Wall time of each stage (results/stage_times.json), in the order they ran, the lane of
    those that ran beside the main process (results/stage_lanes.json), their sum, and the
    invocation's wall time."""
    if not times:
        return []
    lanes = lanes or {}
    lines = ["", "## Stage times\n", "Wall time of each stage on this machine, in the order run (a resumed run lists "
             "the times of the invocation that ran each stage)."
             + (" Stages of lanes 1 and 2 ran side by side, each lane a process on half the CPUs "
                "(DemoConfig.parallel), so the stages add up to more than the wall time; the others ran "
                "on every CPU." if lanes else "") + "\n",
             "| stage | lane | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {lanes.get(name, 'all CPUs')} | {seconds:.0f} |" for name, seconds in times.items()]
    lines.append(f"| **all stages (sum)** | | **{sum(times.values()):.0f}** ({sum(times.values()) / 60:.1f} min) |")
    if wall_seconds is not None:
        lines.append(f"| **wall time of this invocation** | | **{wall_seconds:.0f}** ({wall_seconds / 60:.1f} min) |")
    return lines


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
    axes[1].plot(depths, [m[2] for m in means], "o-", label="SLM, X -> en")
    axes[1].plot(depths, [m[3] for m in means], "s-", label="SLM, en -> X")
    axes[1].axhline(asr_ast_means(meta["world"], rep["cascade"])[2], color="gray", ls="--", label="cascade, X -> en")
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
