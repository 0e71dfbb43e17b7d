"""Tests of HostRewardRunner: ordering, error / timeout accounting, hung workers, JAX parent."""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_rl.tasks.countdown import CountdownTask
from adaptive_rl.tasks.host_reward import ERROR, OK, TIMEOUT, HostRewardRunner


# Module-level so the worker processes can unpickle them by reference.
def exact_match(completion: str, answer: str) -> float:
  return float(completion == answer)


def misbehaving(completion: str, answer: str) -> float:
  """Correct on ordinary inputs; misbehaves in the way the completion names."""
  if completion == "raise":
    raise ValueError("bad completion")
  if completion == "nan":
    return math.nan
  if completion == "big":
    return 2.0
  if completion == "text":
    return "not a number"
  if completion == "die":
    os._exit(3)
  if completion == "hang":
    while True:
      time.sleep(1.0)
  return float(completion == answer)


_CASES = ["a", "raise", "hang", "b", "nan", "big", "text", "die", "hang", "c"]
_ANSWERS = ["a", "x", "x", "z", "x", "x", "x", "x", "x", "c"]
_REWARDS = [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
_STATUS = [OK, ERROR, TIMEOUT, OK, ERROR, ERROR, ERROR, ERROR, TIMEOUT, OK]


def test_in_process_catches_errors():
  runner = HostRewardRunner(misbehaving, max_workers=0)
  cases = [c for c in _CASES if c not in ("hang", "die")]  # no timeouts in-process
  answers = [a for c, a in zip(_CASES, _ANSWERS) if c not in ("hang", "die")]
  result = runner(cases, answers)
  np.testing.assert_array_equal(result.rewards, [1, 0, 0, 0, 0, 0, 1])
  np.testing.assert_array_equal(result.status, [OK, ERROR, OK, ERROR, ERROR, ERROR, OK])
  assert (result.errors, result.timeouts) == (4, 0)
  assert result.rewards.dtype == np.float32
  runner(["raise"], ["x"])
  assert runner.errors == 5


def test_pool_errors_timeouts_and_recovery():
  # JAX is imported and has run in this process: forkserver workers must still start cleanly.
  assert int(jax.jit(lambda x: x + 1)(jnp.int32(1))) == 2
  with HostRewardRunner(misbehaving, timeout_s=1.0, max_workers=2, batch_timeout_s=20.0) as run:
    run(["warm"], ["warm"])  # start the workers outside the timed region
    start = time.monotonic()
    result = run(_CASES, _ANSWERS)
    elapsed = time.monotonic() - start
    np.testing.assert_array_equal(result.rewards, _REWARDS)
    np.testing.assert_array_equal(result.status, _STATUS)
    assert (result.errors, result.timeouts) == (5, 2)
    # Two hangs on two workers are killed in parallel after ~timeout_s; replacements start in
    # the background while the live worker finishes the rest.
    assert elapsed < 8.0, elapsed
    # Hung / dead workers were replaced: a clean batch after that is fully scored, in order.
    words = [f"w{i}" for i in range(40)]
    answers = [w if i % 3 else "no" for i, w in enumerate(words)]
    result = run(words, answers)
    np.testing.assert_array_equal(result.rewards, [float(i % 3 != 0) for i in range(40)])
    assert (result.errors, result.timeouts) == (0, 0)
    assert (run.errors, run.timeouts) == (5, 2)


def test_pool_batch_deadline_bounds_a_call():
  with HostRewardRunner(misbehaving, timeout_s=1.0, max_workers=2) as run:
    run(["warm"], ["warm"])
    start = time.monotonic()
    result = run(["hang"] * 5 + ["a"], ["x"] * 5 + ["a"])
    elapsed = time.monotonic() - start
    # 5 hangs on 2 workers would take 3 timeouts in turn; the batch deadline cuts at ~timeout_s.
    assert elapsed < 3.0, elapsed
    assert result.timeouts >= 5 and (result.rewards[:5] == 0).all()
    assert (result.status[:5] == TIMEOUT).all()


def test_task_reward_text_runs_in_workers():
  task = CountdownTask(train_size=64, test_size=50)
  data = task.split("test")
  completions = [task.tokenizer.decode(d) for d in data.demos[:24]]
  completions[::4] = ["1+1"] * len(completions[::4])  # wrong (or invalid) answers
  with HostRewardRunner(task.reward_text, timeout_s=30.0, max_workers=2) as run:
    result = run(completions, data.answers[:24])
  comps, lengths = task.encode_completions(completions)
  expected = np.asarray(jax.jit(task.reward)(comps, lengths, data.targets[:24]))
  np.testing.assert_array_equal(result.rewards, expected)
  assert expected.sum() == 18


def test_bad_settings():
  with pytest.raises(ValueError, match="picklable"):
    HostRewardRunner(lambda c, a: 1.0, max_workers=1)
  with pytest.raises(ValueError, match="timeout_s"):
    HostRewardRunner(exact_match, timeout_s=0)
  with pytest.raises(ValueError, match="batch_timeout_s"):
    HostRewardRunner(exact_match, timeout_s=2.0, batch_timeout_s=1.0)
  with pytest.raises(ValueError, match="max_workers"):
    HostRewardRunner(exact_match, max_workers=-1)
  with pytest.raises(ValueError, match="answers"):
    HostRewardRunner(exact_match, max_workers=0)(["a"], [])
  assert HostRewardRunner(lambda c, a: 1.0, max_workers=0)(["a"], ["b"]).rewards[0] == 1.0
