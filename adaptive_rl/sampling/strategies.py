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
    logp = jax.nn.log_softmax(logits, axis=-1)
    tokens = inverse_cdf_sample(rng, logp)
    return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


def _cumsum_rows(x_BV: jax.Array, block: int = 128) -> jax.Array:
  """Inclusive cumulative sum along the last axis, as block matmuls.

  Within blocks of `block` entries the prefix sums are one matmul with an upper-triangular ones
  matrix, then the block totals are prefix-summed: ~4x faster than `jnp.cumsum` (a
  reduce-window) at [64, 8192] on XLA:CPU. HIGHEST precision keeps it float32 exact on TPU.
  """
  b, v = x_BV.shape
  pad = (-v) % block
  xb = jnp.pad(x_BV, ((0, 0), (0, pad))).reshape(b, -1, block)
  tri = jnp.triu(jnp.ones((block, block), x_BV.dtype))
  inner = jnp.einsum("bnk,kj->bnj", xb, tri, precision=jax.lax.Precision.HIGHEST)
  offsets = jnp.cumsum(inner[..., -1], axis=-1) - inner[..., -1]
  return (inner + offsets[..., None]).reshape(b, -1)[:, :v]


def inverse_cdf_sample(rng: jax.Array, logp_BV: jax.Array, block: int = 128) -> jax.Array:
  """One categorical draw per row from normalised log-probs, by inverting the CDF.

  Same distribution as `jax.random.categorical`, but it draws ONE uniform per row instead of
  Gumbel noise for all B x V entries (threefry bits + two logs per entry dominate a decode step
  at large vocabularies: 4.9x faster at [64, 8192], measured). The search has two levels: the
  CDF of the V / `block` block totals picks the block holding u, then the CDF within that one
  block picks the entry, so beyond exp(logp) the work is O(V / block + block) per row, not the
  O(V block) of a full blocked prefix sum (15x faster again at [64, 8192], measured). The entry
  is the number of CDF values <= u, clipped to an entry of non-zero probability (float
  rounding can leave u a hair outside the chosen block's or the total's range).
  """
  b, v = logp_BV.shape
  probs = jnp.exp(logp_BV)
  pad = (-v) % block
  blocks = jnp.pad(probs, ((0, 0), (0, pad))).reshape(b, -1, block)  # [B, nb, block]
  totals = jnp.sum(blocks, axis=-1)
  block_cdf = _cumsum_rows(totals)
  u = jax.random.uniform(rng, (b, 1), jnp.float32) * block_cdf[:, -1:]
  nb = totals.shape[-1]
  j = jnp.minimum(jnp.sum(block_cdf <= u, axis=-1), nb - 1)  # the block holding u
  pick = lambda x: jnp.take_along_axis(x, j[:, None], axis=1)[:, 0]
  before = pick(block_cdf) - pick(totals)  # mass of the blocks before block j
  inner = _cumsum_rows(jnp.take_along_axis(blocks, j[:, None, None], axis=1)[:, 0], block)
  within = jnp.minimum(jnp.sum(inner + before[:, None] <= u, axis=-1), block - 1)
  tokens = jnp.minimum(j * block + within, v - 1)
  # The chosen entry has cdf > u >= its predecessor's, so its probability is > 0 unless float
  # rounding put u at a block's or the total's very top: then take the last entry of non-zero
  # probability at or before it (computed only when some row needs it).
  chosen = jnp.take_along_axis(probs, tokens[:, None], axis=-1)[:, 0]
  bad = chosen <= 0

  def fix(tokens):
    idx = jnp.arange(v)[None, :]
    ok = (probs > 0) & (idx <= tokens[:, None])
    last = jnp.max(jnp.where(ok, idx, -1), axis=-1)
    first = jnp.argmax(probs > 0, axis=-1)  # none at or before: the first non-zero one
    return jnp.where(bad, jnp.where(last >= 0, last, first), tokens)

  return jax.lax.cond(jnp.any(bad), fix, lambda t: t, tokens).astype(jnp.int32)


def make_strategy(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  greedy: bool = False):
  """`Greedy()` when greedy or temperature == 0, else `Sample(...)`."""
  if greedy or temperature == 0:
    return Greedy()
  return Sample(temperature=temperature, top_k=top_k, top_p=top_p)
