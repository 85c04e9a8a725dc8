"""The training run: inputs, sharded state, the loop with S2Sched, logging, checkpoints and resume.

`train(config, workdir)` is what `python -m recfound_jax.train` and notebooks call.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

try:
    from tensorboardX import SummaryWriter
except ImportError:  # TensorBoard is optional; metrics.jsonl is the record
    SummaryWriter = None

from recfound_jax import config as config_lib
from recfound_jax import jsonio, parallel
from recfound_jax.data import batching, formatting
from recfound_jax.evaluate.runner import evaluate_subset
from recfound_jax.inference.recfound import RecFound
from recfound_jax.runs import checkpoint, rundir
from recfound_jax.tasks import Task
from recfound_jax.train import extend as extend_lib
from recfound_jax.train import step as step_lib
from recfound_jax.train.inputs import prepare_inputs, total_steps
from recfound_jax.train.s2sched import S2Sched, S2SchedConfig

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


class RunExistsError(FileExistsError):
    """The work directory already holds another run."""


class NonFiniteError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""


def answer_budget(*splits: formatting.TokenizedSplit, multiple: int = 8) -> int:
    """The most answer tokens any generative row of the splits has, rounded up: the LM-head positions a row needs."""
    longest = 0
    for split in splits:
        table = split.generative
        if len(table):
            per_row = np.add.reduceat(table.loss_mask.astype(np.int64), table.seqs.offsets[:-1])
            longest = max(longest, int(per_row.max()))
    return max(multiple, -(-longest // multiple) * multiple)


Branches = tuple[tuple[Task, ...], tuple[Task, ...]]  # (embedding tasks, generative tasks)


def probe_batches(c: ml_collections.ConfigDict, valid: formatting.TokenizedSplit,
                  step: int = -1, tasks: Branches | None = None) -> tuple[dict | None, dict | None]:
    """``s2sched.probe_size`` validation samples of every task the run trains (``tasks``, by default
    `config.run_tasks`), with
    task_index (the task's position in its kind's list): the fixed probe set, or with
    ``s2sched.probe_sampling = "fresh"`` the draw of ``step`` (-1: before training), a function of the seed
    and the step only, so that a resumed run draws what the uninterrupted one drew. Batches are padded to
    the data lengths: every probe has one shape. A kind without tasks gets None."""
    n = c.s2sched.probe_size
    emb_tasks, gen_tasks = config_lib.run_tasks(c) if tasks is None else tasks
    seed = c.seed + 1 if c.s2sched.probe_sampling == "fixed" else _fresh_probe_seed(c.seed, step)
    cfg = batching.BatchConfig.from_config(c, embedding_batch_size=n * len(emb_tasks),
                                           generative_batch_size=n * len(gen_tasks), seed=seed)
    for kind, table, tasks in (("embedding", valid.embedding, emb_tasks), ("generative", valid.generative, gen_tasks)):
        missing = [t.name for t in tasks if not np.any(table.task_ids == t.id)]
        if missing:
            raise ValueError(f"the valid split has no {kind} rows of {', '.join(missing)}: S2Sched needs probes")
    batcher = batching.Batcher(valid, cfg)
    out = []
    for tasks, draw in ((emb_tasks, batcher.embedding_batch), (gen_tasks, batcher.generative_batch)):
        if not tasks:
            out.append(None)
            continue
        batch = draw({t.id: n for t in tasks})
        position = np.full(config_lib.task_table(c).rows, -1, np.int32)
        position[[t.id for t in tasks]] = np.arange(len(tasks))
        batch["task_index"] = position[batch["task_ids"]]
        out.append(batch)
    return out[0], out[1]


def _fresh_probe_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, 1, step + 1]).generate_state(1)[0])


class _NoTasks:
    """The scheduler of a branch the run has no task of (data.tasks): no counts, no probes, no state."""

    def counts(self, step: int) -> np.ndarray:  # noqa: ARG002
        return np.zeros(0, np.int64)

    def ratios(self, step: int) -> np.ndarray:  # noqa: ARG002
        return np.zeros(0)

    def should_observe(self, step: int) -> bool:  # noqa: ARG002
        return False

    def set_normaliser(self, losses: np.ndarray) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _schedulers(c: ml_collections.ConfigDict, steps: int, tasks: Branches,
                batch_sizes: tuple[int, int]) -> tuple[S2Sched | _NoTasks, S2Sched | _NoTasks]:
    sched_cfg = S2SchedConfig.from_config(c.s2sched)
    table = config_lib.task_table(c)
    return tuple(S2Sched(sched_cfg, [t.id for t in kind], batch, steps, table=table) if kind else _NoTasks()
                 for kind, batch in zip(tasks, batch_sizes))


def prepare_workdir(c: ml_collections.ConfigDict, workdir: Path, *, resume: bool, overwrite: bool) -> None:
    """Create the run directory; refuse to reuse another run's directory without --resume or --overwrite."""
    config_file = workdir / rundir.CONFIG_FILE
    replace = config_file.exists() and not resume
    if replace and not overwrite:
        raise RunExistsError(f"{workdir} already holds a run; pass --resume to continue it or --overwrite "
                             "to replace it")
    if resume and not config_file.exists():
        raise FileNotFoundError(f"--resume: {workdir} holds no run to resume")
    if resume:
        saved = json.loads(config_file.read_text())
        current = json.loads(json.dumps(config_lib.to_dict(c)))  # tuples become lists, as in the file
        if saved != current:
            changed = sorted(_diff(saved, current))
            raise ValueError(f"--resume: the config differs from the run's config.json at {changed}")
    _sync_processes("prepare_workdir_checked")  # every process has looked before the directory changes
    if jax.process_index() == 0:
        if replace:
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        jsonio.write_json(config_file, config_lib.to_dict(c))
    _sync_processes("prepare_workdir_written")


def _sync_processes(name: str) -> None:
    """A barrier across processes (nothing with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = set(a) | set(b)
    out = []
    for k in keys:
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _diff(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            out.append(prefix + k)
    return out


class MetricsLog:
    """metrics.jsonl (one object a step) and TensorBoard scalars."""

    def __init__(self, workdir: Path, resume_step: int):
        self.path = workdir / METRICS_FILE
        self.file, self.board = None, None
        if jax.process_index() != 0:  # one writer for the whole job
            return
        if self.path.exists():  # keep only what precedes the checkpoint we resume from
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.file = open(self.path, "a")
        self.board = SummaryWriter(str(workdir / "tensorboard")) if SummaryWriter is not None else None

    def write(self, record: dict[str, Any]) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.board is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.board.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.board is not None:
            self.board.close()


def _real_tokens(emb: dict | None, gen: dict | None) -> int:
    total = 0
    if emb is not None:
        total += int(emb["query_mask"].sum() + emb["passage_mask"].sum())
    if gen is not None:
        total += int(gen["attention_mask"].sum())
    return total


def batch_digest(*batches: dict | None) -> str:
    """A short hash of the host batches' arrays: makes the data order of each step observable in the log."""
    digest = hashlib.sha256()
    for batch in batches:
        for key in sorted(batch or {}):
            digest.update(key.encode() + np.ascontiguousarray(batch[key]).tobytes())
    return digest.hexdigest()[:16]


def _is_finite_tree(tree: Any) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


class Trainer:
    """One training run; `run()` trains from the start or the last checkpoint to ``steps`` (`total_steps`)."""

    def __init__(self, c: ml_collections.ConfigDict, workdir: str | Path, *, resume: bool = False,
                 overwrite: bool = False, progress: bool = True, extend: str | Path | None = None):
        self.stop_requested = False
        self._sigterm_before = None
        config_lib.validate(c, device_count=jax.device_count())
        self.config, self.workdir, self.progress = c, Path(workdir).absolute(), progress
        self.extension = _extension(c, self.workdir, extend, resume)
        prepare_workdir(c, self.workdir, resume=resume, overwrite=overwrite)
        # While the inputs are prepared (the demo base may be built) SIGTERM keeps the process's handler:
        # the CLI's exits at once and every build is atomic. From here on it only asks the run to stop:
        # the run then checkpoints where it is and returns cleanly.
        self.inputs = prepare_inputs(c, self.workdir, progress)
        self.steps = total_steps(c, self.inputs.train)
        if threading.current_thread() is threading.main_thread():
            self._sigterm_before = signal.signal(signal.SIGTERM, self._on_sigterm)
        self.mesh = parallel.make_mesh(c.mesh.shape)
        model = rundir.build_model(c, self.inputs.base, mesh=self.mesh)
        self.parts = step_lib.ModelParts.of(model)
        self.trainable = None
        if self.extension is not None:  # the extended run's params, grown to this run's table
            extend_lib.check_base(self.extension, self.inputs.base)
            self.parts.params = extend_lib.grow_params(self.extension, self.parts.params)
            self.trainable = extend_lib.trainable_mask(self.extension, self.parts.params, c)
        self.optimizer = step_lib.make_optimizer(
            learning_rate=c.train.learning_rate, total_steps=self.steps, warmup_ratio=c.train.warmup_ratio,
            weight_decay=c.train.weight_decay, grad_clip=c.train.grad_clip)
        self.schedule = step_lib.learning_rate_schedule(
            learning_rate=c.train.learning_rate, total_steps=self.steps, warmup_ratio=c.train.warmup_ratio)
        self.state = self._init_state()
        self.batch_share = parallel.batch_share(self.mesh)
        self.table = config_lib.task_table(c)
        trained = config_lib.run_tasks(c) if self.extension is None else self.extension.trained
        self.emb_tasks, self.gen_tasks = trained
        # a branch without a trained task (a frozen extension's other kind) draws no batch
        self.batch_sizes = {"emb": c.train.embedding_batch if self.emb_tasks else 0,
                            "gen": c.train.generative_batch if self.gen_tasks else 0}
        self.batcher = batching.Batcher(self.inputs.train, batching.BatchConfig.from_config(
            c, embedding_batch_size=self.batch_sizes["emb"], generative_batch_size=self.batch_sizes["gen"],
            seed=c.seed, process_index=self.batch_share[0], process_count=self.batch_share[1]))
        self.replay_rows = ({} if self.extension is None else extend_lib.keep_replay_rows(
            self.extension, {**self.batcher.embedding_pools, **self.batcher.generative_pools}, c.seed))
        self.probe_emb, self.probe_gen = probe_batches(c, self.inputs.valid, tasks=trained)
        self.sched_emb, self.sched_gen = _schedulers(c, self.steps, trained,
                                                     (self.batch_sizes["emb"], self.batch_sizes["gen"]))
        self.key = jax.random.key(c.seed)
        self.checkpointer = checkpoint.Checkpointer(self.workdir, keep=c.train.keep_checkpoints)
        self.start_step = 0
        self._compile()
        if resume and self.checkpointer.latest_step() is not None:
            self._restore(self.checkpointer.latest_step())
        else:
            self._begin()
        self._eval_rf = None

    # ------------------------------------------------------------------ setup
    def _init_state(self) -> dict[str, Any]:
        state = jax.jit(lambda params: step_lib.init_train_state(params, self.optimizer))(self.parts.params)
        # Commit every leaf to its sharding, so the first and later steps hit the same compiled step.
        return jax.device_put(state, jax.tree.map(
            lambda x: x.sharding if isinstance(x.sharding, jax.sharding.NamedSharding)
            else parallel.replicated(self.mesh), state))

    def _compile(self) -> None:
        c = self.config
        state_sh = jax.tree.map(lambda x: x.sharding, self.state)
        base_sh = jax.tree.map(lambda x: x.sharding, self.parts.base)
        self.batch_sh = {"emb": None, "gen": None}
        example_emb, example_gen = self.probe_emb, self.probe_gen
        if self.batch_sizes["emb"]:
            self.batch_sh["emb"] = {k: parallel.batch_sharding(self.mesh, v.ndim) for k, v in example_emb.items()
                                    if k != "task_index"}
        if self.batch_sizes["gen"]:
            self.batch_sh["gen"] = {k: parallel.batch_sharding(self.mesh, v.ndim) for k, v in example_gen.items()
                                    if k != "task_index"}
        rep = parallel.replicated(self.mesh)
        budget = min(answer_budget(self.inputs.train, self.inputs.valid), c.data.generative_len - 1)
        opts = step_lib.StepOptions.from_config(c, answer_budget=budget)
        self.train_step = jax.jit(parallel.under_mesh(step_lib.make_train_step(self.parts, self.optimizer, opts,
                                                                               self.trainable), self.mesh),
                                  in_shardings=(state_sh, base_sh, self.batch_sh["emb"], self.batch_sh["gen"], rep),
                                  out_shardings=(state_sh, rep), donate_argnums=0)
        self.probe = jax.jit(parallel.under_mesh(step_lib.make_probe_fn(
            self.parts, len(self.emb_tasks), len(self.gen_tasks), c.train.temperature, budget,
            embedding_chunk=c.train.gradcache_chunk, generative_chunk=c.train.generative_micro_batch), self.mesh),
            out_shardings=rep)

    def _begin(self) -> None:
        if jax.process_index() == 0:
            jsonio.write_json(self.workdir / rundir.RUN_FILE, {
                "base": str(self.inputs.base), "base_fingerprint": rundir.base_fingerprint(self.inputs.base),
                "data": str(self.inputs.data), "tokenizer": str(self.inputs.tokenizer.path),
                "jax": jax.__version__, "devices": jax.device_count(), "processes": jax.process_count(),
                **({} if self.extension is None else {"extends": {**self.extension.record(),
                                                                  "replay_rows": self.replay_rows}})})
        self.checkpointer.save_initial(self.state["params"])
        emb_losses, gen_losses = self._probe_losses()
        self.sched_emb.set_normaliser(emb_losses)
        self.sched_gen.set_normaliser(gen_losses)
        self.metrics = MetricsLog(self.workdir, resume_step=0)
        self.initial_probe = {"emb": emb_losses.tolist(), "gen": gen_losses.tolist()}

    def _restore(self, step: int) -> None:
        params, opt_state, meta = self.checkpointer.restore(step, self.state["params"], self.state["opt_state"])
        self.state = {"params": params, "opt_state": opt_state,
                      "step": jax.device_put(jnp.asarray(step, jnp.int32), parallel.replicated(self.mesh))}
        self.batcher.load_state_dict(meta["batcher"])
        self.sched_emb.load_state_dict(meta["s2sched_emb"])
        self.sched_gen.load_state_dict(meta["s2sched_gen"])
        self.key = jax.random.wrap_key_data(jnp.asarray(meta["rng"], jnp.uint32))
        self.initial_probe = meta["initial_probe"]
        self.start_step = step
        self.metrics = MetricsLog(self.workdir, resume_step=step)

    def _probe_losses(self, step: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """Each task's validation loss on the probe set (fixed, or step ``step``'s fresh draw)."""
        emb, gen = self.probe_emb, self.probe_gen
        if self.config.s2sched.probe_sampling == "fresh":
            emb, gen = probe_batches(self.config, self.inputs.valid, step, (self.emb_tasks, self.gen_tasks))
        emb_losses, gen_losses = self.probe(self.state["params"], self.parts.base, emb, gen)
        return np.asarray(emb_losses, np.float64), np.asarray(gen_losses, np.float64)

    # ------------------------------------------------------------------ the loop
    def _device_batch(self, batch: dict | None, kind: str) -> dict | None:
        if batch is None or self.batch_sh[kind] is None:
            return None
        blocks = self.batch_share[1]
        return {k: jax.make_array_from_process_local_data(self.batch_sh[kind][k], v,
                                                          (v.shape[0] * blocks, *v.shape[1:]))
                for k, v in batch.items() if k in self.batch_sh[kind]}

    def save(self, step: int) -> None:
        """Write a checkpoint of the state after ``step`` updates (never one holding NaN or Inf)."""
        if not _is_finite_tree(self.state["params"]):
            raise NonFiniteError(f"refusing to checkpoint step {step}: the params hold NaN or Inf")
        meta = {"step": step, "rng": np.asarray(jax.random.key_data(self.key)).tolist(),
                "batcher": self.batcher.state_dict(), "s2sched_emb": self.sched_emb.state_dict(),
                "s2sched_gen": self.sched_gen.state_dict(), "initial_probe": self.initial_probe}
        self.checkpointer.save(step, self.state["params"], self.state["opt_state"], meta)

    def evaluate_subset(self) -> dict[str, float]:
        """{"eval/<task>": score} of the current params on the first config.eval.subset valid rows of each task."""
        if self._eval_rf is None:  # one RecFound for the run: its jitted functions compile once
            self._eval_rf = RecFound(self.parts.merge(self.state["params"]), self.config, self.inputs.tokenizer)
        else:
            nnx.update(self._eval_rf.model, self.state["params"])
        return evaluate_subset(self._eval_rf, str(self.inputs.data), limit_per_task=self.config.eval.subset)

    def _on_sigterm(self, signum, frame) -> None:  # noqa: ARG002
        self.stop_requested = True

    def _stop_agreed(self) -> bool:
        """Whether any process was asked to stop: all stop at the same step, so the checkpoint is collective."""
        if jax.process_count() == 1:
            return self.stop_requested
        return bool(np.any(multihost_utils.process_allgather(np.asarray(self.stop_requested))))

    def run(self, until: int | None = None) -> dict[str, Any]:
        """Train to the run's last step (`total_steps`), or to step ``until``, or until SIGTERM; then checkpoint
        and return."""
        c = self.config
        end = self.steps if until is None else min(until, self.steps)
        bar = tqdm(total=self.steps, initial=self.start_step, desc="train",
                   disable=not self.progress or jax.process_index() != 0,
                   dynamic_ncols=True)
        nonfinite_run, skipped, tokens_total, started = 0, 0, 0, time.perf_counter()
        step = self.start_step
        last = {}
        try:
            while step < end and not self._stop_agreed():
                last, finite = self._one_step(step)
                step += 1
                tokens_total += last["tokens"]
                nonfinite_run = 0 if finite else nonfinite_run + 1
                skipped += 0 if finite else 1
                if nonfinite_run >= c.train.max_nonfinite:
                    raise NonFiniteError(
                        f"{nonfinite_run} steps in a row had a non-finite loss or gradient (last at step {step}); "
                        f"tasks in the last batch: {last['batch_tasks']}")
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_s']:.0f}")
                if step % c.train.checkpoint_every == 0 or step == self.steps:
                    self.save(step)
            if step not in self.checkpointer.steps():
                self.save(step)
        finally:
            bar.close()
            if self._sigterm_before is not None:
                signal.signal(signal.SIGTERM, self._sigterm_before)
        elapsed = time.perf_counter() - started
        summary = self._summary(step, last, skipped, tokens_total, elapsed)
        if jax.process_index() == 0:
            jsonio.write_json(self.workdir / SUMMARY_FILE, summary)
        self.metrics.close()
        self.checkpointer.close()
        return summary

    def _one_step(self, step: int) -> tuple[dict[str, Any], bool]:
        c = self.config
        emb_counts, gen_counts = self.sched_emb.counts(step), self.sched_gen.counts(step)
        by_task = lambda tasks, counts: {t.id: int(n) for t, n in zip(tasks, counts)}
        emb_np = (self.batcher.embedding_batch(by_task(self.emb_tasks, emb_counts)) if self.batch_sizes["emb"]
                  else None)
        gen_np = (self.batcher.generative_batch(by_task(self.gen_tasks, gen_counts)) if self.batch_sizes["gen"]
                  else None)
        begin = time.perf_counter()
        self.state, metrics = self.train_step(self.state, self.parts.base, self._device_batch(emb_np, "emb"),
                                              self._device_batch(gen_np, "gen"), self.key)
        metrics = jax.device_get(metrics)
        seconds = time.perf_counter() - begin
        tokens = _real_tokens(emb_np, gen_np)
        record: dict[str, Any] = {
            "step": step + 1, "loss": float(metrics["loss"]), "loss_emb": float(metrics["loss_emb"]),
            "loss_gen": float(metrics["loss_gen"]), "grad_norm": float(metrics["grad_norm"]),
            "finite": int(metrics["finite"]), "step_seconds": seconds, "tokens": tokens,
            "tokens_per_s": tokens / max(seconds, 1e-9),
            "lr": float(self.schedule(step))}
        if self.sched_emb.should_observe(step) or self.sched_gen.should_observe(step):
            emb_losses, gen_losses = self._probe_losses(step)
            if self.sched_emb.should_observe(step):
                self.sched_emb.observe(step, emb_losses)
            if self.sched_gen.should_observe(step):
                self.sched_gen.observe(step, gen_losses)
            for task, value in zip(self.emb_tasks + self.gen_tasks, [*emb_losses, *gen_losses]):
                record[f"probe/{task.name}"] = float(value)
        for task, n in zip(self.emb_tasks + self.gen_tasks, [*emb_counts, *gen_counts]):
            record[f"count/{task.name}"] = int(n)
        ratios = [*self.sched_emb.ratios(step + 1), *self.sched_gen.ratios(step + 1)]
        for task, r in zip(self.emb_tasks + self.gen_tasks, ratios):
            record[f"ratio/{task.name}"] = float(r)
        record["batch_digest"] = batch_digest(emb_np, gen_np)
        if c.eval.every and (step + 1) % c.eval.every == 0:
            record.update(self.evaluate_subset())
        if c.train.log_every and (step + 1) % c.train.log_every == 0:
            self.metrics.write(record)
        names = sorted({self.table.get(int(t)).name for b in (emb_np, gen_np) if b is not None for t in b["task_ids"]})
        record["batch_tasks"] = names
        return record, bool(metrics["finite"])

    def _summary(self, step: int, last: dict, skipped: int, tokens: int, elapsed: float) -> dict[str, Any]:
        names = [t.name for t in self.emb_tasks + self.gen_tasks]
        final = dict(zip(names, [*np.concatenate(self._probe_losses())]))
        initial = dict(zip(names, self.initial_probe["emb"] + self.initial_probe["gen"]))
        return {
            "steps": step, "total_steps": self.steps, "completed": step >= self.steps,
            "stopped_by_signal": self.stop_requested,
            "final_loss": last.get("loss"), "final_loss_emb": last.get("loss_emb"),
            "final_loss_gen": last.get("loss_gen"), "skipped_nonfinite_steps": skipped,
            "seconds": elapsed, "tokens_per_s": tokens / max(elapsed, 1e-9),
            "probe_loss_initial": initial, "probe_loss_final": {k: float(v) for k, v in final.items()},
            "data_load_report": {name: split.report.to_dict() if split.report else None
                                 for name, split in (("train", self.inputs.train), ("valid", self.inputs.valid))},
            "truncation": {kind: stats.to_dict() for kind, stats in self.inputs.train.stats.items()},
            "checkpoints": self.checkpointer.steps(),
        }


def _extension(c: ml_collections.ConfigDict, workdir: Path, extend: str | Path | None,
               resume: bool) -> extend_lib.Extension | None:
    """The extension a run makes: of ``extend``, or when resuming, the one its run.json records."""
    recorded = None
    if resume and (workdir / rundir.RUN_FILE).is_file():
        recorded = rundir.read_run_info(workdir).get("extends")
    if recorded is not None:
        if extend is not None and Path(extend).absolute() != Path(recorded["run"]):
            raise extend_lib.ExtendError(f"--extend {extend}: {workdir} extends {recorded['run']}")
        return extend_lib.from_record(recorded, c)
    if extend is None:
        return None
    if Path(extend).absolute() == workdir:
        raise extend_lib.ExtendError(f"--extend {extend}: the new run needs a --workdir of its own; the "
                                     "extended run is kept as it is")
    return extend_lib.plan(c, extend)


def train(c: ml_collections.ConfigDict, workdir: str | Path, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, extend: str | Path | None = None) -> dict[str, Any]:
    """Train a run (building the demo base and data first if the config asks for them); with ``extend``, add
    the config's new tasks to that trained run (`recfound_jax.train.extend`). Returns the summary."""
    return Trainer(c, workdir, resume=resume, overwrite=overwrite, progress=progress, extend=extend).run()
