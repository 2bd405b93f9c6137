"""The from-scratch variant of the embedded default (gin/runs/demo_quick_conformer.gin) end to
end: both foundations pretrained here (the speech encoder with CTC), the adapter trained with
them frozen, the CTC -> LLM cascade scored, the report written (checks in tests/demo_checks.py)."""

from __future__ import annotations

import pytest

import demo_checks

GIN = "gin/runs/demo_quick_conformer.gin"
WER_BOUND = 0.95   # quick run: 800 adapter steps on a 300-step encoder (seen: 0.00); untrained: ~1 or more


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return demo_checks.quick_run(tmp_path_factory, GIN)


def test_quick_demo_learns(quick_run):
    demo_checks.check_learns(quick_run[0], WER_BOUND)


def test_quick_demo_report_and_frozen_llm(quick_run):
    rep = demo_checks.check_report_and_frozen_llm(*quick_run)
    assert rep["meta"]["speech_foundation"] == "ctc_conformer"


def test_quick_demo_stages_are_cached(quick_run):
    demo_checks.check_cached(quick_run[0], GIN, "encoder: cached")
