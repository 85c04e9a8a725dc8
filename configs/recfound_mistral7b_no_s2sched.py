"""Ablation (paper Table 4) of configs/recfound_mistral7b.py: S2Sched off: uniform task ratios."""
from recfound_jax import recipes


def get_config():
    c = recipes.load("recfound_mistral7b")
    c.name = "recfound_mistral7b_no_s2sched"
    c.s2sched.enabled = False
    return c
