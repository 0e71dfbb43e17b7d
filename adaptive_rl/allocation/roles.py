"""The three allocation roles and their composition into an `Allocator`.

An RL step draws rollouts in rounds over a static slot batch and then trains on groups:

  select  which B prompts this step            select(state, rng) -> (state, ids [B])
  budget  how many rollouts each, per round    start / plan / observe over R rounds of S slots
  group   which samples train, what baseline   form(pool) -> training rows + advantages

Every role is a frozen dataclass of static settings (its fields, see `fields.py`) with pure,
jittable methods, typed by the Protocols below (`SelectRole`, `BudgetRole`, `GroupRole`); its
per-prompt state is a pytree sized for the whole dataset and lives in the train state, and its
`update` runs inside the jitted train step. The pool of one step is R * S rows (round r's slots
at [r*S, (r+1)*S)); rows of rounds that did not run are invalid.

A role that needs more than rewards from the train step declares it in `requires` (a subset of
`STATISTICS`); the composed `Allocator.requires` is the union, and the step computes only those.
Roles register by name from their own file (`registry.register`).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, NamedTuple, Protocol, TypeVar

import jax
import jax.numpy as jnp

# What a role may ask the train step for, beyond rewards (each costs compute there):
#   grad_norms  per-row norm of d(-sum_t log pi)/d(token embeddings) under the pre-update policy,
#               averaged over a prompt's correct samples into PromptStats.grad_norm (GVM's G)
#   diversity   per-row completion hashes, turned into PromptStats.diversity = distinct
#               completions / samples (VAS)
STATISTICS = frozenset({"grad_norms", "diversity"})


class PromptStats(NamedTuple):
  """Per chosen prompt, over every sample drawn for it this step ([B] each)."""

  ids: jax.Array  # dataset indices
  num_samples: jax.Array  # int32
  num_correct: jax.Array  # int32: binarised reward > tau
  reward_sum: jax.Array  # float32
  grad_norm: jax.Array  # float32: mean embedding-gradient norm over correct samples (GVM)
  diversity: jax.Array  # float32: distinct completions / samples


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


def prompt_stats(ids: jax.Array, pool: PoolView, tau: float, grad_norms: jax.Array | None = None,
                 completion_hash: jax.Array | None = None) -> PromptStats:
  """Per-prompt statistics over the whole pool.

  Args:
    ids: [B] dataset indices of the step's prompts.
    pool: the step's pool.
    tau: binarisation threshold.
    grad_norms: optional [M] per-sample gradient-norm proxies (GVM's G).
    completion_hash: optional [M] int32 hashes of the completions (diversity).
  """
  b = ids.shape[0]
  w = pool.valid.astype(jnp.int32)
  seg = lambda x: jax.ops.segment_sum(x, pool.prompt, num_segments=b)
  correct = pool.valid & (pool.rewards > tau)
  num_samples = seg(w)
  num_correct = seg(correct.astype(jnp.int32))
  if grad_norms is None:
    grad_norm = jnp.zeros((b,), jnp.float32)
  else:
    grad_norm = seg(jnp.where(correct, grad_norms, 0.0)) / jnp.maximum(num_correct, 1)
  if completion_hash is None:
    diversity = jnp.zeros((b,), jnp.float32)
  else:
    # Distinct (prompt, hash) pairs: sort by both and count boundaries.
    key_p = jnp.where(pool.valid, pool.prompt, b)
    order = jnp.lexsort((completion_hash, key_p))
    sp, sh = key_p[order], completion_hash[order]
    first = jnp.concatenate([jnp.ones((1,), bool), (sp[1:] != sp[:-1]) | (sh[1:] != sh[:-1])])
    distinct = jax.ops.segment_sum((first & (sp < b)).astype(jnp.int32), jnp.minimum(sp, b - 1),
                                   num_segments=b)
    diversity = distinct / jnp.maximum(num_samples, 1)
  return PromptStats(
      ids=ids, num_samples=num_samples, num_correct=num_correct,
      reward_sum=seg(jnp.where(pool.valid, pool.rewards, 0.0)),
      grad_norm=grad_norm.astype(jnp.float32), diversity=diversity.astype(jnp.float32))


# --- the role protocols ---------------------------------------------------------------------

StateT = TypeVar("StateT")  # a role's per-prompt state pytree (dataset-sized)
RoundT = TypeVar("RoundT")  # a budget's per-step round state (counts so far, ...)


class SelectRole(Protocol[StateT]):
  """Which prompts a step trains on.

  Draws `candidates_per_step()` ids from the data iterator and keeps `num_select` of them (the
  budget's `num_prompts`). Subclass it explicitly to inherit the defaults (no state, no update,
  no summary) and implement `select`.
  """

  requires: ClassVar[frozenset[str]] = frozenset()
  num_select: int

  def candidates_per_step(self) -> int:
    return self.num_select

  def init(self, num_prompts: int, key: jax.Array) -> StateT:
    """Per-prompt state for a dataset of `num_prompts`."""
    return ()  # type: ignore[return-value]

  @abc.abstractmethod
  def select(self, state: StateT, candidates: jax.Array,
             rng: jax.Array) -> tuple[StateT, jax.Array]:
    """[C] candidate ids -> (state, [num_select] chosen ids)."""

  def update(self, state: StateT, stats: PromptStats) -> StateT:
    """Refreshes the state from the step's per-prompt statistics (inside the train step)."""
    return state

  def summary(self, state: StateT) -> dict[str, jax.Array]:
    """Scalars logged each step as alloc/<key>."""
    return {}


class BudgetRole(Protocol[StateT, RoundT]):
  """How many rollouts each chosen prompt gets, over up to `max_rounds` rounds of `num_slots`.

  Per step: `start(state, ids)` -> round state; per round `plan` lays out the S slots and
  `observe` folds the round's rewards in and says whether the step is done; `update` refreshes
  the per-prompt state in the train step.
  """

  requires: ClassVar[frozenset[str]] = frozenset()
  # The advantage clip this budget's method prescribes for the group role (GVM and Knapsack
  # clip at 5 for their variable group sizes); None / 0: the run's rl.adv_clip.
  adv_clip: float | None = None
  batch_prompts: int

  @property
  def num_prompts(self) -> int:
    """Prompts chosen per step (B; DAPO draws fresh prompts each round: B x rounds)."""
    return self.batch_prompts

  @property
  @abc.abstractmethod
  def num_slots(self) -> int:
    """S, static slots per round."""

  @property
  @abc.abstractmethod
  def max_rounds(self) -> int:
    """R, static round cap (the pool has R * S rows)."""

  def init(self, num_prompts: int) -> StateT:
    return ()  # type: ignore[return-value]

  @abc.abstractmethod
  def start(self, state: StateT, ids: jax.Array) -> RoundT:
    """The round state of a step on the chosen prompts `ids` [num_prompts]."""

  @abc.abstractmethod
  def plan(self, state: StateT, round_state: RoundT, round_idx) -> Plan:
    """Which chosen prompt each of round `round_idx`'s S slots serves."""

  @abc.abstractmethod
  def observe(self, round_state: RoundT, plan: Plan,
              rewards: jax.Array) -> tuple[RoundT, jax.Array]:
    """Folds the round's [S] rewards in; returns (round state, done)."""

  def update(self, state: StateT, stats: PromptStats, pool: PoolView) -> StateT:
    return state

  def summary(self, state: StateT) -> dict[str, jax.Array]:
    return {}


class GroupRole(Protocol):
  """Which samples of the step's pool train, and against which baseline (no state)."""

  requires: ClassVar[frozenset[str]] = frozenset()

  @abc.abstractmethod
  def num_train_rows(self, pool_rows: int) -> int:
    """T, the static number of training rows `form` returns."""

  @abc.abstractmethod
  def form(self, pool: PoolView) -> Groups:
    """The pool -> T training rows (invalid rows have advantage 0)."""


# --- the data iterator every select role draws candidates from ------------------------------

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
class Allocator:
  """A select, a budget and a group role, composed.

  Per step: `choose` draws the select role's candidates from the data iterator and keeps
  `budget.num_prompts` of them; the budget plans `max_rounds` rounds of `num_slots` slots; the
  group role turns the pool into training rows; `update` refreshes every role's per-prompt
  state from the step's `PromptStats` (inside the jitted train step).
  """

  select: SelectRole[Any]
  budget: BudgetRole[Any, Any]
  group: GroupRole
  tau: float = 0.5  # binarisation threshold of rewards for counts and metrics
  name: str = "custom"

  @property
  def batch_prompts(self) -> int:
    return self.budget.batch_prompts

  @property
  def pool_rows(self) -> int:
    return self.budget.num_slots * self.budget.max_rounds

  @property
  def train_rows(self) -> int:
    return self.group.num_train_rows(self.pool_rows)

  @property
  def requires(self) -> frozenset[str]:
    """The statistics (`STATISTICS`) the train step must compute for these roles: the union of
    the roles' own `requires`."""
    return self.select.requires | self.budget.requires | self.group.requires

  @property
  def needs_grad_norms(self) -> bool:
    return "grad_norms" in self.requires

  @property
  def needs_diversity(self) -> bool:
    return "diversity" in self.requires

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

  def update(self, state: dict[str, Any], stats: PromptStats, pool: PoolView) -> dict[str, Any]:
    """Per-prompt state updates from this step's rollouts (runs inside the train step)."""
    return {**state, "select": self.select.update(state["select"], stats),
            "budget": self.budget.update(state["budget"], stats, pool)}

  def summary(self, state: dict[str, Any]) -> dict[str, jax.Array]:
    return {**self.select.summary(state["select"]), **self.budget.summary(state["budget"])}
