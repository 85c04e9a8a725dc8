"""The inference API: load a run at any checkpoint, embed texts, generate answers, read the routing.

    rf = RecFound.from_run("runs/demo")                     # latest checkpoint, with its adapters
    vectors = rf.embed(["red running shoes"], task="Q2I", instruction="Retrieve the product")
    answers = rf.generate([prompt], task="SR", max_new_tokens=1)
    gates = rf.routing()                                     # [tasks of the run's table, features] (Figure 2)

Inputs use exactly the training formats (data/formatting.py): embeddings are GritLM's
``<s><|user|>\\n{instruction}\\n<|embed|>\\n{text}`` (or ``<s><|embed|>\\n{text}``) under bidirectional
attention, mean-pooled over the text tokens and L2-normalised, as the training loss sees them;
generation feeds ``<s><|user|>\\n{prompt}\\n<|assistant|>\\n`` (or a chat model's own format,
``prompt_format``: data/prompt_formats.py) and decodes greedily (inference/decoding.py). Both are jitted
on bucketed shapes and routed by the task's id. Tasks resolve in the run's table (`RecFound.table`: the
released 13 and the run's config.added_tasks).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from recfound_jax import config as config_lib
from recfound_jax import tasks as tasks_lib
from recfound_jax.data import formatting, prompt_formats
from recfound_jax.inference import decoding
from recfound_jax.inference.encoding import EmbeddingEncoder
from recfound_jax.model.mistral import Mistral
from recfound_jax.runs import rundir
from recfound_jax.tasks import Task, TaskTable
from recfound_jax.tokenizer import TextTokenizer, load_tokenizer

ROLES = ("query", "passage")


def resolve_task(task: Task | str | int, kind: str | None = None, table: TaskTable | None = None) -> Task:
    """The task of ``table`` (default: the released 13) named by name, short name or id, or a Task of it; with
    ``kind``, it must be of that kind. KeyError lists the table's names."""
    table = table or tasks_lib.RELEASED
    if isinstance(task, Task):
        if task not in table.tasks:
            raise KeyError(f"task {task.name} (id {task.id}) is not a task of this run's table; "
                           f"valid tasks: {', '.join(t.name for t in table.tasks)}")
        found = task
    else:
        found = table.get(int(task) if isinstance(task, (int, np.integer)) else task)
    if kind is not None and found.kind != kind:
        raise ValueError(f"task {found.name} is a {found.kind} task, not a {kind} one")
    return found


class RecFound:
    """A RecFound model ready for inference: embedding, generation and routing, per task."""

    def __init__(self, model: Mistral, config: ml_collections.ConfigDict, tokenizer: TextTokenizer, *,
                 step: int | None = None, run_dir: str | os.PathLike | None = None, prompt_format: str = "gritlm"):
        if prompt_format not in prompt_formats.PROMPT_FORMATS:
            raise ValueError(f"prompt_format {prompt_format!r} is not one of {prompt_formats.PROMPT_FORMATS}")
        self.prompt_format = prompt_format
        self.model = model
        self.config = config
        self.tokenizer = tokenizer
        self.step = step
        self.run_dir = None if run_dir is None else Path(run_dir)
        self._formatter = formatting.Formatter(tokenizer)
        self._encoder: EmbeddingEncoder | None = None
        self._generator: decoding.GreedyGenerator | None = None
        self.table = config_lib.task_table(config)  # the run's tasks: the released 13 and config.added_tasks

    def task(self, task: Task | str | int, kind: str | None = None) -> Task:
        """A task of the run's table (`resolve_task` in `table`)."""
        return resolve_task(task, kind, self.table)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, step: int | None = None, *, base_only: bool = False,
                 mesh: jax.sharding.Mesh | None = None, prompt_format: str = "gritlm") -> RecFound:
        """The base and adapters of a run's checkpoint ``step`` (default: the latest; 0: before training).

        ``base_only=True`` gives the base model without adapters (the "w/o fine-tuning" model);
        ``prompt_format`` wraps generation prompts (`prompt_formats.PROMPT_FORMATS`).
        """
        model, c, step = rundir.load_model(run_dir, step, mesh=mesh, with_adapters=not base_only)
        return cls(model, c, rundir.load_tokenizer(run_dir), step=step, run_dir=run_dir,
                   prompt_format=prompt_format)

    @classmethod
    def from_base(cls, base_dir: str | os.PathLike, *, dtype: str = "float32", mesh: jax.sharding.Mesh | None = None,
                  prompt_format: str = "gritlm") -> RecFound:
        """A bare HF checkpoint (Mistral, Llama or Qwen2) with no adapters and its own tokenizer: a zero-shot
        baseline such as Llama-3-8B-Instruct with ``prompt_format="llama3"``. ``dtype``: weights and compute."""
        c = config_lib.base_config()
        c.name = Path(base_dir).name
        c.model.base = str(base_dir)
        c.model.param_dtype = c.model.compute_dtype = dtype
        model = rundir.build_model(c, Path(base_dir), mesh=mesh, with_adapters=False)
        return cls(model, c, load_tokenizer(rundir.tokenizer_path(Path(base_dir))), prompt_format=prompt_format)

    # ------------------------------------------------------------------------------------ embedding
    @property
    def encoder(self) -> EmbeddingEncoder:
        """The jitted embedding encoder (made on first use)."""
        if self._encoder is None:
            self._encoder = EmbeddingEncoder(self.model, pad_id=self.tokenizer.pad_id)
        return self._encoder

    def embed(self, texts: Sequence[str], *, task: Task | str | int, instruction: str | None = None,
              role: str = "query", batch_size: int = 64, progress: bool | None = None) -> np.ndarray:
        """L2-normalised float32 [n, hidden] embeddings of texts under one instruction (None: none).

        ``role`` picks the truncation length only (data.query_len or data.passage_len).
        """
        return self.embed_pairs([(instruction, t) for t in texts], task=task, role=role, batch_size=batch_size,
                                progress=progress)

    def embed_pairs(self, pairs: Sequence[tuple[str | None, str]], *, task: Task | str | int, role: str = "query",
                    batch_size: int = 64, progress: bool | None = None) -> np.ndarray:
        """L2-normalised float32 [n, hidden] embeddings of (instruction, text) pairs, as the data carries them."""
        task_id = self.task(task, "embedding").id
        max_len = self._role_len(role)
        formatted = self._formatter.embedding_many([("" if i is None else i, t) for i, t in pairs], max_len)
        return self.encoder.encode([ids for ids, _ in formatted], [n for _, n in formatted], task_id,
                                   max_len=max_len, batch_size=batch_size, progress=progress)

    def _role_len(self, role: str) -> int:
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {ROLES}")
        return int(self.config.data.query_len if role == "query" else self.config.data.passage_len)

    # ------------------------------------------------------------------------------------ generation
    @property
    def max_prompt_len(self) -> int:
        """Prompt tokens kept (longer prompts are cut in the middle): the training length minus one answer token."""
        return int(self.config.data.generative_len) - 1

    @property
    def generator(self) -> decoding.GreedyGenerator:
        """The jitted greedy generator (made on first use)."""
        if self._generator is None:
            self._generator = decoding.GreedyGenerator(
                self.model, eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id,
                max_prompt_len=self.max_prompt_len)
        return self._generator

    def prompt_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        """Model inputs of prompts in `prompt_format` (the training format ``<s><|user|>\\n{prompt}\\n<|assistant|>\\n``
        by default), cut to `max_prompt_len`."""
        return prompt_formats.prompt_ids(self.tokenizer, prompts, self.prompt_format, self.max_prompt_len)

    def generate_ids(self, prompts: Sequence[str], *, task: Task | str | int, max_new_tokens: int = 64,
                     batch_size: int = 16, progress: bool | None = None) -> list[np.ndarray]:
        """Greedy answer token ids of each prompt, up to (not including) its first EOS."""
        task_id = self.task(task, "generative").id
        tokens = self.generator.generate(self.prompt_ids(prompts), task_id, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size, progress=progress)
        return [decoding.trim_at_eos(row, self.tokenizer.eos_id) for row in tokens]

    def generate(self, prompts: Sequence[str], *, task: Task | str | int, max_new_tokens: int = 64,
                 batch_size: int = 16, progress: bool | None = None) -> list[str]:
        """Greedy answers of the generative rows' prompts, decoded, each stopped at its first EOS."""
        ids = self.generate_ids(prompts, task=task, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                progress=progress)
        return [self.tokenizer.decode(row) for row in ids]

    # ------------------------------------------------------------------------------------ routing
    def routing(self, tasks: Sequence[Task | str | int] | None = None) -> np.ndarray:
        """[n_tasks, features]: each task's gate distributions over experts, concatenated over the
        target projections (q, k, v, o order) and layers, then those of the added banks when the run has
        them (extend.new_experts); default every task of the run's table in id order."""
        adapters = self.model.adapters
        if adapters is None or not adapters.cfg.enabled:
            raise ValueError("routing needs a TMoLE model with adapters (not base_only, not a plain LoRA run)")
        ids = jnp.asarray([self.task(t).id for t in (self.table.tasks if tasks is None else tasks)], jnp.int32)
        # {target: [L, n_tasks, N]}; each task routes to its kind's experts on either path
        gates = adapters.gates(ids, "generation")
        features = [np.swapaxes(np.asarray(gates[t], np.float32), 0, 1).reshape(len(ids), -1)
                    for t in adapters.cfg.targets]
        added = adapters.added_gates(ids)  # {} without added banks; 0 for the released tasks
        features += [np.swapaxes(np.asarray(added[t], np.float32), 0, 1).reshape(len(ids), -1)
                     for t in adapters.cfg.targets if t in added]
        return np.concatenate(features, axis=1)

