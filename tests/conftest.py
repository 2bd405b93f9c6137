"""Test-wide settings: CPU only with 8 simulated devices, full-precision float32 matmuls, an empty
gin config at the start of each test file."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# 8 simulated CPU devices, so partitioned steps run on real meshes (2x4, 8x1) in tests.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gin  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="module", autouse=True)
def fresh_gin_config():
    """Each test file starts from an empty gin config (before its own module fixtures): bindings
    one file parses never reach the next file a test worker runs."""
    gin.clear_config()
    yield
