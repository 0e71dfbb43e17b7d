"""Sampler tests: greedy == step-by-step argmax, logprobs == forward pass, padding invariance,
EOS handling, top-1 == greedy, truncation strategies, and no retracing."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_rl import models
from adaptive_rl import sampling


@pytest.fixture(scope="module")
def model():
  cfg = models.get_preset("nano", vocab_size=23, max_seq_len=48)
  params = models.init(cfg, jax.random.key(0), init_std=0.5)
  return cfg, params


def _prompts(lengths, vocab, seed=0):
  rng = np.random.default_rng(seed)
  return [list(rng.integers(3, vocab, size=n)) for n in lengths]


def _greedy_reference(cfg, params, prompt, n):
  """Argmax of `apply` without a cache, one token at a time."""
  seq = list(prompt)
  out = []
  for _ in range(n):
    logits, _ = models.apply(cfg, params, jnp.asarray([seq], jnp.int32))
    tok = int(jnp.argmax(logits[0, -1]))
    out.append(tok)
    seq.append(tok)
  return out


def test_greedy_equals_stepwise_argmax_without_cache(model):
  cfg, params = model
  prompts = _prompts([5, 2, 7], cfg.vocab_size)
  toks, lens = sampling.left_pad(prompts, pad_id=0)
  sampler = sampling.Sampler(cfg, sampling.SamplerConfig(
      max_new_tokens=6, eos_ids=(999,), strategy=sampling.Greedy()))
  out = sampler(params, toks, lens, jax.random.key(0))
  for i, p in enumerate(prompts):
    assert list(np.asarray(out.tokens[i])) == _greedy_reference(cfg, params, p, 6)
  assert np.all(np.asarray(out.lengths) == 6) and np.all(np.asarray(out.truncated))


def test_logprobs_equal_forward_log_softmax(model):
  cfg, params = model
  prompts = _prompts([4, 6], cfg.vocab_size, seed=1)
  toks, lens = sampling.left_pad(prompts, pad_id=0)
  strategy = sampling.Sample(temperature=0.7)
  out = sampling.Sampler(cfg, sampling.SamplerConfig(
      max_new_tokens=5, eos_ids=(999,), strategy=strategy))(params, toks, lens,
                                                            jax.random.key(3))
  for i, p in enumerate(prompts):
    gen = list(np.asarray(out.tokens[i]))
    logits, _ = models.apply(cfg, params, jnp.asarray([p + gen], jnp.int32))
    step_logits = logits[0, len(p) - 1:len(p) - 1 + len(gen)]
    lp1 = jax.nn.log_softmax(step_logits)[jnp.arange(len(gen)), jnp.asarray(gen)]
    lpt = jax.nn.log_softmax(step_logits / 0.7)[jnp.arange(len(gen)), jnp.asarray(gen)]
    np.testing.assert_allclose(out.policy_logprobs[i], lp1, atol=2e-5)
    np.testing.assert_allclose(out.logprobs[i], lpt, atol=2e-5)


def test_padded_batch_equals_each_sequence_alone(model):
  cfg, params = model
  prompts = _prompts([3, 8, 5], cfg.vocab_size, seed=2)
  scfg = sampling.SamplerConfig(max_new_tokens=7, eos_ids=(999,), strategy=sampling.Greedy())
  toks, lens = sampling.left_pad(prompts, pad_id=0, length=10)
  batch = sampling.sample(cfg, scfg, params, jnp.asarray(toks), jnp.asarray(lens),
                          jax.random.key(0))
  for i, p in enumerate(prompts):
    alone = sampling.sample(cfg, scfg, params, jnp.asarray([p], jnp.int32),
                            jnp.asarray([len(p)], jnp.int32), jax.random.key(0))
    np.testing.assert_array_equal(batch.tokens[i], alone.tokens[0])
    np.testing.assert_allclose(batch.policy_logprobs[i], alone.policy_logprobs[0], atol=2e-5)


def test_eos_stops_row_and_pads_after(model):
  cfg, params = model
  prompts = _prompts([4, 4, 4, 4], cfg.vocab_size, seed=3)
  toks, lens = sampling.left_pad(prompts, pad_id=0)
  free = sampling.Sampler(cfg, sampling.SamplerConfig(
      max_new_tokens=8, eos_ids=(999,), strategy=sampling.Greedy()))(
          params, toks, lens, jax.random.key(0))
  # Declare the token each row generates third as EOS: rows stop there or earlier.
  eos = int(free.tokens[0, 2])
  out = sampling.Sampler(cfg, sampling.SamplerConfig(
      max_new_tokens=8, eos_ids=(eos,), pad_id=0, strategy=sampling.Greedy()))(
          params, toks, lens, jax.random.key(0))
  for i in range(4):
    row = list(np.asarray(free.tokens[i]))
    expect_len = row.index(eos) + 1 if eos in row else 8
    assert int(out.lengths[i]) == expect_len
    assert bool(out.truncated[i]) == (eos not in row)
    np.testing.assert_array_equal(out.tokens[i, :expect_len], row[:expect_len])
    assert np.all(np.asarray(out.tokens[i, expect_len:]) == 0)
    assert np.all(np.asarray(out.policy_logprobs[i, expect_len:]) == 0)


def test_top1_equals_greedy(model):
  cfg, params = model
  toks, lens = sampling.left_pad(_prompts([3, 6], cfg.vocab_size, seed=4), pad_id=0)
  mk = lambda s: sampling.Sampler(cfg, sampling.SamplerConfig(max_new_tokens=6, eos_ids=(999,),
                                                              strategy=s))
  g = mk(sampling.Greedy())(params, toks, lens, jax.random.key(0))
  t1 = mk(sampling.Sample(temperature=1.3, top_k=1))(params, toks, lens, jax.random.key(7))
  tp = mk(sampling.Sample(temperature=0.9, top_p=1e-6))(params, toks, lens, jax.random.key(8))
  np.testing.assert_array_equal(g.tokens, t1.tokens)
  np.testing.assert_array_equal(g.tokens, tp.tokens)
  np.testing.assert_allclose(t1.logprobs, 0.0, atol=1e-6)


def test_top_k_and_top_p_restrict_support():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  tk = sampling.Sample(top_k=2).truncated_logits(logits)
  assert np.all(np.isfinite(np.asarray(tk[0, :2]))) and np.all(np.asarray(tk[0, 2:]) < -1e29)
  # top_p=0.8: 0.5 + 0.3 reaches 0.8, so the nucleus is the first two tokens.
  tp = sampling.Sample(top_p=0.8).truncated_logits(logits)
  assert np.all(np.asarray(tp[0, :2]) > -1e29) and np.all(np.asarray(tp[0, 2:]) < -1e29)
  tp = sampling.Sample(top_p=0.81).truncated_logits(logits)
  assert np.all(np.asarray(tp[0, :3]) > -1e29) and float(tp[0, 3]) < -1e29
  draws = jax.vmap(lambda k: sampling.Sample(top_k=2).get_next_tokens(logits, k)[0])(
      jax.random.split(jax.random.key(0), 4000))
  frac0 = float(jnp.mean(draws == 0))
  assert set(np.unique(np.asarray(draws))) <= {0, 1}
  assert abs(frac0 - 0.5 / 0.8) < 0.03


def test_inverse_cdf_sampling_matches_distribution():
  # Frequencies of 40,000 draws against the probabilities (6 sigma bounds), zero-probability
  # entries (top-k truncation and a masked-out middle entry) never drawn.
  probs = np.array([0.0, 0.05, 0.4, 0.0, 0.25, 0.3, 0.0])
  logp = jnp.log(jnp.asarray(probs, jnp.float32))[None].repeat(40000, 0)
  draws = np.asarray(sampling.strategies.inverse_cdf_sample(jax.random.key(3), logp))
  freq = np.bincount(draws, minlength=probs.size) / draws.size
  assert np.all(freq[probs == 0] == 0)
  sigma = np.sqrt(probs * (1 - probs) / draws.size)
  assert np.all(np.abs(freq - probs) <= 6 * sigma + 1e-12), (freq, probs)
  # Through the strategy with top-k: only the 2 most likely tokens, in ratio 0.4 : 0.3.
  tokens, lp = sampling.Sample(top_k=2).get_next_tokens(
      jnp.log(jnp.asarray(probs + 1e-9, jnp.float32))[None].repeat(20000, 0), jax.random.key(4))
  tokens = np.asarray(tokens)
  assert set(np.unique(tokens)) <= {2, 5}
  assert abs(np.mean(tokens == 2) - 0.4 / 0.7) < 0.02
  np.testing.assert_allclose(np.asarray(lp)[tokens == 2], np.log(0.4 / 0.7), atol=1e-5)


def test_inverse_cdf_two_level_search_equals_float64_reference():
  # V = 1000 over 8 blocks of 128 (the last padded), whole zero blocks, zeros at block edges:
  # the block-then-entry search draws the token a float64 inverse CDF gives for the same
  # uniform (the one jax.random.uniform(key, (B, 1)) yields), and never a zero-probability one.
  rng = np.random.default_rng(0)
  v, b = 1000, 4000
  probs = rng.random(v) ** 4
  probs[128:384] = 0.0  # two empty blocks
  probs[[0, 127, 511, 512, 999]] = 0.0  # block edges and the last entry
  probs /= probs.sum()
  logp = jnp.log(jnp.asarray(probs, jnp.float32))[None].repeat(b, 0)
  key = jax.random.key(7)
  draws = np.asarray(sampling.strategies.inverse_cdf_sample(key, logp))
  assert np.all(probs[draws] > 0)
  p32 = np.exp(np.asarray(logp[0], np.float64))
  u = np.asarray(jax.random.uniform(key, (b, 1), jnp.float32), np.float64)[:, 0]
  expect = np.searchsorted(np.cumsum(p32), u * p32.sum(), side="right")
  assert np.mean(draws == expect) >= 0.999, np.mean(draws == expect)


def test_unrolled_model_samples_like_scanned(model):
  cfg, params = model
  toks, lens = sampling.left_pad(_prompts([3, 7, 5], cfg.vocab_size, seed=5), pad_id=0)
  scfg = sampling.SamplerConfig(max_new_tokens=6, eos_ids=(999,), strategy=sampling.Sample())
  a = sampling.Sampler(cfg, scfg)(params, toks, lens, jax.random.key(2))
  b = sampling.Sampler(cfg.replace(scan_layers=False), scfg)(params, toks, lens,
                                                             jax.random.key(2))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_allclose(a.logprobs, b.logprobs, atol=2e-5)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_shared_prompt_prefill_equals_one_row_per_sample(model, scan_layers):
  # prompt_index: each distinct prompt prefilled once, its cache copied to its G rows; the
  # result equals sampling the B expanded rows directly (same key: same uniforms per row).
  cfg, params = model
  cfg = cfg.replace(scan_layers=scan_layers)
  toks, lens = sampling.left_pad(_prompts([4, 2, 6], cfg.vocab_size, seed=6), pad_id=0)
  index = jnp.asarray([2, 0, 0, 1, 2, 2, 1, 0], jnp.int32)
  scfg = sampling.SamplerConfig(max_new_tokens=5, eos_ids=(999,),
                                strategy=sampling.Sample(temperature=0.8))
  sampler = sampling.Sampler(cfg, scfg)
  shared = sampler(params, toks, lens, jax.random.key(9), index)
  rows = sampler(params, toks[np.asarray(index)], lens[np.asarray(index)], jax.random.key(9))
  np.testing.assert_array_equal(shared.tokens, rows.tokens)
  np.testing.assert_allclose(shared.logprobs, rows.logprobs, atol=2e-5)
  np.testing.assert_allclose(shared.policy_logprobs, rows.policy_logprobs, atol=2e-5)
  np.testing.assert_array_equal(shared.lengths, rows.lengths)


def test_sampler_compiles_once_per_shape(model):
  cfg, params = model
  scfg = sampling.SamplerConfig(max_new_tokens=4, eos_ids=(5,))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(params, toks, lens, rng):
    return sampling.sample(cfg, scfg, params, toks, lens, rng)

  for seed in range(3):
    toks, lens = sampling.left_pad(_prompts([2 + seed, 3], cfg.vocab_size, seed=seed),
                                   pad_id=0, length=6)
    run(params, jnp.asarray(toks), jnp.asarray(lens), jax.random.key(seed))


def test_bad_input_errors(model):
  cfg, params = model
  with pytest.raises(ValueError, match="exceeds the model's max_seq_len"):
    sampling.sample(cfg, sampling.SamplerConfig(max_new_tokens=40, eos_ids=(1,)), params,
                    jnp.zeros((1, 10), jnp.int32), jnp.ones((1,), jnp.int32), jax.random.key(0))
  with pytest.raises(ValueError, match="prompt 1 has 5 tokens"):
    sampling.left_pad([[1, 2], [1, 2, 3, 4, 5]], pad_id=0, length=4)
  with pytest.raises(ValueError, match="largest bucket"):
    sampling.left_pad([[1] * 9], pad_id=0, buckets=(4, 8))
  with pytest.raises(ValueError, match="temperature"):
    sampling.Sample(temperature=0.0)
  with pytest.raises(ValueError, match="max_new_tokens"):
    sampling.SamplerConfig(max_new_tokens=0, eos_ids=(1,))
