"""`ModelConfig`: the static description of a Llama / Qwen2 / Qwen3 decoder."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_REMAT = ("none", "full", "dots", "dots_no_batch")
_ATTENTION = ("xla", "dot_product_attention")
_ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture and numerics of a decoder-only LM.

  Attributes:
    vocab_size: rows of the embedding (may exceed the tokenizer's vocabulary).
    hidden_size: model width D.
    intermediate_size: SwiGLU hidden width F.
    num_layers: decoder blocks L (run with `lax.scan` over stacked params).
    num_heads: query heads H.
    num_kv_heads: key/value heads (GQA); must divide num_heads.
    head_dim: per-head width; defaults to hidden_size // num_heads (Qwen3 sets it explicitly).
    rope_theta: RoPE base frequency.
    rope_type: "default", "linear" (positions divided by rope_factor) or "llama3" (frequency
      dependent scaling of Llama-3.1, with the low/high frequency factors below).
    rms_norm_eps: RMSNorm epsilon.
    tie_embeddings: output projection = embedding transpose.
    qkv_bias: bias on the q/k/v projections (Qwen2).
    qk_norm: per-head RMSNorm of q and k before RoPE (Qwen3).
    max_seq_len: longest sequence the positions support (sizes caches and presets).
    dtype: compute / activation dtype name.
    param_dtype: parameter storage dtype name.
    remat: rematerialisation policy of each scanned layer: none | full | dots | dots_no_batch.
    scan_layers: run the L blocks with `lax.scan` (compile time independent of depth; the
      default) or as an unrolled Python loop (faster steps on CPU and for shallow models: no
      stacked-residual bookkeeping; compile time grows with L).
    attention: "xla" (einsums; the default) or "dot_product_attention": the uncached forward /
      backward (training, log-probs) through `jax.nn.dot_product_attention`, which uses cuDNN
      flash attention on GPU where eligible and XLA elsewhere. Decoding keeps the einsums.
    model_type: HF `model_type` written by `to_hf` (llama, qwen2, qwen3).
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int | None = None
  rope_theta: float = 10000.0
  rope_type: str = "default"
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_positions: int = 8192
  rms_norm_eps: float = 1e-6
  tie_embeddings: bool = False
  qkv_bias: bool = False
  qk_norm: bool = False
  max_seq_len: int = 2048
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  scan_layers: bool = True
  attention: str = "xla"
  model_type: str = "llama"
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "max_seq_len"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"ModelConfig.num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}")
    if self.head_dim is None:
      if self.hidden_size % self.num_heads:
        raise ValueError(
            f"ModelConfig.hidden_size={self.hidden_size} is not divisible by num_heads="
            f"{self.num_heads}; set head_dim explicitly")
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
    if self.head_dim <= 0 or self.head_dim % 2:
      raise ValueError(f"ModelConfig.head_dim must be a positive even int, got {self.head_dim}")
    if self.dtype not in _DTYPES or self.param_dtype not in _DTYPES:
      raise ValueError(
          f"ModelConfig.dtype/param_dtype must be one of {sorted(_DTYPES)}, got "
          f"{self.dtype!r}/{self.param_dtype!r}")
    if self.attention not in _ATTENTION:
      raise ValueError(f"ModelConfig.attention must be one of {_ATTENTION}, got "
                       f"{self.attention!r}")
    if self.remat not in _REMAT:
      raise ValueError(f"ModelConfig.remat must be one of {_REMAT}, got {self.remat!r}")
    if self.rope_type not in _ROPE_TYPES:
      raise ValueError(f"ModelConfig.rope_type must be one of {_ROPE_TYPES}, got "
                       f"{self.rope_type!r}")
    if self.rope_theta <= 0 or self.rope_factor <= 0:
      raise ValueError("ModelConfig.rope_theta and rope_factor must be > 0")
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

  @property
  def compute_dtype(self) -> Any:
    return _DTYPES[self.dtype]

  @property
  def weight_dtype(self) -> Any:
    return _DTYPES[self.param_dtype]

  @property
  def q_size(self) -> int:
    return self.num_heads * self.head_dim

  @property
  def kv_size(self) -> int:
    return self.num_kv_heads * self.head_dim

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    """Parameter count (embedding counted once when tied)."""
    d, f, l = self.hidden_size, self.intermediate_size, self.num_layers
    attn = d * (self.q_size + 2 * self.kv_size) + self.q_size * d
    if self.qkv_bias:
      attn += self.q_size + 2 * self.kv_size
    if self.qk_norm:
      attn += 2 * self.head_dim
    per_layer = attn + 3 * d * f + 2 * d
    embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return l * per_layer + embed + d
