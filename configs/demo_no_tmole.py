"""Ablation (paper Table 4) of configs/demo.py: TMoLE off: one plain LoRA per projection."""
from pathlib import Path

from recfound_jax.config import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("demo.py"))
    c.name = "demo_no_tmole"
    c.tmole.enabled = False
    return c
