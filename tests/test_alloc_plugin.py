"""An allocator added from outside the library, in one place (this file): a round-robin select
role registered by name, built through `build_allocator`, checked for its behaviour, validated
by `parse_allocator_settings`, and trained end to end by the real trainer."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_rl.allocation import (
    AllocatorSpec, PromptStats, SelectRole, build_allocator, default_settings,
    parse_allocator_settings, register_preset, register_select)
from adaptive_rl.allocation.fields import at_least, context, setting, validate
from adaptive_rl.allocation.simulate import pass_rates, simulate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the plug-in: everything a fork writes --------------------------------------------------

class RoundRobinState(NamedTuple):
  cursor: jax.Array  # int32: prompts handed out so far
  visits: jax.Array  # [P] int32 samples drawn per prompt


@register_select("round_robin")
@dataclasses.dataclass(frozen=True)
class RoundRobinSelect(SelectRole[RoundRobinState]):
  """Prompts offset, offset + 1, ... in dataset order (mod P), B per step, ignoring the data
  iterator's candidates; counts every prompt's samples."""

  num_select: int = context("num_prompts")
  offset: int = setting(0, at_least(0))

  def __post_init__(self):
    validate(self)

  def init(self, num_prompts: int, key: jax.Array) -> RoundRobinState:
    return RoundRobinState(jnp.zeros((), jnp.int32), jnp.zeros((num_prompts,), jnp.int32))

  def select(self, state, candidates, rng):
    p = state.visits.shape[0]
    ids = (self.offset + state.cursor + jnp.arange(self.num_select, dtype=jnp.int32)) % p
    return state._replace(cursor=state.cursor + self.num_select), ids

  def update(self, state, stats: PromptStats):
    return state._replace(visits=state.visits.at[stats.ids].add(stats.num_samples, mode="drop"))

  def summary(self, state):
    return {"rr_cursor": state.cursor, "rr_visited": jnp.sum(state.visits > 0)}


register_preset("round_robin", select="round_robin")


# --- (a) by name through the registry ------------------------------------------------------

def _alloc(b=4, n=2, **settings):
  return build_allocator(dict(name="round_robin", **settings), batch_prompts=b, group_size=n,
                         tau=0.5)


def test_registered_by_name_with_its_settings():
  a = _alloc()
  assert type(a.select) is RoundRobinSelect and a.select.num_select == 4
  assert type(a.budget).__name__ == "FixedBudget" and type(a.group).__name__ == "AllGroup"
  assert a.requires == frozenset() and not a.needs_grad_norms and not a.needs_diversity
  assert default_settings()["round_robin"] == {"offset": 0}
  spec = parse_allocator_settings(dict(name="round_robin", round_robin=dict(offset=3)))
  assert isinstance(spec, AllocatorSpec) and spec.section("round_robin") == {"offset": 3}
  assert spec.select == "round_robin" and parse_allocator_settings(spec.to_dict()) == spec
  # Composes with any other preset's roles in one line.
  combo = build_allocator(dict(name="knapsack", select="round_robin"), batch_prompts=4,
                          group_size=8, tau=0.5)
  assert type(combo.select) is RoundRobinSelect and type(combo.budget).__name__ == (
      "KnapsackBudget")


def test_settings_are_validated_naming_the_key():
  with pytest.raises(ValueError, match=r"allocator\.round_robin\.offset must be >= 0, got -1"):
    parse_allocator_settings(dict(name="round_robin", round_robin=dict(offset=-1)))
  with pytest.raises(ValueError, match=r"allocator\.round_robin\.offset must be an int"):
    parse_allocator_settings(dict(name="round_robin", round_robin=dict(offset=1.5)))
  with pytest.raises(ValueError, match=r"unknown allocator\.round_robin setting 'ofset'; "
                                       r"did you mean 'offset'"):
    _alloc(round_robin=dict(ofset=1))
  with pytest.raises(ValueError, match="round_robin"):  # listed among the valid select roles
    _alloc(select="round_robn")
  with pytest.raises(ValueError, match=r"allocator\.round_robin\.offset"):
    RoundRobinSelect(4, offset=-2)  # direct construction runs the same checks


def test_round_robin_behaviour():
  a = _alloc(b=4, round_robin=dict(offset=0))
  state = a.init(10, jax.random.key(0))
  choose = jax.jit(a.choose)
  seen = []
  for step in range(3):
    state, ids = choose(state, jax.random.key(step))
    seen.append(np.asarray(ids).tolist())
  assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
  _, ids = _alloc(b=4, round_robin=dict(offset=3)).choose(
      _alloc(b=4, round_robin=dict(offset=3)).init(10, jax.random.key(0)), jax.random.key(0))
  np.testing.assert_array_equal(ids, [3, 4, 5, 6])
  # The state update runs through the composed allocator, as in the train step.
  stats = PromptStats(ids=jnp.array([8, 9, 0, 1]), num_samples=jnp.array([2, 2, 0, 2]),
                      num_correct=jnp.zeros(4, jnp.int32), reward_sum=jnp.zeros(4),
                      grad_norm=jnp.zeros(4), diversity=jnp.zeros(4))
  state = a.update(state, stats, None)
  np.testing.assert_array_equal(state["select"].visits, [0, 2, 0, 0, 0, 0, 0, 0, 2, 2])
  summary = a.summary(state)
  assert int(summary["rr_cursor"]) == 12 and int(summary["rr_visited"]) == 3


def test_simulates():
  out = simulate(_alloc(b=8, n=4), pass_rates("uniform", 64, seed=0), steps=16)
  assert out["rollouts"] == 16 * 8 * 4
  # Round robin over 64 prompts, 8 per step: every prompt twice in 16 steps.
  assert out["samples_per_prompt_max"] == 4


# --- (b) trained by the real trainer -------------------------------------------------------

def _tiny_config():
  from adaptive_rl.rl.config import load_config_file  # pylint: disable=import-outside-toplevel
  c = load_config_file(os.path.join(ROOT, "configs", "quickstart.py"),
                       "smoke=True,allocator=round_robin")
  c.task.train_size = 300
  c.task.test_size = 20
  c.sft.steps = 10
  c.rl.steps = 3
  c.rl.batch_prompts = 4
  c.rl.group_size = 4
  c.eval.every = 0
  c.eval.batch_size = 20
  c.checkpoint.every = 0
  c.log.progress = False
  c.log.plots = False
  c.log.tensorboard = False
  c.mesh.num_devices = 1
  return c


def test_trains_end_to_end(tmp_path):
  # pylint: disable=import-outside-toplevel
  from adaptive_rl.rl.config import parse_config
  from adaptive_rl.rl.loop import train
  from adaptive_rl.rl.run import build_run
  config = _tiny_config()
  assert config.allocator.round_robin.offset == 0  # the config carries the plug-in's defaults
  summary = train(build_run(parse_config(config)), str(tmp_path))
  assert summary["steps"] == 3 and summary["rollouts"] == 3 * 4 * 4
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["alloc/rr_cursor"] for r in lines] == [4, 8, 12]
  assert [r["alloc/rr_visited"] for r in lines] == [4, 8, 12]


# --- what registration rejects ---------------------------------------------------------------

def test_registration_rejects_mistakes_at_import():
  from adaptive_rl.allocation import registry  # pylint: disable=import-outside-toplevel

  @dataclasses.dataclass  # not frozen: roles are static jit arguments
  class Mutable(SelectRole[tuple]):
    num_select: int = 1

    def select(self, state, candidates, rng):
      return state, candidates

  with pytest.raises(TypeError, match="frozen dataclass"):
    register_select("mutable")(Mutable)

  @dataclasses.dataclass(frozen=True)
  class Greedy(SelectRole[tuple]):
    requires = frozenset({"logits"})
    num_select: int = 1

    def select(self, state, candidates, rng):
      return state, candidates

  with pytest.raises(ValueError, match=r"unknown statistics \['logits'\]; valid"):
    register_select("greedy")(Greedy)
  with pytest.raises(TypeError, match="must subclass BudgetRole"):
    registry.register_budget("greedy")(dataclasses.dataclass(frozen=True)(
        type("NotABudget", (), {"__annotations__": {}})))
  with pytest.raises(ValueError, match="already registered"):
    register_select("round_robin")(dataclasses.dataclass(frozen=True)(
        type("Other", (RoundRobinSelect,), {})))
  with pytest.raises(ValueError, match="unknown role kind"):
    registry.register("score", "x")

  @dataclasses.dataclass(frozen=True)
  class OtherDefault(SelectRole[tuple]):  # shares round_robin's section, disagrees on a default
    section = "round_robin"
    num_select: int = context("num_prompts")
    offset: int = setting(5)

    def select(self, state, candidates, rng):
      return state, candidates

  with pytest.raises(ValueError, match=r"allocator\.round_robin\.offset needs exactly one "
                                       r"default"):
    register_select("other_default")(OtherDefault)
  assert "mutable" not in registry.roles("select") and "other_default" not in registry.roles(
      "select") and "greedy" not in registry.roles("select")
  with pytest.raises(TypeError, match="abstract"):  # a role must implement its protocol
    dataclasses.dataclass(frozen=True)(type("NoSelect", (SelectRole,), {}))()
