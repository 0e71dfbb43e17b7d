"""Advantages for GRPO-family losses (re-exported from `allocation.advantages`, where the group
roles use them) and per-group summaries of binarised rewards.

A rollout batch is N sequences laid out flat (static shape) with group ids and a `valid` flag;
see `adaptive_rl.allocation.advantages` for the estimators and their formulas.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from adaptive_rl.allocation.advantages import (  # noqa: F401  (re-exported)
    ADVANTAGE_ESTIMATORS,
    GROUP_ESTIMATORS,
    SCALES,
    Array,
    Estimator,
    baseline_advantages,
    clip_advantages,
    compute_advantages,
    group_advantages,
    prepare_rewards,
    raft_advantages,
)


class GroupStats(NamedTuple):
  """Per-group summary of binarised rewards 1[r > tau]; every field is [num_groups].

  Attributes:
    count: number of valid members n_g (int32).
    mean: mean raw reward (0 for empty groups).
    num_correct: number of valid members with r > tau (int32).
    all_correct: n_g > 0 and every member is correct.
    all_wrong: n_g > 0 and no member is correct.
  """
  count: Array
  mean: Array
  num_correct: Array
  all_correct: Array
  all_wrong: Array


def group_stats(
    rewards: Array, group_ids: Array, valid: Array, num_groups: int, *, tau: float = 0.5
) -> GroupStats:
  """Per-group count, mean and one-class flags of the binarised rewards 1[r > tau].

  Args:
    rewards: [N] float rewards.
    group_ids: [N] int group index in [0, num_groups).
    valid: [N] bool.
    num_groups: static number of groups.
    tau: binarisation threshold (correct iff r > tau).

  Returns:
    A `GroupStats` of [num_groups] arrays; empty groups have count 0 and both flags False.
  """
  rewards, group_ids, valid = prepare_rewards(rewards, group_ids, valid)
  seg = lambda x: jax.ops.segment_sum(x, group_ids, num_segments=num_groups)
  count = seg(valid.astype(jnp.int32))
  total = seg(jnp.where(valid, rewards, 0.0))
  correct = seg((valid & (rewards > tau)).astype(jnp.int32))
  nonempty = count > 0
  return GroupStats(
      count=count,
      mean=total / jnp.maximum(count, 1).astype(jnp.float32),
      num_correct=correct,
      all_correct=nonempty & (correct == count),
      all_wrong=nonempty & (correct == 0),
  )


def group_metrics(stats: GroupStats) -> dict[str, Array]:
  """Scalar metrics over the non-empty groups: frac_all_correct, frac_all_wrong, num_groups.

  frac_all_correct = #{g : all_correct_g} / #{g : n_g > 0}   (0 when no group is non-empty)
  """
  num = jnp.sum(stats.count > 0)
  denom = jnp.maximum(num, 1).astype(jnp.float32)
  return {
      "frac_all_correct": jnp.sum(stats.all_correct) / denom,
      "frac_all_wrong": jnp.sum(stats.all_wrong) / denom,
      "num_groups": num,
  }
