"""Select roles: which prompts a step trains on.

Each draws `candidates_per_step()` ids from the seeded data iterator and keeps `num_select` of
them (the budget's `num_prompts`), then updates its per-prompt state from the step's
`PromptStats` inside the train step.

  uniform  the next ids of the epoch permutation (no state)
  mopps    Thompson sampling from per-prompt Beta posteriors over a ratio x larger pool (§6)
  dps      HMM over solving states, top mu[partial] over a ratio x larger pool (§7)
  vas      floor(lam B) drawn by variance-aware score over the whole dataset, rest uniform (§8)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from adaptive_rl.allocation import dps, mopps, vas
from adaptive_rl.allocation.roles import PromptStats


def _ratio_check(name: str, ratio: int):
  if ratio < 1:
    raise ValueError(f"allocator.{name}.ratio (candidates per selected prompt) must be >= 1, "
                     f"got {ratio}")


def _p_obs(stats: PromptStats) -> jax.Array:
  return stats.num_correct / jnp.maximum(stats.num_samples, 1)


def _visited_ids(stats: PromptStats, num_prompts: int) -> jax.Array:
  """ids of prompts that got samples; others become padding (dropped by the kernels)."""
  return jnp.where(stats.num_samples > 0, stats.ids, num_prompts)


def _histogram(values: jax.Array, bins: int = 10) -> dict[str, jax.Array]:
  edges = jnp.linspace(0.0, 1.0, bins + 1)
  idx = jnp.clip(jnp.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
  counts = jnp.zeros((bins,), jnp.int32).at[idx].add(1)
  return {f"posterior_hist_{i}": counts[i] for i in range(bins)}


@dataclasses.dataclass(frozen=True)
class UniformSelect:
  """Each step takes the next ids of a seeded epoch permutation (no replacement)."""

  num_select: int

  def candidates_per_step(self) -> int:
    return self.num_select

  def init(self, num_prompts: int, key: jax.Array) -> Any:
    return ()

  def select(self, state, candidates: jax.Array, rng: jax.Array):
    return state, candidates[:self.num_select]

  def update(self, state, stats: PromptStats):
    return state

  def summary(self, state) -> dict[str, jax.Array]:
    return {}


@dataclasses.dataclass(frozen=True)
class MoPPSSelect:
  """MoPPS: Beta(a, b) per prompt; pick the candidates whose Thompson draw is nearest 0.5.

  Attributes:
    num_select: prompts kept per step (B).
    ratio: candidates per kept prompt (pool = ratio * B).
    lam: posterior decay (1.0 MATH, 0.5 others).
    mode: "topk" (smallest (gamma - 0.5)^2) or "band" (random among gamma in [0.3, 0.7]).
    a0, b0: Beta prior.
  """

  num_select: int
  ratio: int = 4
  lam: float = 1.0
  mode: str = "topk"
  a0: float = 1.0
  b0: float = 1.0

  def __post_init__(self):
    _ratio_check("mopps", self.ratio)
    mopps.MoPPSSettings(lam=self.lam, mode=self.mode)  # validates lam / mode

  def candidates_per_step(self) -> int:
    return self.ratio * self.num_select

  def init(self, num_prompts: int, key: jax.Array) -> mopps.MoPPSState:
    return mopps.mopps_init(num_prompts, self.a0, self.b0)

  def select(self, state, candidates, rng):
    return state, mopps.mopps_select(state, candidates, rng, self.num_select, mode=self.mode)

  def update(self, state, stats: PromptStats):
    ids = _visited_ids(stats, state.a.shape[0])
    return mopps.mopps_update(state, ids, _p_obs(stats), stats.num_samples, self.lam, self.a0,
                              self.b0)

  def summary(self, state) -> dict[str, jax.Array]:
    mean = mopps.mopps_mean(state)
    return {"posterior_mean": jnp.mean(mean), **_histogram(mean)}


@dataclasses.dataclass(frozen=True)
class DPSSelect:
  """DPS: per-prompt HMM over {all-wrong, partial, all-right}; top mu[partial] candidates.

  Attributes:
    num_select: prompts kept per step (B).
    ratio: candidates per kept prompt.
    lam: transition-count decay (0.7 MATH, 0.5 others).
    entropy_weight: weight of the belief entropy bonus in the score.
    a0: prior transition count (all entries).
  """

  num_select: int
  ratio: int = 4
  lam: float = 0.7
  entropy_weight: float = 0.0
  a0: float = 1.0

  def __post_init__(self):
    _ratio_check("dps", self.ratio)
    dps.DPSSettings(lam=self.lam, entropy_weight=self.entropy_weight)

  def candidates_per_step(self) -> int:
    return self.ratio * self.num_select

  def init(self, num_prompts: int, key: jax.Array) -> dps.DPSState:
    return dps.dps_init(num_prompts, self.a0)

  def select(self, state, candidates, rng):
    return state, dps.dps_select(state, candidates, self.num_select, self.entropy_weight,
                                 self.lam, self.a0)

  def update(self, state, stats: PromptStats):
    ids = _visited_ids(stats, state.last.shape[0])
    observed = dps.observe_state(stats.num_correct, stats.num_samples)
    return dps.dps_update(state, ids, observed, self.lam, self.a0)

  def summary(self, state) -> dict[str, jax.Array]:
    # Beliefs as stored, i.e. as of each prompt's last observation: bringing every prompt up to
    # date would make the step O(P) again (dps.py, lazy catch-up).
    known = state.known
    n = jnp.maximum(jnp.sum(known), 1)
    mu = jnp.where(known[:, None], state.mu, 0.0)
    return {"known_prompts": jnp.sum(known), "belief_partial": jnp.sum(mu[:, 1]) / n,
            "belief_all_right": jnp.sum(mu[:, 2]) / n, "belief_all_wrong": jnp.sum(mu[:, 0]) / n}


@dataclasses.dataclass(frozen=True)
class VASSelect:
  """VAS: floor(lam B) prompts drawn by VPS = alpha P(1-P) + beta diversity, the rest uniform.

  Scores come from the online estimates (last visit's pass rate, distinct-completion fraction
  as diversity), refreshed every step from the rewards already observed; unseen prompts use
  P = 0.5 and diversity 1 (maximal score, so they get explored).

  Attributes:
    num_select: prompts per step (B).
    lam: fraction drawn by score.
    alpha, beta: VPS weights.
    ema: weight of the old estimate when refreshing P.
  """

  num_select: int
  lam: float = 0.5
  alpha: float = 0.8
  beta: float = 0.2
  ema: float = 0.0
  needs_diversity = True

  def __post_init__(self):
    vas.VASSettings(lam=self.lam, alpha=self.alpha, beta=self.beta, ema=self.ema)

  def candidates_per_step(self) -> int:
    return self.num_select

  def init(self, num_prompts: int, key: jax.Array) -> vas.VASState:
    return vas.vas_init(num_prompts, 0.5, jnp.ones((num_prompts,), jnp.float32))

  def select(self, state, candidates, rng):
    scores = vas.vps_scores(state.p, state.diversity, self.alpha, self.beta)
    k = int(self.lam * self.num_select)
    by_score = vas.vas_select(scores, rng, self.num_select, self.lam)[:k]
    return state, jnp.concatenate([by_score, candidates[:self.num_select - k]])

  def update(self, state, stats: PromptStats):
    ids = _visited_ids(stats, state.p.shape[0])
    return vas.vas_update(state, ids, _p_obs(stats), self.ema, stats.diversity)

  def summary(self, state) -> dict[str, jax.Array]:
    scores = vas.vps_scores(state.p, state.diversity, self.alpha, self.beta)
    return {"vps_mean": jnp.mean(scores), "seen_prompts": jnp.sum(state.seen)}
