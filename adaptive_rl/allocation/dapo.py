"""DAPO dynamic sampling as a budget and a group role (ALGORITHMS.md section 2).

A group is kept iff its binarised rewards are not all equal, 0 < #correct < n. The budget
"dapo" samples n for B fresh prompts per round until B groups are kept or `max_gen_batches`
rounds ran (then the step trains on what was kept, never an error); the group "dapo" keeps the
first B mixed groups in generation order, truncating the rest, with GRPO-family advantages
within each. Rounds and prompts are static: round r serves chosen prompts [r B, (r + 1) B).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from adaptive_rl.allocation.advantages import compute_advantages
from adaptive_rl.allocation.fields import at_least, context, setting, validate
from adaptive_rl.allocation.helpers import compact
from adaptive_rl.allocation.registry import register_budget, register_group
from adaptive_rl.allocation.roles import BudgetRole, Groups, GroupRole, Plan, PoolView


@register_budget("dapo")
@dataclasses.dataclass(frozen=True)
class DapoBudget(BudgetRole[tuple, jax.Array]):
  """Rounds of n samples for B fresh prompts until B mixed groups are kept.

  Its round state is the int32 count of mixed groups so far (the excess over B included).

  Attributes:
    batch_prompts: B (kept groups wanted).
    group_size: n.
    tau: binarisation threshold.
    max_gen_batches: round cap (static: it sizes the pool).
  """

  batch_prompts: int = context("batch_prompts")
  group_size: int = context("group_size")
  tau: float = context("tau")
  max_gen_batches: int = setting(3, at_least(1))

  def __post_init__(self):
    validate(self)

  @property
  def num_prompts(self) -> int:
    return self.batch_prompts * self.max_gen_batches

  @property
  def num_slots(self) -> int:
    return self.batch_prompts * self.group_size

  @property
  def max_rounds(self) -> int:
    return self.max_gen_batches

  def start(self, state, ids):
    return jnp.zeros((), jnp.int32)

  def plan(self, state, round_state, round_idx) -> Plan:
    b, n = self.batch_prompts, self.group_size
    slot_prompt = round_idx * b + jnp.repeat(jnp.arange(b, dtype=jnp.int32), n)
    return Plan(slot_prompt.astype(jnp.int32), jnp.ones((b * n,), bool))

  def observe(self, round_state, plan: Plan, rewards: jax.Array):
    good = (rewards > self.tau).reshape(self.batch_prompts, self.group_size)
    valid = plan.slot_valid.reshape(self.batch_prompts, self.group_size)
    correct = jnp.sum(good & valid, axis=1)
    mixed = (correct > 0) & (correct < jnp.sum(valid, axis=1))
    kept = round_state + jnp.sum(mixed).astype(jnp.int32)
    return kept, kept >= self.batch_prompts


@register_group("dapo")
@dataclasses.dataclass(frozen=True)
class DapoGroup(GroupRole):
  """DAPO filter: keep the first B groups (in generation order) with 0 < #correct < n.

  Attributes:
    num_groups: B kept groups wanted.
    group_size: n.
    num_prompts: prompts sampled per step (B x max_gen_batches).
    tau: binarisation threshold.
    estimator: advantage estimator within kept groups.
    adv_clip: optional |A| bound.
  """

  num_groups: int = context("batch_prompts")
  group_size: int = context("group_size")
  num_prompts: int = context("num_prompts")
  tau: float = context("tau")
  estimator: str = context("adv_estimator", "grpo")
  adv_clip: float | None = context("adv_clip", None)

  def num_train_rows(self, pool_rows: int) -> int:
    return self.num_groups * self.group_size

  def form(self, pool: PoolView) -> Groups:
    p = self.num_prompts
    seg = jnp.where(pool.valid, pool.prompt, p)
    good = (pool.rewards > self.tau) & pool.valid
    correct = jax.ops.segment_sum(good.astype(jnp.int32), seg, p + 1)[:p]
    count = jax.ops.segment_sum(pool.valid.astype(jnp.int32), seg, p + 1)[:p]
    mixed = (correct > 0) & (correct < count)
    # Prompts are numbered in generation order (round r owns [r B, (r + 1) B)): keep the
    # first B mixed ones.
    rank = jnp.cumsum(mixed.astype(jnp.int32)) - 1
    kept = mixed & (rank < self.num_groups)
    row_kept = pool.valid & kept[jnp.minimum(pool.prompt, p - 1)]
    adv = compute_advantages(self.estimator, pool.rewards, row_kept, group_ids=pool.prompt,
                             num_groups=p, clip=self.adv_clip)
    idx, valid = compact(row_kept, self.num_train_rows(pool.rewards.shape[0]))
    return Groups(idx, valid, jnp.where(valid, adv[idx], 0.0), pool.prompt[idx])
