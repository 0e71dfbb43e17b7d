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
from adaptive_rl.rl.step import StepConfig, empty_pool, make_round_fns, make_train_step
from adaptive_rl.rl.train_state import TrainState, new_counters
from adaptive_rl.sampling import Sample, SamplerConfig

_PROMPTS, _P, _N, _DATA = 3, 6, 5, 7


def _rollouts(allocator_name, cfg, params):
  """One step's pool from the allocator's sampling rounds (reward: even-token fraction)."""
  allocator = build_allocator({"name": allocator_name}, batch_prompts=_PROMPTS, group_size=4,
                              tau=0.5)
  rng = np.random.default_rng(0)
  lengths = np.array([6, 2, 4, 1, 5, 3, 6], np.int32)
  prompts = rng.integers(1, cfg.vocab_size, (_DATA, _P)).astype(np.int32)
  prompts[np.arange(_P)[None] < (_P - lengths)[:, None]] = 0
  data = {"prompts": jnp.asarray(prompts), "prompt_lengths": jnp.asarray(lengths),
          "targets": jnp.zeros((_DATA, 1), jnp.int32)}

  def reward(tokens, lens, targets):
    del targets
    valid = jnp.arange(tokens.shape[1])[None] < lens[:, None]
    return jnp.sum(valid & (tokens % 2 == 0), axis=1) / jnp.maximum(lens, 1)

  sampler = SamplerConfig(_N, eos_ids=(1,), pad_id=0, strategy=Sample(temperature=1.0))
  sample_round, finish_round = make_round_fns(cfg, sampler, allocator, reward)
  alloc = allocator.init(_DATA, jax.random.key(1))
  alloc, ids = allocator.choose(alloc, jax.random.key(2))
  round_state = allocator.budget.start(alloc["budget"], ids)
  pool = empty_pool(allocator.pool_rows, _P, _N)
  rounds = 0
  for r in range(allocator.budget.max_rounds):
    pool, plan = sample_round(params, pool, round_state, alloc["budget"], ids, data,
                              jnp.int32(r), jax.random.key(10 + r))
    pool, round_state, done = finish_round(pool, round_state, plan, jnp.int32(r), None)
    rounds = r + 1
    if bool(done):
      break
  return allocator, alloc, ids, pool, rounds


@pytest.mark.parametrize("allocator_name,mini,micro", [
    ("uniform", 1, 1), ("uniform", 2, 1), ("reinforce_ada", 1, 2)])
def test_shared_prompts_give_the_same_update(allocator_name, mini, micro):
  cfg = models.ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2,
                           num_heads=4, num_kv_heads=2, qkv_bias=True, scan_layers=False)
  params = models.init(cfg, jax.random.key(0), init_std=0.3)
  allocator, alloc, ids, pool, rounds = _rollouts(allocator_name, cfg, params)
  tx = optax.sgd(0.1)  # the update is the gradient (Adam's first step is ~ lr sign(g))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     ref_params=params, alloc=alloc, rng=jax.random.key(5),
                     counters=new_counters())
  loss = LossConfig(kl_coef=0.1)  # the reference log-probs take the shared path too
  results, flops = [], []
  for share in (True, False):
    step_cfg = StepConfig(loss=loss, mini_batches=mini, micro_batches=micro,
                          recompute_old_logp=True, share_prompts=share)
    step = jax.jit(make_train_step(cfg, step_cfg, allocator, tx))
    args = (state, pool, ids, jnp.int32(rounds), jnp.int32(0))
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
