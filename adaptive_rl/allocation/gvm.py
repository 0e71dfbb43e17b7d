"""GVM: gradient-variance-minimising rollout allocation (ALGORITHMS.md section 4).

Given per-prompt success rates p_i and gradient-norm proxies G_i (mean over correct samples of
|| d/d(embedding) (-sum_t log pi(y_t)) ||_2, computed by the trainer), the budget N is split as

  w_i = G_i / sqrt(p_i + alpha / p_i^(beta - 1)),    n_i = N * w_i / sum_l w_l

with w_i = 0 when p_i == 0, G_i == 0 or p_i > filter_threshold, then rounded by floor plus
largest remainder so that sum_i n_i == N exactly.

Ours: the estimates are refreshed online from each step's rewards (`GVMState`, sized for the
whole dataset) instead of a separate offline estimation stage; the estimation samples are
training samples.

Padding convention: an id outside [0, num_prompts) marks a padding row; its updates are dropped.

The budget role "gvm" (`GVMBudget`, end of file) runs these, with G_i from the per-row
embedding-gradient norms the train step computes for it (`requires = {"grad_norms"}`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from adaptive_rl.allocation.fields import (above, at_least, context, setting, validate,
                                          within)
from adaptive_rl.allocation.helpers import OneRoundBudget, pass_rate, visited_ids
from adaptive_rl.allocation.registry import register_budget
from adaptive_rl.allocation.roles import PoolView, PromptStats


def gvm_weights(p: jax.Array, G: jax.Array, alpha: float = 1e-3, beta: float = 2.0,
                filter_threshold: float = 1.0) -> jax.Array:
  """w_i = G_i / sqrt(p_i + alpha / p_i^(beta-1)); 0 if p_i == 0, G_i == 0 or p_i > threshold.

  Args:
    p: [B] success rates.
    G: [B] gradient-norm proxies (>= 0).
    alpha, beta: the formula's constants.
    filter_threshold: upper bound on p (1.0 = off).

  Returns:
    [B] weights, same dtype as p.
  """
  ok = (p > 0) & (G > 0) & (p <= filter_threshold)
  sp = jnp.where(ok, p, 1.0)
  w = G / jnp.sqrt(sp + alpha / sp**(beta - 1.0))
  return jnp.where(ok, w, 0.0).astype(p.dtype)


def largest_remainder(weights: jax.Array, total: jax.Array | int) -> jax.Array:
  """Integer apportionment: floor(total * w / sum w), remainder by largest fractional part.

  Ties in the fractional part go to the lower index. Zero-weight entries receive nothing
  (unless float rounding leaves more remainder than positive entries, never in exact math).
  Rounding noise that makes the floors overshoot `total` is taken back from the smallest
  fractional parts, so sum == total always holds when some weight is positive.

  Args:
    weights: [B] non-negative weights with a positive sum.
    total: integer total.

  Returns:
    [B] int32 with sum == total.
  """
  total = jnp.asarray(total, jnp.int32)
  w = weights
  share = total.astype(w.dtype) * w / jnp.maximum(jnp.sum(w), jnp.finfo(w.dtype).tiny)
  fl = jnp.minimum(jnp.floor(share), total.astype(w.dtype))
  frac = share - fl
  fl = fl.astype(jnp.int32)
  rem = total - jnp.sum(fl)
  b = w.shape[0]
  # rem > 0: +1 by descending frac (zero weights last); rem < 0: -1 by ascending frac.
  up_key = jnp.where(w > 0, frac, -1.0)
  up_rank = jnp.zeros((b,), jnp.int32).at[jnp.argsort(-up_key, stable=True)].set(
      jnp.arange(b, dtype=jnp.int32))
  down_key = jnp.where(fl >= 1, frac, jnp.inf)
  down_rank = jnp.zeros((b,), jnp.int32).at[jnp.argsort(down_key, stable=True)].set(
      jnp.arange(b, dtype=jnp.int32))
  adj = jnp.where(rem >= 0, (up_rank < rem).astype(jnp.int32),
                  -(down_rank < -rem).astype(jnp.int32))
  return fl + adj


def gvm_allocate(p: jax.Array, G: jax.Array, total: int | jax.Array, alpha: float = 1e-3,
                 beta: float = 2.0, filter_threshold: float = 1.0,
                 filter_insufficient: float = 0.0, eligible: jax.Array | None = None,
                 known: jax.Array | None = None, n_unknown: int = 0) -> jax.Array:
  """GVM integer allocation of `total` rollouts, sum == total exactly.

  Unknown eligible prompts first get n_unknown each (their estimation draw); the rest
  N' = total - n_unknown * #unknown is split over the known eligible prompts by
  `gvm_weights`, optionally zeroing prompts with p_i * (N' w_i / sum w) < filter_insufficient
  (one pass, then re-normalised), then `largest_remainder`.
  When every weight is 0 the rest falls back to uniform over all eligible prompts (so the
  budget is never lost; documented deviation, the paper does not define this case).

  Args:
    p: [B] success rates.
    G: [B] gradient-norm proxies.
    total: total budget, a Python int (checked >= B * n_unknown) or a traced int32 scalar.
    alpha, beta, filter_threshold, filter_insufficient: see `GVMBudget`.
    eligible: [B] bool real prompts (None: all); ineligible get 0.
    known: [B] bool prompts with an estimate (None: all).
    n_unknown: static rollouts per unknown prompt.

  Returns:
    [B] int32 rollouts per prompt.
  """
  b = p.shape[0]
  if isinstance(total, int) and total < b * n_unknown:
    raise ValueError(f"gvm total={total} must be >= batch * n_unknown = {b} * {n_unknown}")
  eligible = jnp.ones((b,), bool) if eligible is None else eligible
  known = jnp.ones((b,), bool) if known is None else known
  unknown = eligible & ~known
  fixed = jnp.where(unknown, n_unknown, 0).astype(jnp.int32)
  rest = jnp.int32(total) - jnp.sum(fixed)
  w = jnp.where(eligible & known, gvm_weights(p, G, alpha, beta, filter_threshold), 0.0)
  if filter_insufficient > 0:
    ideal = rest.astype(w.dtype) * w / jnp.maximum(jnp.sum(w), jnp.finfo(w.dtype).tiny)
    w = jnp.where(p * ideal < filter_insufficient, 0.0, w)
  w = jnp.where(jnp.sum(w) > 0, w, eligible.astype(w.dtype))
  return fixed + largest_remainder(w, rest)


# ----------------------------------------------------------------------------- online estimates


class GVMState(NamedTuple):
  """Online per-prompt estimates for the whole dataset (P prompts).

  Attributes:
    p: [P] float32 success-rate estimate.
    G: [P] float32 gradient-norm-proxy estimate (0 until a correct sample was seen).
    seen: [P] bool p has been observed.
    g_seen: [P] bool G has been observed.
  """
  p: jax.Array
  G: jax.Array
  seen: jax.Array
  g_seen: jax.Array


def gvm_init(num_prompts: int) -> GVMState:
  """No estimates yet."""
  z = jnp.zeros((num_prompts,), jnp.float32)
  f = jnp.zeros((num_prompts,), bool)
  return GVMState(z, z, f, f)


def gvm_update(state: GVMState, ids: jax.Array, p_obs: jax.Array, G_obs: jax.Array,
               G_valid: jax.Array, ema: float = 0.0) -> GVMState:
  """Refreshes the estimates of the prompts in `ids` from this step's observations.

  x <- x_obs on the first observation, else x <- ema * x + (1 - ema) * x_obs
  (ema = 0: last visit, the paper's per-stage re-estimation; ours by default). G is only
  refreshed where G_valid (the visit had at least one correct sample).

  Args:
    state: the estimates.
    ids: [B] int32 distinct prompt ids (>= P: padding).
    p_obs: [B] fraction correct this visit.
    G_obs: [B] mean gradient-norm proxy over this visit's correct samples.
    G_valid: [B] bool G_obs is defined.
    ema: weight of the old estimate, in [0, 1).

  Returns:
    The updated state.
  """
  p_old = state.p.at[ids].get(mode="clip")
  g_old = state.G.at[ids].get(mode="clip")
  seen = state.seen.at[ids].get(mode="clip")
  g_seen = state.g_seen.at[ids].get(mode="clip")
  p_new = jnp.where(seen, ema * p_old + (1 - ema) * p_obs, p_obs)
  g_new = jnp.where(g_seen, ema * g_old + (1 - ema) * G_obs, G_obs)
  g_tgt = jnp.where(G_valid, ids, state.G.shape[0])
  return GVMState(
      p=state.p.at[ids].set(p_new.astype(jnp.float32), mode="drop"),
      G=state.G.at[g_tgt].set(g_new.astype(jnp.float32), mode="drop"),
      seen=state.seen.at[ids].set(True, mode="drop"),
      g_seen=state.g_seen.at[g_tgt].set(True, mode="drop"),
  )


def gvm_estimate(state: GVMState, ids: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(p [B], G [B], known [B]) of the prompts in `ids`; known = p observed at least once."""
  return (state.p.at[ids].get(mode="clip"), state.G.at[ids].get(mode="clip"),
          state.seen.at[ids].get(mode="clip"))


# --- the budget role ------------------------------------------------------------------------

@register_budget("gvm")
@dataclasses.dataclass(frozen=True)
class GVMBudget(OneRoundBudget[GVMState]):
  """GVM: budgets proportional to the gradient-variance-minimising weights, refreshed online.

  The estimates (p_i, G_i) come from each visit's rollouts (reused, not discarded); G_i is the
  mean over correct samples of the norm of d(-sum_t log pi)/d(token embeddings), computed in
  the train step. Prompts never seen get `n_unknown` rollouts (their estimation draw).

  Attributes:
    batch_prompts: B; the budget is N = B * group_size.
    group_size: nominal n.
    alpha: > 0, the formula's constant (1e-3).
    beta: >= 1 (2).
    filter_threshold: zero weight when p > this, in (0, 1]; 1.0 = off.
    filter_insufficient: zero weight when p_i * n_i < this (one refinement pass); 0 = off.
    n_unknown: rollouts of a never-seen prompt, at most n (0 = n).
    ema: weight of old estimates when refreshing, in [0, 1) (0 = last visit).
    adv_clip: the group role's advantage clip (the paper clips; 0 = the run's rl.adv_clip).
  """

  requires = frozenset({"grad_norms"})
  batch_prompts: int = context("batch_prompts")
  group_size: int = context("group_size")
  alpha: float = setting(1e-3, above(0.0))
  beta: float = setting(2.0, at_least(1.0))
  filter_threshold: float = setting(1.0, within(0.0, 1.0, open_low=True))
  filter_insufficient: float = setting(0.0, at_least(0.0))
  n_unknown: int = setting(0, at_least(0))
  ema: float = setting(0.0, within(0.0, 1.0, open_high=True))
  adv_clip: float = setting(5.0, at_least(0.0))

  def __post_init__(self):
    validate(self)
    if self.n_unknown > self.group_size:
      raise ValueError(f"allocator.gvm.n_unknown must be <= the group size n = {self.group_size}"
                       f" (unknown prompts' draws come out of the B n budget), got "
                       f"{self.n_unknown}")

  @property
  def unknown_budget(self) -> int:
    return self.n_unknown or self.group_size

  def init(self, num_prompts: int) -> GVMState:
    return gvm_init(num_prompts)

  def start(self, state, ids):
    p, g, known = gvm_estimate(state, ids)
    return gvm_allocate(p, g, self.num_slots, self.alpha, self.beta, self.filter_threshold,
                        self.filter_insufficient, known=known, n_unknown=self.unknown_budget)

  def update(self, state, stats: PromptStats, pool: PoolView):
    ids = visited_ids(stats, state.p.shape[0])
    return gvm_update(state, ids, pass_rate(stats), stats.grad_norm, stats.num_correct > 0,
                      self.ema)

  def summary(self, state) -> dict[str, jax.Array]:
    n = jnp.maximum(jnp.sum(state.seen), 1)
    return {"seen_prompts": jnp.sum(state.seen),
            "p_mean": jnp.sum(jnp.where(state.seen, state.p, 0.0)) / n}
