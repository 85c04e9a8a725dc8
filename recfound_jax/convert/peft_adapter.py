"""One task of a run as a standard PEFT LoRA adapter, so a multi-LoRA server serves every task over one base.

For a fixed task t the TMoLE gate g is a constant, so the task's bank on a projection is one LoRA:

    ΔW_t = (alpha / r) Σ_j g_j A_j B_j = A' B',  A' = [A_j]_j stacked (rank n·r),  B' = [(alpha / r) g_j B_j]_j

over the n experts the task may route to (its kind's and the shared ones). The adapter is written with
``lora_alpha`` equal to its rank, so PEFT's scale ``lora_alpha / r`` is 1 and the gates and alpha / r
live in lora_B. A plain-LoRA run (``tmole.enabled = False``) is the case n = 1, g = 1.

PEFT's layout (peft 0.12 to 0.21): ``adapter_config.json`` and ``adapter_model.safetensors`` with
``base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_A.weight`` [rank, d_in] and
``...lora_B.weight`` [d_out, rank].
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from recfound_jax import jsonio
from recfound_jax.convert import safetensors_io as st
from recfound_jax.model.mistral import Mistral
from recfound_jax.tasks import Task

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TENSOR_NAME = "base_model.model.model.layers.{i}.self_attn.{target}_proj.lora_{ab}.weight"


def task_lora(model: Mistral, task: Task) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{target: (lora_A [L, rank, d_in], lora_B [L, d_out, rank])} (float32) of ``task``'s gated experts."""
    adapters = model.adapters
    if adapters is None:
        raise ValueError("this model has no adapters to export")
    out = {}
    experts = adapters.task_experts(task.id, "encoding" if task.is_embedding else "generation")
    for target, (gate, a, b) in experts.items():
        a, b, g = (np.asarray(jax.device_get(x), np.float32) for x in (a, b, gate))  # [L, n, d_in, r], [L, n, r, d_out]
        layers, n, d_in, r = a.shape
        lora_a = a.transpose(0, 1, 3, 2).reshape(layers, n * r, d_in)
        lora_b = (b * (adapters.cfg.scale * g)[:, :, None, None]).reshape(layers, n * r, -1).transpose(0, 2, 1)
        out[target] = (lora_a, lora_b)
    return out


def adapter_config(rank: int, targets: list[str], base_model_name_or_path: str) -> dict[str, Any]:
    """PEFT's adapter_config.json of a LoRA of ``rank`` on ``targets`` (q, k, v, o) with scale 1."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": rank, "lora_alpha": rank, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "target_modules": [f"{t}_proj" for t in targets], "use_rslora": False, "use_dora": False,
        "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
        "rank_pattern": {}, "alpha_pattern": {},
    }


def save_peft_adapter(model: Mistral, task: Task, out: str | os.PathLike, base_model_name_or_path: str) -> Path:
    """Write ``task``'s LoRA (`task_lora`) into ``out`` as PEFT's adapter_config.json and safetensors."""
    out = Path(out)
    lora = task_lora(model, task)
    tensors = []
    for i in range(model.config.num_layers):
        for target, (lora_a, lora_b) in lora.items():
            for ab, stacked in (("A", lora_a), ("B", lora_b)):
                tensors.append((TENSOR_NAME.format(i=i, target=target, ab=ab), stacked.shape[1:], np.float32,
                                lambda stacked=stacked, i=i: stacked[i]))
    rank = next(iter(lora.values()))[0].shape[1]
    st.write_checkpoint(out, tensors, single_file=WEIGHTS_FILE, max_shard_bytes=2**62)
    jsonio.write_json(out / CONFIG_FILE, adapter_config(rank, list(lora), base_model_name_or_path))
    return out
