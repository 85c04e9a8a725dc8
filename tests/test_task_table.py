"""Tasks defined by a table (issue #21, item 1): a config's added tasks flow through the data loaders, the
batcher, S2Sched, inference, evaluation, reports and exports, each resolving tasks in the run's table.

The table here: the released 13, then "Color_Match" (CM, generative, macro_f1 over the letters ABCD, id 14)
and "Emb_brand" (B2I, embedding, mrr@20, id 15).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from recfound_jax import config as config_lib
from recfound_jax import tasks as tasks_lib
from recfound_jax.convert import export
from recfound_jax.convert.hf import load_hf
from recfound_jax.data import batching, formatting, records, sources
from recfound_jax.evaluate import metrics, plots, report, runner
from recfound_jax.evaluate.__main__ import parse_budgets, run_table
from recfound_jax.inference.recfound import RecFound, resolve_task
from recfound_jax.runs import rundir
from recfound_jax.tokenizer import Tokenizer
from recfound_jax.train.s2sched import S2Sched, S2SchedConfig
from tests.train_fixtures import tiny_config, write_model_run, write_tiny_base

CM = dict(name="Color_Match", short="CM", kind="generative", metric="macro_f1", max_new_tokens=1, classes="ABCD")
B2I = dict(name="Emb_brand", short="B2I", kind="embedding", metric="mrr@20")
ADDED = (CM, B2I)


def _config(**extra) -> ml_collections.ConfigDict:
    c = config_lib.base_config()
    c.added_tasks = ADDED
    for key, value in extra.items():
        section, name = key.split("__")
        c[section][name] = value
    return c


@pytest.fixture(scope="module")
def table() -> tasks_lib.TaskTable:
    return config_lib.task_table(_config())


# ---------------------------------------------------------------- the table and its config


def test_added_tasks_get_ids_14_and_15_and_rows_of_their_own(table):
    cm, b2i = table.get("CM"), table.get("Emb_brand")
    assert (cm.id, b2i.id, table.rows) == (14, 15, 16)
    assert cm.classes == "ABCD" and cm.max_new_tokens == 1 and b2i.is_embedding
    assert table.get(14) == cm and table.added == (cm, b2i)
    assert [t.id for t in table.tasks[:13]] == list(range(13))  # the released ids stay
    assert table.row_kinds()[13:] == (tasks_lib.ROW_NONE, tasks_lib.ROW_GENERATIVE, tasks_lib.ROW_EMBEDDING)
    embedding, generative = config_lib.run_tasks(_config())
    assert b2i in embedding and cm in generative
    assert config_lib.generation_budgets(_config())["CM"] == 1
    config_lib.validate(_config())


@pytest.mark.parametrize("position,change,field", [
    (0, {"metric": "bleu"}, "metric"),
    (1, {"kind": "ranking"}, "kind"),
    (0, {"classes": ""}, "classes"),
    (0, {"max_new_tokens": 0}, "max_new_tokens"),
    (1, {"short": "SR"}, "short"),  # a released task's short name is taken
])
def test_a_bad_spec_names_its_position_and_field(position, change, field):
    specs = [dict(spec) for spec in ADDED]
    specs[position].update(change)
    c = config_lib.base_config()
    c.added_tasks = tuple(specs)
    with pytest.raises(config_lib.ConfigError, match=rf"config\.added_tasks\[{position}\]" +
                       (rf"\.{field}" if field != "short" else r": name")):
        config_lib.validate(c)


# ---------------------------------------------------------------- data


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _cm_rows(n: int) -> list[dict]:
    return [{"text": [f"Which colour matches item {i}?\n### Options:\nA: red\nB: blue\nC: green\nD: black",
                      "ABCD"[i % 4]], "task": "Color_Match"} for i in range(n)]


def _b2i_rows(n: int) -> list[dict]:
    return [{"query": ["Retrieve the brand's item", f"brand {i}"], "pos": [["", f"item of brand {i}"]],
             "neg": [["", f"other item {i}"]], "task": "Emb_brand", "source": "shop"} for i in range(n)]


def _sr_rows(n: int) -> list[dict]:
    return [{"text": [f"next item after {i}?", "A"], "task": "Sequential_Recommendation"} for i in range(n)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("added_data")
    for split, n in (("train", 8), ("valid", 4), ("test", 25)):
        _write_jsonl(out / split / "Color_Match.jsonl", _cm_rows(n))
        _write_jsonl(out / split / "Emb_brand.jsonl", _b2i_rows(n))
        _write_jsonl(out / split / "Sequential_Recommendation.jsonl", _sr_rows(n))
    return out


def test_the_loaders_read_rows_of_added_tasks_in_the_run_table(data_dir, table):
    rows, report_ = records.load_split(data_dir, "train", table=table)
    by_task = {r.task: r.task_id for r in rows}
    assert by_task == {"Color_Match": 14, "Emb_brand": 15, "Sequential_Recommendation": 4}
    assert report_.kept_per_task["Color_Match"] == 8 and report_.total_skipped == 0
    assert isinstance(next(r for r in rows if r.task_id == 15), records.EmbeddingRecord)
    kept, filtered = sources.load_split(data_dir, "train", tasks=["CM"], table=table)
    assert {r.task for r in kept} == {"Color_Match"} and filtered.filtered_per_task["Emb_brand"] == 8
    table_row = records.parse_table_row(_cm_rows(1)[0], "t.parquet", 0, table)[0]
    assert table_row.task_id == 14


def test_the_loaders_refuse_a_task_outside_the_table_listing_its_names(data_dir, table, tmp_path):
    with pytest.raises(records.RecordError, match="unknown_task") as released_only:
        records.load_split(data_dir, "train")  # the released table: Color_Match is not one of its tasks
    assert "Color_Match" in str(released_only.value) and "Emb_brand" not in str(released_only.value)
    _write_jsonl(tmp_path / "train" / "x.jsonl", [{"text": ["p", "a"], "task": "Colour_Match"}])
    with pytest.raises(records.RecordError, match="unknown_task") as unknown:
        records.load_split(tmp_path, "train", table=table)
    message = str(unknown.value)
    assert "'Colour_Match' is not one of" in message and "Color_Match" in message and "Emb_brand" in message
    with pytest.raises(KeyError, match="Emb_brand"):
        records.load_split(data_dir, "train", tasks=["Nope"], table=table)


def test_synthetic_data_with_added_tasks_fails_early_naming_config_added_tasks(table, data_dir):
    embedding, generative = config_lib.run_tasks(_config())
    with pytest.raises(ValueError, match=r"config\.added_tasks\[0\] \(Color_Match\), config\.added_tasks\[1\]"):
        sources.check_synthetic_tasks("synthetic", table, [*embedding, *generative])
    sources.check_synthetic_tasks("synthetic", table, [table.get("SR")])  # released tasks only: fine
    sources.check_synthetic_tasks(str(data_dir), table, [*embedding, *generative])
    _, loaded = records.load_split(data_dir, "train", table=table, tasks=["SR", "CM"])
    with pytest.raises(ValueError, match=r"no rows of config\.added_tasks\[1\] \(Emb_brand\)"):
        sources.check_added_task_rows(table, [table.get("CM"), table.get("B2I")], loaded, data_dir)


def test_the_batcher_draws_rows_of_the_added_tasks(data_dir, table):
    rows, _ = records.load_split(data_dir, "train", table=table)
    data = formatting.tokenize_records(rows, Tokenizer(), query_max_len=32, passage_max_len=32, generative_max_len=64)
    c = _config(data__query_len=32, data__passage_len=32, data__generative_len=64)
    cfg = batching.BatchConfig.from_config(c, embedding_batch_size=4, generative_batch_size=6, seed=0)
    assert cfg.embedding_tasks == table.embedding and cfg.generative_tasks == table.generative
    batcher = batching.Batcher(data, cfg)
    emb = batcher.embedding_batch({"B2I": 4})
    assert emb["task_ids"].tolist() == [15] * 4
    gen = batcher.generative_batch({"Color_Match": 4, 4: 2})
    assert gen["task_ids"].tolist() == [4, 4] + [14] * 4  # laid out in the table's order: SR (4), then CM (14)
    assert sorted(batcher.state_dict()["generative_pools"]) == sorted(str(t.id) for t in table.generative)
    with pytest.raises(ValueError, match="task 'CM' is not one of this batch's tasks"):
        batcher.embedding_batch({"CM": 4})
    with pytest.raises(ValueError, match="not among the batch config's tasks"):
        batching.Batcher(data, batching.BatchConfig(4, 6, 32, 32, 64, seed=0))  # the released pools only


def test_s2sched_schedules_an_added_task_and_reads_its_size_prior(table):
    ids = [t.id for t in table.generative]
    prior = {t.short: 1.0 for t in table.generative} | {"CM": 3.0}
    sched = S2Sched(S2SchedConfig.default(size_prior=prior), ids, batch_size=33, total_steps=10, table=table)
    counts = dict(zip(ids, sched.counts(0)))
    assert sum(counts.values()) == 33 and counts[14] == max(counts.values())
    with pytest.raises(KeyError, match="unknown task 14"):
        S2Sched(S2SchedConfig.default(), ids, batch_size=33, total_steps=10)  # the released table has no 14
    with pytest.raises(ValueError, match="non-finite probe loss for Color_Match"):
        sched.set_normaliser([1.0] * (len(ids) - 1) + [float("nan")])


# ---------------------------------------------------------------- metrics


def _macro_f1(predictions: list[str], references: list[str], classes: str) -> float:
    """Macro F1 over the classes in the references or valid predictions; an invalid prediction is a miss."""
    pred = np.array([p.strip()[:1] if p.strip()[:1] in classes else "?" for p in predictions])
    ref = np.array([r.strip()[:1] for r in references])
    present = sorted(set(ref) | (set(pred) - {"?"}))
    f1s = []
    for c in present:
        tp, fp = np.sum((pred == c) & (ref == c)), np.sum((pred == c) & (ref != c))
        fn = np.sum((pred != c) & (ref == c))
        p, r = (tp / (tp + fp) if tp + fp else 0.0), (tp / (tp + fn) if tp + fn else 0.0)
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    return float(np.mean(f1s))


def test_score_task_scores_the_added_macro_f1_task_with_its_own_classes(table):
    references = ["A", "B", "C", "D", "D", "A", "C", "B"]
    predictions = ["A", "B", "D", "D", "E", "A", "C", "C"]  # E is no option of CM: invalid
    expected = _macro_f1(predictions, references, "ABCD")
    by_task = metrics.score_task(table.get("CM"), predictions, references)
    by_name = metrics.score_task("CM", predictions, references, table=table)
    assert by_task["score"] == pytest.approx(expected) == by_name["score"]
    assert by_task["invalid"] == 1 and by_task["task"] == "Color_Match"
    # SA's letters (ABCDE) would count E as a class and score differently
    assert metrics.score_task("SA", predictions, references)["score"] != pytest.approx(expected)
    with pytest.raises(KeyError, match="unknown task 'CM'"):
        metrics.score_task("CM", predictions, references)  # not a released task
    with pytest.raises(ValueError, match="embedding task"):
        metrics.score_task(table.get("B2I"), predictions, references)


# ---------------------------------------------------------------- evaluation and reports


def _unit_vector(text: str, dim: int = 64) -> np.ndarray:
    v = np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")).normal(size=dim)
    return v / np.linalg.norm(v)


class Oracle:
    """Answers every prompt with its reference and embeds each query onto its positive, with a run config."""

    step = 3

    def __init__(self, data_dir: Path, config: ml_collections.ConfigDict):
        self.config = config
        rows, _ = records.load_split(data_dir, "test", table=config_lib.task_table(config))
        self.answers = {r.turns[-1][0]: r.turns[-1][1] for r in rows if isinstance(r, records.GenerativeRecord)}
        self.positive = {r.query: r.pos[0][1] for r in rows if isinstance(r, records.EmbeddingRecord)}
        self.tokenizer, self.budgets = self, {}

    def embed_pairs(self, pairs, *, task, role="query", batch_size=64):
        return np.stack([_unit_vector(text if role == "passage" else self.positive[(i, text)]) for i, text in pairs])

    def generate_ids(self, prompts, *, task, max_new_tokens=64, batch_size=16):
        self.budgets[task] = max_new_tokens
        return [np.asarray([ord(self.answers[p])]) for p in prompts]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


@pytest.fixture(scope="module")
def evaluated(data_dir):
    oracle = Oracle(data_dir, _config())
    return oracle, runner.evaluate(oracle, str(data_dir), progress=False)


def test_evaluate_scores_the_added_tasks_of_the_run_table(evaluated, table):
    oracle, result = evaluated
    assert list(result["tasks"]) == [t.name for t in table.tasks]  # every task of the table, in id order
    cm, b2i = result["tasks"]["Color_Match"], result["tasks"]["Emb_brand"]
    assert cm["score"] == pytest.approx(1.0) and cm["n"] == 25 and cm["id"] == 14 and cm["metric"] == "macro_f1"
    assert oracle.budgets["Color_Match"] == cm["max_new_tokens"] == 1 and result["max_new_tokens"]["CM"] == 1
    assert b2i["score"] == pytest.approx(1.0) and b2i["n"] == 25 and b2i["task_metric"] == "mrr@20"
    assert result["tasks"]["Emb_user"]["score"] is None  # no rows of it in this dataset
    assert runner.generation_budgets(oracle.config, {"CM": 3})["CM"] == 3
    assert [t.short for t in runner._select_tasks(["B2I", "CM"], oracle.config)] == ["CM", "B2I"]


def test_the_report_gives_each_added_task_a_column_and_chance_a_blank_there(evaluated, table):
    _, result = evaluated
    chance = {t.name: {"metric": t.metric, "chance": 0.25, "how": "test"} for t in tasks_lib.TASKS}  # released only
    for given in (table, None):  # the run's table, or the one the metrics describe
        markdown = report.results_markdown(result, name="ours", chance=chance, table=given)
        header = next(line for line in markdown.splitlines() if line.startswith("| Model | QR"))
        assert header.split(" | ")[-1] == "CM |"
        embedding_header = next(line for line in markdown.splitlines() if line.startswith("| Model | I2I"))
        assert embedding_header.endswith("| U2I | B2I |")
        ours = [line for line in markdown.splitlines() if line.startswith("| ours |")]
        assert ours[0].endswith("| 1.000 |") and ours[1].endswith("| 1.000 |")
        chance_rows = [line for line in markdown.splitlines() if line.startswith("| chance |")]
        assert chance_rows[0].endswith(f"| {report.MISSING} |") and chance_rows[1].endswith(f"| {report.MISSING} |")
        assert "| CM | Color_Match | macro_f1 | 1.0000 | 25 |" in markdown
    assert report.scores_of(result)["Emb_brand"] == pytest.approx(1.0)
    assert report.scores_of(chance, table)["Color_Match"] is None


def test_plots_follow_the_table(table, tmp_path):
    routing = np.random.default_rng(0).random((len(table.tasks), 6))
    similarity = plots.class_similarity(routing, list(table.tasks))
    assert set(similarity) == {"intra_embedding", "intra_generative", "cross"}
    assert plots.routing_heatmap(routing, [t.short for t in table.tasks], tmp_path / "r.png", table=table).is_file()
    records_ = [{"step": s, "ratio/Color_Match": 0.1 * s, "ratio/Emb_brand": 0.2} for s in range(3)]
    assert plots.has_series(records_, "ratio", table) and not plots.has_series(records_, "ratio")
    assert plots.schedule_plot(records_, tmp_path / "s.png", table=table).is_file()


# ---------------------------------------------------------------- inference and export


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run with the two added tasks and one added expert of each kind per projection; its adapters
    (B, routers) are random, so every expert and gate matters."""
    base = write_tiny_base(tmp_path_factory.mktemp("base"))
    c = tiny_config(base)
    c.unlock()
    c.added_tasks = ADDED
    c.extend.new_experts = 1
    c.lock()
    model = rundir.build_model(c, base)
    keys = iter(jax.random.split(jax.random.key(3), 64))
    for banks in (model.adapters.banks, model.adapters.added_banks):
        for bank in banks.values():
            bank.b.set_value(0.3 * jax.random.normal(next(keys), bank.b.shape))
            bank.router_b[0].set_value(jax.random.normal(next(keys), bank.router_b[0].shape))
    return write_model_run(tmp_path_factory.mktemp("runs") / "run", c, base, model, 2)


def _softmax(x: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    x = np.where(allowed, x, -np.inf)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _numpy_folded(model, task: tasks_lib.Task) -> dict[str, np.ndarray]:
    """W0 + scale * sum_e gate_e A_e B_e over the task's experts of both banks, in numpy, per target [L, out, in]."""
    adapters = model.adapters
    cfg = adapters.cfg
    vector = np.asarray(adapters.task_embedding[...])[task.id]
    path = "encoding" if task.is_embedding else "generation"
    out = {}
    for name in cfg.targets:
        w0 = np.asarray(getattr(model.layers, name)[...], np.float64)
        delta = np.zeros((w0.shape[0], w0.shape[2], w0.shape[1]))  # [L, in, out]
        for bank, allowed in ((adapters.banks[name], cfg.allowed_experts(path)[task.id]),
                              (adapters.added_banks[name], cfg.allowed_added_experts()[task.id])):
            assert allowed.any()  # an added task routes to experts of both banks
            a, b = np.asarray(bank.a[...], np.float64), np.asarray(bank.b[...], np.float64)
            w, bias = np.asarray(bank.router_w[0][...], np.float64), np.asarray(bank.router_b[0][...], np.float64)
            for layer in range(w0.shape[0]):
                gate = _softmax(vector @ w[layer] + bias[layer], allowed)
                for e in np.flatnonzero(allowed):
                    delta[layer] += cfg.scale * gate[e] * a[layer, e] @ b[layer, e]
        out[name] = w0 + np.swapaxes(delta, 1, 2)
    return out


@pytest.mark.parametrize("short", ["CM", "B2I"])
def test_the_export_of_an_added_task_folds_its_experts_of_both_banks(run_dir, tmp_path, short):
    model, c, _ = rundir.load_model(run_dir)
    task = config_lib.task_table(c).get(short)
    out = export.export_task(run_dir, short, tmp_path / short)
    folded = load_hf(out)
    expected = _numpy_folded(model, task)
    for name, weights in expected.items():
        np.testing.assert_allclose(np.asarray(getattr(folded.layers, name)[...]), weights, rtol=1e-5, atol=1e-5)
    assert f"`{task.name}` (id {task.id}" in (out / export.README).read_text()
    # the logits of the folded export are the TMoLE model's on the added task's row
    ids = jnp.asarray(np.random.default_rng(1).integers(3, 32768, size=(2, 9)))
    mask = jnp.ones_like(ids)
    causal = not task.is_embedding
    expected_logits = model(ids, mask, task_ids=jnp.full((2,), task.id), causal=causal)
    np.testing.assert_allclose(np.asarray(folded(ids, mask, causal=causal)), np.asarray(expected_logits),
                               rtol=1e-4, atol=1e-4)


def test_export_resolves_tasks_in_the_run_table(run_dir, tmp_path, capsys):
    assert [t.name for t in export.resolve_tasks(run_dir, None)][-2:] == ["Color_Match", "Emb_brand"]
    with pytest.raises(KeyError, match="Emb_brand"):
        export.resolve_tasks(run_dir, ["Nope"])
    assert export.main(["--run", str(run_dir), "--task", "CM", "--peft", "--out", str(tmp_path / "cm")]) == 0
    assert "exported Color_Match" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        export.main(["--run", str(run_dir), "--task", "Nope", "--out", str(tmp_path / "x")])
    assert exited.value.code == 2 and "Color_Match" in capsys.readouterr().err


def test_the_evaluate_cli_reads_budgets_of_the_run_table(run_dir, table):
    assert run_table(run_dir) == table
    assert parse_budgets(["5", "CM=2"], table) == {**{t.short: 5 for t in table.generative}, "CM": 2}
    with pytest.raises(SystemExit):
        parse_budgets(["CM=2"])  # the released table has no CM
    with pytest.raises(SystemExit):
        parse_budgets(["B2I=2"], table)  # an embedding task generates nothing


def test_recfound_resolves_and_routes_the_run_table(run_dir):
    rf = RecFound.from_run(run_dir)
    assert rf.table.get("CM").id == 14 and rf.task("Emb_brand", "embedding").id == 15
    with pytest.raises(ValueError, match="generative task"):
        rf.task("CM", "embedding")
    with pytest.raises(KeyError, match="unknown task 'CM'"):
        resolve_task("CM")  # the released table
    routing = rf.routing()
    assert routing.shape[0] == len(rf.table.tasks) == 15
    assert rf.routing(["CM"]).shape == (1, routing.shape[1])
    vectors = rf.embed(["brand 1"], task="B2I", instruction="Retrieve the brand's item")
    assert vectors.shape == (1, 32) and np.isfinite(vectors).all()
