"""Hugging Face checkpoint I/O: `from_hf` reads a transformers directory, `to_hf` writes one.

Supported `model_type`s: llama (Llama 2/3/3.1/3.2), qwen2 (Qwen2 / Qwen2.5), qwen3. Tensors are
read with the `safetensors` package (single file or a sharded `model.safetensors.index.json`);
both the legacy `rope_theta` / `rope_scaling` fields and the `rope_parameters` form written by
transformers 5 are understood. Anything else raises a `ValueError` that names the field.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax.numpy as jnp

from adaptive_rl.models.config import ModelConfig
from adaptive_rl.models.transformer import Params

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM"}


def _rope_fields(hf: dict[str, Any], where: str) -> dict[str, Any]:
  """Reads RoPE settings from `rope_parameters` (transformers 5) or the legacy fields."""
  params = hf.get("rope_parameters") or {}
  legacy = hf.get("rope_scaling") or {}
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  scaling = {**legacy, **params}
  rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
  out: dict[str, Any] = {"rope_theta": float(theta)}
  if rope_type == "default":
    out["rope_type"] = "default"
  elif rope_type == "linear":
    out.update(rope_type="linear", rope_factor=float(scaling["factor"]))
  elif rope_type == "llama3":
    try:
      out.update(
          rope_type="llama3", rope_factor=float(scaling["factor"]),
          rope_low_freq_factor=float(scaling["low_freq_factor"]),
          rope_high_freq_factor=float(scaling["high_freq_factor"]),
          rope_original_max_positions=int(scaling["original_max_position_embeddings"]))
    except KeyError as e:
      raise ValueError(f"{where}: rope_type 'llama3' needs field {e.args[0]!r}") from None
  else:
    raise ValueError(
        f"{where}: unsupported rope type {rope_type!r} (field rope_parameters.rope_type / "
        f"rope_scaling.type); supported: default, linear, llama3")
  return out


def config_from_hf(hf: dict[str, Any], where: str = "config.json", **overrides) -> ModelConfig:
  """Builds a `ModelConfig` from a transformers config dict."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"{where}: field model_type={model_type!r} is not supported; supported: "
                     f"{SUPPORTED_MODEL_TYPES}")
  act = hf.get("hidden_act", "silu")
  if act not in ("silu", "swish"):
    raise ValueError(f"{where}: field hidden_act={act!r} is not supported (only silu)")
  if hf.get("mlp_bias"):
    raise ValueError(f"{where}: field mlp_bias=true is not supported")
  if model_type in ("llama", "qwen3") and hf.get("attention_bias"):
    raise ValueError(f"{where}: field attention_bias=true is not supported for {model_type}")
  if hf.get("use_sliding_window"):
    raise ValueError(f"{where}: field use_sliding_window=true is not supported")
  required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads")
  for key in required:
    if key not in hf:
      raise ValueError(f"{where}: missing required field {key!r}")
  fields = dict(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
      head_dim=hf.get("head_dim"),
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      qkv_bias=model_type == "qwen2", qk_norm=model_type == "qwen3",
      max_seq_len=int(hf.get("max_position_embeddings", 2048)),
      model_type=model_type, bos_token_id=hf.get("bos_token_id"),
      eos_token_id=hf.get("eos_token_id"),
      **_rope_fields(hf, where))
  fields.update(overrides)
  return ModelConfig(**fields)


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  """The transformers config dict for `cfg` (legacy rope fields and `rope_parameters`)."""
  rope: dict[str, Any] = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
  if cfg.rope_type == "linear":
    rope["factor"] = cfg.rope_factor
  elif cfg.rope_type == "llama3":
    rope.update(factor=cfg.rope_factor, low_freq_factor=cfg.rope_low_freq_factor,
                high_freq_factor=cfg.rope_high_freq_factor,
                original_max_position_embeddings=cfg.rope_original_max_positions)
  hf = {
      "architectures": [_ARCHITECTURES[cfg.model_type]],
      "model_type": cfg.model_type,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "rms_norm_eps": cfg.rms_norm_eps,
      "rope_theta": cfg.rope_theta,
      "rope_scaling": None if cfg.rope_type == "default" else {
          k: v for k, v in rope.items() if k != "rope_theta"},
      "rope_parameters": rope,
      "tie_word_embeddings": cfg.tie_embeddings,
      "max_position_embeddings": cfg.max_seq_len,
      "torch_dtype": cfg.param_dtype,
      "attention_dropout": 0.0,
      "use_cache": True,
  }
  if cfg.model_type == "llama":
    hf.update(attention_bias=False, mlp_bias=False)
  if cfg.model_type == "qwen3":
    hf.update(attention_bias=False)
  if cfg.model_type in ("qwen2", "qwen3"):
    hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
  if cfg.bos_token_id is not None:
    hf["bos_token_id"] = cfg.bos_token_id
  if cfg.eos_token_id is not None:
    hf["eos_token_id"] = (list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple)
                          else cfg.eos_token_id)
  return hf


def _read_tensors(path: str) -> dict[str, Any]:
  """All tensors of a checkpoint directory, as arrays keyed by HF name."""
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel

  index = os.path.join(path, "model.safetensors.index.json")
  single = os.path.join(path, "model.safetensors")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    files = sorted(set(weight_map.values()))
  elif os.path.exists(single):
    files = ["model.safetensors"]
  else:
    found = sorted(os.listdir(path))
    raise ValueError(f"{path}: no model.safetensors or model.safetensors.index.json (found "
                     f"{found[:20]})")
  tensors = {}
  for name in files:
    fpath = os.path.join(path, name)
    if not os.path.exists(fpath):
      raise ValueError(f"{index}: safetensors shard {name!r} listed in weight_map is missing")
    with safe_open(fpath, framework="flax") as f:
      for key in f.keys():
        tensors[key] = f.get_tensor(key)
  return tensors


def from_hf(path: str, **overrides) -> tuple[ModelConfig, Params]:
  """Loads a transformers-format checkpoint directory.

  Args:
    path: directory with config.json and model.safetensors (or a sharded index).
    **overrides: ModelConfig fields to override (e.g. dtype="bfloat16", remat="full").

  Returns:
    (cfg, params) with params in `cfg.param_dtype`.
  """
  cfg_path = os.path.join(path, "config.json")
  if not os.path.exists(cfg_path):
    raise ValueError(f"{path}: not a checkpoint directory (no config.json)")
  with open(cfg_path) as f:
    hf = json.load(f)
  if "param_dtype" not in overrides:
    dt = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    overrides["param_dtype"] = dt if dt in ("float32", "bfloat16", "float16") else "float32"
  cfg = config_from_hf(hf, cfg_path, **overrides)
  tensors = _read_tensors(path)
  return cfg, params_from_hf_tensors(cfg, tensors, where=path)


def params_from_hf_tensors(cfg: ModelConfig, tensors: dict[str, Any], where: str = "") -> Params:
  """Converts HF-named tensors to our stacked layout."""
  dtype = cfg.weight_dtype

  def get(name, shape):
    if name not in tensors:
      raise ValueError(f"{where}: checkpoint lacks tensor {name!r}")
    t = jnp.asarray(tensors[name])
    if tuple(t.shape) != tuple(shape):
      raise ValueError(f"{where}: tensor {name!r} has shape {tuple(t.shape)}, config implies "
                       f"{tuple(shape)}")
    return t.astype(dtype)

  d, f = cfg.hidden_size, cfg.intermediate_size
  h, k, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  per_layer: dict[str, list] = {}

  def add(key, value):
    per_layer.setdefault(key, []).append(value)

  for i in range(cfg.num_layers):
    p = f"model.layers.{i}."
    add("attn_norm", get(p + "input_layernorm.weight", (d,)))
    add("mlp_norm", get(p + "post_attention_layernorm.weight", (d,)))
    add("wq", get(p + "self_attn.q_proj.weight", (h * dh, d)).T.reshape(d, h, dh))
    add("wk", get(p + "self_attn.k_proj.weight", (k * dh, d)).T.reshape(d, k, dh))
    add("wv", get(p + "self_attn.v_proj.weight", (k * dh, d)).T.reshape(d, k, dh))
    add("wo", get(p + "self_attn.o_proj.weight", (d, h * dh)).T.reshape(h, dh, d))
    add("w_gate", get(p + "mlp.gate_proj.weight", (f, d)).T)
    add("w_up", get(p + "mlp.up_proj.weight", (f, d)).T)
    add("w_down", get(p + "mlp.down_proj.weight", (d, f)).T)
    if cfg.qkv_bias:
      add("bq", get(p + "self_attn.q_proj.bias", (h * dh,)).reshape(h, dh))
      add("bk", get(p + "self_attn.k_proj.bias", (k * dh,)).reshape(k, dh))
      add("bv", get(p + "self_attn.v_proj.bias", (k * dh,)).reshape(k, dh))
    if cfg.qk_norm:
      add("q_norm", get(p + "self_attn.q_norm.weight", (dh,)))
      add("k_norm", get(p + "self_attn.k_norm.weight", (dh,)))
  params: Params = {
      "embed": get("model.embed_tokens.weight", (cfg.vocab_size, d)),
      "layers": {key: jnp.stack(vals) for key, vals in per_layer.items()},
      "final_norm": get("model.norm.weight", (d,)),
  }
  if not cfg.tie_embeddings:
    if "lm_head.weight" in tensors:
      params["lm_head"] = get("lm_head.weight", (cfg.vocab_size, d)).T
    else:  # Some untied configs still ship without a head: transformers then ties it.
      params["lm_head"] = params["embed"].T
  return params


def params_to_hf_tensors(cfg: ModelConfig, params: Params) -> dict[str, Any]:
  """Our layout -> HF-named tensors (inverse of `params_from_hf_tensors`)."""
  d = cfg.hidden_size
  h, k, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  lay = params["layers"]
  out = {"model.embed_tokens.weight": params["embed"], "model.norm.weight": params["final_norm"]}
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = params["lm_head"].T
  for i in range(cfg.num_layers):
    p = f"model.layers.{i}."
    out[p + "input_layernorm.weight"] = lay["attn_norm"][i]
    out[p + "post_attention_layernorm.weight"] = lay["mlp_norm"][i]
    out[p + "self_attn.q_proj.weight"] = lay["wq"][i].reshape(d, h * dh).T
    out[p + "self_attn.k_proj.weight"] = lay["wk"][i].reshape(d, k * dh).T
    out[p + "self_attn.v_proj.weight"] = lay["wv"][i].reshape(d, k * dh).T
    out[p + "self_attn.o_proj.weight"] = lay["wo"][i].reshape(h * dh, d).T
    out[p + "mlp.gate_proj.weight"] = lay["w_gate"][i].T
    out[p + "mlp.up_proj.weight"] = lay["w_up"][i].T
    out[p + "mlp.down_proj.weight"] = lay["w_down"][i].T
    if cfg.qkv_bias:
      out[p + "self_attn.q_proj.bias"] = lay["bq"][i].reshape(h * dh)
      out[p + "self_attn.k_proj.bias"] = lay["bk"][i].reshape(k * dh)
      out[p + "self_attn.v_proj.bias"] = lay["bv"][i].reshape(k * dh)
    if cfg.qk_norm:
      out[p + "self_attn.q_norm.weight"] = lay["q_norm"][i]
      out[p + "self_attn.k_norm.weight"] = lay["k_norm"][i]
  return out


def to_hf(cfg: ModelConfig, params: Params, out_dir: str,
          max_shard_bytes: int = 4 * 1024**3) -> None:
  """Writes `params` as a transformers checkpoint directory (config.json + safetensors).

  Checkpoints larger than `max_shard_bytes` are split into shards with an index file, as
  transformers does.
  """
  from safetensors.flax import save_file  # pylint: disable=import-outside-toplevel

  os.makedirs(out_dir, exist_ok=True)
  tensors = {name: jnp.asarray(t, cfg.weight_dtype)
             for name, t in params_to_hf_tensors(cfg, params).items()}
  shards: list[dict[str, Any]] = [{}]
  size = 0
  for name, t in tensors.items():
    nbytes = t.size * t.dtype.itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = t
    size += nbytes
  if len(shards) == 1:
    save_file(shards[0], os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      save_file(shard, os.path.join(out_dir, fname), metadata={"format": "pt"})
      weight_map.update({name: fname for name in shard})
    total = int(sum(t.size * t.dtype.itemsize for t in tensors.values()))
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config_to_hf(cfg), f, indent=2)

