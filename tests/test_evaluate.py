"""The evaluation runner, report tables, plots and the `python -m recfound_jax.evaluate` CLI.

The runner's wiring is checked with oracle models (an embedder that maps each query onto its
positive, a generator that answers with the reference): every task must then score 1.0. The CLI and
`evaluate_subset` run on a tiny 3-step training run of the synthetic data.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from recfound_jax import config as config_lib
from recfound_jax import recipes
from recfound_jax.data import records
from recfound_jax.demo import synthetic
from recfound_jax.evaluate import plots, report, runner
from recfound_jax.evaluate.__main__ import main
from recfound_jax.evaluate.report import default_out_dir
from recfound_jax.inference.recfound import RecFound
from recfound_jax.runs import rundir
from recfound_jax.tasks import RELEASED_MAX_NEW_TOKENS, TASKS, get_task
from recfound_jax.train.trainer import train
from tests.train_fixtures import tiny_config, write_tiny_base

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_tiny_run(root: Path) -> Path:
    """A 3-step run of the tiny base on the synthetic data under ``root`` (made once per session)."""
    run_dir = root / "tiny_run"
    if (run_dir / "summary.json").is_file():
        return run_dir
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECFOUND_CACHE", str(root / "cache"))
        base = write_tiny_base(root / "tiny_base")
        train(tiny_config(base, train__steps=3, train__checkpoint_every=3), run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.getbasetemp() / "cache" / "synthetic" / "scale1-seed0"
    synthetic.ensure_dataset(out)
    return out


# ---------------------------------------------------------------- oracle models


def _unit_vector(text: str, dim: int = 256) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim)
    return v / np.linalg.norm(v)


class OracleModel:
    """Embeds a passage as a random unit vector of its text and a query as the mean of its
    positives' vectors; answers each prompt with its reference."""

    step = 7

    def __init__(self, data_dir: Path, split: str):
        rows, _ = records.load_split(data_dir, split)
        self.positives = {}
        self.answers = {}
        self.budgets: dict[str, int] = {}
        for row in rows:
            if isinstance(row, records.EmbeddingRecord):
                # A query repeated in the split (I2I anchors) points at the positives of all its rows.
                self.positives.setdefault((row.task, row.query), []).extend(text for _, text in row.pos)
            else:
                self.answers[row.turns[-1][0]] = row.turns[-1][1]

    def embed_pairs(self, pairs, *, task, role="query", batch_size=64):
        if role == "passage":
            return np.stack([_unit_vector(text) for _, text in pairs])
        means = [np.mean([_unit_vector(t) for t in self.positives[(task, pair)]], axis=0) for pair in pairs]
        return np.stack([m / np.linalg.norm(m) for m in means])

    @property
    def tokenizer(self) -> OracleModel:
        return self  # each answer is one token: its index in `vocabulary`

    def generate_ids(self, prompts, *, task, max_new_tokens=64, batch_size=16):
        self.budgets[task] = max_new_tokens
        answers = [self.answers[p] for p in prompts]
        self.vocabulary = sorted(set(answers))
        return [np.asarray([self.vocabulary.index(a)]) for a in answers]

    def decode(self, ids):
        return "".join(self.vocabulary[i] for i in ids)


def test_oracle_scores_one_on_every_task(data_dir):
    oracle = OracleModel(data_dir, "test")
    result = runner.evaluate(oracle, str(data_dir), progress=False)
    assert set(result["tasks"]) == {t.name for t in TASKS}
    assert result["step"] == 7
    for name, r in result["tasks"].items():
        assert r["score"] == pytest.approx(1.0), (name, r)
        assert r["n"] == 60, name  # every test row was scored: no query lacked negatives
    for task in TASKS:
        r = result["tasks"][task.name]
        if task.is_embedding:
            # Every positive is among the nearest catalog items; U2I and Q2I's is the nearest.
            assert r["catalog"]["recall@20"] == pytest.approx(1.0)
            if task.short != "I2I":
                assert r["catalog"]["recall@1"] == pytest.approx(1.0)
            assert r["catalog_size"] <= r["pool_size"]
        else:
            assert oracle.budgets[task.name] == r["max_new_tokens"] == RELEASED_MAX_NEW_TOKENS[task.short]
            # the oracle's one-token answers never end with an EOS: they fill a budget of 1
            assert r["hit_max_new_tokens"] == (r["n"] if r["max_new_tokens"] == 1 else 0)
            assert len(r["examples"]) == runner.NUM_EXAMPLES
            assert r["examples"][0]["prediction"] == r["examples"][0]["reference"]
    json.dumps(result)  # metrics.json material


def test_stride_and_limit_choose_the_queries_but_not_the_pool(data_dir):
    oracle = OracleModel(data_dir, "test")
    full = runner.evaluate(oracle, str(data_dir), tasks=["U2I", "SR"], progress=False)
    strided = runner.evaluate(oracle, str(data_dir), tasks=["U2I", "SR"], embedding_stride=10, limit_per_task=4,
                              progress=False)
    assert list(strided["tasks"]) == [get_task("U2I").name, get_task("SR").name]
    u2i = get_task("U2I").name
    assert strided["tasks"][u2i]["queries"] == 4  # rows 0, 10, 20, 30
    assert strided["tasks"][u2i]["pool_size"] == full["tasks"][u2i]["pool_size"]
    assert strided["tasks"][get_task("SR").name]["n"] == 4


def test_generation_budgets_are_the_released_ones_unless_the_config_or_the_caller_sets_them():
    released = runner.generation_budgets()
    assert released == {"QR": 256, "SR": 1, "PRP": 1, "SA": 1, "AVE": 256, "PM": 1, "UP": 2048, "IP": 2048,
                        "AP": 1, "AG": 2048}
    assert runner.generation_budgets(config_lib.base_config()) == released
    demo = recipes.load("demo")
    assert runner.generation_budgets(demo)["PM"] == 4 and runner.generation_budgets(demo)["UP"] == 128
    assert runner.generation_budgets(demo, {"UP": 4096, "Sentiment_Analysis": 1})["UP"] == 4096  # raised
    assert runner.generation_budgets(demo, {"SA": 1})["SA"] == 1  # lowered
    assert set(runner.generation_budgets(demo, 7).values()) == {7}
    with pytest.raises(ValueError, match="U2I is an embedding task"):
        runner.generation_budgets(None, {"U2I": 3})
    with pytest.raises(ValueError, match="a budget is at least 1"):
        runner.generation_budgets(None, {"SR": 0})


def test_a_generated_answer_that_fills_its_budget_is_counted(data_dir):
    """A model whose answers never end: every output of every task hits its budget."""
    class Endless(OracleModel):
        def generate_ids(self, prompts, *, task, max_new_tokens=64, batch_size=16):
            self.vocabulary = ["x"]
            return [np.zeros(max_new_tokens, np.int64) for _ in prompts]

    result = runner.evaluate(Endless(data_dir, "test"), str(data_dir), tasks=["SR", "UP"], max_new_tokens={"UP": 5},
                             limit_per_task=3, progress=False)
    assert result["max_new_tokens"] == {"SR": 1, "UP": 5}
    for r in result["tasks"].values():
        assert r["hit_max_new_tokens"] == 3
    assert result["tasks"][get_task("UP").name]["examples"][0]["prediction"] == "xxxxx"


# ---------------------------------------------------------------- report


def _parse_table(markdown: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return cells[0], {row[0]: row[1:] for row in cells[2:]}


def _fake_metrics(scores: dict[str, float]) -> dict:
    return {"split": "test", "tasks": {t.name: {"score": scores.get(t.short), "n": 3, "invalid": 0}
                                       for t in TASKS}}


def test_tables_have_the_papers_columns_and_rows(data_dir):
    ours = _fake_metrics({t.short: 0.1 * (t.id % 10) for t in TASKS})
    other = {t.short: 0.5 for t in TASKS if t.short != "PM"}  # a flat mapping with one task missing
    chance = report.load_chance(data_dir)
    rows = [("ours", ours), ("other", other), ("chance", chance)]

    header, body = _parse_table(report.generative_table(rows))
    assert header == ["Model", "QR", "AVE", "AG", "SR", "SA", "UP", "AP", "PRP", "PM", "IP"]
    assert list(body) == ["ours", "other", "chance"]
    assert body["ours"] == [f"{0.1 * (get_task(s).id % 10):.3f}" for s in header[1:]]
    assert body["other"][header.index("PM") - 1] == report.MISSING
    assert body["chance"] == [f"{chance[get_task(s).name]['chance']:.3f}" for s in header[1:]]

    header, body = _parse_table(report.embedding_table(rows))
    assert header == ["Model", "I2I", "Q2I", "U2I"]
    assert body["chance"][2] == f"{np.mean(1.0 / np.arange(1, 21)):.3f}"  # H_20 / 20

    md = report.results_markdown(ours, name="ours", baselines=[("other", other)], chance=chance)
    assert md.count("| Model |") == 2
    assert "| chance |" in md and "| other |" in md


def test_scores_of_reads_every_format():
    metrics = {"split": "test", "tasks": {"Emb_user": {"score": 0.25}, "Sentiment_Analysis": {"score": None}}}
    assert report.scores_of(metrics)["Emb_user"] == 0.25
    assert report.scores_of(metrics)["Sentiment_Analysis"] is None
    assert report.scores_of({"Emb_item": {"chance": 0.4, "metric": "ndcg@20"}})["Emb_item"] == 0.4
    assert report.scores_of({"QR": 0.973, "notes": "x"})["Query_Rewriting"] == 0.973


# ---------------------------------------------------------------- plots


def test_plots_write_pngs(tmp_path):
    records_log = [{"step": s, **{f"ratio/{t.name}": 1 / 3 if t.is_embedding else 0.1 for t in TASKS},
                    **{f"probe/{t.name}": 2.0 / s for t in TASKS}} for s in range(1, 5)]
    routing = np.random.default_rng(0).uniform(size=(len(TASKS), 24))
    paths = [
        plots.routing_heatmap(routing, [t.name for t in TASKS], tmp_path / "routing.png"),
        plots.schedule_plot(records_log, tmp_path / "schedule.png"),
        plots.probe_loss_plot(records_log, tmp_path / "probe.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC
    sim = plots.cosine_similarity(routing)
    norm = routing / np.linalg.norm(routing, axis=1, keepdims=True)
    np.testing.assert_allclose(sim, norm @ norm.T, rtol=1e-12)
    assert plots.has_series(records_log, "ratio") and not plots.has_series(records_log, "eval")


def test_class_similarity_averages_the_heatmap_over_each_kind_of_task_pair():
    routing = np.random.default_rng(1).uniform(size=(len(TASKS), 24))
    unit = routing / np.linalg.norm(routing, axis=1, keepdims=True)
    kinds = [t.kind for t in TASKS]
    pairs = {"intra_embedding": [], "intra_generative": [], "cross": []}
    for i in range(len(TASKS)):
        for j in range(len(TASKS)):
            if i != j and kinds[i] == kinds[j]:
                pairs[f"intra_{kinds[i]}"].append(unit[i] @ unit[j])
            elif kinds[i] == "embedding" and kinds[j] == "generative":
                pairs["cross"].append(unit[i] @ unit[j])
    got = plots.class_similarity(routing, [t.name for t in TASKS])
    assert len(pairs["intra_embedding"]) == 6 and len(pairs["intra_generative"]) == 90 and len(pairs["cross"]) == 30
    for key, values in pairs.items():
        assert got[key] == pytest.approx(np.mean(values), rel=1e-12), key
    only_generative = plots.class_similarity(routing[3:5], ["QR", "SR"])
    assert only_generative["intra_embedding"] is None and only_generative["cross"] is None
    assert "| two generative tasks |" in report.routing_table(got)


# ---------------------------------------------------------------- the CLI and evaluate_subset on a tiny run


def test_cli_writes_metrics_tables_and_plots(run_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["--run", str(run_dir), "--limit", "2", "--max_new_tokens", "2,UP=3", "--noprogress",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {t.name for t in TASKS}
    assert metrics["step"] == 3 and not metrics["base_only"]
    for name, r in metrics["tasks"].items():
        assert r["score"] is not None and 0.0 <= r["score"] <= 1.0, name
        assert r["n"] == 2, name
    assert metrics["max_new_tokens"] == {**dict.fromkeys(RELEASED_MAX_NEW_TOKENS, 2), "UP": 3}
    assert metrics["tasks"][get_task("UP").name]["max_new_tokens"] == 3
    results = (out / "results.md").read_text()
    assert "| Max new tokens (hit) |" in results
    assert set(metrics["routing_similarity"]) == {"intra_embedding", "intra_generative", "cross"}
    assert all(-1.0 <= v <= 1.0 for v in metrics["routing_similarity"].values())
    assert "## Routing similarity (Figure 2: routing.png)" in results
    assert "| Model | QR | AVE | AG | SR | SA | UP | AP | PRP | PM | IP |" in results
    assert "| Model | I2I | Q2I | U2I |" in results
    assert "| chance |" in results
    for png in ("routing.png", "schedule.png", "probe_loss.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC, png
    assert "| Model | QR |" in capsys.readouterr().out

    # The base model alone ("w/o finetuning"), with the run above as a baseline row; no routing plot.
    base_out = tmp_path / "base"
    assert main(["--run", str(run_dir), "--base_only", "--prompt_format", "mistral-instruct", "--tasks", "U2I,SR",
                 "--limit", "2", "--max_new_tokens", "2", "--noprogress", "--out", str(base_out),
                 "--baseline", f"tiny={out / 'metrics.json'}"]) == 0
    base_metrics = json.loads((base_out / "metrics.json").read_text())
    assert base_metrics["base_only"] and base_metrics["step"] is None
    assert "routing_similarity" not in base_metrics
    assert base_metrics["prompt_format"] == "mistral-instruct" and metrics["prompt_format"] == "gritlm"
    assert set(base_metrics["tasks"]) == {get_task("U2I").name, get_task("SR").name}
    _, body = _parse_table(report.generative_table(
        [("w/o finetuning", base_metrics), ("tiny", metrics)]))
    base_md = (base_out / "results.md").read_text()
    assert "| w/o finetuning |" in base_md and "| tiny |" in base_md
    assert not (base_out / "routing.png").exists()
    assert body["tiny"][3] == f"{metrics['tasks'][get_task('SR').name]['score']:.3f}"


@pytest.mark.parametrize("flag, message", [
    ("UP=0", "--max_new_tokens UP: '0' is not a positive number of tokens"),
    ("XX=3", "--max_new_tokens: unknown task 'XX'"),
    ("U2I=3", "--max_new_tokens: U2I is an embedding task"),
    ("many", "--max_new_tokens: 'many' is not a positive number of tokens"),
])
def test_a_bad_budget_flag_is_one_usage_error(flag, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--run", "no_such_run", "--max_new_tokens", flag])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_default_out_dir_names():
    assert default_out_dir(Path("r"), 30, "test", False) == Path("r/eval/30")
    assert default_out_dir(Path("r"), None, "test", True) == Path("r/eval/base")
    assert default_out_dir(Path("r"), 30, "valid", False) == Path("r/eval/30-valid")


def test_evaluate_subset_returns_finite_scores(run_dir):
    rf = RecFound.from_run(run_dir)
    data = rundir.read_run_info(run_dir)["data"]
    scores = runner.evaluate_subset(rf, data, limit_per_task=2, max_new_tokens=2)
    assert set(scores) == {f"eval/{t.name}" for t in TASKS}
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in scores.values()), scores
    # A bare model with its config and tokenizer gives the same numbers.
    again = runner.evaluate_subset(rf.model, data, limit_per_task=2, max_new_tokens=2,
                                   config=rf.config, tokenizer=rf.tokenizer)
    assert again == pytest.approx(scores)
