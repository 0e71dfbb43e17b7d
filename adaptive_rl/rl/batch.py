"""The train step's batch: training rows from the group role, masks, old / reference log-probs.

  b, shared = assemble(cfg, model_cfg, pool, ids, groups, advantages)
  b = add_logprobs(cfg, model_cfg, b, shared, policy, reference)

`b` holds [T, ...] arrays, T = the group role's static training rows. With prompt sharing
(`StepConfig.share_prompts`, used when a micro-batch has more rows than the step has prompts)
rows name their prompt (`b["prompt"]`) and `shared` holds each chosen prompt once
(`models.Prefix`); otherwise rows carry their own prompt tokens.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from adaptive_rl.allocation.roles import Groups
from adaptive_rl.models import ModelConfig
from adaptive_rl.rl.logprobs import completion_logprobs


def assemble(cfg, pool, num_prompts: int, groups: Groups, advantages: jax.Array):
  """Training rows of `pool` chosen by `groups`, with token masks (no log-probs yet).

  Args:
    cfg: the StepConfig.
    pool: the step's `Pool` ([M] rows).
    num_prompts: U, the step's chosen prompts.
    groups: the group role's rows ([T] each).
    advantages: [T] (0 where invalid).

  Returns:
    (b, shared): the batch dict and, with prompt sharing, (prompts [U, P], lengths [U]).
  """
  rows = groups.index
  t = rows.shape[0]
  b = {"completions": pool.completions[rows], "lengths": pool.lengths[rows],
       "advantages": advantages}
  shared = None
  if cfg.share_prompts and num_prompts < t // (cfg.mini_batches * cfg.micro_batches):
    # One pool row per chosen prompt (a valid one where there is one; never-sampled prompts
    # get any row, and no training row refers to them).
    match = (pool.prompt[None, :] == jnp.arange(num_prompts)[:, None]).astype(jnp.int32)
    first = jnp.argmax(match * (1 + pool.valid[None, :].astype(jnp.int32)), axis=1)
    shared = (pool.prompts[first], pool.prompt_lengths[first])
    b["prompt"] = pool.prompt[rows]
  else:
    b["prompts"], b["prompt_lengths"] = pool.prompts[rows], pool.prompt_lengths[rows]
  n = pool.completions.shape[1]
  token_ok = jnp.arange(n)[None, :] < b["lengths"][:, None]
  row_ok = groups.valid
  if cfg.mask_truncated:
    row_ok = row_ok & ~pool.truncated[rows]
  b["mask"] = token_ok & row_ok[:, None]
  return b, shared


def logprobs(cfg, model_cfg: ModelConfig, params, b: dict[str, jax.Array], with_entropy: bool,
             shared) -> tuple[jax.Array, jax.Array | None]:
  """Log-probs (and entropies) of `b`'s completions under `params`."""
  if shared is None:
    prompts, prompt_lengths, index = b["prompts"], b["prompt_lengths"], None
  else:
    (prompts, prompt_lengths), index = shared, b["prompt"]
  return completion_logprobs(model_cfg, params, prompts, prompt_lengths, b["completions"],
                             b["lengths"], chunk_size=cfg.logprob_chunk,
                             with_entropy=with_entropy, prompt_index=index)


def add_old_and_ref_logprobs(cfg, model_cfg: ModelConfig, b: dict[str, jax.Array], shared,
                             pool_logp: jax.Array, policy: Any, reference: Any):
  """`old_logp` (the sampler's, or recomputed by the trainer's forward pass) and, with a KL
  term, `ref_logp` under `reference`."""
  if cfg.recompute_old_logp:
    b["old_logp"] = jax.lax.stop_gradient(logprobs(cfg, model_cfg, policy, b, False, shared)[0])
  else:
    b["old_logp"] = pool_logp
  if cfg.needs_ref:
    b["ref_logp"] = jax.lax.stop_gradient(
        logprobs(cfg, model_cfg, reference, b, False, shared)[0])
  return b
