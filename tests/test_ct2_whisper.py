"""CTranslate2 Whisper in JAX: the model.bin reader on files written here byte by byte (every
dtype, damaged files); the importer (load_encoder / load_decoder / load_whisper) on tiny random
transformers Whispers converted by ctranslate2's own converter (logits vs transformers, tokens
vs ctranslate2, refusals that name the variable); and, with the real Whisper base
(checkpoints/whisper_base.py), encoder parity and identical greedy / beam tokens vs
ctranslate2 on real (FSDD) and synthesized (espeak-ng, en/fr/de/es) speech, the tokenizer and
the prompt ids.

Parity settings: ctranslate2 runs compute_type="float32" (base's weights are stored float16;
both sides widen the same float16 values), generate(..., max_length=2 * MAX_NEW,
length_penalty=0, without timestamps) which decodes at most MAX_NEW tokens (ctranslate2 caps
new tokens at max_length / 2) with its default suppression (suppress_tokens=[-1],
suppress_blank=True); beam search ranks by summed log-probability on both sides.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import jax
import numpy as np
import pytest

from slm_jax import metrics, whisper_asr
from slm_jax.checkpoints import ct2
from slm_jax.checkpoints.ct2_whisper import load_decoder, load_encoder, load_whisper, open_model
from slm_jax.checkpoints.hf_common import CheckpointError
from slm_jax.features import load_audio, whisper_log_mel
from slm_jax.models.whisper import (Whisper, WhisperEncoder, decoder_cross_kv, decoder_step,
                                    init_decoder_cache)
from slm_jax.whisper_asr import WhisperASR, padded_batch, silence_padded
from slm_jax.whisper_tokenizer import WhisperTokenizer

FSDD = Path(__file__).parents[2] / "shared" / "data" / "fsdd" / "recordings"
# max abs diff of encoder states vs ctranslate2, as a fraction of the states' largest magnitude
# (float32 compute, |states| up to ~20). Both sides sum in float32 in their own kernels' order,
# which differs by CPU: within 2e-4 on an AMD EPYC host; on an Intel Xeon with AMX 2e-5 to 7e-5 for
# most clips and 3.7e-4 (2.0e-5 of |states| 18.7) for one. bfloat16 operands move the states by
# 0.84% in relative L2.
ENCODER_RTOL = 5e-5
TINY_TOL = 1e-4        # max abs diff of logits vs transformers on the tiny float32 model
MAX_NEW = 20           # tokens decoded per utterance in the parity tests
BEAM = 4
DIGITS = "zero one two three four five six seven eight nine".split()
DTYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
             np.dtype(np.float16): 4}


# ----------------------------------------------------------------------------- a model.bin writer


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _variable(name: str, value: np.ndarray, dtype_id: int | None = None) -> bytes:
    """One variable; a ("bfloat16", uint16 bits) pair is stored with dtype id 5."""
    if isinstance(value, tuple):
        dtype_id, value = 5, value[1]
    dtype_id = DTYPE_IDS[value.dtype] if dtype_id is None else dtype_id
    return (_string(name) + struct.pack("<B", value.ndim) + struct.pack(f"<{value.ndim}I", *value.shape)
            + struct.pack("<BI", dtype_id, value.nbytes) + value.tobytes())


def model_bin(variables: dict, aliases: dict | None = None, version: int = 6, spec: str = "WhisperSpec",
              revision: int = 3) -> bytes:
    """The bytes of a CTranslate2 model.bin (the layout ctranslate2's ModelSpec._serialize writes)."""
    out = struct.pack("<I", version) + _string(spec) + struct.pack("<II", revision, len(variables))
    out += b"".join(_variable(k, v) for k, v in variables.items())
    aliases = aliases or {}
    return out + struct.pack("<I", len(aliases)) + b"".join(_string(a) + _string(t) for a, t in aliases.items())


def rewrite(src: Path, dst: Path, change) -> Path:
    """Copy a CTranslate2 directory, its model.bin's variables and aliases passed through
    `change(variables, aliases)` (which edits them in place)."""
    shutil.copytree(src, dst)
    model = ct2.read(str(src / "model.bin"))
    variables, aliases = dict(model.variables), dict(model.aliases)
    change(variables, aliases)
    (dst / "model.bin").write_bytes(model_bin(variables, aliases, model.binary_version, model.spec, model.revision))
    return dst


# ----------------------------------------------------------------------------- the reader


def _synthetic_variables():
    rng = np.random.default_rng(0)
    bf16 = rng.standard_normal(5).astype(np.float32).view(np.uint32) >> 16
    return {
        "a/weight": rng.standard_normal((2, 3)).astype(np.float32),
        "b/gamma": rng.standard_normal(4).astype(np.float16),
        "q/weight": rng.integers(-127, 128, (3, 4)).astype(np.int8),
        "q/weight_scale": rng.uniform(10, 100, 3).astype(np.float32),
        "n/num_heads": np.array(8, np.int16),
        "n/ids": np.array([1, -2, 3], np.int32),
        "c/bf16": ("bfloat16", bf16.astype(np.uint16)),
    }


def test_reader_reads_every_dtype_exactly(tmp_path):
    variables = _synthetic_variables()
    path = tmp_path / "model.bin"
    path.write_bytes(model_bin(variables, {"q/alias": "q/weight"}))
    model = ct2.read(str(tmp_path))            # a directory reads its model.bin
    assert (model.binary_version, model.spec, model.revision) == (6, "WhisperSpec", 3)
    assert model.path == str(path)
    for name, value in variables.items():
        got = model.get(name)
        if isinstance(value, tuple):           # bfloat16 comes back widened to float32
            value = (value[1].astype(np.uint32) << 16).view(np.float32)
        assert got.dtype == value.dtype and got.shape == value.shape, name
        np.testing.assert_array_equal(got, value)
    np.testing.assert_array_equal(model.get("q/alias"), variables["q/weight"])
    np.testing.assert_array_equal(model.dequantized("q/weight"),
                                  variables["q/weight"] / variables["q/weight_scale"][:, None])
    # an alias of an int8 weight (CTranslate2's tied output projection) uses its target's scale
    np.testing.assert_array_equal(model.dequantized("q/alias"), model.dequantized("q/weight"))
    assert model.dequantized("b/gamma").dtype == np.float32


def _damaged(kind: str) -> bytes:
    good = model_bin({"a/weight": np.ones((2, 2), np.float32)})
    if kind == "truncated":
        return good[:-7]
    if kind == "trailing bytes":
        return good + b"\0\0\0"
    if kind == "version":
        return struct.pack("<I", 99) + good[4:]
    if kind == "dtype id":
        return good.replace(struct.pack("<BI", 0, 16), struct.pack("<BI", 9, 16))
    if kind == "byte count":
        return model_bin({"a/weight": np.ones(3, np.float32)}).replace(
            struct.pack("<I", 3) + struct.pack("<BI", 0, 12), struct.pack("<I", 4) + struct.pack("<BI", 0, 12))
    raise ValueError(kind)


@pytest.mark.parametrize("kind,message", [("truncated", "truncated"), ("trailing bytes", "unexpected bytes"),
                                          ("version", "binary version 99"), ("dtype id", "dtype id 9"),
                                          ("byte count", "holds 12 bytes")])
def test_reader_refuses_damaged_files_by_name(tmp_path, kind, message):
    path = tmp_path / "model.bin"
    path.write_bytes(_damaged(kind))
    with pytest.raises(ct2.CT2FormatError, match=message) as e:
        ct2.read(str(path))
    assert str(path) in str(e.value)
    with pytest.raises(CheckpointError) as e:          # the importer says the same, as CheckpointError
        open_model(str(path))
    assert str(path) in str(e.value) and message in str(e.value)


def test_importer_refuses_other_specs_and_missing_files(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(model_bin({"a/weight": np.ones(2, np.float32)}, spec="TransformerSpec"))
    with pytest.raises(CheckpointError, match="'TransformerSpec'") as e:
        open_model(str(path))
    assert str(path) in str(e.value)
    with pytest.raises(FileNotFoundError, match="nothing/model.bin"):
        ct2.read(str(tmp_path / "nothing" / "model.bin"))


# ----------------------------------------------------------------------------- tiny converted models


TINY_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|fr|>", "<|translate|>", "<|transcribe|>",
                 "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


def _tiny_hf(path: Path):
    """A tiny random WhisperForConditionalGeneration with a word-level tokenizer holding
    Whisper's special tokens (ctranslate2 looks them up by name), saved with save_pretrained."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate([f"w{i}" for i in range(50)] + TINY_SPECIALS)}
    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.WhitespaceSplit(), decoders.WordPiece()
    tok.add_special_tokens(TINY_SPECIALS)
    config = transformers.WhisperConfig(
        vocab_size=len(vocab) + 6, num_mel_bins=16, d_model=32, encoder_layers=2, encoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=64,
        max_source_positions=30, max_target_positions=24, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        decoder_start_token_id=sot)
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.generation_config = transformers.GenerationConfig(
        suppress_tokens=[3, 5], begin_suppress_tokens=[7, eot], decoder_start_token_id=sot, eos_token_id=eot,
        pad_token_id=eot)
    model.save_pretrained(path)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(transformers model, {quantization: CTranslate2 directory}) of one tiny random Whisper."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    root = tmp_path_factory.mktemp("tiny_whisper")
    model = _tiny_hf(root / "hf")
    dirs = {}
    for quant in ("float32", "float16", "int8"):
        converter = ctranslate2.converters.TransformersConverter(str(root / "hf"), copy_files=["tokenizer.json"])
        dirs[quant] = Path(converter.convert(str(root / quant), quantization=quant))
    return model, dirs


def test_tiny_whole_model_matches_transformers(tiny):
    torch = pytest.importorskip("torch")
    model, dirs = tiny
    enc_cfg, dec_cfg, params = load_whisper(str(dirs["float32"]))
    assert (dec_cfg.vocab_size, dec_cfg.d_model, dec_cfg.decoder_layers, dec_cfg.decoder_attention_heads,
            dec_cfg.decoder_ffn_dim, dec_cfg.max_target_positions) == (66, 32, 2, 4, 64, 24)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 60, 16)).astype(np.float32)
    tokens = rng.integers(0, 66, (2, 12))
    with torch.no_grad():
        ref = model(input_features=torch.from_numpy(x).transpose(1, 2),
                    decoder_input_ids=torch.from_numpy(tokens)).logits.numpy()
    out = np.asarray(jax.jit(Whisper(enc_cfg, dec_cfg).apply)({"params": params}, x, tokens))
    diff = np.abs(out - ref).max()
    print(f"tiny Whisper logits vs transformers: max abs diff {diff:.2e} (|ref| max {np.abs(ref).max():.1f})")
    assert diff <= TINY_TOL

    # The encoder / decoder loaders read the same params as load_whisper.
    enc_only, dec_only = load_encoder(str(dirs["float32"])), load_decoder(str(dirs["float32"]))
    assert enc_only[0] == enc_cfg and dec_only[0] == dec_cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, enc_only[1], params["encoder"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, dec_only[1], params["decoder"])


def test_tiny_cached_steps_match_teacher_forcing(tiny):
    """decoder_step, one token at a time through the KV cache (with a masked, padded encoder
    output), gives the teacher-forced logits."""
    _, dirs = tiny
    enc_cfg, dec_cfg, params = load_whisper(str(dirs["float32"]))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 40, 16)).astype(np.float32)
    mask = np.arange(40)[None] < np.array([[40], [23]])
    tokens = rng.integers(0, 66, (2, 9))
    full = np.asarray(jax.jit(Whisper(enc_cfg, dec_cfg).apply)({"params": params}, x, tokens, mask))
    encoded, enc_mask = jax.jit(WhisperEncoder(enc_cfg).apply)({"params": params["encoder"]}, x, mask)
    cross = decoder_cross_kv(dec_cfg, params["decoder"], encoded)
    cache = init_decoder_cache(dec_cfg, 2, 9)
    step = jax.jit(lambda c, t: decoder_step(dec_cfg, params["decoder"], c, t, cross, enc_mask))
    for t in range(9):
        logits, cache = step(cache, tokens[:, t:t + 1])
        np.testing.assert_allclose(np.asarray(logits), full[:, t], atol=1e-4, rtol=0)
    assert int(cache["index"]) == 9


def _ct2_generate(model, features: np.ndarray, prompt: list[int], beam: int, max_new: int) -> list[int]:
    import ctranslate2
    x = ctranslate2.StorageView.from_array(np.ascontiguousarray(features.T[None], np.float32))
    return model.generate(x, [prompt], max_length=2 * max_new, beam_size=beam, length_penalty=0.0)[0].sequences_ids[0]


@pytest.mark.parametrize("quant", ["float32", "float16", "int8"])
def test_tiny_generate_matches_ctranslate2(tiny, quant):
    """Greedy and beam tokens of WhisperASR equal ctranslate2's on float32, float16 and int8
    (dequantized) conversions, on a padded batch of several lengths, with suppression."""
    import ctranslate2
    asr = WhisperASR(str(tiny[1][quant]), batch_size=8, frame_bucket=20)
    ref_model = ctranslate2.models.Whisper(str(tiny[1][quant]), compute_type="float32", intra_threads=1)
    assert asr.tokenizer.suppressed == [3, 5] and asr.tokenizer.suppressed_at_begin == [7, 50]
    rng = np.random.default_rng(3)
    feats = [rng.standard_normal((n, 16)).astype(np.float32) for n in (60, 41, 24, 7, 33)]
    for beam in (1, 3):
        for lang, task in (("en", "transcribe"), ("fr", "translate")):
            ids, langs = asr.generate_ids(feats, lang, task, beam_size=beam, max_new_tokens=10)
            want = [_ct2_generate(ref_model, f, asr.tokenizer.prompt(lang, task), beam, 10) for f in feats]
            assert ids == want, (quant, beam, task)
            assert langs == [asr.tokenizer.language(lang)] * len(feats)
    if quant == "float32":          # without a mask (rows of one length): the same tokens
        same = [f[:24] for f in feats[:3]]
        assert asr.generate_ids(same, "en", padded=False, max_new_tokens=10) == \
            asr.generate_ids(same, "en", max_new_tokens=10)
        with pytest.raises(ValueError, match="padded=False needs features of one length"):
            asr.generate_ids(feats, "en", padded=False)
    with pytest.raises(ValueError, match="utterance 1: 61 frames"):
        asr.generate_ids([feats[0], np.zeros((61, 16), np.float32)], "en")


def test_a_batch_decoded_again_reuses_its_encoder_states(tiny, monkeypatch):
    """Translating the batches just transcribed runs no encoder; the tokens equal those of a
    WhisperASR that encodes afresh. Only the last `encoded_batches` batches are kept."""
    calls = []
    monkeypatch.setattr(whisper_asr, "encode_jit", lambda *a: (calls.append(1), whisper_asr.encode(*a))[1])
    directory = str(tiny[1]["float32"])
    asr = WhisperASR(directory, batch_size=4, frame_bucket=20, encoded_batches=2)
    rng = np.random.default_rng(4)
    feats = [rng.standard_normal((n, 16)).astype(np.float32) for n in (60, 41, 24, 7, 33)]
    asr.generate_ids(feats, "en", max_new_tokens=6)
    assert len(calls) == 2                                   # batches of 4 and 1
    translated = asr.generate_ids(feats, "fr", "translate", max_new_tokens=6)
    assert len(calls) == 2
    assert translated == WhisperASR(directory, batch_size=4, frame_bucket=20).generate_ids(
        feats, "fr", "translate", max_new_tokens=6)
    assert len(calls) == 4
    asr.generate_ids([f * 2 for f in feats], "en", max_new_tokens=6)
    asr.generate_ids(feats, "en", max_new_tokens=6)          # pushed out by the two batches before
    assert len(calls) == 8


def _drop(name):
    return lambda variables, aliases: variables.pop(name)


def _reshape(name):
    return lambda variables, aliases: variables.__setitem__(name, variables[name][:-1])


def _untie(variables, aliases):
    aliases.pop("decoder/projection/weight")
    variables["decoder/projection/weight"] = variables["decoder/embeddings/weight"] + 1


def _key_bias(variables, aliases):
    bias = variables["decoder/layer_1/attention/linear_1/bias"].copy()
    bias[0] = 1.0
    variables["decoder/layer_1/attention/linear_1/bias"] = bias


@pytest.mark.parametrize("change,message", [
    (_drop("decoder/layer_1/attention/linear_2/weight"), "'decoder/layer_1/attention/linear_2/weight' missing"),
    (_drop("decoder/embeddings/weight"), "'decoder/embeddings/weight' missing"),
    (_reshape("decoder/layer_0/ffn/linear_1/bias"), "'decoder/layer_0/ffn/linear_1/bias' has shape"),
    (_reshape("decoder/layer_1/self_attention/linear_0/weight"), "'decoder/layer_1/self_attention/linear_0/weight' "
                                                                 "has shape \\(95, 32\\), expected \\(96, 32\\)"),
    (lambda v, a: v.__setitem__("decoder/extra/weight", np.ones(2, np.float32)), "not used.*decoder/extra/weight"),
    (_untie, "ties its output projection"),
    (_key_bias, "decoder/layer_1/attention/linear_1 has a non-zero key bias"),
    (lambda v, a: v.__setitem__("decoder/scale_embeddings", np.array(1, np.int8)), "decoder/scale_embeddings = 1"),
])
def test_importer_refuses_a_damaged_decoder_by_name(tiny, tmp_path, change, message):
    path = rewrite(tiny[1]["float32"], tmp_path / "bad", change)
    with pytest.raises(CheckpointError, match=message) as e:
        load_whisper(str(path))
    assert str(path) in str(e.value)
    if "extra" in message:      # the decoder's own loader checks its variables too; the encoder's ignores them
        with pytest.raises(CheckpointError, match=message):
            load_decoder(str(path))
        load_encoder(str(path))


# ----------------------------------------------------------------------------- the real Whisper base


@pytest.fixture(scope="module")
def base_dir():
    from slm_jax.checkpoints.whisper_base import WhisperBaseMissing, whisper_base_dir
    try:
        return whisper_base_dir()
    except WhisperBaseMissing as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def base(base_dir):
    """(our WhisperASR, ctranslate2's Whisper) of Whisper base, loaded once."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    return WhisperASR(base_dir), ctranslate2.models.Whisper(base_dir, compute_type="float32", intra_threads=1)


def _synthesized() -> list[tuple[str, str, np.ndarray, float]]:
    """(language, text, 16 kHz audio, 10 s of padding: the default): two world utterances per
    language, fixed voices."""
    if shutil.which("espeak-ng") is None:
        return []
    from tasks import spoken_world
    records = spoken_world.plan(spoken_world.CONFIGS["tiny"], "test")
    out = []
    for lang in ("en", "fr", "de", "es"):
        for r in [r for r in records if r["language"] == lang][:2]:
            audio = spoken_world.synthesize(r["text"], lang, r["voice"], r["speed"], r["pitch"])
            out.append((lang, r["text"], audio.astype(np.float32) / 32768.0, 10.0))
    return out


@pytest.fixture(scope="module")
def speech():
    """(language, reference text, audio, pad_seconds) of FSDD clips, unpadded (when
    ../shared/data/fsdd is present), and synthesized utterances (when espeak-ng is installed)."""
    clips = sorted(FSDD.glob("*.wav"))[::450][:4] if FSDD.is_dir() else []
    out = [("en", DIGITS[int(p.name[0])], load_audio(str(p)), None) for p in clips] + _synthesized()
    if not out:
        pytest.skip("neither FSDD recordings nor espeak-ng available")
    return out


def test_encoder_matches_ctranslate2(base, speech):
    """FSDD clips and one utterance per language, unpadded, in one masked batch (our encoder's
    valid frames do not depend on the batch's padding) vs ctranslate2 on each alone."""
    import ctranslate2
    asr, ref_model = base
    cfg, params = asr.encoder_config, asr.params["encoder"]
    chosen = speech[::2]
    feats = [whisper_log_mel(audio) for _, _, audio, _ in chosen]
    x, mask = padded_batch(feats, len(feats), max(len(f) for f in feats))
    out = np.asarray(jax.jit(lambda x, m: WhisperEncoder(cfg).apply({"params": params}, x, m)[0])(x, mask))
    for (lang, text, _, _), f, row in zip(chosen, feats, out):
        ref = np.asarray(ref_model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(f.T[None]))))
        assert ref.shape == (1, (len(f) + 1) // 2, 512)
        diff = np.abs(row[:ref.shape[1]] - ref[0]).max()
        print(f"Whisper base encoder vs ctranslate2 ({lang} {text!r}, {len(f)} frames): max abs diff {diff:.1e} "
              f"(|ref| max {np.abs(ref).max():.1f})")
        assert diff <= ENCODER_RTOL * np.abs(ref).max()


def _features(asr, speech):
    return [asr.features(audio, pad) for _, _, audio, pad in speech]


def test_greedy_and_beam_match_ctranslate2(base, speech):
    """One batch, padded (and masked) to 1000 frames: FSDD clips unpadded, synthesized utterances
    padded to 10 s; ctranslate2 decodes each alone. Transcription and X -> en translation
    (English too: same batch, same compiled program), greedy and beam search: identical tokens."""
    asr, ref_model = base
    feats, langs = _features(asr, speech), [s[0] for s in speech]
    for beam in (1, BEAM):
        for task in ("transcribe", "translate"):
            ids, _ = asr.generate_ids(feats, langs, task, beam_size=beam, max_new_tokens=MAX_NEW)
            want = [_ct2_generate(ref_model, f, asr.tokenizer.prompt(lang, task), beam, MAX_NEW)
                    for f, lang in zip(feats, langs)]
            for lang, got, ref in zip(langs, ids, want):
                assert got == ref, (task, beam, lang, asr.tokenizer.decode(got), asr.tokenizer.decode(ref))
            if beam == 1 and task == "transcribe":
                texts = [asr.tokenizer.decode(t).strip() for t in ids]
                print("\n".join(f"  {lang}: {ref!r} -> {text!r}" for (lang, ref, *_), text in zip(speech, texts)))
                english = [(ref, text) for (lang, ref, *_), text in zip(speech, texts)
                           if lang == "en" and len(ref.split()) > 2]
                if english:
                    assert metrics.wer(*zip(*english)) < 0.5     # padded base hears English sentences


def test_language_detection_matches_ctranslate2(base, speech):
    import ctranslate2
    asr, ref_model = base
    feats = _features(asr, speech)
    _, langs = asr.generate_ids(feats, None, max_new_tokens=MAX_NEW)     # the greedy test's program
    want = []
    for f in feats:
        x = ctranslate2.StorageView.from_array(np.ascontiguousarray(f.T[None]))
        want.append(ref_model.detect_language(x)[0][0][0])
    assert [asr.tokenizer.tokenizer.id_to_token(i) for i in langs] == want


def test_tokenizer_matches_transformers_and_ctranslate2(base_dir):
    transformers = pytest.importorskip("transformers")
    tok = WhisperTokenizer(base_dir)
    ref = transformers.WhisperTokenizerFast(tokenizer_file=str(Path(base_dir) / "tokenizer.json"))
    vocabulary = (Path(base_dir) / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    config = json.loads((Path(base_dir) / "config.json").read_text())
    assert (tok.eot, tok.sot, tok.translate, tok.transcribe, tok.no_timestamps) == (50257, 50258, 50358, 50359, 50363)
    assert sorted(tok.languages.values()) == sorted(config["lang_ids"]) and len(tok.languages) == 99
    for code, name in (("en", "english"), ("fr", "french"), ("de", "german"), ("es", "spanish")):
        for task in ("transcribe", "translate"):
            ref.set_prefix_tokens(language=name, task=task, predict_timestamps=False)
            assert tok.prompt(code, task) == ref.prefix_tokens
            assert [vocabulary[i] for i in tok.prompt(code, task)] == [
                "<|startoftranscript|>", f"<|{code}|>", f"<|{task}|>", "<|notimestamps|>"]
    for text in ("There are five red chairs in the park.", "La fille a trois pommes rouges à la maison.",
                 "Das Mädchen hat drei rote Äpfel zu Hause.", "noventa y cinco, año 1998"):
        ids = tok.encode(" " + text)
        assert ids == ref.encode(" " + text, add_special_tokens=False)
        assert tok.decode(tok.prompt("en") + ids + [tok.eot, 50400]) == " " + text   # specials, timestamps dropped
    assert tok.suppressed == config["suppress_ids"] and tok.suppressed_at_begin == config["suppress_ids_begin"] == [
        220, 50257]
    with pytest.raises(ValueError, match="unknown Whisper language 'xx'"):
        tok.prompt("xx")
    with pytest.raises(ValueError, match="task"):
        tok.prompt("en", "summarize")


def test_silence_padded_features_match_padded_audio():
    rng = np.random.default_rng(4)
    audio = (0.1 * rng.standard_normal(16000 + 77)).astype(np.float32)
    direct = whisper_log_mel(np.pad(audio, (0, 32000 - len(audio))))
    padded = silence_padded(whisper_log_mel(audio), 200)
    assert padded.shape == direct.shape == (200, 80)
    n = len(audio) // 160
    np.testing.assert_allclose(padded[:n - 1], direct[:n - 1], atol=1e-5)   # the audio's frames
    np.testing.assert_allclose(padded[n + 2:], direct[n + 2:], atol=1e-5)   # silence past the boundary


def test_decoder_params_name_logical_axes():
    import flax.linen as nn
    from slm_jax.models.whisper import WhisperDecoder, WhisperDecoderConfig
    from slm_jax.partitioning import check_logical_axes
    cfg = WhisperDecoderConfig(vocab_size=40, d_model=16, decoder_layers=1, decoder_attention_heads=2,
                               decoder_ffn_dim=32, max_target_positions=8)
    boxed = WhisperDecoder(cfg).init(jax.random.PRNGKey(0), np.zeros((1, 3), np.int32),
                                     np.zeros((1, 5, 16), np.float32))["params"]
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(v, nn.LogicallyPartitioned) for v in leaves)
    specs = nn.get_partition_spec(boxed)
    check_logical_axes(specs)
    P = jax.sharding.PartitionSpec
    assert specs["embed_tokens"]["embedding"] == P("vocab", "embed")
    assert specs["layers_0"]["encoder_attn"]["query"]["kernel"] == P("embed", "heads", "kv")
    assert specs["layers_0"]["fc1"]["kernel"] == P("embed", "mlp")
    assert "bias" not in boxed["layers_0"]["self_attn"]["key"] and "bias" not in boxed["layers_0"]["encoder_attn"]["key"]
    with pytest.raises(ValueError, match="one position"):
        WhisperDecoder(cfg).apply({"params": nn.meta.unbox(boxed)}, np.zeros((1, 2), np.int32), None,
                                  cache=init_decoder_cache(cfg, 1, 4), cross_kv={})
    with pytest.raises(ValueError, match="max_target_positions"):
        init_decoder_cache(cfg, 1, 9)
