"""slm_jax: SLM (frozen speech encoder + trainable adapter + frozen encoder-decoder LLM) in JAX/Flax."""

__version__ = "0.1.0"
