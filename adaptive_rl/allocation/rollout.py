"""One step's rollout: select -> budget rounds -> a pool of rows. The single implementation.

  rollout = begin(allocator, alloc, k_select, k_rounds, pool)     # choose prompts, start budget
  rollout = run_rounds(allocator, budget_state, rollout, generate) # all rounds, inside the jit
  # or, with rewards scored on the host, the same round body driven from Python:
  plan = plan_round(allocator, budget_state, rollout)
  rollout = write_round(allocator, rollout, plan, rows, rewards)   # rewards may come later
  rollout = observe_round(allocator, rollout, plan, rewards)

`generate(rollout, plan, key) -> (rows, rewards)` is whatever produces the round's S rollouts: the
LM sampler and an in-graph reward (`rl.rl_step`), or Bernoulli draws from true pass rates (the
simulator, `allocation.simulate`). `rows` is a dict of [S, ...] arrays written into the pool's
fields of the same names; the pool is any NamedTuple with at least the `PoolView` fields
(prompt, rewards, valid, order) and [M] = [R * S] rows, round r's slots at [r*S, (r+1)*S).

In `run_rounds` the rounds are a `lax.while_loop` that stops when the budget says done (or after
`budget.max_rounds`): no host sync between rounds. Rows of rounds that did not run stay invalid.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

from adaptive_rl.allocation.metrics import efficiency_metrics
from adaptive_rl.allocation.roles import Allocator, Plan, PoolView, prompt_stats


@flax.struct.dataclass
class Rollout:
  """The carry of one step's rounds.

  Attributes:
    ids: [B] int32 dataset ids of the step's chosen prompts.
    round_state: the budget role's per-step state (counts so far, ...).
    pool: every row of the step (see the module docstring).
    key: the step's round key; round r samples with `fold_in(key, r)`.
    rounds: int32 rounds run so far.
    done: bool, the budget needs no further round.
  """

  ids: jax.Array
  round_state: Any
  pool: Any
  key: jax.Array
  rounds: jax.Array
  done: jax.Array


def as_view(pool) -> PoolView:
  """The group roles' view of a pool."""
  return PoolView(pool.prompt, pool.rewards, pool.valid, pool.order)


def begin(allocator: Allocator, alloc: dict[str, Any], k_select: jax.Array, k_rounds: jax.Array,
          pool) -> tuple[dict[str, Any], Rollout]:
  """Chooses the step's prompts and starts the budget. Returns the new allocator state."""
  alloc, ids = allocator.choose(alloc, k_select)
  round_state = allocator.budget.start(alloc["budget"], ids)
  return alloc, Rollout(ids=ids, round_state=round_state, pool=pool, key=k_rounds,
                        rounds=jnp.zeros((), jnp.int32), done=jnp.zeros((), bool))


def plan_round(allocator: Allocator, budget_state, rollout: Rollout) -> Plan:
  """Which chosen prompt each of this round's S slots serves."""
  return allocator.budget.plan(budget_state, rollout.round_state, rollout.rounds)


def round_key(rollout: Rollout) -> jax.Array:
  return jax.random.fold_in(rollout.key, rollout.rounds)


def _put(allocator: Allocator, buf: jax.Array, x: jax.Array, round_idx) -> jax.Array:
  s = allocator.budget.num_slots
  return jax.lax.dynamic_update_slice_in_dim(buf, x.astype(buf.dtype), round_idx * s, 0)


def write_round(allocator: Allocator, rollout: Rollout, plan: Plan, rows: dict[str, jax.Array],
                rewards: jax.Array | None = None) -> Rollout:
  """Writes the round's rows (and rewards, zero on invalid slots; None: zeros for now)."""
  if rewards is None:
    rewards = jnp.zeros((allocator.budget.num_slots,), jnp.float32)
  rewards = jnp.where(plan.slot_valid, rewards.astype(jnp.float32), 0.0)
  fields = {**rows, "rewards": rewards, "prompt": plan.slot_prompt, "valid": plan.slot_valid}
  pool = rollout.pool
  pool = pool._replace(**{k: _put(allocator, getattr(pool, k), v, rollout.rounds)
                          for k, v in fields.items()})
  return rollout.replace(pool=pool)


def observe_round(allocator: Allocator, rollout: Rollout, plan: Plan,
                  rewards: jax.Array | None = None) -> Rollout:
  """Lets the budget observe the round's rewards and advances the round counter.

  `rewards` (host-scored, [S]) are written into the pool first; None keeps the pool's (in-graph)
  ones.
  """
  s = allocator.budget.num_slots
  if rewards is None:
    rewards = jax.lax.dynamic_slice_in_dim(rollout.pool.rewards, rollout.rounds * s, s)
  else:
    rewards = jnp.where(plan.slot_valid, rewards.astype(jnp.float32), 0.0)
    rollout = rollout.replace(pool=rollout.pool._replace(
        rewards=_put(allocator, rollout.pool.rewards, rewards, rollout.rounds)))
  round_state, done = allocator.budget.observe(rollout.round_state, plan, rewards)
  return rollout.replace(round_state=round_state, rounds=rollout.rounds + 1,
                         done=jnp.asarray(done, bool))


Generate = Callable[[Rollout, Plan, jax.Array], tuple[dict[str, jax.Array], jax.Array]]


def run_rounds(allocator: Allocator, budget_state, rollout: Rollout,
               generate: Generate) -> Rollout:
  """Every round of the step inside the jit: plan -> generate -> write -> observe, until the
  budget is done or `budget.max_rounds` rounds have run."""

  def body(ro: Rollout) -> Rollout:
    plan = plan_round(allocator, budget_state, ro)
    rows, rewards = generate(ro, plan, round_key(ro))
    ro = write_round(allocator, ro, plan, rows, rewards)
    return observe_round(allocator, ro, plan)

  if allocator.budget.max_rounds == 1:
    return body(rollout)
  cond = lambda ro: (ro.rounds < allocator.budget.max_rounds) & ~ro.done
  return jax.lax.while_loop(cond, body, rollout)


def collect(allocator: Allocator, alloc: dict[str, Any], k_select: jax.Array,
            k_rounds: jax.Array, pool, generate: Generate) -> tuple[dict[str, Any], Rollout]:
  """`begin` then `run_rounds`: the whole rollout of one step, in-graph."""
  alloc, rollout = begin(allocator, alloc, k_select, k_rounds, pool)
  return alloc, run_rounds(allocator, alloc["budget"], rollout, generate)


def settle(allocator: Allocator, alloc: dict[str, Any], rollout: Rollout, groups, advantages,
           grad_norms: jax.Array | None = None, completion_hash: jax.Array | None = None):
  """After training on `groups`: per-prompt statistics, the allocator's state update and the
  efficiency ratios of ALGORITHMS.md. Returns (alloc, stats, efficiency metrics)."""
  view = as_view(rollout.pool)
  stats = prompt_stats(rollout.ids, view, allocator.tau, grad_norms, completion_hash)
  alloc = allocator.update(alloc, stats, view)
  return alloc, stats, efficiency_metrics(groups, advantages, stats, view)
