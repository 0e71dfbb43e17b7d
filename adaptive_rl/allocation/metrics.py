"""The efficiency metrics every allocator logs (ALGORITHMS.md, "Metrics"), shared by the train
step and the simulator so that both report exactly the same definitions."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adaptive_rl.allocation.roles import Groups, PoolView, PromptStats


def efficiency_metrics(groups: Groups, advantages: jax.Array, stats: PromptStats,
                       pool: PoolView) -> dict[str, jax.Array]:
  """Per-step allocation figures.

  effective_ratio: of the rollouts entering the loss, the fraction with non-zero advantage.
  prompt_effective_ratio: of the prompts that were sampled this step, the fraction whose trained
    group carries a non-zero advantage (dropped / filtered prompts count as zero).
  rollout_efficiency: rollouts with non-zero advantage entering the loss / all rollouts
    generated this step (discarded ones included).

  Args:
    groups: the group role's training rows.
    advantages: [T] advantages of those rows (0 where invalid).
    stats: per-prompt counts over the whole pool.
    pool: the step's pool.
  """
  bp = stats.ids.shape[0]
  nonzero = groups.valid & (jnp.abs(advantages) > 0)
  trained = jnp.sum(groups.valid)
  generated = jnp.sum(pool.valid)
  sampled = stats.num_samples > 0
  num_sampled = jnp.maximum(jnp.sum(sampled), 1)
  seg_any = lambda x: jax.ops.segment_max(x.astype(jnp.int32), groups.group, num_segments=bp) > 0
  prompt_nonzero = seg_any(nonzero) & sampled
  all_correct = sampled & (stats.num_correct == stats.num_samples)
  all_wrong = sampled & (stats.num_correct == 0)
  return {
      "effective_ratio": jnp.sum(nonzero) / jnp.maximum(trained, 1),
      "prompt_effective_ratio": jnp.sum(prompt_nonzero) / num_sampled,
      "rollout_efficiency": jnp.sum(nonzero) / jnp.maximum(generated, 1),
      "frac_all_correct": jnp.sum(all_correct) / num_sampled,
      "frac_all_wrong": jnp.sum(all_wrong) / num_sampled,
      "prompts_selected": jnp.sum(sampled),
      "prompts_trained": jnp.sum(seg_any(groups.valid)),
      "groups_nonzero": jnp.sum(prompt_nonzero),
      "samples_trained": trained,
      "rollouts_step": generated,
      "samples_per_prompt_mean": jnp.sum(stats.num_samples) / num_sampled,
      "samples_per_prompt_max": jnp.max(stats.num_samples),
  }
