"""Sampling strategies: tiny frozen dataclasses with `get_next_tokens(logits, rng)`.

Each returns the chosen token ids and their log-probabilities under the distribution actually
sampled from (after temperature, top-k and top-p), which is what importance ratios against the
sampler need. The temperature-1 policy log-probabilities are computed by the sampler itself.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

_NEG_INF = -1e30


@dataclasses.dataclass(frozen=True)
class Greedy:
  """Argmax decoding; the chosen token has log-probability 0 under this (degenerate) policy."""

  def get_next_tokens(self, logits_BV: jax.Array, rng: jax.Array):
    del rng
    tokens = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return tokens, jnp.zeros(tokens.shape, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Sample:
  """Temperature sampling with optional top-k and nucleus (top-p) truncation.

  Attributes:
    temperature: > 0; logits are divided by it.
    top_k: keep the k most likely tokens (0 = off).
    top_p: keep the smallest set of tokens whose probability reaches top_p (1.0 = off).
  """

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not self.temperature > 0:
      raise ValueError(f"Sample.temperature must be > 0 (use Greedy for 0), got "
                       f"{self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"Sample.top_k must be >= 0 (0 = off), got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"Sample.top_p must be in (0, 1], got {self.top_p}")

  def truncated_logits(self, logits_BV: jax.Array) -> jax.Array:
    """Logits of the sampling distribution (masked entries at -inf)."""
    logits = logits_BV.astype(jnp.float32) / self.temperature
    if self.top_k:
      kth = jax.lax.top_k(logits, min(self.top_k, logits.shape[-1]))[0][..., -1:]
      logits = jnp.where(logits < kth, _NEG_INF, logits)
    if self.top_p < 1.0:
      order = jnp.argsort(-logits, axis=-1)
      sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
      probs = jax.nn.softmax(sorted_logits, axis=-1)
      # Keep a token if the mass strictly before it is below top_p (the top token always stays).
      keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < self.top_p
      keep = jnp.zeros_like(keep_sorted).at[
          jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
      logits = jnp.where(keep, logits, _NEG_INF)
    return logits

  def get_next_tokens(self, logits_BV: jax.Array, rng: jax.Array):
    logits = self.truncated_logits(logits_BV)
    tokens = jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


def make_strategy(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  greedy: bool = False):
  """`Greedy()` when greedy or temperature == 0, else `Sample(...)`."""
  if greedy or temperature == 0:
    return Greedy()
  return Sample(temperature=temperature, top_k=top_k, top_p=top_p)
