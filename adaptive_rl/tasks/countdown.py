"""Countdown: reach a target with + - * (and optionally exact /) over a few given numbers.

Prompt "3,7,9:30=" lists the numbers (sorted) and the target; a completion is an infix
expression such as "3*7+9" + eos. Grammar (no unary minus, no leading zeros, no spaces):
    expr := term (("+" | "-") term)*      term := factor (("*" | "/") factor)*
    factor := number | "(" expr ")"
Each given number may be used AT MOST ONCE (a repeated number, e.g. "3,3,8", may be used as often
as it is listed); `use_all=True` demands every number exactly once. "/" is allowed only with
`allow_division=True` and only when exact. Any intermediate result beyond +-`VALUE_LIMIT`
invalidates the expression. Reward: 1 iff the expression is valid and equals the target.

Problems come from random expressions over all the drawn numbers (random tree, random
operators, every intermediate a positive integer, target in [1, max_target] and not one of the
numbers), so every prompt is solvable in both modes. The generating expression, written with
minimal parentheses, is the one demonstration; only a `demo_fraction` of train prompts show it
(`has_demo`), the rest must be learned from reward. Test prompts all carry their demo.
`answers` holds the puzzle ("3,7,9:30"), which is all `reward_text` needs.

Difficulty level: `2 * (count - min_numbers) + (target > 2 * max_number)`.

Two evaluators share these rules exactly: `evaluate` (Python recursive descent; never `eval`)
and `reward` (in-graph: one `lax.scan` over tokens with a fixed stack of open-parenthesis
frames, each holding the running sum, sign, current product and pending operator).

Alphabet "0123456789+-*/(),:=" (vocabulary 22). With defaults (3-4 numbers in 1..9, target
<= 99) prompts take at most 12 tokens and completions 16 (11 + eos + 4 slack).
"""

from __future__ import annotations

import dataclasses
import random
from typing import ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from adaptive_rl.tasks.builtin import BuiltinTask, Example, randbelow

VALUE_LIMIT = 10**9  # |intermediate| bound; sums of two such values still fit in int32
_NUMBER_CAP = 10**6  # literals saturate here in-graph (above any allowed given number)
_MAX_SIZE = 10_000_000
_ALPHABET = "0123456789+-*/(),:="
_ID = {ch: i + 3 for i, ch in enumerate(_ALPHABET)}  # CharTokenizer ids; 0, 1, 2 = pad, bos, eos
_EOS = 2


@dataclasses.dataclass(frozen=True)
class CountdownTask(BuiltinTask):
  """Settings of the countdown task.

  Attributes:
    min_numbers: fewest given numbers, in [2, 6].
    max_numbers: most given numbers, in [min_numbers, 6].
    max_number: given numbers are drawn from 1..max_number, in [2, 999].
    max_target: targets lie in 1..max_target, in [3, 99_999].
    allow_division: allow exact "/" in generated problems and in completions.
    use_all: require every number exactly once (default: at most once).
    demo_fraction: fraction of train prompts that show their demonstration, in [0, 1].
    completion_slack: completion tokens allowed beyond the longest generated solution, in
      [0, 64] (room for other, longer solutions).
    train_size: train problems, in [1, 10_000_000].
    test_size: distinct held-out problems, in [1, 100_000].
    seed: train split seed.
    test_seed: test split seed (kept fixed across training seeds).
  """

  min_numbers: int = 3
  max_numbers: int = 4
  max_number: int = 9
  max_target: int = 99
  allow_division: bool = False
  use_all: bool = False
  demo_fraction: float = 0.5
  completion_slack: int = 4
  train_size: int = 20_000
  test_size: int = 500
  seed: int = 0
  test_seed: int = 0

  name: ClassVar[str] = "countdown"
  alphabet: ClassVar[str] = _ALPHABET

  def __post_init__(self):
    checks = (
        ("min_numbers", 2 <= self.min_numbers <= 6, "[2, 6]"),
        ("max_numbers", self.min_numbers <= self.max_numbers <= 6, "[min_numbers, 6]"),
        ("max_number", 2 <= self.max_number <= 999, "[2, 999]"),
        ("max_target", 3 <= self.max_target <= 99_999, "[3, 99999]"),
        ("demo_fraction", 0.0 <= self.demo_fraction <= 1.0, "[0, 1]"),
        ("completion_slack", 0 <= self.completion_slack <= 64, "[0, 64]"),
        ("train_size", 1 <= self.train_size <= _MAX_SIZE, f"[1, {_MAX_SIZE}]"),
        ("test_size", 1 <= self.test_size <= 100_000, "[1, 100000]"),
    )
    for field, ok, allowed in checks:
      if not ok:
        raise ValueError(
            f"CountdownTask.{field} must be in {allowed}, got {getattr(self, field)!r}")

  @property
  def _digits(self) -> int:
    return len(str(self.max_number))

  @property
  def max_prompt_len(self) -> int:
    n = self.max_numbers
    return 1 + n * self._digits + (n - 1) + 1 + len(str(self.max_target)) + 1

  @property
  def max_completion_len(self) -> int:
    n = self.max_numbers
    # Minimal parentheses wrap at most n - 2 of the n - 1 operator nodes (never the root).
    return n * self._digits + (n - 1) + 2 * (n - 2) + 1 + self.completion_slack

  @property
  def target_len(self) -> int:
    return 1 + self.max_numbers  # [target, numbers..., -1 padding]

  def _sample(self, rng: random.Random, split: str) -> Example:
    ops = "+-*/" if self.allow_division else "+-*"
    for _ in range(100_000):
      count = self.min_numbers + randbelow(rng, self.max_numbers - self.min_numbers + 1)
      numbers = [1 + randbelow(rng, self.max_number) for _ in range(count)]
      solution = _random_expression(rng, numbers, ops)
      if solution is None:
        continue
      target, text = solution
      if target <= self.max_target and target not in numbers:
        break
    else:
      raise ValueError(f"CountdownTask: no problem found with max_target={self.max_target} and "
                       f"max_number={self.max_number}; widen them")
    numbers.sort()
    puzzle = f"{','.join(map(str, numbers))}:{target}"
    row = (target, *numbers, *[-1] * (self.max_numbers - count))
    level = 2 * (count - self.min_numbers) + int(target > 2 * self.max_number)
    has_demo = split == "test" or rng.random() < self.demo_fraction
    return Example(text=puzzle + "=", completion=text, answer=puzzle, target=row,
                   difficulty=level, has_demo=has_demo)

  def reward_text(self, completion: str, answer) -> float:
    """1.0 iff `completion` is a valid expression over the numbers equal to the target.

    Args:
      completion: text before eos.
      answer: a puzzle string "3,7,9:30" (anything after "=" is ignored) or a target row.
    """
    if isinstance(answer, str):
      numbers_text, target_text = answer.split("=")[0].split(":")
      numbers = [int(x) for x in numbers_text.split(",")]
      target = int(target_text)
    else:
      row = [int(x) for x in np.asarray(answer)]
      target, numbers = row[0], [x for x in row[1:] if x >= 0]
    value = evaluate(completion, numbers, self.allow_division, self.use_all)
    return float(value is not None and value == target)

  def reward(self, completions, lengths, targets):
    """In-graph countdown reward (same rules as `reward_text`).

    Args:
      completions: [S, L] int32 sampled tokens after the prompt.
      lengths: [S] int32 generated tokens including eos.
      targets: [S, A] int32 rows [target, numbers..., -1 padding].

    Returns:
      [S] float32 in {0, 1}.
    """
    row_reward = lambda c, n, t: _evaluate_tokens(c, n, t, self.allow_division, self.use_all)
    return jax.vmap(row_reward)(completions, lengths, targets)


class _Invalid(Exception):
  pass


def evaluate(text: str, numbers: Sequence[int], allow_division: bool = False,
             use_all: bool = False) -> int | None:
  """Value of a countdown expression, or None when it breaks any rule (module docstring)."""
  parser = _Parser(text, list(numbers), allow_division)
  try:
    value = parser.expr()
    if parser.pos != len(text) or (use_all and parser.available):
      return None
    return value
  except (_Invalid, RecursionError):
    return None


class _Parser:
  """Recursive descent over `text`; consumes `available` numbers as literals are read."""

  def __init__(self, text: str, available: list[int], allow_division: bool):
    self.text, self.pos, self.available = text, 0, available
    self.allow_division = allow_division

  def _peek(self) -> str:
    return self.text[self.pos] if self.pos < len(self.text) else ""

  @staticmethod
  def _checked(value: int) -> int:
    if abs(value) > VALUE_LIMIT:
      raise _Invalid
    return value

  def expr(self) -> int:
    value = self.term()
    while self._peek() in ("+", "-"):
      op = self._peek()
      self.pos += 1
      right = self.term()
      value = self._checked(value + right if op == "+" else value - right)
    return value

  def term(self) -> int:
    value = self.factor()
    while self._peek() in ("*", "/"):
      op = self._peek()
      if op == "/" and not self.allow_division:
        raise _Invalid
      self.pos += 1
      right = self.factor()
      if op == "*":
        value = self._checked(value * right)
      elif right == 0 or value % right:
        raise _Invalid
      else:
        value //= right
    return value

  def factor(self) -> int:
    if self._peek() == "(":
      self.pos += 1
      value = self.expr()
      if self._peek() != ")":
        raise _Invalid
      self.pos += 1
      return value
    start = self.pos
    while self._peek() and self._peek() in "0123456789":
      self.pos += 1
    literal = self.text[start:self.pos]
    if not literal or (literal[0] == "0" and len(literal) > 1) or len(literal) > 6:
      raise _Invalid
    value = int(literal)
    if value not in self.available:
      raise _Invalid
    self.available.remove(value)
    return value


def _random_expression(rng: random.Random, numbers: list[int], ops: str):
  """(value, text) of a random expression tree over all `numbers`, or None.

  None when some intermediate is not a positive integer. The text has minimal parentheses.
  """
  # items: (value, text, precedence of the top operator: 1 for + -, 2 for * /, 3 for a number)
  items = [(x, str(x), 3) for x in numbers]
  while len(items) > 1:
    left = items.pop(randbelow(rng, len(items)))
    right = items.pop(randbelow(rng, len(items)))
    op = ops[randbelow(rng, len(ops))]
    (a, ta, pa), (b, tb, pb) = left, right
    if op == "/" and (a % b):
      return None
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // max(b, 1)}[op]
    if value <= 0 or value > VALUE_LIMIT:
      return None
    wrap_left = op in "*/" and pa == 1
    wrap_right = (op == "-" and pb == 1) or (op == "*" and pb == 1) or (op == "/" and pb <= 2)
    ta = f"({ta})" if wrap_left else ta
    tb = f"({tb})" if wrap_right else tb
    items.append((value, f"{ta}{op}{tb}", 1 if op in "+-" else 2))
  return items[0][0], items[0][1]


def _evaluate_tokens(tokens, length, target_row, allow_division: bool, use_all: bool):
  """In-graph reward of one completion row: [L] int32, scalar, [A] int32 -> float32 scalar.

  A state machine over tokens: `expect` is True where an operand must come next; `in_num`
  while reading digits. Each open parenthesis pushes a frame (sum, sign, product, pending
  multiplicative op); a finished operand is folded into the top frame's product, "+"/"-" fold
  the product into the sum, ")" folds the top frame into its parent as an operand. Depth is at
  most L // 2 for any string that could be valid, so L // 2 + 1 frames never overflow on one.
  """
  width = tokens.shape[0]
  depth_max = width // 2 + 1
  target, numbers = target_row[0], target_row[1:]
  i32 = jnp.int32
  zero_frames = jnp.zeros(depth_max, i32)
  state = dict(
      done=jnp.array(False), err=jnp.array(False), in_num=jnp.array(False),
      num=i32(0), num_len=i32(0), lead0=jnp.array(False), expect=jnp.array(True),
      depth=i32(0), s=zero_frames, sign=jnp.ones(depth_max, i32), t=zero_frames,
      mul=zero_frames, used=jnp.zeros(numbers.shape, bool), result=i32(0))

  def fold(st, value, err):
    """Feeds an operand `value` into the top frame's product."""
    d = st["depth"]
    t, mul = st["t"][d], st["mul"][d]
    abs_v = jnp.abs(value)
    mul_overflow = jnp.abs(t) > VALUE_LIMIT // jnp.maximum(abs_v, 1)
    safe_v = jnp.where(value == 0, 1, value)
    div_bad = (value == 0) | (jnp.remainder(t, safe_v) != 0)
    new_t = jnp.select([mul == 0, mul == 1], [value, t * value], t // safe_v)
    err = err | ((mul == 1) & mul_overflow) | ((mul == 2) & div_bad)
    return dict(st, t=st["t"].at[d].set(new_t), expect=jnp.array(False)), err

  def close(st):
    """Value of the top frame: sum + sign * product, and whether it overflows."""
    d = st["depth"]
    value = st["s"][d] + st["sign"][d] * st["t"][d]
    return value, jnp.abs(value) > VALUE_LIMIT

  def step(st, inputs):
    tok, pos = inputs
    active = ~st["done"] & (pos < length)
    new = dict(st)
    err = st["err"]
    is_digit = (tok >= _ID["0"]) & (tok <= _ID["9"])
    digit = tok - _ID["0"]

    # A non-digit ends the literal being read: check it and consume a matching unused number.
    finish = st["in_num"] & ~is_digit
    value = st["num"]
    match = (numbers == value) & ~st["used"] & (numbers >= 0)
    slot = jnp.argmax(match)
    lit_ok = jnp.any(match) & ~(st["lead0"] & (st["num_len"] > 1))
    folded, fold_err = fold(new, value, err | ~lit_ok)
    folded["used"] = jnp.where(lit_ok, st["used"].at[slot].set(True), st["used"])
    new = jax.tree.map(lambda a, b: jnp.where(finish, a, b), folded, new)
    err = jnp.where(finish, fold_err, err)
    new["in_num"] = new["in_num"] & ~finish

    expect, d = new["expect"], new["depth"]
    # Digit: start or extend a literal (only where an operand is expected).
    start = is_digit & ~new["in_num"]
    err = err | (start & ~expect)
    num = jnp.where(start, digit, jnp.minimum(new["num"] * 10 + digit, _NUMBER_CAP))
    new["num"] = jnp.where(is_digit, num, new["num"])
    new["num_len"] = jnp.where(start, 1, new["num_len"] + is_digit.astype(i32))
    new["lead0"] = jnp.where(start, digit == 0, new["lead0"])
    new["in_num"] = new["in_num"] | is_digit

    is_open, is_close = tok == _ID["("], tok == _ID[")"]
    is_add = (tok == _ID["+"]) | (tok == _ID["-"])
    is_mul = (tok == _ID["*"]) | (tok == _ID["/"])
    is_eos = tok == _EOS
    known = is_digit | is_open | is_close | is_add | is_mul | is_eos
    err = err | ~known | ((tok == _ID["/"]) & (not allow_division))

    # "(": push a fresh frame.
    err = err | (is_open & (~expect | (d + 1 >= depth_max)))
    up = jnp.minimum(d + 1, depth_max - 1)
    opened = dict(new, depth=up, s=new["s"].at[up].set(0), sign=new["sign"].at[up].set(1),
                  mul=new["mul"].at[up].set(0))
    new = jax.tree.map(lambda a, b: jnp.where(is_open, a, b), opened, new)

    # ")": pop the frame and feed its value to the parent as an operand.
    value, overflow = close(new)
    err = err | (is_close & (expect | (d == 0) | overflow))
    popped, pop_err = fold(dict(new, depth=jnp.maximum(d - 1, 0)), value, err)
    new = jax.tree.map(lambda a, b: jnp.where(is_close, a, b), popped, new)
    err = jnp.where(is_close, pop_err, err)

    # "+" / "-": fold the product into the sum; "*" / "/": remember the operator.
    err = err | ((is_add | is_mul) & expect)
    summed = new["s"][d] + new["sign"][d] * new["t"][d]
    err = err | (is_add & (jnp.abs(summed) > VALUE_LIMIT))
    new["s"] = jnp.where(is_add, new["s"].at[d].set(summed), new["s"])
    new["sign"] = jnp.where(is_add, new["sign"].at[d].set(jnp.where(tok == _ID["+"], 1, -1)),
                            new["sign"])
    new["mul"] = jnp.where(is_add, new["mul"].at[d].set(0), new["mul"])
    mul_op = jnp.where(tok == _ID["*"], 1, 2)
    new["mul"] = jnp.where(is_mul, new["mul"].at[d].set(mul_op), new["mul"])
    new["expect"] = jnp.where(is_add | is_mul | is_open, True, new["expect"])

    # eos: the expression must be complete at depth 0.
    final, final_overflow = close(new)
    err = err | (is_eos & (expect | (d != 0) | final_overflow))
    new["result"] = jnp.where(is_eos, final, new["result"])
    new["done"] = is_eos
    new["err"] = err
    st = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, st)
    return st, None

  positions = jnp.arange(width, dtype=i32)
  st, _ = jax.lax.scan(step, state, (tokens.astype(i32), positions))
  ok = st["done"] & ~st["err"] & (st["result"] == target)
  if use_all:
    ok = ok & jnp.all(st["used"] | (numbers < 0))
  return ok.astype(jnp.float32)
