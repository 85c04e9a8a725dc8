"""Q2I added to a trained `demo_without_q2i` run:

    python -m recfound_jax.train --config demo_extend_q2i --extend runs/demo_without_q2i --workdir runs/demo_q2i_frozen
    ... --config.extend.mode=replay --workdir runs/demo_q2i_replay

``frozen`` trains Q2I's task-embedding row alone (the other 12 tasks' outputs stay bit-identical);
``replay`` trains every adapter on Q2I and a quarter of the other tasks' rows. Results: docs/results.md.
"""
from recfound_jax import recipes


def get_config():
    c = recipes.load("demo")
    c.name = "demo_extend_q2i"
    c.data.tasks = ""  # all 13: the 12 of the extended run and Q2I
    c.extend.mode = "frozen"
    c.extend.init = "mean"
    c.extend.replay_fraction = 0.25
    c.train.steps = 100
    c.train.checkpoint_every = 50
    return c
