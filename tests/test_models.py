"""Model tests: parity with transformers, HF round trips, cache / packing invariances, presets."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_rl import models
from tests.hf_fixtures import hf_logits, make_hf_model

_CASES = {
    # Qwen2: q/k/v bias, untied embeddings, GQA 6:2.
    "qwen2_bias_untied": ("qwen2", dict(tie_word_embeddings=False)),
    # Llama: GQA 4:1, tied embeddings.
    "llama_gqa_tied": ("llama", dict(num_attention_heads=4, num_key_value_heads=1,
                                     hidden_size=32, tie_word_embeddings=True)),
    # Unusual shapes: 5 heads of width 6 with 5 kv heads (MHA), odd vocab, 3 layers.
    "llama_odd_heads": ("llama", dict(num_attention_heads=5, num_key_value_heads=5,
                                      hidden_size=30, num_hidden_layers=3, vocab_size=53,
                                      rope_theta=500.0)),
    # Qwen3: q/k norm, explicit head_dim different from hidden / heads.
    "qwen3_head_dim": ("qwen3", dict(head_dim=24, num_attention_heads=4, num_key_value_heads=2,
                                     hidden_size=40)),
    # Llama-3.1 rope scaling.
    "llama3_rope": ("llama", dict(rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16), rope_theta=50000.0)),
}


@pytest.fixture(scope="module", params=sorted(_CASES))
def hf_checkpoint(request, tmp_path_factory):
  kind, overrides = _CASES[request.param]
  model = make_hf_model(kind, seed=len(request.param), **overrides)
  path = str(tmp_path_factory.mktemp(request.param))
  model.save_pretrained(path, safe_serialization=True)
  return model, path


def _tokens(vocab, b=3, t=11, seed=0):
  return np.random.default_rng(seed).integers(0, vocab, size=(b, t)).astype(np.int32)


def test_from_hf_matches_transformers(hf_checkpoint):
  model, path = hf_checkpoint
  cfg, params = models.from_hf(path)
  tokens = _tokens(cfg.vocab_size)
  ours, _ = models.apply(cfg, params, jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(ours), hf_logits(model, tokens), atol=1e-4, rtol=1e-4)


def test_to_hf_round_trip_reloads_in_transformers(hf_checkpoint, tmp_path):
  import transformers
  model, path = hf_checkpoint
  cfg, params = models.from_hf(path)
  models.to_hf(cfg, params, str(tmp_path))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).float().eval()
  tokens = _tokens(cfg.vocab_size, seed=1)
  np.testing.assert_allclose(hf_logits(reloaded, tokens), hf_logits(model, tokens),
                             atol=1e-5, rtol=1e-5)
  cfg2, params2 = models.from_hf(str(tmp_path))
  assert cfg2 == cfg
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_left_padding_matches_transformers_attention_mask(hf_checkpoint):
  model, path = hf_checkpoint
  cfg, params = models.from_hf(path)
  tokens = _tokens(cfg.vocab_size, b=2, t=9, seed=2)
  mask = np.ones_like(tokens)
  mask[0, :4] = 0  # row 0 is left-padded by 4
  positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
  ours, _ = models.apply(cfg, params, jnp.asarray(tokens), jnp.asarray(positions),
                         segment_ids_BT=jnp.asarray(mask))
  theirs = hf_logits(model, tokens, mask, positions)
  np.testing.assert_allclose(np.asarray(ours)[mask == 1], theirs[mask == 1], atol=1e-4,
                             rtol=1e-4)


def test_sharded_checkpoint_and_missing_shard(tmp_path):
  model = make_hf_model("qwen2", seed=3)
  path = str(tmp_path / "sharded")
  model.save_pretrained(path, safe_serialization=True, max_shard_size="20KB")
  index = json.load(open(os.path.join(path, "model.safetensors.index.json")))
  shards = sorted(set(index["weight_map"].values()))
  assert len(shards) > 1
  cfg, params = models.from_hf(path)
  tokens = _tokens(cfg.vocab_size, seed=4)
  ours, _ = models.apply(cfg, params, jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(ours), hf_logits(model, tokens), atol=1e-4, rtol=1e-4)
  os.remove(os.path.join(path, shards[-1]))
  with pytest.raises(ValueError, match=r"shard .*missing"):
    models.from_hf(path)


def test_to_hf_writes_sharded_index(tmp_path):
  cfg = models.get_preset("nano", model_type="qwen2", qkv_bias=True)
  params = models.init(cfg, jax.random.key(0))
  models.to_hf(cfg, params, str(tmp_path), max_shard_bytes=20_000)
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  cfg2, params2 = models.from_hf(str(tmp_path))
  assert cfg2 == cfg
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_transformers5_rope_parameters_and_legacy_fields_agree(tmp_path):
  rope = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=16)
  base = dict(model_type="llama", vocab_size=11, hidden_size=8, intermediate_size=16,
              num_hidden_layers=1, num_attention_heads=2)
  legacy = models.config_from_hf(dict(base, rope_theta=5e5, rope_scaling=rope))
  new = models.config_from_hf(dict(base, rope_parameters=dict(rope, rope_theta=5e5)))
  assert legacy == new
  assert new.rope_type == "llama3" and new.rope_theta == 5e5 and new.rope_factor == 8.0


@pytest.mark.parametrize("field,value,match", [
    ("model_type", "gpt2", "model_type"),
    ("hidden_act", "gelu", "hidden_act"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 2.0}, "rope"),
])
def test_unsupported_config_fields_name_the_field(field, value, match):
  hf = dict(model_type="llama", vocab_size=11, hidden_size=8, intermediate_size=16,
            num_hidden_layers=1, num_attention_heads=2)
  hf[field] = value
  with pytest.raises(ValueError, match=match):
    models.config_from_hf(hf)


def test_missing_checkpoint_files(tmp_path):
  with pytest.raises(ValueError, match="config.json"):
    models.from_hf(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(dict(
      model_type="llama", vocab_size=11, hidden_size=8, intermediate_size=16,
      num_hidden_layers=1, num_attention_heads=2)))
  with pytest.raises(ValueError, match="no model.safetensors"):
    models.from_hf(str(tmp_path))


@pytest.fixture(scope="module")
def nano():
  cfg = models.get_preset("nano", vocab_size=29, qkv_bias=True, qk_norm=True)
  params = models.init(cfg, jax.random.key(1), init_std=0.3)
  return cfg, params


def test_cached_prefill_and_decode_equal_full_forward(nano):
  cfg, params = nano
  tokens = jnp.asarray(_tokens(cfg.vocab_size, b=2, t=10, seed=5))
  full, _ = models.apply(cfg, params, tokens)
  logits, cache = _prefill_then_decode(cfg, params, tokens, models.init_cache(cfg, 2, 16), 6)
  np.testing.assert_allclose(logits, full, atol=2e-5, rtol=2e-5)
  assert int(cache.index) == 10


def _prefill_then_decode(cfg, params, tokens, cache, prefill_len):
  """Logits of `tokens` from a cached prefill of the first `prefill_len`, then one-token
  decode steps; and the final cache."""
  t = tokens.shape[1]
  pos = jnp.broadcast_to(jnp.arange(t), tokens.shape)
  pre, cache = models.apply(cfg, params, tokens[:, :prefill_len], pos[:, :prefill_len],
                            cache=cache)
  outs = [pre]
  for i in range(prefill_len, t):
    step, cache = models.apply(cfg, params, tokens[:, i:i + 1], pos[:, i:i + 1], cache=cache)
    outs.append(step)
  return np.concatenate(outs, 1), cache


def test_packed_equals_unpacked(nano):
  cfg, params = nano
  a = _tokens(cfg.vocab_size, b=1, t=5, seed=6)
  b = _tokens(cfg.vocab_size, b=1, t=7, seed=7)
  la, _ = models.apply(cfg, params, jnp.asarray(a))
  lb, _ = models.apply(cfg, params, jnp.asarray(b))
  packed = np.concatenate([a, b, np.zeros((1, 3), np.int32)], 1)
  seg = np.array([[1] * 5 + [2] * 7 + [0] * 3])
  pos = np.array([list(range(5)) + list(range(7)) + [0] * 3])
  lp, _ = models.apply(cfg, params, jnp.asarray(packed), jnp.asarray(pos),
                       segment_ids_BT=jnp.asarray(seg))
  np.testing.assert_allclose(lp[:, :5], la, atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(lp[:, 5:12], lb, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_does_not_change_values_or_grads(nano, remat):
  cfg, params = nano
  tokens = jnp.asarray(_tokens(cfg.vocab_size, b=2, t=6, seed=8))

  def loss(p, c):
    return jnp.mean(models.apply(c, p, tokens)[0] ** 2)

  g0 = jax.grad(loss)(params, cfg)
  g1 = jax.grad(loss)(params, cfg.replace(remat=remat))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), g0, g1)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_unrolled_layers_equal_scanned_values_grads_and_cache(nano, remat):
  cfg, params = nano
  unrolled = cfg.replace(scan_layers=False, remat=remat)
  tokens = jnp.asarray(_tokens(cfg.vocab_size, b=2, t=10, seed=10))
  full, _ = models.apply(cfg, params, tokens)
  np.testing.assert_allclose(models.apply(unrolled, params, tokens)[0], full, atol=2e-5,
                             rtol=2e-5)
  # Pre-sliced layers (what the sampler passes) give the same as stacked ones.
  np.testing.assert_allclose(models.apply(unrolled, models.unstack_layers(params), tokens)[0],
                             full, atol=2e-5, rtol=2e-5)

  def loss(p, c):
    return jnp.mean(models.apply(c, p, tokens)[0] ** 2)

  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
               jax.grad(loss)(params, cfg), jax.grad(loss)(params, unrolled))
  # Per-layer cache buffers: prefill + decode equal the full forward.
  cache = models.init_cache(unrolled, 2, 16)
  assert isinstance(cache.k, tuple) and len(cache.k) == cfg.num_layers
  assert cache.k[0].shape == (2, cfg.num_kv_heads, 16, cfg.head_dim) and cache.max_len == 16
  logits, _ = _prefill_then_decode(unrolled, params, tokens, cache, 6)
  np.testing.assert_allclose(logits, full, atol=2e-5, rtol=2e-5)
  pos = jnp.broadcast_to(jnp.arange(10), (2, 10))
  with pytest.raises(ValueError, match="scan_layers"):
    models.apply(cfg, params, tokens[:, :1], pos[:, :1], cache=models.init_cache(unrolled, 2, 16))


def test_dot_product_attention_path_equals_einsums(nano):
  # Packed segments and padding (the training layout) through jax.nn.dot_product_attention.
  cfg, params = nano
  fused = cfg.replace(attention="dot_product_attention")
  tokens = jnp.asarray(_tokens(cfg.vocab_size, b=2, t=9, seed=11))
  seg = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1, 1]])

  def loss(p, c):
    logits = models.apply(c, p, tokens, segment_ids_BT=seg)[0]
    return jnp.sum(jnp.where(seg[..., None] != 0, logits, 0.0) ** 2), logits

  (_, a), ga = jax.value_and_grad(loss, has_aux=True)(params, cfg)
  (_, b), gb = jax.value_and_grad(loss, has_aux=True)(params, fused)
  real = np.asarray(seg) != 0
  np.testing.assert_allclose(np.asarray(b)[real], np.asarray(a)[real], atol=2e-5, rtol=2e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=5e-4, atol=1e-4), ga, gb)
  with pytest.raises(ValueError, match="attention"):
    cfg.replace(attention="flash")


def test_bf16_compute_close_to_f32(nano):
  cfg, params = nano
  tokens = jnp.asarray(_tokens(cfg.vocab_size, b=2, t=6, seed=9))
  l32, _ = models.apply(cfg, params, tokens)
  l16, _ = models.apply(cfg.replace(dtype="bfloat16"), params, tokens)
  assert l16.dtype == jnp.float32
  np.testing.assert_allclose(l16, l32, atol=0.1 * float(jnp.std(l32)) + 0.05)


_KNOWN_PARAM_COUNTS = {
    "qwen2.5-0.5b": 494_032_768, "qwen2.5-7b": 7_615_616_512, "qwen3-0.6b": 596_049_920,
    "llama-3.2-1b": 1_235_814_400, "llama-3.1-8b": 8_030_261_248,
}


@pytest.mark.parametrize("name", sorted(models.PRESETS))
def test_presets_shapes_for_free(name):
  cfg = models.get_preset(name)
  shapes = jax.eval_shape(lambda: models.init(cfg, jax.random.key(0)))
  n = sum(x.size for x in jax.tree.leaves(shapes))
  assert n == cfg.num_params()
  if name in _KNOWN_PARAM_COUNTS:
    assert n == _KNOWN_PARAM_COUNTS[name]
  axes = models.param_axes(cfg)
  jax.tree.map(lambda s, a: len(s.shape) == len(a) or pytest.fail(f"{name}: {a} vs {s.shape}"),
               shapes, axes, is_leaf=lambda x: isinstance(x, tuple))
  logits = jax.eval_shape(lambda p: models.apply(cfg, p, jnp.zeros((2, 8), jnp.int32))[0],
                          shapes)
  assert logits.shape == (2, 8, cfg.vocab_size)


def test_bad_model_config_values():
  with pytest.raises(ValueError, match="num_kv_heads"):
    models.ModelConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_layers=1,
                       num_heads=3, num_kv_heads=2)
  with pytest.raises(ValueError, match="remat"):
    models.get_preset("nano", remat="sometimes")
  with pytest.raises(ValueError, match="unknown model preset"):
    models.get_preset("gpt-5")
