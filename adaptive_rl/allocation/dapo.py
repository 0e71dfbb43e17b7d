"""DAPO dynamic sampling: the group filter and its fixed-size accumulator (section 2).

A group is kept iff its binarised rewards are not all equal, 0 < #correct < n. Generation
batches are drawn until B groups are kept, then truncated to B; `max_gen_batches` caps the loop
(0 = unlimited) and when the cap is hit the step trains on what was kept (never an error).

The host loop is:

  buf = dapo_buffer_init(template_rows, B)
  while dapo_should_continue(buf, max_gen_batches):
    rows, binarised = generate()                       # one generation batch of G groups
    buf = dapo_accumulate(buf, rows, dapo_keep(binarised))
  train on buf.data[:B] where dapo_buffer_valid(buf); log dapo_kept_fraction(buf)

Every function is pure and jittable; the buffer payload is any pytree of [B, ...] arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class DapoSettings:
  """Static settings of DAPO dynamic sampling.

  Attributes:
    max_gen_batches: cap on generation batches per step, >= 0 (0 = unlimited).
    tau: binarisation threshold, correct iff r > tau, in [0, 1).
  """
  max_gen_batches: int = 0
  tau: float = 0.5

  def __post_init__(self):
    if self.max_gen_batches < 0:
      raise ValueError(
          f"DapoSettings.max_gen_batches={self.max_gen_batches} must be >= 0 (0 = unlimited)")
    if not 0.0 <= self.tau < 1.0:
      raise ValueError(f"DapoSettings.tau={self.tau} must be in [0, 1)")


def dapo_keep(binarised: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """keep_g = 0 < sum_j c_gj < n_g for a [G, n] group matrix.

  Args:
    binarised: [G, n] 0/1 (or bool) correctness.
    valid: optional [G, n] bool (ragged groups; n_g = number of valid entries).

  Returns:
    [G] bool.
  """
  c = binarised.astype(jnp.int32)
  if valid is None:
    size = jnp.full(c.shape[:1], c.shape[1], jnp.int32)
  else:
    c = jnp.where(valid, c, 0)
    size = jnp.sum(valid.astype(jnp.int32), axis=1)
  correct = jnp.sum(c, axis=1)
  return (correct > 0) & (correct < size)


def dapo_keep_flat(binarised: jax.Array, group_ids: jax.Array, num_groups: int,
                   valid: jax.Array | None = None) -> jax.Array:
  """`dapo_keep` for a flat batch with group ids. [T] -> [num_groups] bool (segment sums)."""
  seg = group_ids if valid is None else jnp.where(valid, group_ids, num_groups)
  correct = jax.ops.segment_sum(binarised.astype(jnp.int32), seg, num_groups + 1)[:num_groups]
  size = jax.ops.segment_sum(jnp.ones_like(seg), seg, num_groups + 1)[:num_groups]
  return (correct > 0) & (correct < size)


class DapoBuffer(NamedTuple):
  """Fixed-size buffer of kept groups.

  Attributes:
    data: pytree of [B, ...] arrays, rows 0..min(filled, B)-1 hold kept groups.
    filled: int32 scalar, groups kept so far (may exceed B; the excess was truncated).
    batches: int32 scalar, generation batches consumed.
    seen: int32 scalar, groups generated.
  """
  data: Any
  filled: jax.Array
  batches: jax.Array
  seen: jax.Array


def dapo_buffer_init(template: Any) -> DapoBuffer:
  """An empty buffer shaped like `template` (pytree of [B, ...] arrays; values ignored)."""
  data = jax.tree.map(jnp.zeros_like, template)
  z = jnp.zeros((), jnp.int32)
  return DapoBuffer(data, z, z, z)


def _capacity(buf: DapoBuffer) -> int:
  return jax.tree.leaves(buf.data)[0].shape[0]


def dapo_accumulate(buf: DapoBuffer, rows: Any, keep: jax.Array) -> DapoBuffer:
  """Appends the kept rows of one generation batch, in batch order, truncating at B.

  Row g goes to slot filled + (number of kept rows before g); slots >= B are dropped.

  Args:
    buf: the buffer.
    rows: pytree of [G, ...] arrays matching `buf.data` after the leading axis.
    keep: [G] bool from `dapo_keep`.

  Returns:
    The buffer with filled += sum(keep), batches += 1, seen += G.
  """
  cap = _capacity(buf)
  g = keep.shape[0]
  k = keep.astype(jnp.int32)
  dest = buf.filled + jnp.cumsum(k) - 1
  dest = jnp.where(keep & (dest < cap), dest, cap)
  data = jax.tree.map(lambda d, r: d.at[dest].set(r.astype(d.dtype), mode="drop"), buf.data,
                      rows)
  return DapoBuffer(data, buf.filled + jnp.sum(k), buf.batches + 1, buf.seen + g)


def dapo_buffer_valid(buf: DapoBuffer) -> jax.Array:
  """[B] bool rows holding a kept group."""
  return jnp.arange(_capacity(buf)) < buf.filled


def dapo_buffer_full(buf: DapoBuffer) -> jax.Array:
  """Whether B groups were kept."""
  return buf.filled >= _capacity(buf)


def dapo_should_continue(buf: DapoBuffer, max_gen_batches: int) -> jax.Array:
  """not full and (max_gen_batches == 0 or batches < max_gen_batches); max_gen_batches >= 0."""
  if max_gen_batches < 0:
    raise ValueError(f"dapo max_gen_batches={max_gen_batches} must be >= 0 (0 = unlimited)")
  more = jnp.bool_(True) if max_gen_batches == 0 else buf.batches < max_gen_batches
  return ~dapo_buffer_full(buf) & more


def dapo_kept_fraction(buf: DapoBuffer) -> jax.Array:
  """Groups kept by the filter / groups generated (0 before any batch)."""
  return buf.filled / jnp.maximum(buf.seen, 1)
