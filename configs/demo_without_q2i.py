"""The demo without Q2I: the run that `demo_extend_q2i` extends with it (docs/your_logs.md, "Adding a task")."""
from recfound_jax import recipes


def get_config():
    c = recipes.load("demo")
    c.name = "demo_without_q2i"
    c.data.tasks = "U2I,I2I,QR,SR,PRP,SA,AVE,PM,UP,IP,AP,AG"
    return c
