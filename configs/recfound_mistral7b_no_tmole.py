"""Ablation (paper Table 4) of configs/recfound_mistral7b.py: TMoLE off: one plain LoRA per projection."""
from pathlib import Path

from recfound_jax.config import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("recfound_mistral7b.py"))
    c.name = "recfound_mistral7b_no_tmole"
    c.tmole.enabled = False
    return c
