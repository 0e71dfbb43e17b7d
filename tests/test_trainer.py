"""End-to-end trainer tests on a tiny config: outputs, exact resume, no recompiles, zero
advantages give no update, ratio 1 on the first epoch, bad config and reward errors."""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_rl.rl.config import ConfigError, load_config_file, parse_config
from adaptive_rl.rl.loop import NumericalFailure, train
from adaptive_rl.rl.preemption import Preempted, StopFlag
from adaptive_rl.rl.run import build_run
from adaptive_rl.rl.session import Session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The tiny run every test here uses: the quickstart smoke config, shrunk further.
_OVERRIDES = {
    "task.train_size": 400, "task.test_size": 40, "sft.steps": 30, "rl.steps": 4,
    "rl.batch_prompts": 4, "rl.group_size": 4, "eval.every": 2, "eval.batch_size": 40,
    "checkpoint.every": 2, "log.progress": False, "log.tensorboard": True,
    "mesh.num_devices": 1,  # one device: the mesh cases are in test_sharded_training.py
}


def _config(**rl):
  c = load_config_file(os.path.join(ROOT, "configs", "quickstart.py"), "smoke=True")
  for dotted, value in _OVERRIDES.items():
    section, key = dotted.split(".")
    c[section][key] = value
  for k, v in rl.items():
    c.rl[k] = v
  return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  run = build_run(parse_config(_config()))
  session = Session(run)
  summary = train(run, workdir, session=session)
  return session, workdir, summary


def _train(config, workdir, **kwargs):
  return train(build_run(parse_config(config)), str(workdir), **kwargs)


def _stop_after(step: int) -> tuple[StopFlag, list]:
  """A stop flag and a callback that sets it after `step`, as the SIGTERM handler would."""
  flag = StopFlag()

  def callback(done, record):
    del record
    if done == step:
      flag.signal = signal.SIGTERM

  return flag, [callback]


_REQUIRED = ("step", "rollouts", "tokens_generated", "reward_mean", "accuracy", "effective_ratio",
             "prompt_effective_ratio", "rollout_efficiency", "frac_all_correct",
             "frac_all_wrong", "loss", "kl", "entropy", "grad_norm", "step_time_s",
             "samples_per_second", "reward_errors", "nan_skips")


def test_outputs(finished):
  session, workdir, summary = finished
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in lines] == [1, 2, 3, 4]
  for rec in lines:
    missing = [k for k in _REQUIRED if k not in rec and not (k == "kl")]
    assert not missing, missing
  # Uniform budget: 4 prompts x 4 samples per step, cumulative.
  assert [r["rollouts"] for r in lines] == [16, 32, 48, 64]
  assert "eval_accuracy" in lines[1]
  for rec in lines:
    assert 0 <= rec["effective_ratio"] <= 1 and 0 <= rec["rollout_efficiency"] <= 1
  s = json.load(open(os.path.join(workdir, "summary.json")))
  for key in ("sft_accuracy", "final_accuracy", "rollouts", "tokens_generated", "wall_time_s",
              "config"):
    assert key in s
  assert s["rollouts"] == 64 and s["tokens_generated"] == lines[-1]["tokens_generated"]
  assert sorted(os.listdir(os.path.join(workdir, "plots"))) == [
      "effective_ratio.png", "reward_accuracy.png", "samples_per_prompt.png"]
  assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tb")))
  assert session.run.test_data.size == 40


def test_the_rl_step_compiles_once_as_one_program(finished):
  session, _, _ = finished
  # In-graph rewards: the whole step (rounds included) is one jitted program, compiled once;
  # the Python-driven pieces never ran.
  assert session.rl_step.compiled_counts() == {"begin": 0, "sample": 0, "finish": 0,
                                               "train": 0, "step": 1}


def test_interrupted_run_resumes_to_the_same_result(finished, tmp_path):
  _, _, full = finished

  workdir = str(tmp_path / "resumed")
  flag, callbacks = _stop_after(2)
  with pytest.raises(Preempted, match="SIGTERM"):
    _train(_config(), workdir, stop=flag, callbacks=callbacks)
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert lines[-1]["step"] in (2, 3)
  resumed = _train(_config(), workdir)
  assert resumed["final_accuracy"] == full["final_accuracy"]
  assert resumed["rollouts"] == full["rollouts"]
  assert resumed["last_loss"] == pytest.approx(full["last_loss"], rel=1e-5, abs=1e-7)
  steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == [1, 2, 3, 4]  # steps after the checkpoint rewritten, not repeated


def _rollout_state(session, rewards):
  """A fresh (no SFT) state and one sampled round whose rewards are replaced by `rewards`."""
  rl_step = session.rl_step
  state = session.policy.start(lambda trained, base, key: None)  # no warm start
  state, rollout = rl_step.begin(state)
  rollout, _ = rl_step.sample(state.params, state.alloc["budget"], session.data, rollout)
  rollout = rollout.replace(pool=rollout.pool._replace(rewards=jnp.asarray(rewards,
                                                                           jnp.float32)))
  return state, rollout


def test_zero_advantage_batch_leaves_params_unchanged(finished):
  session, _, _ = finished
  state, rollout = _rollout_state(session, np.full(16, 1.0))
  before = jax.tree.map(np.asarray, state.params)
  new, metrics, _ = session.rl_step.train(state, rollout, np.int32(0))
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, new.params), before)
  assert float(metrics["effective_ratio"]) == 0.0 and float(metrics["grad_norm"]) == 0.0


def test_first_epoch_ratio_is_one_and_nothing_clipped(finished):
  session, _, _ = finished
  rewards = np.tile([1.0, 0.0, 0.0, 1.0], 4)
  state, rollout = _rollout_state(session, rewards)
  # One mini-batch, one epoch: the policy that sampled is the one being differentiated.
  single = Session(build_run(parse_config(_config(mini_batches=1))))
  _, metrics, _ = single.rl_step.train(state, rollout, np.int32(0))
  assert abs(float(metrics["ratio_mean"]) - 1.0) < 1e-4
  assert float(metrics["clip_frac"]) == 0.0
  assert float(metrics["effective_ratio"]) == 1.0
  assert float(metrics["prompt_effective_ratio"]) == 1.0


def test_bad_config_keys_and_values_fail_naming_them():
  c = _config()
  c.rl.lrr = 1e-3
  with pytest.raises(ConfigError, match=r"rl\.lrr.*did you mean 'lr'"):
    parse_config(c)
  c = _config(group_size=0)
  with pytest.raises(ConfigError, match="rl.group_size"):
    parse_config(c)
  c = _config()
  c.allocator.name = "nonsense"
  with pytest.raises(ConfigError, match="valid allocators"):
    build_run(parse_config(c))


def test_launch_rejects_unknown_override(tmp_path):
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "train.py"), "--config",
       os.path.join(ROOT, "configs", "quickstart.py") + ":smoke=True", "--config.rl.lrr=3",
       "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "lrr" in out.stderr


def test_host_reward_failures_score_zero_and_are_counted(tmp_path):
  c = _config()
  c.rl.steps = 2
  c.reward.mode = "host"
  c.reward.fn = "tests.reward_fns:flaky_exact"
  c.reward.timeout_s = 2.0
  c.task.reverse_answer = False
  summary = _train(c, tmp_path)
  lines = [json.loads(l) for l in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert summary["steps"] == 2
  assert lines[-1]["reward_errors"] > 0


def test_evaluate_k_on_the_trained_policy(finished):
  from adaptive_rl.rl.evaluation import evaluate_k
  session, workdir, _ = finished
  state, _ = session.restore(workdir)
  run = session.run
  out = evaluate_k(run.model_cfg, state.params, run.task, run.test_data, k=4,
                   temperature=1.0, max_new_tokens=run.max_new, batch_size=16, limit=20)
  assert out["num_prompts"] == 20
  assert out["pass@1"] == pytest.approx(out["avg@4"])  # unbiased pass@1 is the mean
  assert out["pass@1"] <= out["pass@2"] <= out["pass@4"] <= 1.0
  assert 0.0 <= out["maj@4"] <= 1.0


def test_evaluate_cli_writes_json(finished):
  _, workdir, _ = finished
  flags = [f"--config.{k}={v}" for k, v in _OVERRIDES.items()]
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "evaluate.py"), "--config",
       os.path.join(ROOT, "configs", "quickstart.py") + ":smoke=True", *flags,
       "--workdir", workdir, "--k", "2", "--limit", "8"],
      capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  result = json.load(open(os.path.join(workdir, "eval_step4_k2.json")))
  assert result["step"] == 4 and result["num_prompts"] == 8 and "pass@2" in result


def _nan_at_step(step: int):
  """A policy loss that is NaN during RL step `step` (1-based): fault injection through the
  run's `loss_fn`, reading a host-side count of mini-batch updates (2 per step here)."""
  from adaptive_rl.rl.losses import policy_loss
  calls = {"n": 0}

  def poison():
    calls["n"] += 1
    return np.float32(np.nan if (calls["n"] - 1) // 2 + 1 == step else 1.0)

  def loss_fn(*args):
    loss, metrics = policy_loss(*args)
    factor = jax.experimental.io_callback(poison, jax.ShapeDtypeStruct((), jnp.float32),
                                          ordered=True)
    return loss * factor, metrics

  return loss_fn


def _train_with_nan(config, workdir, step):
  import dataclasses
  run = build_run(parse_config(config))
  return train(dataclasses.replace(run, loss_fn=_nan_at_step(step)), str(workdir))


def test_nan_loss_is_skipped_counted_and_the_run_goes_on(tmp_path):
  c = _config(steps=3)
  summary = _train_with_nan(c, tmp_path, 2)
  lines = [json.loads(l) for l in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert summary["steps"] == 3
  # Both mini-batch updates of step 2 were skipped, none of the others.
  assert [r["skipped_updates"] for r in lines] == [0, 2, 0]
  assert lines[-1]["nan_skips"] == 2 and summary["nan_skips"] == 2


def test_too_many_consecutive_nans_stop_with_a_checkpoint(tmp_path):
  c = _config(steps=3, max_consecutive_nan=2)
  with pytest.raises(NumericalFailure, match="consecutive"):
    _train_with_nan(c, tmp_path, 2)
  from adaptive_rl.checkpoint import Checkpointer
  ck = Checkpointer(str(tmp_path))
  assert ck.latest_step() == 2
  ck.close()


def test_launch_with_unwritable_workdir_fails_naming_it(tmp_path):
  (tmp_path / "file").write_text("x")  # a directory below a regular file: unwritable for root too
  workdir = str(tmp_path / "file" / "run")
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "train.py"), "--config",
       os.path.join(ROOT, "configs", "quickstart.py") + ":smoke=True",
       "--config.mesh.num_devices=1", "--workdir", workdir],
      capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-3000:]
  assert f"workdir {workdir} is not writable" in out.stderr
  assert "pass a writable --workdir" in out.stderr and "Traceback" not in out.stderr


def test_preemption_notice_checkpoints_then_a_damaged_latest_step_is_retrained(
    finished, tmp_path, monkeypatch):
  import shutil
  from adaptive_rl.checkpoint import Checkpointer
  _, _, full = finished
  workdir = str(tmp_path)
  # What jax's preemption sync manager reports on a multi-host TPU run that got a notice.
  monkeypatch.setattr(Checkpointer, "reached_preemption", lambda self, step: step == 3)
  with pytest.raises(Preempted, match="preemption notice: checkpointed step 3"):
    _train(_config(), workdir)
  monkeypatch.undo()
  ck = Checkpointer(workdir)
  assert ck.all_steps() == [2, 3]
  ck.close()
  assert [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))] == [1, 2, 3]
  # Damage the newest checkpoint: the resume falls back to step 2 and trains 3 and 4 again.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "3", "state"))
  resumed = _train(_config(), workdir)
  assert os.path.isdir(os.path.join(workdir, "checkpoints_unreadable", "3"))
  steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == [1, 2, 3, 4]  # rewritten after step 2, not duplicated
  assert resumed["rollouts"] == full["rollouts"]
  assert resumed["final_accuracy"] == full["final_accuracy"]
  assert resumed["last_loss"] == pytest.approx(full["last_loss"], rel=1e-5, abs=1e-7)
