"""HF checkpoints in and out (Mistral, Llama, Qwen2): config.json, streamed safetensors loading, export.

`load_hf` builds the model abstractly (no weights), then reads one HF tensor at a time into a stacked
host buffer per weight kind and places it on its target sharding, so host memory never holds the
model twice. `save_hf` writes config.json and safetensors that transformers' class of the model's
family (MistralForCausalLM, LlamaForCausalLM, Qwen2ForCausalLM) loads; with ``task=`` it folds that
task's gated expert bank into W0 first. Each family's config.json mapping and extra tensor names are in
its own module, convert/hf_<family>.py; the tensors below are the ones all three share.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from recfound_jax import jsonio, parallel
from recfound_jax.convert import hf_llama, hf_mistral, hf_qwen2
from recfound_jax.convert import safetensors_io as st
from recfound_jax.model.mistral import Mistral, MistralConfig
from recfound_jax.model.tmole import TMoLE, TMoLEConfig, folded_delta
from recfound_jax.tasks import Task, get_task

# Stacked weight kind -> HF tensor name template (one tensor per layer).
LAYER_KEYS = {
    "attn_norm": "model.layers.{i}.input_layernorm.weight",
    "q": "model.layers.{i}.self_attn.q_proj.weight",
    "k": "model.layers.{i}.self_attn.k_proj.weight",
    "v": "model.layers.{i}.self_attn.v_proj.weight",
    "o": "model.layers.{i}.self_attn.o_proj.weight",
    "mlp_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "gate": "model.layers.{i}.mlp.gate_proj.weight",
    "up": "model.layers.{i}.mlp.up_proj.weight",
    "down": "model.layers.{i}.mlp.down_proj.weight",
}
GLOBAL_KEYS = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight", "lm_head": "lm_head.weight"}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# model_type -> family; a checkpoint's "architectures" must name the family's CausalLM class.
FAMILIES = {family.model_type: family for family in (hf_mistral.FAMILY, hf_llama.FAMILY, hf_qwen2.FAMILY)}


def config_from_hf(raw: dict[str, Any], source: str = "config.json") -> MistralConfig:
    """MistralConfig from a HF config dict of a supported family (model_type mistral, llama or qwen2).

    Raises ValueError naming ``source`` and the field for another model_type or architecture, or a
    feature the decoder lacks (a RoPE scaling other than llama3, Llama's biases).
    """
    model_type = raw.get("model_type", "mistral")
    if model_type not in FAMILIES:
        raise ValueError(f"{source}: model_type {model_type!r} is not supported (supported: {', '.join(FAMILIES)})")
    family = FAMILIES[model_type]
    architectures = raw.get("architectures") or [family.architecture]
    if architectures != [family.architecture]:
        raise ValueError(f"{source}: architectures {architectures} is not supported for model_type {model_type!r} "
                         f"(only [{family.architecture!r}])")
    return family.config_from_hf(raw, source)


def config_to_hf(cfg: MistralConfig, dtype: Any) -> dict[str, Any]:
    """The config.json dict of ``cfg``'s family that transformers 4.x and 5.x both read."""
    return FAMILIES[cfg.family].config_to_hf(cfg, dtype)


def layer_keys(cfg: MistralConfig) -> dict[str, str]:
    """Stacked weight kind -> HF tensor name template of ``cfg``'s family."""
    return LAYER_KEYS | FAMILIES[cfg.family].extra_layer_keys


def global_keys(cfg: MistralConfig) -> dict[str, str]:
    """Model attribute -> HF tensor name of the unstacked weights (a tied LM head has no tensor)."""
    return {k: v for k, v in GLOBAL_KEYS.items() if not (k == "lm_head" and cfg.tie_word_embeddings)}


def read_config(path: str | os.PathLike) -> MistralConfig:
    """The MistralConfig of a HF checkpoint directory."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no config.json")
    return config_from_hf(jsonio.read_json(file), source=str(file))


def expected_tensors(cfg: MistralConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape for a config."""
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    per_layer = {"attn_norm": (d,), "q": (cfg.q_dim, d), "k": (cfg.kv_dim, d), "v": (cfg.kv_dim, d),
                 "o": (d, cfg.q_dim), "mlp_norm": (d,), "gate": (f, d), "up": (f, d), "down": (d, f),
                 "q_bias": (cfg.q_dim,), "k_bias": (cfg.kv_dim,), "v_bias": (cfg.kv_dim,)}
    global_shapes = {"embed": (v, d), "final_norm": (d,), "lm_head": (v, d)}
    shapes = {name: global_shapes[kind] for kind, name in global_keys(cfg).items()}
    for i in range(cfg.num_layers):
        for kind, template in layer_keys(cfg).items():
            shapes[template.format(i=i)] = per_layer[kind]
    return shapes


def _check_tensors(path: Path, infos: dict[str, st.TensorInfo], cfg: MistralConfig) -> None:
    expected = expected_tensors(cfg)
    missing = sorted(set(expected) - set(infos))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{path}: missing tensor {missing[0]}{more}")
    # A tied checkpoint may still store the head; transformers ties it to the embedding and ignores it.
    ignored = {GLOBAL_KEYS["lm_head"]} if cfg.tie_word_embeddings else set()
    unexpected = sorted(n for n in set(infos) - set(expected) - ignored if not n.endswith(IGNORED_SUFFIXES))
    if unexpected:
        raise ValueError(f"{path}: unexpected tensor {unexpected[0]} for a {cfg.num_layers}-layer {cfg.family} config")
    for name, shape in expected.items():
        if infos[name].shape != shape:
            raise ValueError(f"{path}: tensor {name} has shape {infos[name].shape}, config.json implies {shape}")


def _place(host: np.ndarray, sharding: jax.sharding.Sharding | None) -> jax.Array:
    if sharding is None:
        return jax.device_put(host, may_alias=True)  # adopts the aligned buffer on CPU: no second copy
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def load_hf(
    path: str | os.PathLike,
    *,
    dtype: Any = jnp.float32,
    mesh: Mesh | None = None,
    tmole: TMoLEConfig | None = None,
    compute_dtype: Any = None,
    remat: str = "none",
    attention_impl: str = "xla",
    seed: int = 0,
) -> Mistral:
    """Load a HF Mistral, Llama or Qwen2 directory as a `Mistral` (base weights in ``dtype``), adapters
    freshly initialised.

    Streams tensor by tensor onto the target sharding of ``mesh`` (or the default device).
    """
    path = Path(path)
    cfg = read_config(path)
    infos = st.index_checkpoint(path)
    _check_tensors(path, infos, cfg)
    dtype = jnp.dtype(dtype)
    kwargs = dict(param_dtype=dtype, dtype=compute_dtype or dtype, remat=remat, attention_impl=attention_impl)
    model = nnx.eval_shape(lambda: Mistral(cfg, tmole=tmole, rngs=nnx.Rngs(seed), **kwargs))

    def sharding(name: str, shape: tuple[int, ...]):
        return None if mesh is None else jax.sharding.NamedSharding(mesh, parallel.spec_for(name, shape, mesh))

    for kind, hf_name in global_keys(cfg).items():
        var = getattr(model, kind)
        var.set_value(_place(_read_as(infos[hf_name], dtype), sharding(kind, var.shape)))
    for kind, template in layer_keys(cfg).items():
        var = getattr(model.layers, kind)
        host = st.empty_aligned(var.shape, dtype)
        for i in range(cfg.num_layers):
            st.read_into(infos[template.format(i=i)], host[i])
        var.set_value(_place(host, sharding(f"layers/{kind}", host.shape)))
        del host
    if tmole is not None:
        model.adapters = _init_adapters(cfg, tmole, seed, mesh)
    return model


def _read_as(info: st.TensorInfo, dtype: np.dtype) -> np.ndarray:
    out = st.empty_aligned(info.shape, dtype)
    st.read_into(info, out)
    return out


def _init_adapters(cfg: MistralConfig, tmole: TMoLEConfig, seed: int, mesh: Mesh | None) -> TMoLE:
    adapters = TMoLE(tmole, cfg.num_layers, cfg.projection_dims(), rngs=nnx.Rngs(seed + 1))
    if mesh is not None:
        graphdef, state = nnx.split(adapters)
        shardings = jax.tree_util.tree_map_with_path(
            lambda p, x: jax.sharding.NamedSharding(
                mesh, parallel.spec_for("adapters/" + parallel.path_str(p), x.shape, mesh)),
            state)
        adapters = nnx.merge(graphdef, jax.device_put(state, shardings))
    return adapters


def folded_weights(model: Mistral, task: str | int | Task) -> dict[str, jax.Array]:
    """Base q/k/v/o weights [L, out, in] with ``task``'s gated experts folded in: W0 + ΔW_t (float32 sum).
    ``task``: a Task of the run's table, or a released task's name, short name or id."""
    if model.adapters is None:
        raise ValueError("this model has no adapters to fold")
    resolved = task if isinstance(task, Task) else get_task(task)
    experts = model.adapters.task_experts(resolved.id, "encoding" if resolved.is_embedding else "generation")
    scale = model.adapters.cfg.scale
    out = {}
    for name, (gate, a, b) in experts.items():
        delta = folded_delta(a, b, gate, scale)  # [L, in, out]
        base = getattr(model.layers, name)[...]
        out[name] = (base.astype(jnp.float32) + jnp.swapaxes(delta, 1, 2)).astype(base.dtype)
    return out


def save_hf(
    model: Mistral,
    path: str | os.PathLike,
    *,
    task: str | int | Task | None = None,
    max_shard_bytes: int = 4 * 2**30,
) -> Path:
    """Write config.json and safetensors that transformers' class of the model's family
    (MistralForCausalLM, LlamaForCausalLM or Qwen2ForCausalLM) loads with from_pretrained.

    With ``task`` the task's adapters are folded into q/k/v/o (a plain model for that one task); biases
    are base weights and are written as they are.
    """
    path = Path(path)
    cfg = model.config
    dtype = model.embed[...].dtype
    replaced = folded_weights(model, task) if task is not None else {}

    def global_tensor(kind):
        return lambda: np.asarray(jax.device_get(getattr(model, kind)[...]))

    def layer_tensor(kind, i):
        stacked = replaced[kind] if kind in replaced else getattr(model.layers, kind)[...]
        return lambda: np.asarray(jax.device_get(stacked[i]))

    hf_config = config_to_hf(cfg, dtype)  # first: a config the family cannot hold fails before any write
    shapes = expected_tensors(cfg)
    names = global_keys(cfg)
    tensors = [(names["embed"], shapes[names["embed"]], dtype, global_tensor("embed"))]
    for i in range(cfg.num_layers):
        for kind, template in layer_keys(cfg).items():
            name = template.format(i=i)
            tensors.append((name, shapes[name], dtype, layer_tensor(kind, i)))
    for kind in ("final_norm", "lm_head"):
        if kind in names:
            tensors.append((names[kind], shapes[names[kind]], dtype, global_tensor(kind)))
    path.mkdir(parents=True, exist_ok=True)
    st.write_checkpoint(path, tensors, max_shard_bytes=max_shard_bytes)
    jsonio.write_json(path / "config.json", hf_config)
    return path
