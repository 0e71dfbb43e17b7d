"""Preemption with real signals: SIGTERM then resume matches an uninterrupted run; a SIGKILL in the
middle of a checkpoint write leaves the previous checkpoint restorable.

The SIGTERM test trains three times (about 3 minutes on two shared cores) and is `slow`; the
SIGKILL test takes seconds. Both run real subprocesses (`launch/train.py`, or a small script
around `Checkpointer`) on one CPU device; the fake 8-device setting of `conftest.py` is removed
from their environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from adaptive_rl.checkpoint import Checkpointer

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STEPS = 12
_OVERRIDES = [
    f"--config.rl.steps={_STEPS}", "--config.checkpoint.every=4", "--config.log.progress=False",
    "--config.log.plots=False", "--config.task.train_size=400", "--config.task.test_size=40",
    "--config.eval.batch_size=40", "--config.sft.steps=30",
]
_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # how Orbax names a step directory before it commits


def _env() -> dict[str, str]:
  env = dict(os.environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = flags.strip()
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _train(workdir: str) -> subprocess.Popen:
  cmd = [sys.executable, "launch/train.py", "--config", "configs/quickstart.py:smoke=True",
         *_OVERRIDES, "--workdir", workdir]
  return subprocess.Popen(cmd, cwd=_ROOT, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
    pytest.fail(f"process still running after {timeout} s; output:\n{out[-3000:]}")
  return proc.returncode, out


def _metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip().endswith("}")]


def _summary(workdir: str) -> dict:
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


@pytest.mark.slow  # three training runs: about 3 minutes on two shared cores
def test_sigterm_then_resume_matches_uninterrupted_run(tmp_path):
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  # Both start together: on two cores this roughly halves the wall time.
  reference, victim = _train(full), _train(cut)
  try:
    deadline = time.time() + 300
    while len(_metrics(cut)) < 5:
      if victim.poll() is not None:
        pytest.fail(f"run ended before it was signalled:\n{victim.communicate()[0][-3000:]}")
      assert time.time() < deadline, "no 5 metrics lines within 300 s"
      time.sleep(0.05)
    victim.send_signal(signal.SIGTERM)
    code, out = _finish(victim, timeout=60)
    assert code == 143, out[-3000:]
    assert "resume" in out, out[-3000:]

    ckpt = Checkpointer(cut)
    stopped_at = ckpt.latest_step()
    ckpt.close()
    assert stopped_at is not None and 5 <= stopped_at < _STEPS  # the resume has work left
    # A crash while saving the final step would leave this behind; the resume must ignore it.
    os.makedirs(os.path.join(cut, "checkpoints", f"{_STEPS}{_TMP_SUFFIX}-1234567890", "state"))

    code, out = _finish(_train(cut), timeout=300)
    assert code == 0, out[-3000:]
    assert f"Resuming from checkpoint step {stopped_at}" in out, out[-3000:]
    code, out = _finish(reference, timeout=300)
    assert code == 0, out[-3000:]
  finally:
    for proc in (reference, victim):
      if proc.poll() is None:
        proc.kill()
        proc.wait()

  a, b = _summary(full), _summary(cut)
  for key in ("final_accuracy", "rollouts", "steps", "tokens_generated", "last_loss"):
    assert a[key] == b[key], (key, a[key], b[key])
  assert a["last_loss"] is not None and b["steps"] == _STEPS
  for workdir in (full, cut):
    assert [r["step"] for r in _metrics(workdir)] == list(range(1, _STEPS + 1))
  # Every step's loss, not only the last one: the resumed steps replay the same computation.
  np.testing.assert_array_equal([r["loss"] for r in _metrics(full)],
                                [r["loss"] for r in _metrics(cut)])


_SAVER = textwrap.dedent("""
    import sys
    import jax.numpy as jnp
    from adaptive_rl.checkpoint import Checkpointer

    ckpt = Checkpointer(sys.argv[1], keep=3)
    step = 0
    while True:  # until killed: each save writes 64 MiB in 64 arrays
      step += 1
      state = {f"w{i:02d}": jnp.full((256, 1024), float(step), jnp.float32) for i in range(64)}
      ckpt.save(step, state, {"step": step})
      print("saved", step, flush=True)
""")


def _tmp_steps(directory: str) -> list[int]:
  if not os.path.isdir(directory):
    return []
  return [int(m.group(1)) for name in os.listdir(directory)
          if (m := re.fullmatch(rf"(\d+){re.escape(_TMP_SUFFIX)}.*", name))]


def _has_data(directory: str, step: int) -> bool:
  """Whether the uncommitted directory of `step` already holds some of the array data."""
  try:
    return any(os.listdir(os.path.join(directory, name, "state"))
               for name in os.listdir(directory) if name.startswith(f"{step}{_TMP_SUFFIX}"))
  except OSError:  # renamed (committed) or not created yet
    return False


def test_sigkill_during_checkpoint_write_keeps_previous_step(tmp_path):
  script = tmp_path / "saver.py"
  script.write_text(_SAVER)
  for attempt in range(5):  # the kill can land just after a commit; then try again
    workdir = str(tmp_path / f"run{attempt}")
    directory = os.path.join(workdir, "checkpoints")
    proc = subprocess.Popen([sys.executable, str(script), workdir], cwd=_ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
      deadline = time.time() + 120
      while True:  # wait until step >= 2 is half written (step 1 is then complete)
        partial = [s for s in _tmp_steps(directory) if s >= 2 and _has_data(directory, s)]
        if partial:
          proc.send_signal(signal.SIGKILL)
          break
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, "no checkpoint write started within 120 s"
        time.sleep(0.002)
      proc.wait(timeout=30)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    if _tmp_steps(directory):
      break
  else:
    pytest.fail("every kill landed between two writes")

  interrupted = max(_tmp_steps(directory))
  ckpt = Checkpointer(workdir, keep=3)
  try:
    assert ckpt.latest_step() == interrupted - 1
    assert interrupted not in ckpt.all_steps()
    like = {f"w{i:02d}": jax.ShapeDtypeStruct((256, 1024), np.float32) for i in range(64)}
    state, meta = ckpt.restore(None, like)
    assert meta == {"step": interrupted - 1}
    for value in state.values():
      np.testing.assert_array_equal(np.asarray(value), interrupted - 1)
    # The interrupted step can be written again over the leftover temporary directory.
    ckpt.save(interrupted, {k: np.full(v.shape, -1.0, np.float32) for k, v in like.items()},
              {"step": interrupted})
    ckpt.wait()
    assert ckpt.latest_step() == interrupted
    assert ckpt.restore(None, like)[1] == {"step": interrupted}
  finally:
    ckpt.close()
  shutil.rmtree(workdir, ignore_errors=True)
