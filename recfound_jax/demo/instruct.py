"""The demo base's instruction stage: every weight trained on the answer tokens of generative task rows.

A base such as Mistral-7B comes to RecFound already able to compare two texts. The demo's tiny base,
pretrained on a small synthetic corpus, cannot, and its rank-16 attention adapters do not learn such a
comparison from the few rows a finetuning step gives a task (docs/results.md). This stage gives the
base that ability the way instruction tuning gives it to an LLM: full-weight training on the
cross-entropy of the answer tokens (EOS included) of rows in the finetuning's own GritLM format, drawn
from the train side of the synthetic world (`synthetic.extra_train_rows`), never from a valid or test user,
and without any row whose input (a product pair, a review, a listing) is a valid or test row's input.

Only the answer tokens reach the LM head: a batch's answer positions are flattened into one index over its
[rows x tokens] grid and their hidden states gathered, so a step pays the vocabulary-wide head for the answer
tokens it holds (a one-letter answer: 2, an AVE answer: up to ~40), not for every token nor for padding
every row to the longest answer. Every step holds each task's fixed share of rows (`batch_shares`), each
task's rows in a grid of their own length, so the shapes are the same each step and the step compiles once.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from recfound_jax.data.batching import largest_remainder
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

    def take(self, index: np.ndarray) -> AnswerRows:
        """The rows at ``index``."""
        return AnswerRows(*(a[index] for a in dataclasses.astuple(self)))

    def batch(self, index: np.ndarray) -> AnswerBatch:
        """The rows at ``index`` as an `AnswerBatch`: every row's K slots, empty ones included (weight 0)."""
        rows = self.take(index)
        row_starts = np.arange(len(rows), dtype=np.int32)[:, None] * rows.ids.shape[1]
        return AnswerBatch(rows.ids, rows.mask, (rows.positions + row_starts).reshape(-1),
                           rows.targets.reshape(-1), rows.weights.reshape(-1))


@dataclasses.dataclass(frozen=True)
class AnswerBatch:
    """Rows of one step with their answer slots flattened: ``index`` points into the [B * T] token grid."""

    ids: np.ndarray  # [B, T] int32
    mask: np.ndarray  # [B, T] int32
    index: np.ndarray  # [N] int32: row * T + p, where position p of the row predicts the token at p + 1
    targets: np.ndarray  # [N] int32
    weights: np.ndarray  # [N] float32: 1 on answer tokens, 0 on empty slots

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


def answer_logits(model: Mistral, ids: jax.Array, mask: jax.Array, index: jax.Array) -> jax.Array:
    """Logits [N, vocab] (float32) at the flat answer positions ``index`` of the [B * T] grid: the LM head runs
    there only."""
    hidden = model.hidden_states(ids, mask)
    return model.logits_at(hidden.reshape(1, -1, hidden.shape[-1]), index[None])[0]


def _summed_answer_loss(model: Mistral, ids: jax.Array, mask: jax.Array, index: jax.Array, targets: jax.Array,
                        weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(summed cross-entropy, number) of the answer tokens of one batch."""
    losses = optax.softmax_cross_entropy_with_integer_labels(answer_logits(model, ids, mask, index), targets)
    return (losses * weights).sum(), weights.sum()


def answer_loss(model: Mistral, ids: jax.Array, mask: jax.Array, index: jax.Array, targets: jax.Array,
                weights: jax.Array) -> jax.Array:
    """Mean cross-entropy over the answer tokens of the batch (every token weighs the same)."""
    total, count = _summed_answer_loss(model, ids, mask, index, targets, weights)
    return total / jnp.maximum(count, 1.0)


def parts_answer_loss(model: Mistral, parts: Sequence[tuple[jax.Array, ...]]) -> jax.Array:
    """Mean cross-entropy over the answer tokens of every part of a step (`batches`): each task's rows in a
    grid of their own length, every token of every part weighing the same."""
    sums = [_summed_answer_loss(model, *part) for part in parts]
    return sum(total for total, _ in sums) / jnp.maximum(sum(count for _, count in sums), 1.0)


def make_eval_fn(graphdef: nnx.GraphDef, rest: nnx.State) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """A jitted (params, ids, mask, index, targets) -> (slot losses [N], argmax over the vocabulary [N])."""
    def evaluate(params, ids, mask, index, targets):
        logits = answer_logits(nnx.merge(graphdef, params, rest), ids, mask, index)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets), logits.argmax(-1)

    return jax.jit(evaluate)


def held_out(eval_fn: Callable, params: nnx.State, rows: AnswerRows, batch_size: int) -> dict[str, float]:
    """Held-out scores of ``rows``: mean answer-token loss, first-answer-token accuracy and answer accuracy.

    Accuracy is the argmax over the whole vocabulary given the true tokens before it; a row's answer is
    right when every one of its tokens (EOS included) is, which is when greedy decoding writes it exactly.
    Rows go in batches of ``batch_size``; the last batch is filled with copies of row 0 and those are dropped.
    """
    slots = rows.targets.shape[1]
    slot_losses, hits = [], []
    for start in range(0, len(rows), batch_size):
        index = np.arange(start, start + batch_size)
        index[index >= len(rows)] = 0
        losses, argmax = eval_fn(params, *rows.batch(index).device()[:4])
        keep = min(batch_size, len(rows) - start)
        slot_losses.append(np.asarray(losses).reshape(batch_size, slots)[:keep])
        hits.append(np.asarray(argmax).reshape(batch_size, slots)[:keep] == rows.targets[start:start + keep])
    losses, hit = np.concatenate(slot_losses), np.concatenate(hits)
    return {"loss": float((losses * rows.weights).sum() / rows.weights.sum()),
            "first_token_accuracy": float(hit[:, 0].mean()),
            "answer_accuracy": float((hit | (rows.weights == 0)).all(-1).mean())}


def batch_shares(sizes: dict[str, int], batch_size: int) -> dict[str, int]:
    """Rows of each task in every batch: ``batch_size`` split in proportion to ``sizes``, at least one row a task.

    Largest remainder: each task gets the floor of its exact share (at least 1), the rows left over go to
    the largest fractions.
    """
    if batch_size < len(sizes):
        raise ValueError(f"a batch of {batch_size} rows cannot hold one row of each of {len(sizes)} tasks")
    total = sum(sizes.values())
    exact = [batch_size * n / total for n in sizes.values()]
    return dict(zip(sizes, largest_remainder(exact, batch_size, minimum=1).tolist()))


def _endless_order(n: int, rng: np.random.Generator) -> Iterator[int]:
    while True:
        yield from rng.permutation(n)


def batches(rows: dict[str, AnswerRows], batch_size: int, seed: int) -> Iterator[tuple[tuple[jax.Array, ...], ...]]:
    """Endless steps: for each task in order, its `batch_shares` of rows as an `AnswerBatch.device` tuple.

    Each task keeps its rows' own length, so a step pads no task to another's longest row (the shapes are
    the same every step: one compile). Each task's rows are drawn in a new random order every pass over
    them, independently of the other tasks. `parts_answer_loss` takes a step.
    """
    shares = batch_shares({task: len(r) for task, r in rows.items()}, batch_size)
    rng = np.random.default_rng(seed)
    orders = {task: _endless_order(len(r), rng) for task, r in rows.items()}
    while True:
        yield tuple(rows[task].batch(np.fromiter(itertools.islice(orders[task], shares[task]), np.int64)).device()
                    for task in rows)
