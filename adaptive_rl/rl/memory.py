"""A per-device memory estimate of an RL run, checked against the device before launch.

The estimate adds what is resident through a step (params, optimizer state, reference params)
to the larger of the two phases' working sets:

  train  = params + grads + updates + optimizer + ref + gathered + activations + logits
  sample = params + optimizer + ref + gathered + kv_cache + decode logits

(`updates`: the optimizer's update tree before it is applied, one more trained-params-sized
buffer; `gathered`: with fsdp > 1, one layer's weights and the embedding all-gathered for use,
and that layer's full-width gradient before its reduce-scatter.)

Per device, given the mesh: params, grads and optimizer state follow the rules' sharding of each
parameter (embed over fsdp, heads / mlp / vocab over tensor, with the divisibility fallback);
activations divide the batch over data x fsdp, the length over sequence and the heads / mlp /
vocab widths over tensor.

Activations saved for the backward pass, per layer, for a micro-batch of B rows of T tokens
(c = compute dtype bytes, D hidden, F mlp width, H / K query / kv heads of width Dh):
  none:          B*T*(D*(3c + 8) + (H + 2K)*Dh*2c + H*Dh*c + 4F*c) + B*H*T*T*(8 + 2c)
                 (norm inputs and their f32 copies, q / k / v before and after RoPE, attention
                 scores and masked scores (f32), probabilities and their exponentials, the
                 attention output, the SwiGLU gate / up / sigmoid / product)
  full:          B*T*D*c (the layer input) per layer, plus one layer's `none` set recomputed
  dots:          B*T*((H + 2K)*Dh + H*Dh + 3D + 2F)*c + B*H*T*T*4 (every matmul output)
  dots_no_batch: B*T*((H + 2K)*Dh + 3D + 2F)*c, plus one layer's `none` set (weight matmuls)
Log-probs: the final hidden states B*T*D*c plus one chunk of float32 logits, log-softmax and
its exponential, 3*B*chunk*V*4 (all N completion positions when logprob_chunk = 0).

It is rough (XLA fuses and reuses buffers): the tests compare it with XLA's own buffer
assignment (`compile().memory_analysis()`) for a small train step and require agreement within
a factor of 2.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from adaptive_rl import models
from adaptive_rl.parallel import MESH_AXES, DEFAULT_RULES, logical_to_spec, normalize_rules
from adaptive_rl.parallel.sharding import Rules

_GIB = 1024 ** 3
_OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "lion": 1, "momentum": 1, "sgd": 0}
_LORA_TARGETS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


class _MeshShape:
  """The part of a `Mesh` that `logical_to_spec`'s divisibility fallback reads."""

  def __init__(self, shape: Mapping[str, int]):
    self.shape = dict(shape)


def _mesh_shape(mesh: Mesh | Mapping[str, int] | None) -> dict[str, int]:
  if mesh is None:
    return {}
  return {**{a: 1 for a in MESH_AXES}, **(dict(mesh.shape) if isinstance(mesh, Mesh) else mesh)}


def _param_elements_per_device(model_cfg: Any, mesh_shape: dict[str, int],
                               rules: Rules) -> tuple[int, int]:
  """(elements per device, total elements) of the params under the rules' sharding."""
  shapes = jax.eval_shape(functools.partial(models.init, model_cfg), jax.random.key(0))
  axes = models.param_axes(model_cfg)
  mesh = _MeshShape(mesh_shape)
  per_device, total = 0, 0
  for ax, leaf in zip(jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple)),
                      jax.tree.leaves(shapes)):
    size = math.prod(leaf.shape)
    total += size
    if not mesh_shape:
      per_device += size
      continue
    spec = logical_to_spec(ax, rules, leaf.shape, mesh)
    ways = 1
    for p in spec:
      for a in (() if p is None else (p,) if isinstance(p, str) else p):
        ways *= mesh_shape[a]
    per_device += math.ceil(size / ways)
  return per_device, total


def _layer_activations(remat: str, b: float, t: float, s: float, d: int, f: float, h: float,
                       k: float, dh: int, c: int) -> tuple[float, float]:
  """(bytes kept per layer through the forward, bytes of one layer's recompute working set).

  `t` is this device's share of the tokens, `s` the key length each query attends over.
  """
  full_set = (b * t * (d * (3 * c + 8) + (h + 2 * k) * dh * 2 * c + h * dh * c + 4 * f * c)
              + b * h * t * s * (8 + 2 * c))
  if remat == "none":
    return full_set, 0.0
  if remat == "full":
    return b * t * d * c, full_set
  if remat == "dots":
    return b * t * ((h + 2 * k) * dh + h * dh + 3 * d + 2 * f) * c + b * h * t * s * 4, 0.0
  if remat == "dots_no_batch":
    return b * t * ((h + 2 * k) * dh + 3 * d + 2 * f) * c, full_set
  raise ValueError(f"estimate_memory: remat must be none | full | dots | dots_no_batch, got "
                   f"{remat!r}")


def estimate_memory(model_cfg: Any, *, batch: int, seq_len: int, completion_len: int | None = None,
                    mesh: Mesh | Mapping[str, int] | None = None, rules: Rules = DEFAULT_RULES,
                    param_bytes: int | None = None, compute_bytes: int | None = None,
                    optimizer: str = "adamw", remat: str | None = None, logprob_chunk: int = 0,
                    micro_batches: int = 1, lora: bool = False, lora_rank: int = 16,
                    ref_params: bool = False, sample_batch: int = 0, sample_len: int = 0,
                    cache_bytes: int | None = None) -> dict[str, int]:
  """Estimated peak bytes per device of one RL step (see the module docstring for formulas).

  Args:
    model_cfg: a `models.ModelConfig`.
    batch: training rows per optimizer update (global, before splitting into micro-batches).
    seq_len: tokens per training row (prompt + completion).
    completion_len: positions whose log-probs are taken (default seq_len).
    mesh: a `Mesh` or {axis: size}; None = one device.
    rules: logical-axis rules (decide how params split on the mesh).
    param_bytes: bytes per parameter (default the config's param_dtype).
    compute_bytes: bytes per activation element (default the config's dtype).
    optimizer: adamw | adam (2 states per param) | lion | momentum (1) | sgd (0).
    remat: none | full | dots | dots_no_batch (default the config's remat).
    logprob_chunk: positions per vocabulary projection (0 = all at once).
    micro_batches: gradient-accumulation chunks (activations for batch / micro_batches rows;
      one more gradient buffer when > 1).
    lora: only LoRA adapters (rank `lora_rank` on the 7 projections) are trained: gradients and
      optimizer state are the adapters', and the reference model is the frozen base (free).
    lora_rank: adapter rank when `lora`.
    ref_params: a separate frozen reference copy of the params is resident (KL term).
    sample_batch: rows sampled at once (0 = no sampling phase).
    sample_len: KV cache slots per row (prompt + max_new_tokens).
    cache_bytes: bytes per KV cache element (default compute_bytes).

  Returns:
    Bytes per device: params, grads, updates, optimizer, ref_params, gathered, activations,
    logits, kv_cache, train_total, sample_total, peak; and the counts num_params and devices.
  """
  if optimizer not in _OPTIMIZER_STATES:
    raise ValueError(f"estimate_memory: optimizer must be one of {sorted(_OPTIMIZER_STATES)}, "
                     f"got {optimizer!r}")
  for name, value in (("batch", batch), ("seq_len", seq_len), ("micro_batches", micro_batches)):
    if value < 1:
      raise ValueError(f"estimate_memory: {name} must be >= 1, got {value}")
  rules = normalize_rules(rules)
  shape = _mesh_shape(mesh)
  size = lambda *axes: math.prod(shape.get(a, 1) for a in axes)
  pb = param_bytes or np.dtype(model_cfg.weight_dtype).itemsize
  c = compute_bytes or np.dtype(model_cfg.compute_dtype).itemsize
  remat = remat or model_cfg.remat
  n = completion_len or seq_len

  param_elems, num_params = _param_elements_per_device(model_cfg, shape, rules)
  params = param_elems * pb
  if lora:
    d, f = model_cfg.hidden_size, model_cfg.intermediate_size
    q, kv = model_cfg.q_size, model_cfg.kv_size
    dims = {"wq": d + q, "wk": d + kv, "wv": d + kv, "wo": q + d, "w_gate": d + f,
            "w_up": d + f, "w_down": f + d}
    # float32 adapters A [in, r] and B [r, out] on each projection.
    trained = model_cfg.num_layers * lora_rank * sum(dims[t] for t in _LORA_TARGETS) * 4
    trained = math.ceil(trained / size("fsdp"))  # adapters are small: fsdp only, roughly
    params += trained
  else:
    trained = params
  grads = trained * (2 if micro_batches > 1 else 1)
  updates = trained  # the optimizer's update tree, alive until it is applied
  opt = trained * _OPTIMIZER_STATES[optimizer]
  ref = params if ref_params and not lora else 0

  # Activations of one micro-batch on one device.
  dp = size(*_as_tuple(dict(rules).get("batch")))
  tp = size("tensor")
  sp = size(*_as_tuple(dict(rules).get("length")))
  b = math.ceil(batch / micro_batches / dp)
  t = seq_len / sp
  heads = model_cfg.num_heads / (tp if model_cfg.num_heads % tp == 0 else 1)
  kv_heads = model_cfg.num_kv_heads / (tp if model_cfg.num_kv_heads % tp == 0 else 1)
  f = model_cfg.intermediate_size / (tp if model_cfg.intermediate_size % tp == 0 else 1)
  # Sequence parallelism splits every per-token term; attention's key side stays whole.
  kept, work = _layer_activations(remat, b, t, seq_len, model_cfg.hidden_size, f, heads,
                                  kv_heads, model_cfg.head_dim, c)
  activations = model_cfg.num_layers * kept + work
  vocab = model_cfg.vocab_size / (tp if model_cfg.vocab_size % tp == 0 else 1)
  # FSDP all-gathers each layer's weights (and the embedding) before use, and holds the
  # layer's full-width gradient before the reduce-scatter.
  gathered = 0
  if size("fsdp") > 1:
    embed = model_cfg.vocab_size * model_cfg.hidden_size
    per_layer = (num_params - embed * (1 if model_cfg.tie_embeddings else 2)
                 ) / model_cfg.num_layers
    gathered = 2 * (per_layer + embed) / tp * pb
  chunk = n if logprob_chunk <= 0 else min(logprob_chunk, n)
  logits = b * t * model_cfg.hidden_size * c + 3 * b * chunk * vocab * 4

  kv_cache = 0
  decode_logits = 0
  if sample_batch:
    if sample_len < 1:
      raise ValueError(f"estimate_memory: sample_len must be >= 1 with sample_batch, got "
                       f"{sample_len}")
    sb = math.ceil(sample_batch / dp)
    kv_cache = (2 * model_cfg.num_layers * sb * sample_len * kv_heads * model_cfg.head_dim
                * (cache_bytes or c))
    decode_logits = 2 * sb * vocab * 4
  resident = params + opt + ref
  train_total = resident + grads + updates + gathered + activations + logits
  sample_total = resident + gathered + kv_cache + decode_logits if sample_batch else 0
  out = dict(params=params, grads=grads, updates=updates, optimizer=opt, ref_params=ref,
             gathered=gathered, activations=activations, logits=logits, kv_cache=kv_cache,
             train_total=train_total, sample_total=sample_total,
             peak=max(train_total, sample_total))
  out = {key: int(math.ceil(v)) for key, v in out.items()}
  out.update(num_params=num_params, devices=size(*shape) if shape else 1)
  return out


def _as_tuple(mesh_axes) -> tuple[str, ...]:
  if mesh_axes is None:
    return ()
  return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def device_memory_bytes(device: jax.Device | None = None) -> int | None:
  """The memory limit of `device` (default the first local one), None where unknown (CPU)."""
  device = device or jax.local_devices()[0]
  stats = device.memory_stats()
  return None if not stats else stats.get("bytes_limit")


class MemoryEstimateError(ValueError):
  """The estimated per-device memory of a run exceeds what the device has."""


def check_memory(estimate: Mapping[str, int], device_bytes: int | None,
                 headroom: float = 0.9) -> None:
  """Raises before launch when `estimate["peak"]` exceeds `headroom * device_bytes`.

  Args:
    estimate: `estimate_memory(...)`'s output.
    device_bytes: memory per device (e.g. `device_memory_bytes()`); None skips the check.
    headroom: fraction of the device usable (XLA needs workspace; fragmentation).

  Raises:
    MemoryEstimateError with the breakdown and the knobs that reduce each term.
  """
  if device_bytes is None:
    return
  if not 0 < headroom <= 1:
    raise ValueError(f"check_memory: headroom must be in (0, 1], got {headroom}")
  budget = headroom * device_bytes
  if estimate["peak"] <= budget:
    return
  parts = ", ".join(f"{k}={estimate[k] / _GIB:.2f}"
                    for k in ("params", "grads", "updates", "optimizer", "ref_params", "gathered",
                              "activations", "logits", "kv_cache"))
  phase = "training" if estimate["train_total"] >= estimate["sample_total"] else "sampling"
  raise MemoryEstimateError(
      f"estimated peak {estimate['peak'] / _GIB:.2f} GiB per device ({phase}) exceeds "
      f"{headroom:.0%} of the device's {device_bytes / _GIB:.2f} GiB. Breakdown (GiB): {parts}. "
      f"To fit: raise mesh.fsdp / mesh.tensor (params, grads, optimizer), set model remat "
      f"(activations), lower logprob_chunk (logits), raise micro_batches or lower the batch "
      f"(activations), lower the sampling slots or max_new_tokens (kv_cache), or train LoRA "
      f"adapters")
