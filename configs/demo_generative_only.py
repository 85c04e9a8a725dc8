"""Comparison row of configs/demo.py: generative-only finetuning (the single-branch generative baselines): the 10
generative tasks alone, every embedding sample dropped from the batch, all else as the recipe."""
from recfound_jax import recipes


def get_config():
    c = recipes.load("demo")
    c.name = "demo_generative_only"
    c.train.embedding_batch = 0
    return c
