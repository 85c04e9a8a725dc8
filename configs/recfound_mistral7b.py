"""The paper's recipe: Mistral-7B-Instruct-v0.3 + TMoLE (2/2/2, rank 16, alpha 64) on the released data, 8 GPUs.

Set the two paths (or pass --config.model.base=... --config.data.dir=...): a local snapshot of
mistralai/Mistral-7B-Instruct-v0.3 (safetensors) and the released dataset (hub name Anonqwq/RecFound).
Global batches are 2048 embedding and 1024 generative samples a step (docs/method.md, "Training
recipe"); GradCache chunks and generative micro-batches of one sample per device keep activations within
an 80 GB H100 (scripts/plan_7b.py).
Steps: 3 epochs of the train split (train.epochs, counted as the released trainer counts them).
"""
from recfound_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "recfound_mistral7b"
    c.model.base = "/path/to/Mistral-7B-Instruct-v0.3"
    c.model.param_dtype = "bfloat16"
    c.model.compute_dtype = "bfloat16"
    c.model.remat = "dots_saveable"
    c.model.attention = "cudnn"
    c.data.dir = "/path/to/RecFound"
    c.data.query_len = 256
    c.data.passage_len = 2048
    c.data.generative_len = 2048
    c.tmole.num_embedding, c.tmole.num_shared, c.tmole.num_generative = 2, 2, 2
    c.tmole.rank, c.tmole.alpha, c.tmole.dropout = 16, 64.0, 0.1
    c.tmole.task_embedding_dim = 512
    c.train.embedding_batch = 2048
    c.train.generative_batch = 1024
    c.train.learning_rate = 2e-5
    c.train.warmup_ratio = 0.03
    # One sample per device per chunk at 2048 tokens: with dots_saveable, scripts/plan_7b.py puts two per
    # device too close to an H100's 80 GB (docs/benchmarks.md).
    c.train.gradcache_chunk = 8
    c.train.generative_micro_batch = 8
    c.train.checkpoint_every = 20
    c.s2sched.window = 64
    c.s2sched.tau = 10.0
    c.s2sched.warmup_ratio = 0.1
    # the paper's validation: 128 instances of each task sampled uniformly at every step (section 5.1)
    c.s2sched.probe_size = 128
    c.s2sched.probe_sampling = "fresh"
    c.mesh.shape = (1, -1, 1)
    return c
