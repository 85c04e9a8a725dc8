"""Ablation (paper Table 4) of configs/recfound_mistral7b.py: neither S2Sched nor TMoLE. This is also the GritLM-style
finetuning row: one plain LoRA per projection on both branches, tasks in their data proportions."""
from recfound_jax import recipes


def get_config():
    c = recipes.load("recfound_mistral7b")
    c.name = "recfound_mistral7b_no_s2sched_no_tmole"
    c.s2sched.enabled = False
    c.tmole.enabled = False
    return c
