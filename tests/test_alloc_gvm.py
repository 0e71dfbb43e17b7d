"""Tests of the GVM allocation kernels against the formula in float64 NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from adaptive_rl.allocation import gvm

B = 12
_alloc = jax.jit(gvm.gvm_allocate, static_argnames=("alpha", "beta", "filter_threshold",
                                                     "filter_insufficient", "n_unknown"))


def _weights64(p, g, alpha=1e-3, beta=2.0, threshold=1.0):
  w = np.zeros_like(p)
  ok = (p > 0) & (g > 0) & (p <= threshold)
  with np.errstate(over="ignore"):  # subnormal p: alpha / p overflows to inf, w -> 0 as in JAX
    w[ok] = g[ok] / np.sqrt(p[ok] + alpha / p[ok]**(beta - 1))
  return w


def _largest_remainder64(w, total):
  share = total * w / w.sum()
  fl = np.floor(share).astype(np.int64)
  rem = total - fl.sum()
  order = np.argsort(-(share - fl), kind="stable")
  fl[order[:rem]] += 1
  return fl


_rates = st.lists(st.sampled_from([0.0, 0.125, 0.25, 0.5, 0.75, 0.875, 1.0]) | st.floats(0, 1),
                  min_size=B, max_size=B)
_norms = st.lists(st.just(0.0) | st.floats(0.01, 50.0), min_size=B, max_size=B)


@settings(max_examples=40, deadline=None)
@given(p=_rates, g=_norms, total=st.integers(0, 4000))
def test_allocation_matches_float64_formula(p, g, total):
  p, g = np.array(p), np.array(g)
  w = _weights64(p, g)
  with jax.enable_x64(True):
    got = np.asarray(_alloc(jnp.asarray(p), jnp.asarray(g), jnp.int32(total)))
  assert got.sum() == total
  want = (_largest_remainder64(w, total) if w.sum() > 0 else
          _largest_remainder64(np.ones(B), total))
  np.testing.assert_array_equal(got, want)
  assert (got[w == 0] == 0).all() or w.sum() == 0


@settings(max_examples=30, deadline=None)
@given(p=_rates, g=_norms, total=st.integers(0, 100000), mask=st.lists(st.booleans(),
                                                                       min_size=B, max_size=B))
def test_float32_sum_is_exact_and_close_to_ideal(p, g, total, mask):
  p, g, mask = np.array(p), np.array(g), np.array(mask)
  mask[0] = True
  got = np.asarray(_alloc(jnp.asarray(p, jnp.float32), jnp.asarray(g, jnp.float32),
                          jnp.int32(total), eligible=jnp.asarray(mask)))
  assert got.sum() == total and (got >= 0).all() and (got[~mask] == 0).all()
  # The reference works in float32 like the kernel: p = 1e-197 is 0 there, XLA:CPU flushes
  # subnormals (p < 1.2e-38) to 0, and a p just above overflows alpha / p to inf (w = 0), where
  # float64 would keep a tiny weight that takes the whole budget.
  p32, g32 = p.astype(np.float32), g.astype(np.float32)
  tiny = np.finfo(np.float32).tiny
  p32[np.abs(p32) < tiny], g32[np.abs(g32) < tiny] = 0, 0
  w = _weights64(p32, g32).astype(np.float64) * mask
  w = w if w.sum() > 0 else mask.astype(float)
  assert np.abs(got - total * w / w.sum()).max() < 1.0 + 1e-3 * total / B


def test_weights_formula_and_zeroing():
  p = np.array([0.0, 0.1, 0.5, 0.9, 1.0, 0.5])
  g = np.array([3.0, 2.0, 1.0, 0.5, 1.0, 0.0])
  for alpha, beta, thr in [(1e-3, 2.0, 1.0), (0.1, 3.0, 0.8)]:
    got = gvm.gvm_weights(jnp.asarray(p, jnp.float32), jnp.asarray(g, jnp.float32), alpha, beta,
                          thr)
    np.testing.assert_allclose(got, _weights64(p, g, alpha, beta, thr), rtol=1e-6)
  assert float(gvm.gvm_weights(jnp.array([0.95]), jnp.array([1.0]), filter_threshold=0.9)[0]) == 0


def test_unknown_prompts_and_filters():
  p = jnp.array([0.5, 0.5, 0.02, 0.3])
  g = jnp.array([1.0, 1.0, 1.0, 1.0])
  known = jnp.array([True, True, True, False])
  out = np.asarray(gvm.gvm_allocate(p, g, 40, known=known, n_unknown=8))
  assert out[3] == 8 and out.sum() == 40
  # The p = 0.02 prompt has the largest weight (1 / sqrt(0.07)) but p * n_i = 0.02 * 18.3 < 1:
  # the filter zeroes it.
  out = np.asarray(gvm.gvm_allocate(p, g, 40, known=known, n_unknown=8, filter_insufficient=1.0))
  np.testing.assert_array_equal(out, [16, 16, 0, 8])
  # Every weight zero: uniform over the eligible prompts.
  out = np.asarray(gvm.gvm_allocate(jnp.zeros(4), g, 10))
  np.testing.assert_array_equal(out, [3, 3, 2, 2])
  with pytest.raises(ValueError, match="n_unknown"):
    gvm.gvm_allocate(p, g, 10, n_unknown=8)
  with pytest.raises(ValueError, match=r"allocator\.gvm\.ema"):
    gvm.GVMBudget(4, 8, ema=1.0)


def test_online_state_last_visit_and_ema():
  state = gvm.gvm_init(5)
  upd = jax.jit(gvm.gvm_update, static_argnames=("ema",))
  state = upd(state, jnp.array([1, 3, 5]), jnp.array([0.5, 0.0, 0.9]), jnp.array([2.0, 7.0, 1.0]),
              jnp.array([True, False, True]), ema=0.5)
  p, g, known = gvm.gvm_estimate(state, jnp.arange(5))
  np.testing.assert_allclose(p, [0, 0.5, 0, 0.0, 0])  # first visit replaces; id 5 is padding
  np.testing.assert_allclose(g, [0, 2.0, 0, 0, 0])  # G only where a correct sample existed
  np.testing.assert_array_equal(known, [False, True, False, True, False])
  state = upd(state, jnp.array([1, 3]), jnp.array([1.0, 0.5]), jnp.array([4.0, 6.0]),
              jnp.array([True, True]), ema=0.5)
  p, g, _ = gvm.gvm_estimate(state, jnp.arange(5))
  np.testing.assert_allclose(p, [0, 0.75, 0, 0.25, 0])
  np.testing.assert_allclose(g, [0, 3.0, 0, 6.0, 0])  # id 3: first G observation replaces
