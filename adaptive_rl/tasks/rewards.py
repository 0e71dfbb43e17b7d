"""Verifiable rewards for math text: is the completion's final answer equivalent to the reference?

`math_reward(completion, answer)` is 1.0 or 0.0. It extracts the completion's final answer
(`answers.extract_answer`: boxed, else "####", else the last number) and the reference's bare
answer (`answers.reference_answer`: a GSM8K "#### x", a MATH solution's box, or the text), then
decides equivalence with `answers_match`:
  1. equal after `answers.normalize_answer` -> equivalent (cheap, no parsing);
  2. answers that could make a symbolic engine run for minutes (huge or nested exponents such as
     "9^{9^{9}}", "10^{100000}", big factorials or binomials, over-deep nesting, over 1000
     characters) -> not equivalent; this screen runs before any parser sees them;
  3. with the `math-verify` package (extra "math") importable: its `parse` + `verify`, with its own
     1 s timeouts when called on a main thread (its timeouts use SIGALRM, which only works
     there; elsewhere the caller's timeout, e.g. `HostRewardRunner`'s, is the bound);
  4. otherwise a small built-in checker, `fallback_match`: tuples / intervals compared
     element-wise in order, sets (`\\{...\\}`) and bare comma lists as multisets; integers
     exactly; other scalars parsed by a tiny safe recursive-descent evaluator over floats
     (numbers, + - * / ^, implicit products, `\\frac`, `\\sqrt`, `\\pi`, one-letter variables)
     and compared with relative tolerance 1e-6 (variables: at three fixed random points, so
     "x^2+2x+1" matches "(x+1)^2"). Percent signs are dropped, so "50%" matches "50"; a percentage
     on one side only also matches its value divided by 100 ("50%" matches "0.5"), as
     math-verify does.
The fallback deliberately does not use sympy: `sympy.parse_expr` evaluates Python code and
`simplify` has no time bound; float evaluation is bounded by the input's length.

Exceptions from the checkers' own bugs are not swallowed, so `HostRewardRunner` counts them.
"""

from __future__ import annotations

import math
import random
import re
import threading

from adaptive_rl.tasks import answers as answers_lib

_MAX_ANSWER_CHARS = 1000
_MAX_DEPTH = 40
# Bracket depth the screen lets through to math-verify, whose parser is exponential in nesting
# (depth 14 takes ~9 s, 16 ~32 s); real final answers nest a few levels at most.
_MAX_SCREEN_DEPTH = 10
_MATH_VERIFY_TIMEOUT_S = 1
_REL_TOL, _ABS_TOL = 1e-6, 1e-9
BACKENDS = ("auto", "math_verify", "fallback")


def math_reward(completion: str, answer: str) -> float:
  """1.0 when the completion's final answer is equivalent to the reference answer, else 0.0.

  Module-level and picklable, so `HostRewardRunner(math_reward, ...)` can run it in workers.

  Args:
    completion: the model's text.
    answer: the reference: a bare answer, a GSM8K solution ending in "#### x", or a solution
      containing `\\boxed{x}`. A non-string (e.g. an int from a dataset) is converted with str().

  Returns:
    1.0 or 0.0 (0.0 when the completion states no answer).
  """
  pred = answers_lib.extract_answer(completion)
  ref = answers_lib.reference_answer(str(answer))
  if not pred or not ref:
    return 0.0
  return 1.0 if answers_match(pred, ref) else 0.0


def _import_math_verify():
  """The math_verify module, or None when it is not installed (looked up on every call)."""
  try:
    import math_verify  # pylint: disable=g-import-not-at-top  (optional extra "math")
  except ImportError:
    return None
  return math_verify


def answers_match(pred: str, ref: str, *, backend: str = "auto") -> bool:
  """Whether two extracted answers are mathematically equivalent.

  Args:
    pred: the predicted answer (already extracted, e.g. a box's content).
    ref: the reference answer.
    backend: "auto" (math-verify when importable, else the fallback), "math_verify" (raise
      ImportError when it is missing) or "fallback".

  Returns:
    True when equivalent.

  Raises:
    ValueError: for an unknown backend.
    ImportError: backend="math_verify" without the package.
  """
  if backend not in BACKENDS:
    raise ValueError(f"answers_match: backend must be one of {BACKENDS}, got {backend!r}")
  if len(pred) > _MAX_ANSWER_CHARS or len(ref) > _MAX_ANSWER_CHARS:
    return pred.strip() == ref.strip()
  a, b = answers_lib.normalize_answer(pred), answers_lib.normalize_answer(ref)
  if a and a == b:
    return True
  if too_expensive(pred) or too_expensive(ref):
    return False
  mv = None if backend == "fallback" else _import_math_verify()
  if mv is None and backend == "math_verify":
    raise ImportError("answers_match: backend='math_verify' needs `pip install math-verify`")
  if mv is not None:
    return _math_verify_match(mv, pred, ref)
  return fallback_match(pred, ref)


def _math_verify_match(mv, pred: str, ref: str) -> bool:
  on_main = threading.current_thread() is threading.main_thread()
  timeout = _MATH_VERIFY_TIMEOUT_S if on_main else None
  gold = mv.parse("\\boxed{" + ref + "}", parsing_timeout=timeout)
  target = mv.parse("\\boxed{" + pred + "}", parsing_timeout=timeout)
  if not gold or not target:
    return False
  return bool(mv.verify(gold, target, timeout_seconds=timeout))


# ------------------------------------------------------------------------------- the screen

# The lookahead makes each command swallow all its letters, so the match is unambiguous (linear).
_SIMPLE_TERM = r"\d{0,4}(?:\.\d+)?(?:[A-Za-z]|\\[A-Za-z]+(?![A-Za-z]))*(?:/\d{1,4})?"
_SIMPLE_EXPONENT = re.compile(
    rf"[-+]?(?:\\frac\{{\d{{1,3}}\}}\{{\d{{1,3}}\}}|{_SIMPLE_TERM}(?:[-+]{_SIMPLE_TERM})*)")
_BIG_DIGITS = re.compile(r"\d{5,}")


def _group_end(s: str, i: int) -> int:
  """Index just past the bracket group opening at s[i] (len(s) when it never closes)."""
  depth = 0
  for j in range(i, len(s)):
    if s[j] in "({[":
      depth += 1
    elif s[j] in ")}]":
      depth -= 1
      if depth == 0:
        return j + 1
  return len(s)


def _group_start(s: str, i: int) -> int:
  """Index of the bracket opening the group that closes at s[i]."""
  depth = 0
  for j in range(i, -1, -1):
    if s[j] in ")}]":
      depth += 1
    elif s[j] in "({[":
      depth -= 1
      if depth == 0:
        return j
  return 0


def too_expensive(answer: str) -> bool:
  """Whether a symbolic engine could spend unbounded time on `answer`.

  Rejects: over 1000 characters; brackets nested deeper than 10; a power whose exponent is not
  simple (a number of at most 4 digits, a short sum of such terms with letters, or a small
  fraction), a power of a power ("9^9^9", "(10^{99})^{99}"); a factorial of anything but a
  1-3 digit number; a binomial with a 5+ digit number.

  Args:
    answer: an extracted answer.

  Returns:
    True when the answer must not be handed to sympy / math-verify.
  """
  s = "".join(answer.split()).replace("**", "^")
  if len(s) > _MAX_ANSWER_CHARS:
    return True
  depth = 0
  for ch in s:
    depth += ch in "({["
    depth -= ch in ")}]"
    if depth > _MAX_SCREEN_DEPTH:
      return True
  for i, ch in enumerate(s):
    if ch == "^":
      j = i + 1
      if j < len(s) and s[j] in "({":
        end = _group_end(s, j)
        operand = s[j + 1:end - 1]
      else:
        m = re.match(r"[-+]?(?:\d+(?:\.\d+)?|[A-Za-z]|\\[A-Za-z]+)", s[j:])
        end = j + (m.end() if m else 0)
        operand = s[j:end]
      if not operand or len(operand) > 40 or not _SIMPLE_EXPONENT.fullmatch(operand):
        return True
      if end < len(s) and s[end] == "^":  # a tower: 9^9^9
        return True
      if i > 0 and s[i - 1] in ")}" and "^" in s[_group_start(s, i - 1):i]:
        return True
    elif ch == "!":
      m = re.search(r"(?:^|[^\d.])(\d{1,3})$", s[:i])
      if m is None:
        return True
  if ("binom" in s or "choose" in s) and _BIG_DIGITS.search(s):
    return True
  return False


# ---------------------------------------------------------------------------- the fallback


def _split_structure(s: str) -> tuple[str, list[str]]:
  """("scalar", [s]), ("set", items), ("list", items) or ("<open><close>", items)."""
  if s.startswith("\\{") and s.endswith("\\}") and _group_end(s, 1) == len(s):
    return "set", answers_lib.split_top_level(s[2:-2])
  if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _group_end(s, 0) == len(s):
    items = answers_lib.split_top_level(s[1:-1])
    if len(items) > 1:
      return s[0] + s[-1], items
  items = answers_lib.split_top_level(s)
  return ("list", items) if len(items) > 1 else ("scalar", [s])


def fallback_match(pred: str, ref: str) -> bool:
  """The built-in equivalence check used when math-verify is not installed.

  Call `too_expensive` first when the inputs are untrusted and may be handed to sympy later;
  this function itself evaluates over floats and is bounded by the inputs' length.

  Args:
    pred: the predicted answer.
    ref: the reference answer.

  Returns:
    True when equivalent under the rules in the module docstring.
  """
  a, b = answers_lib.normalize_answer(pred), answers_lib.normalize_answer(ref)
  if a and a == b:
    return True
  kind_a, items_a = _split_structure(a)
  kind_b, items_b = _split_structure(b)
  unordered = {"set", "list"}
  if kind_a != kind_b and not (kind_a in unordered and kind_b in unordered):
    return False
  if len(items_a) != len(items_b) or len(items_a) > 64:
    return False
  if kind_a == "scalar":
    if _scalar_equal(a, b):
      return True
    if ("%" in pred) != ("%" in ref):  # "50%" may be meant as 0.5
      va, vb = _constant(a), _constant(b)
      if va is not None and vb is not None:
        scaled = (va / 100, vb) if "%" in pred else (va, vb / 100)
        return _close(*scaled)
    return False
  if kind_a in unordered:
    unused = list(items_b)
    for item in items_a:
      hit = next((k for k, other in enumerate(unused) if _scalar_equal(item, other)), None)
      if hit is None:
        return False
      unused.pop(hit)
    return True
  return all(_scalar_equal(x, y) for x, y in zip(items_a, items_b))


def _close(x: complex, y: complex) -> bool:
  if not (math.isfinite(abs(x)) and math.isfinite(abs(y))):
    return False
  return abs(x - y) <= max(_REL_TOL * max(abs(x), abs(y)), _ABS_TOL)


def _scalar_equal(a: str, b: str) -> bool:
  if a == b:
    return True
  if re.fullmatch(r"-?\d{1,1000}", a) and re.fullmatch(r"-?\d{1,1000}", b):
    return int(a) == int(b)  # exact: tolerance would equate 10**30 and 10**30 + 1
  fa, fb = _compile(a), _compile(b)
  if fa is None or fb is None:
    return False
  expr_a, vars_a = fa
  expr_b, vars_b = fb
  if vars_a != vars_b:
    return False
  rng = random.Random(0)
  for _ in range(3 if vars_a else 1):
    env = {v: rng.uniform(0.5, 2.5) for v in sorted(vars_a)}
    va, vb = _evaluate(expr_a, env), _evaluate(expr_b, env)
    if va is None or vb is None or not _close(va, vb):
      return False
  return True


def _constant(s: str) -> complex | None:
  compiled = _compile(s)
  if compiled is None or compiled[1]:
    return None
  return _evaluate(compiled[0], {})


def _evaluate(node, env) -> complex | None:
  try:
    value = _eval_node(node, env)
  except (OverflowError, ZeroDivisionError, ValueError, TypeError):
    return None
  return value if math.isfinite(abs(value)) else None


def _eval_node(node, env):
  op = node[0]
  if op == "num":
    return node[1]
  if op == "var":
    return env[node[1]]
  if op == "neg":
    return -_eval_node(node[1], env)
  if op == "sqrt":
    return _eval_node(node[1], env) ** 0.5
  if op == "root":
    return _eval_node(node[2], env) ** (1 / _eval_node(node[1], env))
  x, y = _eval_node(node[1], env), _eval_node(node[2], env)
  if op == "+":
    return x + y
  if op == "-":
    return x - y
  if op == "*":
    return x * y
  if op == "/":
    return x / y
  if op == "^":
    if abs(y) > 1e4:  # float pow is O(1), but keep results in a sane range
      raise OverflowError
    return x ** y
  raise ValueError(op)


class _Fail(Exception):
  """Not an expression the fallback evaluator understands."""


_TOKEN = re.compile(r"\d+(?:\.\d*)?|\.\d+|\\[A-Za-z]+|[A-Za-z]+|\*\*|[-+*/^(){}\[\]]|.")
_MUL_OPS = {"*": "*", "\\cdot": "*", "\\times": "*", "/": "/", "\\div": "/"}
_WORD_CONSTANTS = {"\\pi": math.pi, "pi": math.pi}


def _is_number(tok: str) -> bool:
  return tok[0].isdecimal() or (tok[0] == "." and len(tok) > 1)  # "²".isdigit(), not float()-able


class _Parser:
  """A recursive-descent parser of scalar answers into small expression trees.

  Grammar (implicit products such as "2x" or "2\\sqrt{3}" bind like "*"):
    sum     := product (("+" | "-") product)*
    product := unary (("*" | "/" | "\\cdot" | "\\times" | "\\div" | implicit) unary)*
    unary   := ("-" | "+") unary | power
    power   := atom (("^" | "**") (signed unary | atom))?
    atom    := number | letters | \\pi | (sum) | {sum} | \\frac atom atom | \\sqrt[sum]? atom
  """

  def __init__(self, text: str):
    self.tokens = _TOKEN.findall(text)
    self.i = 0
    self.depth = 0
    self.variables: set[str] = set()

  def peek(self) -> str | None:
    return self.tokens[self.i] if self.i < len(self.tokens) else None

  def take(self, expected: str | None = None) -> str:
    tok = self.peek()
    if tok is None or (expected is not None and tok != expected):
      raise _Fail
    self.i += 1
    return tok

  def parse(self):
    node = self.sum()
    if self.peek() is not None:
      raise _Fail
    return node

  def sum(self):
    node = self.product()
    while self.peek() in ("+", "-"):
      op = self.take()
      node = (op, node, self.product())
    return node

  def product(self):
    node = self.unary()
    while True:
      tok = self.peek()
      if tok in _MUL_OPS:
        self.take()
        node = (_MUL_OPS[tok], node, self.unary())
      elif tok is not None and self._starts_atom(tok):
        node = ("*", node, self.power())
      else:
        return node

  def unary(self):
    negative = False
    while self.peek() in ("-", "+"):  # a loop, so "- - - ... 1" cannot exhaust the stack
      negative ^= self.take() == "-"
    operand = self.power()
    return ("neg", operand) if negative else operand

  def power(self):
    node = self.atom()
    if self.peek() in ("^", "**"):
      self.take()
      exponent = self.unary() if self.peek() in ("-", "+") else self.atom()
      node = ("^", node, exponent)
    return node

  @staticmethod
  def _starts_atom(tok: str) -> bool:
    return (_is_number(tok) or tok.isalpha() or tok in ("(", "{")
            or tok in ("\\frac", "\\sqrt", "\\pi"))

  def atom(self):
    tok = self.take()
    self.depth += 1
    if self.depth > _MAX_DEPTH:
      raise _Fail
    try:
      if _is_number(tok):
        if len(tok) > 400:
          raise _Fail
        return ("num", float(tok))
      if tok in ("(", "{"):
        node = self.sum()
        self.take(")" if tok == "(" else "}")
        return node
      if tok == "\\frac":
        return ("/", self.group(), self.group())
      if tok in ("\\sqrt", "sqrt"):
        if self.peek() == "[":
          self.take()
          index = self.sum()
          self.take("]")
          return ("root", index, self.group())
        return ("sqrt", self.group())
      if tok in _WORD_CONSTANTS:
        return ("num", _WORD_CONSTANTS[tok])
      if tok.isalpha() and len(tok) <= 8:  # "xy" is x*y
        node = None
        for ch in tok:
          self.variables.add(ch)
          node = ("var", ch) if node is None else ("*", node, ("var", ch))
        return node
      raise _Fail
    finally:
      self.depth -= 1

  def group(self):
    """A braced or parenthesised argument, or a single atom (as in `\\frac12`)."""
    return self.atom()


def _compile(text: str):
  """(expression tree, variables) for a scalar answer, or None when it does not parse."""
  if not text or len(text) > _MAX_ANSWER_CHARS:
    return None
  parser = _Parser(text)
  try:
    node = parser.parse()
  except _Fail:
    return None
  return node, frozenset(parser.variables)
