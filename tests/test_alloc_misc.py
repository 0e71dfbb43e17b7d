"""Tests of the DAPO filter / accumulator and the VAS sampler, plus a dataset-scale size check."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_rl.allocation import dapo, dps, knapsack, vas

# ----------------------------------------------------------------------------- DAPO


def test_dapo_keep_matrix_and_flat():
  c = jnp.array([[0, 0, 0, 0], [1, 0, 1, 1], [1, 1, 1, 1], [0, 1, 0, 0]])
  np.testing.assert_array_equal(jax.jit(dapo.dapo_keep)(c), [False, True, False, True])
  # Ragged groups: row 2 has only its 3 valid (correct) entries -> all equal -> dropped.
  valid = jnp.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], bool)
  c2 = c.at[2, 3].set(0)
  np.testing.assert_array_equal(dapo.dapo_keep(c2, valid), [False, True, False, True])
  flat = c.reshape(-1)
  gid = jnp.repeat(jnp.arange(4), 4)
  got = jax.jit(dapo.dapo_keep_flat, static_argnames=("num_groups",))(flat, gid, num_groups=4)
  np.testing.assert_array_equal(got, dapo.dapo_keep(c))


_accumulate = jax.jit(dapo.dapo_accumulate)


def _run_dynamic_sampling(capacity, max_gen_batches, success, seed):
  """The host loop of dynamic sampling; rows carry (batch, group) so we can audit the order."""
  rng = np.random.default_rng(seed)
  g, n = 5, 4
  buf = dapo.dapo_buffer_init({"tag": jnp.zeros((capacity, 2), jnp.int32),
                               "rewards": jnp.zeros((capacity, n))})
  generated = []
  while bool(dapo.dapo_should_continue(buf, max_gen_batches)):
    batch = int(buf.batches)
    rewards = (rng.random((g, n)) < success).astype(np.float32)
    tag = np.stack([np.full(g, batch), np.arange(g)], axis=1).astype(np.int32)
    keep = dapo.dapo_keep(jnp.asarray(rewards) > 0.5)
    generated.extend(t for t, k in zip(tag.tolist(), np.asarray(keep)) if k)
    buf = _accumulate(buf, {"tag": jnp.asarray(tag), "rewards": jnp.asarray(rewards)}, keep)
  return buf, generated


def test_dapo_fills_buffer_and_truncates():
  buf, kept = _run_dynamic_sampling(capacity=8, max_gen_batches=0, success=0.5, seed=0)
  assert bool(dapo.dapo_buffer_full(buf)) and int(buf.filled) >= 8
  # The buffer holds the first B kept groups in generation order; the rest were truncated.
  np.testing.assert_array_equal(buf.data["tag"], kept[:8])
  r = np.asarray(buf.data["rewards"])
  assert ((r.sum(1) > 0) & (r.sum(1) < 4)).all()
  assert float(dapo.dapo_kept_fraction(buf)) == pytest.approx(len(kept) / (5 * int(buf.batches)))


def test_dapo_cap_hit_trains_on_what_was_kept():
  # success 0.03: most groups are all-wrong, so 3 batches of 5 cannot fill 8 slots.
  buf, kept = _run_dynamic_sampling(capacity=8, max_gen_batches=3, success=0.03, seed=1)
  assert int(buf.batches) == 3 and not bool(dapo.dapo_buffer_full(buf))
  valid = np.asarray(dapo.dapo_buffer_valid(buf))
  assert valid.sum() == len(kept) < 8
  np.testing.assert_array_equal(np.asarray(buf.data["tag"])[valid], np.array(kept).reshape(-1, 2))
  assert float(dapo.dapo_kept_fraction(buf)) == pytest.approx(len(kept) / 15)
  with pytest.raises(ValueError, match="max_gen_batches"):
    dapo.dapo_should_continue(buf, -1)


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
  with pytest.raises(ValueError, match="VASSettings.lam"):
    vas.VASSettings(lam=2.0)


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
