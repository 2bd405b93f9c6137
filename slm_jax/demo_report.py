"""Evaluation and report of the demo (see slm_jax/demo.py): text-side scores of the LLM
foundation, the CTC -> LLM cascade, and the Markdown + PNG report."""

from __future__ import annotations

import json
import os
from typing import Sequence

import gin
import jax
import numpy as np

from slm_jax import metrics
from slm_jax.checkpoints.params_io import load_params
from slm_jax.demo import AST_PAIRS, INSTRUCT, LANGS, _log, _sha
from tasks.llm_text import pad_ids

MAX_LEN = 24


def _models(d):
    """The demo's T5 and CTC task models, configured by gin/models/demo.gin (+ extra bindings)."""
    from slm_jax import configs  # noqa: F401  (gin registrations)
    from slm_jax.task_model import CTCTaskModel, T5TaskModel  # noqa: F401
    gin.clear_config()
    gin.parse_config_files_and_bindings(["gin/models/demo.gin"], [b[len("--gin."):] for b in d.extra
                                                                  if b.startswith("--gin.")],
                                        finalize_config=False)
    models = T5TaskModel(), CTCTaskModel()   # built from the gin bindings just parsed
    gin.clear_config()
    return models


def _vocab():
    from tasks import vocab
    return vocab.get_vocabulary()


def _decode_text(model, params, inputs: list[list[int]], batch: int = 64) -> list[str]:
    """Greedy LLM decoding of token-id inputs -> strings."""
    from slm_jax.task_model import DecodeConfig
    vocab = _vocab()
    cfg = DecodeConfig(method="greedy", max_len=MAX_LEN)
    out = []
    for i in range(0, len(inputs), batch):
        chunk = inputs[i:i + batch]
        x = pad_ids(chunk + [[1]] * (batch - len(chunk)), 96)
        toks, _ = model.predict_batch(params, {"encoder_input_tokens": x}, cfg)
        for t in np.asarray(toks)[:len(chunk)]:
            t = t.tolist()
            t = t[:t.index(1)] if 1 in t else t
            out.append(vocab.decode([x for x in t if x > 0]))
    return out


def _score(task_name: str, targets, preds) -> dict:
    import seqio
    out = {}
    for fn in seqio.get_mixture_or_task(task_name).metric_fns:
        out.update({k: float(v) for k, v in fn(targets, preds).items()})
    return out


def text_examples(task_name: str, split: str, limit: int | None = None):
    """(text, instruction, target) of a speech task's records, with the text in place of speech,
    in the order the speech pipeline reads the split (the corpus's unshuffled `load`, which
    need not be the listing's order): the first `limit` are the utterances that a bounded speech
    evaluation (evaluate.max_examples) scores."""
    import seqio
    src = seqio.get_mixture_or_task(task_name).source
    records = {r["id"]: r for r in src.corpus.records(split)}
    ids = src.corpus.load(split, shuffle=False, seed=None, shard_info=None).map(lambda ex: ex["id"])
    out = []
    for i in ids.as_numpy_iterator():
        r = records[i.decode()]
        ex = src.make(r)
        if ex:
            out.append((r["text"], ex[0], ex[1]))
            if limit and len(out) == limit:
                break
    return out


def eval_task_names(d) -> list[str]:
    return ([d.task(f"asr_{l}") for l in LANGS] + [d.task(f"ast_{p}") for p in AST_PAIRS]
            + [d.task(n) for n in INSTRUCT] + [d.task(f"biasing_{l}") for l in LANGS])


def text_scores(d) -> dict:
    """The LLM foundation on text inputs (the upper bound of speech input) for every eval task."""
    import tasks  # noqa: F401
    model, _ = _models(d)
    params = load_params(d.llm_path)
    vocab = _vocab()
    out = {}
    for name in eval_task_names(d):
        exs = text_examples(name, d.eval_split, limit=d.eval_examples)
        preds = _decode_text(model, params, [vocab.encode(t) + vocab.encode(i) for t, i, _ in exs])
        out[name] = _score(name, [g for _, _, g in exs], preds)
    _log("LLM text scores: " + ", ".join(f"{k.split('_', 3)[-1]}={list(v.values())[0]:.3g}" for k, v in out.items()))
    return out


def eval_samples(d, names: Sequence[str]) -> tuple[dict[str, list[dict]], int, int]:
    """The batches the SLM evaluation scores for each task of `names`: main._eval_batches under
    the SLM stage's gin config (its lengths, batch size and length buckets), so the same first
    `eval_examples` utterances, taken from memory when an SLM evaluation in this process built
    them already. Returns ({name: batches}, batch size, speech frames of a full-length batch)."""
    import seqio
    from slm_jax import main
    main.parse_gin(["--gin_file=gin/runs/demo_slm.gin", *d.extra])
    try:
        lengths, batch_size = gin.query_parameter("evaluate.feature_lengths"), gin.query_parameter("evaluate.batch_size")
        return ({name: list(main._eval_batches(seqio.get_mixture_or_task(name), name, d.eval_split, lengths,
                                               batch_size, d.eval_examples)) for name in names},
                batch_size, lengths["speech"])
    finally:
        gin.clear_config()


def _full_width(batch: dict, rows: int, frames: int) -> dict:
    """A batch padded to `rows` rows and `frames` speech frames (zeros, mask 0): one compiled
    CTC program for every length bucket."""
    from slm_jax.data import pad_rows
    batch = pad_rows(batch, rows)
    pad = frames - batch["features"].shape[1]
    return {**batch, "features": np.pad(batch["features"], ((0, 0), (0, pad), (0, 0))),
            "feature_mask": np.pad(batch["feature_mask"], ((0, 0), (0, pad)))}


def cascade_scores(d) -> dict:
    """CTC ASR of the speech encoder (decoded to text with its training task's vocabulary) ->
    the text LLM with the task's instruction, on the utterances the SLM is scored on."""
    import seqio
    import tasks  # noqa: F401
    t5, ctc = _models(d)
    llm_params = load_params(d.llm_path)
    enc_params = load_params(d.encoder_path)
    ctc_params = {"encoder": enc_params, "ctc_head": _ctc_head(d)}
    vocab = _vocab()
    ctc_vocab = seqio.get_mixture_or_task(d.encoder_task).output_features["targets"].vocabulary
    samples, batch_size, frames = eval_samples(d, eval_task_names(d))
    out = {}
    for name, batches in samples.items():
        inputs, targets, asr = [], [], []
        for batch in batches:
            n = batch["features"].shape[0]
            ids = np.asarray(ctc.predict_batch(ctc_params, _full_width(batch, batch_size, frames))[0])[:n]
            for row, inst, tgt in zip(ids, batch["instruction_tokens"], batch["decoder_target_tokens"]):
                asr.append(ctc_vocab.decode([int(t) for t in row if t > 0]))   # CTC's text, re-tokenised for the LLM
                inputs.append(vocab.encode(asr[-1]) + [int(t) for t in inst if t > 0])
                tgt = [int(t) for t in tgt if t > 1]
                targets.append(vocab.decode(tgt))
        preds = _decode_text(t5, llm_params, inputs)
        out[name] = _score(name, targets, preds)
        if "_asr_" in name:
            out[name]["ctc_wer"] = metrics.wer(targets, asr)
    return out


def _ctc_head(d):
    """The CTC head is not part of the exported encoder; read it from the encoder stage's last
    checkpoint (all params trainable there)."""
    import orbax.checkpoint as ocp
    ckpt_dir = os.path.join(d.dir, "encoder", "checkpoints")
    mgr = ocp.CheckpointManager(ckpt_dir, item_names=("state", "fingerprint"))
    state = mgr.restore(mgr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    mgr.close()
    return jax.tree_util.tree_map(np.asarray, state["params"]["ctc_head"])


# ----------------------------------------------------------------------------- report

def _first(scores: dict, key: str) -> float:
    return float(scores.get(key, float("nan")))


def build(d, depths: Sequence[int], main_depth: int, train_results: dict, text_before: dict,
          llm_sha_before: str) -> dict:
    import seqio
    import tasks  # noqa: F401
    from tasks import asr, common
    # "without the bias list": plain ASR instruction on exactly the biasing tasks' utterances
    nolist = []
    for lang in LANGS:
        name = d.task(f"biasing_nolist_{lang}")
        biasing = seqio.get_mixture_or_task(d.task(f"biasing_{lang}")).source
        plain = asr.asr_maker(lang)
        common.register_task(name, biasing.corpus, (lambda mk, pl: lambda r: pl(r) if mk(r) else None)(
            biasing.make, plain), common.METRICS["asr"], replace=True)
        nolist.append(name)
    fsdd_tasks = [n for n in ("fsdd_asr_en", "fsdd_digits") if d.fsdd and n in seqio.TaskRegistry.names()]

    asr_ast = [d.task(f"asr_{l}") for l in LANGS] + [d.task(f"ast_{p}") for p in AST_PAIRS]
    per_depth = {depth: d.eval_slm(depth, asr_ast, f"depth{depth}") for depth in depths}
    zero_shot = d.eval_slm(main_depth, [d.task(n) for n in INSTRUCT] + [d.task(f"biasing_{l}") for l in LANGS]
                           + nolist, "zeroshot")
    if fsdd_tasks:   # real speech: its only split is "test"
        zero_shot = {**zero_shot, **d.eval_slm(main_depth, fsdd_tasks, "fsdd", split="test")}
    untrained = d.eval_slm(main_depth, [d.task(f"asr_{l}") for l in LANGS], "untrained", untrained=True)
    cascade = d.cached("cascade", lambda: cascade_scores(d))
    text_after = d.cached("llm_text_after", lambda: text_scores(d))
    llm_sha_after = _sha(d.llm_path)

    counts = d.cached("param_counts", lambda: _param_counts(d, main_depth))

    rep = {"per_depth": per_depth, "zero_shot": zero_shot, "untrained": untrained, "cascade": cascade,
           "text_before": text_before, "text_after": text_after, "llm_sha": [llm_sha_before, llm_sha_after],
           "param_counts": counts, "train": {str(k): v for k, v in train_results.items()}}
    with open(os.path.join(d.dir, "results", "report.json"), "w") as f:
        json.dump(rep, f, indent=1)
    md = _markdown(d, rep, depths, main_depth, nolist, fsdd_tasks)
    with open(os.path.join(d.dir, "report.md"), "w") as f:
        f.write(md)
    _plots(d, rep, depths)
    print(md, flush=True)
    return rep


def _param_counts(d, depth: int) -> dict:
    from slm_jax.models.slm import param_counts
    from slm_jax.task_model import SLMTaskModel  # noqa: F401
    from slm_jax import configs  # noqa: F401
    import flax.linen as nn
    gin.clear_config()
    gin.parse_config_files_and_bindings(["gin/models/demo.gin"], [f"ADAPTER_LAYERS={depth}"], finalize_config=False)
    model = SLMTaskModel(gin.query_parameter("SLMTaskModel.config").scoped_configurable_fn())
    gin.clear_config()
    return param_counts(nn.meta.unbox(model.abstract_params()))


def _fmt(x: float, pct: bool = False) -> str:
    if x != x:
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.1f}"


def _markdown(d, rep, depths, main_depth, nolist, fsdd_tasks) -> str:
    L = []
    t = d.task
    L.append(f"# SLM in miniature: report ({d.dir})\n")
    c = rep["param_counts"]
    L.append(f"Trainable (adapter, depth {main_depth}): {c['trainable']:,} of {c['total']:,} parameters "
             f"= **{100 * c['trainable_fraction']:.2f}%** (speech encoder {c['speech_encoder']:,}, "
             f"LLM {c['llm']:,}).\n")
    where = "held-out voices" if d.eval_split == "test" else f"the {d.eval_split} split"
    L.append(f"## ASR (WER, {where}) and AST (BLEU)\n")
    head = "| system | " + " | ".join(f"WER {l}" for l in LANGS) + " | WER avg | BLEU avg (6 pairs) |"
    L += [head, "|" + "---|" * (len(LANGS) + 3)]

    def row(name, scores, wer_key="wer"):
        wers = [_first(scores.get(t(f"asr_{l}"), {}), wer_key) for l in LANGS]
        bleus = [_first(scores.get(t(f"ast_{p}"), {}), "bleu") for p in AST_PAIRS]
        L.append(f"| {name} | " + " | ".join(_fmt(w, True) for w in wers)
                 + f" | {_fmt(float(np.mean(wers)), True)} | {_fmt(float(np.mean(bleus)))} |")
    for depth in depths:
        row(f"SLM, adapter depth {depth}", rep["per_depth"][depth] if depth in rep["per_depth"]
            else rep["per_depth"][str(depth)])
    row("untrained adapter", rep["untrained"])
    row("cascade (CTC ASR -> LLM)", rep["cascade"], "ctc_wer")
    row("text input (upper bound)", rep["text_after"])
    L.append("")
    L.append("## Zero-shot instruction following (never trained with speech)\n")
    L += ["| task | speech (SLM) | text (LLM) | cascade | speech / text |", "|---|---|---|---|---|"]
    for n in INSTRUCT:
        s = _first(rep["zero_shot"].get(t(n), {}), "exact_match")
        x = _first(rep["text_after"].get(t(n), {}), "exact_match")
        k = _first(rep["cascade"].get(t(n), {}), "exact_match")
        L.append(f"| {n} | {_fmt(s, True)} | {_fmt(x, True)} | {_fmt(k, True)} | {_fmt(s / x if x else float('nan'), True)} |")
    L.append("")
    L.append("## Contextual biasing ASR (sentences; WER)\n")
    L += ["| language | with bias list | without | text input with list |", "|---|---|---|---|"]
    for lang, nl in zip(LANGS, nolist):
        w = _first(rep["zero_shot"].get(t(f"biasing_{lang}"), {}), "wer")
        wo = _first(rep["zero_shot"].get(nl, {}), "wer")
        tx = _first(rep["text_after"].get(t(f"biasing_{lang}"), {}), "wer")
        L.append(f"| {lang} | {_fmt(w, True)} | {_fmt(wo, True)} | {_fmt(tx, True)} |")
    L.append("")
    L.append("## The frozen LLM keeps its text abilities\n")
    same = rep["text_before"] == rep["text_after"]
    L.append(f"llm.msgpack sha256 before/after SLM training: {rep['llm_sha'][0]} / {rep['llm_sha'][1]}; "
             f"text-task scores identical: **{same}**.\n")
    L += ["| task | before | after |", "|---|---|---|"]
    for k in rep["text_before"]:
        b, a = rep["text_before"][k], rep["text_after"].get(k, {})
        key = next(iter(b))
        L.append(f"| {k} | {key} {b[key]:.4g} | {key} {a.get(key, float('nan')):.4g} |")
    L.append("")
    L.append("## Real human speech: FSDD spoken digits (English, 8 kHz, zero-shot)\n")
    if fsdd_tasks:
        for n in fsdd_tasks:
            L.append(f"- {n}: " + ", ".join(f"{k} {v:.3g}" for k, v in rep["zero_shot"].get(n, {}).items()))
    else:
        L.append("- not evaluated: " + ("run_demo.fsdd = False." if not d.fsdd else "FSDD not found (../shared/data/fsdd)."))
    L.append("")
    L.append("## Adapter training\n")
    L += ["| depth | final loss | accuracy | steps |", "|---|---|---|---|"]
    for k, v in rep["train"].items():
        L.append(f"| {k} | {v.get('loss', float('nan')):.4f} | {v.get('accuracy', float('nan')):.3f} | {v.get('step')} |")
    return "\n".join(L) + "\n"


def _plots(d, rep, depths) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = d.task
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    get = lambda depth: rep["per_depth"].get(depth, rep["per_depth"].get(str(depth), {}))  # noqa: E731
    wer = [np.mean([_first(get(x).get(t(f"asr_{l}"), {}), "wer") for l in LANGS]) for x in depths]
    bleu = [np.mean([_first(get(x).get(t(f"ast_{p}"), {}), "bleu") for p in AST_PAIRS]) for x in depths]
    axes[0].plot(depths, [100 * w for w in wer], "o-")
    axes[0].set(xlabel="adapter depth", ylabel="WER (%)", title="ASR vs adapter depth")
    axes[1].plot(depths, bleu, "o-", label="SLM")
    casc = np.mean([_first(rep["cascade"].get(t(f"ast_{p}"), {}), "bleu") for p in AST_PAIRS])
    axes[1].axhline(casc, color="gray", ls="--", label="cascade")
    axes[1].set(xlabel="adapter depth", ylabel="BLEU", title="AST vs adapter depth")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(d.dir, "report_depth.png"), dpi=100)
    plt.close(fig)
    # training curves of the adapters
    fig, ax = plt.subplots(figsize=(6, 4))
    for depth in depths:
        path = os.path.join(d.dir, f"slm_depth{depth}", "train_metrics.jsonl")
        if os.path.exists(path):
            rows = [json.loads(x) for x in open(path)]
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=f"depth {depth}")
    ax.set(xlabel="step", ylabel="train loss", yscale="log", title="adapter training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(d.dir, "report_training.png"), dpi=100)
    plt.close(fig)
