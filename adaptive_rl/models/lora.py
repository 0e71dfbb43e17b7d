"""LoRA as a pure-functional wrapper around the decoder's params.

Adapters live in their own pytree, shaped like the part of the base params they adapt:

  lora = init_lora(cfg, params, LoraConfig(rank=16, alpha=32), rng)
  # lora == {"layers": {"wq": {"a": [L, D, r], "b": [L, r, H, Dh]}, ...}}
  logits, _ = apply(cfg, adapted(params, lora, config), tokens)  # unmerged: x W + s (x A) B
  logits, _ = apply(cfg, merge(params, lora, config), tokens)    # the same, W + s A B formed

A weight W (stacked over layers where the base is) is read as a matrix [in_dims..., out_dims...]
and adapted as W + (alpha / rank) * A @ B, with A [stack..., in_dims..., r] and B
[stack..., r, out_dims...]. Keeping the layer axis leading on A and B lets `merge` run once on
the stacked arrays, so the merged tree still feeds `lax.scan`; keeping the in / out dims
unflattened lets `lora_axes` reuse the base's logical axis names, so the mesh rules shard the
adapters like the weights they adapt. B starts at zero, so the adapted model equals the base at
init. Take gradients with respect to the adapter tree only (of a loss over `adapted(...)`, which
never forms a full-size weight or gradient); the base never receives an update.
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
from typing import Any

import jax
import jax.numpy as jnp

from adaptive_rl.models.config import ModelConfig
from adaptive_rl.models.hf_io import to_hf
from adaptive_rl.models.transformer import AdaptedParams, Params, param_axes

DEFAULT_TARGETS = r"layers/(wq|wk|wv|wo|w_gate|w_up|w_down)"
_DTYPE_NAMES = ("float32", "bfloat16", "float16")

# Number of input dims of each adaptable matrix, after its stacked `layers` axis (if any):
# wq [L, D | H, Dh] is D -> H*Dh, wo [L, H, Dh | D] is H*Dh -> D, lm_head [D | V], embed [V | D].
_IN_DIMS = {
    "layers/wq": 1, "layers/wk": 1, "layers/wv": 1, "layers/wo": 2,
    "layers/w_gate": 1, "layers/w_up": 1, "layers/w_down": 1,
    "lm_head": 1, "embed": 1,
}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Which weights get adapters, and their size.

  Attributes:
    rank: adapter rank r (>= 1).
    alpha: scale numerator; the update is (alpha / rank) * A @ B (> 0).
    targets: regex `re.fullmatch`-ed against param paths such as "layers/wq" or "lm_head".
      Every matched path must be one of the adaptable matrices (the seven projections,
      lm_head, embed), and at least one must match.
    param_dtype: storage dtype of A and B (float32 | bfloat16 | float16).
  """

  rank: int = 16
  alpha: float = 32.0
  targets: str = DEFAULT_TARGETS
  param_dtype: str = "float32"

  def __post_init__(self):
    if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
      raise ValueError(f"LoraConfig.rank must be an int >= 1, got {self.rank!r}")
    if not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
      raise ValueError(f"LoraConfig.alpha must be a number > 0, got {self.alpha!r}")
    try:
      re.compile(self.targets)
    except (re.error, TypeError) as e:
      raise ValueError(f"LoraConfig.targets must be a valid regex, got {self.targets!r}: "
                       f"{e}") from None
    if self.param_dtype not in _DTYPE_NAMES:
      raise ValueError(f"LoraConfig.param_dtype must be one of {_DTYPE_NAMES}, got "
                       f"{self.param_dtype!r}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def _flatten(tree: Params, is_leaf=None) -> dict[str, Any]:
  """{"a/b": leaf} for a nested dict (stopping at `is_leaf` nodes)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and not (is_leaf and is_leaf(value)):
      out.update({f"{key}/{k}": v for k, v in _flatten(value, is_leaf).items()})
    else:
      out[key] = value
  return out


def _unflatten(flat: dict[str, Any]) -> Params:
  out: Params = {}
  for path, value in flat.items():
    *parents, last = path.split("/")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = value
  return out


def _is_adapter(node: Any) -> bool:
  return isinstance(node, dict) and set(node) == {"a", "b"}


def target_paths(paths: Any, config: LoraConfig) -> list[str]:
  """The param paths `config.targets` selects, in order.

  Args:
    paths: an iterable of "a/b" paths, or a params / axes tree to take them from.
    config: the LoRA settings.

  Raises:
    ValueError when nothing matches, or when a match is not an adaptable matrix.
  """
  if isinstance(paths, dict):
    paths = _flatten(paths)
  paths = list(paths)
  pattern = re.compile(config.targets)
  chosen = [p for p in paths if pattern.fullmatch(p)]
  if not chosen:
    raise ValueError(f"LoraConfig.targets={config.targets!r} matches no param path (paths: "
                     f"{paths}; adaptable: {sorted(_IN_DIMS)})")
  bad = [p for p in chosen if p not in _IN_DIMS]
  if bad:
    raise ValueError(f"LoraConfig.targets={config.targets!r} matches {bad}, which cannot take "
                     f"an adapter (adaptable: {sorted(_IN_DIMS)})")
  return chosen


def _split(path: str) -> tuple[int, int]:
  """(stacked dims, input dims) of the matrix at `path`; the rest are output dims."""
  stack = 1 if path.startswith("layers/") else 0
  return stack, _IN_DIMS[path]


def init_lora(cfg: ModelConfig, base_params: Params, config: LoraConfig,
              rng: jax.Array) -> Params:
  """Adapters for every targeted matrix: A ~ normal(0, 1 / sqrt(fan_in)), B = 0.

  The 1 / sqrt(fan_in) std (Kaiming-like, as PEFT's A) keeps A x of unit scale at any width;
  B = 0 makes the adapted model equal the base at init.

  Args:
    cfg: the model config (only checked against the params' layer count).
    base_params: the base params (only their shapes are read; abstract arrays work).
    config: the LoRA settings.
    rng: PRNG key.

  Returns:
    {"layers": {"wq": {"a": A, "b": B}, ...}, ...} for the targeted paths.
  """
  flat = _flatten(base_params)
  paths = target_paths(flat, config)
  dtype = jnp.dtype(config.param_dtype)
  keys = jax.random.split(rng, len(paths))
  out = {}
  for key, path in zip(keys, paths):
    shape = tuple(flat[path].shape)
    stack, n_in = _split(path)
    if stack and shape[0] != cfg.num_layers:
      raise ValueError(f"init_lora: {path} has {shape[0]} layers, cfg.num_layers="
                       f"{cfg.num_layers}")
    lead, ins, outs = shape[:stack], shape[stack:stack + n_in], shape[stack + n_in:]
    std = 1.0 / math.sqrt(math.prod(ins))
    a = std * jax.random.normal(key, lead + ins + (config.rank,), jnp.float32)
    out[path] = {"a": a.astype(dtype), "b": jnp.zeros(lead + (config.rank,) + outs, dtype)}
  return _unflatten(out)


def lora_axes(cfg: ModelConfig, config: LoraConfig) -> Params:
  """Logical axis names of `init_lora`'s output (e.g. wq: A ("layers", "embed", "lora_rank"),
  B ("layers", "lora_rank", "heads", "head_dim")), so the mesh rules shard the adapters."""
  flat = _flatten(param_axes(cfg))
  out = {}
  for path in target_paths(flat, config):
    axes = tuple(flat[path])
    stack, n_in = _split(path)
    lead, ins, outs = axes[:stack], axes[stack:stack + n_in], axes[stack + n_in:]
    out[path] = {"a": lead + ins + ("lora_rank",), "b": lead + ("lora_rank",) + outs}
  return _unflatten(out)


def _delta(path: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """A @ B per stacked layer, in float32, shaped like the base weight."""
  stack, n_in = _split(path)
  n_out = b.ndim - stack - 1
  letters = iter(string.ascii_lowercase.replace("r", ""))
  lead = "".join(next(letters) for _ in range(stack))
  ins = "".join(next(letters) for _ in range(n_in))
  outs = "".join(next(letters) for _ in range(n_out))
  # An einsum over the unflattened dims (no reshape) keeps the adapters' shardings intact.
  return jnp.einsum(f"{lead}{ins}r,{lead}r{outs}->{lead}{ins}{outs}", a, b,
                    preferred_element_type=jnp.float32)


def merge(base_params: Params, lora_params: Params, config: LoraConfig) -> Params:
  """base + (alpha / rank) * A @ B for every adapter in `lora_params` (pure, jittable).

  The update is formed in float32 and the sum cast to the base weight's dtype. Untargeted
  params are passed through unchanged (same objects).

  Args:
    base_params: the frozen base params.
    lora_params: adapters from `init_lora` (possibly trained).
    config: the LoRA settings (supplies the scale).

  Returns:
    A params tree shaped like `base_params`.
  """
  flat = _flatten(base_params)
  for path, ab in _flatten(lora_params, _is_adapter).items():
    if path not in flat or not _is_adapter(ab):
      raise ValueError(f"merge: adapter path {path!r} has no base weight (or is not an "
                       f"{{'a', 'b'}} pair); base paths: {sorted(flat)}")
    w = flat[path]
    delta = _delta(path, ab["a"], ab["b"])
    if delta.shape != w.shape:
      raise ValueError(f"merge: adapter {path!r} gives shape {delta.shape}, the base weight is "
                       f"{w.shape}")
    flat[path] = (w.astype(jnp.float32) + config.scale * delta).astype(w.dtype)
  return _unflatten(flat)


def adapted(base_params: Params, lora_params: Params, config: LoraConfig) -> AdaptedParams:
  """The base with its adapters, for `apply` and everything that takes params: every adapted
  matrix is read as x W + (alpha / rank) (x A) B, unmerged."""
  return AdaptedParams(base_params, lora_params, config.scale)


def count_params(tree: Any) -> int:
  """Total number of elements over a pytree's array leaves."""
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def export_merged(cfg: ModelConfig, base_params: Params, lora_params: Params,
                  config: LoraConfig, out_dir: str, **to_hf_kwargs) -> None:
  """Writes base + adapters as one plain transformers checkpoint (no PEFT needed to load it).

  Args:
    cfg: the base model's config.
    base_params: the frozen base params.
    lora_params: the trained adapters.
    config: the LoRA settings.
    out_dir: directory to write config.json and safetensors into.
    **to_hf_kwargs: passed to `to_hf` (e.g. max_shard_bytes).
  """
  to_hf(cfg, merge(base_params, lora_params, config), out_dir, **to_hf_kwargs)
