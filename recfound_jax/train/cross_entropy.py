"""The generative branch's loss: token-mean cross-entropy over answer tokens (prompt and padding carry none),
with LM-head logits only where an answer token is predicted."""
from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE = -100  # label of tokens that carry no loss


def per_sample_cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-sample (sum of next-token losses [B], labelled-token count [B]) of the logits [B, T - 1, V] of
    every position but the last; labels [B, T] aligned with inputs. (Slicing the hidden states before the
    LM head, not the logits after it, keeps a full-size float32 slice and its padded gradient away.)"""
    targets = labels[:, 1:]
    return target_cross_entropy(logits, targets, targets != IGNORE)


def target_cross_entropy(logits: jax.Array, targets: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-sample (sum of losses, count) of logits [B, K, V] against targets [B, K] where valid."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    losses = jnp.where(valid, log_z - picked, 0.0)
    return losses.sum(-1), valid.sum(-1).astype(jnp.float32)


def answer_positions(labels: jax.Array, budget: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The first ``budget`` labelled next-token positions of each row: (positions, targets, valid), each [B, K].

    Only these positions need LM-head logits: answers are short next to prompts, and the full-vocabulary
    projection of every position dominates a step. With ``budget`` at least the longest answer of the
    data (the trainer computes it), no label is ever dropped.
    """
    targets = labels[:, 1:]
    valid = targets != IGNORE
    budget = min(budget, targets.shape[1])
    positions = jnp.argsort(~valid, axis=1, stable=True)[:, :budget]
    return (positions, jnp.take_along_axis(targets, positions, axis=1),
            jnp.take_along_axis(valid, positions, axis=1))


def answer_cross_entropy(model, batch: dict[str, jax.Array], budget: int,
                         dropout_key=None) -> tuple[jax.Array, jax.Array]:
    """Per-sample (sum of answer-token losses, count), with LM-head logits only at answer positions."""
    hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"], task_ids=batch["task_ids"],
                                 causal=True, dropout_key=dropout_key)
    if budget <= 0:
        return per_sample_cross_entropy(model.logits(hidden[:, :-1]), batch["labels"])
    positions, targets, valid = answer_positions(batch["labels"], budget)
    return target_cross_entropy(model.logits_at(hidden, positions), targets, valid)
