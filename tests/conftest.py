"""Test-wide settings: CPU only with 8 simulated devices, full-precision float32 matmuls, compiled
programs kept on disk for the run, the longest test files first, an empty gin config at the start
of each test file."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# 8 simulated CPU devices, so partitioned steps run on real meshes (2x4, 8x1) in tests.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A fresh on-disk compilation cache per test process, shared with the subprocesses it starts (runs
# read SLM_JAX_COMPILATION_CACHE): many tests build the same tiny models, and a program one test
# compiled is loaded by the next instead of compiled again. Nothing outside the run is read or
# written. test_compilation.py, which counts compilations, turns it off.
XLA_CACHE = tempfile.mkdtemp(prefix="slm_jax_test_xla_")
# removed at exit by this process only (not by a forked child that exits through atexit)
atexit.register(lambda pid=os.getpid(): os.getpid() == pid and shutil.rmtree(XLA_CACHE, ignore_errors=True))
os.environ["SLM_JAX_COMPILATION_CACHE"] = XLA_CACHE
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)

import gin  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402

from slm_jax.gin_utils import enable_compilation_cache  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
enable_compilation_cache()    # the runs' own switch, reading SLM_JAX_COMPILATION_CACHE set above
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

# The test files that take longest, in that order, run before the rest (which keep their
# collection order). `make test` hands whole files to its workers in collection order
# (`--dist loadfile --no-loadscope-reorder`), so each worker starts on a long file and the short
# ones fill in at the end, instead of one worker running a long file alone while the others idle.
LONGEST_FIRST = ("test_demo_conformer.py", "test_demo.py", "test_trainer.py", "test_tasks.py",
                 "test_foundation_guards.py", "test_ct2_whisper.py", "test_slm.py", "test_multiprocess.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="module", autouse=True)
def fresh_gin_config():
    """Each test file starts from an empty gin config (before its own module fixtures): bindings
    one file parses never reach the next file a test worker runs."""
    gin.clear_config()
    yield
