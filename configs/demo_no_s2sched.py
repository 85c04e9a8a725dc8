"""Ablation (paper Table 4) of configs/demo.py: S2Sched off: uniform task ratios."""
from recfound_jax import recipes


def get_config():
    c = recipes.load("demo")
    c.name = "demo_no_s2sched"
    c.s2sched.enabled = False
    return c
