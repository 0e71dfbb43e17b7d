"""The three allocation roles and their composition into an `Allocator`.

An RL step draws rollouts in rounds over a static slot batch and then trains on groups:

  select  which B prompts this step            select(state, rng) -> (state, ids [B])
  budget  how many rollouts each, per round    start / plan / observe over R rounds of S slots
  group   which samples train, what baseline   form(pool) -> training rows + advantages

Every role is a frozen dataclass of static settings with pure, jittable methods; its
per-prompt state is a pytree sized for the whole dataset and lives in the train state, and its
`update` runs inside the jitted train step. The pool of one step is R * S rows (round r's slots
at [r*S, (r+1)*S)); rows of rounds that did not run are invalid.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adaptive_rl.rl.advantages import compute_advantages


class PromptStats(NamedTuple):
  """Per chosen prompt, over every sample drawn for it this step ([B] each)."""

  ids: jax.Array  # dataset indices
  num_samples: jax.Array  # int32
  num_correct: jax.Array  # int32: binarised reward > tau
  reward_sum: jax.Array  # float32


class Plan(NamedTuple):
  """One sampling round: which chosen prompt each of the S slots serves."""

  slot_prompt: jax.Array  # [S] int32 in [0, B)
  slot_valid: jax.Array  # [S] bool


class PoolView(NamedTuple):
  """What group roles see of the step's pool ([M] = [R * S] each)."""

  prompt: jax.Array  # int32 index into the B chosen prompts
  rewards: jax.Array  # float32
  valid: jax.Array  # bool: a real rollout
  order: jax.Array  # int32 generation order (round * S + slot)


class Groups(NamedTuple):
  """Training rows chosen from the pool ([T] each; T static)."""

  index: jax.Array  # int32 rows of the pool
  valid: jax.Array  # bool: row enters the loss
  advantages: jax.Array  # float32
  group: jax.Array  # int32 chosen-prompt index of each row


def prompt_stats(ids: jax.Array, pool: PoolView, tau: float) -> PromptStats:
  """Per-prompt sample counts over the whole pool."""
  b = ids.shape[0]
  w = pool.valid.astype(jnp.int32)
  seg = lambda x: jax.ops.segment_sum(x, pool.prompt, num_segments=b)
  return PromptStats(
      ids=ids, num_samples=seg(w),
      num_correct=seg(w * (pool.rewards > tau).astype(jnp.int32)),
      reward_sum=seg(jnp.where(pool.valid, pool.rewards, 0.0)))


# --- select ------------------------------------------------------------------------------------

class IteratorState(NamedTuple):
  """Position in a seeded stream of epoch permutations of the dataset."""

  perm: jax.Array  # [P] int32 current epoch's permutation
  epoch: jax.Array  # int32
  cursor: jax.Array  # int32 next position in perm
  key: jax.Array  # base key of the permutation stream


def iterator_init(num_prompts: int, key: jax.Array) -> IteratorState:
  return IteratorState(
      perm=jax.random.permutation(jax.random.fold_in(key, 0), num_prompts).astype(jnp.int32),
      epoch=jnp.zeros((), jnp.int32), cursor=jnp.zeros((), jnp.int32), key=key)


def iterator_next(state: IteratorState, count: int) -> tuple[IteratorState, jax.Array]:
  """The next `count` ids; a new permutation is drawn when the epoch runs out.

  Ids never repeat within one call (count <= dataset size): the tail of an epoch is taken and the
  call moves on to the next epoch rather than straddling it.
  """
  p = state.perm.shape[0]
  if count > p:
    raise ValueError(f"cannot draw {count} prompts per step from a dataset of {p}")
  wrap = state.cursor + count > p

  def new_epoch(s):
    e = s.epoch + 1
    perm = jax.random.permutation(jax.random.fold_in(s.key, e), p).astype(jnp.int32)
    return IteratorState(perm, e, jnp.zeros((), jnp.int32), s.key)

  state = jax.lax.cond(wrap, new_epoch, lambda s: s, state)
  ids = jax.lax.dynamic_slice_in_dim(state.perm, state.cursor, count)
  return state._replace(cursor=state.cursor + count), ids


@dataclasses.dataclass(frozen=True)
class UniformSelect:
  """Each step takes the next B prompts of a seeded epoch permutation (no replacement)."""

  batch_prompts: int

  def candidates_per_step(self) -> int:
    return self.batch_prompts

  def init(self, num_prompts: int, key: jax.Array) -> Any:
    return ()

  def select(self, state, candidates: jax.Array, rng: jax.Array):
    del rng
    return state, candidates[:self.batch_prompts]

  def update(self, state, stats: PromptStats):
    return state

  def summary(self, state) -> dict[str, jax.Array]:
    return {}


# --- budget ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FixedBudget:
  """Every chosen prompt gets exactly n rollouts in one round (GRPO)."""

  batch_prompts: int
  group_size: int

  @property
  def num_slots(self) -> int:
    return self.batch_prompts * self.group_size

  @property
  def max_rounds(self) -> int:
    return 1

  def init(self, num_prompts: int) -> Any:
    return ()

  def start(self, state, ids: jax.Array) -> Any:
    return ()

  def plan(self, state, round_state, round_idx: jax.Array) -> Plan:
    slot_prompt = jnp.repeat(jnp.arange(self.batch_prompts, dtype=jnp.int32), self.group_size)
    return Plan(slot_prompt, jnp.ones_like(slot_prompt, bool))

  def observe(self, round_state, plan: Plan, rewards: jax.Array):
    return round_state, jnp.asarray(True)

  def update(self, state, stats: PromptStats):
    return state

  def summary(self, state) -> dict[str, jax.Array]:
    return {}


# --- group -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class AllGroup:
  """Every valid sample trains; advantages within each prompt's group by `estimator`."""

  batch_prompts: int
  estimator: str = "grpo"
  adv_clip: float | None = None

  def num_train_rows(self, pool_size: int) -> int:
    return pool_size

  def form(self, pool: PoolView) -> Groups:
    adv = compute_advantages(self.estimator, pool.rewards, pool.valid, group_ids=pool.prompt,
                             num_groups=self.batch_prompts, clip=self.adv_clip)
    return Groups(jnp.arange(pool.rewards.shape[0], dtype=jnp.int32), pool.valid, adv,
                  pool.prompt)


@dataclasses.dataclass(frozen=True)
class Allocator:
  """A select, a budget and a group role, composed."""

  select: Any
  budget: Any
  group: Any
  tau: float = 0.5  # binarisation threshold of rewards for counts and metrics

  @property
  def batch_prompts(self) -> int:
    return self.budget.batch_prompts

  def init(self, num_prompts: int, key: jax.Array) -> dict[str, Any]:
    k1, k2 = jax.random.split(key)
    return {"iterator": iterator_init(num_prompts, k1),
            "select": self.select.init(num_prompts, k2),
            "budget": self.budget.init(num_prompts)}

  def choose(self, state: dict[str, Any], rng: jax.Array):
    """Draws candidates from the data iterator and lets the select role pick B of them."""
    iterator, candidates = iterator_next(state["iterator"], self.select.candidates_per_step())
    sel, ids = self.select.select(state["select"], candidates, rng)
    return {**state, "iterator": iterator, "select": sel}, ids

  def update(self, state: dict[str, Any], stats: PromptStats) -> dict[str, Any]:
    """Per-prompt state updates from this step's rollouts (runs inside the train step)."""
    return {**state, "select": self.select.update(state["select"], stats),
            "budget": self.budget.update(state["budget"], stats)}

  def summary(self, state: dict[str, Any]) -> dict[str, jax.Array]:
    return {**self.select.summary(state["select"]), **self.budget.summary(state["budget"])}
