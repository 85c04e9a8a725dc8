"""Comparison row of configs/recfound_mistral7b.py: generative-only finetuning (the single-branch generative
baselines): the 10 generative tasks alone, every embedding sample dropped from the batch, all else as the
recipe."""
from recfound_jax import recipes


def get_config():
    c = recipes.load("recfound_mistral7b")
    c.name = "recfound_mistral7b_generative_only"
    c.train.embedding_batch = 0
    return c
