"""The embedded default (`make demo`): the SLM paper in miniature, from nothing to a report.

Stages (each cached: a finished stage is skipped when the demo is run again):
  1. data     the spoken_world corpus (espeak-ng, 4 languages) and the world vocabulary
  2. llm      a small mT5-style LLM pretrained on the world's text: span corruption plus text
              instruction tuning (mT0-like) -> llm.msgpack            (gin/runs/demo_llm.gin)
  3. encoder  a small Conformer pretrained with CTC on spoken_world ASR
              -> encoder.msgpack                                         (gin/runs/demo_encoder.gin)
  4. slm      both frozen; only the adapter trains, on the ASR + AST mixture, for each adapter
              depth in `depths`, reading the frozen encoder's outputs from a feature cache
              built once for all depths                                  (gin/runs/demo_slm.gin)
  5. report   report.md + PNG plots: ASR WER / AST BLEU for SLM (per depth), the cascade
              (CTC ASR -> text LLM) and the text-input upper bound; zero-shot instruction
              following on speech vs text; contextual biasing with and without the bias list;
              the frozen LLM's text scores before and after SLM training; real human speech
              (FSDD digits); the trainable fraction of parameters.
Every stage is an ordinary `slm_jax.main` run whose gin file can be used on its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Sequence

import gin

import slm_jax.feature_cache  # noqa: F401  (registers @cached_batches for the adapter stage)

LANGS = ("en", "fr", "de", "es")
AST_PAIRS = ("fr_en", "de_en", "es_en", "en_fr", "en_de", "en_es")
INSTRUCT = ("qa", "digits", "compare", "add")


_T0 = time.time()


def _log(msg: str) -> None:
    """Progress line with the time since the demo module was loaded (the run's start)."""
    m, sec = divmod(int(time.time() - _T0), 60)
    print(f"[demo {m:02d}:{sec:02d}] {msg}", flush=True)


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


class Demo:
    """Runs the stages with their gin files plus bindings; caches results as JSON files."""

    def __init__(self, run_dir: str, world: str, steps: dict, extra: Sequence[str], eval_examples: int | None,
                 eval_split: str = "test", fsdd: bool = True):
        self.dir = os.path.abspath(run_dir)
        self.world, self.steps, self.extra, self.eval_examples = world, steps, list(extra), eval_examples
        self.eval_split = eval_split   # of the spoken_world tasks; FSDD has only "test"
        self.fsdd = fsdd               # evaluate on the FSDD real-speech digits (when present)
        os.makedirs(self.dir, exist_ok=True)
        self.llm_path = os.path.join(self.dir, "llm.msgpack")
        self.encoder_path = os.path.join(self.dir, "encoder.msgpack")
        self.encoder_task = self.task("asr")   # CTC targets: the world's pieces, all languages

    def task(self, suffix: str) -> str:
        return f"spoken_world_{self.world}_{suffix}"

    def main(self, gin_file: str, *bindings: str) -> Any:
        from slm_jax import main
        return main.main([f"--gin_file={gin_file}", *bindings, *self.extra])

    def result_path(self, name: str) -> str:
        return os.path.join(self.dir, "results", f"{name}.json")

    def cached(self, name: str, fn) -> Any:
        path = self.result_path(name)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        t0 = time.time()
        out = fn()
        _log(f"{name}: done in {time.time() - t0:.0f} s")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(out, f, indent=1)
        return out

    # ------------------------------------------------------------------ stages
    def data(self) -> None:
        from tasks import spoken_world, vocab
        t0 = time.time()
        spoken_world.prepare(spoken_world.CONFIGS[self.world])
        vocab.get_vocabulary()
        _log(f"data ready: spoken_world/{self.world} ({time.time() - t0:.0f} s)")

    def llm(self) -> None:
        if os.path.exists(self.llm_path):
            _log(f"llm: cached ({self.llm_path})")
            return
        self.main("gin/runs/demo_llm.gin", f"--gin.run.run_dir='{self.dir}/llm'",
                  f"--gin.train.train_steps={self.steps['llm']}", f"--gin.train.export_to='{self.llm_path}'")

    def encoder(self) -> None:
        if os.path.exists(self.encoder_path):
            _log(f"encoder: cached ({self.encoder_path})")
            return
        self.main("gin/runs/demo_encoder.gin", f"--gin.run.run_dir='{self.dir}/encoder'",
                  f"--gin.train.train_task='{self.encoder_task}'", f"--gin.train.train_steps={self.steps['encoder']}",
                  f"--gin.train.export_to='{self.encoder_path}'")

    def slm_bindings(self, depth: int, run_dir: str | None = None) -> list[str]:
        return [f"--gin.run.run_dir='{run_dir or os.path.join(self.dir, f'slm_depth{depth}')}'",
                f"--gin.ADAPTER_LAYERS={depth}", f"--gin.setup.llm_checkpoint='{self.llm_path}'",
                f"--gin.setup.speech_encoder_checkpoint='{self.encoder_path}'"]

    def cache_bindings(self) -> list[str]:
        """Adapter training reads the frozen encoder's outputs from a feature cache
        (slm_jax/feature_cache.py: exact, ~2x faster steps), built once here for every depth:
        the cache depends on the encoder and the adapter's stride, not on its depth. Returns the
        bindings that point `train` at it."""
        task = self.task("asr_ast")
        bindings = ["--gin.train.input_fn=@cached_batches", f"--gin.train.train_task='{task}'",
                    f"--gin.cached_batches.cache_dir='{os.path.join(self.dir, 'feature_cache')}'"]
        from slm_jax import feature_cache
        t0 = time.time()
        manifest = feature_cache.main(["--gin_file=gin/runs/demo_slm.gin", *self.slm_bindings(0), *bindings,
                                       *self.extra])
        _log(f"feature cache: {manifest['count']} examples of {task} ({time.time() - t0:.0f} s)")
        return bindings

    def slm(self, depth: int, cache_bindings: Sequence[str]) -> dict:
        def train():
            return self.main("gin/runs/demo_slm.gin", *self.slm_bindings(depth), *cache_bindings,
                             f"--gin.train.train_steps={self.steps['slm']}")
        return self.cached(f"train_slm_depth{depth}", train)

    def eval_slm(self, depth: int, tasks: list[str], tag: str, untrained: bool = False,
                 split: str | None = None) -> dict:
        run_dir = os.path.join(self.dir, "slm_untrained") if untrained else None
        limit = [f"--gin.evaluate.max_examples={self.eval_examples}"] if self.eval_examples else []
        return self.cached(f"eval_{tag}", lambda: self.main(
            "gin/runs/demo_slm.gin", *self.slm_bindings(depth, run_dir), "--gin.run.mode='eval'",
            f"--gin.evaluate.eval_tasks={tasks}", f"--gin.evaluate.tag='_{tag}'",
            f"--gin.evaluate.split='{split or self.eval_split}'", *limit))


@gin.configurable
def run_demo(run_dir: str, *, world: str = "demo", llm_steps: int = 1400, encoder_steps: int = 1200,
             slm_steps: int = 1000, depths: Sequence[int] = (0, 1, 2, 4), main_depth: int = 2,
             eval_examples: int | None = None, eval_split: str = "test", fsdd: bool = True,
             extra_bindings: Sequence[str] = ()) -> dict:
    """All stages, then the report. Returns the report's numbers (also in results/report.json).
    eval_split: the spoken_world split scored ("test": held-out voices; FSDD is always "test").
    fsdd: also score the real human speech of ../shared/data/fsdd (skipped when absent)."""
    from slm_jax import demo_report
    t0 = time.time()
    d = Demo(run_dir, world, {"llm": llm_steps, "encoder": encoder_steps, "slm": slm_steps}, extra_bindings,
             eval_examples, eval_split, fsdd)
    _log(f"stage 1/5 data ({world})")
    d.data()
    _log("stage 2/5 LLM foundation (text pretraining + instruction tuning)")
    d.llm()
    llm_sha_before = _sha(d.llm_path)
    text_before = d.cached("llm_text_before", lambda: demo_report.text_scores(d))
    _log("stage 3/5 speech encoder foundation (CTC)")
    d.encoder()
    _log(f"stage 4/5 SLM adapters, depths {list(depths)}")
    todo = [depth for depth in depths if not os.path.exists(d.result_path(f"train_slm_depth{depth}"))]
    cache = d.cache_bindings() if todo else []
    train_results = {}
    for depth in depths:
        _log(f"  adapter depth {depth}")
        train_results[depth] = d.slm(depth, cache)
    _log("stage 5/5 evaluation and report")
    report = demo_report.build(d, depths, main_depth, train_results, text_before, llm_sha_before)
    _log(f"done in {(time.time() - t0) / 60:.1f} min: {os.path.join(d.dir, 'report.md')}")
    return report
