"""Ablation (paper Table 4) of configs/demo.py: neither S2Sched nor TMoLE."""
from pathlib import Path

from recfound_jax.config import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("demo.py"))
    c.name = "demo_no_s2sched_no_tmole"
    c.s2sched.enabled = False
    c.tmole.enabled = False
    return c
