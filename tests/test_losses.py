"""Tests for adaptive_rl.rl.losses against float64 NumPy token loops, plus gradient invariances."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_rl.rl import losses

TOL = dict(rtol=1e-6, atol=1e-6)
N, T = 6, 5


# --- float64 references, written as loops over tokens ----------------------------------------

def ref_surrogate(lp, olp, adv, eps_low, eps_high, c):
  loss = np.zeros(lp.shape)
  low, high, dual = (np.zeros(lp.shape, bool) for _ in range(3))
  for i in range(lp.shape[0]):
    for t in range(lp.shape[1]):
      a = float(adv[i] if adv.ndim == 1 else adv[i, t])
      rho = math.exp(min(max(float(lp[i, t]) - float(olp[i, t]), -20.0), 20.0))
      u = -a * rho
      cl = -a * min(max(rho, 1 - eps_low), 1 + eps_high)
      l = max(u, cl)
      low[i, t] = cl > u and rho < 1 - eps_low
      high[i, t] = cl > u and rho > 1 + eps_high
      if c is not None and a < 0:
        dual[i, t] = -a * c < l
        l = min(l, -a * c)
      loss[i, t] = l
  return loss, low, high, dual


def ref_kl(lp, rlp, name):
  out = np.zeros(lp.shape)
  for idx in np.ndindex(lp.shape):
    x, y = float(lp[idx]), float(rlp[idx])
    if name == "k1":
      out[idx] = x - y
    elif name == "k2":
      out[idx] = 0.5 * (x - y) ** 2
    else:
      d = min(max(y - x, -20.0), 20.0)
      out[idx] = min(max(math.exp(d) - d - 1.0, -10.0), 10.0)
  return out


def ref_aggregate(x, m, mode, max_len=None):
  if mode == "token-mean":
    return sum(x[i, t] for i in range(x.shape[0]) for t in range(x.shape[1]) if m[i, t]) / max(
        m.sum(), 1)
  per_seq = []
  for i in range(x.shape[0]):
    vals = [float(x[i, t]) for t in range(x.shape[1]) if m[i, t]]
    if not vals:
      continue  # a sequence without counted tokens is not in any seq-mean
    s = sum(vals)
    per_seq.append({"seq-mean-token-mean": s / len(vals), "seq-mean-token-sum": s,
                    "seq-mean-token-sum-norm": s / max_len}[mode])
  return sum(per_seq) / len(per_seq) if per_seq else 0.0


def random_tokens(seed, n=N, t=T):
  rng = np.random.default_rng(seed)
  logp = -rng.uniform(0.05, 4.0, size=(n, t))
  old = logp + rng.normal(0.0, 0.3, size=(n, t))  # ratios spread across both clip bounds
  ref = logp + rng.normal(0.0, 0.5, size=(n, t))
  adv = rng.normal(0.0, 1.0, size=n)
  mask = rng.uniform(size=(n, t)) > 0.3
  mask[1] = False  # a fully masked sequence
  mask[2] = True
  f32 = lambda a: a.astype(np.float32)
  return f32(logp), f32(old), f32(ref), f32(adv), mask


# --- ratio, surrogate, KL, entropy -----------------------------------------------------------

def test_ratio_and_log_ratio_clamped():
  lp = jnp.array([[0.0, -1.0, 30.0, -30.0]])
  old = jnp.array([[0.0, -0.5, 0.0, 0.0]])
  ratio, log_ratio = losses.ratio_and_log_ratio(lp, old)
  np.testing.assert_allclose(log_ratio, [[0.0, -0.5, 20.0, -20.0]], **TOL)
  np.testing.assert_allclose(ratio, np.exp([[0.0, -0.5, 20.0, -20.0]]), rtol=1e-6)


@pytest.mark.parametrize("token_adv", [False, True])
@pytest.mark.parametrize("dual_clip", [None, 1.5])
def test_clipped_surrogate_matches_reference(dual_clip, token_adv):
  lp, old, _, adv, _ = random_tokens(0, n=8, t=12)
  if token_adv:
    adv = np.random.default_rng(1).normal(size=lp.shape).astype(np.float32)
  fn = jax.jit(functools.partial(losses.clipped_surrogate, eps_low=0.2, eps_high=0.28,
                                 dual_clip=dual_clip))
  loss, info = fn(lp, old, adv)
  want, low, high, dual = ref_surrogate(lp, old, adv, 0.2, 0.28, dual_clip)
  np.testing.assert_allclose(loss, want, **TOL)
  np.testing.assert_array_equal(info.clipped_low, low)
  np.testing.assert_array_equal(info.clipped_high, high)
  np.testing.assert_array_equal(info.dual_clipped, dual)
  assert low.any() and high.any()  # the data exercises both clips
  if dual_clip is not None:
    assert dual.any()


def test_clipped_surrogate_hand_cases():
  # A=+1: rho=1.5 is clipped to 1.28 -> l=-1.28.  A=-1: rho=0.5 -> clip 0.8 -> l=max(.5,.8)=.8.
  # A=-1, rho=5: l = max(5, 1.28) = 5, dual clip c=3 -> 3.
  lp = jnp.log(jnp.array([[1.5, 0.5, 5.0]]))
  adv = jnp.array([[1.0, -1.0, -1.0]])
  loss, info = losses.clipped_surrogate(lp, jnp.zeros_like(lp), adv, dual_clip=3.0)
  np.testing.assert_allclose(loss, [[-1.28, 0.8, 3.0]], rtol=1e-6)
  np.testing.assert_array_equal(info.clipped_high, [[True, False, False]])
  np.testing.assert_array_equal(info.clipped_low, [[False, True, False]])
  np.testing.assert_array_equal(info.dual_clipped, [[False, False, True]])
  with pytest.raises(ValueError, match="dual_clip must be None or > 1"):
    losses.clipped_surrogate(lp, lp, adv, dual_clip=1.0)


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_kl_estimators_match_reference(name):
  lp, _, ref, _, _ = random_tokens(2)
  ref = ref.copy()
  ref[0, :3] = [40.0, -40.0, 95.0]  # k3 clamps; exp(95) would overflow f32
  got = losses.KL_ESTIMATORS[name](lp, ref)
  np.testing.assert_allclose(got, ref_kl(lp, ref, name), rtol=1e-6, atol=1e-5)
  grad = jax.grad(lambda x: jnp.sum(losses.KL_ESTIMATORS[name](x, ref)))(jnp.asarray(lp))
  assert np.all(np.isfinite(grad))
  assert losses.KL_ESTIMATORS["low_var_kl"] is losses.kl_k3


def test_token_entropy_matches_reference_and_is_stable():
  rng = np.random.default_rng(3)
  logits = (rng.normal(size=(3, 4, 11)) * 3).astype(np.float32)
  logits[0, 0] += 1e4          # huge shift: must not overflow
  logits[1, 1, :5] = -np.inf   # impossible tokens contribute nothing
  got = jax.jit(losses.token_entropy)(logits)
  want = np.zeros((3, 4))
  for idx in np.ndindex(3, 4):
    z = logits[idx].astype(np.float64)
    z = z - z.max()
    logp = z - math.log(np.exp(z).sum())
    want[idx] = -sum(math.exp(l) * l for l in logp if np.isfinite(l))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda x: jnp.sum(losses.token_entropy(x)))(jnp.asarray(logits))
  assert np.all(np.isfinite(grad))
  # Uniform over V gives log V.
  np.testing.assert_allclose(losses.token_entropy(jnp.zeros((1, 1, 7))), [[math.log(7)]], **TOL)


# --- aggregation, overlong penalty -----------------------------------------------------------

@pytest.mark.parametrize("mode", losses.LOSS_AGG_MODES)
def test_aggregate_matches_reference(mode):
  rng = np.random.default_rng(4)
  x = rng.normal(size=(N, T)).astype(np.float32)
  m = rng.uniform(size=(N, T)) > 0.4
  m[0] = False
  x[0] = np.nan  # fully masked garbage must not leak
  got = jax.jit(losses.aggregate, static_argnames=("mode", "max_len"))(x, m, mode=mode, max_len=7)
  np.testing.assert_allclose(got, ref_aggregate(x, m, mode, max_len=7), **TOL)
  empty = losses.aggregate(x, np.zeros_like(m), mode, max_len=7)
  assert float(empty) == 0.0


def test_aggregate_errors():
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="loss_agg mode must be one of"):
    losses.aggregate(x, x > 0, "sum")
  with pytest.raises(ValueError, match="max_len must be a positive int"):
    losses.aggregate(x, x > 0, "seq-mean-token-sum-norm")


def test_overlong_penalty():
  # L_max=20, L_cache=4: free up to 16, then -(L-16)/4, -1 from 20 on.
  lengths = jnp.array([0, 10, 16, 17, 18, 20, 21, 100])
  got = jax.jit(losses.overlong_penalty, static_argnums=(1, 2))(lengths, 20, 4)
  np.testing.assert_allclose(got, [0, 0, 0, -0.25, -0.5, -1, -1, -1], **TOL)
  np.testing.assert_allclose(losses.overlong_penalty(lengths, 20, 0), [0, 0, 0, 0, 0, 0, -1, -1])
  with pytest.raises(ValueError, match="cache_len must be in"):
    losses.overlong_penalty(lengths, 20, 21)
  with pytest.raises(ValueError, match="max_len must be > 0"):
    losses.overlong_penalty(lengths, 0, 0)


# --- LossConfig ------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("eps_low", -0.1), ("eps_low", 1.0), ("eps_high", -0.01), ("dual_clip", 1.0),
    ("dual_clip", 0.5), ("kl_coef", -1e-3), ("kl_estimator", "k4"),
    ("entropy_coef", float("nan")), ("loss_agg", "mean"), ("max_len", 0), ("max_len", 2.5),
    ("adv_clip", -1.0),
])
def test_loss_config_rejects_bad_values(field, value):
  with pytest.raises(ValueError, match=field):
    losses.LossConfig(**{field: value})


def test_loss_config_norm_mode_needs_max_len():
  with pytest.raises(ValueError, match="max_len is required"):
    losses.LossConfig(loss_agg="seq-mean-token-sum-norm")
  cfg = losses.LossConfig(loss_agg="seq-mean-token-sum-norm", max_len=64)
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.max_len = 3


# --- policy_loss -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", losses.LOSS_AGG_MODES)
def test_policy_loss_matches_reference(mode):
  lp, old, ref, adv, mask = random_tokens(5)
  ent = np.random.default_rng(6).uniform(0, 3, size=lp.shape).astype(np.float32)
  cfg = losses.LossConfig(loss_agg=mode, max_len=T, kl_coef=0.05, kl_estimator="k3",
                          entropy_coef=0.01, dual_clip=2.0, adv_clip=1.0)
  loss, metrics = jax.jit(functools.partial(losses.policy_loss, cfg))(lp, old, ref, adv, mask, ent)
  pg_tok, low, high, dual = ref_surrogate(lp, old, np.clip(adv, -1.0, 1.0), 0.2, 0.28, 2.0)
  pg = ref_aggregate(pg_tok, mask, mode, T)
  kl = ref_aggregate(ref_kl(lp, ref, "k3"), mask, mode, T)
  h = ref_aggregate(ent, mask, mode, T)
  np.testing.assert_allclose(loss, pg + 0.05 * kl - 0.01 * h, **TOL)
  np.testing.assert_allclose(metrics["pg_loss"], pg, **TOL)
  np.testing.assert_allclose(metrics["kl"], kl, **TOL)
  np.testing.assert_allclose(metrics["entropy"], h, **TOL)
  np.testing.assert_allclose(metrics["clip_frac"], (low | high)[mask].mean(), **TOL)
  np.testing.assert_allclose(metrics["dual_clip_frac"], dual[mask].mean(), **TOL)
  ratio = np.exp(lp.astype(np.float64) - old)
  np.testing.assert_allclose(metrics["ratio_mean"], ratio[mask].mean(), **TOL)
  np.testing.assert_allclose(metrics["ratio_max"], ratio[mask].max(), **TOL)


def test_on_policy_loss_is_plain_policy_gradient():
  # One PPO epoch: logp == old_logp so rho = 1, no clip is active and the loss is
  # token-mean(-A) = -sum_i A_i * n_i / sum_i n_i; d loss / d logp_it = -A_i * m_it / sum m.
  lp, _, _, adv, mask = random_tokens(7)
  cfg = losses.LossConfig()
  fn = lambda x: losses.policy_loss(cfg, x, lp, None, adv, mask)
  (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(jnp.asarray(lp))
  count = mask.sum()
  n_i = mask.sum(axis=1)
  np.testing.assert_allclose(loss, -np.sum(adv.astype(np.float64) * n_i) / count, **TOL)
  np.testing.assert_allclose(grad, -adv[:, None] * mask / count, **TOL)
  assert float(metrics["clip_frac"]) == 0.0 and float(metrics["ratio_mean"]) == 1.0
  # Same for the seq-mean modes, with the seq-level weights.
  for mode, w in [("seq-mean-token-mean", 1.0 / np.maximum(n_i, 1)),
                  ("seq-mean-token-sum", np.ones(N)), ("seq-mean-token-sum-norm", np.ones(N) / 9)]:
    cfg = losses.LossConfig(loss_agg=mode, max_len=9)
    g = jax.grad(lambda x: losses.policy_loss(cfg, x, lp, None, adv, mask)[0])(jnp.asarray(lp))
    n_seq = np.sum(n_i > 0)
    np.testing.assert_allclose(g, -(adv * w)[:, None] * mask / n_seq, **TOL)


def test_zero_advantage_gives_zero_gradient():
  lp, old, _, _, mask = random_tokens(8)
  cfg = losses.LossConfig()
  grad = jax.grad(lambda x: losses.policy_loss(cfg, x, old, None, np.zeros(N), mask)[0])(
      jnp.asarray(lp))
  assert np.all(np.asarray(grad) == 0.0)


@pytest.mark.parametrize("mode", losses.LOSS_AGG_MODES)
def test_gradient_finite_with_masked_garbage(mode):
  lp, old, ref, adv, mask = random_tokens(9)
  cfg = losses.LossConfig(loss_agg=mode, max_len=T, kl_coef=0.1, entropy_coef=0.01)
  ent = np.ones_like(lp)
  clean = losses.policy_loss(cfg, lp, old, ref, adv, mask, ent)[0]
  # Masked positions (incl. the fully masked row) full of -inf / NaN must change nothing.
  dirty = lambda a, v: np.where(mask, a, v).astype(np.float32)
  lp_d, old_d, ref_d = dirty(lp, -np.inf), dirty(old, np.nan), dirty(ref, np.nan)
  fn = lambda x: losses.policy_loss(cfg, x, old_d, ref_d, adv, mask, dirty(ent, np.nan))[0]
  loss, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(lp_d))
  np.testing.assert_allclose(loss, clean, **TOL)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~mask] == 0.0)


def test_all_masked_batch_is_zero():
  lp, old, ref, adv, _ = random_tokens(10)
  cfg = losses.LossConfig(kl_coef=0.1)
  mask = np.zeros(lp.shape, bool)
  (loss, metrics), grad = jax.value_and_grad(
      lambda x: losses.policy_loss(cfg, x, old, ref, adv, mask), has_aux=True)(jnp.asarray(lp))
  assert float(loss) == 0.0 and np.all(np.asarray(grad) == 0.0)
  assert all(np.isfinite(float(v)) for v in metrics.values())


def test_policy_loss_errors():
  lp, old, ref, adv, mask = random_tokens(11)
  with pytest.raises(ValueError, match="needs ref_logp"):
    losses.policy_loss(losses.LossConfig(kl_coef=0.1), lp, old, None, adv, mask)
  with pytest.raises(ValueError, match="needs entropy"):
    losses.policy_loss(losses.LossConfig(entropy_coef=0.1), lp, old, ref, adv, mask)
  _, metrics = losses.policy_loss(losses.LossConfig(), lp, old, None, adv, mask)
  assert "kl" not in metrics and "entropy" not in metrics
