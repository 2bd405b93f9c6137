"""SeqIO tasks and mixtures of slm_jax. Importing this package registers them all (building
nothing: a corpus is read, and a synthetic one built, when a task is first used).

Every task yields the features of slm_jax.data.SLMFeatureConverter:
    speech       float32 [frames, 80]  log-mel (slm_jax.features.log_mel) of 16 kHz audio
    instruction  int32 [tokens]        the text instruction, no EOS
    targets      int32 [tokens]        the expected answer, EOS-terminated
(plus "id" and "task" strings). Vocabulary: tasks.vocab.get_vocabulary() ($SLM_VOCAB).

Registered here:
    spoken_world_{tiny,demo}_...   synthetic speech (tasks/spoken_world.py, tasks/mixtures.py):
        asr_{en,fr,de,es}, asr_chars_{en,fr,de,es} (byte targets, for CTC), ast_{fr,de,es}_en,
        ast_en_{fr,de,es}, biasing_{en,fr,de,es}, qa, digits, compare, add; mixtures _asr,
        _asr_chars, _asr_ast (the paper's ASR+AST mixture), _instruct, _all
    fsdd_asr_en, fsdd_digits       real spoken digits, split "test" (only if the data is there)
    librispeech_asr_en             TFDS LibriSpeech, only from an already prepared copy
                                   (tasks/librispeech.py; $SLM_LIBRISPEECH_DIR or $TFDS_DATA_DIR)
    covost2_ast_<src>_<tgt>, covost2_asr_<src>   CoVoST 2 + Common Voice (tasks/covost2.py),
                                   only when $SLM_COVOST_DIR and $SLM_COMMON_VOICE_DIR are set
    fleurs_asr_<lang>, fleurs_ast_<lang>_en      FLEURS TSV layout (tasks/fleurs.py), only when
                                   $SLM_FLEURS_DIR is set
Real corpora elsewhere: tasks.librispeech.register_librispeech(data_dir),
tasks.covost2.register_covost2(covost_dir, common_voice_dir, pairs),
tasks.fleurs.register_fleurs(root, languages), from a module gin imports.
Your own recordings: tasks.local_manifest.register_manifest(name, "manifest.tsv").

Adding a task is one call: a corpus, a function record -> (instruction, target) or None to
skip the record, and metric functions. For example, "name the kind of thing that is spoken":

    from tasks import METRICS, SpokenWorldCorpus, register_task

    register_task(
        "spoken_world_tiny_kind", SpokenWorldCorpus("tiny"),
        lambda r: ("Is this a number, a year, a date, an amount of money or a sentence?", r["kind"]),
        METRICS["exact_match"])

Records of spoken_world (and fsdd) have: id, item_id, language, text, kind, value, written,
translations {en, fr, de, es}, slots {subject, verb, count, colour, object, location},
voice, speed, pitch (see tasks/world_text.py). A mixture is one call too:
`register_mixture("my_mix", ["spoken_world_tiny_asr_en", "spoken_world_tiny_kind"],
temperature=2.0)` (rates = train example counts ** (1 / temperature)).

Modules, each importing only modules listed before it:
    world_text, paths    the text generator and its records; where generated data lives
    prompts              instruction prompts and makers (record -> instruction, target)
    vocab                the vocabularies (the world one is trained on world_text + prompts)
    common               corpora, the task pipeline, register_task / register_mixture
    asr, ast, instruct, spoken_world, fsdd, local_manifest, librispeech, covost2, fleurs
                         corpora and task registrations
    mixtures             the spoken_world tasks and mixtures of a config
    llm_text             text batches of the LLM foundation (world_text, prompts, vocab)
"""

from tasks import (asr, ast, common, covost2, fleurs, fsdd, instruct, librispeech, local_manifest, mixtures, paths,
                   prompts, spoken_world, vocab, world_text)
from tasks.common import METRICS, mixture_rates, register_mixture, register_task
from tasks.paths import data_dir
from tasks.spoken_world import SpokenWorldConfig, SpokenWorldCorpus

SPOKEN_WORLD = {name: mixtures.register_spoken_world(name) for name in spoken_world.CONFIGS}
FSDD_TASKS = fsdd.register_fsdd()
LIBRISPEECH_TASKS = librispeech.register_default()
COVOST2_TASKS = covost2.register_default()
FLEURS_TASKS = fleurs.register_default()
