"""Allocation roles composed into allocators: simulator invariants against analytic values, the
round logic of each budget, registry errors, and every preset fused into the real train step."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_rl.allocation.reinforce_ada import ReinforceAdaBudget
from adaptive_rl.allocation.registry import PRESETS, build_allocator
from adaptive_rl.allocation.simulate import pass_rates, simulate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _alloc(name, b=16, n=8, **settings):
  return build_allocator(dict(name=name, **settings), batch_prompts=b, group_size=n, tau=0.5)


def test_uniform_effective_ratio_matches_analytic():
  p = pass_rates("uniform", 256, seed=1)
  out = simulate(_alloc("uniform", b=32, n=8), p, steps=400, seed=0)
  # Every prompt is visited equally often (epoch permutations), so the expected fraction of
  # rollouts in groups with mixed rewards is 1 - mean(p^n + (1 - p)^n).
  expect = 1.0 - np.mean(p**8 + (1 - p)**8)
  assert out["effective_ratio"] == pytest.approx(expect, abs=0.01)
  assert out["effective_ratio"] == pytest.approx(out["prompt_effective_ratio"], abs=1e-6)
  assert out["rollouts"] == 400 * 32 * 8


def test_adaptive_presets_beat_uniform_where_their_papers_say():
  p = pass_rates("u_shaped", 512, seed=0)
  runs = {name: simulate(_alloc(name), p, steps=150, seed=0)
          for name in ("uniform", "knapsack", "reinforce_ada", "mopps", "dps")}
  u = runs["uniform"]
  assert runs["knapsack"]["effective_ratio"] > u["effective_ratio"] + 0.1
  assert runs["reinforce_ada"]["prompt_effective_ratio"] > u["prompt_effective_ratio"] + 0.1
  assert runs["mopps"]["prompt_effective_ratio"] > u["prompt_effective_ratio"] + 0.1
  assert runs["dps"]["prompt_effective_ratio"] > u["prompt_effective_ratio"] + 0.1
  # Budgeted methods spend exactly the uniform budget.
  assert runs["knapsack"]["rollouts"] == u["rollouts"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_simulates(name):
  p = pass_rates("mixed", 128, seed=2)
  out = simulate(_alloc(name, b=8, n=4), p, steps=20, seed=3, drift=0.1)
  for key in ("effective_ratio", "prompt_effective_ratio", "rollout_efficiency"):
    assert 0.0 <= out[key] <= 1.0
  assert out["mean_pass_rate_final"] >= float(np.mean(p)) - 1e-6  # drift only raises p


def test_reinforce_ada_rounds_deal_slots_to_active_prompts():
  b = ReinforceAdaBudget(4, n=2, rounds=3, samples_per_round=2, tau=0.5)
  rs = b.start((), jnp.arange(4))
  plan = b.plan((), rs, 0)
  np.testing.assert_array_equal(plan.slot_prompt, [0, 0, 1, 1, 2, 2, 3, 3])
  # Prompt 0 gets one positive and one negative (exits), prompt 1 two positives, others zeros.
  rs, done = b.observe(rs, plan, jnp.asarray([1., 0., 1., 1., 0., 0., 0., 0.]))
  assert not bool(done)
  np.testing.assert_array_equal(rs.active, [False, True, True, True])
  plan = b.plan((), rs, 1)
  assert sorted(np.asarray(plan.slot_prompt).tolist()) == [1, 1, 1, 2, 2, 2, 3, 3]
  assert bool(jnp.all(plan.slot_valid))


def test_dapo_gives_up_after_max_gen_batches_and_trains_on_what_it_kept():
  p = np.zeros(64, np.float32)  # no prompt ever has mixed rewards
  out = simulate(_alloc("dapo_filter", b=4, n=4, dapo=dict(max_gen_batches=2)), p, steps=5)
  assert out["rounds_mean"] == 2.0
  assert out["groups_trained"] == 0 and out["effective_ratio"] == 0.0
  assert out["rollouts"] == 5 * 2 * 4 * 4


def test_registry_errors_list_valid_names_and_numbers():
  with pytest.raises(ValueError, match="valid allocators"):
    _alloc("nope")
  with pytest.raises(ValueError, match="valid select roles"):
    _alloc("uniform", select="thompson")
  with pytest.raises(ValueError, match=r"below batch_size \* n_low = 16 \* 12 = 192"):
    _alloc("knapsack", knapsack=dict(n_low=12))
  with pytest.raises(ValueError, match="ratio"):
    _alloc("mopps", mopps=dict(ratio=0))
  with pytest.raises(ValueError, match="allocator.knapsack setting"):
    _alloc("knapsack", knapsack=dict(n_lo=1))


def test_composition_is_one_line():
  a = _alloc("reinforce_ada", select="mopps")
  assert type(a.select).__name__ == "MoPPSSelect"
  assert type(a.budget).__name__ == "ReinforceAdaBudget"
  out = simulate(a, pass_rates("u_shaped", 256), steps=10)
  assert out["prompt_effective_ratio"] > 0


def test_simulate_cli_json(tmp_path):
  rates = tmp_path / "rates.npy"
  np.save(rates, pass_rates("uniform", 100, seed=0))
  out = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "simulate.py"),
                        "--allocator", "knapsack", "--pass_rates", str(rates), "--steps", "10",
                        "--batch_prompts", "16", "--json"], capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  for key in ("allocator", "steps", "rollouts", "groups_trained", "effective_ratio",
              "prompt_effective_ratio", "rollout_efficiency", "frac_all_correct",
              "frac_all_wrong", "mean_pass_rate_final", "samples_per_prompt_max"):
    assert key in summary
  assert summary["rollouts"] == 10 * 16 * 8


def _tiny_config(allocator):
  from adaptive_rl.rl.config import load_config_file  # pylint: disable=import-outside-toplevel
  c = load_config_file(os.path.join(ROOT, "configs", "quickstart.py"),
                       f"smoke=True,allocator={allocator}")
  c.task.train_size = 300
  c.task.test_size = 20
  c.sft.steps = 20
  c.rl.steps = 2
  c.rl.batch_prompts = 4
  c.rl.group_size = 4
  c.allocator.reinforce_ada.samples_per_round = 4
  c.allocator.reinforce_ada.rounds = 2
  c.allocator.mopps.ratio = 2
  c.allocator.dps.ratio = 2
  c.allocator.dapo.max_gen_batches = 2
  c.eval.every = 0
  c.eval.batch_size = 20
  c.checkpoint.every = 0
  c.log.progress = False
  c.log.plots = False
  c.log.tensorboard = False
  c.mesh.num_devices = 1
  return c


_FAST = ("reinforce_ada", "gvm", "dapo_filter")


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=() if n in _FAST else pytest.mark.slow) for n in sorted(PRESETS)])
def test_preset_trains_end_to_end(name, tmp_path):
  from adaptive_rl.rl.config import parse_config
  from adaptive_rl.rl.loop import train
  from adaptive_rl.rl.run import build_run
  from adaptive_rl.rl.session import Session
  run = build_run(parse_config(_tiny_config(name)))
  session = Session(run)
  summary = train(run, str(tmp_path), session=session)
  assert summary["steps"] == 2 and summary["rollouts"] > 0
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert len(lines) == 2
  assert session.rl_step.compiled_counts()["step"] == 1  # one program, compiled once


def test_preset_settings_survive_a_config_full_of_defaults():
  from adaptive_rl.allocation.registry import default_settings
  settings = default_settings()  # what a config file carries: every default spelled out
  settings["name"] = "reinforce_ada_positive"
  a = build_allocator(settings, batch_prompts=4, group_size=4, tau=0.5)
  assert a.budget.variant == "positive" and a.group.variant == "positive"
  settings["name"] = "reinforce_ada"
  assert build_allocator(settings, batch_prompts=4, group_size=4, tau=0.5).budget.variant == (
      "balanced")
  settings["reinforce_ada"]["variant"] = "positive"  # an explicit choice wins over the preset
  assert build_allocator(settings, batch_prompts=4, group_size=4, tau=0.5).budget.variant == (
      "positive")


@pytest.mark.parametrize("path,arg", [
    ("quickstart.py", ""), ("quickstart.py", "smoke=True,allocator=knapsack"),
    ("qwen2_5_0_5b_gsm8k.py", ""), ("qwen2_5_0_5b_gsm8k.py", "smoke=True"),
    ("qwen2_5_math_1_5b_math.py", "allocator=reinforce_ada")])
def test_shipped_configs_carry_the_dataclass_defaults(path, arg):
  """Every allocator value a config spells out (the Reinforce-Ada recipe's R = 4, M = 8
  included) equals the role dataclasses' default, and the section validates at launch."""
  from adaptive_rl.allocation.registry import default_settings, parse_allocator_settings
  from adaptive_rl.rl.config import load_config_file  # pylint: disable=import-outside-toplevel
  c = load_config_file(os.path.join(ROOT, "configs", path), arg)
  settings = c.allocator.to_dict()
  want = default_settings()
  assert settings.pop("name") == (dict(a.split("=") for a in arg.split(",") if a)
                                  .get("allocator", "uniform"))
  want.pop("name")
  assert settings == want
  spec = parse_allocator_settings(c.allocator.to_dict())
  a = build_allocator(spec, batch_prompts=c.rl.batch_prompts, group_size=c.rl.group_size,
                      tau=0.5)
  assert a.name == spec.name


def test_requires_is_the_union_of_the_roles_statistics():
  assert _alloc("gvm").requires == {"grad_norms"} and _alloc("gvm").needs_grad_norms
  assert _alloc("vas").requires == {"diversity"} and _alloc("vas").needs_diversity
  both = _alloc("gvm", select="vas")
  assert both.requires == {"grad_norms", "diversity"}
  assert both.needs_grad_norms and both.needs_diversity
  for name in ("uniform", "knapsack", "reinforce_ada", "mopps", "dps", "dapo_filter"):
    a = _alloc(name)
    assert a.requires == frozenset() and not a.needs_grad_norms and not a.needs_diversity


def test_settings_parse_and_validate_without_run_sizes():
  from adaptive_rl.allocation.registry import AllocatorSpec, parse_allocator_settings
  spec = parse_allocator_settings(dict(name="reinforce_ada_positive", select="mopps",
                                       mopps=dict(ratio=8)))
  assert isinstance(spec, AllocatorSpec)
  assert (spec.name, spec.select, spec.budget, spec.group) == (
      "reinforce_ada_positive", "mopps", "reinforce_ada", "balanced")
  assert spec.section("reinforce_ada")["variant"] == "positive"  # the preset's
  assert spec.section("mopps")["ratio"] == 8 and spec.section("mopps")["lam"] == 1.0
  assert parse_allocator_settings(spec.to_dict()) == spec and hash(spec) == hash(spec)
  a = build_allocator(spec, batch_prompts=4, group_size=4, tau=0.5)
  assert a.select.ratio == 8 and a.budget.variant == a.group.variant == "positive"
  for settings, message in [
      (dict(mopps=dict(ratio=0)), r"allocator\.mopps\.ratio must be >= 1, got 0"),
      (dict(mopps=dict(ratio="4")), r"allocator\.mopps\.ratio must be an int, got '4'"),
      (dict(mopps=dict(mode="best")), r"allocator\.mopps\.mode must be one of"),
      (dict(gvm=dict(ema=1.0)), r"allocator\.gvm\.ema must be in \[0\.0, 1\.0\), got 1\.0"),
      (dict(reinforce_ada=dict(use_std=1)), r"allocator\.reinforce_ada\.use_std must be a bool"),
      (dict(reinforce_ada=dict(variant="greedy")), r"allocator\.reinforce_ada\.variant"),
      (dict(knapsack=dict(n_lo=1)), r"unknown allocator\.knapsack setting 'n_lo'"),
      (dict(knapsak=dict()), r"unknown allocator setting 'knapsak'; did you mean 'knapsack'"),
      (dict(budget="knapsak"), r"did you mean 'knapsack'\?; valid budget roles"),
  ]:
    with pytest.raises(ValueError, match=message):
      parse_allocator_settings(settings)
