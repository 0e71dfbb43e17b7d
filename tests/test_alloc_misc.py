"""Tests of the DAPO filter roles and the VAS sampler, a dataset-scale size check, and layering."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_rl.allocation import dps, knapsack, vas
from adaptive_rl.allocation.registry import build_allocator
from adaptive_rl.allocation.roles import PoolView

# ----------------------------------------------------------------------------- DAPO


def _dapo(b, n=4, max_gen_batches=3):
  a = build_allocator(dict(name="dapo_filter", dapo=dict(max_gen_batches=max_gen_batches)),
                      batch_prompts=b, group_size=n, tau=0.5)
  return a.budget, a.group


def _one_round_pool(rewards, valid, perm=None):
  """A pool of one round of [G, n] groups (prompt g owns row g), optionally shuffled."""
  g, n = rewards.shape
  prompt = np.repeat(np.arange(g), n)
  order = np.arange(g * n)
  perm = np.arange(g * n) if perm is None else perm
  return PoolView(prompt=jnp.asarray(prompt[perm], jnp.int32),
                  rewards=jnp.asarray(rewards.reshape(-1)[perm], jnp.float32),
                  valid=jnp.asarray(valid.reshape(-1)[perm]),
                  order=jnp.asarray(order[perm], jnp.int32))


def _trained_groups(out):
  """Chosen-prompt indices that train, in order of first appearance."""
  g = np.asarray(out.group)[np.asarray(out.valid)]
  return list(dict.fromkeys(g.tolist()))


def test_dapo_keeps_mixed_groups_ragged_and_flat():
  budget, group = _dapo(4, max_gen_batches=1)
  c = np.array([[0, 0, 0, 0], [1, 0, 1, 1], [1, 1, 1, 1], [0, 1, 0, 0]], np.float32)
  full = np.ones((4, 4), bool)
  plan = budget.plan((), budget.start((), jnp.arange(4)), 0)
  kept, done = jax.jit(budget.observe)(jnp.int32(0), plan, jnp.asarray(c.reshape(-1)))
  assert int(kept) == 2 and not bool(done)  # groups 1 and 3 are mixed; 4 were wanted
  form = jax.jit(group.form)
  assert _trained_groups(form(_one_round_pool(c, full))) == [1, 3]
  # Ragged groups: row 2 has only its 3 valid (correct) entries -> all equal -> dropped.
  valid = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], bool)
  c2 = c.copy()
  c2[2, 3] = 0
  ragged = plan._replace(slot_valid=jnp.asarray(valid.reshape(-1)))
  assert int(budget.observe(jnp.int32(0), ragged, jnp.asarray(c2.reshape(-1)))[0]) == 2
  assert _trained_groups(form(_one_round_pool(c2, valid))) == [1, 3]
  # A flat pool in any row order (groups by id, segment sums) keeps the same groups.
  perm = np.random.default_rng(0).permutation(16)
  assert sorted(_trained_groups(form(_one_round_pool(c, full, perm)))) == [1, 3]


def _run_dynamic_sampling(b, max_gen_batches, success, seed, n=4):
  """The rounds of dynamic sampling with the real roles, on the host: each round samples n for
  b fresh prompts until the budget has b mixed groups or ran max_gen_batches rounds."""
  budget, group = _dapo(b, n, max_gen_batches)
  rng = np.random.default_rng(seed)
  s, m = budget.num_slots, budget.num_slots * budget.max_rounds
  prompt, rewards = np.zeros(m, np.int32), np.zeros(m, np.float32)
  valid = np.zeros(m, bool)
  observe = jax.jit(budget.observe)
  state = budget.start((), jnp.arange(budget.num_prompts))
  kept, rounds, done = [], 0, False
  while rounds < budget.max_rounds and not done:
    plan = budget.plan((), state, rounds)
    r = (rng.random(s) < success).astype(np.float32)
    sl = slice(rounds * s, (rounds + 1) * s)
    prompt[sl], rewards[sl], valid[sl] = np.asarray(plan.slot_prompt), r, np.asarray(
        plan.slot_valid)
    groups = r.reshape(b, n).sum(1)
    kept += [rounds * b + j for j in range(b) if 0 < groups[j] < n]  # generation order
    state, done = observe(state, plan, jnp.asarray(r))
    rounds, done = rounds + 1, bool(done)
  pool = PoolView(prompt=jnp.asarray(prompt), rewards=jnp.asarray(rewards),
                  valid=jnp.asarray(valid), order=jnp.arange(m, dtype=jnp.int32))
  return int(state), rounds, done, pool, kept, jax.jit(group.form)(pool)


def test_dapo_fills_the_batch_and_truncates():
  filled, rounds, done, pool, kept, out = _run_dynamic_sampling(5, 10, success=0.5, seed=0)
  assert done and filled >= 5 and rounds < 10
  assert filled == len(kept)  # the budget counted every mixed group, the excess included
  # The first B kept groups in generation order train, with all n samples each; the rest were
  # truncated.
  assert _trained_groups(out) == kept[:5]
  assert int(np.sum(out.valid)) == 5 * 4
  r = np.asarray(pool.rewards)[np.asarray(out.index)[np.asarray(out.valid)]].reshape(5, 4)
  assert ((r.sum(1) > 0) & (r.sum(1) < 4)).all()


def test_dapo_cap_hit_trains_on_what_was_kept():
  # success 0.03: most groups are all-wrong, so 3 rounds of 8 cannot fill 8 slots.
  filled, rounds, done, _, kept, out = _run_dynamic_sampling(8, 3, success=0.03, seed=1)
  assert rounds == 3 and not done and filled == len(kept) < 8
  assert _trained_groups(out) == kept
  assert int(np.sum(out.valid)) == 4 * len(kept)
  for bad in (0, -1):
    with pytest.raises(ValueError, match="max_gen_batches"):
      _dapo(8, max_gen_batches=bad)


# ----------------------------------------------------------------------------- VAS


def test_vps_scores_normalised():
  p = jnp.array([0.0, 0.5, 0.25, 1.0, 0.9])
  d = jnp.array([0.1, 0.0, 1.0, 0.3, 0.5])
  got = np.asarray(jax.jit(vas.vps_scores)(p, d))
  raw = 0.8 * np.asarray(p) * (1 - np.asarray(p)) + 0.2 * np.asarray(d)
  np.testing.assert_allclose(got, (raw - raw.min()) / (raw.max() - raw.min()), rtol=1e-6)
  assert got.min() == 0.0 and got.max() == 1.0
  np.testing.assert_array_equal(vas.vps_scores(jnp.full(3, 0.5), jnp.zeros(3)), [1, 1, 1])
  valid = jnp.array([True, True, False, True, True])  # drop the top scorer from min / max
  got = np.asarray(vas.vps_scores(p, d, valid=valid))
  keep = np.asarray(valid)
  want = (raw - raw[keep].min()) / (raw[keep].max() - raw[keep].min())
  np.testing.assert_allclose(got[keep], want[keep], rtol=1e-6)
  assert got[2] == 0.0


def test_vas_select_proportions():
  scores = jnp.array([0.0, 0.1, 0.2, 0.3, 0.4, 1.0, 0.5, 0.5])
  b, lam = 40000, 0.5
  ids = np.asarray(jax.jit(vas.vas_select, static_argnames=("B", "lam"))(
      scores, jax.random.key(0), B=b, lam=lam))
  k = int(lam * b)
  prop = np.bincount(ids[:k], minlength=8) / k
  want = np.asarray(scores) / float(scores.sum())
  # Multinomial std at n = 20000 is at most 0.0035: 5 sigma.
  np.testing.assert_allclose(prop, want, atol=0.018)
  assert prop[0] == 0.0  # zero score, never drawn by score
  unif = np.bincount(ids[k:], minlength=8) / (b - k)
  np.testing.assert_allclose(unif, 1 / 8, atol=0.012)
  # floor(lam * B): B = 7, lam = 0.5 -> 3 drawn by score (all on the only non-zero score).
  ids = np.asarray(vas.vas_select(jnp.zeros(8).at[5].set(1.0), jax.random.key(1), 7, 0.5))
  assert ids.shape == (7,) and (ids[:3] == 5).all() and ((0 <= ids) & (ids < 8)).all()


def test_vas_state_update():
  state = vas.vas_init(4)
  state = vas.vas_update(state, jnp.array([1, 2, 4]), jnp.array([1.0, 0.0, 0.3]), ema=0.5)
  np.testing.assert_allclose(state.p, [0.5, 1.0, 0.0, 0.5])
  state = jax.jit(vas.vas_update, static_argnames=("ema",))(
      state, jnp.array([1, 3]), jnp.array([0.0, 0.2]), ema=0.5,
      diversity_obs=jnp.array([0.7, 0.1]))
  np.testing.assert_allclose(state.p, [0.5, 0.5, 0.0, 0.2])
  np.testing.assert_allclose(state.diversity, [0.0, 0.7, 0.0, 0.1])
  np.testing.assert_array_equal(state.seen, [False, True, True, True])
  with pytest.raises(ValueError, match=r"allocator\.vas\.lam"):
    vas.VASSelect(4, lam=2.0)


# ----------------------------------------------------------------------------- scale


def test_dataset_scale_updates_have_no_quadratic_intermediates():
  """Compile (never run) the per-prompt updates for 1M prompts and bound their scratch memory."""
  num, b = 1_000_000, 256
  spec = jax.ShapeDtypeStruct
  ids = spec((b,), jnp.int32)
  cases = [
      (dps.dps_update, jax.eval_shape(lambda: dps.dps_init(num)), (ids, ids, 0.7, 1.0)),
      (knapsack.knapsack_history_update, jax.eval_shape(lambda: knapsack.knapsack_history_init(
          num)), (ids, spec((8 * b,), jnp.float32), spec((8 * b,), jnp.int32),
                  spec((8 * b,), bool))),
  ]
  for fn, state, args in cases:
    analysis = jax.jit(fn).lower(state, *args).compile().memory_analysis()
    if analysis is None:
      pytest.skip("backend reports no memory analysis")
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    assert analysis.temp_size_in_bytes < 2 * state_bytes, fn.__name__


# ----------------------------------------------------------------------------- layering


def test_allocation_never_imports_rl():
  """models <- sampling <- allocation <- rl <- launch: no module under allocation/ imports rl."""
  import ast  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  root = pathlib.Path(__file__).resolve().parents[1] / "adaptive_rl" / "allocation"
  bad = []
  for path in sorted(root.glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      bad += [f"{path.name}: {n}" for n in names
              if n == "adaptive_rl.rl" or n.startswith("adaptive_rl.rl.")]
  assert not bad, bad
