"""Test setup: 8 simulated CPU devices (set before jax is imported), float32 matmuls, a compilation cache."""
import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# Tests compile the same programs again and again (each tiny run's step, probe and decoder): JAX's persistent
# compilation cache keeps every compile over a second for the other tests and the other xdist worker.
jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "recfound-tests-jax-cache"))
