"""LoRA as a trainer option (`config.lora.enabled`): only adapters train (count by formula,
optimizer state adapter-sized), the frozen base is untouched and is the KL reference (no copy),
a checkpoint restores and resumes, and the merged export reloads in transformers."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from adaptive_rl import models, parallel
from adaptive_rl.models import lora
from adaptive_rl.rl.config import ConfigError, load_config_file, parse_config
from adaptive_rl.rl.trainer import Preempted, Trainer
from tests.hf_fixtures import hf_logits
from tests.test_sharded_training import _SHRINK as SHARDED_SHRINK

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The quickstart smoke config with `lora=True` (rank 16 on the 7 projections + the tied
# embedding), shrunk as in test_sharded_training.py (1-digit sums and a strong warm start so the
# groups have mixed rewards, and a KL term so the base is also read as the reference), on one
# device.
_SHRINK = {**SHARDED_SHRINK, "mesh.num_devices": 1}


def _config(**overrides):
  c = load_config_file(os.path.join(ROOT, "configs", "quickstart.py"), "smoke=True,lora=True")
  for key, value in {**_SHRINK, **overrides}.items():
    section, name = key.split(".")
    c[section][name] = value
  return c


class _Recording(Trainer):
  """Keeps a host copy of the base the RL phase starts from."""

  def init_state(self, params):
    self.base_at_start = jax.tree.map(np.array, params)
    return super().init_state(params)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("lora_run"))
  trainer = _Recording(parse_config(_config()), workdir)
  summary = trainer.run()
  return trainer, workdir, summary


def _records(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_only_adapters_train_and_the_base_is_untouched(finished):
  trainer, workdir, summary = finished
  state, cfg, r = trainer.state, trainer.model_cfg, trainer.lora_cfg.rank
  records = _records(workdir)
  assert [x["step"] for x in records] == [1, 2, 3]
  assert all(np.isfinite(x["loss"]) and np.isfinite(x["grad_norm"]) for x in records)
  assert any(x["grad_norm"] > 0 for x in records)

  # Trainable params: r (in + out) per targeted matrix and layer, + the tied embedding's.
  d, f, q, kv, v = (cfg.hidden_size, cfg.intermediate_size, cfg.q_size, cfg.kv_size,
                    cfg.vocab_size)
  per_layer = (d + q) + 2 * (d + kv) + (q + d) + 3 * (d + f)
  expected = cfg.num_layers * r * per_layer + r * (v + d)
  assert lora.count_params(state.params) == summary["trainable_params"] == expected
  assert summary["model_params"] == cfg.num_params() > 2 * expected
  assert sorted(state.params) == ["embed", "layers"]

  # Optimizer state: AdamW's two moments of the adapters and scalar counts, nothing else.
  adapter_shapes = {x.shape for x in jax.tree.leaves(state.params)}
  opt_leaves = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]
  assert {x.shape for x in opt_leaves} <= adapter_shapes
  assert sum(x.size for x in opt_leaves) == 2 * expected
  assert state.ref_params is None  # kl_coef > 0, yet no reference copy: the base is it

  # The adapters moved (B starts at 0); the base is bit-for-bit the one RL started from, which
  # is the init with the SFT adapters merged in (what a resume rebuilds).
  assert any(np.abs(np.asarray(ab["b"])).max() > 0
             for ab in jax.tree.leaves(state.params, is_leaf=lambda x: "b" in x))
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, trainer.base_params),
               trainer.base_at_start)
  init = trainer._init_params(jax.random.fold_in(jax.random.PRNGKey(0), 0))
  init_embed = np.array(init["embed"])
  rebuilt = trainer._merge(init, state.sft_adapters)  # (donates `init`)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, rebuilt),
               trainer.base_at_start)
  assert not np.array_equal(init_embed, trainer.base_at_start["embed"])  # SFT moved it


def test_merged_export_reloads_in_transformers(finished):
  import transformers  # pylint: disable=import-outside-toplevel
  trainer, workdir, _ = finished
  cfg, state = trainer.model_cfg, trainer.state
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.join(workdir, "merged_hf")).float().eval()
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12)).astype(np.int32)
  merged = models.apply(cfg, lora.merge(trainer.base_params, state.params, trainer.lora_cfg),
                        tokens)[0]
  unmerged = models.apply(cfg, trainer.policy(state.params), tokens)[0]
  np.testing.assert_allclose(hf_logits(reloaded, tokens), np.asarray(merged), atol=1e-4,
                             rtol=1e-4)
  np.testing.assert_allclose(np.asarray(unmerged), np.asarray(merged), atol=1e-5, rtol=1e-5)


def test_restored_state_and_rebuilt_base_equal_the_final_ones(finished):
  trainer, _, _ = finished
  state = trainer.restore_state()  # also rebuilds `trainer.base_params` (init + SFT adapters)
  for name in ("params", "opt_state", "sft_adapters"):
    jax.tree.map(np.testing.assert_array_equal, getattr(state, name),
                 getattr(trainer.state, name))
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, trainer.base_params),
               trainer.base_at_start)


def test_step_on_mixed_rewards_moves_adapters_not_base(finished):
  trainer, _, _ = finished
  state = jax.tree.map(jnp.copy, trainer.state)  # the steps donate their state
  base = jax.tree.map(np.array, trainer.base_params)
  state, ids, round_state, pool, key = trainer._begin(state)
  pool, _ = trainer._sample_round(trainer.policy(state.params), pool, round_state,
                                  state.alloc["budget"], ids, trainer.data, np.int32(0), key)
  pool = pool._replace(rewards=jax.device_put(np.tile([1.0, 0.0, 0.0, 1.0], 4).astype(np.float32),
                                              pool.rewards.sharding))
  before = jax.tree.map(np.array, state.params)
  new, metrics, _ = trainer._train_step(state, pool, ids, np.int32(1), np.int32(0),
                                        trainer.base_params)
  assert float(metrics["grad_norm"]) > 0 and float(metrics["effective_ratio"]) == 1.0
  moved = jax.tree.map(lambda a, b: not np.array_equal(np.asarray(a), b), new.params, before)
  assert all(jax.tree.leaves(moved))
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, trainer.base_params),
               base)
  assert trainer._train_step._cache_size() == 1  # the run's compiled step, reused


def test_adapter_shardings_follow_the_rules():
  # What the jitted init / steps are given as in / out shardings, on a (2, 2, 2) mesh.
  trainer = Trainer(parse_config(_config(**{"mesh.num_devices": 0, "mesh.data": 2,
                                            "mesh.fsdp": 2, "mesh.tensor": 2})), "/tmp/unused")
  sh, shapes = trainer.state_sh, trainer.abstract_state
  rules = parallel.normalize_rules(parallel.DEFAULT_RULES)
  axes = lora.lora_axes(trainer.model_cfg, trainer.lora_cfg)
  leaves = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
  mu = lambda state: state.opt_state[1][0].mu  # clip_by_global_norm, then adamw's scale_by_adam
  for tree, x_tree in ((sh.params, shapes.params), (mu(sh), mu(shapes)),
                       (sh.sft_adapters, shapes.sft_adapters)):
    for ax, s, x in zip(leaves, jax.tree.leaves(tree), jax.tree.leaves(x_tree)):
      assert s.spec == parallel.logical_to_spec(ax, rules, x.shape, trainer.mesh), ax
  assert sh.params["layers"]["wq"]["a"].spec == P(None, "fsdp", None)  # (layers, embed, rank)
  assert sh.params["layers"]["wq"]["b"].spec == P(None, None, "tensor", None)
  assert trainer.base_sh["layers"]["wq"].spec == P(None, "fsdp", "tensor", None)
  assert trainer.policy_sh.base == trainer.base_sh and trainer.policy_sh.adapters == sh.params


def test_bad_lora_settings_fail_at_launch_naming_them():
  c = _config()
  c.lora.rnak = 4
  with pytest.raises(ConfigError, match=r"lora\.rnak.*did you mean 'rank'"):
    parse_config(c)
  with pytest.raises(ConfigError, match=r"LoraConfig\.rank must be an int >= 1"):
    parse_config(_config(**{"lora.rank": 0}))
  with pytest.raises(ConfigError, match=r"config\.lora\.targets:.*matches no param path"):
    Trainer(parse_config(_config(**{"lora.targets": "wq"})), "/tmp/unused")
  with pytest.raises(ConfigError, match=r"lm_head.*matches no param path"):  # tied: no lm_head
    Trainer(parse_config(_config(**{"lora.targets": "lm_head"})), "/tmp/unused")


@pytest.mark.slow
def test_interrupted_lora_run_resumes_to_the_same_result(finished, tmp_path):
  _, _, full = finished

  class StopAfterTwo(Trainer):
    def _emit(self, writer, progress, step, *args):
      out = super()._emit(writer, progress, step, *args)
      if step == 2:
        self._stop_signal = signal.SIGTERM
      return out

  workdir = str(tmp_path / "resumed")
  with pytest.raises(Preempted):
    StopAfterTwo(parse_config(_config()), workdir).run()
  resumed = Trainer(parse_config(_config()), workdir).run()
  assert resumed["rollouts"] == full["rollouts"]
  assert resumed["final_accuracy"] == full["final_accuracy"]
  assert resumed["last_loss"] == pytest.approx(full["last_loss"], rel=1e-5, abs=1e-7)
