"""Per-task export: the folded plain Mistral and the PEFT LoRA adapter give the TMoLE model's outputs, in JAX,
transformers and peft."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import sentencepiece as spm
import torch
import transformers

from recfound_jax import jsonio
from recfound_jax.convert import export, peft_adapter
from recfound_jax.convert.hf import folded_weights, load_hf
from recfound_jax.data.formatting import Formatter
from recfound_jax.runs import rundir
from recfound_jax.tasks import TASKS, get_task
from recfound_jax.tokenizer import Tokenizer
from tests.train_fixtures import tiny_config, write_model_run, write_tiny_base

STEP = 5
GENERATIVE, EMBEDDING = "Sequential_Recommendation", "Emb_query"
OTHER = {GENERATIVE: "Product_Matching", EMBEDDING: "Emb_item"}  # same kind, another gate


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run whose adapters (B, routers) are random, so every expert changes the outputs."""
    base = write_tiny_base(tmp_path_factory.mktemp("base"))
    c = tiny_config(base)
    model = rundir.build_model(c, base)
    keys = iter(jax.random.split(jax.random.key(7), 16))
    for bank in model.adapters.banks.values():
        bank.b.set_value(0.3 * jax.random.normal(next(keys), bank.b.shape))
        bank.router_b[0].set_value(jax.random.normal(next(keys), bank.router_b[0].shape))
    return write_model_run(tmp_path_factory.mktemp("runs") / "run", c, base, model, STEP)


@pytest.fixture(scope="module")
def exports(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    return {task: export.export_task(run_dir, task, out / task) for task in (GENERATIVE, EMBEDDING)}


@pytest.fixture(scope="module")
def tmole(run_dir):
    model, _, _ = rundir.load_model(run_dir)
    return model


def _batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 32768, size=(3, 11))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    mask[2, 4:] = 0
    return ids * mask, mask


@pytest.mark.parametrize("task,causal", [(GENERATIVE, True), (EMBEDDING, False), (EMBEDDING, True)])
def test_folded_export_gives_the_tmole_logits(exports, tmole, task, causal):
    ids, mask = _batch()
    task_ids = jnp.full((ids.shape[0],), get_task(task).id)
    expected = np.asarray(tmole(jnp.asarray(ids), jnp.asarray(mask), task_ids=task_ids, causal=causal))
    folded = load_hf(exports[task])
    assert folded.adapters is None
    got = np.asarray(folded(jnp.asarray(ids), jnp.asarray(mask), causal=causal))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], expected[real], rtol=1e-5, atol=1e-5)
    other_ids = jnp.full_like(task_ids, get_task(OTHER[task]).id)
    other = np.asarray(tmole(jnp.asarray(ids), jnp.asarray(mask), task_ids=other_ids, causal=causal))
    assert np.abs(other[real] - expected[real]).max() > 1e-3  # the task's own gate matters


def test_transformers_loads_the_generative_export_with_the_same_logits(exports, tmole):
    ids, mask = _batch(1)
    task_ids = jnp.full((ids.shape[0],), get_task(GENERATIVE).id)
    expected = np.asarray(tmole(jnp.asarray(ids), jnp.asarray(mask), task_ids=task_ids))
    hf = transformers.MistralForCausalLM.from_pretrained(exports[GENERATIVE], attn_implementation="eager").eval()
    with torch.no_grad():
        got = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], expected[real], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_readme_recipe_for_embedding_tasks_matches_the_tmole_embedding(exports, tmole, attn):
    """The README's tokenization, 4D bidirectional mask and pooling give the model's embedding."""
    folder = exports[EMBEDDING]
    instruction, texts = " Given a query, find the item: ", ["red running shoes", "a kettle for tea, 1.7 l"]
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    stripped = instruction.strip("\t\n :")
    prefix = f"<|user|>\n{stripped}\n<|embed|>\n"
    rows = [[1] + sp.encode(prefix + text) for text in texts]
    start = 1 + len(sp.encode(prefix))
    formatter = Formatter(Tokenizer(folder / "tokenizer.model"))
    for row, text in zip(rows, texts):
        ids, prefix_len = formatter.format_embedding(instruction, text)
        assert (list(ids), prefix_len) == (row, start)
        ids, prefix_len = formatter.format_embedding(" : ", text)  # an empty instruction
        assert (list(ids), prefix_len) == ([1] + sp.encode("<|embed|>\n" + text), 1 + len(sp.encode("<|embed|>\n")))
    length = max(map(len, rows))
    ids = np.array([row + [0] * (length - len(row)) for row in rows])
    mask = np.array([[1] * len(row) + [0] * (length - len(row)) for row in rows])
    mask4 = torch.where(torch.tensor(mask, dtype=torch.bool)[:, None, None, :], 0.0, torch.finfo(torch.float32).min)
    hf = transformers.MistralModel.from_pretrained(folder, attn_implementation=attn).eval()
    with torch.no_grad():
        hidden = hf(input_ids=torch.tensor(ids), attention_mask=mask4.expand(-1, 1, length, length)).last_hidden_state
    got = np.stack([torch.nn.functional.normalize(hidden[b, start:len(row)].mean(0), dim=-1).numpy()
                    for b, row in enumerate(rows)])
    task_ids = jnp.full((len(rows),), get_task(EMBEDDING).id)
    ours = np.asarray(tmole.hidden_states(jnp.asarray(ids), jnp.asarray(mask), task_ids=task_ids, causal=False))
    pool = mask.copy()
    pool[:, :start] = 0
    pooled = (ours * pool[..., None]).sum(1) / pool.sum(1, keepdims=True)
    expected = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_readme_and_tokenizer_are_written(run_dir, exports):
    for task, folder in exports.items():
        readme = (folder / "README.md").read_text()
        assert f"task: `{task}`" in readme and str(run_dir) in readme and f"step: {STEP}" in readme
        source = Path(rundir.read_run_info(run_dir)["tokenizer"])
        assert (folder / "tokenizer.model").read_bytes() == source.read_bytes()
    assert "<|user|>\\n{prompt}\\n<|assistant|>\\n" in (exports[GENERATIVE] / "README.md").read_text()
    embedding_readme = (exports[EMBEDDING] / "README.md").read_text()
    assert "<|user|>\\n{instruction}\\n<|embed|>\\n{text}" in embedding_readme
    assert "bidirectional" in embedding_readme and "4D" in embedding_readme


def test_cli_exports_and_refuses_a_used_folder_and_an_unknown_task(run_dir, tmp_path, capsys):
    assert export.main(["--run", str(run_dir), "--task", "PM", "--step", str(STEP), "--out", str(tmp_path / "pm")]) == 0
    assert "Product_Matching" in (tmp_path / "pm" / "README.md").read_text()
    assert export.main(["--run", str(run_dir), "--task", "PM", "--out", str(tmp_path / "pm")]) == 2
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        export.main(["--run", str(run_dir), "--task", "Nope", "--out", str(tmp_path / "x")])
    assert exited.value.code == 2
    assert "flag --task=Nope: unknown task 'Nope'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ---- PEFT adapters -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def adapters(run_dir, tmp_path_factory):
    return dict(zip((GENERATIVE, EMBEDDING), export.export_tasks(
        run_dir, [GENERATIVE, EMBEDDING], tmp_path_factory.mktemp("adapters"), peft=True)))


def _peft_model(run_dir, folder):
    base = transformers.MistralForCausalLM.from_pretrained(rundir.read_run_info(run_dir)["base"],
                                                          attn_implementation="eager")
    return peft.PeftModel.from_pretrained(base, folder).eval()


@pytest.mark.parametrize("task", [GENERATIVE, EMBEDDING])
def test_peft_loads_the_adapter_with_the_tmole_logits(run_dir, adapters, tmole, task):
    ids, mask = _batch(2)
    task_ids = jnp.full((ids.shape[0],), get_task(task).id)
    expected = np.asarray(tmole(jnp.asarray(ids), jnp.asarray(mask), task_ids=task_ids))
    model = _peft_model(run_dir, adapters[task])
    with torch.no_grad():
        got = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], expected[real], rtol=1e-4, atol=1e-4)
    with torch.no_grad(), model.disable_adapter():  # the adapter is what makes the difference
        plain = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    assert np.abs(plain[real] - expected[real]).max() > 1e-3


def test_the_adapter_stacks_the_tasks_experts_with_scale_one(adapters, tmole):
    config = jsonio.read_json(adapters[GENERATIVE] / peft_adapter.CONFIG_FILE)
    cfg = tmole.adapters.cfg
    rank = (cfg.num_generative + cfg.num_shared) * cfg.rank
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (rank, rank, "LORA")
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    a, b = peft_adapter.task_lora(tmole, get_task(GENERATIVE))["q"]
    folded = np.asarray(folded_weights(tmole, GENERATIVE)["q"]) - np.asarray(tmole.layers.q[...])  # [L, out, in]
    np.testing.assert_allclose(np.einsum("lor,lri->loi", b, a), folded, rtol=1e-5, atol=1e-6)


def test_cli_writes_every_task_as_an_adapter(run_dir, tmp_path, capsys):
    out = tmp_path / "all"
    assert export.main(["--run", str(run_dir), "--all_tasks", "--peft", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(t.name for t in TASKS)
    for folder in out.iterdir():
        assert {p.name for p in folder.iterdir()} == {peft_adapter.CONFIG_FILE, peft_adapter.WEIGHTS_FILE,
                                                      "tokenizer.model", "README.md"}
    readme = (out / GENERATIVE / "README.md").read_text()
    assert "PeftModel.from_pretrained" in readme and "--enable-lora" in readme
    with pytest.raises(SystemExit) as exited:
        export.main(["--run", str(run_dir), "--task", "PM", "--all_tasks", "--out", str(tmp_path / "x")])
    assert exited.value.code == 2 and "exactly one of --task NAME and --all_tasks" in capsys.readouterr().err


def test_the_readmes_name_the_checkpoints_own_classes():
    """A Llama or Qwen2 run's export README loads the family's transformers classes, not Mistral's."""
    task = get_task(EMBEDDING)
    folded = export.readme_text(task, Path("/runs/r"), STEP, "tiny", "float32", architecture="Qwen2ForCausalLM")
    adapter = export.peft_readme_text(task, Path("/runs/r"), STEP, "tiny", Path("/base"), 16,
                                      architecture="LlamaForCausalLM")
    assert "transformers `Qwen2ForCausalLM`" in folded and "transformers.Qwen2Model.from_pretrained" in folded
    assert "transformers.LlamaForCausalLM.from_pretrained" in adapter and "transformers.LlamaModel" in adapter
    assert "Mistral" not in folded.replace("Mistral v3", "")
