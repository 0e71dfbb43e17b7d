"""Reinforce-Ada: successive elimination within one step (ALGORITHMS.md section 3).

Per round every still-active prompt is sampled; each sample is positive iff r > tau.

  balanced: prompt exits when |pos| >= floor(n/2) and |neg| >= n - floor(n/2)
  positive: prompt exits when |pos| >= 1

After R rounds (or when none is active) each prompt's group is formed from its pool, with
take = min(n, P + N):

  kp = min(floor(n/2), P);  kn = min(take - kp, N);  top up to `take` from whichever class
  has leftovers (earliest generated first within each class).
  `positive` variant, prompt still active: kp = min(clip(ceil(P / (P+N) * n), 1, take-1), P),
  then kn and the top-up as above.

p_hat = P / (P + N) over ALL samples drawn for the prompt this step (the global baseline,
A_j = r_j - p_hat); a group that ends up one-class has A = 0 and is dropped by default.

Beyond the paper (ours): the slot batch of each round has a static size S; `plan_slots` gives
every active prompt an almost equal share of the S slots, so fewer active prompts get more
samples each and no slot idles while any prompt is active.

Static shapes throughout: the per-step pool is a flat buffer of R * S samples (`roles.PoolView`).

Roles (end of file): the budget "reinforce_ada" (the rounds) and the group "balanced" (the
groups and baseline), both reading the settings `allocator.reinforce_ada.*`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from adaptive_rl.allocation.advantages import compute_advantages
from adaptive_rl.allocation.fields import at_least, context, one_of, setting, validate
from adaptive_rl.allocation.helpers import compact
from adaptive_rl.allocation.registry import register_budget, register_group
from adaptive_rl.allocation.roles import BudgetRole, Groups, GroupRole, Plan, PoolView

VARIANTS = ("balanced", "positive")


def exits(pos: jax.Array, neg: jax.Array, n: int, variant: str) -> jax.Array:
  """Whether each prompt has enough samples to stop. [B] -> [B] bool."""
  if variant == "balanced":
    return (pos >= n // 2) & (neg >= n - n // 2)
  if variant == "positive":
    return pos >= 1
  raise ValueError(f"reinforce_ada variant={variant!r} must be one of {VARIANTS}")


class AdaCounters(NamedTuple):
  """Per-prompt pool counters of the current step: pos, neg [B] int32, active [B] bool."""
  pos: jax.Array
  neg: jax.Array
  active: jax.Array


def counters_init(B: int, active: jax.Array | None = None) -> AdaCounters:
  """Empty pools; every prompt active (or the given [B] mask, e.g. excluding padding)."""
  z = jnp.zeros((B,), jnp.int32)
  return AdaCounters(z, z, jnp.ones((B,), bool) if active is None else active)


def counters_observe(state: AdaCounters, slot_prompt: jax.Array, slot_valid: jax.Array,
                     slot_reward: jax.Array, n: int, tau: float, variant: str) -> AdaCounters:
  """Adds one round's samples to the counters and retires the prompts that exit.

  Args:
    state: counters.
    slot_prompt: [S] int32 prompt index in [0, B) of each slot.
    slot_valid: [S] bool slot used.
    slot_reward: [S] rewards.
    n, tau, variant: as in `ReinforceAdaBudget`.

  Returns:
    Updated counters; active &= not exits(pos, neg).
  """
  b = state.pos.shape[0]
  seg = jnp.where(slot_valid, slot_prompt, b)
  good = (slot_reward > tau).astype(jnp.int32)
  pos = state.pos + jax.ops.segment_sum(good, seg, b + 1)[:b]
  neg = state.neg + jax.ops.segment_sum(1 - good, seg, b + 1)[:b]
  return AdaCounters(pos, neg, state.active & ~exits(pos, neg, n, variant))


def plan_slots(active: jax.Array, num_slots: int) -> tuple[jax.Array, jax.Array]:
  """Deals S slots out to the active prompts, as evenly as possible.

  With A active prompts each gets floor(S / A) slots and the first S mod A (in prompt order)
  one more; slots are laid out in contiguous runs in prompt order. Deterministic. S < A: the
  first S active prompts get one slot each. A == 0: every slot invalid (slot_prompt 0).

  Args:
    active: [B] bool.
    num_slots: static S.

  Returns:
    slot_prompt [S] int32 in [0, B), slot_valid [S] bool.
  """
  b = active.shape[0]
  act = active.astype(jnp.int32)
  count = jnp.sum(act)
  safe = jnp.maximum(count, 1)
  rank = jnp.cumsum(act) - 1
  share = jnp.where(active, num_slots // safe + (rank < num_slots % safe).astype(jnp.int32), 0)
  ends = jnp.cumsum(share)
  j = jnp.arange(num_slots)
  slot_prompt = jnp.minimum(jnp.searchsorted(ends, j, side="right"), b - 1).astype(jnp.int32)
  slot_valid = j < ends[-1]
  return jnp.where(slot_valid, slot_prompt, 0), slot_valid


class AdaGroups(NamedTuple):
  """Result of `form_groups`.

  Attributes:
    keep: [T] bool samples that enter the loss.
    p_hat: [B] float32 P / (P + N) over all the prompt's pool samples (0 if none).
    one_class: [B] bool the formed group has a single class (or is empty).
    num_pos: [B] int32 P, positives in the pool.
    num_neg: [B] int32 N, negatives in the pool.
    group_size: [B] int32 samples of the formed group (before dropping one-class groups).
  """
  keep: jax.Array
  p_hat: jax.Array
  one_class: jax.Array
  num_pos: jax.Array
  num_neg: jax.Array
  group_size: jax.Array


def form_groups(pool_rewards: jax.Array, pool_prompt: jax.Array, pool_order: jax.Array,
                pool_valid: jax.Array, B: int, n: int, tau: float, variant: str,
                drop_one_class: bool = True) -> AdaGroups:
  """Forms each prompt's training group from its pool (see the module docstring).

  "Still active" is recomputed as not exits(P, N), which equals the loop's active flag since
  a prompt stops drawing once it exits. Within a class, samples are taken by increasing
  `pool_order`. Cost O(T log T) (one lexsort), no [T, T] or [B, T] intermediates.

  Args:
    pool_rewards: [T] rewards.
    pool_prompt: [T] int32 prompt index in [0, B).
    pool_order: [T] int32 generation order (distinct among a prompt's samples).
    pool_valid: [T] bool.
    B: static number of prompts.
    n: static final group size.
    tau: binarisation threshold.
    variant: "balanced" or "positive".
    drop_one_class: if True, `keep` excludes one-class groups.

  Returns:
    AdaGroups.
  """
  if variant not in VARIANTS:
    raise ValueError(f"reinforce_ada variant={variant!r} must be one of {VARIANTS}")
  t = pool_rewards.shape[0]
  seg = jnp.where(pool_valid, pool_prompt, B)
  good = pool_rewards > tau
  num_pos = jax.ops.segment_sum((good & pool_valid).astype(jnp.int32), seg, B + 1)[:B]
  num_neg = jax.ops.segment_sum((~good & pool_valid).astype(jnp.int32), seg, B + 1)[:B]
  avail = num_pos + num_neg
  take = jnp.minimum(n, avail)

  kp = jnp.minimum(n // 2, num_pos)
  if variant == "positive":
    still_active = ~exits(num_pos, num_neg, n, variant)
    ratio_k = jnp.ceil(num_pos * n / jnp.maximum(avail, 1)).astype(jnp.int32)
    kp_active = jnp.minimum(jnp.minimum(jnp.maximum(ratio_k, 1), take - 1), num_pos)
    kp = jnp.where(still_active, jnp.maximum(kp_active, 0), kp)
  kn = jnp.minimum(take - kp, num_neg)
  # Top-up: kn already took every negative it could, so only positives can be left over.
  kp = jnp.minimum(num_pos, take - kn)

  # Rank of each sample within (prompt, class) by generation order.
  cls = (~good).astype(jnp.int32)  # 0 positive, 1 negative
  order = jnp.lexsort((pool_order, cls, seg))
  key = seg * 2 + cls
  sorted_key = key[order]
  start = jnp.searchsorted(sorted_key, jnp.arange(2 * (B + 1)), side="left")
  rank = jnp.zeros((t,), jnp.int32).at[order].set(
      (jnp.arange(t) - start[sorted_key]).astype(jnp.int32))
  segc = jnp.minimum(seg, B - 1)
  quota = jnp.where(good, kp[segc], kn[segc])
  one_class = (kp == 0) | (kn == 0)
  keep = pool_valid & (rank < quota)
  if drop_one_class:
    keep = keep & ~one_class[segc]
  p_hat = num_pos / jnp.maximum(avail, 1)
  return AdaGroups(keep, p_hat.astype(jnp.float32), one_class, num_pos, num_neg, kp + kn)


# --- the roles ------------------------------------------------------------------------------

_VARIANT = one_of(*VARIANTS)


@register_budget("reinforce_ada")
@dataclasses.dataclass(frozen=True)
class ReinforceAdaBudget(BudgetRole[tuple, AdaCounters]):
  """Reinforce-Ada successive elimination over a fixed slot batch S = B * M.

  Round 0 gives every prompt M samples; each later round deals the S slots evenly over the
  prompts still active (so fewer active prompts get more samples each, and no slot idles).
  A prompt exits when it has floor(n/2) positives and n - floor(n/2) negatives ("balanced")
  or one positive ("positive").

  Attributes:
    batch_prompts: B.
    n: final group size (the run's group size; >= 2 for "balanced").
    rounds: R, maximum rounds.
    samples_per_round: M, samples per prompt in round 1; S = B M slots.
    tau: binarisation threshold, positive iff r > tau.
    variant: "balanced" | "positive".
  """

  batch_prompts: int = context("batch_prompts")
  n: int = context("group_size")
  rounds: int = setting(4, at_least(1))
  samples_per_round: int = setting(8, at_least(1))
  tau: float = setting(0.7)
  variant: str = setting("balanced", _VARIANT)

  def __post_init__(self):
    validate(self)
    low = 2 if self.variant == "balanced" else 1
    if self.n < low:
      raise ValueError(f"allocator.reinforce_ada.variant={self.variant!r} needs a group size "
                       f"n >= {low}, got {self.n}")

  @property
  def num_slots(self) -> int:
    return self.batch_prompts * self.samples_per_round

  @property
  def max_rounds(self) -> int:
    return self.rounds

  def start(self, state, ids: jax.Array) -> AdaCounters:
    return counters_init(ids.shape[0])

  def plan(self, state, round_state, round_idx) -> Plan:
    return Plan(*plan_slots(round_state.active, self.num_slots))

  def observe(self, round_state, plan: Plan, rewards: jax.Array):
    c = counters_observe(round_state, plan.slot_prompt, plan.slot_valid, rewards, self.n,
                         self.tau, self.variant)
    return c, ~jnp.any(c.active)


@register_group("balanced")
@dataclasses.dataclass(frozen=True)
class BalancedGroup(GroupRole):
  """Reinforce-Ada group formation with the global-pool baseline.

  Attributes:
    num_groups: B.
    n: final group size (training rows = B n).
    tau, variant: the Reinforce-Ada settings (defaults: `ReinforceAdaBudget`'s).
    use_std: divide by the std of the pool's binarised rewards (max(std, 1e-6)); off by default.
    drop_one_class: drop groups whose kept samples are all of one class (their A is 0).
    adv_clip: optional |A| bound.
  """

  section = "reinforce_ada"
  num_groups: int = context("num_prompts")
  n: int = context("group_size")
  tau: float = setting()
  variant: str = setting(check=_VARIANT)
  use_std: bool = False
  drop_one_class: bool = True
  adv_clip: float | None = context("adv_clip", None)

  def __post_init__(self):
    validate(self)

  def num_train_rows(self, pool_rows: int) -> int:
    return self.num_groups * self.n

  def form(self, pool: PoolView) -> Groups:
    b = self.num_groups
    g = form_groups(pool.rewards, pool.prompt, pool.order, pool.valid, b, self.n, self.tau,
                    self.variant, self.drop_one_class)
    prompt = jnp.minimum(pool.prompt, b - 1)
    baseline = g.p_hat[prompt]
    std = None
    if self.use_std:
      # The same binarised pool counts as p_hat (Reinforce-Ada's reference code): the unbiased
      # std of the prompt's P ones and N zeros, sqrt(P N / ((P + N) (P + N - 1))). The raw
      # rewards' std would mix scales with the binarised baseline unless rewards are 0 / 1.
      pos, neg = g.num_pos.astype(jnp.float32), g.num_neg.astype(jnp.float32)
      cnt = pos + neg
      var = pos * neg / (jnp.maximum(cnt, 1.0) * jnp.maximum(cnt - 1.0, 1.0))
      std = jnp.maximum(jnp.sqrt(var), 1e-6)[prompt]
    # p_hat is the fraction of pool samples with reward > tau; with binary rewards it is the
    # pool's mean reward, the global baseline of §3.
    adv = compute_advantages("global_baseline", pool.rewards, g.keep, baseline=baseline, std=std,
                             clip=self.adv_clip)
    idx, valid = compact(g.keep, self.num_train_rows(pool.rewards.shape[0]))
    return Groups(idx, valid, jnp.where(valid, adv[idx], 0.0), prompt[idx])
