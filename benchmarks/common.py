"""Shared benchmark harness: thread pinning, timing, measured matmul peak, tables, and the
matching SLM built twice (slm_jax and a PyTorch + transformers reference) with the SAME weights.

Threads. Both frameworks are given the same CPU cores and thread count, fixed *before* numpy,
jax or torch are imported (importing this module does it, reading `--threads N` from argv;
default: every CPU of this process):
  - os.sched_setaffinity pins the process to CPUs 0..N-1. XLA's CPU thread pool is sized from
    the schedulable CPUs, so this is what bounds jax (there is no per-op thread flag that
    jax 0.10 honours); with N = 1 we also pass XLA_FLAGS=--xla_cpu_multi_thread_eigen=false;
  - OMP_NUM_THREADS / MKL_NUM_THREADS / OPENBLAS_NUM_THREADS = N for torch and numpy's BLAS,
    then torch.set_num_threads(N) and torch.set_num_interop_threads(1).

Device (`--device cpu|gpu`, default cpu). With gpu, jax runs on its CUDA backend and the torch
reference on "cuda" (both allocating on demand, so they share the card); float32 matmuls may use
TF32 on both sides (jax's default on GPU; torch.backends.cuda.matmul.allow_tf32), while the
same-math checks run inside `exact_matmuls()` (full float32 on both). Thread pinning still
applies to the host side.

Timing (`time_interleaved`): warm-up calls (jit compilation, allocator warm-up) are excluded;
the candidates are then called alternately, `repeats` times each, so changing background load on
a shared machine hits all of them alike, each after an idle pause (`--pause`, default 0.3 s) so
that it starts on quiet cores: without it, each call ran slower behind the other framework's
call (measured in benchmarks/README.md); we report the median (and min/max) wall time of one
blocking call, and the load average (`load_note`), since other processes on the same cores
skew timings (PyTorch's OpenMP barriers suffer most).

Matching models (`build_pair`): a random `Wav2Vec2BertModel` and a random untied
`MT5ForConditionalGeneration` are saved with `save_pretrained` and loaded by our importers
(hf_w2v_bert, hf_t5), so both sides hold the same frozen weights; our adapter is initialised by
Flax and copied into `TorchAdapter` (the same layers written in torch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Sequence


def _argv(flag: str, default: str) -> str:
    for i, a in enumerate(sys.argv):
        if a == flag and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return default


DEVICE = _argv("--device", "cpu")
if DEVICE not in ("cpu", "gpu"):
    raise SystemExit(f"--device must be cpu or gpu, got {DEVICE!r}")


def pin_threads(n: int) -> int:
    """Pin this process to CPUs 0..n-1 and set the BLAS / OpenMP / XLA thread env vars."""
    cpus = sorted(os.sched_getaffinity(0))
    if not 1 <= n <= len(cpus):
        raise SystemExit(f"--threads must be in 1..{len(cpus)}, got {n}")
    os.sched_setaffinity(0, cpus[:n])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    if n == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    if DEVICE == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    else:
        os.environ.setdefault("JAX_PLATFORMS", "cuda")
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # torch shares the card
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return n


PAUSE_S = float(_argv("--pause", "0.3"))   # idle seconds before each timed call
THREADS = pin_threads(int(_argv("--threads", str(len(os.sched_getaffinity(0))))))   # must run before numpy / jax / torch are imported

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.modeling_outputs import BaseModelOutput  # noqa: E402

torch.set_num_threads(THREADS)
torch.set_num_interop_threads(1)
TORCH_DEVICE = torch.device("cuda" if DEVICE == "gpu" else "cpu")
if DEVICE == "gpu":
    torch.backends.cuda.matmul.allow_tf32 = True      # as jax's default float32 dot on GPU
    torch.backends.cudnn.allow_tf32 = True
    WHERE = f"GPU {torch.cuda.get_device_name(0)}"
else:
    WHERE = f"{THREADS} CPU thread(s)"
transformers.utils.logging.disable_progress_bar()

from slm_jax.checkpoints.hf_t5 import load_hf_t5  # noqa: E402
from slm_jax.checkpoints.hf_w2v_bert import load_hf_w2v_bert  # noqa: E402
from slm_jax.models.adapter import AdapterConfig  # noqa: E402
from slm_jax.models.slm import SLMConfig  # noqa: E402
from slm_jax.partitioning import MeshConfig, Partitioner, make_mesh  # noqa: E402
from slm_jax.task_model import SLMTaskModel  # noqa: E402
from slm_jax.trainer import Trainer, make_optimizer  # noqa: E402

FRAME_SECONDS = 0.010   # one input feature frame = 10 ms of audio (80-dim log-mel, 10 ms hop)


def add_common_args(parser, configs=("tiny", "small")):
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="CPU threads for both frameworks (pinned at import, see common.py)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default=DEVICE,
                        help="where both frameworks run (read at import, see common.py)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per candidate (median)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed calls first (jit compilation; eager torch needs ~3 calls to settle)")
    parser.add_argument("--pause", type=float, default=PAUSE_S,
                        help="idle seconds before each timed call, so each starts on quiet cores")
    parser.add_argument("--configs", default=",".join(configs), help=f"comma list of {list(SIZES)}")
    parser.add_argument("--quick", action="store_true", help="smoke run (~30 s): tiny config, 1 warm-up, 1 repeat")
    return parser


def resolve(args):
    """Apply --quick; return the list of size names."""
    if args.quick:
        args.repeats, args.warmup = 1, 1
        return ["tiny"]
    names = [c for c in args.configs.split(",") if c]
    for c in names:
        if c not in SIZES:
            raise SystemExit(f"--configs: unknown {c!r}; choose from {list(SIZES)}")
    return names


# ----------------------------------------------------------------------------- sizes

@dataclasses.dataclass(frozen=True)
class Size:
    """One benchmark configuration: model shapes and the batch."""
    enc_hidden: int
    enc_layers: int
    enc_heads: int
    enc_ffn: int
    enc_conv_kernel: int
    adapter_hidden: int
    adapter_layers: int
    adapter_heads: int
    adapter_ffn: int
    stride: int
    d_model: int
    llm_layers: int
    llm_heads: int
    d_kv: int
    d_ff: int
    vocab: int
    batch: int
    frames: int          # input feature frames (10 ms each)
    instr_len: int       # instruction tokens
    target_len: int      # decoder tokens
    input_dim: int = 80


SIZES = {
    # ~0.6 M parameters: everything is overhead-bound
    "tiny": Size(enc_hidden=64, enc_layers=2, enc_heads=4, enc_ffn=128, enc_conv_kernel=5,
                 adapter_hidden=64, adapter_layers=1, adapter_heads=4, adapter_ffn=128, stride=2,
                 d_model=64, llm_layers=2, llm_heads=4, d_kv=16, d_ff=128, vocab=1024,
                 batch=4, frames=100, instr_len=8, target_len=16),
    # ~16 M parameters, 4 s of audio x 8 examples
    "small": Size(enc_hidden=256, enc_layers=4, enc_heads=4, enc_ffn=1024, enc_conv_kernel=31,
                  adapter_hidden=256, adapter_layers=2, adapter_heads=4, adapter_ffn=1024, stride=4,
                  d_model=256, llm_layers=4, llm_heads=4, d_kv=64, d_ff=1024, vocab=8000,
                  batch=8, frames=400, instr_len=16, target_len=32),
    # ~90 M parameters (an mT5-small-sized LLM with a 32k vocabulary), 10 s of audio x 16: for GPUs
    "base": Size(enc_hidden=512, enc_layers=8, enc_heads=8, enc_ffn=2048, enc_conv_kernel=31,
                 adapter_hidden=512, adapter_layers=2, adapter_heads=8, adapter_ffn=2048, stride=4,
                 d_model=512, llm_layers=8, llm_heads=8, d_kv=64, d_ff=1024, vocab=32000,
                 batch=16, frames=1000, instr_len=32, target_len=64),
}


def hf_configs(s: Size):
    enc = transformers.Wav2Vec2BertConfig(
        hidden_size=s.enc_hidden, num_hidden_layers=s.enc_layers, num_attention_heads=s.enc_heads,
        intermediate_size=s.enc_ffn, feature_projection_input_dim=s.input_dim,
        conv_depthwise_kernel_size=s.enc_conv_kernel, position_embeddings_type="relative_key",
        hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0,
        conformer_conv_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0)
    llm = transformers.MT5Config(
        vocab_size=s.vocab, d_model=s.d_model, num_heads=s.llm_heads, d_kv=s.d_kv, d_ff=s.d_ff,
        num_layers=s.llm_layers, num_decoder_layers=s.llm_layers, dropout_rate=0.0,
        tie_word_embeddings=False)   # ignored by transformers 5 (always ties MT5): see build_pair
    return enc, llm


def adapter_config(s: Size) -> AdapterConfig:
    return AdapterConfig(input_dim=s.enc_hidden, output_dim=s.d_model, hidden_size=s.adapter_hidden,
                         num_layers=s.adapter_layers, num_heads=s.adapter_heads,
                         intermediate_size=s.adapter_ffn, stride=s.stride)


def slm_config(s: Size) -> SLMConfig:
    """Our SLMConfig for a size, exactly as the importers derive it (no weights needed)."""
    from slm_jax.models.conformer import ConformerConfig
    from slm_jax.models.t5 import T5Config
    enc, llm = hf_configs(s)
    llm = {**llm.to_dict(), "tie_word_embeddings": False}   # untied, as build_pair's checkpoint
    return SLMConfig(speech_encoder=ConformerConfig.from_hf_w2v_bert(enc.to_dict()),
                     adapter=adapter_config(s), llm=T5Config.from_hf(llm))


def make_batch(s: Size, seed: int = 0) -> dict[str, np.ndarray]:
    """Random features (75-100% of the frames valid) and tokens (padded instruction, targets
    ending in EOS = 1), as the data pipeline produces them."""
    rng = np.random.default_rng(seed)
    b = s.batch
    n_frames = rng.integers(int(0.75 * s.frames), s.frames + 1, b)
    n_frames[0] = s.frames
    fmask = (np.arange(s.frames)[None] < n_frames[:, None]).astype(np.int32)
    feats = (rng.standard_normal((b, s.frames, s.input_dim)) * fmask[..., None]).astype(np.float32)
    n_instr = rng.integers(s.instr_len // 2, s.instr_len + 1, b)
    instr = rng.integers(2, s.vocab, (b, s.instr_len)).astype(np.int32)
    instr *= np.arange(s.instr_len)[None] < n_instr[:, None]
    n_tgt = rng.integers(s.target_len // 2, s.target_len + 1, b)
    n_tgt[0] = s.target_len
    tgt = rng.integers(2, s.vocab, (b, s.target_len)).astype(np.int32)
    tgt[np.arange(b), n_tgt - 1] = 1
    tgt *= np.arange(s.target_len)[None] < n_tgt[:, None]
    dec_in = np.concatenate([np.zeros((b, 1), np.int32), tgt[:, :-1]], axis=1)
    return dict(features=feats, feature_mask=fmask, instruction_tokens=instr,
                decoder_input_tokens=dec_in, decoder_target_tokens=tgt)


def audio_seconds(batch) -> float:
    return float(np.sum(batch["feature_mask"])) * FRAME_SECONDS


# ----------------------------------------------------------------------------- torch reference

class TorchAdapterLayer(torch.nn.Module):
    """slm_jax.models.adapter.AdapterLayer in torch: x + MHA(LN(x)); x + FFN(LN(x))."""

    def __init__(self, c: AdapterConfig):
        super().__init__()
        h = c.hidden_size
        self.heads = c.num_heads
        self.attn_norm, self.ffn_norm = torch.nn.LayerNorm(h, c.layer_norm_eps), torch.nn.LayerNorm(h, c.layer_norm_eps)
        self.query, self.key, self.value, self.out = (torch.nn.Linear(h, h) for _ in range(4))
        self.ffn_in, self.ffn_out = torch.nn.Linear(h, c.intermediate_size), torch.nn.Linear(c.intermediate_size, h)

    def forward(self, x, mask):
        b, t, h = x.shape
        y = self.attn_norm(x)
        split = lambda z: z.view(b, t, self.heads, h // self.heads).transpose(1, 2)  # noqa: E731
        attn = torch.nn.functional.scaled_dot_product_attention(
            split(self.query(y)), split(self.key(y)), split(self.value(y)), attn_mask=mask[:, None, None, :])
        x = x + self.out(attn.transpose(1, 2).reshape(b, t, h))
        return x + self.ffn_out(torch.nn.functional.gelu(self.ffn_in(self.ffn_norm(x))))


class TorchAdapter(torch.nn.Module):
    """slm_jax.models.adapter.Adapter ("stride" subsampling) in torch; module names mirror the
    Flax parameter paths so `load_flax` can copy our initialisation."""

    def __init__(self, c: AdapterConfig):
        super().__init__()
        self.stride = c.stride
        self.input_proj = torch.nn.Linear(c.input_dim, c.hidden_size)
        self.layers = torch.nn.ModuleList(TorchAdapterLayer(c) for _ in range(c.num_layers))
        self.final_norm = torch.nn.LayerNorm(c.hidden_size, c.layer_norm_eps)
        self.output_proj = torch.nn.Linear(c.hidden_size, c.output_dim)

    def forward(self, x, mask):
        x, mask = x[:, ::self.stride], mask[:, ::self.stride]
        x = self.input_proj(x)
        for layer in self.layers:
            x = layer(x, mask)
        x = self.output_proj(self.final_norm(x))
        return x * mask[..., None], mask

    @staticmethod
    def torch_name(flax_path: str) -> str:
        """"layer_0/attn_norm/norm/scale" -> "layers.0.attn_norm.weight"."""
        name = flax_path.replace("layer_", "layers.").replace("/norm/scale", "/weight").replace("/norm/bias", "/bias")
        return name.replace("/kernel", "/weight").replace("/", ".")

    def load_flax(self, params) -> None:
        from flax import traverse_util
        mine = dict(self.named_parameters())
        flat = traverse_util.flatten_dict(params, sep="/")
        assert len(flat) == len(mine), (sorted(flat), sorted(mine))
        with torch.no_grad():
            for path, value in flat.items():
                value = np.array(value)          # writable copy
                mine[self.torch_name(path)].copy_(torch.from_numpy(value.T.copy() if path.endswith("kernel") else value))

    def grads_as_flax(self, params) -> dict:
        """This module's .grad in the layout of our adapter params (for comparing gradients)."""
        from flax import traverse_util
        mine = dict(self.named_parameters())
        out = {}
        for path in traverse_util.flatten_dict(params, sep="/"):
            g = mine[self.torch_name(path)].grad.cpu().numpy()
            out[path] = g.T if path.endswith("kernel") else g
        return out


def torch_pack(first, first_mask, second, second_mask):
    """slm_jax.models.slm.pack in torch: valid items of both parts contiguous, padding last."""
    s, l = first.shape[1], second.shape[1]
    n1 = first_mask.long().sum(-1, keepdim=True)
    n2 = second_mask.long().sum(-1, keepdim=True)
    pos = torch.arange(s + l, device=first.device)[None]
    valid = pos < n1 + n2
    src = torch.where(valid, torch.where(pos < n1, pos, s + pos - n1), 0)
    joined = torch.cat([first, second.to(first.dtype)], dim=1)
    out = torch.gather(joined, 1, src[..., None].expand(-1, -1, joined.shape[-1]))
    return out * valid[..., None], valid


class TorchSLM(torch.nn.Module):
    """The PyTorch stack users compare with: frozen Wav2Vec2BertModel (under no_grad) ->
    trainable TorchAdapter -> packed with the instruction embeddings -> frozen
    MT5ForConditionalGeneration."""

    def __init__(self, encoder, adapter, llm):
        super().__init__()
        self.encoder, self.adapter, self.llm = encoder, adapter, llm
        for p in list(encoder.parameters()) + list(llm.parameters()):
            p.requires_grad_(False)
        encoder.eval()
        llm.eval()

    def encode(self, features, feature_mask, instruction_tokens):
        with torch.no_grad():
            hidden = self.encoder(features, attention_mask=feature_mask).last_hidden_state
        speech, speech_mask = self.adapter(hidden, feature_mask.bool())
        text = self.llm.get_input_embeddings()(instruction_tokens)
        x, mask = torch_pack(speech, speech_mask, text, instruction_tokens > 0)
        encoded = self.llm.encoder(inputs_embeds=x, attention_mask=mask.long()).last_hidden_state
        return encoded, mask.long()

    def forward(self, features, feature_mask, instruction_tokens, decoder_input_tokens):
        encoded, mask = self.encode(features, feature_mask, instruction_tokens)
        return self.llm(encoder_outputs=BaseModelOutput(last_hidden_state=encoded), attention_mask=mask,
                        decoder_input_ids=decoder_input_tokens).logits


def torch_loss(logits, targets, z_loss: float):
    """slm_jax.losses.cross_entropy_sums (no label smoothing) normalised by the weight sum."""
    lse = torch.logsumexp(logits, -1)
    ce = lse - torch.gather(logits, -1, targets[..., None])[..., 0]
    w = (targets > 0).to(logits.dtype)
    return ((ce + z_loss * lse ** 2) * w).sum() / w.sum()


def to_torch(batch):
    return {k: (torch.from_numpy(np.asarray(v)).long() if v.dtype.kind == "i" else torch.from_numpy(np.asarray(v)))
            .to(TORCH_DEVICE) for k, v in batch.items()}


@dataclasses.dataclass
class Pair:
    size: Size
    config: SLMConfig          # ours
    params: dict               # ours, unboxed numpy: speech_encoder / adapter / llm
    torch_slm: TorchSLM        # theirs, same weights


def build_pair(s: Size, seed: int = 0) -> Pair:
    """Random HF models -> save_pretrained -> our importers; our adapter init -> torch adapter."""
    torch.manual_seed(seed)
    enc_cfg, llm_cfg = hf_configs(s)
    encoder = transformers.Wav2Vec2BertModel(enc_cfg).eval()
    llm = transformers.MT5ForConditionalGeneration(llm_cfg).eval()
    # mT5/mT0 layout: an lm_head of its own (transformers 5 builds MT5 tied; untie it)
    llm.lm_head.weight = torch.nn.Parameter(torch.randn(s.vocab, s.d_model) * s.d_model ** -0.5)
    with tempfile.TemporaryDirectory() as tmp:
        encoder.save_pretrained(f"{tmp}/enc")
        llm.save_pretrained(f"{tmp}/llm")
        conf_cfg, enc_params = load_hf_w2v_bert(f"{tmp}/enc")
        t5_cfg, llm_params = load_hf_t5(f"{tmp}/llm")
    config = SLMConfig(speech_encoder=conf_cfg, adapter=adapter_config(s), llm=t5_cfg)
    assert config == slm_config(s), (config, slm_config(s))   # frozen_cost.py measures the same model
    init = SLMTaskModel(config).init_boxed(jax.random.PRNGKey(seed))
    adapter_params = jax.tree_util.tree_map(np.asarray, nn.meta.unbox(init["adapter"]))
    adapter = TorchAdapter(config.adapter)
    adapter.load_flax(adapter_params)
    params = dict(speech_encoder=enc_params, adapter=adapter_params, llm=llm_params)
    return Pair(s, config, params, TorchSLM(encoder, adapter, llm).to(TORCH_DEVICE))


def count_params(tree) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)))


# ----------------------------------------------------------------------------- our train step

TRAIN_LR, TRAIN_Z_LOSS = 1e-4, 1e-4   # AdamW learning rate, z-loss of the benchmarked train step


def adapter_trainer(model, lr: float = 1e-4, **adamw):
    """(1-device partitioner, adapter-only Trainer with AdamW + clipping 1.0) for `model`."""
    part = Partitioner(make_mesh(MeshConfig(data=1, model=1), devices=jax.devices()[:1]))
    tx = make_optimizer("adamw", schedule=optax.constant_schedule(lr), weight_decay=0.0, clip_norm=1.0, **adamw)
    return part, Trainer(model.loss_fn, tx, part, model.abstract_params(), trainable_patterns=("adapter/.*",))


def ours_train_step(pair: Pair, batch, kept_frames_only: bool = True):
    """Our adapter-only train step (`Trainer(trainable_patterns=("adapter/.*",))` on a 1-device
    mesh, AdamW with clipping 1.0), compiled for `batch`'s shapes. Returns (model, step, FLOPs
    per step from XLA's cost analysis, compile seconds). `step()` runs one step on `batch` and
    blocks on its loss; `step(new_batch, block=False)` feeds a numpy batch of the same shapes
    and returns without waiting, as a training loop does.

    kept_frames_only: `SLMConfig.kept_frames_only` of the model built here. False: the speech
    encoder runs over every frame and the adapter subsamples its output, the work the torch
    reference does (for its FLOP count)."""
    config = dataclasses.replace(pair.config, kept_frames_only=kept_frames_only)
    model = SLMTaskModel(config, z_loss=TRAIN_Z_LOSS)
    part, trainer = adapter_trainer(model, TRAIN_LR, b1=0.9, b2=0.98)
    train, frozen = trainer.split(pair.params)
    state = trainer.init_state(train)
    dev_batch, rng = part.shard_batch(batch), jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    compiled = trainer.train_step.lower(state, frozen, dev_batch, rng).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    holder = {"state": state}

    def step(new_batch=None, block=True):
        b = dev_batch if new_batch is None else part.shard_batch(new_batch)
        holder["state"], metrics = compiled(holder["state"], frozen, b, rng)
        return jax.block_until_ready(metrics["loss"]) if block else metrics["loss"]

    return model, step, float(cost["flops"]), compile_s


def cached_batch(model, params, batch) -> dict:
    """`batch` as slm_jax.cached_features.cached_batches yields it: the frozen encoder's outputs
    (after the adapter's parameter-free subsampling) instead of features, the same tokens."""
    from slm_jax.models.slm import SLM
    encode = jax.jit(lambda p, f, m: model.module.apply({"params": p}, f, m, method=SLM.speech_encoder_outputs))
    hidden, mask = encode(params, batch["features"], batch["feature_mask"])
    return {"encoded_speech": np.asarray(hidden), "encoded_mask": np.asarray(mask).astype(np.int32),
            **{k: batch[k] for k in ("instruction_tokens", "decoder_input_tokens", "decoder_target_tokens")}}


# ----------------------------------------------------------------------------- timing & peak

@dataclasses.dataclass
class Timing:
    median: float
    min: float
    max: float


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int,
                     pause: float | None = None) -> dict[str, Timing]:
    """Wall time of one blocking call of each fn: warm-up calls excluded, then the candidates
    are called alternately `repeats` times each (so changing background load on a shared
    machine hits them alike), each after `pause` idle seconds (default `PAUSE_S`: threads of the
    previous call, ours or the other framework's, have gone quiet; 0 where background work
    during the pause would be counted, e.g. an input pipeline's prefetch); median, min, max."""
    pause = PAUSE_S if pause is None else pause
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            time.sleep(pause)
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: Timing(statistics.median(v), min(v), max(v)) for k, v in times.items()}


def load_note() -> str:
    """1-minute load average vs our thread count: other processes on our cores skew timings
    (PyTorch's OpenMP barriers suffer most)."""
    load = os.getloadavg()[0]
    busy = load > THREADS + 0.5
    return f"load average {load:.1f}" + (" (machine busy: timings noisy, re-run on an idle machine)" if busy else "")


def torch_sync() -> None:
    """Wait for queued torch work (CUDA launches are asynchronous; a no-op on the CPU)."""
    if DEVICE == "gpu":
        torch.cuda.synchronize()


@contextlib.contextmanager
def exact_matmuls():
    """Full float32 matmuls on both sides (no TF32) inside the block: for same-math checks."""
    if DEVICE == "cpu":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with jax.default_matmul_precision("float32"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


PEAK_N = 1024 if DEVICE == "cpu" else 8192


def matmul_peak(n: int = PEAK_N, repeats: int = 5) -> dict[str, float]:
    """Measured float32 matmul GFLOP/s of an n x n x n product: jax (jit), torch, numpy (CPU
    only). On GPU, float32 matmuls run as TF32 on both frameworks, as in the timed steps."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    ta, tb = torch.from_numpy(a).to(TORCH_DEVICE), torch.from_numpy(b).to(TORCH_DEVICE)
    jdot = jax.jit(jnp.dot)

    def torch_mm():
        torch.mm(ta, tb)
        torch_sync()

    fns = {"jax": lambda: jdot(ja, jb).block_until_ready(), "torch": torch_mm}
    if DEVICE == "cpu":
        fns["numpy"] = lambda: a @ b
    t = time_interleaved(fns, repeats, warmup=2)
    return {k: 2 * n ** 3 / v.min / 1e9 for k, v in t.items()}   # best of repeats: a peak


def print_peak(*peaks: dict[str, float]) -> float:
    """Print the per-framework peak (best over the given measurements, e.g. one taken before
    and one after the benchmark, since background load varies) and return the best of all."""
    best = {k: max(p[k] for p in peaks) for k in peaks[0]}
    kind = "float32" if DEVICE == "cpu" else "float32-as-TF32"
    print(f"{kind} matmul peak ({PEAK_N}^3, best of {len(peaks)} measurements, {WHERE}): "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in best.items()))
    return max(best.values())


def print_table(title: str, rows: Sequence[dict], columns: Sequence[str] | None = None) -> None:
    """Plain fixed-width table (markdown-compatible)."""
    if not rows:
        return
    columns = list(columns or rows[0].keys())
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |")


def header(script: str) -> None:
    print(f"# {script}: jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, "
          f"transformers {transformers.__version__}; {WHERE}"
          + (f" ({THREADS} host thread(s))" if DEVICE == "gpu" else "") + f", CPUs {sorted(os.sched_getaffinity(0))}; {PAUSE_S:g} s idle before each timed call")
