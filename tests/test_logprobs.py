"""Chunked completion log-probs equal a direct computation from full logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_rl import models
from adaptive_rl.rl import logprobs


@pytest.mark.parametrize("chunk", [0, 1, 3, 8])
def test_chunked_logprobs_equal_full_logits(chunk):
  cfg = models.get_preset("nano", vocab_size=19)
  params = models.init(cfg, jax.random.key(0), init_std=0.3)
  rng = np.random.default_rng(0)
  prompt_lens = np.array([3, 5])
  comp_lens = np.array([4, 2])
  prompts = np.zeros((2, 5), np.int32)
  comps = np.zeros((2, 5), np.int32)
  rows = []
  for i in range(2):
    pr = rng.integers(3, 19, prompt_lens[i])
    co = rng.integers(3, 19, comp_lens[i])
    prompts[i, 5 - prompt_lens[i]:] = pr
    comps[i, :comp_lens[i]] = co
    rows.append((pr, co))
  lp, ent = logprobs.completion_logprobs(
      cfg, params, jnp.asarray(prompts), jnp.asarray(prompt_lens), jnp.asarray(comps),
      jnp.asarray(comp_lens), chunk_size=chunk, with_entropy=True)
  for i, (pr, co) in enumerate(rows):
    seq = np.concatenate([pr, co])[None]
    logits, _ = models.apply(cfg, params, jnp.asarray(seq, jnp.int32))
    ls = jax.nn.log_softmax(logits[0, len(pr) - 1:-1])
    expect = ls[jnp.arange(len(co)), jnp.asarray(co)]
    np.testing.assert_allclose(lp[i, :len(co)], expect, atol=2e-5)
    np.testing.assert_allclose(ent[i, :len(co)], -jnp.sum(jnp.exp(ls) * ls, -1), atol=2e-5)
  # Gradients agree between chunked and unchunked too.
  f = lambda p, c: jnp.sum(logprobs.completion_logprobs(
      cfg, p, jnp.asarray(prompts), jnp.asarray(prompt_lens), jnp.asarray(comps),
      jnp.asarray(comp_lens), chunk_size=c)[0] * (jnp.arange(5)[None] < comp_lens[:, None]))
  g0, g1 = jax.grad(f)(params, 0), jax.grad(f)(params, chunk)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), g0, g1)
