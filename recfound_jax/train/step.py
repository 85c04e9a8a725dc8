"""The jitted joint train step: InfoNCE on the embedding batch (optionally GradCache'd) plus token
cross-entropy on the generative batch, one AdamW update of the adapters, routers and task embedding.

The model is split once into (graphdef, trainable params, frozen base); the step is a pure function
of (TrainState, base, batches, key), so it jits with in/out shardings and a donated state. The base
is an input, never an output: it cannot be updated.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from ml_collections import ConfigDict

from recfound_jax.inference import encoding
from recfound_jax.train import cross_entropy, gradcache, infonce

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What the step computes: InfoNCE temperature, GradCache chunk (queries; 0 = one ordinary backward
    over the batch), generative micro-batch (samples; 0 = the whole batch), and the LM-head positions per
    row (>= the longest answer; 0 = every position)."""

    temperature: float
    gradcache_chunk: int
    generative_micro_batch: int
    answer_budget: int

    @classmethod
    def from_config(cls, c: ConfigDict, *, answer_budget: int) -> StepOptions:
        """The options of a checked run config; ``answer_budget`` comes from the data (`trainer.answer_budget`)."""
        return cls(temperature=c.train.temperature, gradcache_chunk=c.train.gradcache_chunk,
                   generative_micro_batch=c.train.generative_micro_batch, answer_budget=answer_budget)


@dataclasses.dataclass
class ModelParts:
    """A model split into its static graph, trainable params (nnx.Param) and frozen base."""

    graphdef: Any
    params: nnx.State
    base: nnx.State

    @classmethod
    def of(cls, model: nnx.Module) -> ModelParts:
        graphdef, params, base = nnx.split(model, nnx.Param, ...)
        return cls(graphdef, params, base)

    def merge(self, params: nnx.State | None = None, base: nnx.State | None = None) -> nnx.Module:
        """The model with the given (or the stored) params and base."""
        return nnx.merge(self.graphdef, self.params if params is None else params,
                         self.base if base is None else base)


def learning_rate_schedule(*, learning_rate: float, total_steps: int, warmup_ratio: float) -> optax.Schedule:
    """Linear warmup over warmup_ratio of the steps, then linear decay to 0."""
    warmup = max(int(round(total_steps * warmup_ratio)), 0)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, max(warmup, 1)),
         optax.linear_schedule(learning_rate, 0.0, max(total_steps - warmup, 1))], [warmup])


def make_optimizer(*, learning_rate: float, total_steps: int, warmup_ratio: float, weight_decay: float,
                   grad_clip: float) -> optax.GradientTransformation:
    """AdamW on `learning_rate_schedule`, after global-norm clipping."""
    schedule = learning_rate_schedule(learning_rate=learning_rate, total_steps=total_steps,
                                      warmup_ratio=warmup_ratio)
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    return optax.chain(*parts, optax.adamw(schedule, weight_decay=weight_decay))


def init_train_state(params: nnx.State, optimizer: optax.GradientTransformation) -> dict[str, Any]:
    """{"params", "opt_state", "step"}: everything the update changes."""
    return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}


def _embed(parts: ModelParts, params, base, ids, mask, pool_mask, task_ids, key) -> jax.Array:
    model = parts.merge(params, base)
    hidden = model.hidden_states(ids, mask, task_ids=task_ids, causal=False, dropout_key=key)
    return encoding.mean_pool(hidden, pool_mask)


def _passage_valid(batch: Batch) -> jax.Array | None:
    if "negative_mask" not in batch:
        return None
    ones = jnp.ones_like(batch["negative_mask"])
    return jnp.stack([ones, batch["negative_mask"]], axis=1).reshape(-1)


def _reps(parts, params, base, batch, key):
    """Pooled query [B, D] and passage [P, D] representations; passages carry their query's task."""
    kq, kp = (None, None) if key is None else jax.random.split(key)
    tasks = batch["task_ids"]
    passage_tasks = jnp.repeat(tasks, batch["passage_ids"].shape[0] // tasks.shape[0])
    q = _embed(parts, params, base, batch["query_ids"], batch["query_mask"], batch["query_pool_mask"], tasks, kq)
    p = _embed(parts, params, base, batch["passage_ids"], batch["passage_mask"], batch["passage_pool_mask"],
               passage_tasks, kp)
    return q, p


def embedding_loss_and_grads(parts: ModelParts, params, base, batch: Batch, key, opts: StepOptions):
    """InfoNCE and its gradient wrt params; with GradCache when opts.gradcache_chunk divides the batch."""
    size = batch["query_ids"].shape[0]
    valid = _passage_valid(batch)
    chunk = opts.gradcache_chunk
    if chunk <= 0 or chunk >= size:
        def loss_fn(p):
            q, ps = _reps(parts, p, base, batch, key)
            return infonce.info_nce(q, ps, opts.temperature, valid)

        return jax.value_and_grad(loss_fn)(params)
    if size % chunk:
        raise ValueError(f"train.gradcache_chunk={chunk} does not divide the embedding batch of {size}")
    return gradcache.loss_and_grads(lambda p, c, k: _reps(parts, p, base, c, k),
                                    lambda q, p: infonce.info_nce(q, p, opts.temperature, valid),
                                    params, batch, key, chunk)


def generative_loss_and_grads(parts: ModelParts, params, base, batch: Batch, key, opts: StepOptions):
    """Token-mean cross-entropy over answer tokens and its gradient, accumulated over micro-batches."""
    size = batch["input_ids"].shape[0]
    micro = opts.generative_micro_batch if 0 < opts.generative_micro_batch < size else size
    if size % micro:
        raise ValueError(f"train.generative_micro_batch={micro} does not divide the generative batch of {size}")
    n = size // micro
    chunks = {k: v.reshape(n, micro, *v.shape[1:]) for k, v in batch.items()}
    keys = jax.random.split(key, n)

    def summed(p, c, k):
        sums, counts = cross_entropy.answer_cross_entropy(parts.merge(p, base), c, opts.answer_budget, k)
        return sums.sum(), counts.sum()

    def accumulate(acc, x):
        c, k = x
        (total, count), grads = jax.value_and_grad(summed, has_aux=True)(params, c, k)
        return jax.tree.map(jnp.add, acc, (total, count, grads)), None

    zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
    (total, count, grads), _ = jax.lax.scan(accumulate, zeros, (chunks, keys))
    count = jnp.maximum(count, 1.0)
    return total / count, jax.tree.map(lambda g: g / count, grads)


def make_train_step(parts: ModelParts, optimizer: optax.GradientTransformation, opts: StepOptions,
                    trainable: Any | None = None) -> Callable:
    """step(state, base, emb_batch, gen_batch, key) -> (state, metrics). Jit it (donating state).

    A step whose loss, gradient norm or updated params are not finite leaves params and optimizer
    state unchanged and reports ``finite = 0``, so no state (and no checkpoint) ever holds NaN or Inf.
    ``trainable``: a tree like the params of 0/1 factors (`recfound_jax.train.extend.trainable_mask`) on
    the gradient and the update, so a frozen part gets neither (weight decay included) and keeps its
    exact value.
    """
    masked = (lambda tree: tree) if trainable is None else (  # noqa: E731
        lambda tree: jax.tree.map(lambda x, m: x * m.astype(x.dtype), tree, trainable))

    def step(state, base, emb_batch: Batch | None, gen_batch: Batch | None, key):
        params = state["params"]
        key = jax.random.fold_in(key, state["step"])
        k_emb, k_gen = jax.random.split(key)
        zero = jax.tree.map(jnp.zeros_like, params)
        loss_emb, grads_emb = (jnp.zeros(()), zero) if emb_batch is None else \
            embedding_loss_and_grads(parts, params, base, emb_batch, k_emb, opts)
        loss_gen, grads_gen = (jnp.zeros(()), zero) if gen_batch is None else \
            generative_loss_and_grads(parts, params, base, gen_batch, k_gen, opts)
        grads = masked(jax.tree.map(jnp.add, grads_emb, grads_gen))
        loss = loss_emb + loss_gen
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, masked(updates))
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(new_params))
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new_state = {"params": jax.tree.map(keep, new_params, params),
                     "opt_state": jax.tree.map(keep, opt_state, state["opt_state"]),
                     "step": state["step"] + 1}
        metrics = {"loss": loss, "loss_emb": loss_emb, "loss_gen": loss_gen, "grad_norm": grad_norm,
                   "finite": finite.astype(jnp.int32)}
        return new_state, metrics

    return step


def make_probe_fn(parts: ModelParts, num_embedding_tasks: int, num_generative_tasks: int,
                  temperature: float, answer_budget: int = 0, *, embedding_chunk: int = 0,
                  generative_chunk: int = 0) -> Callable:
    """probe(params, base, emb_batch, gen_batch) -> (per-task InfoNCE [n_emb], per-task token CE [n_gen]).

    Eval mode (no dropout). Embedding probe losses are InfoNCE among the probe samples of the same task;
    ``task_index`` in each batch gives a sample's position in its branch's task list. The forwards run
    ``embedding_chunk`` queries (with their passages) and ``generative_chunk`` rows at a time (the train
    step's GradCache chunk and micro-batch: a 128-a-task probe of the 7B recipe does not fit in one
    forward); the losses are the same. A chunk that does not divide its batch is refused, as the step does
    (`recfound_jax.config.validate` names s2sched.probe_size before anything compiles).
    """
    def per_task_mean(values, weights, index, n):
        sums = jax.ops.segment_sum(values, index, num_segments=n)
        counts = jax.ops.segment_sum(weights, index, num_segments=n)
        return sums / jnp.maximum(counts, 1e-9)

    def embedding_reps(params, base, batch):
        size = batch["query_ids"].shape[0]
        if not 0 < embedding_chunk < size:
            return _reps(parts, params, base, batch, None)
        if size % embedding_chunk:
            raise ValueError(f"train.gradcache_chunk={embedding_chunk} does not divide the probe's {size} queries")
        q, p = jax.lax.map(lambda c: _reps(parts, params, base, c, None), gradcache.chunked(batch, embedding_chunk))
        return q.reshape(-1, q.shape[-1]), p.reshape(-1, p.shape[-1])

    def answer_losses(params, base, batch):
        size = batch["input_ids"].shape[0]
        keys = ("input_ids", "attention_mask", "labels", "task_ids")
        if not 0 < generative_chunk < size:
            return cross_entropy.answer_cross_entropy(parts.merge(params, base), batch, answer_budget)
        if size % generative_chunk:
            raise ValueError(f"train.generative_micro_batch={generative_chunk} does not divide the probe's {size} rows")
        chunks = {k: batch[k].reshape(size // generative_chunk, generative_chunk, *batch[k].shape[1:]) for k in keys}
        sums, counts = jax.lax.map(
            lambda c: cross_entropy.answer_cross_entropy(parts.merge(params, base), c, answer_budget), chunks)
        return sums.reshape(-1), counts.reshape(-1)

    def probe(params, base, emb_batch, gen_batch):
        emb_losses = jnp.zeros((num_embedding_tasks,))
        if emb_batch is not None:
            q, p = embedding_reps(params, base, emb_batch)
            index = emb_batch["task_index"]
            same_task = index[:, None] == jnp.repeat(index, p.shape[0] // q.shape[0])[None, :]
            valid = _passage_valid(emb_batch)
            if valid is not None:
                same_task &= valid[None, :] > 0
            nll = infonce.info_nce_per_query(q, p, temperature, same_task)
            emb_losses = per_task_mean(nll, jnp.ones_like(nll), index, num_embedding_tasks)
        gen_losses = jnp.zeros((num_generative_tasks,))
        if gen_batch is not None:
            sums, counts = answer_losses(params, base, gen_batch)
            gen_losses = per_task_mean(sums, counts, gen_batch["task_index"], num_generative_tasks)
        return emb_losses, gen_losses

    return probe
