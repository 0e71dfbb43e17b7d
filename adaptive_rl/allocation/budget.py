"""Budget roles: how many rollouts each chosen prompt gets, over R rounds of S slots.

  fixed          n each, one round (GRPO)
  reinforce_ada  successive elimination: M per active prompt per round, up to R rounds; as
                 prompts exit, the fixed S slots are dealt to the remaining ones (§3)
  gvm            n_i proportional to G_i / sqrt(p_i + alpha / p_i^(beta-1)), sum = B n (§4)
  knapsack       n_i maximising sum ProbNonZero * InfoGain under sum = B n (§5)
  dapo           fresh B prompts per round (n each) until B mixed groups are kept or
                 max_gen_batches rounds ran (§2)

`plan(state, round_state, r)` lays out round r's slots; `observe` folds the round's rewards in
and says whether the step is done; `update` refreshes per-prompt estimates in the train step.
A slot layout for variable budgets repeats prompt i n_i times (static S, no idle slots).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from adaptive_rl.allocation import gvm, knapsack, reinforce_ada
from adaptive_rl.allocation.roles import Plan, PoolView, PromptStats


def slots_from_counts(counts: jax.Array, num_slots: int) -> Plan:
  """Prompt i repeated counts[i] times, laid out in prompt order, padded to S (invalid)."""
  b = counts.shape[0]
  slot_prompt = jnp.repeat(jnp.arange(b, dtype=jnp.int32), counts, total_repeat_length=num_slots)
  valid = jnp.arange(num_slots) < jnp.sum(counts)
  return Plan(jnp.where(valid, slot_prompt, 0), valid)


def _check_positive(name: str, **values):
  for key, v in values.items():
    if v < 1:
      raise ValueError(f"allocator.{name}.{key} must be >= 1, got {v}")


class _OneRound:
  """Budgets that spend N = B n slots in a single round on per-prompt counts from `start`."""

  batch_prompts: int
  group_size: int

  @property
  def num_prompts(self) -> int:
    return self.batch_prompts

  @property
  def num_slots(self) -> int:
    return self.batch_prompts * self.group_size

  @property
  def max_rounds(self) -> int:
    return 1

  def plan(self, state, round_state, round_idx) -> Plan:
    return slots_from_counts(round_state, self.num_slots)

  def observe(self, round_state, plan: Plan, rewards: jax.Array):
    return round_state, jnp.asarray(True)


@dataclasses.dataclass(frozen=True)
class FixedBudget(_OneRound):
  """Every chosen prompt gets exactly n rollouts in one round (GRPO)."""

  batch_prompts: int
  group_size: int

  def init(self, num_prompts: int) -> Any:
    return ()

  def start(self, state, ids: jax.Array) -> jax.Array:
    return jnp.full(ids.shape, self.group_size, jnp.int32)

  def update(self, state, stats: PromptStats, pool: PoolView):
    return state

  def summary(self, state) -> dict[str, jax.Array]:
    return {}


@dataclasses.dataclass(frozen=True)
class ReinforceAdaBudget:
  """Reinforce-Ada successive elimination over a fixed slot batch S = B * M.

  Round 0 gives every prompt M samples; each later round deals the S slots evenly over the
  prompts still active (so fewer active prompts get more samples each, and no slot idles).
  A prompt exits when it has floor(n/2) positives and n - floor(n/2) negatives ("balanced")
  or one positive ("positive").

  Attributes:
    batch_prompts: B.
    n: final group size.
    rounds: R.
    samples_per_round: M.
    tau: binarisation threshold.
    variant: "balanced" | "positive".
  """

  batch_prompts: int
  n: int = 4
  rounds: int = 4
  samples_per_round: int = 8
  tau: float = 0.7
  variant: str = "balanced"

  def __post_init__(self):
    _check_positive("reinforce_ada", n=self.n, rounds=self.rounds,
                    samples_per_round=self.samples_per_round)
    reinforce_ada.ReinforceAdaSettings(n=self.n, rounds=self.rounds,
                                       samples_per_round=self.samples_per_round, tau=self.tau,
                                       variant=self.variant)

  @property
  def num_prompts(self) -> int:
    return self.batch_prompts

  @property
  def num_slots(self) -> int:
    return self.batch_prompts * self.samples_per_round

  @property
  def max_rounds(self) -> int:
    return self.rounds

  def init(self, num_prompts: int) -> Any:
    return ()

  def start(self, state, ids: jax.Array) -> reinforce_ada.AdaCounters:
    return reinforce_ada.counters_init(ids.shape[0])

  def plan(self, state, round_state, round_idx) -> Plan:
    return Plan(*reinforce_ada.plan_slots(round_state.active, self.num_slots))

  def observe(self, round_state, plan: Plan, rewards: jax.Array):
    c = reinforce_ada.counters_observe(round_state, plan.slot_prompt, plan.slot_valid, rewards,
                                       self.n, self.tau, self.variant)
    return c, ~jnp.any(c.active)

  def update(self, state, stats, pool):
    return state

  def summary(self, state) -> dict[str, jax.Array]:
    return {}


@dataclasses.dataclass(frozen=True)
class GVMBudget(_OneRound):
  """GVM: budgets proportional to the gradient-variance-minimising weights, refreshed online.

  The estimates (p_i, G_i) come from each visit's rollouts (reused, not discarded); G_i is the
  mean over correct samples of the norm of d(-sum_t log pi)/d(token embeddings), computed in
  the train step. Prompts never seen get `n_unknown` rollouts (their estimation draw).

  Attributes:
    batch_prompts: B; the budget is N = B * group_size.
    group_size: nominal n.
    alpha, beta, filter_threshold, filter_insufficient: §4 defaults.
    n_unknown: rollouts of a never-seen prompt (default: n).
    ema: weight of old estimates when refreshing (0 = last visit).
  """

  batch_prompts: int
  group_size: int
  alpha: float = 1e-3
  beta: float = 2.0
  filter_threshold: float = 1.0
  filter_insufficient: float = 0.0
  n_unknown: int = 0
  ema: float = 0.0
  needs_grad_norms = True

  def __post_init__(self):
    gvm.GVMSettings(alpha=self.alpha, beta=self.beta, filter_threshold=self.filter_threshold,
                    filter_insufficient=self.filter_insufficient,
                    n_unknown=self.unknown_budget, ema=self.ema)

  @property
  def unknown_budget(self) -> int:
    return self.n_unknown or self.group_size

  def init(self, num_prompts: int) -> gvm.GVMState:
    return gvm.gvm_init(num_prompts)

  def start(self, state, ids):
    p, g, known = gvm.gvm_estimate(state, ids)
    return gvm.gvm_allocate(p, g, self.num_slots, self.alpha, self.beta, self.filter_threshold,
                            self.filter_insufficient, known=known,
                            n_unknown=self.unknown_budget)

  def update(self, state, stats: PromptStats, pool: PoolView):
    ids = jnp.where(stats.num_samples > 0, stats.ids, state.p.shape[0])
    p_obs = stats.num_correct / jnp.maximum(stats.num_samples, 1)
    return gvm.gvm_update(state, ids, p_obs, stats.grad_norm, stats.num_correct > 0, self.ema)

  def summary(self, state) -> dict[str, jax.Array]:
    n = jnp.maximum(jnp.sum(state.seen), 1)
    return {"seen_prompts": jnp.sum(state.seen),
            "p_mean": jnp.sum(jnp.where(state.seen, state.p, 0.0)) / n}


@dataclasses.dataclass(frozen=True)
class KnapsackBudget(_OneRound):
  """Knapsack RL: per-prompt budgets maximising sum Value(N_i, p_i), sum N_i = B n.

  Attributes:
    settings: the method's settings (`knapsack.KnapsackSettings`, which validates them, the
      budget check with its numbers included); B = settings.batch_size, n = settings.n, and the
      total budget must be B n (one round of the static slot batch).
  """

  settings: knapsack.KnapsackSettings

  def __post_init__(self):
    s = self.settings
    if s.total_budget != s.batch_size * s.n:
      raise ValueError(f"allocator.knapsack: total_budget={s.total_budget} must equal "
                       f"batch_size * n = {s.batch_size} * {s.n} (one round of B n slots)")

  @property
  def batch_prompts(self) -> int:
    return self.settings.batch_size

  @property
  def group_size(self) -> int:
    return self.settings.n

  def init(self, num_prompts: int) -> knapsack.KnapsackHistory:
    return knapsack.knapsack_history_init(num_prompts, self.settings.window)

  def start(self, state, ids):
    p_hat, known = knapsack.knapsack_estimate(state, ids, self.settings.min_known)
    eligible = jnp.ones(ids.shape, bool)
    return knapsack.knapsack_allocate_with(self.settings, p_hat, known, eligible)

  def update(self, state, stats: PromptStats, pool: PoolView):
    ids = jnp.where(stats.num_samples > 0, stats.ids, state.total.shape[0])
    return knapsack.knapsack_history_update(state, ids, pool.rewards, pool.prompt, pool.valid)

  def summary(self, state) -> dict[str, jax.Array]:
    return {"known_prompts": jnp.sum(state.total >= self.settings.min_known)}


@dataclasses.dataclass(frozen=True)
class DapoBudget:
  """DAPO dynamic sampling: each round samples n for B fresh prompts until B groups with mixed
  binarised rewards are kept or `max_gen_batches` rounds ran (then train on what was kept).

  Attributes:
    batch_prompts: B (kept groups wanted).
    group_size: n.
    max_gen_batches: round cap (static: it sizes the pool).
    tau: binarisation threshold.
  """

  batch_prompts: int
  group_size: int
  max_gen_batches: int = 3
  tau: float = 0.5

  def __post_init__(self):
    if self.max_gen_batches < 1:
      raise ValueError(f"allocator.dapo.max_gen_batches must be >= 1 (it sizes the static "
                       f"rollout pool), got {self.max_gen_batches}")

  @property
  def num_prompts(self) -> int:
    return self.batch_prompts * self.max_gen_batches

  @property
  def num_slots(self) -> int:
    return self.batch_prompts * self.group_size

  @property
  def max_rounds(self) -> int:
    return self.max_gen_batches

  def init(self, num_prompts: int) -> Any:
    return ()

  def start(self, state, ids):
    return jnp.zeros((), jnp.int32)  # mixed groups kept so far

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

  def update(self, state, stats, pool):
    return state

  def summary(self, state) -> dict[str, jax.Array]:
    return {}
