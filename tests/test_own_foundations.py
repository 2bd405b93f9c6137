"""Own foundations and own data: the README recipe end to end through `python -m slm_jax.main`
on tiny random Hugging Face mT5 + w2v-BERT 2.0 directories and a manifest of FSDD recordings
(synthesized tones when FSDD is absent), and the foundation configs taken from the checkpoints."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.own_foundations import build_mt5, build_w2v_bert, recordings, write_manifest

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Train on your own foundations and recordings"


def readme_blocks() -> dict[str, str]:
    """The fenced blocks of the README's recipe section, by language."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", len(SECTION))]
    return {lang: body for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, re.S)}


@pytest.fixture(scope="module")
def foundations(tmp_path_factory):
    root = tmp_path_factory.mktemp("foundations")
    return build_w2v_bert(root / "w2v_bert"), build_mt5(root / "mt5")


def test_readme_recipe_end_to_end(foundations, tmp_path):
    """manifest -> task module imported from gin -> train (WER on the test split at the end) ->
    eval -> infer, each command as the README writes it, in fresh processes; only the
    checkpoint paths and the step count differ from the README's text."""
    speech_dir, llm_dir = foundations
    blocks = readme_blocks()
    rows = recordings(tmp_path / "recordings", {"train": 48, "test": 8})
    write_manifest(tmp_path / "manifest.tsv", rows)
    (tmp_path / "my_tasks.py").write_text(blocks["python"])
    gin_text = blocks["gin"].replace("/path/to/w2v-bert-2.0", str(speech_dir)).replace("/path/to/mt0-base", str(llm_dir))
    gin_text = gin_text.replace("RunConfig.train_steps = 2000", "RunConfig.train_steps = 40")
    assert "RunConfig.train_steps = 40" in gin_text and str(speech_dir) in gin_text and str(llm_dir) in gin_text
    assert not re.search(r"T5Config|ConformerConfig|WhisperEncoderConfig", gin_text)   # no model fields by hand
    (tmp_path / "my_run.gin").write_text(gin_text)
    test_file = next(a for a, _, s in rows if s == "test")
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    commands = [c for c in blocks["bash"].splitlines() if c.strip()]
    assert [c.split()[:3] for c in commands] == [["python", "-m", "slm_jax.main"]] * 3
    outputs = []
    for command in commands:
        argv = [sys.executable] + shlex.split(command)[1:]
        argv = [a.replace("recordings/7_theo_3.wav", test_file) for a in argv]
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        outputs.append(proc.stdout)
    train_out, eval_out, infer_out = outputs
    assert "[train] step 40/40" in train_out or "step 40" in train_out
    assert re.search(r"\[eval\] step 40 my_digits_asr: wer=", train_out)        # evaluated at the end
    assert re.search(r"\[eval\] step 40 my_digits_asr: wer=", eval_out)
    metrics = json.loads((tmp_path / "runs/my_digits/eval/metrics_step40.json").read_text())
    assert metrics["my_digits_asr"]["num_examples"] == 8 and np.isfinite(metrics["my_digits_asr"]["wer"])
    line = [ln for ln in infer_out.splitlines() if ln.startswith(test_file)]
    assert len(line) == 1 and "\t" in line[0]
    train_rows = [json.loads(r) for r in open(tmp_path / "runs/my_digits/train_metrics.jsonl")]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] and all(np.isfinite(r["loss"]) for r in train_rows)
