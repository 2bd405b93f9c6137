"""Builders shared by the own-foundations tests: tiny random Hugging Face mT5 (with a
SentencePiece model as its spiece.model) and w2v-BERT 2.0 directories, and a manifest of FSDD
recordings (synthesized digits when FSDD is absent)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
INSTRUCTION = "Transcribe the speech."
MT5 = dict(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16,
           relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
           decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
MT5_VOCAB = 64


def spiece_model(vocab_size: int = 40) -> bytes:
    """A SentencePiece model with T5's ids (pad 0, eos 1, unk 2) over digit words and the
    instruction."""
    import sentencepiece as spm
    text = [" ".join(DIGITS), INSTRUCTION] + list(DIGITS) * 4
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=out, vocab_size=vocab_size,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    return out.getvalue()


def build_mt5(directory: Path, seed: int = 0, **changes) -> Path:
    """A tiny random MT5ForConditionalGeneration saved with save_pretrained, plus spiece.model."""
    import torch
    import transformers
    torch.manual_seed(seed)
    model = transformers.MT5ForConditionalGeneration(
        transformers.MT5Config(vocab_size=MT5_VOCAB, **{**MT5, **changes})).eval()
    model.save_pretrained(directory, safe_serialization=True)
    (directory / "spiece.model").write_bytes(spiece_model())
    return directory


def build_w2v_bert(directory: Path, seed: int = 0) -> Path:
    """A tiny random Wav2Vec2BertModel (160-dim fbank input, as w2v-BERT 2.0) saved with
    save_pretrained."""
    import torch
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.Wav2Vec2BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        feature_projection_input_dim=160, conv_depthwise_kernel_size=5, left_max_position_embeddings=8,
        right_max_position_embeddings=4, hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0,
        feat_proj_dropout=0.0, conformer_conv_dropout=0.0, layerdrop=0.0)
    transformers.Wav2Vec2BertModel(cfg).eval().save_pretrained(directory, safe_serialization=True)
    return directory


def fsdd_dir() -> Path | None:
    root = Path(os.environ.get("SLM_FSDD_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd")
    for d in (root / "recordings", root):
        if d.is_dir() and any(p.suffix == ".wav" for p in d.iterdir()):
            return d
    return None


def recordings(directory: Path, per_split: dict[str, int]) -> list[tuple[str, str, str]]:
    """(path, transcript, split) rows: FSDD clips (test: a speaker held out), or synthesized
    tones, one pitch per digit, when FSDD is absent."""
    fsdd = fsdd_dir()
    rows = []
    if fsdd is not None:
        files = sorted(p for p in fsdd.iterdir() if p.suffix == ".wav")
        speakers = sorted({p.stem.split("_")[1] for p in files})
        for split, n in per_split.items():
            pool = [p for p in files if (p.stem.split("_")[1] == speakers[0]) == (split == "test")]
            pool = sorted(pool, key=lambda p: (int(p.stem.split("_")[2]), p.stem))[:n]
            rows += [(str(p), DIGITS[int(p.stem[0])], split) for p in pool]
        return rows
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for i in range(n):
            d = int(rng.integers(10))
            t = np.arange(int(8000 * 0.5)) / 8000
            audio = 0.3 * np.sin(2 * np.pi * (200 + 60 * d) * t) + 0.01 * rng.standard_normal(t.size)
            path = directory / f"{split}_{i}_{d}.wav"
            sf.write(path, audio.astype(np.float32), 8000, subtype="PCM_16")
            rows.append((str(path), DIGITS[d], split))
    return rows


def write_manifest(path: Path, rows) -> Path:
    with open(path, "w") as f:
        f.write("audio\tlanguage\ttranscript\tsplit\n")
        for audio, text, split in rows:
            f.write(f"{audio}\ten\t{text}\t{split}\n")
    return path


def build_whisper(directory: Path, seed: int = 0) -> Path:
    """A tiny random WhisperForConditionalGeneration (80 mel bins) saved with save_pretrained."""
    import torch
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.WhisperConfig(
        vocab_size=64, num_mel_bins=80, d_model=32, encoder_layers=2, encoder_attention_heads=4,
        encoder_ffn_dim=64, max_source_positions=1500, decoder_layers=1, decoder_attention_heads=4,
        decoder_ffn_dim=64, max_target_positions=16, pad_token_id=1, bos_token_id=2, eos_token_id=3,
        decoder_start_token_id=2, suppress_tokens=None, begin_suppress_tokens=None, dropout=0.0)
    transformers.WhisperForConditionalGeneration(cfg).eval().save_pretrained(directory, safe_serialization=True)
    return directory
