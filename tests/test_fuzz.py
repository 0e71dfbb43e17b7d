"""Property-based reliability tests of every parser and checker that reads outside text.

Each property runs on generated inputs (1,000 per property in the default run, except
math-verify-backed `math_reward` on random text: 200 by default, 1,000 under `slow`) and asserts
two things besides its own invariants: only the documented outcomes occur (a value, None / 0, or
the documented error type with its documented message), and each call is bounded in time.

The bound is `_BOUND_S` per call (`_timed` says how machine load is allowed for), and
`_MATH_BOUND_S` for `math_reward`: with math-verify installed it may legitimately spend up to
three of its own 1 s timeouts (parse reference, parse prediction, verify).

Inputs that once broke the contract (unreadable JSONL lines, non-mapping config sections) have
their own regression tests (`_Escaped` marks a contract violation).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import math
import os
import re
import string
import tempfile
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import jax
import numpy as np
import pytest

from adaptive_rl.rl.config import ConfigError, RunConfig, parse_config
from adaptive_rl.tasks import answers
from adaptive_rl.tasks import countdown
from adaptive_rl.tasks import datasets as ds
from adaptive_rl.tasks import rewards

_BOUND_S = 2.0
_MATH_BOUND_S = 3.5  # three math-verify timeouts of 1 s each, plus slack for a loaded machine
_MANY = settings(max_examples=1000, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.filter_too_much])
_FEW = settings(_MANY, max_examples=200)


def _timed(fn, *args, bound=_BOUND_S, **kwargs):
  """fn(*args, **kwargs), asserting it returns within `bound` seconds.

  The CPU time must stay under `bound`; the wall time too, stretched by the machine's load (on
  two shared cores another job can take three quarters of the wall clock), so an exponential
  blow-up fails under any load and a hang fails within minutes.
  """
  wall0, cpu0 = time.perf_counter(), time.process_time()
  out = fn(*args, **kwargs)
  wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
  stretch = max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
  assert cpu < bound and wall < bound * stretch, (
      f"{fn.__name__} took {wall:.2f} s ({cpu:.2f} s CPU, load x{stretch:.1f}) on "
      f"{args!r:.300}")
  return out


@pytest.fixture(scope="module")
def warm_math_verify():
  """One call first: math-verify's first parse loads its grammar, outside its own timeouts."""
  rewards.math_reward("\\boxed{\\frac{1}{2}}", "0.5")


# ----------------------------------------------------------------------------- text strategies

# Lone surrogates included: a decoded completion may carry them (errors="surrogateescape").
_ANY_CHAR = st.characters(blacklist_categories=())
_LATEX_FRAGMENTS = [
    "\\boxed", "\\boxed{", "\\fbox{", "\\boxed ", "####", "#### ", "\\frac", "\\frac{", "\\dfrac",
    "\\tfrac", "\\sqrt", "\\sqrt{", "\\sqrt[", "\\text{", "\\mathrm{", "\\left(", "\\right)",
    "\\left.", "\\pi", "\\cdot", "\\times", "\\div", "\\{", "\\}", "\\in", "\\infty", "\\binom",
    "\\circ", "^\\circ", "\\%", "%", "{,}", "\\!", "\\,", "$", "$$", "\\(", "\\)", "\\[", "\\]",
    "^", "^{", "_", "**", "!", "{", "}", "(", ")", "[", "]", ",", ".", "-", "+", "*", "/", "=",
    "x", "y", "e", "i", "pi", "sqrt", " ", "\n", "\t", "\\", "0", "1", "2", "9", "12", "1,234",
    "0.5", ".5", "3/4", "-7", "99999", "dollars", "(A)", "x=",
]
_FRAGMENT = st.one_of(st.sampled_from(_LATEX_FRAGMENTS), st.text(_ANY_CHAR, max_size=4),
                      st.integers(-10**6, 10**6).map(str))
_LATEXISH = st.lists(_FRAGMENT, max_size=40).map("".join)
_TEXT = st.one_of(st.text(_ANY_CHAR, max_size=300), _LATEXISH)


# ------------------------------------------------------------------------ answer extraction


@_MANY
@given(text=_TEXT)
def test_extractors_total_and_bounded(text):
  boxed = _timed(answers.extract_boxed, text)
  assert boxed is None or (isinstance(boxed, str) and boxed in text)
  if "\\boxed" not in text and "\\fbox" not in text:
    assert boxed is None

  gsm = _timed(answers.extract_gsm8k, text)
  assert gsm is None or (isinstance(gsm, str) and gsm)
  if "####" not in text:
    assert gsm is None

  last = _timed(answers.extract_last_number, text)
  assert last is None or re.fullmatch(r"-?[\d.]+(?:/\d+)?", last, flags=re.UNICODE)
  if not re.search(r"\d", text):
    assert last is None

  found = _timed(answers.extract_answer, text)
  assert found is None or (isinstance(found, str) and found)
  assert found in (boxed, gsm, last) or found is None

  for fmt in answers.ANSWER_FORMATS:
    ref = _timed(answers.reference_answer, text, fmt)
    assert ref is None or (isinstance(ref, str) and ref)


@_MANY
@given(text=_TEXT)
def test_normalize_and_split_total_and_bounded(text):
  norm = _timed(answers.normalize_answer, text)
  assert isinstance(norm, str)
  if len(text.strip()) <= 2000:
    assert not any(ch.isspace() for ch in norm)  # all whitespace is removed
  parts = _timed(answers.split_top_level, text)
  assert ",".join(parts) == text  # a split, nothing lost or added


@pytest.mark.parametrize("text", [
    "{" * 100_000, "}" * 100_000, "\\boxed{" * 50_000, "\\boxed{" * 50_000 + "}" * 50_000,
    "\\boxed " * 30_000, "#### " * 50_000, "1," * 100_000, "-" * 100_000 + "1",
    "\\" * 100_001, "\\text{" * 30_000 + "}" * 30_000, "9" * 100_000, ".5" * 50_000,
    "(" * 50_000 + "1" + ")" * 50_000,
], ids=lambda t: f"{t[:8]!r}x{len(t)}")
def test_adversarial_long_inputs_are_fast(text, warm_math_verify):
  for fn in (answers.extract_boxed, answers.extract_gsm8k, answers.extract_last_number,
             answers.extract_answer, answers.normalize_answer, answers.split_top_level):
    _timed(fn, text)
  assert _timed(rewards.math_reward, text, "1", bound=_MATH_BOUND_S) in (0.0, 1.0)
  assert _timed(rewards.math_reward, "\\boxed{1}", text, bound=_MATH_BOUND_S) in (0.0, 1.0)


def _nest(open_, close, depth, core="2"):
  return open_ * depth + core + close * depth


@pytest.mark.parametrize("completion, answer", [
    ("\\boxed{" + _nest("{", "}", 30) + "}", _nest("(", ")", 30, "3")),  # parse timeouts
    ("\\boxed{" + _nest("\\frac{1}{", "}", 30) + "}", _nest("\\frac{1}{", "}", 30, "3")),
], ids=["nested_groups", "nested_fracs"])
def test_math_reward_worst_cases_hit_their_timeouts(completion, answer, warm_math_verify):
  """Inputs that make math-verify's parser or verifier spend its full 1 s timeouts."""
  assert _timed(rewards.math_reward, completion, answer, bound=_MATH_BOUND_S) == 0.0


# ---------------------------------------------------------------------------------- rewards

# A scalar answer a model could write: numbers, LaTeX fractions / roots / powers, short sums.
_NUMBER = st.one_of(st.integers(-10**12, 10**12).map(str),
                    st.decimals(-1e6, 1e6, places=3, allow_nan=False).map(str),
                    st.integers(0, 10**6).map(lambda n: f"{n:,}"))
_ATOM = st.one_of(_NUMBER, st.sampled_from(["x", "y", "\\pi", "e", "i", "n"]))
_EXPR = st.recursive(_ATOM, lambda inner: st.one_of(
    st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "^", "\\cdot", " ", "!"]), inner)
    .map("".join),
    st.tuples(st.sampled_from(["\\frac{", "\\dfrac{", "\\binom{"]), inner, st.just("}{"), inner,
              st.just("}")).map("".join),
    inner.map(lambda e: f"\\sqrt{{{e}}}"),
    inner.map(lambda e: f"({e})"),
    inner.map(lambda e: f"{{{e}}}"),
    inner.map(lambda e: f"{e}^{{{e}}}"),
    st.lists(inner, min_size=2, max_size=4).map(lambda es: "\\{" + ",".join(es) + "\\}"),
), max_leaves=12)
_COMPLETION = st.one_of(
    _TEXT,
    _EXPR.map(lambda e: f"so the answer is $\\boxed{{{e}}}$."),
    _EXPR.map(lambda e: f"work...\n#### {e}"),
    st.tuples(_TEXT, _EXPR).map(lambda p: p[0] + "\\boxed{" + p[1] + "}"),
)
_REFERENCE = st.one_of(_EXPR, _TEXT, _EXPR.map(lambda e: f"Solution.\n#### {e}"),
                       _EXPR.map(lambda e: f"Thus $\\boxed{{{e}}}$."),
                       st.integers(-10**6, 10**6), st.floats(allow_nan=True))


def _check_math_reward(completion, answer):
  out = _timed(rewards.math_reward, completion, answer, bound=_MATH_BOUND_S)
  assert out in (0.0, 1.0) and isinstance(out, float)


@_FEW
@given(completion=_COMPLETION, answer=_REFERENCE)
def test_math_reward_total_and_bounded(warm_math_verify, completion, answer):
  _check_math_reward(completion, answer)


@pytest.mark.slow
@_MANY
@given(completion=_COMPLETION, answer=_REFERENCE)
def test_math_reward_total_and_bounded_1000(warm_math_verify, completion, answer):
  _check_math_reward(completion, answer)


@_MANY
@given(pred=_EXPR, ref=st.one_of(_EXPR, _TEXT))
def test_fallback_checker_and_screen_total_and_bounded(pred, ref):
  """The built-in checker (used without math-verify) on the same inputs, without its extras."""
  assert _timed(rewards.answers_match, pred, ref, backend="fallback") in (True, False)
  assert _timed(rewards.too_expensive, pred) in (True, False)
  assert _timed(rewards.fallback_match, pred, pred) is True or not answers.normalize_answer(pred)


@_MANY
@given(value=_NUMBER)
def test_boxed_reference_earns_reward(warm_math_verify, value):
  """Stating the reference's own number, boxed or after ####, always scores 1."""
  assert _timed(rewards.math_reward, f"The answer is $\\boxed{{{value}}}$.", value,
                bound=_MATH_BOUND_S) == 1.0
  assert _timed(rewards.math_reward, f"...\n#### {value}", f"Sol.\n#### {value}",
                bound=_MATH_BOUND_S) == 1.0


# -------------------------------------------------------------------------------- countdown

_CD_TASKS = (countdown.CountdownTask(train_size=10, test_size=10),
             countdown.CountdownTask(allow_division=True, use_all=True, train_size=10,
                                     test_size=10))
_CD_CHARS = "0123456789+-*/()"
_CD_TEXT = st.one_of(
    st.text(st.sampled_from(countdown.CountdownTask.alphabet), max_size=20),
    st.text(st.sampled_from(_CD_CHARS), max_size=20),
    st.lists(st.sampled_from(["(", ")", "+", "-", "*", "/", "1", "3", "7", "9", "12", "0", "07"]),
             max_size=12).map("".join),
)
_CD_NUMBERS = st.lists(st.integers(1, 9), min_size=3, max_size=4)


@_MANY
@given(text=st.one_of(_CD_TEXT, _TEXT), numbers=_CD_NUMBERS, flags=st.tuples(
    st.booleans(), st.booleans()), target=st.integers(-5, 200))
def test_countdown_python_evaluator_total(text, numbers, flags, target):
  allow_division, use_all = flags
  value = _timed(countdown.evaluate, text, numbers, allow_division, use_all)
  assert value is None or (isinstance(value, int) and abs(value) <= countdown.VALUE_LIMIT)
  task = _CD_TASKS[int(allow_division and use_all)]
  puzzle = f"{','.join(map(str, sorted(numbers)))}:{target}"
  reward = _timed(task.reward_text, text, puzzle)
  assert reward in (0.0, 1.0)
  row = np.asarray([target] + numbers + [-1] * (task.target_len - 1 - len(numbers)))
  assert _timed(task.reward_text, text, row) == reward


@pytest.mark.parametrize("text", ["(" * 100_000, "(" * 5000 + "1" + ")" * 5000,
                                  "1+" * 50_000 + "1", "1" * 100_000, "(" * 300 + ")" * 300],
                         ids=lambda t: f"{t[:8]!r}x{len(t)}")
def test_countdown_adversarial_inputs(text):
  assert _timed(countdown.evaluate, text, [1, 2, 3], True, False) is None


@functools.lru_cache(maxsize=None)
def _cd_reward(i):
  return jax.jit(_CD_TASKS[i].reward)


_CD_BATCH = 8


@_MANY
@given(i=st.integers(0, 1), numbers=_CD_NUMBERS, target=st.integers(1, 120),
       texts=st.lists(_CD_TEXT, min_size=_CD_BATCH, max_size=_CD_BATCH))
def test_countdown_graph_reward_agrees_with_reward_text(i, numbers, target, texts):
  """Same strings through the tokenizer and the jitted reward: the same verdicts."""
  task = _CD_TASKS[i]
  # Half the rows aim at a real value, so both verdicts occur.
  targets = []
  for text in texts:
    value = countdown.evaluate(text, numbers, task.allow_division, task.use_all)
    targets.append(value if value is not None and 0 < value < 2**31 else target)
  width = task.max_completion_len
  comps, lens = task.encode_completions(texts, width)
  rows = np.asarray([[t] + numbers + [-1] * (task.target_len - 1 - len(numbers))
                     for t in targets], np.int32)
  t0 = time.perf_counter()
  got = np.asarray(_cd_reward(i)(comps, lens, rows))
  assert time.perf_counter() - t0 < 30  # the first call of each shape compiles
  for text, t, g in zip(texts, targets, got):
    puzzle = f"{','.join(map(str, sorted(numbers)))}:{t}"
    # A text that does not fit with its eos has no eos in the buffer: never rewarded.
    want = task.reward_text(text, puzzle) if len(text) + 1 <= width else 0.0
    assert g == want, (text, puzzle)


# ---------------------------------------------------------------------------------- datasets

# Raw characters for malformed lines: no line breaks, since they would split the line.
_LINE_CHAR = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x0b\x0c"
                           "\x1c\x1d\x1e\x85\u2028\u2029")
_JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                         st.floats(allow_nan=False), st.text(max_size=20))
_JSON_VALUE = st.recursive(_JSON_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)
_QUESTION = st.one_of(st.text(max_size=30), _JSON_VALUE)
_ANSWER = st.one_of(_REFERENCE.filter(lambda a: not isinstance(a, float) or math.isfinite(a)),
                    _JSON_VALUE, st.just("#### 42"), st.just("\\boxed{7}"))


@st.composite
def _jsonl_line(draw):
  kind = draw(st.sampled_from(["row", "row", "row", "missing", "extra", "blank", "broken",
                               "text", "scalar"]))
  if kind in ("row", "missing", "extra"):
    row = {"question": draw(st.one_of(st.text(min_size=1, max_size=30), _QUESTION)),
           "answer": draw(_ANSWER)}
    if kind == "missing":
      del row[draw(st.sampled_from(["question", "answer"]))]
    if kind == "extra":
      row.update(draw(st.dictionaries(st.text(max_size=8), _JSON_VALUE, max_size=3)))
    text = json.dumps(row, ensure_ascii=draw(st.booleans()))
    try:
      text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: only its \\u escape can be written
      text = json.dumps(row)
    return text
  if kind == "blank":
    return draw(st.sampled_from(["", " ", "\t", "   "]))
  if kind == "broken":  # a valid row cut short, or with a stray character
    text = json.dumps({"question": "q", "answer": "1"})
    cut = draw(st.integers(1, len(text) - 1))
    return text[:cut] + draw(st.sampled_from(["", "}", ",", "\\", "\""]))
  if kind == "text":
    return draw(st.text(_LINE_CHAR, max_size=40))
  return json.dumps(draw(_JSON_VALUE))


def _expected_load_rows(lines):
  """(first bad line number or None, count of objects) as the docs define them."""
  count = 0
  for n, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      return n, count
    if not isinstance(record, dict):
      return n, count
    count += 1
  return None, count


def _row_ok(record, fmt):
  if not isinstance(record, dict) or "question" not in record or "answer" not in record:
    return False
  q, a = record["question"], record["answer"]
  if not isinstance(q, str) or not q.strip():
    return False
  if isinstance(a, bool) or not isinstance(a, (str, int, float)):
    return False
  return bool(answers.reference_answer(str(a), fmt))


_TMP = tempfile.mkdtemp(prefix="fuzz_datasets_")


@_MANY
@given(lines=st.lists(_jsonl_line(), max_size=12), skip=st.booleans(),
       fmt=st.sampled_from(answers.ANSWER_FORMATS), max_rows=st.sampled_from([0, 0, 1, 3]))
def test_jsonl_rows_parse_or_fail_with_file_and_line(lines, skip, fmt, max_rows):
  path = os.path.join(_TMP, "data.jsonl")
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    f.write("".join(line + "\n" for line in lines))

  bad_line, objects = _expected_load_rows(lines)
  try:
    rows = _timed(ds.load_rows, path)
  except ValueError as e:
    assert bad_line is not None, e
    assert str(e).startswith(f"{path}: line {bad_line}: "), e
  else:
    assert bad_line is None and len(rows) == objects and all(isinstance(r, dict) for r in rows)

  # What load_text_dataset must do: walk the records until max_rows valid ones are kept.
  good, skipped, first_bad = 0, 0, None
  for n, line in enumerate(lines, start=1):
    if max_rows and good >= max_rows:
      break
    if not line.strip():
      continue
    try:
      ok = _row_ok(json.loads(line), fmt)
    except json.JSONDecodeError:
      ok = False
    if ok:
      good += 1
    else:
      skipped += 1
      first_bad = first_bad or n
  cfg = ds.TextDatasetConfig(path, answer_format=fmt, skip_bad_rows=skip, max_rows=max_rows)
  try:
    data = _timed(ds.load_text_dataset, cfg)
  except ValueError as e:
    if first_bad is not None and not skip:
      assert str(e).startswith(f"{path}: line {first_bad}: "), e
      assert "skip_bad_rows=True" in str(e)
    else:
      assert good == 0 and str(e) == f"{path}: no valid records ({skipped} skipped)", e
  else:
    assert good > 0 and (skip or first_bad is None)
    assert len(data) == good and data.skipped == (skipped if skip else 0)
    assert all(isinstance(q, str) and q.strip() for q in data.questions)
    assert all(isinstance(a, str) and a for a in data.answers)
    assert sorted(data.ids.tolist()) == list(range(good))


_UNREADABLE_LINES = {
    "invalid_utf8": b'{"question": "caf\xe9", "answer": "2"}',
    "int_over_4300_digits": b'{"question": "q", "answer": ' + b"1" * 5000 + b"}",
    "nested_100k": b"[" * 100_000 + b"]" * 100_000,
}


class _Escaped(Exception):
  """An error that broke the documented contract (raised by the regression tests)."""


@pytest.mark.parametrize("line", list(_UNREADABLE_LINES.values()), ids=list(_UNREADABLE_LINES))
def test_jsonl_unreadable_line_names_file_and_line(tmp_path, line):
  path = tmp_path / "odd.jsonl"
  path.write_bytes(b'{"question": "a", "answer": "1"}\n' + line + b"\n")
  try:
    ds.load_rows(path)
  except ValueError as e:
    if not str(e).startswith(f"{path}: line 2: "):
      raise _Escaped(f"{type(e).__name__}: {e}") from e
  except RecursionError as e:
    raise _Escaped(f"{type(e).__name__}: {e}") from e
  else:
    pytest.fail("accepted")
  try:
    data = ds.load_text_dataset(ds.TextDatasetConfig(str(path), skip_bad_rows=True))
  except (ValueError, RecursionError) as e:
    raise _Escaped(f"{type(e).__name__}: {e}") from e
  assert len(data) == 1 and data.skipped == 1


# ------------------------------------------------------------------------------------ config

_spec = importlib.util.spec_from_file_location(
    "quickstart_config", os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart.py"))
quickstart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quickstart)
_BASE = quickstart.get_config("smoke=True").to_dict()
_SECTIONS = sorted(k for k, v in _BASE.items() if isinstance(v, dict))
_KEY = st.one_of(st.text(string.ascii_lowercase + "_", min_size=1, max_size=12),
                 st.sampled_from(["steps", "lr", "name", "every", "data", "seed", "force",
                                  "preset", "overrides", "num_layers", "d_model", "stepz"]),
                 st.text(max_size=6))
_ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(), st.text(max_size=10),
    st.lists(st.one_of(st.integers(), st.text(max_size=3), st.none()), max_size=3),
    st.tuples(st.text(max_size=3), st.one_of(st.none(), st.text(max_size=3))),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def _leaves(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict) and v:
      yield from _leaves(v, prefix + (k,))
    else:
      yield prefix + (k,)


def _containers(tree, prefix=()):
  yield prefix
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _containers(v, prefix + (k,))


_LEAVES = sorted(_leaves(_BASE))
# BUG (see test_config_known_crashes): a non-int top-level seed escapes as ValueError / TypeError;
# kept out of the general property so it keeps guarding everything else.
_FUZZED_LEAVES = [p for p in _LEAVES if p != ("seed",)]
_CONTAINERS = sorted(_containers(_BASE))


def _at(tree, path):
  for k in path:
    tree = tree[k]
  return tree


@st.composite
def _mutated_config(draw):
  cfg = copy.deepcopy(_BASE)
  for _ in range(draw(st.integers(1, 3))):
    if draw(st.booleans()):  # a random-typed value for an existing key
      path = draw(st.sampled_from(_FUZZED_LEAVES))
      _at(cfg, path[:-1])[path[-1]] = draw(_ANY_VALUE)
    else:  # an extra key at a random depth (a new one: replacing is the branch above)
      container = _at(cfg, draw(st.sampled_from(_CONTAINERS)))
      key = draw(_KEY)
      container[key + "_new" if key in container else key] = draw(_ANY_VALUE)
  return cfg


@_MANY
@given(cfg=_mutated_config())
def test_parse_config_only_raises_config_error(cfg):
  try:
    out = _timed(parse_config, cfg)
  except ConfigError as e:
    assert str(e)
  else:
    assert isinstance(out, RunConfig)


@pytest.mark.parametrize("path, value", [
    (("seed",), "abc"), (("seed",), None), (("seed",), [1]),
    (("sft",), 5), (("rl",), "ab"), (("task",), None), (("allocator",), 3), (("model",), 1.5),
])
def test_config_known_crashes(path, value):
  cfg = copy.deepcopy(_BASE)
  _at(cfg, path[:-1])[path[-1]] = value
  try:
    parse_config(cfg)
  except ConfigError:
    return
  except (TypeError, ValueError) as e:
    raise _Escaped(f"{type(e).__name__}: {e}") from e
  pytest.fail("accepted")


_ARG_KEY = st.one_of(st.sampled_from(["smoke", "allocator", "task", "seed"]),
                     st.text(max_size=6))
_ARG_VALUE = st.one_of(
    st.sampled_from(["True", "false", "1", "0", "yes", "countdown", "arithmetic", "uniform",
                     "gvm", "-3", "1_000", " 7", "9" * 5000, "", "=", "1.5", "nan"]),
    st.text(max_size=8))


@_MANY
@given(items=st.lists(st.one_of(
    st.tuples(_ARG_KEY, _ARG_VALUE).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(max_size=6)), max_size=4).map(",".join))
def test_parse_arg_and_get_config(items):
  defaults = dict(smoke=False, allocator="uniform", task="arithmetic", seed=0)
  try:
    args = _timed(quickstart.parse_arg, items, **defaults)
  except ValueError:
    pass
  else:
    assert set(args.keys()) == set(defaults)
    assert all(type(args[k]) is type(v) for k, v in defaults.items())
  try:
    cfg = _timed(quickstart.get_config, items)
  except ValueError:
    return
  try:
    _timed(parse_config, cfg)
  except ConfigError:
    pass
