"""Tests of the Bayesian selectors (MoPPS, DPS) against float64 NumPy loops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_rl.allocation import dps, mopps

P, B, C, STEPS = 40, 6, 16, 30


def _random_steps(seed):
  rng = np.random.default_rng(seed)
  for _ in range(STEPS):
    ids = rng.choice(P, size=B, replace=False)
    if rng.random() < 0.3:
      ids[-1] = P  # padding row
    yield rng, ids


# ----------------------------------------------------------------------------- MoPPS


def test_mopps_update_matches_numpy_loop():
  lam, a0, b0 = 0.5, 1.0, 2.0
  state = mopps.mopps_init(P, a0, b0)
  a_ref, b_ref = np.full(P, a0), np.full(P, b0)
  upd = jax.jit(mopps.mopps_update)
  for rng, ids in _random_steps(0):
    k = rng.integers(0, 9, size=B)
    s = rng.integers(0, 9, size=B) % (k + 1) / np.maximum(k, 1)
    state = upd(state, jnp.asarray(ids), jnp.asarray(s, jnp.float32), jnp.asarray(k), lam, a0, b0)
    for i, pid in enumerate(ids):
      if pid < P:
        a_ref[pid] = lam * a_ref[pid] + (1 - lam) * a0 + s[i] * k[i]
        b_ref[pid] = lam * b_ref[pid] + (1 - lam) * b0 + (1 - s[i]) * k[i]
  np.testing.assert_allclose(state.a, a_ref, rtol=1e-5)
  np.testing.assert_allclose(state.b, b_ref, rtol=1e-5)


def test_mopps_update_k1_has_no_precedence_bug():
  state = mopps.mopps_update(mopps.mopps_init(2), jnp.array([0]), jnp.array([1.0]),
                             jnp.array([1]), lam=0.5)
  # a = 0.5 * 1 + 0.5 * 1 + 1 * 1 = 2, b = 0.5 + 0.5 + 0 = 1.
  np.testing.assert_allclose(state.a, [2.0, 1.0])
  np.testing.assert_allclose(state.b, [1.0, 1.0])


def _trained_mopps(seed=1):
  rng = np.random.default_rng(seed)
  return mopps.MoPPSState(jnp.asarray(rng.uniform(0.5, 20, P), jnp.float32),
                          jnp.asarray(rng.uniform(0.5, 20, P), jnp.float32))


def test_mopps_topk_picks_smallest_distance():
  state = _trained_mopps()
  cands = jnp.asarray(np.random.default_rng(2).choice(P, size=C, replace=False), jnp.int32)
  rng = jax.random.key(3)
  got = jax.jit(mopps.mopps_select, static_argnames=("B", "mode"))(state, cands, rng, B=B)
  k_gamma, _ = jax.random.split(rng)
  gamma = np.asarray(jax.random.beta(k_gamma, state.a[cands], state.b[cands]), np.float64)
  want = np.asarray(cands)[np.argsort((gamma - 0.5)**2, kind="stable")[:B]]
  np.testing.assert_array_equal(np.sort(got), np.sort(want))


@pytest.mark.parametrize("skewed", [False, True])
def test_mopps_band_prefers_band_then_nearest(skewed):
  state = _trained_mopps()
  if skewed:  # most posteriors near 0.95: fewer than B candidates in the band
    state = mopps.MoPPSState(state.a.at[2:].set(95.0), state.b.at[2:].set(5.0))
  cands = jnp.arange(C, dtype=jnp.int32)
  rng = jax.random.key(4)
  got = np.asarray(mopps.mopps_select(state, cands, rng, B, mode="band"))
  gamma = np.asarray(jax.random.beta(jax.random.split(rng)[0], state.a[:C], state.b[:C]))
  inside = set(np.flatnonzero((gamma >= 0.3) & (gamma <= 0.7)).tolist())
  assert len(set(got.tolist())) == B
  assert (len(inside) < B) == skewed
  if len(inside) >= B:
    assert set(got.tolist()) <= inside
  else:
    outside = sorted(set(range(C)) - inside, key=lambda i: (gamma[i] - 0.5)**2)
    assert set(got.tolist()) == inside | set(outside[:B - len(inside)])
  with pytest.raises(ValueError, match="mode"):
    mopps.mopps_select(state, cands, rng, B, mode="nope")
  with pytest.raises(ValueError, match=r"allocator\.mopps\.lam must be in \[0\.0, 1\.0\]"):
    mopps.MoPPSSelect(B, lam=1.5)


# ----------------------------------------------------------------------------- DPS


def _phi(a):
  return a / a.sum(axis=0, keepdims=True)


class _DPSReference:
  """The spec's eager DPS filter in float64: every known unselected prompt predicts each step."""

  def __init__(self, a0, lam):
    self.a0, self.lam = a0, lam
    self.A = np.broadcast_to(a0, (P, 3, 3)).copy()
    self.mu = np.full((P, 3), 1 / 3)
    self.mu_prev = self.mu.copy()
    self.known = np.zeros(P, bool)

  def step(self, chosen):
    lam, a0 = self.lam, self.a0
    for pid in range(P):
      if pid in chosen:
        e = np.eye(3)[chosen[pid]]
        xi = np.outer(e, self.mu_prev[pid]) * _phi(self.A[pid])
        xi /= xi.sum()
        self.A[pid] = lam * self.A[pid] + (1 - lam) * a0 + xi
        self.mu[pid] = _phi(self.A[pid]) @ e
        self.mu_prev[pid] = e
        self.known[pid] = True
      elif self.known[pid]:
        self.A[pid] = lam * self.A[pid] + (1 - lam) * a0
        self.mu[pid] = _phi(self.A[pid]) @ self.mu[pid]
        self.mu_prev[pid] = self.mu[pid]

  def check(self, state):
    """The lazy state, brought up to date, equals the eager one."""
    full = jax.jit(dps.dps_materialise)(state, self.lam, self.a0)
    np.testing.assert_allclose(full.A, self.A, rtol=1e-5)
    np.testing.assert_allclose(full.mu, self.mu, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(full.mu_prev, self.mu_prev, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(full.known, self.known)
    np.testing.assert_allclose(np.asarray(full.mu).sum(-1), 1.0, rtol=1e-5)


def _dps_run(ref, steps, draw, seed, check_every):
  rng = np.random.default_rng(seed)
  state = dps.dps_init(P, ref.a0)
  upd = jax.jit(dps.dps_update)
  for t in range(steps):
    ids = draw(rng, t)
    n_samples = rng.integers(1, 9, size=len(ids))
    correct = rng.integers(0, 9, size=len(ids)) % (n_samples + 1)
    obs = dps.observe_state(jnp.asarray(correct), jnp.asarray(n_samples))
    state = upd(state, jnp.asarray(ids), obs, ref.lam, ref.a0)
    ref.step({int(pid): int(o) for pid, o in zip(ids, np.asarray(obs)) if pid < P})
    if (t + 1) % check_every == 0:
      ref.check(state)
  ref.check(state)
  return state


def test_dps_update_matches_numpy_loop():
  a0 = np.arange(1.0, 10.0).reshape(3, 3) / 3.0  # non-uniform prior: `known` matters
  ref = _DPSReference(a0, 0.7)
  steps = iter(_random_steps(5))
  _dps_run(ref, STEPS, lambda rng, t: next(steps)[1], 6, check_every=3)


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.7, 0.9, 1.0])
def test_dps_lazy_catch_up_over_long_gaps(lam):
  """Prompts left alone for up to ~300 steps: the catch-up's tail (repeated squaring) is used."""
  a0 = np.array([[1.0, 0.5, 2.0], [0.3, 1.0, 1.0], [2.0, 0.7, 0.4]])

  def draw(rng, t):  # a hot set visited often, the rest rarely
    hot = rng.choice(6, size=2, replace=False)
    cold = rng.choice(np.arange(6, P), size=1) if rng.random() < 0.1 else [P]
    return np.r_[hot, cold].astype(np.int32)

  ref = _DPSReference(a0, lam)
  state = _dps_run(ref, 320, draw, int(lam * 10), check_every=40)
  assert int(np.max(np.asarray(state.step - state.last)[np.asarray(state.known)])) > 100
  # Selection reads the caught-up beliefs.
  cands = jnp.arange(P, dtype=jnp.int32)
  got = jax.jit(dps.dps_select, static_argnames=("B",))(state, cands, B=5, lam=lam, A0=a0)
  want = np.argsort(-ref.mu[:, 1], kind="stable")[:5]
  np.testing.assert_allclose(np.sort(ref.mu[np.asarray(got), 1]), np.sort(ref.mu[want, 1]),
                             rtol=1e-5)


def test_observe_state_and_select():
  np.testing.assert_array_equal(
      dps.observe_state(jnp.array([0, 3, 8, 0]), jnp.array([8, 8, 8, 1])), [0, 1, 2, 0])
  mu = np.full((P, 3), 1 / 3, np.float32)
  mu[[3, 7, 11, 20]] = [[0.1, 0.8, 0.1], [0.5, 0.5, 0.0], [0.0, 0.9, 0.1], [0.0, 0.2, 0.8]]
  init = dps.dps_init(P)
  state = init._replace(rows=init.rows.at[:, 9:12].set(jnp.asarray(mu)))
  np.testing.assert_array_equal(state.mu, mu)
  cands = jnp.array([20, 3, 7, 11, 0], jnp.int32)
  got = jax.jit(dps.dps_select, static_argnames=("B",))(state, cands, B=3)
  np.testing.assert_array_equal(got, [11, 3, 7])
  # Entropy bonus: 3 -> 0.8 + 0.64 = 1.44, 0 -> 1/3 + ln 3 = 1.43, 11 -> 0.9 + 0.33 = 1.23,
  # 7 -> 0.5 + ln 2 = 1.19: the uniform prompt 0 enters, prompt 7 drops out.
  got = dps.dps_select(state, cands, 3, entropy_weight=1.0)
  np.testing.assert_array_equal(got, [3, 0, 11])
