"""Tests for adaptive_rl.rl.advantages against plain float64 NumPy loops and hand-worked cases."""

from __future__ import annotations

import functools
import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_rl.allocation import advantages as alloc_adv
from adaptive_rl.rl import advantages as adv_lib

TOL = dict(rtol=1e-6, atol=1e-6)


# --- float64 references, written as loops over groups --------------------------------------

def ref_group_advantages(r, g, valid, num_groups, estimator, scale, eps=1e-6):
  r = np.asarray(r, np.float64)
  out = np.zeros(len(r))
  valid_r = r[valid]
  std_b = np.std(valid_r, ddof=1) if len(valid_r) >= 2 else 0.0
  for k in range(num_groups):
    idx = [j for j in range(len(r)) if valid[j] and g[j] == k]
    n = len(idx)
    if n < 2:
      continue
    rg = r[idx]
    for j in idx:
      if estimator == "grpo":
        c = r[j] - rg.mean()
      else:
        c = r[j] - (rg.sum() - r[j]) / (n - 1)
      denom = {"group": np.std(rg, ddof=1) + eps, "batch": std_b + eps, "none": 1.0}[scale]
      out[j] = c / denom
  return out


def random_batch(seed, n=24, num_groups=7, discrete=True):
  """Random flat batch with size-1 groups, empty groups, an all-equal group, garbage padding."""
  rng = np.random.default_rng(seed)
  g = rng.integers(0, num_groups - 2, size=n)  # the last two groups stay empty or tiny
  g[0] = num_groups - 2                         # a size-1 group
  g[1:4] = 0                                    # group 0 has >= 3 members ...
  if discrete:
    r = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], size=n)
  else:
    r = rng.uniform(0.0, 1.0, size=n)
  r[g == 0] = 0.7                               # ... all equal
  valid = rng.uniform(size=n) > 0.25
  valid[0:4] = True
  # Padding: garbage rewards and out-of-range ids must not matter.
  r = np.where(valid, r, np.nan)
  g = np.where(valid, g, -1)
  return r.astype(np.float32), g.astype(np.int32), valid


# --- group advantages ------------------------------------------------------------------------

@pytest.mark.parametrize("discrete", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_group_advantages_match_reference(estimator, scale, seed, discrete):
  r, g, valid = random_batch(seed, discrete=discrete)
  got = adv_lib.group_advantages(r, g, valid, 7, estimator=estimator, scale=scale)
  want = ref_group_advantages(r, g, valid, 7, estimator, scale)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, **TOL)
  # Padding, the size-1 group and the all-equal group are exactly zero.
  assert np.all(np.asarray(got)[~valid] == 0.0)
  assert np.all(np.asarray(got)[0:4] == 0.0)


def test_hand_computed_grpo_rloo_drgrpo():
  r = jnp.array([1.0, 0.0, 0.0, 1.0])
  g = jnp.zeros(4, jnp.int32)
  v = jnp.ones(4, bool)
  # mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735 -> A = 0.5 / 0.57735 = 0.866025.
  a = adv_lib.group_advantages(r, g, v, 1)
  np.testing.assert_allclose(a, [0.8660254, -0.8660254, -0.8660254, 0.8660254], atol=2e-6)
  # Dr.GRPO: r - mean = +-0.5.
  np.testing.assert_allclose(adv_lib.group_advantages(r, g, v, 1, scale="none"),
                             [0.5, -0.5, -0.5, 0.5], atol=1e-7)
  # RLOO: A = 1 - (0+0+1)/3 = 2/3 and 0 - 2/3 = -2/3.
  np.testing.assert_allclose(adv_lib.group_advantages(r, g, v, 1, estimator="rloo", scale="none"),
                             [2 / 3, -2 / 3, -2 / 3, 2 / 3], atol=1e-7)


def test_hand_computed_batch_scale():
  # Groups {1, 0} and {1, 1}; batch rewards [1, 0, 1, 1]: mean .75, unbiased var .25, std .5.
  # Group 0: r - mean = +-0.5 -> A = +-1 (up to eps); group 1 is all-equal -> 0.
  a = adv_lib.group_advantages(jnp.array([1.0, 0.0, 1.0, 1.0]), jnp.array([0, 0, 1, 1]),
                               jnp.ones(4, bool), 2, scale="batch")
  np.testing.assert_allclose(a, [0.5 / (0.5 + 1e-6), -0.5 / (0.5 + 1e-6), 0.0, 0.0], atol=1e-7)


def test_degenerate_groups_are_exactly_zero():
  # Size-1 group, an all-equal group of 0.7s (mean has rounding residue in f32), a group with
  # one valid member and one padding slot.
  r = jnp.array([0.3, 0.7, 0.7, 0.7, 1.0, 123.0])
  g = jnp.array([0, 1, 1, 1, 2, 2])
  v = jnp.array([True, True, True, True, True, False])
  for scale in adv_lib.SCALES:
    for est in adv_lib.GROUP_ESTIMATORS:
      a = adv_lib.group_advantages(r, g, v, 3, estimator=est, scale=scale)
      assert np.all(np.asarray(a) == 0.0), (est, scale, a)


def test_permutation_and_relabelling_invariance():
  r, g, valid = random_batch(3, discrete=False)
  perm = np.random.default_rng(0).permutation(len(r))
  relabel = np.array([3, 6, 0, 1, 5, 2, 4])  # a permutation of group ids
  g2 = np.where(valid, relabel[np.clip(g, 0, 6)], -1)
  for est in adv_lib.GROUP_ESTIMATORS:
    base = np.asarray(adv_lib.group_advantages(r, g, valid, 7, estimator=est))
    permuted = adv_lib.group_advantages(r[perm], g[perm], valid[perm], 7, estimator=est)
    np.testing.assert_allclose(permuted, base[perm], **TOL)
    relabelled = adv_lib.group_advantages(r, g2, valid, 7, estimator=est)
    np.testing.assert_allclose(relabelled, base, **TOL)


def test_group_advantages_under_jit():
  r, g, valid = random_batch(4)
  fn = jax.jit(adv_lib.group_advantages, static_argnames=("num_groups", "estimator", "scale"))
  for scale in adv_lib.SCALES:
    np.testing.assert_allclose(fn(r, g, valid, num_groups=7, scale=scale),
                               ref_group_advantages(r, g, valid, 7, "grpo", scale), **TOL)


_jit_grpo = jax.jit(functools.partial(adv_lib.group_advantages, num_groups=4))


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    r=st.lists(st.sampled_from([0.0, 0.2, 0.5, 1.0]), min_size=12, max_size=12),
    g=st.lists(st.integers(0, 3), min_size=12, max_size=12),
    v=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_grpo_groups_are_standardised(r, g, v):
  # Within every informative group: sum_j A_j = 0 and the unbiased std of A is
  # std_g / (std_g + eps) ~= 1 (std_g >= 0.1 / sqrt(2) for these reward values).
  r, g, v = np.array(r, np.float32), np.array(g, np.int32), np.array(v)
  a = np.asarray(_jit_grpo(r, g, v)).astype(np.float64)
  for k in range(4):
    sel = v & (g == k)
    if sel.sum() < 2 or np.all(r[sel] == r[sel][0]):
      assert np.all(a[sel] == 0.0)
      continue
    assert abs(a[sel].sum()) < 1e-5
    assert abs(np.std(a[sel], ddof=1) - 1.0) < 1e-4
  assert np.all(a[~v] == 0.0)


# --- baseline, clip, registry ----------------------------------------------------------------

def test_baseline_advantages_match_reference():
  rng = np.random.default_rng(5)
  r = rng.uniform(size=16).astype(np.float32)
  b = rng.uniform(size=16).astype(np.float32)
  s = rng.uniform(0.0, 0.5, size=16).astype(np.float32)
  s[:3] = 0.0  # std floor eps kicks in
  v = rng.uniform(size=16) > 0.3
  want_plain = np.where(v, r.astype(np.float64) - b, 0.0)
  want_std = np.where(v, (r.astype(np.float64) - b) / np.maximum(s.astype(np.float64), 1e-3), 0.0)
  np.testing.assert_allclose(adv_lib.baseline_advantages(r, b, v), want_plain, **TOL)
  got = jax.jit(adv_lib.baseline_advantages, static_argnames="eps")(r, b, v, std=s, eps=1e-3)
  np.testing.assert_allclose(got, want_std, rtol=1e-6, atol=1e-5)


def test_clip_advantages():
  a = jnp.array([-7.0, -2.0, 0.0, 3.0, 9.0])
  np.testing.assert_array_equal(adv_lib.clip_advantages(a, None), a)
  np.testing.assert_array_equal(adv_lib.clip_advantages(a, 0), a)
  np.testing.assert_array_equal(adv_lib.clip_advantages(a, 5.0), [-5, -2, 0, 3, 5])
  traced = jax.jit(adv_lib.clip_advantages)
  np.testing.assert_array_equal(traced(a, jnp.float32(2.5)), [-2.5, -2, 0, 2.5, 2.5])
  np.testing.assert_array_equal(traced(a, jnp.float32(0.0)), a)
  with pytest.raises(ValueError, match="advantage clip"):
    adv_lib.clip_advantages(a, -1.0)


def test_compute_advantages_dispatch():
  r, g, valid = random_batch(6)
  kw = dict(group_ids=g, num_groups=7)
  cases = {
      "grpo": ("grpo", "group"), "grpo_batch_std": ("grpo", "batch"),
      "dr_grpo": ("grpo", "none"), "rloo": ("rloo", "none"),
  }
  for name, (est, scale) in cases.items():
    np.testing.assert_allclose(adv_lib.compute_advantages(name, r, valid, **kw),
                               ref_group_advantages(r, g, valid, 7, est, scale), **TOL)
  clipped = adv_lib.compute_advantages("grpo", r, valid, clip=0.5, **kw)
  np.testing.assert_allclose(
      clipped, np.clip(ref_group_advantages(r, g, valid, 7, "grpo", "group"), -0.5, 0.5), **TOL)
  base = np.full(len(r), 0.5, np.float32)
  np.testing.assert_allclose(adv_lib.compute_advantages("global_baseline", r, valid, baseline=base),
                             np.where(valid, r.astype(np.float64) - 0.5, 0.0), **TOL)
  np.testing.assert_allclose(adv_lib.compute_advantages("raft", r - 0.5, valid),
                             np.where(valid, np.maximum(r.astype(np.float64) - 0.5, 0), 0), **TOL)
  assert set(cases) | {"global_baseline", "raft"} == set(adv_lib.ADVANTAGE_ESTIMATORS)


def test_compute_advantages_errors():
  r, g, valid = random_batch(7)
  with pytest.raises(ValueError, match="valid names:.*'grpo'"):
    adv_lib.compute_advantages("ppo", r, valid)
  with pytest.raises(ValueError, match="needs group_ids, num_groups"):
    adv_lib.compute_advantages("grpo", r, valid)
  with pytest.raises(ValueError, match="needs baseline"):
    adv_lib.compute_advantages("global_baseline", r, valid)
  with pytest.raises(ValueError, match="scale must be one of"):
    adv_lib.group_advantages(r, g, valid, 7, scale="std")
  with pytest.raises(ValueError, match="estimator must be one of"):
    adv_lib.group_advantages(r, g, valid, 7, estimator="gae")


# --- group statistics ------------------------------------------------------------------------

def test_group_stats_match_reference():
  rng = np.random.default_rng(8)
  n, num_groups, tau = 30, 8, 0.7
  g = rng.integers(0, 6, size=n).astype(np.int32)  # groups 6 and 7 empty
  r = rng.choice([0.0, 0.5, 0.8, 1.0], size=n).astype(np.float32)
  r[g == 1] = 1.0   # all correct
  r[g == 2] = 0.5   # all wrong (0.5 <= tau)
  v = rng.uniform(size=n) > 0.2
  stats = jax.jit(adv_lib.group_stats, static_argnames=("num_groups", "tau"))(
      r, g, v, num_groups=num_groups, tau=tau)
  for k in range(num_groups):
    rk = r[v & (g == k)].astype(np.float64)
    assert stats.count[k] == len(rk)
    np.testing.assert_allclose(stats.mean[k], rk.mean() if len(rk) else 0.0, **TOL)
    assert stats.num_correct[k] == np.sum(rk > tau)
    assert bool(stats.all_correct[k]) == (len(rk) > 0 and np.all(rk > tau))
    assert bool(stats.all_wrong[k]) == (len(rk) > 0 and not np.any(rk > tau))
  nonempty = [k for k in range(num_groups) if np.any(v & (g == k))]
  m = adv_lib.group_metrics(stats)
  assert int(m["num_groups"]) == len(nonempty)
  np.testing.assert_allclose(
      m["frac_all_correct"], np.mean([np.all(r[v & (g == k)] > tau) for k in nonempty]), **TOL)
  np.testing.assert_allclose(
      m["frac_all_wrong"], np.mean([not np.any(r[v & (g == k)] > tau) for k in nonempty]), **TOL)


def test_group_metrics_empty_batch_is_zero_not_nan():
  stats = adv_lib.group_stats(jnp.zeros(4), jnp.zeros(4, jnp.int32), jnp.zeros(4, bool), 2)
  m = adv_lib.group_metrics(stats)
  assert float(m["frac_all_correct"]) == 0.0 and float(m["frac_all_wrong"]) == 0.0
  assert not math.isnan(float(stats.mean[0]))


def test_rl_advantages_re_exports_the_allocation_estimators():
  # One implementation: the group roles (allocation/) and the losses (rl/) use the same objects.
  for name in ("ADVANTAGE_ESTIMATORS", "compute_advantages", "group_advantages",
               "baseline_advantages", "clip_advantages", "raft_advantages"):
    assert getattr(adv_lib, name) is getattr(alloc_adv, name), name
