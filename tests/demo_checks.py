"""Shared checks of the embedded default's smoke runs (test_demo.py: Whisper base as the
speech foundation; test_demo_conformer.py: the CTC-pretrained Conformer). Each runs its
quick gin file end to end in a fresh process and asserts that learning happened, against the
untrained adapter on the same utterances: the adapter's training loss falls, and its ASR WER is
below a stated bound and well under the untrained adapter's (which emits nothing useful)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
LANGS = ("en", "fr", "de", "es")


def run_demo(gin_file: str, run_dir, timeout: int) -> str:
    """The demo as a user runs it: a fresh process with one CPU device (not the tests' 8)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, "-m", "slm_jax.demo", f"--gin_file={gin_file}", f"--gin.DemoConfig.run_dir='{run_dir}'"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def quick_run(tmp_path_factory, gin_file: str) -> tuple[Path, str]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make test installs it)")
    run_dir = tmp_path_factory.mktemp("demo_quick")
    return run_dir, run_demo(gin_file, run_dir, 1500)


def report(run_dir: Path) -> dict:
    return json.loads((run_dir / "results" / "report.json").read_text())


def wers(scores: dict, key: str = "wer") -> list[float]:
    return [scores[f"spoken_world_tiny_asr_{lang}"][key] for lang in LANGS]


def check_learns(run_dir: Path, wer_bound: float) -> float:
    """The adapter's loss falls; its mean WER is under `wer_bound` and well under the untrained
    adapter's. Returns the trained mean WER."""
    rep = report(run_dir)
    rows = [json.loads(x) for x in open(run_dir / "slm_depth2" / "train_metrics.jsonl")]
    assert len(rows) >= 4
    # (the first row is step 25: the frozen LLM already predicts the targets' common words)
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], (rows[0]["loss"], rows[-1]["loss"])
    trained = float(np.mean(wers(rep["per_depth"]["2"])))
    untrained = float(np.mean(wers(rep["untrained"])))
    assert untrained > 0.9, untrained
    assert trained < wer_bound, trained
    assert trained < untrained - 0.3, (trained, untrained)
    return trained


def check_report_and_frozen_llm(run_dir: Path, stdout: str) -> dict:
    md = (run_dir / "report.md").read_text()
    for section in ("Targets", "ASR (WER", "AST per pair", "Zero-shot instruction following", "Contextual biasing",
                    "frozen LLM keeps its text abilities", "FSDD", "Trainable"):
        assert section in md, section
    for png in ("report_depth.png", "report_training.png"):
        assert os.path.getsize(run_dir / png) > 1000
    rep = report(run_dir)
    # the LLM file is untouched and its text scores are the same after SLM training
    assert rep["llm_sha"][0] == rep["llm_sha"][1]
    assert rep["text_before"] == rep["text_after"]
    assert 0 < rep["param_counts"]["trainable_fraction"] < 0.5
    assert "ETA" in stdout
    # the most-frequent-answer floor of each instruction task: the commonest target's share of
    # the targets the SLM was scored on (read back from its predictions file)
    assert "most frequent answer" in md
    checked = 0
    for n in ("qa", "digits", "compare", "add"):
        name = f"spoken_world_tiny_{n}"
        files = list((run_dir / "slm_depth2" / "eval").glob(f"{name}_zeroshot_step*.jsonl"))
        assert len(files) == 1, files
        targets = [json.loads(x)["target"] for x in open(files[0])]
        top = max((targets.count(t) for t in targets), default=0)
        if targets:
            assert rep["majority"][name]["exact_match"] == pytest.approx(top / len(targets)), name
            assert targets.count(rep["majority"][name]["answer"]) == top, name
            checked += 1
    assert checked >= 2, checked
    # the adapters trained from the frozen encoder's feature cache: every example of the
    # ASR + AST mixture's tasks, once
    manifest = json.loads((run_dir / "feature_cache" / "spoken_world_tiny_asr_ast" / "train" / "manifest.json")
                          .read_text())
    assert len(manifest["tasks"]) == 10 and manifest["count"] == sum(manifest["tasks"].values())
    assert "feature cache:" in stdout
    # every stage's wall time, in the order run, also in the report
    times = rep["stage_times"]
    depths = [f"train_slm_depth{d}" for d in rep["meta"]["depths"]]
    assert list(times)[:3] == ["data", "train_llm", "llm_text_before"] and "## Stage times" in md
    assert {"feature_cache", "cascade", "eval_zeroshot", *depths} <= set(times) and min(times.values()) >= 0
    assert list(times).index("feature_cache") < list(times).index(depths[0])
    return rep


def check_cached(run_dir: Path, gin_file: str, foundation_line: str) -> None:
    """Re-running skips every finished stage (no training step runs again)."""
    times = report(run_dir)["stage_times"]
    stdout = run_demo(gin_file, run_dir, 600)
    assert "llm: cached" in stdout and foundation_line in stdout
    assert "[train] step" not in stdout
    assert report(run_dir)["stage_times"] == times       # nothing ran again, so no time changed
