"""Test setup: 8 simulated CPU devices (set before jax is imported), float32 matmuls, a compilation cache."""
import importlib.util
import os
import pathlib
import tempfile
import types

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# Tests compile the same programs again and again (each tiny run's step, probe and decoder): JAX's persistent
# compilation cache keeps every compile over a second for the other tests and the other xdist worker.
jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "recfound-tests-jax-cache"))


def _load_script(name: str) -> types.ModuleType:
    path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_script():
    """A function: scripts/NAME.py imported as a module (the scripts are not a package)."""
    return _load_script
