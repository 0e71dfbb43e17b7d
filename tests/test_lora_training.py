"""LoRA as a trainer option (`config.lora.enabled`): only adapters train (count by formula,
optimizer state adapter-sized), the frozen base is untouched and is the KL reference (no copy),
a checkpoint restores and resumes, and the merged export reloads in transformers."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from adaptive_rl import models, parallel
from adaptive_rl.models import lora
from adaptive_rl.rl.config import ConfigError, load_config_file, parse_config
from adaptive_rl.rl.loop import train
from adaptive_rl.rl.preemption import Preempted
from adaptive_rl.rl.run import build_run
from adaptive_rl.rl.session import Session
from tests.test_trainer import _stop_after
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


class _Recording(Session):
  """Keeps a host copy of the base the RL phase starts from."""

  def start(self):
    state = super().start()
    self.base_at_start = jax.tree.map(np.array, self.policy.base)
    return state


class _Finished:
  """The finished run: its session, final state (from the last checkpoint) and run."""

  def __init__(self, session, workdir):
    self.session, self.run, self.policy = session, session.run, session.policy
    self.model_cfg, self.lora_cfg = self.run.model_cfg, self.run.lora_cfg
    self.base_at_start = session.base_at_start
    self.state = session.restore(workdir)[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("lora_run"))
  run = build_run(parse_config(_config()))
  session = _Recording(run)
  summary = train(run, workdir, session=session)
  return _Finished(session, workdir), workdir, summary


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
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, trainer.policy.base),
               trainer.base_at_start)
  init = trainer.policy.init_params(jax.random.fold_in(jax.random.PRNGKey(0), 0))
  init_embed = np.array(init["embed"])
  rebuilt = trainer.policy.merge(init, state.sft_adapters)  # (donates `init`)
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
  merged = models.apply(cfg, lora.merge(trainer.policy.base, state.params, trainer.lora_cfg),
                        tokens)[0]
  unmerged = models.apply(cfg, trainer.policy.sampling(state.params), tokens)[0]
  np.testing.assert_allclose(hf_logits(reloaded, tokens), np.asarray(merged), atol=1e-4,
                             rtol=1e-4)
  np.testing.assert_allclose(np.asarray(unmerged), np.asarray(merged), atol=1e-5, rtol=1e-5)


def test_restored_state_and_rebuilt_base_equal_the_final_ones(finished):
  trainer, workdir, _ = finished
  # A fresh session of the same run: the restore also rebuilds the base (init + SFT adapters).
  other = Session(trainer.run)
  state, _ = other.restore(workdir)
  for name in ("params", "opt_state", "sft_adapters"):
    jax.tree.map(np.testing.assert_array_equal, getattr(state, name),
                 getattr(trainer.state, name))
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, other.policy.base),
               trainer.base_at_start)


def test_step_on_mixed_rewards_moves_adapters_not_base(finished):
  trainer, _, _ = finished
  session, rl_step = trainer.session, trainer.session.rl_step
  state = jax.tree.map(jnp.copy, trainer.state)  # the steps donate their state
  base = jax.tree.map(np.array, trainer.policy.base)
  state, rollout = rl_step.begin(state)
  rollout, _ = rl_step.sample(trainer.policy.sampling(state.params), state.alloc["budget"],
                              session.data, rollout)
  pool = rollout.pool
  rollout = rollout.replace(pool=pool._replace(rewards=jax.device_put(
      np.tile([1.0, 0.0, 0.0, 1.0], 4).astype(np.float32), pool.rewards.sharding)))
  before = jax.tree.map(np.array, state.params)
  new, metrics, _ = rl_step.train(state, rollout, np.int32(0), trainer.policy.base)
  assert float(metrics["grad_norm"]) > 0 and float(metrics["effective_ratio"]) == 1.0
  moved = jax.tree.map(lambda a, b: not np.array_equal(np.asarray(a), b), new.params, before)
  assert all(jax.tree.leaves(moved))
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, trainer.policy.base),
               base)
  assert rl_step.compiled_counts()["train"] == 1  # compiled once, reused


def test_adapter_shardings_follow_the_rules():
  # What the jitted init / steps are given as in / out shardings, on a (2, 2, 2) mesh.
  run = build_run(parse_config(_config(**{"mesh.num_devices": 0, "mesh.data": 2,
                                          "mesh.fsdp": 2, "mesh.tensor": 2})))
  layout = Session(run).layout
  sh, shapes = layout.state_sh, layout.abstract_state
  rules = parallel.normalize_rules(parallel.DEFAULT_RULES)
  axes = lora.lora_axes(run.model_cfg, run.lora_cfg)
  leaves = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
  mu = lambda state: state.opt_state[1][0].mu  # clip_by_global_norm, then adamw's scale_by_adam
  for tree, x_tree in ((sh.params, shapes.params), (mu(sh), mu(shapes)),
                       (sh.sft_adapters, shapes.sft_adapters)):
    for ax, s, x in zip(leaves, jax.tree.leaves(tree), jax.tree.leaves(x_tree)):
      assert s.spec == parallel.logical_to_spec(ax, rules, x.shape, run.mesh), ax
  assert sh.params["layers"]["wq"]["a"].spec == P(None, "fsdp", None)  # (layers, embed, rank)
  assert sh.params["layers"]["wq"]["b"].spec == P(None, None, "tensor", None)
  assert layout.base_sh["layers"]["wq"].spec == P(None, "fsdp", "tensor", None)
  assert layout.policy_sh.base == layout.base_sh and layout.policy_sh.adapters == sh.params


def test_bad_lora_settings_fail_at_launch_naming_them():
  c = _config()
  c.lora.rnak = 4
  with pytest.raises(ConfigError, match=r"lora\.rnak.*did you mean 'rank'"):
    parse_config(c)
  with pytest.raises(ConfigError, match=r"LoraConfig\.rank must be an int >= 1"):
    parse_config(_config(**{"lora.rank": 0}))
  with pytest.raises(ConfigError, match=r"config\.lora\.targets:.*matches no param path"):
    build_run(parse_config(_config(**{"lora.targets": "wq"})))
  with pytest.raises(ConfigError, match=r"lm_head.*matches no param path"):  # tied: no lm_head
    build_run(parse_config(_config(**{"lora.targets": "lm_head"})))


@pytest.mark.slow
def test_interrupted_lora_run_resumes_to_the_same_result(finished, tmp_path):
  _, _, full = finished

  workdir = str(tmp_path / "resumed")
  flag, callbacks = _stop_after(2)
  with pytest.raises(Preempted):
    train(build_run(parse_config(_config())), workdir, stop=flag, callbacks=callbacks)
  resumed = train(build_run(parse_config(_config())), workdir)
  assert resumed["rollouts"] == full["rollouts"]
  assert resumed["final_accuracy"] == full["final_accuracy"]
  assert resumed["last_loss"] == pytest.approx(full["last_loss"], rel=1e-5, abs=1e-7)
