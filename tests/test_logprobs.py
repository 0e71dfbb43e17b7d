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


def _shared_prompt_case(cfg, seed=0):
  """3 distinct left-padded prompts (lengths 7, 3, 1) and 8 completions of them."""
  rng = np.random.default_rng(seed)
  u, p, n, r = 3, 7, 5, 8
  plen = np.array([7, 3, 1], np.int32)
  prompts = rng.integers(1, cfg.vocab_size, (u, p)).astype(np.int32)
  prompts[np.arange(p)[None] < (p - plen)[:, None]] = 0
  index = np.array([0, 2, 1, 0, 2, 2, 1, 0], np.int32)  # every prompt, in mixed order
  comps = rng.integers(1, cfg.vocab_size, (r, n)).astype(np.int32)
  clen = np.array([5, 1, 3, 4, 5, 2, 5, 3], np.int32)
  return prompts, plen, index, comps, clen


@pytest.mark.parametrize("scan,attention,variant", [
    (True, "xla", "plain"), (False, "xla", "plain"), (True, "dot_product_attention", "plain"),
    (False, "dot_product_attention", "qk_norm"), (True, "xla", "remat"), (False, "xla", "lora"),
])
def test_shared_prompts_equal_per_row_logprobs_and_grads(scan, attention, variant):
  """prompt_index (each prompt's forward once, its completions attend to its keys / values)
  == the per-row computation on the gathered prompts: log-probs, entropies and gradients."""
  cfg = models.ModelConfig(
      vocab_size=48, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
      num_kv_heads=2, qkv_bias=variant != "qk_norm", qk_norm=variant == "qk_norm",
      tie_embeddings=variant != "lora", scan_layers=scan, attention=attention,
      remat="full" if variant == "remat" else "none")
  params = models.init(cfg, jax.random.key(0), init_std=0.3)
  if variant == "lora":
    from adaptive_rl.models import lora  # pylint: disable=import-outside-toplevel
    config = lora.LoraConfig(rank=4, alpha=8.0)
    adapters = jax.tree.map(lambda x: x + 0.05, lora.init_lora(cfg, params, config,
                                                               jax.random.key(1)))
    params = lora.adapted(params, adapters, config)
  prompts, plen, index, comps, clen = _shared_prompt_case(cfg)
  mask = jnp.arange(comps.shape[1])[None] < clen[:, None]

  def f(p, shared):
    if shared:
      lp, ent = logprobs.completion_logprobs(cfg, p, prompts, plen, comps, clen,
                                             with_entropy=True, prompt_index=index)
    else:
      lp, ent = logprobs.completion_logprobs(cfg, p, prompts[index], plen[index], comps, clen,
                                             with_entropy=True)
    return jnp.sum(jnp.where(mask, lp, 0.0)), (lp, ent)

  (l_s, (lp_s, ent_s)), g_s = jax.value_and_grad(f, has_aux=True)(params, True)
  (l_r, (lp_r, ent_r)), g_r = jax.value_and_grad(f, has_aux=True)(params, False)
  m = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(lp_s)[m], np.asarray(lp_r)[m], atol=2e-5)
  np.testing.assert_allclose(np.asarray(ent_s)[m], np.asarray(ent_r)[m], atol=2e-5)
  np.testing.assert_allclose(l_s, l_r, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4), g_s, g_r)


def test_prefix_kv_of_a_prompt_continues_it_exactly():
  """apply(return_kv=True) on prompts, then apply(prefix=...) on continuations == apply on the
  concatenations (hidden states of the continuation tokens), including a left-padded prompt."""
  cfg = models.get_preset("nano", vocab_size=40)
  params = models.init(cfg, jax.random.key(3), init_std=0.3)
  prompts = jnp.array([[0, 0, 5, 6], [7, 8, 9, 10]], jnp.int32)
  seg_p = (prompts != 0).astype(jnp.int32)
  hidden_p, prefix = models.apply(cfg, params, prompts, models.positions_from_mask(seg_p),
                                  segment_ids_BT=seg_p, return_hidden=True, return_kv=True)
  assert isinstance(prefix, models.Prefix) and prefix.index is None
  assert prefix.k.shape == (cfg.num_layers, 2, 4, cfg.num_kv_heads, cfg.head_dim)
  conts = jnp.array([[11, 12, 13], [14, 15, 16], [17, 18, 19]], jnp.int32)
  index = jnp.array([1, 0, 1], jnp.int32)
  lengths = jnp.sum(seg_p, axis=1)[index]
  hidden_c, _ = models.apply(cfg, params, conts, lengths[:, None] + jnp.arange(3)[None],
                             return_hidden=True, prefix=prefix._replace(index=index))
  full = jnp.concatenate([prompts[index], conts], axis=1)
  seg = jnp.concatenate([seg_p[index], jnp.ones_like(conts)], axis=1)
  hidden_f, _ = models.apply(cfg, params, full, segment_ids_BT=seg, return_hidden=True)
  np.testing.assert_allclose(hidden_c, hidden_f[:, 4:], atol=1e-5)
  real = np.asarray(seg_p, bool)  # (pad positions attend to nothing and hold garbage)
  np.testing.assert_allclose(np.asarray(hidden_p)[real],
                             np.asarray(hidden_f[jnp.array([1, 0]), :4])[real], atol=1e-5)
  with pytest.raises(ValueError, match="positions are required"):
    models.apply(cfg, params, conts, prefix=prefix._replace(index=index))
  with pytest.raises(ValueError, match="prefix.index"):
    models.apply(cfg, params, conts, jnp.zeros((3, 3), jnp.int32), prefix=prefix)
