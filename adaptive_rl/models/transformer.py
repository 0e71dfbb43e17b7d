"""A pure-functional Llama / Qwen2 / Qwen3 decoder.

Params are a plain nested dict; the L decoder blocks are stacked on a leading `layers` axis and
run with `lax.scan`, so compile time does not grow with depth. Every parameter and the main
activations carry logical axis names (see `param_axes` and `parallel.constrain`), which the mesh
rules map to devices.

Shape suffixes: B batch, T query length, S cache length, D hidden, H query heads, K kv heads,
G = H // K, Dh head dim, F mlp width, V vocab, L layers.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adaptive_rl.models.config import ModelConfig
from adaptive_rl.parallel import constrain

Params = dict[str, Any]

_NEG_INF = -1e30


@jax.tree_util.register_pytree_node_class
class AdaptedParams:
  """Frozen base params plus LoRA adapters (`models.lora.init_lora`), read unmerged.

  Pass one wherever params go (`apply`, `unembed`, the sampler, log-probs): each adapted matrix
  W is used as x W + scale (x A) B, so neither W + scale A B nor a full-size gradient is ever
  formed, and gradients taken with respect to `adapters` leave the base untouched. `scale`
  (alpha / rank) is static (pytree aux data).
  """

  def __init__(self, base: Params, adapters: Params, scale: float):
    self.base, self.adapters, self.scale = base, adapters, scale

  def tree_flatten(self):
    return (self.base, self.adapters), self.scale

  @classmethod
  def tree_unflatten(cls, scale, children):
    return cls(*children, scale)


def split_adapted(params) -> tuple[Params, Params, float]:
  """(base, adapters, scale) of `AdaptedParams`; (params, {}, 0.0) of plain params."""
  if isinstance(params, AdaptedParams):
    return params.base, params.adapters, params.scale
  return params, {}, 0.0


class KVCache(NamedTuple):
  """Decoding state: keys / values per layer for a static number of slots S.

  Sequences of a batch are written in lockstep (prompts are left-padded), so one scalar `index`
  says where the next token goes; `valid` marks the slots that hold a real (non-pad) token.
  """

  # [L, B, K, S, Dh] (the layout the score / value contractions read in place); with
  # `scan_layers=False` a tuple of L per-layer [B, K, S, Dh] buffers, each updated in place.
  k: jax.Array | tuple[jax.Array, ...]
  v: jax.Array | tuple[jax.Array, ...]
  valid: jax.Array  # [B, S] bool
  index: jax.Array  # [] int32: number of slots written so far

  @property
  def max_len(self) -> int:
    return self.k[0].shape[2] if isinstance(self.k, tuple) else self.k.shape[3]


class Prefix(NamedTuple):
  """Keys / values of shared prefixes (e.g. one prompt's, for its G completions), computed once.

  `apply(..., return_kv=True)` returns one for the tokens it ran (index None); pass it with
  `index` set as `apply(..., prefix=...)` and row b attends first to prefix `index[b]`'s valid
  slots, then causally to its own tokens. Gradients flow into the prefix computation (a
  scatter-add over the rows that share it), so training on [U, P] prompts + [B, N] completions
  equals training on the [B, P + N] concatenation with U / B of its prompt-token work.
  """

  # [L, U, P, K, Dh] (stacked, as scanned) or a tuple of L per-layer [U, P, K, Dh] (unrolled);
  # keys after RoPE.
  k: jax.Array | tuple[jax.Array, ...]
  v: jax.Array | tuple[jax.Array, ...]
  valid: jax.Array  # [U, P] bool: slots holding a real (non-pad) token
  index: jax.Array | None = None  # [B] int32: the prefix each row continues


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
  """An empty cache with `max_len` slots per sequence (per-layer buffers when unrolled)."""
  dtype = dtype or cfg.compute_dtype
  shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
  if cfg.scan_layers:
    k, v = (jnp.zeros((cfg.num_layers, *shape), dtype) for _ in range(2))  # two buffers
  else:
    k = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    v = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
  return KVCache(k=k, v=v, valid=jnp.zeros((batch, max_len), bool),
                 index=jnp.zeros((), jnp.int32))


def _unstack(layers: Any) -> tuple[Any, ...]:
  n = jax.tree.leaves(layers)[0].shape[0] if jax.tree.leaves(layers) else 0
  return tuple(jax.tree.map(lambda w, i=i: w[i], layers) for i in range(n))


def unstack_layers(params: Any) -> Any:
  """`params` with "layers" as a tuple of L per-layer dicts (for `scan_layers=False`).

  `apply` slices stacked weights per layer on every call; a caller that applies the model many
  times with the same weights (the sampler's decode loop) unstacks once, outside its loop.
  Works on plain params and on `AdaptedParams` (adapters unstacked alike).
  """
  if isinstance(params, AdaptedParams):
    adapters = params.adapters
    if "layers" in adapters and not isinstance(adapters["layers"], tuple):
      adapters = {**adapters, "layers": _unstack(adapters["layers"])}
    return AdaptedParams(unstack_layers(params.base), adapters, params.scale)
  if isinstance(params["layers"], tuple):
    return params
  return {**params, "layers": _unstack(params["layers"])}


def param_axes(cfg: ModelConfig) -> Params:
  """Logical axis names of every parameter, a pytree matching `init`'s output."""
  layers = {
      "attn_norm": ("layers", "embed"),
      "wq": ("layers", "embed", "heads", "head_dim"),
      "wk": ("layers", "embed", "kv_heads", "head_dim"),
      "wv": ("layers", "embed", "kv_heads", "head_dim"),
      "wo": ("layers", "heads", "head_dim", "embed"),
      "mlp_norm": ("layers", "embed"),
      "w_gate": ("layers", "embed", "mlp"),
      "w_up": ("layers", "embed", "mlp"),
      "w_down": ("layers", "mlp", "embed"),
  }
  if cfg.qkv_bias:
    layers.update(bq=("layers", "heads", "head_dim"), bk=("layers", "kv_heads", "head_dim"),
                  bv=("layers", "kv_heads", "head_dim"))
  if cfg.qk_norm:
    layers.update(q_norm=("layers", "head_dim"), k_norm=("layers", "head_dim"))
  axes = {"embed": ("vocab", "embed"), "layers": layers, "final_norm": ("embed",)}
  if not cfg.tie_embeddings:
    axes["lm_head"] = ("embed", "vocab")
  return axes


def init(cfg: ModelConfig, rng: jax.Array, init_std: float = 0.02) -> Params:
  """Random parameters (normal(0, init_std) matrices, unit norms, zero biases)."""
  d, f, l = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
  h, k, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  shapes = {
      "embed": (cfg.vocab_size, d),
      "layers": {
          "wq": (l, d, h, dh), "wk": (l, d, k, dh), "wv": (l, d, k, dh), "wo": (l, h, dh, d),
          "w_gate": (l, d, f), "w_up": (l, d, f), "w_down": (l, f, d),
      },
  }
  if not cfg.tie_embeddings:
    shapes["lm_head"] = (d, cfg.vocab_size)
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
  keys = jax.random.split(rng, len(leaves))
  dtype = cfg.weight_dtype
  params = jax.tree.unflatten(
      treedef, [init_std * jax.random.normal(key, s, jnp.float32).astype(dtype)
                for key, s in zip(keys, leaves)])
  params["final_norm"] = jnp.ones((d,), dtype)
  params["layers"]["attn_norm"] = jnp.ones((l, d), dtype)
  params["layers"]["mlp_norm"] = jnp.ones((l, d), dtype)
  if cfg.qkv_bias:
    params["layers"]["bq"] = jnp.zeros((l, h, dh), dtype)
    params["layers"]["bk"] = jnp.zeros((l, k, dh), dtype)
    params["layers"]["bv"] = jnp.zeros((l, k, dh), dtype)
  if cfg.qk_norm:
    params["layers"]["q_norm"] = jnp.ones((l, dh), dtype)
    params["layers"]["k_norm"] = jnp.ones((l, dh), dtype)
  return params


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
  """RMSNorm in float32, cast back to x's dtype before the scale (as transformers does)."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return w.astype(x.dtype) * y.astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> jax.Array:
  """Inverse frequencies [Dh/2], with linear or Llama-3.1 scaling applied."""
  dh = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))
  if cfg.rope_type == "linear":
    inv_freq = inv_freq / cfg.rope_factor
  elif cfg.rope_type == "llama3":
    old = cfg.rope_original_max_positions
    low_wavelen = old / cfg.rope_low_freq_factor
    high_wavelen = old / cfg.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / cfg.rope_factor, inv_freq)
    smooth = (old / wavelen - cfg.rope_low_freq_factor) / (
        cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)
    smoothed = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv_freq = jnp.where(medium, smoothed, scaled)
  return inv_freq


def apply_rope(x_BTND: jax.Array, positions_BT: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotary embedding, transformers' rotate-half convention (first half / second half)."""
  freqs = positions_BT.astype(jnp.float32)[..., None] * inv_freq  # [B, T, Dh/2]
  cos = jnp.cos(freqs)[:, :, None, :]
  sin = jnp.sin(freqs)[:, :, None, :]
  x = x_BTND.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTND.dtype)


def positions_from_mask(mask_BT: jax.Array) -> jax.Array:
  """Positions 0, 1, ... counted over real tokens only (left padding gets position 0)."""
  return jnp.maximum(jnp.cumsum(mask_BT.astype(jnp.int32), axis=-1) - 1, 0)


def _dense(x: jax.Array, w: jax.Array, n_in: int = 1) -> jax.Array:
  """Contracts the last `n_in` dims of x with the first `n_in` of w as ONE 2-D matmul.

  Flattening [B, T, D] x [D, H, Dh] to [B*T, D] x [D, H*Dh] keeps the weight-gradient matmul of
  the backward pass a plain [D, B*T] x [B*T, H*Dh] product; as a multi-dim einsum XLA:CPU
  instead materialises transposed activation gradients (3x slower MLP backward, measured).
  """
  lead, rest = x.shape[:x.ndim - n_in], x.shape[x.ndim - n_in:]
  out = w.shape[n_in:]
  y = jnp.dot(x.reshape(-1, math.prod(rest)), w.reshape(math.prod(rest), -1))
  return y.reshape(*lead, *out)


def _adapted_dense(x: jax.Array, w: jax.Array, ab: Params | None, scale: float,
                   n_in: int = 1) -> jax.Array:
  """`_dense(x, w)` plus, with an adapter `ab` = {"a", "b"}, the LoRA term scale (x A) B:
  two rank-r matmuls beside the frozen one (W + scale A B is never formed)."""
  y = _dense(x, w, n_in)
  if ab is None:
    return y
  xa = _dense(x, ab["a"].astype(x.dtype), n_in)
  return y + _dense(xa * jnp.asarray(scale, x.dtype), ab["b"].astype(x.dtype))


def embed_tokens(params, tokens_BT: jax.Array) -> jax.Array:
  """Embeddings of `tokens_BT` in the weights' dtype; an `embed` adapter adds scale A[t] B."""
  base, adapters, scale = split_adapted(params)
  # All-gather the fsdp-split embed dim first: XLA reshards a lookup's output only by copying.
  x = jnp.take(constrain(base["embed"], ("vocab", None)), tokens_BT, axis=0)
  if "embed" in adapters:  # rows of A, then @ B: (E + s A B)[t] in float32, as `merge` forms it
    a, b = adapters["embed"]["a"], adapters["embed"]["b"]
    delta = jnp.dot(jnp.take(a, tokens_BT, axis=0), b, preferred_element_type=jnp.float32)
    x = (x.astype(jnp.float32) + scale * delta).astype(x.dtype)
  return x


def _attention(cfg: ModelConfig, q_BTHD, k_BKSD, v_BKSD, mask_BTS) -> jax.Array:
  b, t, _, dh = q_BTHD.shape
  kh = cfg.num_kv_heads
  g = cfg.num_heads // kh
  # [B, K, G*T, Dh]: the query heads sharing a kv head are stacked along the query axis, so
  # both contractions are plain batched matmuls over (B, K) against the cache as stored.
  q = q_BTHD.reshape(b, t, kh, g, dh).transpose(0, 2, 3, 1, 4)
  q = q.reshape(b, kh, -1, dh) * jnp.asarray(1.0 / math.sqrt(dh), q_BTHD.dtype)
  scores = jnp.einsum("bkqd,bksd->bkqs", q, k_BKSD, preferred_element_type=jnp.float32)
  # The mask as an additive bias over the 4-D scores (tiled over the G query groups, rows
  # g*T + t): a where / softmax over a broadcast 5-D view runs ~2x slower on XLA:CPU.
  bias = jnp.tile(jnp.where(mask_BTS, 0.0, _NEG_INF)[:, None], (1, 1, g, 1))
  scores = scores + bias
  # Softmax normalised AFTER the value contraction (as flash attention does): exp(s - max) @ V
  # / sum exp(s - max). The same values as softmax(s) @ V; the backward skips the softmax
  # Jacobian's [.., S] passes (attention forward + backward ~2x faster on CPU, measured). A
  # row with no valid slot (a pad query) gets the uniform average, as softmax would give it.
  m = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
  e = jnp.exp(scores - m)
  denom = jnp.sum(e, axis=-1, keepdims=True)
  out = jnp.einsum("bkqs,bksd->bkqd", e.astype(v_BKSD.dtype), v_BKSD,
                   preferred_element_type=jnp.float32)
  out = (out / denom).astype(v_BKSD.dtype)
  out = out.reshape(b, kh, g, t, dh).transpose(0, 3, 1, 2, 4)
  return out.reshape(b, t, cfg.num_heads, dh)


def _block(cfg: ModelConfig, inv_freq, x_BTD, layer, positions_BT, mask_BTS, kv,
           adapters: Params | None = None, scale: float = 0.0, prefix_kv=None,
           return_kv: bool = False):
  """One decoder block (`adapters`: this layer's LoRA adapters, by projection name).

  `kv` is None (attend within the T tokens) or (k, v, layer_index, index) with index the slot
  of the first new token: either the stacked cache [L, B, K, S, Dh] and this layer's index in
  it, or (layer_index None) this layer's own [B, K, S, Dh] buffers. The new tokens' keys /
  values are written into the cache first and the layer then attends to (its slice of) it.
  Without `kv`, `prefix_kv` = (k [U, P, K, Dh], v, row index [B]) puts each row's prefix keys /
  values before its own (mask_BTS is then [B, T, P + T]).
  Returns (x, (k, v)): the updated caches; without `kv` the T tokens' own [B, T, K, Dh] keys /
  values if `return_kv`, else (None, None).
  """
  dt = cfg.compute_dtype
  adapters = adapters or {}
  dense = lambda x, name, n_in=1: _adapted_dense(x, layer[name].astype(dt), adapters.get(name),
                                                 scale, n_in)
  h = rms_norm(x_BTD, layer["attn_norm"], cfg.rms_norm_eps)
  q = dense(h, "wq")
  k = dense(h, "wk")
  v = dense(h, "wv")
  if cfg.qkv_bias:
    q, k, v = q + layer["bq"].astype(dt), k + layer["bk"].astype(dt), v + layer["bv"].astype(dt)
  if cfg.qk_norm:
    q = rms_norm(q, layer["q_norm"], cfg.rms_norm_eps)
    k = rms_norm(k, layer["k_norm"], cfg.rms_norm_eps)
  q = constrain(apply_rope(q, positions_BT, inv_freq), ("batch", "length", "heads", "head_dim"))
  k = constrain(apply_rope(k, positions_BT, inv_freq), ("batch", "length", "kv_heads", "head_dim"))
  if kv is None:
    caches = (k, v) if return_kv else (None, None)
    keys, values = k, v
    if prefix_kv is not None:  # each row's shared prefix first: [B, P + T, K, Dh]
      pk, pv, index = prefix_kv
      keys = jnp.concatenate([jnp.take(pk, index, axis=0).astype(dt), k], axis=1)
      values = jnp.concatenate([jnp.take(pv, index, axis=0).astype(dt), v], axis=1)
    if cfg.attention == "dot_product_attention":
      # One fused op (cuDNN flash attention on GPU where eligible) on [B, T, heads, Dh] as is.
      attn = jax.nn.dot_product_attention(q, keys, values, mask=mask_BTS[:, None],
                                          scale=1.0 / math.sqrt(q.shape[-1]))
    else:
      attn = _attention(cfg, q, keys.transpose(0, 2, 1, 3), values.transpose(0, 2, 1, 3),
                        mask_BTS)
  else:
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, Dh]
    k_all, v_all, i, index = kv
    if i is None:  # this layer's own buffers
      k_all = jax.lax.dynamic_update_slice(k_all, k.astype(k_all.dtype), (0, 0, index, 0))
      v_all = jax.lax.dynamic_update_slice(v_all, v.astype(v_all.dtype), (0, 0, index, 0))
      keys, values = k_all.astype(dt), v_all.astype(dt)
    else:
      start = (i, 0, 0, index, 0)
      k_all = jax.lax.dynamic_update_slice(k_all, k.astype(k_all.dtype)[None], start)
      v_all = jax.lax.dynamic_update_slice(v_all, v.astype(v_all.dtype)[None], start)
      keys = jax.lax.dynamic_index_in_dim(k_all, i, 0, keepdims=False).astype(dt)
      values = jax.lax.dynamic_index_in_dim(v_all, i, 0, keepdims=False).astype(dt)
    caches = (k_all, v_all)
    attn = _attention(cfg, q, keys, values, mask_BTS)
  x_BTD = x_BTD + dense(attn, "wo", n_in=2)
  x_BTD = constrain(x_BTD, ("batch", "length", "embed"))
  h = rms_norm(x_BTD, layer["mlp_norm"], cfg.rms_norm_eps)
  gate = dense(h, "w_gate")
  up = dense(h, "w_up")
  mlp = constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
  x_BTD = x_BTD + dense(mlp, "w_down")
  return constrain(x_BTD, ("batch", "length", "embed")), caches


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def apply(cfg: ModelConfig, params: Params, tokens_BT: jax.Array,
          positions_BT: jax.Array | None = None, *, cache: KVCache | None = None,
          segment_ids_BT: jax.Array | None = None, return_hidden: bool = False,
          input_embeds_BTD: jax.Array | None = None, prefix: Prefix | None = None,
          return_kv: bool = False) -> tuple[jax.Array, Any]:
  """Runs the decoder.

  Args:
    cfg: the model's static config.
    params: parameters from `init` / `from_hf`, or `AdaptedParams` (base + LoRA adapters,
      applied unmerged).
    tokens_BT: int32 token ids [B, T].
    positions_BT: RoPE positions; default `positions_from_mask(segment_ids != 0)`.
    cache: a `KVCache`; when given, the T tokens are written at slots [index, index + T) and
      attend to every valid earlier slot (prefill when T > 1, decode when T == 1).
    segment_ids_BT: int [B, T]; 0 marks padding, equal non-zero ids attend to each other
      (several sequences packed in one row). Default: all ones (one sequence per row).
    return_hidden: return the final normed hidden states [B, T, D] instead of logits, so
      callers can project to the vocabulary in chunks (`unembed`).
    input_embeds_BTD: token embeddings to use instead of looking `tokens_BT` up (e.g. to take
      gradients with respect to them).
    prefix: a `Prefix` (from `return_kv=True`) with `index` set: row b's tokens follow prefix
      `index[b]` (they attend to its valid slots first; `positions_BT` must continue it).
      Without a cache only.
    return_kv: return these T tokens' keys / values as a `Prefix` (index None) in place of the
      cache. Without a cache only.

  Returns:
    (logits [B, T, V] float32, or hidden [B, T, D]) and the updated cache (None without one;
    the `Prefix` of these tokens with `return_kv`).
  """
  b, t = tokens_BT.shape
  if segment_ids_BT is None:
    segment_ids_BT = jnp.ones((b, t), jnp.int32)
  real_BT = segment_ids_BT != 0
  if positions_BT is None:
    positions_BT = positions_from_mask(real_BT)
    if cache is not None or prefix is not None:
      raise ValueError("apply: positions are required with a cache or a prefix (they continue "
                       "it)")
  if cache is not None and (prefix is not None or return_kv):
    raise ValueError("apply: `prefix` / `return_kv` are for the uncached forward")
  if prefix is not None and prefix.index is None:
    raise ValueError("apply: `prefix.index` (the prefix of each row) is required")
  dt = cfg.compute_dtype
  base, adapters, scale = split_adapted(params)
  if input_embeds_BTD is None:
    input_embeds_BTD = embed_tokens(params, tokens_BT)
  x = input_embeds_BTD.astype(dt)
  x = constrain(x, ("batch", "length", "embed"))
  inv_freq = rope_inv_freq(cfg)

  if cache is None:
    seg = segment_ids_BT
    causal = jnp.tril(jnp.ones((t, t), bool))
    mask = causal[None] & (seg[:, :, None] == seg[:, None, :]) & real_BT[:, None, :]
    if prefix is not None:  # [B, T, P + T]: the row's prefix slots, then its own tokens
      pvalid = jnp.take(prefix.valid, prefix.index, axis=0)
      mask = jnp.concatenate(
          [jnp.broadcast_to(pvalid[:, None, :], (b, t, pvalid.shape[1])), mask], axis=2)
    valid = None
  else:
    s = cache.max_len
    valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, real_BT, cache.index, 1)
    slot_q = cache.index + jnp.arange(t)
    causal = jnp.arange(s)[None, :] <= slot_q[:, None]  # [T, S]
    mask = causal[None] & valid[:, None, :]

  stacked = not isinstance(base["layers"], tuple)
  per_layer_cache = cache is not None and isinstance(cache.k, tuple)
  if cfg.scan_layers and (not stacked or per_layer_cache):
    raise ValueError("apply: unstacked layers / per-layer caches need scan_layers=False")
  if not cfg.scan_layers and cache is not None and not per_layer_cache:
    raise ValueError("apply: with scan_layers=False the cache must be init_cache's per-layer "
                     "tuple")

  def body(carry, xs):
    x, i, kv = carry
    layer, layer_adapters, prefix_kv = xs
    x, kv = _block(cfg, inv_freq, x, layer, positions_BT, mask,
                   None if kv is None else (*kv, i, cache.index), layer_adapters, scale,
                   None if prefix_kv is None else (*prefix_kv, prefix.index), return_kv)
    if cache is None:  # these tokens' keys / values as the scan's per-layer output
      return (x, None if i is None else i + 1, None), (kv if return_kv else None)
    return (x, None if i is None else i + 1, kv), None

  if cfg.remat != "none" and cache is None:
    body = jax.checkpoint(body, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
  adapter_layers = adapters.get("layers", {})  # adapters are stacked on `layers` too
  if cfg.scan_layers:
    # The stacked cache rides in the carry and each layer writes only its T new slots
    # (dynamic_update_slice on a loop-carried buffer is done in place), instead of the cache
    # flowing through as scan input and output, which rewrites every slot of every layer.
    kv = None if cache is None else (cache.k, cache.v)
    prefix_kv = None if prefix is None else (prefix.k, prefix.v)
    (x, _, kv), ys = jax.lax.scan(body, (x, jnp.zeros((), jnp.int32), kv),
                                  (base["layers"], adapter_layers, prefix_kv))
    new_k, new_v = (None, None) if kv is None else kv
    if return_kv:
      new_k, new_v = ys
  else:  # unrolled: no stacked residuals or per-step slices; compile time grows with depth
    layers = base["layers"] if not stacked else _unstack(base["layers"])
    if adapter_layers and not isinstance(adapter_layers, tuple):
      adapter_layers = _unstack(adapter_layers)
    new_k, new_v = [], []
    for i in range(cfg.num_layers):
      kv = None if cache is None else (cache.k[i], cache.v[i])
      prefix_kv = None if prefix is None else (prefix.k[i], prefix.v[i])
      (x, _, kv), ys = body((x, None, kv),
                            (layers[i], adapter_layers[i] if adapter_layers else {}, prefix_kv))
      kv = kv if cache is not None else ys
      if kv is not None:
        new_k.append(kv[0])
        new_v.append(kv[1])
    new_k, new_v = tuple(new_k), tuple(new_v)
  if cache is not None:
    new_cache = KVCache(k=new_k, v=new_v, valid=valid, index=cache.index + t)
  elif return_kv:
    new_cache = Prefix(k=new_k, v=new_v, valid=real_BT)
  else:
    new_cache = None
  x = rms_norm(x, base["final_norm"], cfg.rms_norm_eps)
  if return_hidden:
    return x, new_cache
  return unembed(cfg, params, x), new_cache


def unembed(cfg: ModelConfig, params: Params, hidden: jax.Array) -> jax.Array:
  """Projects hidden states [..., D] to float32 logits [..., V] (one 2-D matmul, see `_dense`)."""
  dt = cfg.compute_dtype
  params, adapters, scale = split_adapted(params)
  w = params["embed"].astype(dt).T if cfg.tie_embeddings else params["lm_head"].astype(dt)
  h = hidden.astype(dt)
  logits = jnp.dot(h.reshape(-1, h.shape[-1]), w, preferred_element_type=jnp.float32)
  ab = adapters.get("embed" if cfg.tie_embeddings else "lm_head")
  if ab is not None:  # + s (h A) B; the tied head reads the embed adapter transposed: s (h B^T) A^T
    a, b = (ab["b"].T, ab["a"].T) if cfg.tie_embeddings else (ab["a"], ab["b"])
    hr = jnp.dot(h.reshape(-1, h.shape[-1]), a.astype(dt)) * jnp.asarray(scale, dt)
    logits = logits + jnp.dot(hr, b.astype(dt), preferred_element_type=jnp.float32)
  return logits.reshape(*h.shape[:-1], w.shape[-1])
