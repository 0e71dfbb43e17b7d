"""Jitted autoregressive sampling: one prefill, then a `lax.while_loop` of cached decode steps.

Static settings live in a frozen `SamplerConfig`; the loop advances a `SamplingState` pytree.
Prompts are LEFT-padded to a common length P, so all rows write the KV cache in lockstep; each
row's RoPE positions count its real tokens only. Rows stop at an EOS id (later tokens are pad) and
the loop exits early once every row has stopped.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from adaptive_rl.models import (ModelConfig, Params, apply, init_cache, positions_from_mask,
                                unembed, unstack_layers)
from adaptive_rl.sampling.strategies import Greedy, Sample, make_strategy


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Static sampling settings (hashable: one compilation per distinct value).

  Attributes:
    max_new_tokens: tokens generated per row at most (EOS included).
    eos_ids: token ids that end a row.
    pad_id: id written after a row has ended.
    strategy: `Greedy()` or `Sample(temperature, top_k, top_p)`.
    cache_dtype: KV cache dtype name (default: the model's compute dtype).
  """

  max_new_tokens: int
  eos_ids: tuple[int, ...]
  pad_id: int = 0
  strategy: Greedy | Sample = Sample()
  cache_dtype: str | None = None

  def __post_init__(self):
    if self.max_new_tokens <= 0:
      raise ValueError(f"SamplerConfig.max_new_tokens must be > 0, got {self.max_new_tokens}")
    if isinstance(self.eos_ids, int):
      object.__setattr__(self, "eos_ids", (self.eos_ids,))
    object.__setattr__(self, "eos_ids", tuple(int(e) for e in self.eos_ids))
    if not self.eos_ids:
      raise ValueError("SamplerConfig.eos_ids must name at least one token id")


class SampleOutput(NamedTuple):
  """What `sample` returns (N = max_new_tokens)."""

  tokens: jax.Array  # [B, N] int32: generated ids, EOS included, pad after it
  logprobs: jax.Array  # [B, N] f32: log-prob under the sampling distribution (0 on pad)
  policy_logprobs: jax.Array  # [B, N] f32: temperature-1 log-softmax at the token (0 on pad)
  lengths: jax.Array  # [B] int32: tokens generated, EOS included
  truncated: jax.Array  # [B] bool: no EOS within max_new_tokens


class SamplingState(NamedTuple):
  step: jax.Array
  cache: Any
  logits: jax.Array  # [B, V] logits for the next token
  positions: jax.Array  # [B] position of the next token
  tokens: jax.Array
  logprobs: jax.Array
  policy_logprobs: jax.Array
  done: jax.Array  # [B] bool
  rng: jax.Array


def check_prompt_fits(model_cfg: ModelConfig, prompt_len: int, max_new_tokens: int) -> None:
  """Raises when prompt + generation would run past the model's supported length."""
  if prompt_len + max_new_tokens > model_cfg.max_seq_len:
    raise ValueError(
        f"prompt length {prompt_len} + max_new_tokens {max_new_tokens} = "
        f"{prompt_len + max_new_tokens} exceeds the model's max_seq_len {model_cfg.max_seq_len} "
        f"(the KV cache size); shorten prompts or lower max_new_tokens")


def sample(model_cfg: ModelConfig, cfg: SamplerConfig, params: Params, prompts_BP: jax.Array,
           prompt_lengths_B: jax.Array, rng: jax.Array,
           prompt_index: jax.Array | None = None) -> SampleOutput:
  """Samples continuations of left-padded prompts. Pure and jittable (cfgs static).

  Args:
    model_cfg: the model config.
    cfg: sampler settings.
    params: model params.
    prompts_BP: int32 [B, P], each prompt right-aligned (left padding); with `prompt_index`,
      the U distinct prompts [U, P] instead.
    prompt_lengths_B: int32 [B] (or [U]) real prompt lengths (>= 1).
    rng: PRNG key.
    prompt_index: optional int32 [B]: row b continues prompt `prompt_index[b]`. The U prompts
      are prefilled once each and their caches copied to their rows, so G samples of one
      prompt cost one prefill, not G (same result as passing the B rows themselves).

  Returns:
    A `SampleOutput` with B rows.
  """
  u, p = prompts_BP.shape
  n = cfg.max_new_tokens
  check_prompt_fits(model_cfg, p, n)
  mask_BP = jnp.arange(p)[None, :] >= (p - prompt_lengths_B)[:, None]
  positions_BP = positions_from_mask(mask_BP)
  cache_dtype = jnp.dtype(cfg.cache_dtype) if cfg.cache_dtype else model_cfg.compute_dtype
  cache = init_cache(model_cfg, u, p + n, cache_dtype)
  if not model_cfg.scan_layers:  # slice the stacked weights once, not on every decode step
    params = unstack_layers(params)
  # Only the last prompt position's logits are needed: project just that row to the vocabulary
  # (not [B, P, V] floats, which for long prompts and large vocabularies dwarf the cache).
  hidden, cache = apply(model_cfg, params, prompts_BP, positions_BP, cache=cache,
                        segment_ids_BT=mask_BP.astype(jnp.int32), return_hidden=True)
  logits = unembed(model_cfg, params, hidden[:, -1])
  if prompt_index is not None:  # one prefill per distinct prompt, then a row per sample
    rows = lambda x, axis: jnp.take(x, prompt_index, axis=axis)
    stacked = not isinstance(cache.k, tuple)
    kv = lambda c: rows(c, 1) if stacked else tuple(rows(x, 0) for x in c)
    cache = cache._replace(k=kv(cache.k), v=kv(cache.v), valid=rows(cache.valid, 0))
    logits, prompt_lengths_B = rows(logits, 0), rows(prompt_lengths_B, 0)
  b = logits.shape[0]
  eos = jnp.asarray(cfg.eos_ids, jnp.int32)
  state = SamplingState(
      step=jnp.zeros((), jnp.int32), cache=cache, logits=logits,
      positions=prompt_lengths_B.astype(jnp.int32),
      tokens=jnp.full((b, n), cfg.pad_id, jnp.int32),
      logprobs=jnp.zeros((b, n), jnp.float32), policy_logprobs=jnp.zeros((b, n), jnp.float32),
      done=jnp.zeros((b,), bool), rng=rng)
  # Plain temperature-1 sampling: the sampling log-prob IS the policy's (no second softmax).
  untempered = (isinstance(cfg.strategy, Sample) and cfg.strategy.temperature == 1.0
                and not cfg.strategy.top_k and cfg.strategy.top_p >= 1.0)

  def cond(s: SamplingState):
    return (s.step < n) & ~jnp.all(s.done)

  def body(s: SamplingState):
    rng, key = jax.random.split(s.rng)
    tok, lp = cfg.strategy.get_next_tokens(s.logits, key)
    if untempered:
      policy_lp = lp
    else:
      policy_lp = jnp.take_along_axis(jax.nn.log_softmax(s.logits.astype(jnp.float32)),
                                      tok[:, None], axis=-1)[:, 0]
    live = ~s.done
    tok = jnp.where(live, tok, cfg.pad_id)
    write = lambda buf, v: jax.lax.dynamic_update_slice_in_dim(buf, v[:, None], s.step, 1)
    tokens = write(s.tokens, tok)
    logprobs = write(s.logprobs, jnp.where(live, lp, 0.0))
    policy_logprobs = write(s.policy_logprobs, jnp.where(live, policy_lp, 0.0))
    done = s.done | jnp.isin(tok, eos)
    logits, cache = apply(model_cfg, params, tok[:, None], s.positions[:, None], cache=s.cache,
                          segment_ids_BT=live[:, None].astype(jnp.int32))
    return SamplingState(s.step + 1, cache, logits[:, 0], s.positions + 1, tokens, logprobs,
                         policy_logprobs, done, rng)

  state = jax.lax.while_loop(cond, body, state)
  is_eos = jnp.isin(state.tokens, eos)
  has_eos = jnp.any(is_eos, axis=-1)
  lengths = jnp.where(has_eos, jnp.argmax(is_eos, axis=-1) + 1, n).astype(jnp.int32)
  return SampleOutput(state.tokens, state.logprobs, state.policy_logprobs, lengths, ~has_eos)


class Sampler:
  """A model + settings bound to one jitted `sample` (compiled once per input shape).

  Example:
    sampler = Sampler(model_cfg, SamplerConfig(max_new_tokens=16, eos_ids=(tok.eos_id,)))
    out = sampler(params, prompts_BP, lengths_B, jax.random.key(0))
  """

  def __init__(self, model_cfg: ModelConfig, cfg: SamplerConfig):
    self.model_cfg = model_cfg
    self.cfg = cfg
    self._fn = jax.jit(functools.partial(sample, model_cfg, cfg))

  def __call__(self, params: Params, prompts_BP, prompt_lengths_B, rng,
               prompt_index=None) -> SampleOutput:
    return self._fn(params, prompts_BP, prompt_lengths_B, rng, prompt_index)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= length (prompt-length bucketing bounds recompilation)."""
  for b in sorted(buckets):
    if length <= b:
      return b
  raise ValueError(f"prompt length {length} exceeds the largest bucket {max(buckets)}")


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, length: int | None = None,
             buckets: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists to one length (the longest, `length`, or the next bucket).

  Returns:
    (tokens [B, P] int32, lengths [B] int32).
  Raises:
    ValueError naming the first prompt longer than `length`.
  """
  lengths = np.array([len(p) for p in prompts], np.int32)
  if np.any(lengths == 0):
    raise ValueError(f"prompt {int(np.argmin(lengths))} is empty")
  target = int(lengths.max()) if length is None else length
  if buckets is not None:
    target = bucket_length(target, buckets)
  too_long = np.nonzero(lengths > target)[0]
  if too_long.size:
    i = int(too_long[0])
    raise ValueError(f"prompt {i} has {lengths[i]} tokens, longer than the allowed {target}")
  out = np.full((len(prompts), target), pad_id, np.int32)
  for i, p in enumerate(prompts):
    out[i, target - len(p):] = p
  return out, lengths


__all__ = ["Greedy", "Sample", "SampleOutput", "Sampler", "SamplerConfig", "SamplingState",
           "bucket_length", "check_prompt_fits", "left_pad", "make_strategy", "sample"]
