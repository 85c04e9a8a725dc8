"""TMoLE: Task-wise Mixture of Low-rank Experts on the attention projections.

Each adapted projection y = x W0 carries a bank of N low-rank experts A[N, d_in, r], B[N, r, d_out],
stacked over layers ([L, N, ...]) so the decoder can scan them with its base weights. A task embedding
(one table for the model) goes through one router per projection and layer; experts of the other kind
get -inf before the softmax, so embedding tasks never use generative experts and the reverse:

    y = x W0 + (alpha / r) * sum_j g_j(task) * (dropout(x) A_j) B_j

The gate depends only on the task, so for a fixed task the bank folds into one dense delta
(`folded_delta`). ``enabled=False`` gives one plain LoRA per projection (the paper's ablation).
Each projection draws its own dropout mask, as PEFT's LoRA modules do; ``dropout_shared_qkv`` draws one
for q, k and v, which read the same input. Banks under one mask run their A contractions as one
(`expert_deltas`): q, k and v always do when no dropout is drawn (evaluation, inference, rate 0).
Expert order in a bank: embedding experts, then shared, then generative (docs/method.md, "TMoLE").
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.extend.random import threefry2x32_p
from ml_collections import ConfigDict

from recfound_jax import config as config_lib
from recfound_jax.tasks import RELEASED, ROW_EMBEDDING, ROW_GENERATIVE, ROW_NONE

TARGETS = ("q", "k", "v", "o")

_EXPERT_EMBEDDING, _EXPERT_SHARED, _EXPERT_GENERATIVE = 0, 1, 2
# The call paths: encoding (bidirectional, pooled) and generation (causal). The released layer masks by
# path, so the "none" row (id 13) routes to the embedding experts when encoding, the generative ones when
# generating; every one of the 13 tasks has the same mask on either path here (its kind's).
PATHS = ("encoding", "generation")


@dataclasses.dataclass(frozen=True)
class TMoLEConfig:
    """Expert counts, rank and router shape: the ``tmole`` block of a run config (its keys, defaults and
    checks are in recfound_jax.config). The released layout is 3/0/3 with a linear router.

    ``dropout_rng``: how dropout masks are drawn (`dropout_keep_mask`). ``dropout_shared_qkv``: one mask for
    the q, k and v adapters (they read the same input). ``dropout_per_expert``: a mask for each expert, as the
    released layer draws them, instead of one for all the experts of a projection. ``targets``: the adapted
    projections, not a run key. ``row_kinds``: the kind of every row of the task-embedding table
    (`TaskTable.row_kinds`: the released table's 14 by default). ``added_experts``: experts of each kind
    of the ``added_rows`` tasks in a bank of their own (`TMoLE.added_banks`) that only those tasks route to.
    """

    enabled: bool
    num_embedding: int
    num_shared: int
    num_generative: int
    rank: int
    alpha: float
    dropout: float
    dropout_rng: str
    dropout_shared_qkv: bool
    dropout_per_expert: bool
    task_embedding_dim: int
    router_hidden: tuple[int, ...]
    targets: tuple[str, ...] = TARGETS
    row_kinds: tuple[int, ...] = RELEASED.row_kinds()
    added_experts: int = 0
    added_rows: tuple[int, ...] = ()

    def __post_init__(self):
        unknown = set(self.targets) - set(TARGETS)
        if unknown:
            raise ValueError(f"tmole.targets: unknown projections {sorted(unknown)}; valid: {TARGETS}")

    @classmethod
    def from_config(cls, t: ConfigDict, row_kinds: tuple[int, ...] | None = None,
                    added_experts: int = 0, added_rows: tuple[int, ...] = ()) -> TMoLEConfig:
        """The TMoLEConfig of a run config's checked ``tmole`` block (`for_run`: with its task table)."""
        return cls(enabled=t.enabled, num_embedding=t.num_embedding, num_shared=t.num_shared,
                   num_generative=t.num_generative, rank=t.rank, alpha=t.alpha, dropout=t.dropout,
                   dropout_rng=t.dropout_rng, dropout_shared_qkv=t.dropout_shared_qkv,
                   dropout_per_expert=t.dropout_per_expert, task_embedding_dim=t.task_embedding_dim,
                   router_hidden=tuple(t.router_hidden),
                   row_kinds=RELEASED.row_kinds() if row_kinds is None else tuple(row_kinds),
                   added_experts=added_experts if added_rows else 0, added_rows=tuple(added_rows))

    @classmethod
    def for_run(cls, c: ConfigDict) -> TMoLEConfig:
        """The TMoLEConfig of a whole run config: its ``tmole`` block, task table, and extend.new_experts for
        the tasks of `config.expert_tasks`."""
        rows = tuple(t.id for t in config_lib.expert_tasks(c)) if c.extend.new_experts else ()
        return cls.from_config(c.tmole, config_lib.task_table(c).row_kinds(), c.extend.new_experts, rows)

    @classmethod
    def default(cls, **overrides) -> TMoLEConfig:
        """The schema's ``tmole`` defaults with ``overrides`` (run-config keys), checked as a run config's."""
        return cls.from_config(config_lib.section_defaults("tmole", **overrides))

    @property
    def num_experts(self) -> int:
        return self.num_embedding + self.num_shared + self.num_generative if self.enabled else 1

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def expert_kinds(self) -> np.ndarray:
        """Kind of each expert in bank order: 0 embedding, 1 shared, 2 generative."""
        return np.array([_EXPERT_EMBEDDING] * self.num_embedding + [_EXPERT_SHARED] * self.num_shared
                        + [_EXPERT_GENERATIVE] * self.num_generative, dtype=np.int32)

    @property
    def table_rows(self) -> int:
        return len(self.row_kinds)

    def _row_kinds_on(self, path: str) -> np.ndarray:
        """[rows, 1]: each row's kind on ``path``; the "none" row takes the path's kind."""
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        kinds = np.asarray(self.row_kinds, np.int32)
        return np.where(kinds == ROW_NONE, PATHS.index(path), kinds)[:, None]

    def allowed_experts(self, path: str) -> np.ndarray:
        """Boolean [task table rows, N]: which experts each task may route to on ``path`` (`PATHS`)."""
        kinds = self.expert_kinds()[None, :]
        task_kind = self._row_kinds_on(path)
        return ((kinds == _EXPERT_SHARED)
                | ((kinds == _EXPERT_EMBEDDING) & (task_kind == ROW_EMBEDDING))
                | ((kinds == _EXPERT_GENERATIVE) & (task_kind == ROW_GENERATIVE)))

    def added_expert_kinds(self) -> np.ndarray:
        """Kind of each expert of the added banks: ``added_experts`` of each kind the ``added_rows`` tasks have."""
        kinds = sorted({self.row_kinds[row] for row in self.added_rows})
        return np.repeat(np.asarray(kinds, np.int32), self.added_experts)

    def allowed_added_experts(self) -> np.ndarray:
        """Boolean [task table rows, M]: only an ``added_rows`` task, and only to the added experts of its kind."""
        added = np.isin(np.arange(self.table_rows), self.added_rows)[:, None]
        return added & (np.asarray(self.row_kinds, np.int32)[:, None] == self.added_expert_kinds()[None, :])


def _kaiming_uniform_a(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    # torch's kaiming_uniform_(a=sqrt(5)) on a Linear weight: bound = 1 / sqrt(fan_in).
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class ExpertBank(nnx.Module):
    """The experts and router of one projection (q, k, v or o), stacked over layers: ``num_experts``
    of them (default: the config's bank)."""

    def __init__(self, cfg: TMoLEConfig, num_layers: int, d_in: int, d_out: int, *, rngs: nnx.Rngs,
                 num_experts: int | None = None):
        n, r = cfg.num_experts if num_experts is None else num_experts, cfg.rank
        self.a = nnx.Param(_kaiming_uniform_a(rngs.params(), (num_layers, n, d_in, r), d_in))
        self.b = nnx.Param(jnp.zeros((num_layers, n, r, d_out), jnp.float32))
        if cfg.enabled:
            dims = (cfg.task_embedding_dim, *cfg.router_hidden, n)
            self.router_w = nnx.List([
                nnx.Param(jax.random.normal(rngs.params(), (num_layers, d0, d1), jnp.float32))
                for d0, d1 in zip(dims[:-1], dims[1:])])
            self.router_b = nnx.List([nnx.Param(jnp.zeros((num_layers, d1), jnp.float32)) for d1 in dims[1:]])
        else:
            self.router_w = nnx.List([])
            self.router_b = nnx.List([])

    def router_logits(self, task_vectors: jax.Array) -> jax.Array:
        """Router logits [L, B, N] of task vectors [B, E]; hidden layers use GELU."""
        h = jnp.broadcast_to(task_vectors, (self.a.shape[0], *task_vectors.shape))
        depth = len(self.router_w)
        for i, (w, b) in enumerate(zip(self.router_w, self.router_b)):
            h = jnp.einsum("lbe,leh->lbh", h, w[...]) + b[...][:, None, :]
            if i < depth - 1:
                h = jax.nn.gelu(h)
        return h


class TMoLE(nnx.Module):
    """All adapter state of a model: the task embedding table and one expert bank per target projection,
    and with ``added_experts`` a second bank per projection for the ``added_rows`` tasks (`added_gates`)."""

    def __init__(self, cfg: TMoLEConfig, num_layers: int, dims: dict[str, tuple[int, int]], *, rngs: nnx.Rngs):
        self.cfg = cfg
        if cfg.enabled:
            self.task_embedding = nnx.Param(task_embedding_init(rngs.params(), cfg.table_rows, cfg.task_embedding_dim))
        self.banks = nnx.Dict({t: ExpertBank(cfg, num_layers, *dims[t], rngs=rngs) for t in cfg.targets})
        added = len(cfg.added_expert_kinds()) if cfg.enabled else 0
        self.added_banks = nnx.Dict({t: ExpertBank(cfg, num_layers, *dims[t], rngs=rngs, num_experts=added)
                                     for t in cfg.targets} if added else {})

    def gates(self, task_ids: jax.Array | None, path: str) -> dict[str, jax.Array]:
        """Per-sample gates {target: [L, B, N]} (float32) on call path ``path`` (`PATHS`: it decides the
        "none" row's experts); a plain LoRA gets all ones."""
        num_layers = next(iter(self.banks.values())).a.shape[0]
        if not self.cfg.enabled:
            batch = 1 if task_ids is None else task_ids.shape[0]
            return {t: jnp.ones((num_layers, batch, 1), jnp.float32) for t in self.banks}
        if task_ids is None:
            raise ValueError("a TMoLE model needs task_ids for every sample")
        vectors = self.task_embedding[...][task_ids]
        allowed = jnp.asarray(self.cfg.allowed_experts(path))[task_ids]  # [B, N]
        out = {}
        for name, bank in self.banks.items():
            logits = bank.router_logits(vectors)
            out[name] = jax.nn.softmax(jnp.where(allowed[None], logits, -jnp.inf), axis=-1)
        return out

    def added_gates(self, task_ids: jax.Array | None) -> dict[str, jax.Array]:
        """Per-sample gates {target: [L, B, M]} of the added banks: a softmax over the added experts of an
        ``added_rows`` task's kind, and exactly 0 for every other task (whose outputs the added banks leave
        as they were)."""
        if not self.added_banks:
            return {}
        vectors = self.task_embedding[...][task_ids]
        allowed = jnp.asarray(self.cfg.allowed_added_experts())[task_ids]  # [B, M]
        out = {}
        for name, bank in self.added_banks.items():
            logits = jnp.where(allowed[None], bank.router_logits(vectors), -jnp.inf)
            gates = jax.nn.softmax(jnp.where(allowed.any(-1)[None, :, None], logits, 0.0), axis=-1)
            out[name] = jnp.where(allowed[None], gates, 0.0)
        return out

    def task_experts(self, task_id: int, path: str) -> dict[str, tuple[jax.Array, jax.Array, jax.Array]]:
        """{target: (gate [L, n], a [L, n, d_in, r], b [L, n, r, d_out])}: the experts task ``task_id`` routes
        to on ``path``, from the bank and the added bank, with its gates (a plain LoRA: its one expert, gate 1)."""
        ids = jnp.array([task_id])
        gates, added_gates = self.gates(ids, path), self.added_gates(ids)
        used = self.cfg.allowed_experts(path)[task_id] if self.cfg.enabled else np.ones(1, bool)
        added_used = self.cfg.allowed_added_experts()[task_id] if self.added_banks else np.zeros(0, bool)
        out = {}
        for name, bank in self.banks.items():
            parts = [(gates[name][:, 0, used], bank.a[...][:, used], bank.b[...][:, used])]
            if added_used.any():
                extra = self.added_banks[name]
                parts.append((added_gates[name][:, 0, added_used], extra.a[...][:, added_used],
                              extra.b[...][:, added_used]))
            out[name] = tuple(jnp.concatenate(arrays, axis=1) for arrays in zip(*parts))
        return out


def task_embedding_init(key: jax.Array, rows: int, dim: int) -> jax.Array:
    """A task-embedding table [rows, dim], xavier normal as released."""
    return math.sqrt(2.0 / (rows + dim)) * jax.random.normal(key, (rows, dim), jnp.float32)


Bank = tuple[jax.Array, jax.Array, jax.Array]  # (gate [B, N], a [N, d_in, r], b [N, r, d_out])


def expert_deltas(
    x: jax.Array,
    banks: Sequence[Bank],
    *,
    scale: float,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
    dropout_rng: str = "threefry",
    per_expert: bool = False,
) -> list[jax.Array]:
    """Each gated bank's output for x [B, T, d_in]: (scale) sum_j gate[:, j] (dropout(x) A_j) B_j.

    The banks read the same input and the same dropout mask, so their A contractions run as one (one
    read of x, one wider GEMM), then one B contraction a bank; no loop over experts. With ``per_expert``
    each expert j of the banks (in order) gets a mask of its own, drawn as one [B, T, experts, d_in] mask,
    and the A contraction reads an expert's copy of x. Computed in x's dtype; adapters are cast to it.
    """
    gates, a, b = zip(*banks)
    a_all = jnp.concatenate([ai.astype(x.dtype) for ai in a])
    if dropout_key is None or dropout_rate <= 0.0:
        xa = jnp.einsum("btd,ndr->btnr", x, a_all)
    elif per_expert:
        copies = jnp.broadcast_to(x[:, :, None, :], (*x.shape[:2], a_all.shape[0], x.shape[-1]))
        xa = jnp.einsum("btnd,ndr->btnr", dropout(copies, dropout_key, dropout_rate, dropout_rng), a_all)
    else:
        xa = jnp.einsum("btd,ndr->btnr", dropout(x, dropout_key, dropout_rate, dropout_rng), a_all)
    xa = xa * (jnp.concatenate(gates, axis=-1).astype(x.dtype) * scale)[:, None, :, None]
    outputs, start = [], 0
    for bi in b:
        stop = start + bi.shape[0]
        outputs.append(jnp.einsum("btnr,nro->bto", xa[:, :, start:stop], bi.astype(x.dtype)))
        start = stop
    return outputs


def dropout(x: jax.Array, key: jax.Array, rate: float, rng: str = "threefry") -> jax.Array:
    """x with each element zeroed with probability ``rate`` (`dropout_keep_mask`) and the rest divided by
    the mask's `kept_fraction`, in x's dtype."""
    keep_prob = 1.0 - rate
    keep = dropout_keep_mask(key, keep_prob, x.shape, rng)
    return jnp.where(keep, x / kept_fraction(keep_prob, rng), 0).astype(x.dtype)


def dropout_keep_mask(key: jax.Array, keep_prob: float, shape: tuple[int, ...], rng: str = "threefry") -> jax.Array:
    """A Bernoulli(keep_prob) boolean mask of ``shape`` drawn from ``key`` (a default-implementation key).

    ``rng="threefry"``: JAX's default counter-based Threefry, the same bits under any sharding.
    ``rng="threefry16"``: the same Threefry hash, but each hash's 64 output bits make four 16-bit draws
    (``jax.random.bernoulli`` spends one hash on each element): a quarter of the hashing, and the keep
    probability rounded to a multiple of 2**-16 (`kept_fraction`).
    """
    if rng == "threefry16":
        return _threefry16_draws(key, shape) < _threshold16(keep_prob)
    return jax.random.bernoulli(key, keep_prob, shape)


def kept_fraction(keep_prob: float, rng: str = "threefry") -> float:
    """The probability with which ``dropout_keep_mask(..., keep_prob, ..., rng)`` keeps an element:
    dropout divides by it so the expectation is exact."""
    return _threshold16(keep_prob) / 2**16 if rng == "threefry16" else keep_prob


def _threshold16(keep_prob: float) -> int:
    return min(max(round(keep_prob * 2**16), 0), 2**16)


def _threefry16_draws(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform 16-bit integers (as uint32) of ``shape``, four from each Threefry-2x32 hash.

    The hashes run over a quarter of the last axis, counted by each word's flat index (so the draws are
    the same under any sharding), and pass an optimisation barrier: fused into the consumer, each
    output element would recompute its word's hash and save nothing.
    """
    *lead, n = shape
    words_shape = (*lead, -(-n // 4))
    if math.prod(words_shape) >= 2**32:
        raise ValueError(f"threefry16 dropout: {shape} needs more than 2**32 hashes")
    index = jnp.zeros(words_shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(words_shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, words_shape, axis) * jnp.uint32(stride)
        stride *= words_shape[axis]
    k1, k2 = jax.random.key_data(key).reshape(-1)[:2]
    high, low = jax.lax.optimization_barrier(threefry2x32_p.bind(k1, k2, jnp.zeros_like(index), index))
    draws = jnp.stack([high & 0xFFFF, high >> 16, low & 0xFFFF, low >> 16], axis=-1)
    return draws.reshape(*lead, -1)[..., :n]


def folded_delta(a: jax.Array, b: jax.Array, gate_row: jax.Array, scale: float) -> jax.Array:
    """One task's dense delta ΔW = scale * sum_j v_j A_j B_j: a [..., N, d_in, r], b [..., N, r, d_out],
    gate [..., N]."""
    return scale * jnp.einsum("...n,...ndr,...nro->...do", gate_row, a, b)
