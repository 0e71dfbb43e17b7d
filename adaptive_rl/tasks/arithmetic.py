"""Multi-digit arithmetic: prompts like "123+45=", completions like "168" + eos.

Each problem draws an operator from `ops` and a level `d` in 1..`max_digits`; the first operand
has exactly `d` digits (0..9 when d = 1) and the second 1..d digits, so easy and hard prompts
mix within every batch and pass rates spread. For "+" and "*" the operands are swapped half the
time; for "-" the larger comes first, so answers are never negative.

Difficulty level: `(d - 1) + max_digits * "+-*".index(op)`. Within one operator a higher level
means more digits; levels of different operators are just distinct ids.

With `reverse_answer=True` the answer is written least-significant digit first ("123+45=" ->
"861"), the order in which carries are produced; `answers` and `targets` follow the same order.

Reward: 1 iff the text before the first eos equals the answer exactly (so eos must come within
the completion budget); otherwise 0.

Alphabet "0123456789+-*=" (vocabulary 17). With defaults (ops "+", max_digits 3) prompts take
at most 9 tokens (bos + "999+999=") and completions at most 5 ("1998" + eos).
"""

from __future__ import annotations

import dataclasses
import random
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from adaptive_rl.tasks.builtin import BuiltinTask, Example, randbelow

_OPS = "+-*"
_MAX_SIZE = 10_000_000


@dataclasses.dataclass(frozen=True)
class ArithmeticTask(BuiltinTask):
  """Settings of the arithmetic task.

  Attributes:
    ops: operators to draw from, a non-empty subset of "+-*" without repeats.
    max_digits: digits of the larger operand at the hardest level, in [1, 6].
    reverse_answer: write answers least-significant digit first.
    train_size: train problems, in [1, 10_000_000].
    test_size: distinct held-out problems, at least 1 and at most what the settings allow
      (each level holds at most a fifth of its problems out of train).
    seed: train split seed.
    test_seed: test split seed (kept fixed across training seeds).
  """

  ops: str = "+"
  max_digits: int = 3
  reverse_answer: bool = False
  train_size: int = 20_000
  test_size: int = 500
  seed: int = 0
  test_seed: int = 0

  name: ClassVar[str] = "arithmetic"
  alphabet: ClassVar[str] = "0123456789+-*="

  def __post_init__(self):
    if not self.ops or set(self.ops) - set(_OPS) or len(set(self.ops)) != len(self.ops):
      raise ValueError(f"ArithmeticTask.ops must be a non-empty subset of {_OPS!r} without "
                       f"repeats, got {self.ops!r}")
    if not 1 <= self.max_digits <= 6:
      raise ValueError(f"ArithmeticTask.max_digits must be in [1, 6], got {self.max_digits}")
    if not 1 <= self.train_size <= _MAX_SIZE:
      raise ValueError(
          f"ArithmeticTask.train_size must be in [1, {_MAX_SIZE}], got {self.train_size}")
    capacity = sum(self._test_cap(self._level(op, d)) for op in self.ops
                   for d in range(1, self.max_digits + 1))
    if not 1 <= self.test_size <= min(capacity, _MAX_SIZE):
      raise ValueError(f"ArithmeticTask.test_size must be in [1, {min(capacity, _MAX_SIZE)}] "
                       f"for these ops / max_digits, got {self.test_size}")

  @property
  def max_prompt_len(self) -> int:
    return 1 + 2 * self.max_digits + 2  # bos, operands, operator, "="

  @property
  def max_completion_len(self) -> int:
    digits = {"+": self.max_digits + 1, "-": self.max_digits, "*": 2 * self.max_digits}
    return max(digits[op] for op in self.ops) + 1  # + eos

  @property
  def target_len(self) -> int:
    return self.max_completion_len

  def _level(self, op: str, digits: int) -> int:
    return digits - 1 + self.max_digits * _OPS.index(op)

  def _test_cap(self, difficulty: int) -> int:
    digits = difficulty % self.max_digits + 1
    first = 10 if digits == 1 else 9 * 10 ** (digits - 1)
    return max(1, first * 10 ** digits // 5)

  def _sample(self, rng: random.Random, split: str) -> Example:
    del split
    op = self.ops[randbelow(rng, len(self.ops))]
    digits = 1 + randbelow(rng, self.max_digits)
    a = _with_digits(rng, digits)
    b = _with_digits(rng, 1 + randbelow(rng, digits))
    if op == "-":
      a, b = max(a, b), min(a, b)
    elif rng.random() < 0.5:
      a, b = b, a
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    answer = str(value)[::-1] if self.reverse_answer else str(value)
    tok = self.tokenizer
    target = tok.encode(answer) + [tok.eos_id]
    target += [tok.pad_id] * (self.target_len - len(target))
    return Example(text=f"{a}{op}{b}=", completion=answer, answer=answer, target=tuple(target),
                   difficulty=self._level(op, digits))

  def reward(self, completions, lengths, targets):
    """1.0 where the completion matches the target tokens up to and including its eos.

    Args:
      completions: [S, L] int32 sampled tokens after the prompt.
      lengths: [S] int32 generated tokens including eos.
      targets: [S, A] int32 answer tokens + eos, right-padded with pad.

    Returns:
      [S] float32 in {0, 1}.
    """
    pad = self.tokenizer.pad_id
    width = completions.shape[1]
    if targets.shape[1] >= width:
      fits = jnp.all(targets[:, width:] == pad, axis=1)  # else the answer cannot fit in L
      targets = targets[:, :width]
    else:
      fits = jnp.ones(targets.shape[0], bool)
      targets = jnp.pad(targets, ((0, 0), (0, width - targets.shape[1])), constant_values=pad)
    care = targets != pad
    match = jnp.all(jnp.where(care, completions == targets, True), axis=1)
    eos_pos = jnp.sum(care, axis=1) - 1  # digits before eos all match, so this is the first eos
    ok = fits & match & (eos_pos >= 0) & (eos_pos < lengths)
    return ok.astype(jnp.float32)

  def reward_text(self, completion: str, answer) -> float:
    """1.0 iff `completion` (text before eos) equals `answer` (string or target row)."""
    if not isinstance(answer, str):
      row = [int(t) for t in np.asarray(answer)]
      eos = self.tokenizer.eos_id
      answer = self.tokenizer.decode(row[:row.index(eos)] if eos in row else row)
    return float(completion == answer)


def _with_digits(rng: random.Random, digits: int) -> int:
  if digits == 1:
    return randbelow(rng, 10)
  return 10 ** (digits - 1) + randbelow(rng, 9 * 10 ** (digits - 1))
