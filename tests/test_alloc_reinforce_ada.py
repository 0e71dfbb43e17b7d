"""Tests of the Reinforce-Ada successive-elimination kernels on hand-built and random pools."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_rl.allocation import reinforce_ada as ra
from adaptive_rl.allocation.registry import build_allocator
from adaptive_rl.allocation.roles import PoolView

TAU = 0.7
_form = jax.jit(ra.form_groups, static_argnames=("B", "n", "variant", "drop_one_class"))


def _reference(rewards, prompt, order, valid, b, n, tau, variant):
  """The spec's group rule as a per-prompt Python loop."""
  keep = np.zeros(len(rewards), bool)
  p_hat, one_class, size = np.zeros(b), np.zeros(b, bool), np.zeros(b, int)
  for i in range(b):
    idx = [t for t in np.argsort(order, kind="stable") if valid[t] and prompt[t] == i]
    pos = [t for t in idx if rewards[t] > tau]
    neg = [t for t in idx if rewards[t] <= tau]
    npos, nneg = len(pos), len(neg)
    take = min(n, npos + nneg)
    if variant == "balanced":
      exited = npos >= n // 2 and nneg >= n - n // 2
    else:
      exited = npos >= 1
    if variant == "positive" and not exited:
      ratio = math.ceil(npos * n / (npos + nneg)) if npos + nneg else 0
      kp = max(min(min(max(ratio, 1), take - 1), npos), 0)
    else:
      kp = min(n // 2, npos)
    kn = min(take - kp, nneg)
    kp = min(npos, take - kn)
    keep[pos[:kp] + neg[:kn]] = True
    p_hat[i] = npos / max(npos + nneg, 1)
    one_class[i] = kp == 0 or kn == 0
    size[i] = kp + kn
  return keep, p_hat, one_class, size


def _pool(groups, shuffle_seed=0):
  """[(prompt, [rewards in generation order]), ...] -> shuffled flat pool arrays."""
  rewards, prompt, order = [], [], []
  for i, rs in groups:
    for r in rs:
      rewards.append(r)
      prompt.append(i)
      order.append(len(order))
  perm = np.random.default_rng(shuffle_seed).permutation(len(rewards))
  arr = lambda x, dt: np.asarray(x, dt)[perm]
  return (arr(rewards, np.float32), arr(prompt, np.int32), arr(order, np.int32),
          np.ones(len(rewards), bool))


def _kept(groups, pool, res):
  """Kept rewards per prompt in generation order."""
  rewards, prompt, order, _ = pool
  out = {}
  for i, _ in groups:
    idx = [t for t in np.argsort(order) if prompt[t] == i and res.keep[t]]
    out[i] = [float(rewards[t]) for t in idx]
  return out


def test_hand_built_balanced_pool():
  groups = [
      (0, [1, 0, 1, 1, 0, 0, 1, 0]),  # exited: 2 earliest positives + 2 earliest negatives
      (1, [1, 1, 0.5, 1, 1]),  # still active (1 negative): top up with a third positive
      (2, [0, 0, 0, 0, 0, 0]),  # one-class: flagged and dropped
      (3, [0.75, 0.25]),  # fewer than n samples: group of 2
      # prompt 4: no samples at all
  ]
  pool = _pool(groups)
  res = _form(*map(jnp.asarray, pool), B=5, n=4, tau=TAU, variant="balanced")
  kept = _kept(groups, pool, res)
  assert kept == {0: [1, 0, 1, 0], 1: [1, 1, 0.5, 1], 2: [], 3: [0.75, 0.25]}
  np.testing.assert_allclose(res.p_hat, [0.5, 0.8, 0.0, 0.5, 0.0])
  np.testing.assert_array_equal(res.one_class, [False, False, True, False, True])
  np.testing.assert_array_equal(res.group_size, [4, 4, 4, 2, 0])
  # Keeping one-class groups: prompt 2 then trains on its 4 earliest negatives.
  res = _form(*map(jnp.asarray, pool), B=5, n=4, tau=TAU, variant="balanced",
              drop_one_class=False)
  assert _kept(groups, pool, res)[2] == [0, 0, 0, 0]


def test_hand_built_positive_pool():
  groups = [
      (0, [0, 0, 1, 0, 0, 0, 1, 0]),  # exited: kp = min(2, 2), kn = 2
      (1, [0, 0, 0, 0, 0, 0, 0, 0]),  # still active after R rounds: P = 0 -> one-class
      (2, [1, 1, 1, 1, 1]),  # exited, no negative: one-class
  ]
  pool = _pool(groups, shuffle_seed=1)
  res = _form(*map(jnp.asarray, pool), B=3, n=4, tau=TAU, variant="positive",
              drop_one_class=False)
  assert _kept(groups, pool, res) == {0: [0, 0, 1, 1], 1: [0, 0, 0, 0], 2: [1, 1, 1, 1]}
  np.testing.assert_array_equal(res.one_class, [False, True, True])


def test_random_pools_match_reference():
  rng = np.random.default_rng(3)
  b, t = 6, 96
  for variant in ("balanced", "positive"):
    for n in (4, 5):
      for _ in range(4):
        rewards = rng.choice([0.0, 0.3, 0.8, 1.0], size=t).astype(np.float32)
        prompt = rng.integers(0, b, size=t).astype(np.int32)
        order = rng.permutation(t).astype(np.int32)
        valid = rng.random(t) < rng.uniform(0.05, 1.0)
        res = _form(jnp.asarray(rewards), jnp.asarray(prompt), jnp.asarray(order),
                    jnp.asarray(valid), B=b, n=n, tau=TAU, variant=variant,
                    drop_one_class=False)
        keep, p_hat, one_class, size = _reference(rewards, prompt, order, valid, b, n, TAU,
                                                  variant)
        np.testing.assert_array_equal(res.keep, keep)
        np.testing.assert_allclose(res.p_hat, p_hat, rtol=1e-6)
        np.testing.assert_array_equal(res.one_class, one_class)
        np.testing.assert_array_equal(res.group_size, size)


def test_exits():
  pos, neg = jnp.array([0, 1, 2, 2, 5]), jnp.array([9, 2, 1, 2, 0])
  np.testing.assert_array_equal(ra.exits(pos, neg, 4, "balanced"), [0, 0, 0, 1, 0])
  np.testing.assert_array_equal(ra.exits(pos, neg, 4, "positive"), [0, 1, 1, 1, 1])
  np.testing.assert_array_equal(ra.exits(pos, neg, 5, "balanced"), [0, 0, 0, 0, 0])
  with pytest.raises(ValueError, match=r"allocator\.reinforce_ada\.variant"):
    ra.ReinforceAdaBudget(4, 4, variant="greedy")


def test_plan_slots():
  plan = jax.jit(ra.plan_slots, static_argnames=("num_slots",))
  slot_prompt, slot_valid = plan(jnp.array([True, False, True, True]), num_slots=8)
  np.testing.assert_array_equal(slot_prompt, [0, 0, 0, 2, 2, 2, 3, 3])
  assert bool(slot_valid.all())
  slot_prompt, slot_valid = plan(jnp.array([False, False, True, False]), num_slots=8)
  np.testing.assert_array_equal(slot_prompt, [2] * 8)
  _, slot_valid = plan(jnp.zeros(4, bool), num_slots=8)
  assert not bool(slot_valid.any())
  rng = np.random.default_rng(0)
  for _ in range(20):
    active = rng.random(7) < 0.5
    slot_prompt, slot_valid = plan(jnp.asarray(active), num_slots=10)
    counts = np.bincount(np.asarray(slot_prompt)[np.asarray(slot_valid)], minlength=7)
    assert (counts[~active] == 0).all()
    if active.any():
      assert slot_valid.all() and counts[active].max() - counts[active].min() <= 1


def test_successive_elimination_loop():
  """The budget role's rounds (plan -> rewards -> observe) over a fixed slot batch, then the
  pool's groups against the reference rule."""
  b, rounds, s = 4, 3, 12
  budget = build_allocator(
      dict(name="reinforce_ada", reinforce_ada=dict(rounds=rounds, samples_per_round=s // b,
                                                    tau=TAU)),
      batch_prompts=b, group_size=4, tau=0.5).budget
  assert (budget.num_slots, budget.max_rounds) == (s, rounds)

  @jax.jit
  def one_round(counters, rewards_by_prompt_slot):
    plan = budget.plan((), counters, 0)
    reward = rewards_by_prompt_slot[plan.slot_prompt, jnp.arange(s)]
    counters, done = budget.observe(counters, plan, reward)
    return counters, done, plan, reward

  success = np.array([0.5, 0.95, 0.0, 0.2])  # prompt 2 never exits: still active after R
  rng = np.random.default_rng(7)
  counters = budget.start((), jnp.arange(b))
  m = rounds * s
  pool = [np.zeros(m, np.float32), np.zeros(m, np.int32), np.arange(m, dtype=np.int32),
          np.zeros(m, bool)]  # rewards, prompt, order, valid
  for r in range(rounds):
    draws = (rng.random((b, s)) < success[:, None]).astype(np.float32)
    active_before = np.asarray(counters.active)
    counters, done, plan, reward = one_round(counters, jnp.asarray(draws))
    assert bool(plan.slot_valid.all()) == active_before.any()
    assert bool(done) == (not np.asarray(counters.active).any())
    sl = slice(r * s, (r + 1) * s)
    pool[0][sl], pool[1][sl] = np.asarray(reward), np.asarray(plan.slot_prompt)
    pool[3][sl] = np.asarray(plan.slot_valid)
  assert bool(counters.active[2])
  res = ra.form_groups(*map(jnp.asarray, pool), b, 4, TAU, "balanced")
  keep, p_hat, one_class, _ = _reference(*pool, b, 4, TAU, "balanced")
  np.testing.assert_array_equal(res.keep, keep & ~one_class[pool[1]])
  np.testing.assert_allclose(res.p_hat, p_hat, rtol=1e-6)
  np.testing.assert_array_equal(res.num_pos, counters.pos)
  np.testing.assert_array_equal(res.num_neg, counters.neg)
  assert bool(res.one_class[2]) and not bool(res.keep[pool[1] == 2].any())

def test_balanced_group_std_uses_binarised_counts_like_its_baseline():
  """use_std: A_j = (r_j - p_hat) / max(std, 1e-6), where p_hat = P / (P + N) and std are both
  taken from the prompt's binarised pool (P positives, N negatives):
  std = sqrt(P N / ((P + N) (P + N - 1))), the unbiased std of P ones and N zeros. With 0 / 1
  rewards that is the raw rewards' std; here the rewards are not binary, so it is not."""
  rng = np.random.default_rng(11)
  b, n, t, tau = 5, 4, 80, 0.5
  rewards = rng.choice([0.0, 0.2, 0.4, 0.6, 0.9, 1.0], size=t)
  prompt = rng.integers(0, b, size=t)
  order = rng.permutation(t)
  valid = rng.random(t) < 0.8
  group = build_allocator(dict(name="reinforce_ada", reinforce_ada=dict(use_std=True, tau=tau)),
                          batch_prompts=b, group_size=n, tau=tau).group
  pool = PoolView(prompt=jnp.asarray(prompt, jnp.int32), rewards=jnp.asarray(rewards, jnp.float32),
                  valid=jnp.asarray(valid), order=jnp.asarray(order, jnp.int32))
  out = jax.jit(group.form)(pool)

  keep, p_hat, one_class, _ = _reference(rewards, prompt, order, valid, b, n, tau, "balanced")
  keep &= ~one_class[prompt]
  pos = np.bincount(prompt[valid & (rewards > tau)], minlength=b).astype(np.float64)
  cnt = np.bincount(prompt[valid], minlength=b).astype(np.float64)
  std = np.sqrt(pos * (cnt - pos) / (np.maximum(cnt, 1) * np.maximum(cnt - 1, 1)))
  want = (rewards - p_hat[prompt]) / np.maximum(std[prompt], 1e-6)

  rows = np.asarray(out.index)[np.asarray(out.valid)]
  assert sorted(rows.tolist()) == np.flatnonzero(keep).tolist() and len(rows) > 0
  np.testing.assert_allclose(np.asarray(out.advantages)[np.asarray(out.valid)], want[rows],
                             rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(out.group)[np.asarray(out.valid)], prompt[rows])
  assert not np.asarray(out.advantages)[~np.asarray(out.valid)].any()
  # The raw rewards' std (the old, mixed-scale denominator) differs on every trained prompt.
  trained = np.unique(prompt[rows])
  raw = np.array([np.std(rewards[valid & (prompt == i)], ddof=1) for i in trained])
  assert (np.abs(raw - std[trained]) > 1e-3).all()
