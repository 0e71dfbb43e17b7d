"""Knapsack RL budget allocation (ALGORITHMS.md section 5).

The rollout budget of one step is split over the B chosen prompts by solving a knapsack:

  ProbNonZero(N, p) = 1 - p^N - (1 - p)^N      (a group of N has both classes)
  InfoGain(p)       = p (1 - p)^2
  Value(N, p)       = ProbNonZero(N, p) * InfoGain(p)

  maximise sum_i Value(N_i, p_i)  s.t.  sum_i N_i = total_budget,  N_low <= N_i <= N_up.

`p_i` comes from a per-prompt reward history (`KnapsackHistory`, sized for the whole dataset):
the mean reward of the prompt's last visit, or, when that visit had fewer than `window` (16)
rewards, the mean of the most recent `window` rewards across history; a prompt with fewer than
`min_known` (8) observed rewards is "unknown".

Everything here is pure and jittable. The knapsack is solved exactly by greedy marginal
allocation (Value is concave in N, see `knapsack_dp`): one `top_k` over the B * (N_up - N_low)
marginal gains.

Padding convention (shared by the whole `allocation` package): an id outside
[0, num_prompts) marks a padding row; its state updates are dropped.

The budget role "knapsack" (`KnapsackBudget`, end of file) spends one round of B n slots this
way, its history updated inside the train step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from adaptive_rl.allocation.fields import at_least, context, setting, validate, within
from adaptive_rl.allocation.helpers import OneRoundBudget, visited_ids
from adaptive_rl.allocation.registry import register_budget
from adaptive_rl.allocation.roles import PoolView, PromptStats


# ----------------------------------------------------------------------------- settings


def check_budget(batch_size: int, total_budget: int, n: int, n_low: int, n_pos: int,
                 n_neg: int) -> None:
  """Rejects a total budget the base allocation cannot fit, naming the numbers.

  The base allocation gives every prompt one of n (unknown), N_low (0 < p < 1), n_neg (p == 0)
  or n_pos (p == 1), so the budget must cover B * max(n, N_low, n_pos, n_neg) (the worst case,
  e.g. every prompt unknown); below B * N_low no allocation within the bounds exists at all.
  """
  if total_budget < batch_size * n_low:
    raise ValueError(
        f"knapsack total_budget={total_budget} cannot be met: it is below "
        f"batch_size * n_low = {batch_size} * {n_low} = {batch_size * n_low}")
  worst = batch_size * max(n, n_low, n_pos, n_neg)
  if total_budget < worst:
    raise ValueError(
        f"knapsack total_budget={total_budget} is below the worst-case base allocation "
        f"batch_size * max(n, n_low, n_pos, n_neg) = {batch_size} * "
        f"{max(n, n_low, n_pos, n_neg)} = {worst} (reached when every prompt is unknown); "
        f"allowed: total_budget >= {worst}")


# ----------------------------------------------------------------------------- value


def prob_non_zero(num: jax.Array, p: jax.Array) -> jax.Array:
  """ProbNonZero(N, p) = 1 - p^N - (1 - p)^N: chance a group of N has both classes."""
  return 1.0 - p**num - (1.0 - p)**num


def info_gain(p: jax.Array) -> jax.Array:
  """InfoGain(p) = p (1 - p)^2."""
  return p * (1.0 - p)**2


def value(num: jax.Array, p: jax.Array) -> jax.Array:
  """Value(N, p) = ProbNonZero(N, p) * InfoGain(p)."""
  return prob_non_zero(num, p) * info_gain(p)


# ----------------------------------------------------------------------------- history


class KnapsackHistory(NamedTuple):
  """Per-prompt reward history, sized for the whole dataset (P prompts, window W).

  Attributes:
    recent: [P, W] float32 ring buffer of the last W rewards of each prompt.
    head: [P] int32 next write slot of `recent` (slots 0..total-1 are filled while total < W).
    total: [P] int32 rewards observed overall.
    last_sum: [P] float32 sum of the rewards of the last visit.
    last_count: [P] int32 number of rewards of the last visit.
  """
  recent: jax.Array
  head: jax.Array
  total: jax.Array
  last_sum: jax.Array
  last_count: jax.Array


def knapsack_history_init(num_prompts: int, window: int = 16) -> KnapsackHistory:
  """Empty history for `num_prompts` prompts."""
  zi = jnp.zeros((num_prompts,), jnp.int32)
  return KnapsackHistory(jnp.zeros((num_prompts, window), jnp.float32), zi, zi,
                         jnp.zeros((num_prompts,), jnp.float32), zi)


def _rank_in_group(group: jax.Array, num_groups: int) -> jax.Array:
  """Position of each element among the elements of its group, in array order. [T] -> [T].

  A stable sort by group keeps array (generation) order inside each group; O(T log T).
  """
  t = group.shape[0]
  order = jnp.argsort(group, stable=True)
  sorted_group = group[order]
  start = jnp.searchsorted(sorted_group, jnp.arange(num_groups + 1), side="left")
  rank_sorted = jnp.arange(t) - start[sorted_group]
  return jnp.zeros((t,), jnp.int32).at[order].set(rank_sorted.astype(jnp.int32))


def knapsack_history_update(state: KnapsackHistory, ids: jax.Array, rewards: jax.Array,
                   group: jax.Array, valid: jax.Array) -> KnapsackHistory:
  """Records one visit of each prompt in `ids`.

  Args:
    state: the history.
    ids: [B] int32 distinct prompt ids visited this step (>= P: padding, ignored).
    rewards: [T] float rewards of this step's rollouts, in generation order.
    group: [T] int32 index into `ids` of each rollout's prompt.
    valid: [T] bool which rollouts exist.

  Returns:
    The history with, for each visited prompt with c > 0 valid rewards: the last min(c, W) of
    them appended to the ring buffer, total += c, and the last visit set to (sum, c).
  """
  num_prompts, window = state.recent.shape
  b = ids.shape[0]
  g = jnp.where(valid, group, b)  # invalid rollouts go to a sentinel group b
  cnt = jax.ops.segment_sum(jnp.ones_like(g), g, b + 1)[:b]
  tot = jax.ops.segment_sum(jnp.where(valid, rewards, 0.0).astype(jnp.float32), g, b + 1)[:b]
  rank = _rank_in_group(g, b)
  gc = jnp.minimum(g, b - 1)
  skip = jnp.maximum(cnt - window, 0)  # only the last W rewards of a visit reach the buffer
  write = valid & (rank >= skip[gc])
  pid = ids[gc]
  head = state.head.at[pid].get(mode="clip")
  slot = (head + rank - skip[gc]) % window
  recent = state.recent.at[jnp.where(write, pid, num_prompts), slot].set(
      rewards.astype(jnp.float32), mode="drop")
  seen = cnt > 0
  tgt = jnp.where(seen, ids, num_prompts)
  head_b = state.head.at[ids].get(mode="clip")
  return KnapsackHistory(
      recent=recent,
      head=state.head.at[tgt].set((head_b + jnp.minimum(cnt, window)) % window, mode="drop"),
      total=state.total.at[tgt].add(cnt, mode="drop"),
      last_sum=state.last_sum.at[tgt].set(tot, mode="drop"),
      last_count=state.last_count.at[tgt].set(cnt, mode="drop"),
  )


def knapsack_estimate(state: KnapsackHistory, ids: jax.Array,
                     min_known: int = 8) -> tuple[jax.Array, jax.Array]:
  """p_hat and known flag of each prompt in `ids`.

  p_hat = last_sum / last_count if last_count >= W, else the mean of the most recent
  min(total, W) rewards; known = total >= min_known.

  Args:
    state: the history.
    ids: [B] int32 prompt ids.
    min_known: rewards needed before a prompt counts as known.

  Returns:
    p_hat [B] float32, known [B] bool.
  """
  window = state.recent.shape[1]
  last_count = state.last_count.at[ids].get(mode="clip")
  last_sum = state.last_sum.at[ids].get(mode="clip")
  total = state.total.at[ids].get(mode="clip")
  recent = state.recent.at[ids].get(mode="clip")
  filled = jnp.minimum(total, window)
  mask = jnp.arange(window)[None, :] < filled[:, None]
  ring_mean = jnp.sum(jnp.where(mask, recent, 0.0), axis=1) / jnp.maximum(filled, 1)
  last_mean = last_sum / jnp.maximum(last_count, 1)
  p_hat = jnp.where(last_count >= window, last_mean, ring_mean)
  return p_hat, total >= min_known


# ----------------------------------------------------------------------------- allocation


def _spread(amount: jax.Array, mask: jax.Array) -> jax.Array:
  """Splits `amount` evenly over `mask`; the first (amount mod count) get one more. [B] int32."""
  count = jnp.sum(mask.astype(jnp.int32))
  safe = jnp.maximum(count, 1)
  rank = jnp.cumsum(mask.astype(jnp.int32)) - 1
  share = amount // safe + (rank < amount % safe).astype(jnp.int32)
  return jnp.where(mask & (count > 0), share, 0)


def marginal_gain(num: jax.Array, p: jax.Array) -> jax.Array:
  """Value(N + 1, p) - Value(N, p) = InfoGain(p) (p^N (1 - p) + (1 - p)^N p).

  Positive and strictly decreasing in N for 0 < p < 1: Value is concave in N.
  """
  return info_gain(p) * (p**num * (1.0 - p) + (1.0 - p)**num * p)


def knapsack_dp(p: jax.Array, items: jax.Array, budget: jax.Array, n_low: int,
                max_extra: int, max_budget: int) -> jax.Array:
  """Exact knapsack over the extra rollouts k_i in {0..K} of the `items` (K = max_extra).

  maximise sum_{i in items} Value(N_low + k_i, p_i)  s.t.  sum_i k_i = w*,
  w* = min(budget, |items| * K)  (every w in 0..|items|*K is reachable, so w* is the
  largest usable budget). Non-items get k = 0. The value of k = 0 is Value(N_low, p), not 0
  (the official code's quirk, fixed).

  The spec solves this by DP (O(B * W * K)). Each item's value is concave in k (its marginal
  gains `marginal_gain(N_low + k, p)` decrease with k), so the objective is separable concave
  under one sum constraint, and the greedy marginal allocation is exact (Gross 1956; exchange
  argument: an optimum that left out a gain larger than one it took could swap them): k_i =
  how many of item i's K gains are among the w* largest of all B * K gains. One `top_k` of
  width `max_budget` over B * K values; ties go to the lower item, then the lower k (a prefix
  of each item's gains). Equal to the DP's optimum value (tests: brute force).

  Args:
    p: [B] success rates.
    items: [B] bool which entries take part.
    budget: scalar int32 budget for the extras (clipped to [0, max_budget]).
    n_low: N_low.
    max_extra: K = N_up - N_low (static).
    max_budget: static bound on the budget.

  Returns:
    [B] int32 extras k_i.
  """
  b = p.shape[0]
  width = min(max_budget, b * max_extra)
  if width <= 0:
    return jnp.zeros((b,), jnp.int32)
  ks = jnp.arange(max_extra)
  gains = marginal_gain((n_low + ks)[None, :].astype(p.dtype), p[:, None])  # [B, K]
  gains = jnp.where(items[:, None], gains, -jnp.inf).astype(jnp.float32).reshape(-1)
  _, top = jax.lax.top_k(gains, width)  # descending; equal values: lower flat index first
  cap = jnp.sum(items.astype(jnp.int32)) * max_extra
  w_star = jnp.clip(jnp.minimum(budget, cap), 0, width)
  taken = (jnp.arange(width) < w_star).astype(jnp.int32)
  return jnp.zeros((b,), jnp.int32).at[top // max_extra].add(taken)


def knapsack_allocate(p_hat: jax.Array, known: jax.Array, eligible_mask: jax.Array,
                      total_budget: int, n: int = 8, n_low: int = 2, n_up: int = 128,
                      n_pos: int = 2, n_neg: int = 2, confidence: float = 0.9) -> jax.Array:
  """Knapsack RL allocation of `total_budget` rollouts over B prompts.

  1. Base: unknown -> n; 0 < p < 1 -> N_low; p == 0 -> n_neg; p == 1 -> n_pos;
     ineligible -> 0. R = total_budget - sum(base) >= 0 (guaranteed by `check_budget`).
  2. No 0 < p < 1 prompt: R is split evenly over the p == 0 prompts; with none of those, over
     all eligible prompts (the official code resets every prompt to n there, which breaks the
     sum; ours keeps sum == total_budget).
  3. Otherwise the cost cap: cost(p) = ln(1 - confidence) / ln(max(p, 1 - p)) rollouts,
     need_i = floor(min(N_up, cost(p_i))). If sum_i need_i < R, the excess R - sum need goes
     evenly to the p == 0 prompts (none: to the other non-interior eligible prompts; none of
     those either: no excess), and the DP gets R' = min(R, sum need); else R' = R.
  4. DP (`knapsack_dp`) over the 0 < p < 1 prompts with extras k_i in {0..N_up-N_low}, value
     of k = 0 being Value(N_low, p); the part of R' the DP cannot use (above |items|*K) is
     spread evenly over those prompts (they may then exceed N_up).
  "Evenly" = floor share each, the first (remainder) in batch order get one more.
  sum(result) == total_budget whenever at least one prompt is eligible.

  Args:
    p_hat: [B] estimated success rates in [0, 1].
    known: [B] bool whether p_hat is trusted.
    eligible_mask: [B] bool real prompts (padding gets 0).
    total_budget: static total rollouts (>= B * max(n, n_low, n_pos, n_neg)).
    n, n_low, n_up, n_pos, n_neg: static ints, as in `KnapsackBudget` (n = its group_size).
    confidence: the 0.9 of the cost formula.

  Returns:
    [B] int32 rollouts per prompt.
  """
  b = p_hat.shape[0]
  check_budget(b, total_budget, n, n_low, n_pos, n_neg)
  if n_up < n_low:
    raise ValueError(f"knapsack n_up={n_up} must be >= n_low={n_low}")
  p = p_hat.astype(jnp.float32)
  unknown = eligible_mask & ~known
  kn = eligible_mask & known
  zero = kn & (p <= 0.0)
  one = kn & (p >= 1.0)
  mid = kn & (p > 0.0) & (p < 1.0)
  base = (jnp.where(unknown, n, 0) + jnp.where(mid, n_low, 0) + jnp.where(zero, n_neg, 0) +
          jnp.where(one, n_pos, 0)).astype(jnp.int32)
  rest = jnp.int32(total_budget) - jnp.sum(base)
  any_mid = jnp.any(mid)
  any_zero = jnp.any(zero)

  # Step 2: no interior prompt.
  no_mid_target = jnp.where(any_zero, zero, eligible_mask)
  no_mid_alloc = _spread(rest, no_mid_target)

  # Step 3: the cost cap decides how much the DP may spend.
  safe_p = jnp.where(mid, p, 0.5)
  cost = math.log(1.0 - confidence) / jnp.log(jnp.maximum(safe_p, 1.0 - safe_p))
  need = jnp.where(mid, jnp.floor(jnp.minimum(float(n_up), cost)), 0.0).astype(jnp.int32)
  est = jnp.sum(need)
  others = eligible_mask & ~mid
  fb_target = jnp.where(any_zero, zero, others)
  fallback = (est < rest) & jnp.any(fb_target)
  excess = jnp.where(fallback, rest - est, 0)
  dp_budget = rest - excess

  # Step 4: the DP and the leftover it cannot use.
  max_extra = n_up - n_low
  max_budget = min(total_budget, b * max_extra)
  extra = knapsack_dp(p, mid, dp_budget, n_low, max_extra, max_budget)
  leftover = dp_budget - jnp.sum(extra)
  mid_alloc = extra + _spread(leftover, mid) + _spread(excess, fb_target)

  return base + jnp.where(any_mid, mid_alloc, no_mid_alloc)


# ----------------------------------------------------------------------------- the budget role


@register_budget("knapsack")
@dataclasses.dataclass(frozen=True)
class KnapsackBudget(OneRoundBudget[KnapsackHistory]):
  """Knapsack RL: per-prompt budgets maximising sum Value(N_i, p_i), sum N_i = B n.

  Attributes:
    batch_prompts: B.
    group_size: n, the rollouts of an unknown prompt; the total budget is B n (one round).
    n_low: N_low, minimum rollouts of a 0 < p < 1 prompt.
    n_up: N_up >= n_low, maximum DP allocation of a prompt.
    n_pos, n_neg: rollouts of a p == 1 / p == 0 prompt before redistribution.
    confidence: the 0.9 in cost(p) = ln(1 - 0.9) / ln(max(p, 1 - p)).
    window: history ring-buffer length W.
    min_known: rewards needed before a prompt is known.
    adv_clip: the group role's advantage clip (5 in the paper; 0 = the run's rl.adv_clip).
  """

  batch_prompts: int = context("batch_prompts")
  group_size: int = context("group_size")
  n_low: int = setting(2, at_least(1))
  n_up: int = setting(128, at_least(1))
  n_pos: int = setting(2, at_least(0))
  n_neg: int = setting(2, at_least(0))
  confidence: float = setting(0.9, within(0.0, 1.0, open_low=True, open_high=True))
  window: int = setting(16, at_least(1))
  min_known: int = setting(8, at_least(0))
  adv_clip: float = setting(5.0, at_least(0.0))

  def __post_init__(self):
    validate(self)
    if self.n_up < self.n_low:
      raise ValueError(f"allocator.knapsack.n_up must be >= n_low = {self.n_low}, "
                       f"got {self.n_up}")
    try:
      check_budget(self.batch_prompts, self.num_slots, self.group_size, self.n_low, self.n_pos,
                   self.n_neg)
    except ValueError as e:  # name the section, and where the budget comes from
      raise ValueError(f"allocator.knapsack: {e} (the budget is B n = {self.batch_prompts} * "
                       f"{self.group_size})") from None

  def allocate(self, p_hat: jax.Array, known: jax.Array, eligible: jax.Array) -> jax.Array:
    """`knapsack_allocate` of the B n budget with these settings. [B] -> [B] int32."""
    return knapsack_allocate(p_hat, known, eligible, self.num_slots, self.group_size,
                             self.n_low, self.n_up, self.n_pos, self.n_neg, self.confidence)

  def init(self, num_prompts: int) -> KnapsackHistory:
    return knapsack_history_init(num_prompts, self.window)

  def start(self, state, ids):
    p_hat, known = knapsack_estimate(state, ids, self.min_known)
    return self.allocate(p_hat, known, jnp.ones(ids.shape, bool))

  def update(self, state, stats: PromptStats, pool: PoolView):
    ids = visited_ids(stats, state.total.shape[0])
    return knapsack_history_update(state, ids, pool.rewards, pool.prompt, pool.valid)

  def summary(self, state) -> dict[str, jax.Array]:
    return {"known_prompts": jnp.sum(state.total >= self.min_known)}
