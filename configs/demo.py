"""The embedded demo: RecFound on the synthetic dataset, from a tiny base pretrained by recfound_jax.demo.pretrain.

Nothing is downloaded: the base (configs/demo_base.py, with its own 2,048-piece vocabulary) and the
dataset are built once under $RECFOUND_CACHE (default ~/.cache/recfound_jax) and reused, so later runs
only finetune. The first run takes under 10 minutes on 2 CPU cores. Batch sizes and the step count were
chosen on the valid split within that budget; timings, the profile behind them and the scores:
docs/results.md.
"""
from recfound_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "demo"
    c.model.base = "demo"
    c.data.dir = "synthetic"
    # the synthetic data's longest texts in the demo base's vocabulary (seed 0): query with its instruction 52
    # tokens, passage 35, generative row 145
    c.data.query_len = 56
    c.data.passage_len = 40
    c.data.generative_len = 152
    c.tmole.rank = 16
    c.tmole.alpha = 32.0
    c.tmole.task_embedding_dim = 64
    c.tmole.dropout_rng = "threefry16"
    c.tmole.dropout_shared_qkv = True
    c.train.steps = 300
    c.train.embedding_batch = 8
    c.train.generative_batch = 28
    c.train.learning_rate = 3e-3
    c.train.warmup_ratio = 0.05
    c.train.checkpoint_every = 100
    c.s2sched.probe_size = 4
    c.s2sched.window = 16
    c.s2sched.update_every = 2  # the probe forward every other step: on the CPU it costs a third of a step
    c.s2sched.warmup_ratio = 0.1
    # answers in the demo vocabulary: a yes/no or letter may take two pieces before the EOS; the profiles
    # and documents' answers are under 100 tokens
    for short in ("SR", "PRP", "PM", "SA", "AP"):
        c.eval.max_new_tokens[short] = 4
    for short in ("UP", "IP", "AG"):
        c.eval.max_new_tokens[short] = 128
    return c
