"""LoRA tests: identity at init, merge == W + s A B, the unmerged path (`adapted`) == the merged
one (logits, log-probs, gradients), parameter counts, adapter-only training, target selection,
logical axes / sharding, merged HF export, config errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adaptive_rl import models, parallel
from adaptive_rl.models import lora
from tests.hf_fixtures import hf_logits, make_hf_model

_ALL = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
_apply = jax.jit(lambda cfg, params, tokens: models.apply(cfg, params, tokens)[0],
                 static_argnums=0)
_merge = jax.jit(lora.merge, static_argnums=2)


@pytest.fixture(scope="module")
def model():
  # D=32, 4 heads / 2 kv heads of 8, F=64, untied head.
  cfg = models.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                           num_heads=4, num_kv_heads=2, tie_embeddings=False)
  params = jax.jit(functools.partial(models.init, cfg, init_std=0.2))(jax.random.key(0))
  return cfg, params


def _tokens(vocab, b=2, t=12, seed=0):
  return np.random.default_rng(seed).integers(0, vocab, size=(b, t)).astype(np.int32)


def _perturb_b(lora_params, seed=1, std=0.05):
  """Random B (at init B = 0 and the adapters do nothing)."""
  leaves, treedef = jax.tree.flatten(lora_params)
  rng = np.random.default_rng(seed)
  leaves = [x if i % 2 == 0 else jnp.asarray(std * rng.standard_normal(x.shape), x.dtype)
            for i, x in enumerate(leaves)]  # leaves alternate a, b (dict keys sorted)
  return jax.tree.unflatten(treedef, leaves)


def test_init_is_the_base_model(model):
  cfg, params = model
  config = lora.LoraConfig(rank=4, alpha=8.0)
  lp = lora.init_lora(cfg, params, config, jax.random.key(1))
  assert all(not np.any(np.asarray(lp["layers"][n]["b"])) for n in _ALL)
  tokens = _tokens(cfg.vocab_size)
  base_logits = _apply(cfg, params, tokens)
  lora_logits = _apply(cfg, lora.merge(params, lp, config), tokens)
  np.testing.assert_array_equal(np.asarray(lora_logits), np.asarray(base_logits))
  # Unmerged (the trainer's policy): x W + s (x A) 0, exactly the base too.
  unmerged_logits = _apply(cfg, lora.adapted(params, lp, config), tokens)
  np.testing.assert_array_equal(np.asarray(unmerged_logits), np.asarray(base_logits))


def test_merge_is_base_plus_scaled_product(model):
  cfg, params = model
  config = lora.LoraConfig(rank=3, alpha=6.0)  # scale 2
  lp = _perturb_b(lora.init_lora(cfg, params, config, jax.random.key(1)))
  merged = lora.merge(params, lp, config)
  jitted = _merge(params, lp, config)
  for name in _ALL:
    np.testing.assert_allclose(np.asarray(jitted["layers"][name]),
                               np.asarray(merged["layers"][name]), rtol=1e-6, atol=1e-6)
  # One layer by hand: x @ (W + s A B) == x @ W + s (x @ A) @ B, matrices flattened to 2-D.
  layer = 1
  for name, d_in in (("wq", cfg.hidden_size), ("wo", cfg.q_size), ("w_down", 64)):
    x = np.random.default_rng(2).standard_normal((5, d_in))
    w = np.asarray(params["layers"][name][layer], np.float64).reshape(d_in, -1)
    a = np.asarray(lp["layers"][name]["a"][layer], np.float64).reshape(d_in, config.rank)
    b = np.asarray(lp["layers"][name]["b"][layer], np.float64).reshape(config.rank, -1)
    got = np.asarray(merged["layers"][name][layer], np.float64).reshape(d_in, -1)
    np.testing.assert_allclose(x @ got, x @ w + 2.0 * (x @ a) @ b, rtol=1e-5, atol=1e-5)
  # Untargeted params pass through untouched.
  assert merged["embed"] is params["embed"]
  assert merged["layers"]["attn_norm"] is params["layers"]["attn_norm"]


@pytest.mark.parametrize("tie, scan", [(False, True), (True, False)])
def test_unmerged_equals_merged_logits_logprobs_and_grads(tie, scan):
  from adaptive_rl.rl.logprobs import completion_logprobs  # pylint: disable=import-outside-toplevel
  cfg = models.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                           num_heads=4, num_kv_heads=2, tie_embeddings=tie, scan_layers=scan)
  params = jax.jit(functools.partial(models.init, cfg, init_std=0.2))(jax.random.key(0))
  head = "embed" if tie else "embed|lm_head"  # every adaptable matrix of this model
  config = lora.LoraConfig(rank=3, alpha=6.0, targets=f"layers/({'|'.join(_ALL)})|{head}")
  init = jax.jit(functools.partial(lora.init_lora, cfg, params, config))  # one compile
  lp = _perturb_b(init(jax.random.key(1)), std=0.1)
  tokens = _tokens(cfg.vocab_size, b=2, t=12, seed=3)
  merged = _apply(cfg, lora.merge(params, lp, config), tokens)
  unmerged = _apply(cfg, lora.adapted(params, lp, config), tokens)
  np.testing.assert_allclose(np.asarray(unmerged), np.asarray(merged), rtol=1e-5, atol=1e-5)

  # Log-probs of a completion (the target-logit shortcut reads the head's adapter) and their
  # gradients with respect to the adapters agree too.
  prompts, comps = jnp.asarray(tokens[:, :7]), jnp.asarray(tokens[:, 7:])
  lens = jnp.array([5, 3])

  def nll(lp, how, chunk):
    p = lora.merge(params, lp, config) if how == "merged" else lora.adapted(params, lp, config)
    out, _ = completion_logprobs(cfg, p, prompts, jnp.array([7, 6]), comps, lens,
                                 chunk_size=chunk)
    return -jnp.sum(jnp.where(jnp.arange(5)[None] < lens[:, None], out, 0.0))

  grad = jax.jit(jax.value_and_grad(nll), static_argnums=(1, 2))
  (l_m, g_m), (l_u, g_u) = grad(lp, "merged", 0), grad(lp, "unmerged", 2)
  np.testing.assert_allclose(float(l_u), float(l_m), rtol=1e-5)
  jax.tree.map(lambda u, m: np.testing.assert_allclose(u, m, rtol=1e-4, atol=1e-5), g_u, g_m)
  assert all(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(g_u))


def test_trainable_count_is_rank_times_in_plus_out(model):
  cfg, params = model
  rank = 2
  lp = jax.eval_shape(functools.partial(lora.init_lora, cfg, params, lora.LoraConfig(rank=rank)),
                      jax.random.key(0))
  d, f, q, kv = cfg.hidden_size, cfg.intermediate_size, cfg.q_size, cfg.kv_size
  dims = dict(wq=(d, q), wk=(d, kv), wv=(d, kv), wo=(q, d), w_gate=(d, f), w_up=(d, f),
              w_down=(f, d))
  expected = sum(cfg.num_layers * rank * (i + o) for i, o in dims.values())
  assert lora.count_params(lp) == expected == 2048  # 2 * 2 * (64+48+48+64+96+96+96)
  assert lora.count_params(params) == cfg.num_params()
  assert lora.count_params(lp) < 0.1 * lora.count_params(params)


def test_optax_trains_only_the_adapters(model):
  cfg, params = model
  config = lora.LoraConfig(rank=4, alpha=8.0)
  lp = lora.init_lora(cfg, params, config, jax.random.key(1))
  lp_init, base_copy = jax.tree.map(np.array, lp), jax.tree.map(np.array, params)
  tokens = _tokens(cfg.vocab_size, b=4, t=16)

  def loss_fn(lp, base):
    logits = models.apply(cfg, lora.merge(base, lp, config), tokens[:, :-1])[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  opt = optax.adam(1e-2)

  @jax.jit
  def step(lp, opt_state, base):
    loss, g = jax.value_and_grad(loss_fn)(lp, base)
    updates, opt_state = opt.update(g, opt_state, lp)
    return optax.apply_updates(lp, updates), opt_state, loss, g

  opt_state = opt.init(lp)
  losses = []
  for i in range(4):
    lp, opt_state, loss, grads = step(lp, opt_state, params)
    losses.append(float(loss))
    if i == 0:  # B = 0, so dL/dA = dL/dW B^T = 0 at init; dL/dB = s A^T dL/dW != 0.
      for name in _ALL:
        assert np.abs(np.asarray(grads["layers"][name]["b"])).max() > 0, name
  assert losses[-1] < losses[0]
  for name in _ALL:  # once B != 0, A gets gradients too
    assert np.abs(np.asarray(lp["layers"][name]["a"]) - lp_init["layers"][name]["a"]).max() > 0
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), base_copy)


def test_regex_selects_only_the_named_matrices(model):
  cfg, params = model
  config = lora.LoraConfig(rank=2, alpha=2.0, targets=r"layers/(wq|wv)")
  lp = _perturb_b(lora.init_lora(cfg, params, config, jax.random.key(0)))
  assert sorted(lp["layers"]) == ["wq", "wv"] and list(lp) == ["layers"]
  merged = lora.merge(params, lp, config)
  for name in _ALL:
    same = np.array_equal(np.asarray(merged["layers"][name]), np.asarray(params["layers"][name]))
    assert same == (name not in ("wq", "wv")), name
  # fullmatch: "wq" alone names no path; lm_head is adaptable too.
  assert lora.target_paths(params, lora.LoraConfig(targets="lm_head|layers/w_up")) == [
      "layers/w_up", "lm_head"]
  head = lora.init_lora(cfg, params, lora.LoraConfig(rank=2, targets="lm_head"),
                        jax.random.key(0))
  assert head["lm_head"]["a"].shape == (32, 2) and head["lm_head"]["b"].shape == (2, 64)


def test_axes_match_shapes_and_shard_on_a_mesh(model):
  cfg, params = model
  config = lora.LoraConfig(rank=4)
  axes = lora.lora_axes(cfg, config)
  assert axes["layers"]["wq"] == {"a": ("layers", "embed", "lora_rank"),
                                  "b": ("layers", "lora_rank", "heads", "head_dim")}
  assert axes["layers"]["wo"] == {"a": ("layers", "heads", "head_dim", "lora_rank"),
                                  "b": ("layers", "lora_rank", "embed")}
  # Shapes for free (abstract base), and one axis name per dim.
  abstract = jax.eval_shape(functools.partial(lora.init_lora, cfg, params, config),
                            jax.random.key(0))
  is_axes = lambda x: isinstance(x, tuple)
  assert jax.tree.structure(axes, is_leaf=is_axes) == jax.tree.structure(abstract)
  jax.tree.map(lambda ax, x: len(ax) == x.ndim or pytest.fail(f"{ax} vs {x.shape}"), axes,
               abstract, is_leaf=is_axes)
  assert abstract["layers"]["wq"]["b"].shape == (2, 4, 4, 8)
  # Sharded per the default rules on fsdp=2 x tensor=2 (x data=2): merge gives the same values.
  mesh = parallel.make_mesh(parallel.MeshConfig(data=2, fsdp=2, tensor=2))
  rules = parallel.validate_rules(parallel.DEFAULT_RULES, axes, mesh)
  lp = _perturb_b(lora.init_lora(cfg, params, config, jax.random.key(0)))
  lp_sharded = jax.device_put(lp, parallel.param_shardings(mesh, axes, rules, lp))
  base_sharded = jax.device_put(
      params, parallel.param_shardings(mesh, models.param_axes(cfg), rules, params))
  assert lp_sharded["layers"]["wq"]["a"].sharding.spec[1] == "fsdp"
  with parallel.axis_rules(mesh, rules):
    merged = _merge(base_sharded, lp_sharded, config)
  expected = lora.merge(params, lp, config)
  for name in _ALL:
    np.testing.assert_allclose(np.asarray(merged["layers"][name]),
                               np.asarray(expected["layers"][name]), rtol=1e-5, atol=1e-5)


def test_export_merged_reloads_in_transformers(tmp_path):
  import transformers  # pylint: disable=import-outside-toplevel

  base_dir, out_dir = str(tmp_path / "base"), str(tmp_path / "merged")
  make_hf_model("qwen2", seed=5).save_pretrained(base_dir, safe_serialization=True)
  cfg, params = models.from_hf(base_dir)
  config = lora.LoraConfig(rank=4, alpha=8.0)
  lp = _perturb_b(lora.init_lora(cfg, params, config, jax.random.key(3)), seed=4, std=0.02)
  lora.export_merged(cfg, params, lp, config, out_dir)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out_dir).float().eval()
  tokens = _tokens(cfg.vocab_size, b=2, t=10, seed=5)
  ours = np.asarray(_apply(cfg, lora.merge(params, lp, config), tokens))
  np.testing.assert_allclose(hf_logits(reloaded, tokens), ours, atol=1e-4, rtol=1e-4)
  base = np.asarray(_apply(cfg, params, tokens))
  assert np.abs(ours - base).max() > 1e-2  # the adapters did change the model


@pytest.mark.parametrize("kwargs, match", [
    (dict(rank=0), r"LoraConfig.rank must be an int >= 1"),
    (dict(rank=-2), r"LoraConfig.rank must be an int >= 1"),
    (dict(rank=2.0), r"LoraConfig.rank must be an int >= 1"),
    (dict(alpha=0.0), r"LoraConfig.alpha must be a number > 0"),
    (dict(targets="layers/(wq"), r"LoraConfig.targets must be a valid regex"),
    (dict(param_dtype="int8"), r"LoraConfig.param_dtype must be one of"),
])
def test_bad_config_names_the_field(kwargs, match):
  with pytest.raises(ValueError, match=match):
    lora.LoraConfig(**kwargs)


def test_bad_targets_raise(model):
  cfg, params = model
  with pytest.raises(ValueError, match=r"targets='wq' matches no param path"):
    lora.init_lora(cfg, params, lora.LoraConfig(targets="wq"), jax.random.key(0))
  with pytest.raises(ValueError, match=r"matches no param path"):
    lora.lora_axes(cfg, lora.LoraConfig(targets=r"layers/nothing"))
  with pytest.raises(ValueError, match=r"\['layers/attn_norm'\], which cannot take an adapter"):
    lora.init_lora(cfg, params, lora.LoraConfig(targets=r"layers/(wq|attn_norm)"),
                   jax.random.key(0))
  with pytest.raises(ValueError, match=r"adapter path 'layers/bogus' has no base weight"):
    lora.merge(params, {"layers": {"bogus": {"a": jnp.zeros((2, 32, 2)),
                                             "b": jnp.zeros((2, 2, 32))}}}, lora.LoraConfig())
