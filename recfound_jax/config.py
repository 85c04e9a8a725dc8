"""The schema: every key of a run (and of the demo base's recipe) with its default, and every check,
made before anything compiles.

Config files under configs/ define ``get_config()`` that starts from `base_config()` (the demo base:
`demo_base_config()`) and changes values; the dict is locked, so a misspelt key fails at once with its
name, in the file or on the command line (``--config.train.steps=10``). `validate` and
`validate_demo_base` raise a `ConfigError` naming ``config.<key>``. The typed options of the code below
(``TMoLEConfig``, ``S2SchedConfig``, ``StepOptions``, ``BatchConfig``) are mapped from a checked config
by one ``from_config`` each and carry no defaults or checks of their own.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
from ml_collections import config_dict

from recfound_jax import jsonio, parallel, recipes
from recfound_jax import tasks as tasks_lib
from recfound_jax.tasks import GENERATIVE_TASKS, RELEASED_MAX_NEW_TOKENS, Task, TaskTable
from recfound_jax.tokenizer import Tokenizer

DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots_saveable", "save_attention_out")
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")
DROPOUT_RNGS = ("threefry", "threefry16")  # how adapter dropout masks are drawn: model.tmole.dropout_keep_mask
DECAYS = ("cosine", "linear")  # the demo base's learning-rate decays
PROBE_SAMPLING = ("fixed", "fresh")  # S2Sched's validation probes: one set, or drawn anew each time
DEMO_TOKENIZERS = ("demo", "mistral_v3")  # the demo base's vocabulary: recfound_jax.demo.vocabulary, or the v3 file
DEMO_MIN_VOCAB = 512  # a demo vocabulary's 256 byte pieces, 3 ids, 3 GritLM markers, and room for words
# keys whose value maps names the schema does not fix (task -> rows)
FREE_MAPPINGS = ("instruct.rows", "instruct.first.rows")


def base_config() -> ml_collections.ConfigDict:
    """Every key of a run with its default (the demo's sizes; configs/ override them)."""
    c = ml_collections.ConfigDict()
    c.name = "run"
    c.seed = 0
    # tasks beyond the released 13, each a dict of name, short, kind ("embedding" or "generative"), metric
    # (recfound_jax.tasks.METRICS), and for a generative task max_new_tokens (and classes for macro_f1); they
    # get ids 14, 15, ... in this order, and rows of their own in the task-embedding table (docs/your_logs.md)
    c.added_tasks = ()

    c.model = ml_collections.ConfigDict()
    c.model.base = "demo"  # a HF Mistral directory, or "demo": the tiny base built by recfound_jax.demo.pretrain
    c.model.base_recipe = "demo_base"  # the recipe (name or path) of that demo base, when model.base is "demo"
    c.model.param_dtype = "float32"
    c.model.compute_dtype = "float32"
    c.model.remat = "none"
    c.model.attention = "xla"

    c.tmole = ml_collections.ConfigDict()
    c.tmole.enabled = True
    c.tmole.num_embedding = 2
    c.tmole.num_shared = 2
    c.tmole.num_generative = 2
    c.tmole.rank = 16
    c.tmole.alpha = 64.0
    c.tmole.dropout = 0.1
    c.tmole.dropout_rng = "threefry"  # or "threefry16": a quarter of the hashing (tmole.dropout_keep_mask)
    c.tmole.dropout_shared_qkv = False  # True: one dropout mask for the q, k and v adapters (one A contraction)
    c.tmole.dropout_per_expert = False  # True: a mask for each expert, as released (docs/method.md, "Departures")
    c.tmole.task_embedding_dim = 512
    c.tmole.router_hidden = ()

    c.data = ml_collections.ConfigDict()
    # a folder of the released JSONL layout, a DatasetDict's save_to_disk folder, or parquet files of the same rows
    # (recfound_jax/data/sources.py); or "synthetic": generated on first use
    c.data.dir = "synthetic"
    c.data.synthetic_scale = 1
    c.data.synthetic_seed = 0
    c.data.on_error = "raise"  # or "skip": bad rows are skipped and counted per reason
    # the tasks the run trains, evaluates and schedules: short names, comma-separated ("U2I,SR,I2I" for a
    # dataset of `recfound_jax.data.from_logs`); empty: every task of the table (the 13 and added_tasks).
    # Rows of other tasks in data.dir are not read.
    c.data.tasks = ""
    c.data.query_len = 72
    c.data.passage_len = 48
    c.data.generative_len = 176
    c.data.num_proc = 1  # processes that tokenize the splits (datasets.Dataset.map); results do not depend on it

    c.train = ml_collections.ConfigDict()
    # steps 0: as many as train.epochs passes over the train split take, an epoch counted as the released
    # trainer does (`recfound_jax.train.inputs.total_steps`); a positive count overrides the epochs
    c.train.steps = 0
    c.train.epochs = 3.0
    c.train.embedding_batch = 24
    c.train.generative_batch = 20
    c.train.learning_rate = 1e-3
    c.train.warmup_ratio = 0.03
    c.train.weight_decay = 0.0
    c.train.grad_clip = 1.0
    c.train.temperature = 0.02
    c.train.gradcache_chunk = 0  # queries per GradCache chunk; 0 = plain backward
    c.train.generative_micro_batch = 0  # 0 = the whole generative batch at once
    c.train.log_every = 1
    c.train.checkpoint_every = 50
    c.train.keep_checkpoints = 3
    c.train.max_nonfinite = 5  # stop after this many non-finite steps in a row

    c.s2sched = ml_collections.ConfigDict()
    c.s2sched.enabled = True
    c.s2sched.window = 64
    c.s2sched.tau = 10.0
    c.s2sched.warmup_ratio = 0.1
    c.s2sched.warmup_steps = -1  # >= 0 overrides warmup_ratio (the released code: 32)
    c.s2sched.probe_size = 10  # validation rows of each task in a probe
    # "fixed": one probe set drawn at the start and scored at every probe; "fresh": probe_size rows of each
    # task drawn uniformly anew for every probe (the paper's 128), seeded by the step so a resume draws the same
    c.s2sched.probe_sampling = "fixed"
    c.s2sched.update_every = 1
    c.s2sched.floor = False

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (1, -1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 0  # evaluate on a fixed subset every N steps; 0 = only at the end
    c.eval.subset = 20  # rows per task in that subset
    # each generative task's budget of new tokens in `python -m recfound_jax.evaluate` (the released ones)
    c.eval.max_new_tokens = ml_collections.ConfigDict(dict(RELEASED_MAX_NEW_TOKENS))

    # `python -m recfound_jax.train --config CFG --extend RUN_DIR`: train the tasks CFG adds (added_tasks
    # beyond the run's) on top of the trained run (recfound_jax/train/extend.py, docs/your_logs.md)
    c.extend = ml_collections.ConfigDict()
    # "frozen": only the new tasks' rows of the task-embedding table (and extend.new_experts) train, so the
    # old tasks' outputs stay bit-identical; "replay": every adapter trains, on the new tasks and a share
    # (extend.replay_fraction) of the old tasks' train rows, scheduled by S2Sched
    c.extend.mode = "frozen"
    c.extend.init = "mean"  # a new task's row: "mean" of its kind's trained rows, or "random" (xavier normal)
    c.extend.new_experts = 0  # experts of each kind of extend.expert_tasks, on every adapted projection, for them only
    c.extend.expert_tasks = ""  # short names of the tasks routed to those experts; empty: every added task
    c.extend.replay_fraction = 0.25  # replay: the share of each old task's train rows kept
    return c


def demo_base_config() -> ml_collections.ConfigDict:
    """Every key of the demo base's recipe with its default: the recipe itself (configs/demo_base.py).

    The base is a tiny Mistral with a vocabulary of its own, pretrained by recfound_jax.demo.pretrain:
    a causal-LM stage (``train``), then an instruction stage (``instruct``).
    """
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    # "demo": a BPE SentencePiece vocabulary of at most vocab_size pieces trained on the synthetic train side
    # (recfound_jax.demo.vocabulary); "mistral_v3": the real v3 file, vocab_size 32768
    c.model.tokenizer = "demo"
    c.model.vocab_size = 2048
    c.model.hidden_size = 128
    c.model.intermediate_size = 344
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.head_dim = 32
    c.model.rms_norm_eps = 1e-5
    c.model.rope_theta = 1e4
    c.model.max_position_embeddings = 192

    c.data = ml_collections.ConfigDict()
    c.data.scale = 1  # synthetic world size (recfound_jax.demo.synthetic)
    c.data.seed = 0
    c.data.generative_rows_per_task = 200  # train-split rows per generative task; 0 = none, -1 = all
    c.data.eval_rows_per_task = 4  # valid-split rows per generative task for a held-out loss; 0 = none

    c.train = ml_collections.ConfigDict()
    c.train.seq_len = 128  # documents are packed into windows of seq_len + 1 tokens
    c.train.batch_size = 8
    c.train.steps = 500
    c.train.learning_rate = 3e-3
    c.train.warmup_steps = 25
    c.train.decay = "cosine"  # one of DECAYS, from the peak down to end_lr_fraction * peak
    c.train.end_lr_fraction = 0.1
    c.train.weight_decay = 0.01  # matrices only, not norms
    c.train.grad_clip = 1.0
    c.train.seed = 0
    c.train.log_every = 10

    # The instruction stage (recfound_jax.demo.instruct): after the causal-LM stage, every weight trained on
    # the answer tokens of fresh train-side rows of these tasks, as an LLM's instruction tuning would. The
    # finetuning's attention adapters alone learn neither AP's and PRP's comparisons nor AVE's copying in the demo.
    c.instruct = ml_collections.ConfigDict()
    # rows per task (generative tasks' short names), in these proportions in every batch; {} turns it off
    c.instruct.rows = {"AP": 3500, "PRP": 12000, "SA": 1000, "AVE": 3000}
    c.instruct.steps = 400
    c.instruct.batch_size = 40
    c.instruct.learning_rate = 1e-3
    c.instruct.warmup_steps = 10
    c.instruct.decay = "cosine"
    c.instruct.end_lr_fraction = 0.1
    c.instruct.weight_decay = 0.01
    c.instruct.grad_clip = 1.0
    c.instruct.seed = 0
    c.instruct.log_every = 10
    # A first phase on rows of its own before the mixed steps above, with a fresh optimiser and schedule of
    # instruct's other keys; steps 0 (the recipe's) turns it off. PRP alone learned its pair rule on one draw of
    # its rows where the mix did not, but not on others, and the 10-minute budget has no room for it beside a
    # mix that keeps AP (docs/results.md, "PRP alone first", "The draw decides");
    # --config.instruct.first.steps=300 turns it on.
    c.instruct.first = ml_collections.ConfigDict()
    c.instruct.first.rows = {"PRP": 7500}
    c.instruct.first.steps = 0
    c.instruct.first.batch_size = 25

    c.output_dir = ""  # empty: the cached base of ensure_base ($RECFOUND_CACHE or ~/.cache/recfound_jax)
    return c


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config.{key}: {message}")


def validate(c: ml_collections.ConfigDict, *, device_count: int | None = None) -> None:
    """Raise ConfigError naming the first key of a run config that cannot work; run before any compile."""
    _check_keys(c, base_config(), "")
    _check(c.seed >= 0, "seed", f"must be >= 0, got {c.seed}")
    _check_model(c.model)
    _check_data(c.data, c.model)
    _check_tmole(c.tmole)
    _check_train(c.train)
    _check_s2sched(c.s2sched)
    _check_tasks(c)
    _check_probe_chunks(c.s2sched, c.train, *run_tasks(c))
    _check_mesh(c, device_count)
    _check_eval(c.eval)
    _check_extend(c.extend)
    _check_expert_tasks(c)


def section_defaults(section: str, **overrides: Any) -> ml_collections.ConfigDict:
    """The ``section`` block ("tmole" or "s2sched") of `base_config` with ``overrides``, checked as `validate`
    checks a run's: how the Python API makes typed options without a run config (``TMoLEConfig.default``)."""
    checks = {"tmole": _check_tmole, "s2sched": _check_s2sched}
    block = base_config()[section]
    _check_keys(ml_collections.ConfigDict(overrides), block, f"{section}.")
    for key, value in overrides.items():
        try:
            block[key] = value
        except TypeError as err:  # the schema's type: an int key given a float, a bool key an int
            raise ConfigError(f"config.{section}.{key}: {err}") from None
    checks[section](block)
    return block


def _check_model(m: ml_collections.ConfigDict) -> None:
    _check(m.param_dtype in DTYPES, "model.param_dtype", f"{m.param_dtype!r} not in {DTYPES}")
    _check(m.compute_dtype in DTYPES, "model.compute_dtype", f"{m.compute_dtype!r} not in {DTYPES}")
    _check(m.remat in REMAT_POLICIES, "model.remat", f"{m.remat!r} not in {REMAT_POLICIES}")
    _check(m.attention in ATTENTION_IMPLEMENTATIONS, "model.attention",
           f"{m.attention!r} not in {ATTENTION_IMPLEMENTATIONS}")
    if m.base != "demo":
        _check(Path(m.base, "config.json").is_file(), "model.base",
               f"{m.base!r} is not a HF checkpoint directory (no config.json)")
    else:
        _check(recipes.exists(m.base_recipe), "model.base_recipe",
               f"{m.base_recipe!r} is neither a shipped recipe ({', '.join(recipes.names())}) nor a file")


def task_table(c: ml_collections.ConfigDict) -> TaskTable:
    """The run's task table: the released 13, then ``added_tasks`` (ids 14, 15, ...)."""
    return tasks_lib.table_with(c.get("added_tasks", ()))


def run_tasks(c: ml_collections.ConfigDict) -> tuple[tuple[Task, ...], tuple[Task, ...]]:
    """(embedding tasks, generative tasks) a run trains: data.tasks in id order, or every task of the table."""
    table = task_table(c)
    shorts = [s.strip() for s in c.data.tasks.split(",") if s.strip()] if c.data.tasks else []
    chosen = {table.get(s).id for s in shorts}
    pick = lambda tasks: tuple(t for t in tasks if not chosen or t.id in chosen)
    return pick(table.embedding), pick(table.generative)


def expert_tasks(c: ml_collections.ConfigDict) -> tuple[Task, ...]:
    """The tasks routed to the added experts (extend.new_experts): extend.expert_tasks, or every added task."""
    table = task_table(c)
    names = [s.strip() for s in c.extend.get("expert_tasks", "").split(",") if s.strip()]
    return tuple(table.get(n) for n in names) if names else table.added


def generation_budgets(c: ml_collections.ConfigDict) -> dict[str, int]:
    """Each generative task's budget of new tokens: its table entry's, then the run's eval.max_new_tokens."""
    budgets = task_table(c).max_new_tokens()
    budgets.update({k: v for k, v in c.eval.max_new_tokens.items() if k in budgets})
    return budgets


def _check_tasks(c: ml_collections.ConfigDict) -> None:
    _check(isinstance(c.added_tasks, (tuple, list)) and all(isinstance(s, dict) for s in c.added_tasks),
           "added_tasks", f"must be a sequence of dicts, got {c.added_tasks!r}")
    try:
        task_table(c)
    except tasks_lib.TaskSpecError as err:
        raise ConfigError(f"config.added_tasks{err}") from None
    try:
        embedding, generative = run_tasks(c)
    except KeyError as err:
        raise ConfigError(f"config.data.tasks: {err.args[0]}") from None
    for tasks, kind in ((embedding, "embedding"), (generative, "generative")):
        key = f"{kind}_batch"
        _check(bool(tasks) or c.train[key] == 0, "data.tasks",
               f"{c.data.tasks!r} has no {kind} task, so train.{key} must be 0 (it is {c.train[key]})")


def _check_data(d: ml_collections.ConfigDict, model: ml_collections.ConfigDict) -> None:
    if d.dir != "synthetic":
        _check(Path(d.dir).is_dir(), "data.dir", f"{d.dir!r} is not a directory")
    _check(d.on_error in ("raise", "skip"), "data.on_error", f"{d.on_error!r} not in ('raise', 'skip')")
    _check(d.num_proc >= 1, "data.num_proc", f"must be >= 1, got {d.num_proc}")
    lengths = ("query_len", "passage_len", "generative_len")
    for key in lengths:
        _check(d[key] >= 8, f"data.{key}", f"must be >= 8, got {d[key]}")
    max_positions = base_max_positions(model.base, model.base_recipe)
    for key in lengths:
        _check(d[key] <= max_positions, f"data.{key}",
               f"{d[key]} exceeds the base's max_position_embeddings={max_positions}")


def _check_tmole(t: ml_collections.ConfigDict) -> None:
    _check_bool(t.enabled, "tmole.enabled")
    for key in ("num_embedding", "num_shared", "num_generative"):
        _check(t[key] >= 0, f"tmole.{key}", f"must be >= 0, got {t[key]}")
    if t.enabled:
        _check(t.num_embedding + t.num_shared > 0, "tmole.num_embedding",
               "embedding tasks need at least one embedding or shared expert")
        _check(t.num_generative + t.num_shared > 0, "tmole.num_generative",
               "generative tasks need at least one generative or shared expert")
    _check(t.rank > 0, "tmole.rank", f"must be > 0, got {t.rank}")
    _check(0.0 <= t.dropout < 1.0, "tmole.dropout", f"must be in [0, 1), got {t.dropout}")
    _check(t.dropout_rng in DROPOUT_RNGS, "tmole.dropout_rng", f"{t.dropout_rng!r} not in {DROPOUT_RNGS}")
    _check_bool(t.dropout_shared_qkv, "tmole.dropout_shared_qkv")
    _check_bool(t.dropout_per_expert, "tmole.dropout_per_expert")


def _check_train(tr: ml_collections.ConfigDict) -> None:
    _check(tr.steps >= 0, "train.steps", f"must be >= 0 (0: from train.epochs), got {tr.steps}")
    if tr.steps == 0:
        _check(tr.epochs > 0 and math.isfinite(tr.epochs), "train.epochs",
               f"must be finite and > 0 when train.steps is 0, got {tr.epochs}")
    _check(tr.embedding_batch >= 0 and tr.generative_batch >= 0, "train.embedding_batch", "batch sizes must be >= 0")
    _check(tr.embedding_batch + tr.generative_batch > 0, "train.generative_batch", "both batches are empty")
    _check(tr.learning_rate > 0 and math.isfinite(tr.learning_rate), "train.learning_rate", "must be finite and > 0")
    if tr.gradcache_chunk > 0:
        _check(tr.embedding_batch % tr.gradcache_chunk == 0, "train.gradcache_chunk",
               f"{tr.gradcache_chunk} does not divide train.embedding_batch={tr.embedding_batch}")
    if tr.generative_micro_batch > 0:
        _check(tr.generative_batch % tr.generative_micro_batch == 0, "train.generative_micro_batch",
               f"{tr.generative_micro_batch} does not divide train.generative_batch={tr.generative_batch}")


def _check_s2sched(s: ml_collections.ConfigDict) -> None:
    _check_bool(s.enabled, "s2sched.enabled")
    _check(s.window >= 2, "s2sched.window", f"must be >= 2, got {s.window}")
    _check(math.isfinite(s.tau), "s2sched.tau", f"must be finite, got {s.tau}")
    _check(0.0 <= s.warmup_ratio <= 1.0, "s2sched.warmup_ratio", f"must be in [0, 1], got {s.warmup_ratio}")
    _check(s.warmup_steps >= -1, "s2sched.warmup_steps",
           f"must be >= 0, or -1 to use s2sched.warmup_ratio, got {s.warmup_steps}")
    _check(s.probe_size >= 1, "s2sched.probe_size", f"must be >= 1, got {s.probe_size}")
    _check(s.probe_sampling in PROBE_SAMPLING, "s2sched.probe_sampling",
           f"{s.probe_sampling!r} not in {PROBE_SAMPLING}")
    _check(s.update_every >= 1, "s2sched.update_every", f"must be >= 1, got {s.update_every}")
    _check_bool(s.floor, "s2sched.floor")


def _check_probe_chunks(s: ml_collections.ConfigDict, tr: ml_collections.ConfigDict,
                        embedding: Sequence[Task], generative: Sequence[Task]) -> None:
    """The probe runs in the train step's chunks (a 7B probe does not fit in one forward), so they must
    divide its batches of probe_size rows of every task."""
    if not s.enabled:
        return
    for chunk_key, tasks in (("gradcache_chunk", embedding), ("generative_micro_batch", generative)):
        chunk, rows = tr[chunk_key], s.probe_size * len(tasks)
        _check(not 0 < chunk < rows or rows % chunk == 0, "s2sched.probe_size",
               f"{s.probe_size} x {len(tasks)} tasks = {rows} probe rows, not a multiple of train.{chunk_key}={chunk}")


def _check_eval(e: ml_collections.ConfigDict) -> None:
    _check(e.every >= 0, "eval.every", f"must be >= 0, got {e.every}")
    _check(e.subset >= 1, "eval.subset", f"must be >= 1, got {e.subset}")
    for short, budget in e.max_new_tokens.items():
        _check(budget >= 1, f"eval.max_new_tokens.{short}", f"must be >= 1, got {budget}")


EXTEND_MODES = ("frozen", "replay")
EXTEND_INITS = ("mean", "random")


def _check_extend(x: ml_collections.ConfigDict) -> None:
    _check(x.mode in EXTEND_MODES, "extend.mode", f"{x.mode!r} not in {EXTEND_MODES}")
    _check(x.init in EXTEND_INITS, "extend.init", f"{x.init!r} not in {EXTEND_INITS}")
    _check(x.new_experts >= 0, "extend.new_experts", f"must be >= 0, got {x.new_experts}")
    _check(0.0 < x.replay_fraction <= 1.0, "extend.replay_fraction", f"must be in (0, 1], got {x.replay_fraction}")


def _check_expert_tasks(c: ml_collections.ConfigDict) -> None:
    try:
        expert_tasks(c)
    except KeyError as err:
        raise ConfigError(f"config.extend.expert_tasks: {err.args[0]}") from None


def _check_mesh(c: ml_collections.ConfigDict, device_count: int | None) -> None:
    _check(len(tuple(c.mesh.shape)) == 3, "mesh.shape", f"{tuple(c.mesh.shape)} needs 3 entries (data, fsdp, tensor)")
    if device_count is None:
        return
    try:
        mesh_shape = parallel.resolve_mesh_shape(c.mesh.shape, device_count)
    except ValueError as err:
        raise ConfigError(f"config.mesh.shape: {err}") from None
    data_ways = mesh_shape[0] * mesh_shape[1]
    for key in ("embedding_batch", "generative_batch"):
        _check(c.train[key] % data_ways == 0, f"train.{key}",
               f"{c.train[key]} is not divisible by the {data_ways} data-parallel devices of mesh {mesh_shape}")


def validate_demo_base(c: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first key of a demo base recipe (`demo_base_config`) that cannot work."""
    _check_keys(c, demo_base_config(), "")
    m = c.model
    for key in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                "max_position_embeddings"):
        _check(m[key] > 0, f"model.{key}", f"must be positive, got {m[key]}")
    _check(m.tokenizer in DEMO_TOKENIZERS, "model.tokenizer", f"{m.tokenizer!r} not in {DEMO_TOKENIZERS}")
    if m.tokenizer == "mistral_v3":
        vocab = Tokenizer().vocab_size
        _check(m.vocab_size == vocab, "model.vocab_size",
               f"must equal the Mistral v3 tokenizer's vocabulary ({vocab}), got {m.vocab_size}")
    else:
        _check(DEMO_MIN_VOCAB <= m.vocab_size <= 32768, "model.vocab_size",
               f"a demo vocabulary has {DEMO_MIN_VOCAB} to 32768 pieces, got {m.vocab_size}")
    _check(m.num_heads % m.num_kv_heads == 0, "model.num_kv_heads", f"must divide model.num_heads={m.num_heads}")
    _check(m.head_dim % 2 == 0, "model.head_dim", "must be even (rotate-half RoPE)")
    _check(m.rope_theta > 0, "model.rope_theta", "must be positive")
    _check(c.data.scale >= 1, "data.scale", f"must be >= 1, got {c.data.scale}")
    for key in ("generative_rows_per_task", "eval_rows_per_task"):
        _check(c.data[key] >= -1, f"data.{key}", "must be -1 (all), 0 (none) or a positive count")
    t = c.train
    for key in ("seq_len", "batch_size", "steps", "log_every"):
        _check(t[key] > 0, f"train.{key}", f"must be positive, got {t[key]}")
    _check(t.seq_len <= m.max_position_embeddings, "train.seq_len",
           f"{t.seq_len} exceeds model.max_position_embeddings={m.max_position_embeddings}")
    _check_stage(t, "train")
    _check_instruct(c.instruct)


def _check_stage(t: ml_collections.ConfigDict, section: str) -> None:
    """The optimiser keys of a demo base stage (``train`` or ``instruct``)."""
    _check(t.learning_rate > 0, f"{section}.learning_rate", "must be positive")
    _check(0 <= t.warmup_steps < t.steps, f"{section}.warmup_steps", f"must be in [0, {section}.steps={t.steps})")
    _check(t.decay in DECAYS, f"{section}.decay", f"must be one of {DECAYS}, got {t.decay!r}")
    _check(0.0 <= t.end_lr_fraction <= 1.0, f"{section}.end_lr_fraction", "must be in [0, 1]")
    _check(t.weight_decay >= 0, f"{section}.weight_decay", "must be >= 0")
    _check(t.grad_clip > 0, f"{section}.grad_clip", "must be positive")


def _check_instruct(t: ml_collections.ConfigDict) -> None:
    """The instruction stage: an empty instruct.rows turns it off; otherwise every key is checked, and the
    first phase's when instruct.first.steps is positive."""
    if not t.rows:
        return
    _check(t.log_every > 0, "instruct.log_every", f"must be positive, got {t.log_every}")
    _check_phase(t, "instruct")
    _check_stage(t, "instruct")
    _check(t.first.steps >= 0, "instruct.first.steps", f"must be >= 0 (0: no first phase), got {t.first.steps}")
    if t.first.steps:
        _check_phase(t.first, "instruct.first")
        _check(t.warmup_steps < t.first.steps, "instruct.first.steps",
               f"must exceed instruct.warmup_steps={t.warmup_steps}")


def _check_phase(t: ml_collections.ConfigDict, section: str) -> None:
    """rows, steps and batch_size of an instruction phase (``instruct`` or ``instruct.first``)."""
    generative = [task.short for task in GENERATIVE_TASKS]
    for short, count in t.rows.items():
        _check(short in generative, f"{section}.rows.{short}", f"is not a generative task's short name {generative}")
        _check(count > 0, f"{section}.rows.{short}", f"must be a positive row count, got {count}")
    for key in ("steps", "batch_size"):
        _check(t[key] > 0, f"{section}.{key}", f"must be positive, got {t[key]}")
    _check(sum(t.rows.values()) >= t.batch_size, f"{section}.rows",
           f"{sum(t.rows.values())} rows do not fill one batch of {section}.batch_size={t.batch_size}")
    _check(t.batch_size >= len(t.rows), f"{section}.batch_size",
           f"{t.batch_size} cannot hold one row of each of the {len(t.rows)} tasks of {section}.rows")


def _check_bool(value: Any, key: str) -> None:
    _check(isinstance(value, bool), key, f"must be True or False, got {value!r}")


def base_max_positions(base: str, base_recipe: str = "demo_base") -> int:
    """The longest sequence the base model takes: config.json's max_position_embeddings, or for ``"demo"``
    the demo base recipe's (``base_recipe``, a name or path; the base may not be built yet)."""
    if base == "demo":
        return int(recipes.load(base_recipe).model.max_position_embeddings)
    raw = jsonio.read_json(Path(base, "config.json"))
    return int(raw.get("max_position_embeddings", 32768))  # HF's default when the field is absent


def _check_keys(c: ml_collections.ConfigDict, known: ml_collections.ConfigDict, prefix: str) -> None:
    """Raise ConfigError naming the first key of ``c`` that the schema ``known`` does not have."""
    for key in c.keys():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"config.{name}: unknown key; known keys here: {sorted(known.keys())}")
        if isinstance(c[key], ml_collections.ConfigDict) and name not in FREE_MAPPINGS:
            _check_keys(c[key], known[key], name + ".")


def cache_dir() -> Path:
    """$RECFOUND_CACHE, or ~/.cache/recfound_jax: where the demo base and synthetic data are built."""
    return Path(os.environ.get("RECFOUND_CACHE") or Path.home() / ".cache" / "recfound_jax")


def synthetic_dir(scale: int, seed: int, cache: str | os.PathLike | None = None) -> Path:
    """Where the synthetic dataset of a scale and seed is generated, under ``cache`` or `cache_dir()`."""
    return Path(cache or cache_dir()) / "synthetic" / f"scale{scale}-seed{seed}"


def to_dict(c: ml_collections.ConfigDict) -> dict:
    """A JSON-able dict of the config."""
    return c.to_dict()


def from_dict(d: dict) -> ml_collections.ConfigDict:
    """A locked ConfigDict from a saved dict (a run's config.json); a key the saved dict lacks (a run made
    before the key existed) takes `base_config`'s default."""
    c = config_dict.ConfigDict(_with_defaults(d, base_config().to_dict()))
    c.lock()
    return c


def _with_defaults(saved: dict, defaults: dict) -> dict:
    merged = dict(saved)
    for key, value in defaults.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key] = _with_defaults(merged[key], value)
    return merged

