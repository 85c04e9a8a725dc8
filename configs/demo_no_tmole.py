"""Ablation (paper Table 4) of configs/demo.py: TMoLE off: one plain LoRA per projection."""
from recfound_jax import recipes


def get_config():
    c = recipes.load("demo")
    c.name = "demo_no_tmole"
    c.tmole.enabled = False
    return c
