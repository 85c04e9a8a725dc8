"""The demo base's instruction stage: every weight trained on the answer tokens of generative task rows.

A base such as Mistral-7B comes to RecFound already able to compare two texts. The demo's tiny base,
pretrained on 263k tokens, cannot, and its rank-16 attention adapters do not learn such a comparison
from the few rows a finetuning step gives a task (README, "The demo's results"). This stage gives the
base that ability the way instruction tuning gives it to an LLM: full-weight training on the
cross-entropy of the answer tokens (EOS included) of rows in the finetuning's own GritLM format, drawn
from the train side of the synthetic world (`synthetic.extra_train_rows`), never from a valid or test user.

Only the answer positions reach the LM head (their hidden states are gathered first), so a step costs the
decoder's forward and backward over the rows and a few LM-head rows, not the 32768-wide head at every token.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from recfound_jax.data.formatting import IGNORE_INDEX, Formatter
from recfound_jax.model.mistral import Mistral
from recfound_jax.tokenizer import Tokenizer

Pair = tuple[str, str]  # (prompt, answer)


@dataclasses.dataclass(frozen=True)
class AnswerRows:
    """Tokenized rows, right-padded to one length, with the positions whose logits predict each answer token."""

    ids: np.ndarray  # [n, T] int32, 0 after the row
    mask: np.ndarray  # [n, T] int32, 1 on the row's tokens
    positions: np.ndarray  # [n, K] int32: position p predicts the token at p + 1
    targets: np.ndarray  # [n, K] int32: the answer tokens and EOS, 0 on empty slots
    weights: np.ndarray  # [n, K] float32: 1 on answer slots, 0 on empty ones

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> "AnswerRows":
        """The rows at ``index``."""
        return AnswerRows(*(a[index] for a in dataclasses.astuple(self)))

    def device(self) -> tuple[jax.Array, ...]:
        """The arrays as device arrays, in field order."""
        return tuple(jnp.asarray(a) for a in dataclasses.astuple(self))


def encode_rows(tokenizer: Tokenizer, pairs: Sequence[Pair], length: int | None = None, slots: int | None = None,
                multiple: int = 8) -> AnswerRows:
    """(prompt, answer) pairs in the GritLM generative format, padded to ``length`` tokens and ``slots`` answer slots.

    By default both fit every pair: the longest row rounded up to ``multiple``, the most answer tokens.
    Raises ValueError naming the first row that does not fit a given size (no row is cut here).
    """
    encoded = Formatter(tokenizer).generative_many([[pair] for pair in pairs])
    answers = [[p for p, label in enumerate(labels) if label != IGNORE_INDEX] for _, labels in encoded]
    if length is None:
        length = -(-max(len(ids) for ids, _ in encoded) // multiple) * multiple
    if slots is None:
        slots = max(len(at) for at in answers)
    n = len(encoded)
    out = AnswerRows(np.zeros((n, length), np.int32), np.zeros((n, length), np.int32),
                     np.zeros((n, slots), np.int32), np.zeros((n, slots), np.int32), np.zeros((n, slots), np.float32))
    for i, ((ids, _), answer_at) in enumerate(zip(encoded, answers)):
        if len(ids) > length or len(answer_at) > slots:
            raise ValueError(f"row {i} has {len(ids)} tokens and {len(answer_at)} answer tokens, more than "
                             f"length={length} / slots={slots}")
        out.ids[i, :len(ids)] = ids
        out.mask[i, :len(ids)] = 1
        out.positions[i, :len(answer_at)] = np.asarray(answer_at) - 1
        out.targets[i, :len(answer_at)] = [ids[p] for p in answer_at]
        out.weights[i, :len(answer_at)] = 1.0
    return out


def answer_logits(model: Mistral, ids: jax.Array, mask: jax.Array, positions: jax.Array) -> jax.Array:
    """Logits [B, K, vocab] (float32) at the answer positions: the LM head is applied there only."""
    hidden = model.hidden_states(ids, mask)
    return model.logits(jnp.take_along_axis(hidden, positions[..., None], axis=1))


def answer_loss(model: Mistral, ids: jax.Array, mask: jax.Array, positions: jax.Array, targets: jax.Array,
                weights: jax.Array) -> jax.Array:
    """Mean cross-entropy over the answer tokens of the batch (every token weighs the same)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(answer_logits(model, ids, mask, positions), targets)
    return (losses * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def make_eval_fn(graphdef: nnx.GraphDef, rest: nnx.State) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """A jitted (params, ids, mask, positions, targets) -> (slot losses [B, K], first slot's argmax [B])."""
    def evaluate(params, ids, mask, positions, targets):
        logits = answer_logits(nnx.merge(graphdef, params, rest), ids, mask, positions)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets), logits[:, 0].argmax(-1)

    return jax.jit(evaluate)


def held_out(eval_fn: Callable, params: nnx.State, rows: AnswerRows, batch_size: int) -> dict[str, float]:
    """Mean answer-token loss and first-answer-token accuracy (argmax over the whole vocabulary) of ``rows``.

    Rows go in batches of ``batch_size``; the last batch is filled with copies of row 0 and those are dropped.
    """
    slot_losses, firsts = [], []
    for start in range(0, len(rows), batch_size):
        index = np.arange(start, start + batch_size)
        index[index >= len(rows)] = 0
        batch = rows.take(index)
        losses, first = eval_fn(params, *batch.device()[:4])
        keep = min(batch_size, len(rows) - start)
        slot_losses.append(np.asarray(losses)[:keep])
        firsts.append(np.asarray(first)[:keep])
    losses, first = np.concatenate(slot_losses), np.concatenate(firsts)
    return {"loss": float((losses * rows.weights).sum() / rows.weights.sum()),
            "first_token_accuracy": float((first == rows.targets[:, 0]).mean())}


def batches(rows: AnswerRows, batch_size: int, seed: int) -> Iterator[tuple[jax.Array, ...]]:
    """Endless batches of ``rows`` (`AnswerRows.device` tuples); every epoch visits the rows in a new order."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(rows))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield rows.take(order[start:start + batch_size]).device()
