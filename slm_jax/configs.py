"""Gin registrations of the model configs, and named presets (tiny for tests, paper-size).

Gin files bind these, e.g.
    SLMConfig.llm = @T5Config()
    T5Config.d_model = 64
Presets are plain functions returning configs, so scripts and tests can use them without gin.
"""

from __future__ import annotations

import gin
import jax.numpy as jnp

from slm_jax.features import FeatureConfig
from slm_jax.models import layers
from slm_jax.models.adapter import AdapterConfig
from slm_jax.models.conformer import ConformerConfig
from slm_jax.models.slm import SLMConfig
from slm_jax.models.t5 import T5Config
from slm_jax.models.whisper import WhisperEncoderConfig

for _cls in (AdapterConfig, ConformerConfig, FeatureConfig, SLMConfig, T5Config, WhisperEncoderConfig):
    gin.external_configurable(_cls, module="slm_jax")
# e.g. WhisperEncoderConfig.matmul_dtype = @slm_jax.bfloat16_where_fast()
gin.external_configurable(layers.bfloat16_where_fast, module="slm_jax")
gin.constant("jnp.float32", jnp.float32)
gin.constant("jnp.bfloat16", jnp.bfloat16)


def tiny_slm(adapter_layers: int = 1, vocab_size: int = 259, input_dim: int = 80) -> SLMConfig:
    """A few-thousand-parameter SLM for unit tests (byte vocabulary by default)."""
    enc = ConformerConfig(input_dim=input_dim, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                          conv_kernel_size=3, subsampling="conv2d", subsampling_channels=8,
                          position_embeddings_type="relative_key",
                          left_max_position_embeddings=16, right_max_position_embeddings=4)
    llm = T5Config(vocab_size=vocab_size, d_model=32, num_heads=2, d_kv=16, d_ff=48, num_encoder_layers=1,
                   num_decoder_layers=1, relative_attention_num_buckets=8, relative_attention_max_distance=32)
    adapter = AdapterConfig(input_dim=32, output_dim=32, hidden_size=32, num_layers=adapter_layers, num_heads=2,
                            intermediate_size=64, stride=2)
    return SLMConfig(speech_encoder=enc, adapter=adapter, llm=llm)


def paper_slm(adapter_layers: int = 2) -> SLMConfig:
    """Paper-shaped SLM: a USM-2B-like Conformer (1536 wide, 32 layers, 128 mel, 4x conv
    subsampling) + mT0-XXL shapes (d_model 4096, 24+24 layers, 64 heads x 64, d_ff 10240,
    250112 vocab) + a 2-layer adapter (4x subsampling, width 2560: about 1% of all parameters)."""
    enc = ConformerConfig(input_dim=128, hidden_size=1536, num_layers=32, num_heads=16, intermediate_size=6144,
                          conv_kernel_size=5, subsampling="conv2d", position_embeddings_type="relative_key")
    llm = T5Config(vocab_size=250112, d_model=4096, num_heads=64, d_kv=64, d_ff=10240, num_encoder_layers=24,
                   num_decoder_layers=24)
    adapter = AdapterConfig(input_dim=1536, output_dim=4096, hidden_size=2560, num_layers=adapter_layers,
                            num_heads=20, intermediate_size=10240, stride=4)
    return SLMConfig(speech_encoder=enc, adapter=adapter, llm=llm)
