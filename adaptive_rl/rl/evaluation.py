"""Held-out evaluation of built-in tasks: greedy (or sampled) accuracy with in-graph rewards."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from adaptive_rl.models import ModelConfig
from adaptive_rl.sampling import SamplerConfig, sample


def make_eval_fn(model_cfg: ModelConfig, sampler_cfg: SamplerConfig,
                 reward_fn: Callable[..., jax.Array]) -> Callable:
  """eval_fn(params, prompts, prompt_lengths, targets, rng) -> (rewards [B], tokens, lengths)."""

  @jax.jit
  def eval_fn(params, prompts, prompt_lengths, targets, rng):
    out = sample(model_cfg, sampler_cfg, params, prompts, prompt_lengths, rng)
    return reward_fn(out.tokens, out.lengths, targets), out.tokens, out.lengths

  return eval_fn


def evaluate(eval_fn: Callable, params: Any, data, batch_size: int, rng: jax.Array,
             limit: int = 0) -> dict[str, Any]:
  """Mean reward over the split (padded to whole batches so eval_fn compiles once)."""
  n = data.size if not limit else min(limit, data.size)
  rewards = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size) % data.size
    r, _, _ = eval_fn(params, jnp.asarray(data.prompts[idx]),
                      jnp.asarray(data.prompt_lengths[idx]), jnp.asarray(data.targets[idx]),
                      jax.random.fold_in(rng, start))
    rewards.append(np.asarray(r)[:min(batch_size, n - start)])
  rewards = np.concatenate(rewards)
  out = {"accuracy": float(np.mean(rewards > 0.5)), "reward": float(np.mean(rewards)),
         "num_prompts": int(n)}
  levels = np.asarray(data.difficulty[:n])
  for level in np.unique(levels):
    out[f"accuracy_level_{int(level)}"] = float(np.mean(rewards[levels == level] > 0.5))
  return out
