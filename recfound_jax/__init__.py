"""recfound_jax: RecFound (generative representational recommendation foundation models) in JAX/Flax NNX.

The public names load on first use (PEP 562). ``python -m recfound_jax.<command>`` imports this package
first, while ``sys.argv[0]`` is still "-m" (runpy's placeholder while it finds the module): that is where every
command switches the hub libraries offline (`offline.go_offline`: huggingface_hub reads the variables when it
is imported, and ``datasets`` imports it with the data modules) and re-executes itself with huge pages
(`cli.restart_with_hugepages`), before it has imported JAX.
"""
from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if sys.argv[:1] == ["-m"]:
    from recfound_jax.cli import restart_with_hugepages
    from recfound_jax.offline import go_offline

    go_offline()
    restart_with_hugepages()

if TYPE_CHECKING:
    from recfound_jax.convert.hf import load_hf, save_hf
    from recfound_jax.inference.recfound import RecFound
    from recfound_jax.model.mistral import Mistral, MistralConfig
    from recfound_jax.model.tmole import TMoLEConfig
    from recfound_jax.tokenizer import Tokenizer

_HOMES = {
    "load_hf": "recfound_jax.convert.hf",
    "save_hf": "recfound_jax.convert.hf",
    "RecFound": "recfound_jax.inference.recfound",
    "Mistral": "recfound_jax.model.mistral",
    "MistralConfig": "recfound_jax.model.mistral",
    "TMoLEConfig": "recfound_jax.model.tmole",
    "Tokenizer": "recfound_jax.tokenizer",
}
__all__ = ["Mistral", "MistralConfig", "RecFound", "TMoLEConfig", "Tokenizer", "load_hf", "save_hf"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """The public name ``name``, imported from its module the first time it is asked for."""
    if name not in _HOMES:
        raise AttributeError(f"module 'recfound_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
