"""DPS: dynamics-predictive prompt sampling with an HMM over solving states (section 7).

Each prompt's solving state z in {0: all-wrong, 1: partial, 2: all-right} is observed exactly
when the prompt is rolled out. Per prompt: Dirichlet transition counts A (3x3,
A[i, j] = count of transitions j -> i), Phi(A) = A / colsum(A) (Phi[i, j] = P(i | j)),
belief mu (the prior over this step's state) and mu_prev.

Select: the top-B candidates by mu[partial] (+ w * entropy(mu)).
Update, selected prompt with observed state o (e_o its one-hot):

  xi = normalise(outer(e_o, mu_prev) * Phi(A))     (xi[i, j] ∝ e_o[i] mu_prev[j] Phi[i, j])
  A = lam A + (1 - lam) A0 + xi;   mu = Phi(A) @ e_o;   mu_prev = e_o

every other known prompt (selected at least once before):

  A = lam A + (1 - lam) A0;   mu = Phi(A) @ mu;   mu_prev = mu   (the new mu)

The statements are applied in order, as written in the spec, so an unselected prompt's mu_prev
is the *predicted* belief. (In strict HMM filtering it would be the pre-prediction belief;
flagged to the spec owner, the spec's order is implemented.) The decay touches all P prompts:
O(P * 9) per step, no [P, P] intermediates.

Padding convention: an id outside [0, num_prompts) marks a padding row; its updates are dropped.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

NUM_STATES = 3
ALL_WRONG, PARTIAL, ALL_RIGHT = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class DPSSettings:
  """Static settings of DPS.

  Attributes:
    lam: count decay, in [0, 1] (0.7 MATH, 0.5 others).
    a0: prior pseudo-count of every transition, > 0 (A0 = a0 * ones(3, 3)).
    entropy_weight: weight of entropy(mu) in the selection score, >= 0.
  """
  lam: float = 0.7
  a0: float = 1.0
  entropy_weight: float = 0.0

  def __post_init__(self):
    if not 0.0 <= self.lam <= 1.0:
      raise ValueError(f"DPSSettings.lam={self.lam} must be in [0, 1]")
    if not self.a0 > 0:
      raise ValueError(f"DPSSettings.a0={self.a0} must be > 0")
    if self.entropy_weight < 0:
      raise ValueError(f"DPSSettings.entropy_weight={self.entropy_weight} must be >= 0")


class DPSState(NamedTuple):
  """HMM state of all P prompts.

  Attributes:
    A: [P, 3, 3] float32 transition counts, A[p, i, j] for j -> i.
    mu: [P, 3] float32 belief over this step's state.
    mu_prev: [P, 3] float32 belief over the previous state.
    known: [P] bool selected at least once.
  """
  A: jax.Array
  mu: jax.Array
  mu_prev: jax.Array
  known: jax.Array


def _a0_matrix(A0) -> jax.Array:
  return jnp.broadcast_to(jnp.asarray(A0, jnp.float32), (NUM_STATES, NUM_STATES))


def dps_init(num_prompts: int, A0=1.0) -> DPSState:
  """A = A0 (scalar or [3, 3]), mu = mu_prev = uniform, nothing known."""
  a = jnp.broadcast_to(_a0_matrix(A0), (num_prompts, NUM_STATES, NUM_STATES))
  u = jnp.full((num_prompts, NUM_STATES), 1.0 / NUM_STATES, jnp.float32)
  return DPSState(a, u, u, jnp.zeros((num_prompts,), bool))


def transition_matrix(A: jax.Array) -> jax.Array:
  """Phi = A / colsum(A): column j is the distribution of the next state given j. [..., 3, 3]."""
  return A / jnp.sum(A, axis=-2, keepdims=True)


def observe_state(num_correct: jax.Array, num_samples: jax.Array) -> jax.Array:
  """0 all-wrong (num_correct == 0), 2 all-right (== num_samples), 1 partial. int32."""
  return jnp.where(num_correct <= 0, ALL_WRONG,
                   jnp.where(num_correct >= num_samples, ALL_RIGHT, PARTIAL)).astype(jnp.int32)


def entropy(mu: jax.Array) -> jax.Array:
  """-sum_z mu_z log mu_z over the last axis (0 log 0 = 0)."""
  return -jnp.sum(jnp.where(mu > 0, mu * jnp.log(jnp.where(mu > 0, mu, 1.0)), 0.0), axis=-1)


def dps_select(state: DPSState, candidate_ids: jax.Array, B: int,
               entropy_weight: float = 0.0) -> jax.Array:
  """Top-B candidates by mu[partial] + entropy_weight * entropy(mu).

  Args:
    state: the HMM state.
    candidate_ids: [C] int32 distinct prompt ids, C >= B.
    B: static number to select.
    entropy_weight: weight of the entropy bonus.

  Returns:
    [B] int32 chosen ids (ties: lower candidate position).
  """
  if B > candidate_ids.shape[0]:
    raise ValueError(f"dps B={B} must be <= number of candidates {candidate_ids.shape[0]}")
  mu = state.mu.at[candidate_ids].get(mode="clip")
  score = mu[:, PARTIAL]
  if entropy_weight:
    score = score + entropy_weight * entropy(mu)
  _, pos = jax.lax.top_k(score, B)
  return candidate_ids[pos]


def dps_update(state: DPSState, ids: jax.Array, observed_state: jax.Array, lam: float = 0.7,
               A0=1.0) -> DPSState:
  """One step of the DPS filter: the selected prompts observe, every other known one predicts.

  Args:
    state: the HMM state.
    ids: [B] int32 distinct selected prompt ids (>= P: padding).
    observed_state: [B] int32 in {0, 1, 2} (see `observe_state`).
    lam: decay.
    A0: prior counts, scalar or [3, 3].

  Returns:
    The updated state.
  """
  num_prompts = state.A.shape[0]
  a0 = _a0_matrix(A0)
  selected = jnp.zeros((num_prompts,), bool).at[ids].set(True, mode="drop")

  # Every known, unselected prompt: decay then predict (vectorised over all P).
  predict = state.known & ~selected
  a_dec = lam * state.A + (1.0 - lam) * a0
  mu_pred = jnp.einsum("pij,pj->pi", transition_matrix(a_dec), state.mu)
  A = jnp.where(predict[:, None, None], a_dec, state.A)
  mu = jnp.where(predict[:, None], mu_pred, state.mu)
  mu_prev = jnp.where(predict[:, None], mu_pred, state.mu_prev)

  # Selected prompts: posterior over the transition, then count and predict.
  a_sel = state.A.at[ids].get(mode="clip")
  prev_sel = state.mu_prev.at[ids].get(mode="clip")
  e_o = jax.nn.one_hot(observed_state, NUM_STATES, dtype=jnp.float32)
  xi = e_o[:, :, None] * prev_sel[:, None, :] * transition_matrix(a_sel)
  xi = xi / jnp.sum(xi, axis=(1, 2), keepdims=True)
  a_new = lam * a_sel + (1.0 - lam) * a0 + xi
  mu_new = jnp.einsum("bij,bj->bi", transition_matrix(a_new), e_o)
  return DPSState(
      A=A.at[ids].set(a_new, mode="drop"),
      mu=mu.at[ids].set(mu_new, mode="drop"),
      mu_prev=mu_prev.at[ids].set(e_o, mode="drop"),
      known=state.known | selected,
  )
