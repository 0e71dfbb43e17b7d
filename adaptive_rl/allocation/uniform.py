"""GRPO's allocation (ALGORITHMS.md section 1): the roles every other method replaces one of.

  select "uniform"  the next ids of a seeded epoch permutation (no state)
  budget "fixed"    n rollouts for each chosen prompt, in one round
  group  "all"      every valid sample trains; advantages within each prompt's group by the
                    run's estimator (GRPO / RLOO / Dr.GRPO), optionally clipped
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from adaptive_rl.allocation.advantages import compute_advantages
from adaptive_rl.allocation.fields import context
from adaptive_rl.allocation.helpers import OneRoundBudget
from adaptive_rl.allocation.registry import register_budget, register_group, register_select
from adaptive_rl.allocation.roles import Groups, GroupRole, PoolView, SelectRole


@register_select("uniform")
@dataclasses.dataclass(frozen=True)
class UniformSelect(SelectRole[tuple]):
  """Each step takes the next ids of a seeded epoch permutation (no replacement)."""

  num_select: int = context("num_prompts")

  def select(self, state, candidates: jax.Array, rng: jax.Array):
    return state, candidates[:self.num_select]


@register_budget("fixed")
@dataclasses.dataclass(frozen=True)
class FixedBudget(OneRoundBudget[tuple]):
  """Every chosen prompt gets exactly n rollouts in one round (GRPO)."""

  batch_prompts: int = context("batch_prompts")
  group_size: int = context("group_size")

  def start(self, state, ids: jax.Array) -> jax.Array:
    return jnp.full(ids.shape, self.group_size, jnp.int32)


@register_group("all")
@dataclasses.dataclass(frozen=True)
class AllGroup(GroupRole):
  """Every valid sample trains; advantages within each prompt's group by `estimator`."""

  num_groups: int = context("num_prompts")
  estimator: str = context("adv_estimator", "grpo")
  adv_clip: float | None = context("adv_clip", None)

  def num_train_rows(self, pool_rows: int) -> int:
    return pool_rows

  def form(self, pool: PoolView) -> Groups:
    adv = compute_advantages(self.estimator, pool.rewards, pool.valid, group_ids=pool.prompt,
                             num_groups=self.num_groups, clip=self.adv_clip)
    return Groups(jnp.arange(pool.rewards.shape[0], dtype=jnp.int32), pool.valid, adv,
                  pool.prompt)
