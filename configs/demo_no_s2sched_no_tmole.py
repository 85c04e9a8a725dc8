"""Ablation (paper Table 4) of configs/demo.py: neither S2Sched nor TMoLE. This is also the GritLM-style
finetuning row: one plain LoRA per projection on both branches, tasks in their data proportions."""
from recfound_jax import recipes


def get_config():
    c = recipes.load("demo")
    c.name = "demo_no_s2sched_no_tmole"
    c.s2sched.enabled = False
    c.tmole.enabled = False
    return c
