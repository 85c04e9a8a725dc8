"""recfound_jax: RecFound (generative representational recommendation foundation models) in JAX/Flax NNX."""
from recfound_jax.convert.hf import load_hf, save_hf
from recfound_jax.inference.recfound import RecFound
from recfound_jax.model.mistral import Mistral, MistralConfig
from recfound_jax.model.tmole import TMoLEConfig
from recfound_jax.tokenizer import Tokenizer

__all__ = ["Mistral", "MistralConfig", "RecFound", "TMoLEConfig", "Tokenizer", "load_hf", "save_hf"]
__version__ = "0.1.0"
