"""VAS: variance-aware prompt sampling (MMR1; ALGORITHMS.md section 8).

  VPS_i = alpha * P_i (1 - P_i) + beta * Diversity_i,  min-max normalised over the dataset,

with Diversity a *diversity* score (distinct-n, or 1 - self-BLEU), supplied by the caller.
Each batch: floor(lam * B) prompts drawn with replacement with probability proportional to
VPS, the other B - floor(lam * B) uniformly. Scores are refreshed every T steps by the caller
(`vps_scores`), ours from the success rates already observed (`VASState`, sized for the whole
dataset); a full re-roll is just writing fresh estimates.

Padding convention: an id outside [0, num_prompts) marks a padding row; its updates are dropped.

The select role "vas" (`VASSelect`, end of file) runs these inside the train step, with the
diversity of each visit computed there from completion hashes (`requires = {"diversity"}`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from adaptive_rl.allocation.fields import at_least, context, setting, validate, within
from adaptive_rl.allocation.helpers import pass_rate, visited_ids
from adaptive_rl.allocation.registry import register_select
from adaptive_rl.allocation.roles import PromptStats, SelectRole


class VASState(NamedTuple):
  """Per-prompt estimates for all P prompts.

  Attributes:
    p: [P] float32 success-rate estimate (p0 until seen).
    seen: [P] bool observed at least once.
    diversity: [P] float32 diversity score (0 until supplied).
  """
  p: jax.Array
  seen: jax.Array
  diversity: jax.Array


def vas_init(num_prompts: int, p0: float = 0.5, diversity: jax.Array | None = None) -> VASState:
  """p = p0 everywhere, nothing seen, diversity given or 0."""
  div = (jnp.zeros((num_prompts,), jnp.float32) if diversity is None else
         jnp.asarray(diversity, jnp.float32))
  return VASState(jnp.full((num_prompts,), p0, jnp.float32), jnp.zeros((num_prompts,), bool),
                  div)


def vas_update(state: VASState, ids: jax.Array, p_obs: jax.Array, ema: float = 0.0,
               diversity_obs: jax.Array | None = None) -> VASState:
  """Refreshes P (and optionally diversity) of the visited prompts.

  p <- p_obs on the first visit, else ema * p + (1 - ema) * p_obs (ema = 0: last visit).

  Args:
    state: the estimates.
    ids: [B] int32 distinct visited prompt ids (>= P: padding).
    p_obs: [B] mean (binarised) reward of this visit.
    ema: weight of the old estimate.
    diversity_obs: optional [B] new diversity scores (replace the old ones).

  Returns:
    The updated state.
  """
  old = state.p.at[ids].get(mode="clip")
  seen = state.seen.at[ids].get(mode="clip")
  new = jnp.where(seen, ema * old + (1.0 - ema) * p_obs, p_obs).astype(jnp.float32)
  div = state.diversity
  if diversity_obs is not None:
    div = div.at[ids].set(diversity_obs.astype(jnp.float32), mode="drop")
  return VASState(state.p.at[ids].set(new, mode="drop"),
                  state.seen.at[ids].set(True, mode="drop"), div)


def vps_scores(p: jax.Array, diversity: jax.Array, alpha: float = 0.8, beta: float = 0.2,
               valid: jax.Array | None = None) -> jax.Array:
  """VPS = alpha P (1 - P) + beta Diversity, min-max normalised to [0, 1] over `valid`.

  (v - min) / (max - min); when max == min every valid score is 1 (uniform sampling).
  Invalid entries score 0 and do not enter min / max.

  Args:
    p: [P] success rates.
    diversity: [P] diversity scores.
    alpha, beta: weights.
    valid: [P] bool (None: all).

  Returns:
    [P] float32 scores in [0, 1].
  """
  raw = (alpha * p * (1.0 - p) + beta * diversity).astype(jnp.float32)
  valid = jnp.ones(raw.shape, bool) if valid is None else valid
  lo = jnp.min(jnp.where(valid, raw, jnp.inf))
  hi = jnp.max(jnp.where(valid, raw, -jnp.inf))
  span = hi - lo
  norm = jnp.where(span > 0, (raw - lo) / jnp.where(span > 0, span, 1.0), 1.0)
  return jnp.where(valid, norm, 0.0)


def vas_select(scores: jax.Array, rng: jax.Array, B: int, lam: float = 0.5) -> jax.Array:
  """Draws a batch: floor(lam B) ids proportional to `scores` (with replacement), rest uniform.

  The proportional part inverts the CDF (cumsum + searchsorted: O(P + B log P), no [B, P]
  intermediate); all-zero scores fall back to uniform. The uniform part is drawn with
  replacement too (O(B); duplicates have chance about B^2 / 2P at dataset size P).

  Args:
    scores: [P] non-negative scores (`vps_scores`).
    rng: PRNG key.
    B: static batch size.
    lam: static fraction drawn by score.

  Returns:
    [B] int32 prompt ids: the first floor(lam B) by score, then the uniform ones.
  """
  num = scores.shape[0]
  k = int(math.floor(lam * B))
  k_prop, k_unif = jax.random.split(rng)
  cdf = jnp.cumsum(scores.astype(jnp.float32))
  total = cdf[-1]
  u = jax.random.uniform(k_prop, (k,))
  by_score = jnp.searchsorted(cdf, u * total, side="right")
  uniform_fallback = jnp.floor(u * num).astype(jnp.int32)
  by_score = jnp.where(total > 0, jnp.minimum(by_score, num - 1), uniform_fallback)
  rest = jax.random.randint(k_unif, (B - k,), 0, num)
  return jnp.concatenate([by_score.astype(jnp.int32), rest.astype(jnp.int32)])


# --- the select role ------------------------------------------------------------------------

_P_UNSEEN = 0.5  # success-rate estimate of a never-seen prompt: maximally uncertain


@register_select("vas")
@dataclasses.dataclass(frozen=True)
class VASSelect(SelectRole[VASState]):
  """VAS: floor(lam B) prompts drawn by VPS = alpha P(1-P) + beta diversity, the rest uniform.

  Scores come from the online estimates (last visit's pass rate, distinct-completion fraction
  as diversity), refreshed every step from the rewards already observed; unseen prompts use
  P = 0.5 and diversity 1 (maximal score, so they get explored).

  Attributes:
    num_select: prompts per step (B).
    lam: fraction drawn by score.
    alpha, beta: VPS weights.
    ema: weight of the old estimate when refreshing P (0 = last visit).
  """

  requires = frozenset({"diversity"})
  num_select: int = context("num_prompts")
  lam: float = setting(0.5, within(0.0, 1.0))
  alpha: float = setting(0.8, at_least(0.0))
  beta: float = setting(0.2, at_least(0.0))
  ema: float = setting(0.0, within(0.0, 1.0, open_high=True))

  def __post_init__(self):
    validate(self)

  def init(self, num_prompts: int, key: jax.Array) -> VASState:
    return vas_init(num_prompts, _P_UNSEEN, jnp.ones((num_prompts,), jnp.float32))

  def select(self, state, candidates, rng):
    scores = vps_scores(state.p, state.diversity, self.alpha, self.beta)
    k = int(self.lam * self.num_select)
    by_score = vas_select(scores, rng, self.num_select, self.lam)[:k]
    return state, jnp.concatenate([by_score, candidates[:self.num_select - k]])

  def update(self, state, stats: PromptStats):
    ids = visited_ids(stats, state.p.shape[0])
    return vas_update(state, ids, pass_rate(stats), self.ema, stats.diversity)

  def summary(self, state) -> dict[str, jax.Array]:
    scores = vps_scores(state.p, state.diversity, self.alpha, self.beta)
    return {"vps_mean": jnp.mean(scores), "seen_prompts": jnp.sum(state.seen)}
