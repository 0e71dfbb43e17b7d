"""MoPPS: Bayesian prompt selection by Thompson sampling (ALGORITHMS.md section 6).

Each prompt i carries a Beta(a_i, b_i) posterior over its success rate (prior a0 = b0 = 1).
Select: from C = ratio * B candidates draw gamma_i ~ Beta(a_i, b_i) and take the B with the
smallest (gamma_i - 0.5)^2 (`topk`), or B at random among gamma_i in [0.3, 0.7] (`band`).
Update (selected prompts only), with s = mean binarised reward over k samples:

  a <- lam * a + (1 - lam) * a0 + s * k
  b <- lam * b + (1 - lam) * b0 + (1 - s) * k

(the formula as written; the official code's operator-precedence bug at k = 1 is not copied).

Padding convention: an id outside [0, num_prompts) marks a padding row; its updates are dropped.

The select role "mopps" (`MoPPSSelect`, end of file) runs these inside the train step.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from adaptive_rl.allocation.fields import (above, at_least, context, one_of, setting, validate,
                                          within)
from adaptive_rl.allocation.helpers import histogram, pass_rate, visited_ids
from adaptive_rl.allocation.registry import register_select
from adaptive_rl.allocation.roles import PromptStats, SelectRole

MODES = ("topk", "band")


class MoPPSState(NamedTuple):
  """Beta posteriors of all P prompts: a [P] float32, b [P] float32."""
  a: jax.Array
  b: jax.Array


def mopps_init(num_prompts: int, a0: float = 1.0, b0: float = 1.0) -> MoPPSState:
  """Every prompt at the prior Beta(a0, b0)."""
  return MoPPSState(jnp.full((num_prompts,), a0, jnp.float32),
                    jnp.full((num_prompts,), b0, jnp.float32))


def mopps_sample(state: MoPPSState, candidate_ids: jax.Array, rng: jax.Array) -> jax.Array:
  """gamma_i ~ Beta(a_i, b_i) for each candidate. [C] -> [C] float32."""
  a = state.a.at[candidate_ids].get(mode="clip")
  b = state.b.at[candidate_ids].get(mode="clip")
  return jax.random.beta(rng, a, b)


def mopps_select(state: MoPPSState, candidate_ids: jax.Array, rng: jax.Array, B: int,
                 mode: str = "topk", band: tuple[float, float] = (0.3, 0.7)) -> jax.Array:
  """Thompson-sampling selection of B prompts out of C candidates.

  gamma = `mopps_sample(state, candidate_ids, k1)` with (k1, k2) = split(rng).
  topk: the B smallest (gamma - 0.5)^2 (ties: lower candidate position).
  band: B uniformly at random (key k2) among gamma in [low, high]; when fewer than B are in
  the band, the rest are the out-of-band candidates nearest 0.5 (the paper leaves this case
  open; ours never returns fewer than B).

  Args:
    state: the posteriors.
    candidate_ids: [C] int32 distinct prompt ids, C >= B.
    rng: PRNG key.
    B: static number to select.
    mode: "topk" or "band".
    band: the gamma band of `band` mode.

  Returns:
    [B] int32 chosen prompt ids (a subset of candidate_ids).
  """
  if mode not in MODES:
    raise ValueError(f"mopps mode={mode!r} must be one of {MODES}")
  if B > candidate_ids.shape[0]:
    raise ValueError(f"mopps B={B} must be <= number of candidates {candidate_ids.shape[0]}")
  k_gamma, k_band = jax.random.split(rng)
  gamma = mopps_sample(state, candidate_ids, k_gamma)
  dist = (gamma - 0.5)**2
  if mode == "topk":
    key = dist
  else:
    inside = (gamma >= band[0]) & (gamma <= band[1])
    key = jnp.where(inside, jax.random.uniform(k_band, gamma.shape) - 1.0, dist)
  _, pos = jax.lax.top_k(-key, B)
  return candidate_ids[pos]


def mopps_update(state: MoPPSState, ids: jax.Array, s: jax.Array, k: jax.Array,
                 lam: float = 1.0, a0: float = 1.0, b0: float = 1.0) -> MoPPSState:
  """Posterior update of the selected prompts.

  a <- lam a + (1 - lam) a0 + s k;   b <- lam b + (1 - lam) b0 + (1 - s) k.

  Args:
    state: the posteriors.
    ids: [B] int32 distinct selected prompt ids (>= P: padding).
    s: [B] mean binarised reward of each prompt's k samples.
    k: [B] number of samples (0: only the decay applies).
    lam, a0, b0: decay and prior.

  Returns:
    The updated posteriors.
  """
  a = state.a.at[ids].get(mode="clip")
  b = state.b.at[ids].get(mode="clip")
  s = s.astype(jnp.float32)
  k = k.astype(jnp.float32)
  a_new = lam * a + (1.0 - lam) * a0 + s * k
  b_new = lam * b + (1.0 - lam) * b0 + (1.0 - s) * k
  return MoPPSState(state.a.at[ids].set(a_new, mode="drop"),
                    state.b.at[ids].set(b_new, mode="drop"))


def mopps_mean(state: MoPPSState) -> jax.Array:
  """Posterior mean a / (a + b) of every prompt, [P] (for the state-summary metric)."""
  return state.a / (state.a + state.b)


# --- the select role ------------------------------------------------------------------------

@register_select("mopps")
@dataclasses.dataclass(frozen=True)
class MoPPSSelect(SelectRole[MoPPSState]):
  """MoPPS: Beta(a, b) per prompt; pick the candidates whose Thompson draw is nearest 0.5.

  Attributes:
    num_select: prompts kept per step (B).
    ratio: candidates per kept prompt (pool = ratio * B; the paper uses 8-16).
    lam: posterior decay (1.0 MATH, 0.5 others).
    mode: "topk" (smallest (gamma - 0.5)^2) or "band" (random among gamma in [0.3, 0.7]).
    a0, b0: Beta prior.
  """

  num_select: int = context("num_prompts")
  ratio: int = setting(4, at_least(1))
  lam: float = setting(1.0, within(0.0, 1.0))
  mode: str = setting("topk", one_of(*MODES))
  a0: float = setting(1.0, above(0.0))
  b0: float = setting(1.0, above(0.0))

  def __post_init__(self):
    validate(self)

  def candidates_per_step(self) -> int:
    return self.ratio * self.num_select

  def init(self, num_prompts: int, key: jax.Array) -> MoPPSState:
    return mopps_init(num_prompts, self.a0, self.b0)

  def select(self, state, candidates, rng):
    return state, mopps_select(state, candidates, rng, self.num_select, mode=self.mode)

  def update(self, state, stats: PromptStats):
    ids = visited_ids(stats, state.a.shape[0])
    return mopps_update(state, ids, pass_rate(stats), stats.num_samples, self.lam, self.a0,
                        self.b0)

  def summary(self, state) -> dict[str, jax.Array]:
    mean = mopps_mean(state)
    return {"posterior_mean": jnp.mean(mean), **histogram(mean)}
