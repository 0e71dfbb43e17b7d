"""Sharded training on 8 fake CPU devices: a data x fsdp x tensor mesh trains to the same losses
as one device, the train state's params follow the logical-axis rules, a bad mesh or rule set
or a run too big for the device fails at launch naming it, a checkpoint restores onto another
mesh, and a 2-process run (jax.distributed over gloo) matches one process."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from adaptive_rl import models, parallel
from adaptive_rl.rl.config import ConfigError, load_config_file, parse_config
from adaptive_rl.rl.loop import train
from adaptive_rl.rl.run import build_run
from adaptive_rl.rl.session import Session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The smoke config shrunk as in test_trainer.py, with a stronger warm start on 1-digit sums so
# that the first steps' groups have mixed rewards (non-zero advantages, hence non-zero losses),
# and a KL term so the reference params are part of the sharded state. Given as dotted keys so
# the 2-process run can pass the same values as --config.KEY=VALUE flags.
_SHRINK = {
    "task.train_size": 400, "task.test_size": 16, "task.max_digits": 1,
    "sft.steps": 40, "sft.lr": 1e-2,
    "rl.steps": 3, "rl.batch_prompts": 4, "rl.group_size": 4, "rl.kl_coef": 0.01,
    "eval.every": 0, "eval.batch_size": 16, "checkpoint.every": 0,
    "log.progress": False, "log.tensorboard": False, "log.plots": False,
}
_RTOL = 1e-4
# GRPO losses are sums of O(1) per-token terms that nearly cancel (advantages are centred), so
# a step's loss can be ~1e-4 while float32 reduction order alone moves it by ~1e-7: the
# relative bound gets a float32-scale absolute floor; the first step's gradient norm (no
# cancellation) is held to the relative bound alone.
_ATOL = 1e-6


def _config(**mesh):
  c = load_config_file(os.path.join(ROOT, "configs", "quickstart.py"), "smoke=True")
  for key, value in _SHRINK.items():
    section, name = key.split(".")
    c[section][name] = value
  for name, value in mesh.items():
    c.mesh[name] = value
  return c


def _records(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


class _Done:
  """A finished run: its session's pieces and the final state (read from its checkpoint)."""

  def __init__(self, session, workdir):
    self.session, self.mesh, self.data = session, session.run.mesh, session.data
    self.model_cfg = session.run.model_cfg
    self.state = session.restore(str(workdir))[0]


def _run(workdir, **mesh):
  run = build_run(parse_config(_config(**mesh)))
  session = Session(run)
  train(run, str(workdir), session=session)
  return _Done(session, workdir), _records(workdir)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_device")
  return (workdir, *_run(workdir, data=1, num_devices=1))


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
  # Same as --config.mesh.data=2 --config.mesh.fsdp=2 --config.mesh.tensor=2.
  workdir = tmp_path_factory.mktemp("sharded")
  return (workdir, *_run(workdir, data=2, fsdp=2, tensor=2))


def _assert_losses_match(actual, expected):
  a = np.array([r["loss"] for r in actual])
  e = np.array([r["loss"] for r in expected])
  assert len(a) == len(e) == _SHRINK["rl.steps"]
  assert np.all(e != 0), e  # a vacuous comparison otherwise
  rel = np.abs(a - e) / np.abs(e)
  assert np.all(np.abs(a - e) <= _RTOL * np.abs(e) + _ATOL), (a, e, rel)
  ga = np.array([r["grad_norm"] for r in actual])
  ge = np.array([r["grad_norm"] for r in expected])
  np.testing.assert_allclose(ga[0], ge[0], rtol=_RTOL)  # the first step: same params
  # Later steps start from params one Adam update apart: Adam's first steps are ~lr * sign(g),
  # so a gradient entry that float32 noise flips near zero moves its weight by a full lr.
  np.testing.assert_allclose(ga, ge, rtol=10 * _RTOL)
  # The same completions were sampled and scored.
  assert [r["reward_mean"] for r in actual] == [r["reward_mean"] for r in expected]
  return rel


def test_dp_fsdp_tp_mesh_matches_one_device(one_device, sharded):
  _, trainer1, records1 = one_device
  _, trainer8, records8 = sharded
  assert trainer1.mesh.size == 1
  assert dict(trainer8.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1}
  rel = _assert_losses_match(records8, records1)
  print("max relative loss difference, (2, 2, 2) mesh vs 1 device:", rel.max())


def test_state_shardings_follow_the_rules(sharded):
  _, trainer, _ = sharded
  mesh, state = trainer.mesh, trainer.state
  rules = dict(parallel.DEFAULT_RULES)
  # Spelled out for a few params (nano: 4 heads, 2 kv heads, hidden 64: divisible by 2; the
  # vocabulary is the task tokenizer's, which when odd is replicated instead of split).
  vocab_split = "tensor" if trainer.model_cfg.vocab_size % 2 == 0 else None
  assert state.params["embed"].sharding.spec == P(vocab_split, "fsdp")  # (vocab, embed)
  assert state.params["layers"]["wq"].sharding.spec == P(None, "fsdp", "tensor", None)
  assert state.params["layers"]["wk"].sharding.spec == P(None, "fsdp", "tensor", None)
  assert state.params["layers"]["w_down"].sharding.spec == P(None, "tensor", "fsdp")
  axes = models.param_axes(trainer.model_cfg)
  leaves = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
  mu = state.opt_state[1][0].mu  # clip_by_global_norm, then adamw's scale_by_adam
  for tree in (state.params, state.ref_params, mu):
    for ax, x in zip(leaves, jax.tree.leaves(tree)):
      want = parallel.logical_to_spec(ax, parallel.normalize_rules(rules), x.shape, mesh)
      assert x.sharding.spec == want, (ax, x.sharding.spec, want)
      assert x.sharding.mesh == mesh
  # Allocator state, RNG and counters are replicated; the data split is over data x fsdp.
  for x in jax.tree.leaves((state.alloc, state.rng, state.counters, state.step)):
    assert x.sharding.is_fully_replicated
  assert trainer.data["prompts"].sharding.spec == P(("data", "fsdp"), None)


def test_checkpoint_restores_onto_another_mesh(one_device):
  workdir, trainer1, _ = one_device
  other = Session(build_run(parse_config(_config(data=2, fsdp=2, tensor=2))))
  state, _ = other.restore(str(workdir))
  assert state.params["layers"]["wq"].sharding.spec == P(None, "fsdp", "tensor", None)
  assert state.params["layers"]["wq"].sharding.mesh == other.run.mesh
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params),
               jax.tree.map(np.asarray, trainer1.state.params))


def test_mesh_that_does_not_match_the_devices_fails_at_launch():
  with pytest.raises(ConfigError, match=r"config\.mesh: mesh\.data=3 x mesh\.fsdp=2 x "
                                        r"mesh\.tensor=1 x mesh\.sequence=1 = 6 != 8 devices"):
    build_run(parse_config(_config(data=3, fsdp=2)))
  with pytest.raises(ConfigError, match=r"mesh\.num_devices=16 but there are only 8"):
    build_run(parse_config(_config(num_devices=16)))
  with pytest.raises(ConfigError, match=r"at most one mesh axis may be -1"):
    parse_config(_config(fsdp=-1))


def test_logical_axis_without_a_rule_fails_at_launch():
  c = _config()
  c.logical_axis_rules = tuple(r for r in parallel.DEFAULT_RULES if r[0] != "mlp")
  with pytest.raises(ConfigError, match=r"logical axis 'mlp' has no rule"):
    build_run(parse_config(c))
  c.logical_axis_rules = parallel.DEFAULT_RULES + (("embd", "fsdp"),)
  with pytest.raises(ConfigError, match=r"unknown logical axis 'embd'; did you mean 'embed'"):
    parse_config(c)
  c.logical_axis_rules = (("mlp", "model"),) + tuple(
      r for r in parallel.DEFAULT_RULES if r[0] != "mlp")
  with pytest.raises(ConfigError, match=r"names mesh axis 'model'"):
    build_run(parse_config(c))


def test_run_that_cannot_fit_fails_at_launch(monkeypatch):
  from adaptive_rl.rl import run as run_lib  # pylint: disable=import-outside-toplevel
  # CPU devices report no memory limit (the check is skipped there): pretend 64 KiB devices.
  monkeypatch.setattr(run_lib, "device_memory_bytes", lambda *args: 64 * 1024)
  with pytest.raises(ConfigError, match=r"does not fit in device memory: estimated peak .* "
                                        r"per device .* To fit: raise mesh.fsdp"):
    build_run(parse_config(_config()))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  """launch/train.py on 2 processes x 2 CPU devices == one process on 4 of its 8 devices."""
  mesh = {"data": 2, "fsdp": 2}  # data spans the two processes, fsdp each one's two devices
  _, expected = _run(tmp_path / "one_process", num_devices=4, **mesh)
  workdir = tmp_path / "two_processes"
  overrides = [f"--config.{k}={v}" for k, v in {**_SHRINK, **{f"mesh.{k}": v
                                                                 for k, v in mesh.items()}}.items()]
  port = _free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  # Output goes to files, not pipes: a process blocked on a full pipe that is not being read
  # would stall the other one inside a collective.
  logs = [open(tmp_path / f"process{i}.log", "w+") for i in range(2)]
  procs = [subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "launch", "train.py"), "--config",
       os.path.join(ROOT, "configs", "quickstart.py") + ":smoke=True", *overrides,
       "--workdir", str(workdir), "--coordinator", f"127.0.0.1:{port}", "--num_processes", "2",
       "--process_id", str(i)], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
      for i, log in enumerate(logs)]
  try:
    for p in procs:
      p.wait(timeout=600)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  outs = []
  for log in logs:
    log.seek(0)
    outs.append(log.read())
    log.close()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  assert "jax.distributed: 2 processes, 4 devices" in outs[0]
  assert "Mesh {'data': 2, 'fsdp': 2" in outs[0] and "Mesh {" not in outs[1]  # main logs only
  rel = _assert_losses_match(_records(workdir), expected)
  print("max relative loss difference, 2 processes vs 1:", rel.max())
  assert json.load(open(workdir / "summary.json"))["steps"] == _SHRINK["rl.steps"]
