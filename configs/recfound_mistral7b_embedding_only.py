"""Comparison row of configs/recfound_mistral7b.py: embedding-only finetuning (the paper's "Embed. only"
baselines): the 3 embedding tasks alone, every generative sample dropped from the batch, all else as the
recipe."""
from recfound_jax import recipes


def get_config():
    c = recipes.load("recfound_mistral7b")
    c.name = "recfound_mistral7b_embedding_only"
    c.train.generative_batch = 0
    return c
