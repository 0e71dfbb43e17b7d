"""The train step's prompt sharing (`StepConfig.share_prompts`): each chosen prompt's forward
pass once, its completions attending to its keys / values, gives the same update as running
every row's prompt + completion, with fewer FLOPs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adaptive_rl import models
from adaptive_rl.allocation.registry import build_allocator
from adaptive_rl.rl.losses import LossConfig
from adaptive_rl.rl.rl_step import RLStep
from adaptive_rl.rl.step import StepConfig
from adaptive_rl.rl.train_state import TrainState, new_counters
from adaptive_rl.sampling import Sample, SamplerConfig

_PROMPTS, _P, _N, _DATA = 3, 6, 5, 7


def _reward(tokens, lens, targets):
  del targets
  valid = jnp.arange(tokens.shape[1])[None] < lens[:, None]
  return jnp.sum(valid & (tokens % 2 == 0), axis=1) / jnp.maximum(lens, 1)


def _data():
  rng = np.random.default_rng(0)
  lengths = np.array([6, 2, 4, 1, 5, 3, 6], np.int32)
  prompts = rng.integers(1, 32, (_DATA, _P)).astype(np.int32)
  prompts[np.arange(_P)[None] < (_P - lengths)[:, None]] = 0
  return {"prompts": jnp.asarray(prompts), "prompt_lengths": jnp.asarray(lengths),
          "targets": jnp.zeros((_DATA, 1), jnp.int32)}


def _rl_step(cfg, allocator, step_cfg, tx):
  sampler = SamplerConfig(_N, eos_ids=(1,), pad_id=0, strategy=Sample(temperature=1.0))
  return RLStep(cfg, sampler, step_cfg, allocator, tx, prompt_len=_P, reward_fn=_reward)


def _rollout(rl_step, state, data):
  """One step's rollout, rounds driven from Python with the public pieces (jitted here without
  donation: the test's state shares its params with its reference)."""
  begin, sample = jax.jit(rl_step.begin_fn), jax.jit(rl_step.sample_fn)
  finish = jax.jit(rl_step.finish_fn)
  state, rollout = begin(state)
  for _ in range(rl_step.allocator.budget.max_rounds):
    rollout, plan = sample(state.params, state.alloc["budget"], data, rollout)
    rollout = finish(rollout, plan, None)
    if bool(rollout.done):
      break
  return state, rollout


@pytest.mark.parametrize("allocator_name,mini,micro", [
    ("uniform", 1, 1), ("uniform", 2, 1), ("reinforce_ada", 1, 2)])
def test_shared_prompts_give_the_same_update(allocator_name, mini, micro):
  cfg = models.ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2,
                           num_heads=4, num_kv_heads=2, qkv_bias=True, scan_layers=False)
  params = models.init(cfg, jax.random.key(0), init_std=0.3)
  allocator = build_allocator({"name": allocator_name}, batch_prompts=_PROMPTS, group_size=4,
                              tau=0.5)
  tx = optax.sgd(0.1)  # the update is the gradient (Adam's first step is ~ lr sign(g))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     ref_params=params, alloc=allocator.init(_DATA, jax.random.key(1)),
                     rng=jax.random.key(5), counters=new_counters())
  loss = LossConfig(kl_coef=0.1)  # the reference log-probs take the shared path too
  results, flops, rollout = [], [], None
  for share in (True, False):
    step_cfg = StepConfig(loss=loss, mini_batches=mini, micro_batches=micro,
                          recompute_old_logp=True, share_prompts=share)
    rl_step = _rl_step(cfg, allocator, step_cfg, tx)
    if rollout is None:
      state, rollout = _rollout(rl_step, state, _data())
    step = jax.jit(rl_step.train_fn)  # not donating: both settings train from the same state
    args = (state, rollout, jnp.int32(0))
    flops.append(step.lower(*args).compile().cost_analysis()["flops"])
    results.append(step(*args))
  (s_shared, m_shared, n_shared), (s_rows, m_rows, n_rows) = results
  assert m_shared["skipped_updates"] == 0
  for key in ("loss", "grad_norm", "kl", "entropy", "clip_frac"):
    if key in m_rows:
      np.testing.assert_allclose(m_shared[key], m_rows[key], rtol=2e-4, atol=1e-6, err_msg=key)
  np.testing.assert_array_equal(n_shared, n_rows)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
               s_shared.params, s_rows.params)
  # The prompt tokens run once per prompt, not once per row.
  assert flops[0] < flops[1], flops


def test_overlong_penalty_shapes_the_rewards_and_changes_the_loss():
  """DAPO's soft overlong penalty (`StepConfig.overlong_buffer`): rewards the group role sees
  equal a float64 NumPy reference of R + R_len(L), and the loss changes with it on."""
  from adaptive_rl.rl.step import shape_rewards
  cfg = models.ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=1,
                           num_heads=4, num_kv_heads=2, scan_layers=False)
  params = models.init(cfg, jax.random.key(0), init_std=0.3)
  allocator = build_allocator({"name": "uniform"}, batch_prompts=_PROMPTS, group_size=4,
                              tau=0.5)
  tx = optax.sgd(0.1)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     ref_params=None, alloc=allocator.init(_DATA, jax.random.key(1)),
                     rng=jax.random.key(5), counters=new_counters())
  rl_step = _rl_step(cfg, allocator, StepConfig(), tx)
  state, rollout = _rollout(rl_step, state, _data())
  # Lengths spread over the buffer: the penalty is 0 below N - L_cache, linear inside, -1 at N.
  lengths = jnp.asarray(np.arange(12) % _N + 1, jnp.int32)
  rollout = rollout.replace(pool=rollout.pool._replace(lengths=lengths))
  pool = rollout.pool
  buffer = 3
  shaped = shape_rewards(StepConfig(overlong_buffer=buffer), pool)
  length, reward = np.asarray(pool.lengths, np.float64), np.asarray(pool.rewards, np.float64)
  expect = np.where(length <= _N - buffer, 0.0, ((_N - buffer) - length) / buffer)
  expect = np.where(np.asarray(pool.valid), reward + np.maximum(expect, -1.0), 0.0)
  np.testing.assert_allclose(np.asarray(shaped), expect, rtol=1e-6, atol=1e-7)
  assert np.any(expect != np.where(np.asarray(pool.valid), reward, 0.0))  # not vacuous
  np.testing.assert_array_equal(np.asarray(shape_rewards(StepConfig(), pool)), pool.rewards)

  losses = {}
  for b in (0, buffer):
    train = jax.jit(_rl_step(cfg, allocator, StepConfig(overlong_buffer=b), tx).train_fn)
    _, metrics, _ = train(state, rollout, jnp.int32(0))
    losses[b] = float(metrics["loss"])
    if b:
      valid = np.asarray(pool.valid)
      np.testing.assert_allclose(float(metrics["overlong_penalty_mean"]),
                                 np.sum((expect - reward)[valid]) / valid.sum(), rtol=1e-5)
  assert losses[0] != losses[buffer], losses
