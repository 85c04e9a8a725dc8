"""Pretrain the demo's tiny base Mistral from scratch: full-parameter causal-LM training on the synthetic world.

The corpus (synthetic.pretraining_corpus, optionally plus train-split generative rows as "prompt\\nanswer") is
tokenized with the base's own vocabulary (`recfound_jax.demo.vocabulary`, or the v3 file), each document wrapped
in BOS/EOS, shuffled and packed into windows of ``seq_len + 1`` tokens every epoch. Every `BaseParam` is trained
with AdamW (warmup, then cosine or linear decay) in one jitted functional step. When ``config.instruct.rows``
names tasks, an instruction stage follows (`recfound_jax.demo.instruct`): every weight trained on the answer
tokens of fresh train-side rows of those tasks, in the finetuning's format, after an optional first phase on
the rows of ``config.instruct.first`` alone (off in the recipe). The result is a HF Mistral directory
(`save_hf`) with the tokenizer file and ``pretrain_log.json``; it is written into a temporary folder and renamed
into place, so a directory holding the completion marker is always whole.

``python -m recfound_jax.demo.pretrain --config demo_base [--config.key=value ...]`` (a recipe's name or path)
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from flax import nnx
from ml_collections import ConfigDict
from tqdm.auto import tqdm

from recfound_jax import cli, jsonio, recipes
from recfound_jax import config as config_lib
from recfound_jax.atomic_dir import build_dir_atomically
from recfound_jax.convert.hf import save_hf
from recfound_jax.data import formatting
from recfound_jax.demo import instruct, synthetic, synthetic_world, vocabulary
from recfound_jax.model.mistral import BaseParam, Mistral, MistralConfig
from recfound_jax.tasks import BY_SHORT, GENERATIVE_TASKS
from recfound_jax.tokenizer import Tokenizer, default_tokenizer_path

PRETRAIN_VERSION = "3"  # part of the cache key: bump when the recipe's code changes what it builds
MARKER = "COMPLETE"
LOG_FILE = "pretrain_log.json"

StepFn = Callable[..., tuple[nnx.State, optax.OptState, jax.Array]]


# ----------------------------------------------------------------------------------- config
def model_config(config: ConfigDict) -> MistralConfig:
    """The MistralConfig of ``config.model``."""
    m = config.model
    return MistralConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_layers=m.num_layers, num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, head_dim=m.head_dim,
        rms_norm_eps=m.rms_norm_eps, rope_theta=float(m.rope_theta),
        max_position_embeddings=m.max_position_embeddings)


def config_hash(config: ConfigDict) -> str:
    """A short hash of everything that decides the trained weights (model, data, train, instruct), the
    recipe version and the synthetic data's generator version. A stage or phase that is off adds nothing, so
    a base built before the section existed keeps its hash."""
    keyed = {"version": PRETRAIN_VERSION, "model": config.model.to_dict(), "data": config.data.to_dict(),
             "train": config.train.to_dict(), "generator_version": synthetic.GENERATOR_VERSION}
    if instruct_enabled(config):
        keyed["instruct"] = config.instruct.to_dict()
        if not keyed["instruct"].get("first", {}).get("steps"):  # a first phase that is off decides nothing
            keyed["instruct"].pop("first", None)
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]


def instruct_enabled(config: ConfigDict) -> bool:
    """Whether ``config`` has an instruction stage (a config.instruct section with rows of some task)."""
    return config.get("instruct") is not None and bool(config.instruct.rows)


# ----------------------------------------------------------------------------------- data
def generative_documents(data_dir: str | os.PathLike, split: str, per_task: int) -> list[str]:
    """The first ``per_task`` generative rows of each task in ``split`` (-1: all) as "prompt\\nanswer" texts."""
    docs = []
    for task in GENERATIVE_TASKS:
        rows = synthetic.read_rows(data_dir, split, task.name)
        chosen = rows if per_task < 0 else rows[:per_task]
        docs.extend(f"{row['text'][0]}\n{row['text'][1]}" for row in chosen)
    return docs


def load_documents(config: ConfigDict, data_dir: str | os.PathLike) -> list[str]:
    """The pretraining documents: the world corpus, then data.generative_rows_per_task train rows per task."""
    docs = synthetic.pretraining_corpus(data_dir)
    if config.data.generative_rows_per_task != 0:
        docs += generative_documents(data_dir, "train", config.data.generative_rows_per_task)
    return docs


def pack_windows(token_docs: Sequence[np.ndarray], seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """Documents in a random order, concatenated and cut into windows [n, seq_len + 1].

    Window i starts where window i - 1's last target ends, so every token but the first is a target once;
    the tail shorter than a window is dropped.
    """
    stream = np.concatenate([token_docs[i] for i in rng.permutation(len(token_docs))])
    count = (len(stream) - 1) // seq_len
    if count == 0:
        raise ValueError(f"the corpus holds {len(stream)} tokens, fewer than one window of {seq_len + 1}")
    starts = np.arange(count) * seq_len
    return stream[starts[:, None] + np.arange(seq_len + 1)]


def batch_stream(token_docs: Sequence[np.ndarray], seq_len: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless batches [batch_size, seq_len + 1] (int32); each epoch re-shuffles and re-packs the documents."""
    rng = np.random.default_rng(seed)
    while True:
        windows = pack_windows(token_docs, seq_len, rng)
        if len(windows) < batch_size:
            raise ValueError(f"the corpus packs into {len(windows)} windows, fewer than train.batch_size={batch_size}")
        order = rng.permutation(len(windows))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield windows[order[start:start + batch_size]].astype(np.int32)


# ----------------------------------------------------------------------------------- optimisation
def learning_rate_schedule(t: ConfigDict) -> optax.Schedule:
    """Linear warmup to ``t.learning_rate``, then cosine or linear decay to end_lr_fraction of it.

    ``t`` is a stage's section (config.train or config.instruct): learning_rate, warmup_steps, steps,
    decay, end_lr_fraction.
    """
    peak, end = t.learning_rate, t.learning_rate * t.end_lr_fraction
    decay_steps = t.steps - t.warmup_steps
    if t.decay == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=t.end_lr_fraction)
    else:
        decay = optax.linear_schedule(peak, end, decay_steps)
    warmup = optax.linear_schedule(0.0 if t.warmup_steps else peak, peak, max(t.warmup_steps, 1))
    return optax.join_schedules([warmup, decay], [t.warmup_steps])


def make_optimizer(t: ConfigDict) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW; weight decay on matrices only (norm scales are not decayed).

    ``t`` is a stage's section, as for `learning_rate_schedule`, plus weight_decay and grad_clip.
    """
    def matrices(params):
        return jax.tree.map(lambda x: x.ndim >= 2, params)

    return optax.chain(
        optax.clip_by_global_norm(t.grad_clip),
        optax.adamw(learning_rate_schedule(t), b1=0.9, b2=0.95, weight_decay=t.weight_decay, mask=matrices))


def lm_loss(model: Mistral, tokens: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy (float32) of packed windows tokens [B, T + 1]."""
    logits = model(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def make_train_step(graphdef: nnx.GraphDef, rest: nnx.State, tx: optax.GradientTransformation,
                    loss: Callable[..., jax.Array] = lm_loss) -> StepFn:
    """A jitted step (params, opt_state, *batch) -> (params, opt_state, loss(model, *batch) before the update).

    ``params`` is the `BaseParam` state of ``nnx.split(model, BaseParam, ...)``; params and optimizer
    state are donated. ``loss`` is `lm_loss` (batch: tokens) or `instruct.parts_answer_loss` (batch: a step's parts).
    """
    def loss_fn(params, *batch):
        return loss(nnx.merge(graphdef, params, rest), *batch)

    def step(params, opt_state, *batch):
        value, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return jax.jit(step, donate_argnums=(0, 1))


def make_eval_fn(graphdef: nnx.GraphDef, rest: nnx.State) -> Callable[[nnx.State, jax.Array], jax.Array]:
    """A jitted (params, tokens) -> mean next-token loss, for held-out windows."""
    return jax.jit(lambda params, tokens: lm_loss(nnx.merge(graphdef, params, rest), tokens))


def held_out_loss(eval_fn: Callable, params: nnx.State, windows: np.ndarray, batch_size: int) -> float:
    """Mean loss over the full batches of ``windows`` [n, T + 1] (the remainder is left out: one shape, one compile)."""
    losses = [eval_fn(params, jnp.asarray(windows[i:i + batch_size]))
              for i in range(0, len(windows) - batch_size + 1, batch_size)]
    return float(jnp.mean(jnp.stack(losses)))


def run_steps(step_fn: Callable, params: nnx.State, opt_state: optax.OptState, batches: Iterator[tuple],
              t: ConfigDict, desc: str, progress: bool = True) -> tuple[nnx.State, optax.OptState, list[dict]]:
    """``t.steps`` calls of step_fn(params, opt_state, *batch) -> (params, opt_state, loss), one batch each.

    Returns the state and the log: the mean loss of every span of ``t.log_every`` steps (and of step 1),
    with the learning rate and the seconds since the start. A non-finite mean stops the run.
    """
    schedule = learning_rate_schedule(t)
    log, pending, start = [], [], time.perf_counter()
    bar = tqdm(range(1, t.steps + 1), desc=desc, disable=not progress)
    for step in bar:
        params, opt_state, loss = step_fn(params, opt_state, *next(batches))
        pending.append(loss)
        if step == 1 or step % t.log_every == 0 or step == t.steps:
            mean = float(jnp.mean(jnp.stack(pending)))
            if not np.isfinite(mean):
                raise FloatingPointError(f"{desc} loss is {mean} at step {step}")
            log.append({"step": step, "loss": mean, "learning_rate": float(schedule(step - 1)),
                        "elapsed_s": round(time.perf_counter() - start, 3)})
            bar.set_postfix(loss=f"{mean:.3f}")
            pending = []
    return params, opt_state, log


def train(model: Mistral, config: ConfigDict, batches: Iterator[np.ndarray], *,
          held_out: np.ndarray | None = None, progress: bool = True) -> dict:
    """Train every BaseParam of ``model`` in place for train.steps.

    Returns {"log": mean training loss per logged span, "valid_loss_before"/"valid_loss_after": the mean
    loss on ``held_out`` windows before and after training (None without them)}.
    """
    graphdef, params, rest = nnx.split(model, BaseParam, ...)
    t = config.train
    tx = make_optimizer(t)
    step_fn = make_train_step(graphdef, rest, tx)
    eval_fn = make_eval_fn(graphdef, rest)
    use_held_out = held_out is not None and len(held_out) >= t.batch_size
    before = held_out_loss(eval_fn, params, held_out, t.batch_size) if use_held_out else None
    params, _, log = run_steps(step_fn, params, tx.init(params), ((jnp.asarray(b),) for b in batches), t,
                               "pretrain", progress)
    after = held_out_loss(eval_fn, params, held_out, t.batch_size) if use_held_out else None
    nnx.update(model, params)
    return {"log": log, "valid_loss_before": before, "valid_loss_after": after}


def instruct_train(model: Mistral, t: ConfigDict, rows: dict[str, instruct.AnswerRows],
                   valid: dict[str, instruct.AnswerRows], *, progress: bool = True, desc: str = "instruct") -> dict:
    """Train every BaseParam of ``model`` in place on the answer tokens of ``rows`` for ``t.steps`` (config.instruct).

    ``rows`` maps each task to its rows (each task's of one length); a step holds each task's
    `instruct.batch_shares`.
    Returns {"log", "valid_before"/"valid_after": `instruct.held_out` of each task's ``valid`` rows}; ``desc``
    names the progress bar.
    """
    graphdef, params, rest = nnx.split(model, BaseParam, ...)
    tx = make_optimizer(t)
    step_fn = make_train_step(graphdef, rest, tx, instruct.parts_answer_loss)
    eval_fn = instruct.make_eval_fn(graphdef, rest)
    evaluate = lambda p: {task: instruct.held_out(eval_fn, p, r, t.batch_size) for task, r in valid.items()}
    before = evaluate(params)
    steps = ((parts,) for parts in instruct.batches(rows, t.batch_size, t.seed))
    params, _, log = run_steps(step_fn, params, tx.init(params), steps, t, desc, progress)
    nnx.update(model, params)
    return {"log": log, "valid_before": before, "valid_after": evaluate(params)}


# ----------------------------------------------------------------------------------- entry points
def run_instruct_stage(model: Mistral, config: ConfigDict, data_dir: Path, tokenizer: Tokenizer,
                       progress: bool = True) -> dict:
    """The instruction stage of `recfound_jax.demo.instruct` on ``model``, in place; returns its summary for the log.

    When config.instruct.first.steps is positive, a first phase trains on instruct.first.rows alone (for
    instruct.first.steps of instruct.first.batch_size rows) before the mixed steps of config.instruct; each
    phase has an optimiser and a learning-rate schedule of its own. The summary is the mixed phase's
    (`run_instruct_phase`), with the first phase's under "first" (None without one).
    """
    t = config.instruct
    world = synthetic_world.build_world(config.data.scale, config.data.seed)
    first = None
    if t.first.steps:
        first_phase = t.copy_and_resolve_references()
        first_phase.rows = t.first.rows.to_dict()  # replaced, not merged into the mix's rows as update() would
        first_phase.update(steps=t.first.steps, batch_size=t.first.batch_size)
        first = run_instruct_phase(model, first_phase, world, config, data_dir, tokenizer, "instruct.first", progress)
    return {**run_instruct_phase(model, t, world, config, data_dir, tokenizer, "instruct", progress), "first": first}


def instruct_phases(stage: dict) -> list[tuple[str, dict]]:
    """("first", summary) when a first phase ran, then ("mixed", summary): the phases of a `run_instruct_stage`
    summary, in the order they ran."""
    return ([("first", stage["first"])] if stage.get("first") else []) + [("mixed", stage)]


def run_instruct_phase(model: Mistral, t: ConfigDict, world: synthetic_world.World, config: ConfigDict,
                       data_dir: Path, tokenizer: Tokenizer, section: str, progress: bool = True) -> dict:
    """One phase of the instruction stage, ``t`` (config.instruct, or it with instruct.first's rows, steps and
    batch size), on ``model`` in place; ``section`` names it in errors.

    Rows: t.rows[task] fresh train-side rows of each task (`synthetic.extra_train_rows`), less those
    whose input (a product pair, a review) is a valid or test row's input, so that no held-out input is
    trained on; a batch holds the tasks in those proportions. Held out: every valid row of those tasks in
    ``data_dir``.
    """
    rows, valid, dropped = {}, {}, {}
    for short, count in t.rows.items():
        name = BY_SHORT[short].name
        valid_rows = synthetic.read_rows(data_dir, "valid", name)
        valid_pairs = [tuple(row["text"]) for row in valid_rows]
        held_out_inputs = {formatting.input_text(row["text"][0])
                           for row in valid_rows + synthetic.read_rows(data_dir, "test", name)}
        pairs = [tuple(row["text"]) for row in synthetic.extra_train_rows(world, short, count, t.seed, held_out_inputs)]
        dropped[short] = count - len(pairs)
        if not pairs:
            raise config_lib.ConfigError(f"config.{section}.rows.{short}: all {count} rows drawn have a valid or "
                                         "test row's input")
        encoded = instruct.encode_rows(tokenizer, pairs + valid_pairs)  # tokenized once, train and valid
        rows[short] = encoded.take(np.arange(len(pairs)))
        valid[short] = encoded.take(len(pairs) + np.arange(len(valid_pairs)))
    lengths, limit = {short: r.ids.shape[1] for short, r in rows.items()}, config.model.max_position_embeddings
    if max(lengths.values()) > limit:
        raise config_lib.ConfigError(f"config.{section}.rows: their rows need {max(lengths.values())} tokens, "
                                     f"more than model.max_position_embeddings={limit}")
    shares = instruct.batch_shares({short: len(r) for short, r in rows.items()}, t.batch_size)
    begin = time.perf_counter()
    result = instruct_train(model, t, rows, valid, progress=progress, desc=section)
    return {"rows": {short: len(r) for short, r in rows.items()}, "dropped_held_out_inputs": dropped,
            "row_length": lengths, "batch_rows": shares,
            "answer_slots": {short: r.targets.shape[1] for short, r in rows.items()},
            "answer_slots_per_batch": sum(shares[short] * r.targets.shape[1] for short, r in rows.items()),
            "train_seconds": round(time.perf_counter() - begin, 2), **result}


def write_tokenizer(config: ConfigDict, data_dir: Path, target: Path) -> Tokenizer:
    """``target/tokenizer.model`` for the recipe's model.tokenizer (the demo vocabulary, trained on the world
    corpus and the train split of ``data_dir``, or a copy of the v3 file), loaded."""
    out = target / "tokenizer.model"
    if config.model.tokenizer == "mistral_v3":
        shutil.copyfile(default_tokenizer_path(), out)
    else:
        texts = itertools.chain(synthetic.pretraining_corpus(data_dir), vocabulary.train_split_texts(data_dir))
        vocabulary.train_vocabulary(texts, config.model.vocab_size, out)
    tokenizer = Tokenizer(out)
    if tokenizer.vocab_size != config.model.vocab_size:
        raise config_lib.ConfigError(f"config.model.vocab_size: the synthetic corpus gives only "
                                     f"{tokenizer.vocab_size} pieces; set it to at most that")
    return tokenizer


def _write_base(config: ConfigDict, target: Path, data_dir: Path, progress: bool) -> None:
    begin = time.perf_counter()
    tokenizer = write_tokenizer(config, data_dir, target)
    t = config.train

    def tokenize(docs):
        return [np.asarray(ids, np.int32) for ids in tokenizer.encode_batch(docs, add_bos=True, add_eos=True)]

    token_docs = tokenize(load_documents(config, data_dir))
    held_out = None
    if config.data.eval_rows_per_task:
        valid_docs = tokenize(generative_documents(data_dir, "valid", config.data.eval_rows_per_task))
        held_out = pack_windows(valid_docs, t.seq_len, np.random.default_rng(0))
    batches = batch_stream(token_docs, t.seq_len, t.batch_size, t.seed)
    model = Mistral(model_config(config), param_dtype=jnp.float32, dtype=jnp.float32, rngs=nnx.Rngs(t.seed))
    train_begin = time.perf_counter()
    result = train(model, config, batches, held_out=held_out, progress=progress)
    train_seconds = time.perf_counter() - train_begin
    instruct_summary = (run_instruct_stage(model, config, data_dir, tokenizer, progress)
                        if instruct_enabled(config) else None)
    save_hf(model, target)
    log = result["log"]
    summary = {
        "config": config.to_dict(), "config_hash": config_hash(config), "data_dir": str(data_dir),
        "tokenizer_pieces": tokenizer.vocab_size, "documents": len(token_docs),
        "corpus_tokens": int(sum(len(d) for d in token_docs)),
        "tokens_per_step": t.seq_len * t.batch_size, "num_params": model.config.num_params(),
        "initial_loss": log[0]["loss"], "final_loss": log[-1]["loss"],
        "valid_loss_before": result["valid_loss_before"], "valid_loss_after": result["valid_loss_after"],
        "train_seconds": round(train_seconds, 2), "total_seconds": round(time.perf_counter() - begin, 2),
        "log": log, "instruct": instruct_summary,
    }
    jsonio.write_json(target / LOG_FILE, summary)
    (target / MARKER).write_text(config_hash(config) + "\n", encoding="utf-8")


def pretrain(config: ConfigDict, out_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
             progress: bool = True) -> Path:
    """Pretrain the base described by ``config`` and write it to ``out_dir``; returns ``out_dir``.

    ``out_dir`` gets config.json + safetensors (HF Mistral), tokenizer.model, pretrain_log.json and the
    completion marker, all at once by renaming a temporary sibling folder; it must not exist yet (or be
    empty). ``data_dir`` is a generated synthetic dataset; by default the one in the cache
    (`recfound_jax.config.synthetic_dir`), generated if missing.
    """
    config_lib.validate_demo_base(config)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: not overwriting it")
    if data_dir is None:
        data_dir = config_lib.synthetic_dir(config.data.scale, config.data.seed)
        synthetic.ensure_dataset(data_dir, scale=config.data.scale, seed=config.data.seed)
    return build_dir_atomically(out, lambda tmp: _write_base(config, tmp, Path(data_dir), progress), marker=MARKER)


def base_dir(config: ConfigDict, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``config``'s base lives in a cache directory: ``demo_base/<config hash>``."""
    return Path(cache_dir or config_lib.cache_dir()) / "demo_base" / config_hash(config)


def ensure_base(config: ConfigDict, cache_dir: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """The cached base of ``config``: the synthetic dataset and the base are built only if missing.

    ``cache_dir`` defaults to `recfound_jax.config.cache_dir`. The base folder is keyed by `config_hash`, so a
    changed config builds a new base rather than reusing an old one; its marker says it is complete.
    """
    cache = Path(cache_dir) if cache_dir is not None else config_lib.cache_dir()
    data = config_lib.synthetic_dir(config.data.scale, config.data.seed, cache)
    synthetic.ensure_dataset(data, scale=config.data.scale, seed=config.data.seed)
    out = base_dir(config, cache)
    if (out / MARKER).is_file():
        return out
    return pretrain(config, out, data_dir=data, progress=progress)


FLAGS = flags.FlagValues()
_CONFIG = recipes.define_flag("config", "the demo base's recipe: a shipped name (demo_base) or a file path", FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
    """Pretrain ``--config`` into config.output_dir, or into the cache when it is empty; print the losses."""
    cli.parse(FLAGS, argv, __doc__)
    config = _CONFIG.value
    out = (pretrain(config, config.output_dir) if config.output_dir else ensure_base(config))
    summary = jsonio.read_json(out / LOG_FILE)
    print(f"base model: {out}")
    print(f"training loss {summary['initial_loss']:.3f} -> {summary['final_loss']:.3f} "
          f"in {summary['train_seconds']:.0f} s of training ({summary['total_seconds']:.0f} s in all)")
    if summary["valid_loss_after"] is not None:
        print(f"held-out (valid) loss {summary['valid_loss_before']:.3f} -> {summary['valid_loss_after']:.3f}")
    if summary.get("instruct"):
        for name, phase in instruct_phases(summary["instruct"]):
            _print_held_out(f"instruction stage, {name} phase", phase["valid_before"], phase["valid_after"])
    return 0


def _print_held_out(name: str, before: dict, after: dict) -> None:
    for task in after:
        print(f"{name}, {task} valid: "
              f"answer loss {before[task]['loss']:.3f} -> {after[task]['loss']:.3f}, "
              f"first-token accuracy {before[task]['first_token_accuracy']:.3f} -> "
              f"{after[task]['first_token_accuracy']:.3f}, answer accuracy "
              f"{before[task]['answer_accuracy']:.3f} -> {after[task]['answer_accuracy']:.3f}")


if __name__ == "__main__":
    cli.run(main)
