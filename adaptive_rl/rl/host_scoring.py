"""Rewards scored on the host: decode completions, call a Python reward, share the result.

  scorer = HostScorer(task, reward_cfg)
  rl_step(state, data, host_score=scorer.for_rounds(train_data, num_slots))
  evaluate(..., host_score=scorer.for_eval(test_data))

One scorer for training rounds and held-out evaluation. Multi-host: process 0 decodes and
scores, then broadcasts, so every process feeds the step the same rewards (timeouts are not
deterministic, so scoring everywhere could disagree). A completion without eos scores 0 and is
not sent to the reward function.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from adaptive_rl.rl.config import ConfigError, RewardConfig
from adaptive_rl.rl.layout import fetch


def resolve_reward_fn(spec: str, task) -> Any:
  """'' -> the task's `reward_text`; 'module:function' -> that function (imported)."""
  if not spec:
    return task.reward_text
  module, _, name = spec.partition(":")
  try:
    return getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError) as e:
    raise ConfigError(f"reward.fn={spec!r} could not be imported: {e}") from None


class HostScorer:
  """The run's host reward function in worker processes (see the module docstring)."""

  def __init__(self, task, cfg: RewardConfig):
    from adaptive_rl.tasks.host_reward import HostRewardRunner  # pylint: disable=import-outside-toplevel
    self.task = task
    self.runner = HostRewardRunner(resolve_reward_fn(cfg.fn, task), timeout_s=cfg.timeout_s,
                                   max_workers=cfg.workers)

  def score(self, tokens: np.ndarray, lengths: np.ndarray, answers, valid=None):
    """Rewards [n] float32 and the count of calls that raised or timed out."""
    n = len(lengths)
    rewards, failed = np.zeros(n, np.float32), np.int32(0)
    if jax.process_index() == 0:
      texts, where = [], []
      for i in range(n):
        if valid is not None and not valid[i]:
          continue
        text = self.task.decode_completion(tokens[i], lengths[i])
        if text is not None:  # no eos: nothing to score
          texts.append(text)
          where.append(i)
      if texts:
        result = self.runner(texts, [answers[i] for i in where])
        rewards[where] = result.rewards
        failed = np.int32(result.errors + result.timeouts)
    if jax.process_count() > 1:
      rewards, failed = multihost_utils.broadcast_one_to_all((rewards, failed))
    return np.asarray(rewards), int(failed)

  def for_rounds(self, data, num_slots: int) -> Callable:
    """(rollout, plan) -> (rewards [S], failures) of the round just sampled into the pool."""

    def score_round(rollout, plan):
      r = int(fetch(rollout.rounds))  # the sampled round, not yet observed
      sl = slice(r * num_slots, (r + 1) * num_slots)
      pool = rollout.pool
      tokens, lengths, slot_prompt, valid, ids = fetch(
          (pool.completions[sl], pool.lengths[sl], plan.slot_prompt, plan.slot_valid,
           rollout.ids))
      rows = ids[slot_prompt]
      answers = [data.answers[int(i)] for i in rows]
      return self.score(tokens, lengths, answers, valid)

    return score_round

  def for_eval(self, data) -> Callable:
    """(tokens, lengths, rows) -> rewards of `data`'s rows (what `rl.evaluation` expects)."""

    def score(tokens, lengths, rows):
      return self.score(tokens, lengths, [data.answers[int(r)] for r in rows])[0]

    return score

  def close(self):
    self.runner.close()
