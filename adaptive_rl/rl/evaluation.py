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
                 reward_fn: Callable[..., jax.Array] | None) -> Callable:
  """eval_fn(params, prompts, prompt_lengths, targets, rng) -> (rewards [B], tokens, lengths).

  With `reward_fn` None (rewards scored on the host) the rewards returned are zeros.
  """

  @jax.jit
  def eval_fn(params, prompts, prompt_lengths, targets, rng):
    out = sample(model_cfg, sampler_cfg, params, prompts, prompt_lengths, rng)
    if reward_fn is None:
      return jnp.zeros(out.lengths.shape, jnp.float32), out.tokens, out.lengths
    return reward_fn(out.tokens, out.lengths, targets), out.tokens, out.lengths

  return eval_fn


HostScore = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def evaluate(eval_fn: Callable, params: Any, data, batch_size: int, rng: jax.Array,
             limit: int = 0, host_score: HostScore | None = None) -> dict[str, Any]:
  """Mean reward over the split (padded to whole batches so eval_fn compiles once).

  `host_score(tokens, lengths, rows)` scores completions on the host (text tasks); otherwise
  eval_fn's in-graph rewards are used.
  """
  n = data.size if not limit else min(limit, data.size)
  rewards = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size) % data.size
    r, toks, lens = eval_fn(params, jnp.asarray(data.prompts[idx]),
                            jnp.asarray(data.prompt_lengths[idx]),
                            jnp.asarray(data.targets[idx]), jax.random.fold_in(rng, start))
    keep = min(batch_size, n - start)
    if host_score is not None:
      r = host_score(np.asarray(toks)[:keep], np.asarray(lens)[:keep], idx[:keep])
    rewards.append(np.asarray(r)[:keep])
  rewards = np.concatenate(rewards)
  out = {"accuracy": float(np.mean(rewards > 0.5)), "reward": float(np.mean(rewards)),
         "num_prompts": int(n)}
  levels = np.asarray(data.difficulty[:n])
  for level in np.unique(levels):
    out[f"accuracy_level_{int(level)}"] = float(np.mean(rewards[levels == level] > 0.5))
  return out


def evaluate_k(model_cfg: ModelConfig, params: Any, task, data, *, k: int, temperature: float,
               max_new_tokens: int, batch_size: int, seed: int = 0,
               limit: int = 0, host_score: HostScore | None = None) -> dict[str, Any]:
  """k samples per held-out prompt: pass@k (unbiased, for every power of two <= k), maj@k and
  avg@k, plus per-difficulty pass@1.

  Args:
    model_cfg, params: the policy.
    task: a task (`decode_completion`; in-graph `reward` unless host_score is given).
    data: the split (`TaskData`).
    k: samples per prompt.
    temperature: sampling temperature (> 0).
    max_new_tokens: completion budget.
    batch_size: prompts per sampling call (each call samples batch_size * k rows).
    seed: sampling seed.
    limit: evaluate at most this many prompts (0 = all).
    host_score: score completions on the host: (tokens, lengths, rows) -> rewards.
  """
  from adaptive_rl.rl.passk import avg_at_k, maj_at_k, pass_at_k  # pylint: disable=import-outside-toplevel
  from adaptive_rl.sampling import Sample  # pylint: disable=import-outside-toplevel

  tok = task.tokenizer
  scfg = SamplerConfig(max_new_tokens, (tok.eos_id,), tok.pad_id, Sample(temperature=temperature))
  fn = make_eval_fn(model_cfg, scfg, None if host_score is not None else task.reward)
  n = data.size if not limit else min(limit, data.size)
  correct = np.zeros((n, k), bool)
  answers: list[list[str | None]] = [[] for _ in range(n)]
  rng = jax.random.PRNGKey(seed)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size) % data.size
    rows = np.repeat(idx, k)
    r, toks, lens = fn(params, jnp.asarray(data.prompts[rows]),
                       jnp.asarray(data.prompt_lengths[rows]), jnp.asarray(data.targets[rows]),
                       jax.random.fold_in(rng, start))
    toks, lens = np.asarray(toks), np.asarray(lens)
    if host_score is not None:
      r = host_score(toks, lens, rows)
    r = np.asarray(r).reshape(-1, k)
    for j in range(min(batch_size, n - start)):
      correct[start + j] = r[j] > 0.5
      answers[start + j] = [task.decode_completion(toks[j * k + s], lens[j * k + s])
                            for s in range(k)]
  c = correct.sum(1)
  out: dict[str, Any] = {"num_prompts": int(n), "k": int(k), "temperature": float(temperature)}
  kk = 1
  while kk <= k:
    out[f"pass@{kk}"] = float(np.mean([pass_at_k(k, int(ci), kk) for ci in c]))
    kk *= 2
  if f"pass@{k}" not in out:
    out[f"pass@{k}"] = float(np.mean([pass_at_k(k, int(ci), k) for ci in c]))
  out[f"maj@{k}"] = float(np.mean([maj_at_k(answers[i], correct[i], k) for i in range(n)]))
  out[f"avg@{k}"] = float(np.mean([avg_at_k(correct[i], k) for i in range(n)]))
  levels = np.asarray(data.difficulty[:n])
  for level in np.unique(levels):
    out[f"pass@1_level_{int(level)}"] = float(np.mean(correct[levels == level]))
  return out
