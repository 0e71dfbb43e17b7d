"""Tests of the Knapsack RL allocation kernels against brute force and a NumPy reference."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_rl.allocation import knapsack as ks

UNKNOWN = -1.0  # marker in the test instances: prompt has no estimate
INTERIOR = (0.1, 0.25, 0.5, 0.7, 0.9, 0.95)


def _value(num, p):
  return (1.0 - p**num - (1.0 - p)**num) * p * (1.0 - p)**2


def _spread(amount, mask):
  out = np.zeros(mask.shape, np.int64)
  idx = np.flatnonzero(mask)
  if len(idx):
    out[idx] = amount // len(idx)
    out[idx[:amount % len(idx)]] += 1
  return out


def _brute(p_items, n_low, max_extra, budget):
  """Best sum Value(n_low + k_i, p_i) over k in {0..K}^m with sum k == budget."""
  best = -np.inf
  for ks_ in itertools.product(range(max_extra + 1), repeat=len(p_items)):
    if sum(ks_) == budget:
      best = max(best, sum(_value(n_low + k, p) for k, p in zip(ks_, p_items)))
  return best


def _reference(p, elig, total, n, n_low, n_up, n_pos, n_neg, conf=0.9):
  """The spec's rules in float64. Returns (alloc with mid DP extras zeroed, w*, best value)."""
  known = p != UNKNOWN
  unknown, kn = elig & ~known, elig & known
  zero, one = kn & (p == 0), kn & (p == 1)
  mid = kn & (p > 0) & (p < 1)
  base = n * unknown + n_low * mid + n_neg * zero + n_pos * one
  rest = total - base.sum()
  if not mid.any():
    return base + _spread(rest, zero if zero.any() else elig), None, None
  need = sum(int(min(n_up, math.log(1 - conf) / math.log(max(q, 1 - q)))) for q in p[mid])
  others = elig & ~mid
  target = zero if zero.any() else others
  excess = rest - need if (need < rest and target.any()) else 0
  dp_budget = rest - excess
  max_extra = n_up - n_low
  w_star = min(dp_budget, mid.sum() * max_extra)
  alloc = base + _spread(excess, target) + _spread(dp_budget - w_star, mid)
  return alloc, w_star, _brute(list(p[mid]), n_low, max_extra, w_star)


def _instances(rng, count, b):
  choices = np.array([0.0, 1.0, UNKNOWN] + list(INTERIOR))
  p = rng.choice(choices, size=(count, b))
  elig = rng.random((count, b)) < 0.85
  return p, elig


@pytest.mark.parametrize("n,n_low,n_up,n_pos,n_neg", [(2, 1, 5, 1, 1), (4, 2, 6, 0, 3)])
def test_allocate_matches_brute_force_across_budgets(n, n_low, n_up, n_pos, n_neg):
  b = 4
  rng = np.random.default_rng(n * 7 + n_up)
  p, elig = _instances(rng, 96, b)
  worst = b * max(n, n_low, n_pos, n_neg)
  for total in (worst, worst + 3, worst + 7, worst + 13):
    fn = jax.jit(jax.vmap(lambda q, k, e, total=total: ks.knapsack_allocate(
        q, k, e, total, n, n_low, n_up, n_pos, n_neg)))
    got = np.asarray(fn(jnp.asarray(np.clip(p, 0, 1), jnp.float32), jnp.asarray(p != UNKNOWN),
                        jnp.asarray(elig)))
    for i in range(len(p)):
      ref, w_star, best = _reference(p[i], elig[i], total, n, n_low, n_up, n_pos, n_neg)
      if elig[i].any():
        assert got[i].sum() == total, (p[i], elig[i], got[i])
      mid = elig[i] & (p[i] > 0) & (p[i] < 1)
      np.testing.assert_array_equal(got[i][~mid], ref[~mid], err_msg=str((p[i], elig[i])))
      if w_star is None:
        continue
      extra = got[i][mid] - ref[mid]  # what the DP handed out
      assert extra.min() >= 0 and extra.max() <= n_up - n_low
      assert extra.sum() == w_star
      val = sum(_value(n_low + k, q) for k, q in zip(extra, p[i][mid]))
      np.testing.assert_allclose(val, best, rtol=1e-5, err_msg=str((p[i], got[i])))


def test_dp_matches_brute_force():
  rng = np.random.default_rng(0)
  for m, max_extra in [(1, 4), (3, 3), (5, 2), (4, 4)]:
    max_budget = m * max_extra + 2
    fn = jax.jit(lambda q, it, w, max_extra=max_extra, max_budget=max_budget: ks.knapsack_dp(
        q, it, w, 2, max_extra, max_budget))
    for _ in range(6):
      p = rng.uniform(0.02, 0.98, size=m + 2)
      items = np.r_[np.ones(m, bool), np.zeros(2, bool)]
      rng.shuffle(items)
      for budget in range(max_budget + 1):
        extra = np.asarray(fn(jnp.asarray(p, jnp.float32), jnp.asarray(items), budget))
        assert (extra[~items] == 0).all()
        w_star = min(budget, m * max_extra)
        assert extra.sum() == w_star
        got = sum(_value(2 + k, q) for k, q in zip(extra[items], p[items]))
        np.testing.assert_allclose(got, _brute(list(p[items]), 2, max_extra, w_star), rtol=1e-5)


def test_k0_is_valued_at_n_low():
  # p = (0.5, 0.1), N_low = 2, two extras. Fixed objective: (2, 0) scores
  # V(4,.5) + V(2,.1) = 0.1094 + 0.0154 = 0.1248 > (1, 1) = V(3,.5) + V(3,.1) = 0.0938 + 0.0219.
  # The official quirk (k = 0 worth 0) would score (2, 0) as 0.1094 and pick (1, 1).
  extra = ks.knapsack_dp(jnp.array([0.5, 0.1]), jnp.array([True, True]), jnp.int32(2), 2, 2, 4)
  np.testing.assert_array_equal(extra, [2, 0])


def test_special_cases():
  fn = jax.jit(jax.vmap(lambda p, known: ks.knapsack_allocate(p, known, jnp.ones(3, bool), 24)))
  p = jnp.array([[0.3, 0.3, 0.3], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.0, 1.0]])
  known = jnp.array([[False] * 3, [True] * 3, [True] * 3, [True] * 3])
  got = np.asarray(fn(p, known))
  np.testing.assert_array_equal(got, [
      [8, 8, 8],  # all unknown: n each
      [11, 2, 11],  # no interior prompt: the rest 24 - 6 goes evenly to the p == 0 prompts
      [8, 8, 8],  # only p == 1 prompts: the rest is spread over every eligible prompt
      # Cost cap: p = 0.5 needs floor(ln 0.1 / ln 0.5) = 3 rollouts < rest 18, so the DP
      # spends 3 on it (2 + 3) and the excess 15 goes to the p == 0 prompt (2 + 15).
      [5, 17, 2],
  ])


def test_budget_validation_names_the_numbers():
  with pytest.raises(ValueError, match=r"total_budget=7 .*4 \* 2 = 8"):
    ks.check_budget(4, 7, 2, 2, 2, 2)
  with pytest.raises(ValueError, match="worst-case"):
    ks.check_budget(4, 16, 8, 2, 2, 2)
  with pytest.raises(ValueError, match=r"allocator\.knapsack: .*worst-case"):
    ks.KnapsackBudget(4, 8, n_pos=12)  # B n = 32 < B max(n, n_pos) = 48
  with pytest.raises(ValueError, match="n_up"):
    ks.KnapsackBudget(4, 8, n_low=4, n_up=3)
  with pytest.raises(ValueError, match="total_budget=7"):
    ks.knapsack_allocate(jnp.zeros(4), jnp.ones(4, bool), jnp.ones(4, bool), 7, 2, 2, 8, 2, 2)
  s = ks.KnapsackBudget(4, 8)
  assert s.num_slots == 32
  out = jax.jit(s.allocate)(jnp.array([0.2, 0.5, 0.0, 1.0]), jnp.ones(4, bool), jnp.ones(4, bool))
  assert int(out.sum()) == 32


def _history_reference(visits, num_prompts, window, min_known):
  hist = [[] for _ in range(num_prompts)]
  last = [[] for _ in range(num_prompts)]
  for pid_rewards in visits:
    for pid, rewards in pid_rewards.items():
      if rewards:
        hist[pid].extend(rewards)
        last[pid] = list(rewards)
  p_hat = np.zeros(num_prompts)
  for i in range(num_prompts):
    if len(last[i]) >= window:
      p_hat[i] = np.mean(last[i])
    elif hist[i]:
      p_hat[i] = np.mean(hist[i][-window:])
  known = np.array([len(h) >= min_known for h in hist])
  return p_hat, known


def test_history_matches_reference():
  rng = np.random.default_rng(1)
  num_prompts, window, b, t = 12, 16, 4, 48
  state = ks.knapsack_history_init(num_prompts, window)
  update = jax.jit(ks.knapsack_history_update)
  visits = []
  for _ in range(25):
    ids = rng.choice(num_prompts, size=b, replace=False)
    if rng.random() < 0.3:
      ids[-1] = num_prompts  # a padding row
    group = rng.integers(0, b, size=t)
    valid = rng.random(t) < rng.uniform(0.1, 1.0)
    rewards = rng.choice([0.0, 1.0, 0.5], size=t)
    visit = {}
    for j, pid in enumerate(ids):
      if pid < num_prompts:
        visit[int(pid)] = [float(r) for r, g, v in zip(rewards, group, valid) if v and g == j]
    visits.append(visit)
    state = update(state, jnp.asarray(ids, jnp.int32), jnp.asarray(rewards, jnp.float32),
                   jnp.asarray(group, jnp.int32), jnp.asarray(valid))
  p_ref, known_ref = _history_reference(visits, num_prompts, window, 8)
  p_hat, known = jax.jit(ks.knapsack_estimate)(state, jnp.arange(num_prompts))
  np.testing.assert_allclose(p_hat, p_ref, atol=1e-6)
  np.testing.assert_array_equal(known, known_ref)


def _dp_reference(p_items, n_low, max_extra, budget):
  """The spec's DP in float64: best sum Value(n_low + k_i, p_i) with sum k_i == budget."""
  best = np.zeros(1)  # best[w] over the items so far
  for q in p_items:
    vals = _value(n_low + np.arange(max_extra + 1), q)
    nxt = np.full(len(best) + max_extra, -np.inf)
    for k, v in enumerate(vals):
      nxt[k:k + len(best)] = np.maximum(nxt[k:k + len(best)], best + v)
    best = nxt
  return best[budget]


def test_dp_matches_float64_dp_at_quickstart_size():
  """B = 32 prompts, N_up - N_low = 126 extras, every budget up to 256: the greedy marginal
  allocation (Value is concave in N) reaches the DP's optimum."""
  rng = np.random.default_rng(3)
  b, n_low, max_extra, max_budget = 32, 2, 126, 256
  fn = jax.jit(lambda q, it, w: ks.knapsack_dp(q, it, w, n_low, max_extra, max_budget))
  for trial in range(4):
    p = rng.choice([rng.uniform(0.01, 0.99), 0.5, 0.03, 0.97], size=b) if trial == 3 else \
        rng.beta(0.5, 0.5, size=b).clip(0.01, 0.99)
    items = rng.random(b) < 0.7
    for budget in (0, 1, 7, 64, 200, 256):
      extra = np.asarray(fn(jnp.asarray(p, jnp.float32), jnp.asarray(items), budget))
      assert (extra[~items] == 0).all() and extra.min() >= 0 and extra.max() <= max_extra
      w_star = min(budget, items.sum() * max_extra)
      assert extra.sum() == w_star
      got = sum(_value(n_low + k, q) for k, q in zip(extra[items], p[items]))
      np.testing.assert_allclose(got, _dp_reference(p[items], n_low, max_extra, w_star),
                                 rtol=1e-6)
