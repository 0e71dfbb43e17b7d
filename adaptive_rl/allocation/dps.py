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
flagged to the spec owner, the spec's order is implemented.)

Lazy catch-up (O(B) per step instead of O(P)): a row of the state is stored as of the step
`last` at which it was last observed, and the k = step - last prediction steps it missed are
applied when the row is read (selection scores, `dps_current`) or observed (`dps_update`):

  A_k = A0 + lam^k (A - A0)                               (closed form)
  mu_k = Phi(A_k) ... Phi(A_2) Phi(A_1) mu,  mu_prev_k = mu_k   (k >= 1)

The belief product has no closed form (each factor's counts differ), but it converges: the
invariant A >= A0 (entrywise; xi >= 0) gives, per column c with D = A - A0, d_c = colsum(D),
s_c = colsum(A0),  ||Phi(A_j)[:, c] - Phi(A0)[:, c]||_1 <= 2 lam^j d_c / s_c.  Column-stochastic
matrices do not expand the L1 norm, so replacing every factor j > K by Phi(A0) moves mu by at
most 2 r lam^(K+1) / (1 - lam), r = max_c d_c / s_c. K is the smallest count that makes this
<= `_TOL` = 1e-8 (below float32 resolution of a probability): the first min(k, K) factors are
applied one by one, the rest as Phi(A0)^(k - K) by repeated squaring (<= 31 matrix products).
For lam = 1 the counts never decay, every factor is Phi(A) and K = 0 (exact); for lam = 0,
A_j = A0 for j >= 1 and K = 0 (exact). K is about 57 at lam = 0.7, 28 at 0.5, 215 at 0.9
(a0 = 1): reading n rows costs O(n (K + log k)), independent of the dataset size P.

`dps_materialise` brings every row up to date (O(P K); tests and inspection).

Padding convention: an id outside [0, num_prompts) marks a padding row; its updates are dropped.

The select role "dps" (`DPSSelect`, end of file) runs these inside the train step.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from adaptive_rl.allocation.fields import above, at_least, context, setting, validate, within
from adaptive_rl.allocation.helpers import visited_ids
from adaptive_rl.allocation.registry import register_select
from adaptive_rl.allocation.roles import PromptStats, SelectRole

NUM_STATES = 3
ALL_WRONG, PARTIAL, ALL_RIGHT = 0, 1, 2
_TOL = 1e-8  # L1 bound on the belief error of the catch-up's tail (see module docstring)
_NEVER = -1  # `last` of a prompt never selected: its row is the prior and never predicts


_A, _MU, _PREV, _WIDTH = slice(0, 9), slice(9, 12), slice(12, 15), 16


class DPSState(NamedTuple):
  """HMM state of all P prompts, each row stored as of the step it was last observed.

  One 16-float row per prompt (A, mu, mu_prev and a pad: 64 bytes, one cache line), so reading
  or writing a prompt is one gather / scatter of a row, and each written row is computed from
  the row read (XLA then updates the donated state in place instead of copying it).

  Attributes:
    rows: [P, 16] float32: A (9, row-major, A[i, j] counts j -> i), mu (3: belief over the
      state of the step after `last`), mu_prev (3), pad.
    last: [P] int32 number of updates the row is current for; -1: never selected.
    step: [] int32 number of updates applied.
  """
  rows: jax.Array
  last: jax.Array
  step: jax.Array

  @property
  def A(self) -> jax.Array:
    """[P, 3, 3] transition counts as stored."""
    return self.rows[:, _A].reshape(-1, NUM_STATES, NUM_STATES)

  @property
  def mu(self) -> jax.Array:
    """[P, 3] beliefs as stored."""
    return self.rows[:, _MU]

  @property
  def mu_prev(self) -> jax.Array:
    """[P, 3] previous-state beliefs as stored."""
    return self.rows[:, _PREV]

  @property
  def known(self) -> jax.Array:
    """[P] bool: selected at least once."""
    return self.last >= 0


def _a0_matrix(A0) -> jax.Array:
  return jnp.broadcast_to(jnp.asarray(A0, jnp.float32), (NUM_STATES, NUM_STATES))


def _pack(A, mu, mu_prev) -> jax.Array:
  """[n, 3, 3], [n, 3], [n, 3] -> [n, 16] rows."""
  n = A.shape[0]
  return jnp.concatenate([A.reshape(n, 9), mu, mu_prev, jnp.zeros((n, 1), A.dtype)], axis=1)


def dps_init(num_prompts: int, A0=1.0) -> DPSState:
  """A = A0 (scalar or [3, 3]), mu = mu_prev = uniform, nothing known."""
  a = jnp.broadcast_to(_a0_matrix(A0), (num_prompts, NUM_STATES, NUM_STATES))
  u = jnp.full((num_prompts, NUM_STATES), 1.0 / NUM_STATES, jnp.float32)
  return DPSState(_pack(a, u, u), jnp.full((num_prompts,), _NEVER, jnp.int32),
                  jnp.zeros((), jnp.int32))


def transition_matrix(A: jax.Array) -> jax.Array:
  """Phi = A / colsum(A): column j is the distribution of the next state given j. [..., 3, 3]."""
  return A / jnp.sum(A, axis=-2, keepdims=True)


def _apply(A: jax.Array, mu: jax.Array) -> jax.Array:
  """Phi(A) @ mu row-wise: [n, 3, 3], [n, 3] -> [n, 3]."""
  return jnp.einsum("nij,nj->ni", A, mu / jnp.sum(A, axis=-2))


def _catch_up(A, mu, mu_prev, gap, lam, a0):
  """Applies `gap` [n] missed prediction steps to rows (A [n,3,3], mu, mu_prev [n,3])."""
  lam = jnp.asarray(lam, jnp.float32)
  D = A - a0
  r = jnp.max(jnp.sum(jnp.abs(D), axis=-2) / jnp.sum(a0, axis=-2), axis=-1)  # [n]
  # Smallest K with 2 r lam^(K+1) / (1 - lam) <= _TOL; lam in {0, 1} or r = 0: K = 0.
  ratio = jnp.log(_TOL * (1.0 - lam) / (2.0 * r)) / jnp.log(lam)
  cut = jnp.where((lam > 0) & (lam < 1) & (r > 0),
                  jnp.ceil(jnp.nan_to_num(ratio, nan=0.0, posinf=0.0)) - 1.0, 0.0)
  head = jnp.minimum(gap, jnp.clip(cut, 0, 2**30).astype(jnp.int32))  # factors one by one

  def head_body(carry):
    j, c, m = carry
    c = c * lam
    m = jnp.where((j < head)[:, None], _apply(a0 + c[:, None, None] * D, m), m)
    return j + 1, c, m

  _, _, mu_k = jax.lax.while_loop(lambda s: s[0] < jnp.max(head, initial=0), head_body,
                                  (jnp.zeros((), jnp.int32), jnp.ones_like(r), mu))

  # Tail: Phi(A_lim)^(gap - head) by repeated squaring; A_lim = A0 (lam < 1) or A (lam = 1).
  tail_m = transition_matrix(jnp.where(lam < 1, jnp.broadcast_to(a0, A.shape), A))

  def tail_body(carry):
    e, m, mat = carry
    m = jnp.where(((e & 1) == 1)[:, None], jnp.einsum("nij,nj->ni", mat, m), m)
    return e >> 1, m, jnp.einsum("nij,njk->nik", mat, mat)

  _, mu_k, _ = jax.lax.while_loop(lambda s: jnp.any(s[0] > 0), tail_body,
                                  (gap - head, mu_k, tail_m))
  moved = gap > 0
  A_k = jnp.where(moved[:, None, None],
                  a0 + jnp.power(lam, gap.astype(jnp.float32))[:, None, None] * D, A)
  return A_k, mu_k, jnp.where(moved[:, None], mu_k, mu_prev)


def _gather(state: DPSState, ids: jax.Array):
  """Rows `ids` as stored (A, mu, mu_prev), the number of steps each missed, and `last`."""
  rows = state.rows.at[ids].get(mode="clip")
  last = state.last.at[ids].get(mode="clip")
  gap = jnp.where(last >= 0, state.step - last, 0)
  return (rows[:, _A].reshape(-1, NUM_STATES, NUM_STATES), rows[:, _MU], rows[:, _PREV], gap,
          last)


def dps_current(state: DPSState, ids: jax.Array, lam: float = 0.7, A0=1.0):
  """Rows `ids` brought up to the current step.

  Args:
    state: the HMM state.
    ids: [n] int32 prompt ids (clipped into range).
    lam: decay (the one the updates use).
    A0: prior counts, scalar or [3, 3].

  Returns:
    A [n, 3, 3], mu [n, 3], mu_prev [n, 3], as the eager spec would hold them now.
  """
  return _catch_up(*_gather(state, ids)[:4], lam, _a0_matrix(A0))


def dps_materialise(state: DPSState, lam: float = 0.7, A0=1.0) -> DPSState:
  """The whole state brought up to the current step (O(P K): for tests and inspection)."""
  ids = jnp.arange(state.rows.shape[0], dtype=jnp.int32)
  A, mu, mu_prev = dps_current(state, ids, lam, A0)
  return DPSState(_pack(A, mu, mu_prev), jnp.where(state.last >= 0, state.step, _NEVER),
                  state.step)


def observe_state(num_correct: jax.Array, num_samples: jax.Array) -> jax.Array:
  """0 all-wrong (num_correct == 0), 2 all-right (== num_samples), 1 partial. int32."""
  return jnp.where(num_correct <= 0, ALL_WRONG,
                   jnp.where(num_correct >= num_samples, ALL_RIGHT, PARTIAL)).astype(jnp.int32)


def entropy(mu: jax.Array) -> jax.Array:
  """-sum_z mu_z log mu_z over the last axis (0 log 0 = 0)."""
  return -jnp.sum(jnp.where(mu > 0, mu * jnp.log(jnp.where(mu > 0, mu, 1.0)), 0.0), axis=-1)


def dps_select(state: DPSState, candidate_ids: jax.Array, B: int, entropy_weight: float = 0.0,
               lam: float = 0.7, A0=1.0) -> jax.Array:
  """Top-B candidates by mu[partial] + entropy_weight * entropy(mu), mu brought up to date.

  Args:
    state: the HMM state.
    candidate_ids: [C] int32 distinct prompt ids, C >= B.
    B: static number to select.
    entropy_weight: weight of the entropy bonus.
    lam, A0: the decay and prior of the updates (for the catch-up of stale rows).

  Returns:
    [B] int32 chosen ids (ties: lower candidate position).
  """
  if B > candidate_ids.shape[0]:
    raise ValueError(f"dps B={B} must be <= number of candidates {candidate_ids.shape[0]}")
  _, mu, _ = dps_current(state, candidate_ids, lam, A0)
  score = mu[:, PARTIAL]
  if entropy_weight:
    score = score + entropy_weight * entropy(mu)
  _, pos = jax.lax.top_k(score, B)
  return candidate_ids[pos]


def dps_update(state: DPSState, ids: jax.Array, observed_state: jax.Array, lam: float = 0.7,
               A0=1.0) -> DPSState:
  """One step of the DPS filter: the selected prompts observe, every other known one predicts.

  Only the selected rows are touched (O(B)); the others' prediction is deferred to their next
  read (module docstring).

  Args:
    state: the HMM state.
    ids: [B] int32 distinct selected prompt ids (>= P: padding).
    observed_state: [B] int32 in {0, 1, 2} (see `observe_state`).
    lam: decay.
    A0: prior counts, scalar or [3, 3].

  Returns:
    The updated state.
  """
  a0 = _a0_matrix(A0)
  A, mu, mu_prev, gap, last = _gather(state, ids)
  a_sel, _, prev_sel = _catch_up(A, mu, mu_prev, gap, lam, a0)
  e_o = jax.nn.one_hot(observed_state, NUM_STATES, dtype=jnp.float32)
  xi = e_o[:, :, None] * prev_sel[:, None, :] * transition_matrix(a_sel)
  xi = xi / jnp.sum(xi, axis=(1, 2), keepdims=True)
  a_new = lam * a_sel + (1.0 - lam) * a0 + xi
  mu_new = jnp.einsum("bij,bj->bi", transition_matrix(a_new), e_o)
  step = state.step + 1
  return DPSState(
      rows=state.rows.at[ids].set(_pack(a_new, mu_new, e_o), mode="drop"),
      # == step (last < step always); written as a function of the row read so that XLA orders
      # the read before the in-place write rather than copying `last`.
      last=state.last.at[ids].set(jnp.maximum(last, step), mode="drop"),
      step=step,
  )


# --- the select role ------------------------------------------------------------------------

@register_select("dps")
@dataclasses.dataclass(frozen=True)
class DPSSelect(SelectRole[DPSState]):
  """DPS: per-prompt HMM over {all-wrong, partial, all-right}; top mu[partial] candidates.

  Attributes:
    num_select: prompts kept per step (B).
    ratio: candidates per kept prompt (the paper uses 8-32).
    lam: transition-count decay (0.7 MATH, 0.5 others).
    entropy_weight: weight of the belief entropy bonus in the score.
    a0: prior transition count (all entries, A0 = a0 * ones(3, 3)).
  """

  num_select: int = context("num_prompts")
  ratio: int = setting(4, at_least(1))
  lam: float = setting(0.7, within(0.0, 1.0))
  entropy_weight: float = setting(0.0, at_least(0.0))
  a0: float = setting(1.0, above(0.0))

  def __post_init__(self):
    validate(self)

  def candidates_per_step(self) -> int:
    return self.ratio * self.num_select

  def init(self, num_prompts: int, key: jax.Array) -> DPSState:
    return dps_init(num_prompts, self.a0)

  def select(self, state, candidates, rng):
    return state, dps_select(state, candidates, self.num_select, self.entropy_weight, self.lam,
                             self.a0)

  def update(self, state, stats: PromptStats):
    ids = visited_ids(stats, state.last.shape[0])
    observed = observe_state(stats.num_correct, stats.num_samples)
    return dps_update(state, ids, observed, self.lam, self.a0)

  def summary(self, state) -> dict[str, jax.Array]:
    # Beliefs as stored, i.e. as of each prompt's last observation: bringing every prompt up to
    # date would make the step O(P) again (lazy catch-up, module docstring).
    known = state.known
    n = jnp.maximum(jnp.sum(known), 1)
    mu = jnp.where(known[:, None], state.mu, 0.0)
    return {"known_prompts": jnp.sum(known), "belief_partial": jnp.sum(mu[:, 1]) / n,
            "belief_all_right": jnp.sum(mu[:, 2]) / n, "belief_all_wrong": jnp.sum(mu[:, 0]) / n}
