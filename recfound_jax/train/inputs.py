"""A run's inputs: the base checkpoint (the demo's built on first use), the dataset (the synthetic one
generated on first use), the base's tokenizer, and the tokenized train and valid splits."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_collections
from absl import logging

from recfound_jax import config as config_lib
from recfound_jax import recipes
from recfound_jax.data import formatting, hf_tokenize, sources
from recfound_jax.demo import pretrain, synthetic
from recfound_jax.runs import rundir
from recfound_jax.tokenizer import TextTokenizer, load_tokenizer


def demo_base_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The recipe of the demo base a run uses: model.base_recipe, pretrained on the run's own synthetic world
    (data.synthetic_scale and data.synthetic_seed) when the run trains on the synthetic data."""
    base_config = recipes.load(c.model.base_recipe)
    if c.data.dir == "synthetic":
        base_config.data.scale = c.data.synthetic_scale
        base_config.data.seed = c.data.synthetic_seed
    return base_config


def resolve_base(c: ml_collections.ConfigDict, *, build: bool = True, progress: bool = True) -> Path:
    """The base checkpoint directory; "demo" builds (once) the tiny base of `demo_base_recipe`, with
    progress bars unless ``progress`` is False."""
    if c.model.base != "demo":
        return Path(c.model.base).absolute()
    base_config = demo_base_recipe(c)
    return Path(pretrain.ensure_base(base_config, progress=progress) if build else pretrain.base_dir(base_config))


def resolve_data(c: ml_collections.ConfigDict) -> Path:
    """The dataset directory (any form `data.sources` reads); "synthetic" generates it (once) under the cache."""
    if c.data.dir != "synthetic":
        return Path(c.data.dir).absolute()
    out = config_lib.synthetic_dir(c.data.synthetic_scale, c.data.synthetic_seed)
    synthetic.ensure_dataset(out, scale=c.data.synthetic_scale, seed=c.data.synthetic_seed)
    return out


@dataclasses.dataclass
class Inputs:
    """What a run reads: base checkpoint, dataset, tokenizer and tokenized splits."""

    base: Path
    data: Path
    tokenizer: TextTokenizer
    train: formatting.TokenizedSplit
    valid: formatting.TokenizedSplit


def total_steps(c: ml_collections.ConfigDict, train: formatting.TokenizedSplit) -> int:
    """The run's step count: train.steps when set, else train.epochs passes as the released trainer counts
    them. Its dataset has as many items as the larger of the trained branches' rows, and a step takes an
    embedding batch of items (a generative batch in a generative-only run), the last incomplete batch
    dropped, the data repeated once per epoch; at least one step."""
    if c.train.steps:
        return c.train.steps
    branches = ((len(train.embedding), c.train.embedding_batch), (len(train.generative), c.train.generative_batch))
    items = max(rows for rows, batch in branches if batch)
    batch = c.train.embedding_batch or c.train.generative_batch
    return max(1, int(c.train.epochs * items) // batch)


def prepare_inputs(c: ml_collections.ConfigDict, workdir: Path, progress: bool = True) -> Inputs:
    """Find (or generate) the dataset and validate every row of train and valid, then build or find the
    base, then tokenize both splits (``datasets``' cache under ``workdir/token_cache``): a bad row fails before
    any base is built. Rows may name any task of the run's table (`config.task_table`); a trained added task
    needs rows in the train split, and a data.dir other than "synthetic" (`sources.check_synthetic_tasks`)."""
    table = config_lib.task_table(c)
    trained = [t for kind in config_lib.run_tasks(c) for t in kind]
    sources.check_synthetic_tasks(c.data.dir, table, trained)
    data = resolve_data(c)
    tasks = [t.id for t in trained]  # rows of other tasks are counted, not kept
    loaded = {split: sources.load_split(data, split, on_error=c.data.on_error, tasks=tasks, table=table)
              for split in ("train", "valid")}
    sources.check_added_task_rows(table, trained, loaded["train"][1], data)
    base = resolve_base(c, progress=progress)
    tokenizer = load_tokenizer(rundir.tokenizer_path(base))
    kwargs = dict(query_max_len=c.data.query_len, passage_max_len=c.data.passage_len,
                  generative_max_len=c.data.generative_len, cache_dir=workdir / "token_cache",
                  on_error=c.data.on_error, tasks=tasks, num_proc=c.data.num_proc, progress=progress, table=table)
    train = hf_tokenize.tokenize_split(data, "train", tokenizer, loaded=loaded["train"], **kwargs)
    valid = hf_tokenize.tokenize_split(data, "valid", tokenizer, loaded=loaded["valid"], **kwargs)
    for split in (train, valid):
        if split.report is not None and split.report.total_skipped:
            logging.warning("skipped bad data rows (data.on_error=skip):\n%s", split.report.summary())
    for kind, stats in train.stats.items():
        if stats.truncated:
            key = {"query": "query_len", "passage": "passage_len", "generative": "generative_len"}[kind]
            logging.warning("%d of %d %s rows of the train split are longer than data.%s=%d and were truncated",
                            stats.truncated, stats.rows, kind, key, c.data[key])
    return Inputs(base, data, tokenizer, train, valid)
