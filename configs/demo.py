"""The embedded demo: RecFound on the synthetic dataset, from a tiny base pretrained by recfound_jax.demo.pretrain.

Nothing is downloaded: the base (configs/demo_base.py) and the dataset are built once under
$RECFOUND_CACHE (default ~/.cache/recfound_jax) and reused, so later runs only finetune. The step count
was chosen on the valid split, with the base as it was before its instruction stage. Timings and scores:
docs/results.md.
"""
from recfound_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "demo"
    c.model.base = "demo"
    c.data.dir = "synthetic"
    c.data.query_len = 72  # the synthetic data's longest query (instruction included) is 71 tokens
    c.data.passage_len = 48  # longest passage: 46
    c.data.generative_len = 176  # longest generative row: 174
    c.tmole.rank = 16
    c.tmole.alpha = 32.0
    c.tmole.task_embedding_dim = 64
    c.train.steps = 400
    c.train.embedding_batch = 24
    c.train.generative_batch = 30
    c.train.learning_rate = 3e-3
    c.train.warmup_ratio = 0.05
    c.train.checkpoint_every = 50
    c.s2sched.probe_size = 4
    c.s2sched.window = 16
    c.s2sched.warmup_ratio = 0.1
    return c
