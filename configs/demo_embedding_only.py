"""Comparison row of configs/demo.py: embedding-only finetuning (the paper's "Embed. only" baselines): the 3
embedding tasks alone, every generative sample dropped from the batch, all else as the recipe."""
from recfound_jax import recipes


def get_config():
    c = recipes.load("demo")
    c.name = "demo_embedding_only"
    c.train.generative_batch = 0
    return c
