"""Import of the released RecFound adapters: a tiny base and random adapter files in the released layout."""
from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.torch
import torch

from recfound_jax.convert import released as import_released
from recfound_jax.convert import safetensors_io
from recfound_jax.convert.hf import folded_weights
from recfound_jax.inference.recfound import RecFound
from recfound_jax.runs import rundir
from recfound_jax.tasks import get_task
from tests.train_fixtures import TINY_BASE, write_tiny_base

PROJ_DIMS = TINY_BASE.projection_dims()  # {p: (d_in, d_out)}
EXPERTS, RANK, ALPHA, TASK_DIM = 6, 16, 64.0, 512


class _Payload:
    """Unpickling this runs code: a .pth that holds it must be refused."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def released_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random adapter tensors under the released key names and torch [out, in] shapes."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(TINY_BASE.num_layers):
        for p, (d_in, d_out) in PROJ_DIMS.items():
            prefix = f"base_model.model.model.layers.{i}.self_attn.{p}_proj."
            for j in range(EXPERTS):
                tensors[f"{prefix}lora_A.{j}.weight"] = 0.1 * torch.randn(RANK, d_in, generator=g)
                tensors[f"{prefix}lora_B.{j}.weight"] = 0.1 * torch.randn(d_out, RANK, generator=g)
            tensors[f"{prefix}lora_route.weight"] = torch.randn(EXPERTS, TASK_DIM, generator=g)
            tensors[f"{prefix}lora_route.bias"] = torch.randn(EXPERTS, generator=g)
    return tensors


def write_adapter(folder, tensors: dict[str, torch.Tensor], table: torch.Tensor):
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, str(folder / "adapter_model.safetensors"))
    torch.save({"weight": table}, folder / "embedding_weights.pth")
    config = {"r": RANK, "lora_alpha": ALPHA, "lora_nums": EXPERTS, "is_shared": True,
              "target_modules": ["q_proj", "o_proj", "v_proj", "k_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_tiny_base(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    tensors = released_tensors()
    table = torch.randn(14, TASK_DIM, generator=torch.Generator().manual_seed(1))
    return write_adapter(tmp_path_factory.mktemp("released"), tensors, table), tensors, table


@pytest.fixture(scope="module")
def imported(tmp_path_factory, base, released):
    folder, _, _ = released
    out = tmp_path_factory.mktemp("runs") / "imported"
    import_released.import_released(folder, base, out, dtype="float32")
    return out


def torch_folded(base_weight: torch.Tensor, tensors: dict[str, torch.Tensor], table: torch.Tensor, layer: int,
                 p: str, task_id: int, embedding: bool) -> torch.Tensor:
    """W0 + (alpha / r) sum_j softmax(masked router(temb[task]))_j B_j A_j, straight from the released tensors."""
    prefix = f"base_model.model.model.layers.{layer}.self_attn.{p}_proj."
    logits = tensors[prefix + "lora_route.weight"] @ table[task_id] + tensors[prefix + "lora_route.bias"]
    allowed = torch.tensor([embedding] * 3 + [not embedding] * 3)
    gate = torch.softmax(torch.where(allowed, logits, torch.tensor(-torch.inf)), dim=-1)
    delta = sum(gate[j] * tensors[f"{prefix}lora_B.{j}.weight"] @ tensors[f"{prefix}lora_A.{j}.weight"]
                for j in range(EXPERTS))
    return base_weight + (ALPHA / RANK) * delta


@pytest.mark.parametrize("task", ["Emb_query", "Sequential_Recommendation"])
def test_folded_weights_match_a_torch_computation_from_the_raw_tensors(base, released, imported, task):
    _, tensors, table = released
    model, config, step = rundir.load_model(imported)
    assert step == 0
    assert (config.tmole.num_embedding, config.tmole.num_shared, config.tmole.num_generative) == (3, 0, 3)
    folded = folded_weights(model, task)
    infos = safetensors_io.index_checkpoint(base)
    t = get_task(task)
    for p in ("q", "k", "v", "o"):
        w0 = torch.from_numpy(safetensors_io.read_tensor(infos[f"model.layers.0.self_attn.{p}_proj.weight"]))
        expected = torch_folded(w0, tensors, table, 0, p, t.id, t.is_embedding).numpy()
        np.testing.assert_allclose(np.asarray(folded[p][0]), expected, rtol=1e-5, atol=1e-5, err_msg=p)


def test_imported_params_are_the_transposed_released_tensors(released, imported):
    _, tensors, table = released
    model, _, _ = rundir.load_model(imported)
    bank = model.adapters.banks["k"]
    prefix = "base_model.model.model.layers.0.self_attn.k_proj."
    np.testing.assert_array_equal(np.asarray(bank.a[...][0, 4]), tensors[prefix + "lora_A.4.weight"].numpy().T)
    np.testing.assert_array_equal(np.asarray(bank.b[...][0, 1]), tensors[prefix + "lora_B.1.weight"].numpy().T)
    np.testing.assert_array_equal(np.asarray(bank.router_w[0][...][0]), tensors[prefix + "lora_route.weight"].numpy().T)
    np.testing.assert_array_equal(np.asarray(bank.router_b[0][...][0]), tensors[prefix + "lora_route.bias"].numpy())
    np.testing.assert_array_equal(np.asarray(model.adapters.task_embedding[...]), table.numpy())


def test_run_directory_is_complete(base, imported):
    info = rundir.read_run_info(imported)
    assert info["base"] == str(base.absolute()) and info["base_fingerprint"] == rundir.base_fingerprint(base)
    assert info["imported_from"]["adapter_dtypes"] == ["F32"]
    assert (imported / "initial_params").is_dir()
    rf = RecFound.from_run(imported)
    assert rf.step == 0


def _import_with(tmp_path, base, tensors, table=None, **kwargs):
    table = torch.randn(14, TASK_DIM) if table is None else table
    folder = write_adapter(tmp_path / "adapter", tensors, table)
    return import_released.import_released(folder, base, tmp_path / "run", dtype="float32", **kwargs)


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path, base):
    missing_key = "base_model.model.model.layers.0.self_attn.v_proj.lora_B.5.weight"
    tensors = released_tensors()
    del tensors[missing_key]
    with pytest.raises(import_released.ReleasedLayoutError, match=missing_key.replace(".", r"\.")):
        _import_with(tmp_path / "missing", base, tensors)

    tensors = released_tensors()
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.6.weight"] = torch.zeros(RANK, 32)
    with pytest.raises(import_released.ReleasedLayoutError, match=r"unexpected tensor .*q_proj\.lora_A\.6\.weight"):
        _import_with(tmp_path / "extra", base, tensors)

    tensors = released_tensors()
    bad = "base_model.model.model.layers.0.self_attn.o_proj.lora_route.weight"
    tensors[bad] = torch.zeros(EXPERTS, 256)
    with pytest.raises(import_released.ReleasedLayoutError, match=bad.replace(".", r"\.") + r" has shape \(6, 256\)"):
        _import_with(tmp_path / "shape", base, tensors)
    assert not (tmp_path / "shape" / "run").exists()


def test_a_pth_holding_code_or_non_tensors_is_refused(tmp_path, base):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"weight": _Payload(str(marker))}, evil)
    with pytest.raises(import_released.ReleasedLayoutError, match="weights_only=True"):
        import_released.read_task_embedding(evil)
    assert not marker.exists()

    strings = tmp_path / "strings.pth"
    torch.save({"weight": "not a tensor"}, strings)
    with pytest.raises(import_released.ReleasedLayoutError, match="not a float tensor"):
        import_released.read_task_embedding(strings)

    wrong = tmp_path / "wrong.pth"
    torch.save({"weight": torch.zeros(13, TASK_DIM)}, wrong)
    with pytest.raises(import_released.ReleasedLayoutError, match=r"shape \(13, 512\)"):
        import_released.read_task_embedding(wrong)


def test_a_safetensors_task_embedding_and_bf16_adapters_are_accepted(tmp_path, base, released):
    _, tensors, table = released
    folder = write_adapter(tmp_path / "adapter", {k: v.to(torch.bfloat16) for k, v in tensors.items()}, table)
    safetensors.torch.save_file({"weight": table}, str(tmp_path / "table.safetensors"))
    out = import_released.import_released(folder, base, tmp_path / "run", dtype="float32",
                                          task_embedding=tmp_path / "table.safetensors")
    model, _, _ = rundir.load_model(out)
    np.testing.assert_array_equal(np.asarray(model.adapters.task_embedding[...]), table.numpy())
    prefix = "base_model.model.model.layers.0.self_attn.q_proj."
    np.testing.assert_array_equal(np.asarray(model.adapters.banks["q"].a[...][0, 2]),
                                  tensors[prefix + "lora_A.2.weight"].to(torch.bfloat16).float().numpy().T)
    assert rundir.read_run_info(out)["imported_from"]["adapter_dtypes"] == ["BF16"]


def test_cli_refuses_another_rank_in_adapter_config(tmp_path, base, released, capsys):
    folder, tensors, table = released
    other = write_adapter(tmp_path / "adapter", tensors, table)
    config = json.loads((other / "adapter_config.json").read_text()) | {"r": 8}
    (other / "adapter_config.json").write_text(json.dumps(config))
    code = import_released.main(["--adapter", str(other), "--base", str(base), "--out", str(tmp_path / "run"),
                                 "--dtype", "float32"])
    assert code == 2
    assert "r = 8" in capsys.readouterr().err
