"""Ablation (paper Table 4) of configs/recfound_mistral7b.py: TMoLE off: one plain LoRA per projection."""
from recfound_jax import recipes


def get_config():
    c = recipes.load("recfound_mistral7b")
    c.name = "recfound_mistral7b_no_tmole"
    c.tmole.enabled = False
    return c
