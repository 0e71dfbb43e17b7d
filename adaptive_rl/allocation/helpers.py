"""Small pieces the role files share: slot layouts, one-round budgets, row compaction and the
per-prompt views of `PromptStats` that select roles read."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adaptive_rl.allocation.roles import BudgetRole, Plan, PromptStats, StateT


def slots_from_counts(counts: jax.Array, num_slots: int) -> Plan:
  """Prompt i repeated counts[i] times, laid out in prompt order, padded to S (invalid)."""
  b = counts.shape[0]
  slot_prompt = jnp.repeat(jnp.arange(b, dtype=jnp.int32), counts, total_repeat_length=num_slots)
  valid = jnp.arange(num_slots) < jnp.sum(counts)
  return Plan(jnp.where(valid, slot_prompt, 0), valid)


class OneRoundBudget(BudgetRole[StateT, jax.Array]):
  """A budget that spends N = B n slots in one round on the per-prompt counts `start` returns
  (its round state: [B] int32 summing to at most B n)."""

  batch_prompts: int
  group_size: int

  @property
  def num_slots(self) -> int:
    return self.batch_prompts * self.group_size

  @property
  def max_rounds(self) -> int:
    return 1

  def plan(self, state, round_state: jax.Array, round_idx) -> Plan:
    return slots_from_counts(round_state, self.num_slots)

  def observe(self, round_state, plan: Plan, rewards: jax.Array):
    return round_state, jnp.asarray(True)


def compact(keep: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
  """Indices of the first `size` True entries of keep (in order), and which are real."""
  idx = jnp.nonzero(keep, size=size, fill_value=0)[0].astype(jnp.int32)
  valid = jnp.arange(size) < jnp.sum(keep)
  return idx, valid


def pass_rate(stats: PromptStats) -> jax.Array:
  """[B] fraction of each chosen prompt's samples with reward > tau (0 if none)."""
  return stats.num_correct / jnp.maximum(stats.num_samples, 1)


def visited_ids(stats: PromptStats, num_prompts: int) -> jax.Array:
  """ids of prompts that got samples; others become padding (dropped by the kernels)."""
  return jnp.where(stats.num_samples > 0, stats.ids, num_prompts)


def histogram(values: jax.Array, bins: int = 10) -> dict[str, jax.Array]:
  """Counts of `values` in [0, 1] over `bins` equal bins, as posterior_hist_<i> scalars."""
  edges = jnp.linspace(0.0, 1.0, bins + 1)
  idx = jnp.clip(jnp.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
  counts = jnp.zeros((bins,), jnp.int32).at[idx].add(1)
  return {f"posterior_hist_{i}": counts[i] for i in range(bins)}
