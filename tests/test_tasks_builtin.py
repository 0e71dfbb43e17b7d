"""Tests of the built-in tasks: splits, rewards (in-graph == Python reference), registry."""

from __future__ import annotations

import dataclasses
import functools
import itertools

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import pytest

from adaptive_rl.tasks import builtin
from adaptive_rl.tasks.arithmetic import ArithmeticTask
from adaptive_rl.tasks.countdown import CountdownTask, evaluate

_SMALL = dict(train_size=2000, test_size=200)
# Small configs keep split generation fast; each covers a different branch of the generators.
_TASKS = [
    ArithmeticTask(ops="+", **_SMALL),
    ArithmeticTask(ops="+-*", max_digits=3, reverse_answer=True, **_SMALL),
    CountdownTask(**_SMALL),
    CountdownTask(allow_division=True, use_all=True, min_numbers=2, **_SMALL),
]
_IDS = ["add", "mixed_reversed", "countdown", "countdown_div_all"]


@functools.lru_cache(maxsize=None)
def _jit_reward(task):
  return jax.jit(task.reward)


def _rewards(task, texts, length=None, targets=None):
  """(jitted, python) rewards of completion texts (+ eos) against `targets`."""
  n = len(texts)
  pad = -n % 32  # one batch shape per task / length: fewer compiles
  comps, lens = task.encode_completions(list(texts) + [""] * pad, length)
  targets = np.asarray(list(targets) + [targets[0]] * pad, np.int32)
  got = np.asarray(_jit_reward(task)(comps, lens, targets))
  ref = task.reference_rewards(comps, lens, targets)
  np.testing.assert_array_equal(got, ref)
  return got[:n]


def test_make_task_registry():
  assert builtin.TASK_NAMES == ("arithmetic", "countdown", "text")
  task = builtin.make_task("arithmetic", ops="+-", max_digits=2)
  assert task == ArithmeticTask(ops="+-", max_digits=2)
  with pytest.raises(ValueError, match="arithmetic, countdown"):
    builtin.make_task("sudoku")
  with pytest.raises(ValueError, match="max_digits"):
    builtin.make_task("arithmetic", max_digit=2)


@pytest.mark.parametrize("cls,field,value", [
    (ArithmeticTask, "ops", "+/"), (ArithmeticTask, "ops", "++"), (ArithmeticTask, "max_digits", 0),
    (ArithmeticTask, "test_size", 10_000), (ArithmeticTask, "train_size", 0),
    (CountdownTask, "min_numbers", 1), (CountdownTask, "max_numbers", 7),
    (CountdownTask, "demo_fraction", 1.5), (CountdownTask, "max_number", 1000),
])
def test_settings_rejected(cls, field, value):
  kwargs = {field: value}
  if cls is ArithmeticTask and field == "test_size":
    kwargs["max_digits"] = 1  # 20 held-out problems per level at most
  with pytest.raises(ValueError, match=f"{cls.__name__}.{field}"):
    cls(**kwargs)


def test_default_formats():
  arith, count = ArithmeticTask(), CountdownTask()
  assert (arith.max_prompt_len, arith.max_completion_len, arith.tokenizer.vocab_size) == (9, 5, 17)
  assert (count.max_prompt_len, count.max_completion_len, count.tokenizer.vocab_size) == (
      12, 16, 22)
  assert ArithmeticTask(ops="*").max_completion_len == 7  # 999*999 = 998001 + eos


@pytest.mark.parametrize("task", _TASKS, ids=_IDS)
def test_split_layout_and_demos(task):
  tok = task.tokenizer
  data = task.split("train")
  assert data.prompts.shape == (task.train_size, task.max_prompt_len)
  assert data.demos.shape == (task.train_size, task.max_completion_len)
  assert data.targets.shape == (task.train_size, task.target_len)
  for i in range(0, task.train_size, 97):
    p = data.prompts[i]
    n = data.prompt_lengths[i]
    assert (p[:len(p) - n] == tok.pad_id).all() and p[len(p) - n] == tok.bos_id
    assert tok.decode(p) == data.texts[i]
  # Every shown demo ends with eos and scores 1 in-graph and in Python.
  lengths = (data.demos != tok.pad_id).sum(1)
  assert (data.demos[np.arange(task.train_size), np.maximum(lengths - 1, 0)] == tok.eos_id)[
      data.has_demo].all()
  got = np.asarray(_jit_reward(task)(data.demos, lengths, data.targets))
  assert (got[data.has_demo] == 1).all() and (got[~data.has_demo] == 0).all()
  ref = task.reference_rewards(data.demos[:300], lengths[:300], data.targets[:300])
  np.testing.assert_array_equal(ref, got[:300])
  # The answer strings score the same as the target rows.
  for i in range(0, 300, 7):
    text = tok.decode(data.demos[i])
    assert task.reward_text(text, data.answers[i]) == task.reward_text(text, data.targets[i])
  if isinstance(task, ArithmeticTask):
    assert data.has_demo.all()
  else:
    assert 0.4 < data.has_demo.mean() < 0.6
    assert (data.demos[~data.has_demo] == tok.pad_id).all()
    assert task.split("test").has_demo.all()


@pytest.mark.parametrize("task", _TASKS, ids=_IDS)
def test_splits_deterministic_and_disjoint(task):
  train, test = task.split("train"), task.split("test")
  builtin._examples.cache_clear()
  builtin._build_split.cache_clear()
  again = task.split("train")
  for f in dataclasses.fields(builtin.TaskData):
    np.testing.assert_array_equal(getattr(train, f.name), getattr(again, f.name))
  assert len(set(test.texts)) == test.size
  assert not set(train.texts) & set(test.texts)
  other_seed = dataclasses.replace(task, seed=7, train_size=500)
  assert other_seed.split("train").texts != train.texts[:500]
  assert other_seed.split("test").texts == test.texts  # held-out set ignores the training seed
  assert not set(other_seed.split("train").texts) & set(test.texts)
  with pytest.raises(ValueError, match="split"):
    task.split("validation")


def test_arithmetic_difficulty_spread():
  task = ArithmeticTask(ops="+-*", **_SMALL)
  data = task.split("train")
  counts = np.bincount(data.difficulty, minlength=9)
  assert (counts > 100).all()  # 3 operators x 3 digit counts, all well represented
  for i in range(0, task.train_size, 50):
    a, op, b = data.texts[i][:-1].partition(next(c for c in "+-*" if c in data.texts[i]))
    level = max(len(a), len(b)) - 1 + 3 * "+-*".index(op)
    assert data.difficulty[i] == level
    assert data.answers[i] == str({"+": int(a) + int(b), "-": int(a) - int(b),
                                   "*": int(a) * int(b)}[op])
  test_counts = np.bincount(task.split("test").difficulty, minlength=9)
  assert test_counts[0] <= 20 and (test_counts > 0).all()  # small levels are not all held out


def test_countdown_difficulty_and_solvable():
  task = CountdownTask(**_SMALL)
  data = task.split("train")
  assert (np.bincount(data.difficulty, minlength=4) > 150).all()
  withheld = np.flatnonzero(~data.has_demo)[:25]
  for i in withheld:  # no demo shown, but a solution exists
    target, numbers = int(data.targets[i, 0]), [int(x) for x in data.targets[i, 1:] if x >= 0]
    assert target in _reachable(tuple(sorted(numbers)))
    assert data.texts[i] == f"{','.join(map(str, numbers))}:{target}="


@functools.lru_cache(maxsize=None)
def _reachable(numbers: tuple[int, ...]) -> frozenset[int]:
  """Values of + - * expressions over all of `numbers` (any tree)."""
  if len(numbers) == 1:
    return frozenset(numbers)
  out = set()
  for k in range(1, len(numbers)):
    for left in set(itertools.combinations(range(len(numbers)), k)):
      right = tuple(numbers[j] for j in range(len(numbers)) if j not in left)
      for a in _reachable(tuple(sorted(numbers[j] for j in left))):
        for b in _reachable(tuple(sorted(right))):
          out.update((a + b, a - b, a * b))
  return frozenset(out)


def test_arithmetic_hand_written_rewards():
  task = ArithmeticTask(ops="+-*")
  tok = task.tokenizer
  row = [tok.encode("46") + [tok.eos_id] + [0] * 5]
  cases = {"46": 1, "47": 0, "046": 0, "4": 0, "466": 0, "": 0, "46=": 0}
  got = _rewards(task, list(cases), targets=row * len(cases))
  np.testing.assert_array_equal(got, list(cases.values()))
  comps, lens = task.encode_completions(["46"] * 4)
  comps[1, 3:] = tok.encode("99")[:1]   # junk after eos is ignored
  comps[2, 2] = 5                       # no eos at all
  lens[3] = 2                           # eos beyond the generated length
  got = np.asarray(_jit_reward(task)(comps, lens, np.asarray(row * 4, np.int32)))
  np.testing.assert_array_equal(got, [1, 1, 0, 0])
  np.testing.assert_array_equal(task.reference_rewards(comps, lens, row * 4), got)
  # Completion buffer shorter than the answer: never correct. Longer: fine.
  np.testing.assert_array_equal(_rewards(task, ["46"], length=2, targets=row), [0])
  np.testing.assert_array_equal(_rewards(task, ["46"], length=12, targets=row), [1])


def test_arithmetic_reverse_answer():
  task = ArithmeticTask(reverse_answer=True, **_SMALL)
  data = task.split("train")
  for text, answer in zip(data.texts[:200], data.answers[:200]):
    a, b = text[:-1].split("+")
    assert answer == str(int(a) + int(b))[::-1]


def test_countdown_hand_written_rewards():
  task = CountdownTask()
  row = [30, 3, 7, 9, -1]
  cases = {
      "3*7+9": 1, "(3*7+9)": 1, "9+3*7": 1, "7*3+9": 1, "((9))+7*3": 1,
      "9*3+7": 0,     # 34
      "3*7+9+9": 0,   # 9 used twice
      "3*7+09": 0,    # leading zero
      "3*7+9)": 0, "(3*7+9))": 0, "(3*7+9": 0, "()3*7+9": 0, "3*7++9": 0, "-3+33": 0, "3*7+9,": 0,
      "": 0, "30": 0, "3*7+9=": 0,
      "21+9": 0,      # 21 is not a given number
      "(9-7)*3": 0,   # 6
  }
  for text, want in cases.items():
    assert task.reward_text(text, "3,7,9:30") == want, text
  assert task.reward_text("3 * 7 + 9", "3,7,9:30") == 0  # no spaces (not in the alphabet)
  assert task.reward_text("3*7+9", "3,7,9:30=3*7+9") == 1  # text after "=" is ignored
  np.testing.assert_array_equal(_rewards(task, list(cases), targets=[row] * len(cases)),
                                list(cases.values()))
  # At most once by default; exactly once with use_all; repeated numbers count separately.
  subset = [[10, 2, 5, 7, -1], [9, 3, 3, 8, -1], [9, 3, 3, 8, -1]]
  np.testing.assert_array_equal(_rewards(task, ["2*5", "3*3", "3*3*3"], targets=subset),
                                [1, 1, 0])
  use_all = CountdownTask(use_all=True)
  np.testing.assert_array_equal(_rewards(use_all, ["2*5", "7+5-2", "5*2+7-7"], targets=[
      [10, 2, 5, 7, -1], [10, 2, 5, 7, -1], [10, 2, 5, 7, -1]]), [0, 1, 0])
  # Division: rejected unless allowed, and then only when exact.
  div_row = [[4, 8, 2, 3, -1]] * 4
  np.testing.assert_array_equal(_rewards(task, ["8/2"], targets=div_row[:1]), [0])
  division = CountdownTask(allow_division=True)
  np.testing.assert_array_equal(
      _rewards(division, ["8/2", "8/(3-2)/2", "3/2*8-8", "8/(2-2)"],
               targets=[[4, 8, 2, 3, -1], [4, 8, 3, 2, 2], [4, 8, 2, 3, 8], [4, 8, 2, 2, -1]]),
      [1, 1, 0, 0])
  # Overflow of an intermediate beyond VALUE_LIMIT invalidates the expression.
  big = [[999 * 998 * 997, 999, 998, 997, 996]] * 3
  assert evaluate("999*998*997*996", [999, 998, 997, 996]) is None
  np.testing.assert_array_equal(
      _rewards(division, ["999*998*997", "999*998*997*996/996", "(999*998*997*996)/996"],
               targets=big), [1, 0, 0])
  # |value| == VALUE_LIMIT is fine; beyond it is not, even for an intermediate sum.
  five = CountdownTask(max_numbers=5)
  limit = [[10**9, 1000, 1000, 1000, 999, -1], [10**9 + 999, 1000, 1000, 1000, 999, -1],
           [10**9 - 1, 1000, 1000, 1000, 1000, 999]]
  np.testing.assert_array_equal(_rewards(five, [
      "1000*1000*1000", "1000*1000*1000+999", "1000*1000*1000+999-1000"], length=28,
                                         targets=limit), [1, 0, 0])
  # Operands / operators out of place are malformed even where a lenient parse would match.
  misplaced = {"(9)3*7": [21, 3, 7, 9, -1], "9*(3)7": [63, 3, 7, 9, -1],
               "+3*7+9": [30, 3, 7, 9, -1], "5(3*7+9)": [30, 3, 5, 7, 9]}
  np.testing.assert_array_equal(
      _rewards(task, list(misplaced), targets=list(misplaced.values())), [0] * len(misplaced))


@pytest.mark.parametrize("task", _TASKS, ids=_IDS)
def test_jit_reward_matches_python_on_random_completions(task):
  rng = np.random.default_rng(0)
  data = task.split("test")  # every test problem carries its demo
  n, width = 3000, task.max_completion_len
  rows = rng.integers(0, data.size, n)
  targets = data.targets[rows]
  comps = np.array(data.demos[rows])
  mutate = rng.random((n, width)) < 0.1  # flip a few tokens of real demos
  comps[mutate] = rng.integers(0, task.tokenizer.vocab_size + 1, mutate.sum())
  comps[: n // 4] = rng.integers(0, task.tokenizer.vocab_size, (n // 4, width))  # pure garbage
  lengths = np.where(rng.random(n) < 0.9, (comps != 0).sum(1), rng.integers(0, width + 1, n))
  got = np.asarray(_jit_reward(task)(comps, lengths.astype(np.int32), targets))
  np.testing.assert_array_equal(got, task.reference_rewards(comps, lengths, targets))
  assert 0.1 < got.mean() < 0.9  # both outcomes well represented


@pytest.mark.parametrize("task", _TASKS[::2], ids=_IDS[::2])
def test_reward_compiles_once(task):
  chex.clear_trace_counter()
  reward = jax.jit(chex.assert_max_traces(task.reward, n=1))
  data = task.split("test")
  lengths = (data.demos != 0).sum(1)
  for start in (0, 64, 128):
    out = reward(data.demos[start:start + 64], lengths[start:start + 64],
                 data.targets[start:start + 64])
    assert out.shape == (64,) and out.dtype == np.float32


# ---- hypothesis: in-graph countdown evaluator == Python reference on >= 1000 strings ----------

_HYP_TASKS = (CountdownTask(), CountdownTask(allow_division=True),
              CountdownTask(use_all=True, allow_division=True))
_HYP_WIDTH, _HYP_ROWS = 28, 32


@st.composite
def _countdown_row(draw):
  count = draw(st.integers(2, 4))
  top = draw(st.sampled_from([9, 999, 31622]))  # large: sums and products overflow VALUE_LIMIT
  numbers = draw(st.lists(st.integers(1, top), min_size=count, max_size=count))
  kind = draw(st.sampled_from(["garbage", "expression", "mutated", "tree", "tree"]))
  tok = _HYP_TASKS[0].tokenizer
  if kind == "garbage":
    ids = draw(st.lists(st.integers(-1, 24), max_size=_HYP_WIDTH))
    text = None
  elif kind == "tree":  # each number at most once: often valid, so values get compared
    items = [str(x) for x in draw(st.permutations(numbers))][:draw(st.integers(1, count))]
    while len(items) > 1:
      i = draw(st.integers(0, len(items) - 2))
      joined = items[i] + draw(st.sampled_from("+-*/")) + items[i + 1]
      items[i:i + 2] = [f"({joined})" if draw(st.booleans()) else joined]
    text = items[0]
    ids = tok.encode(text) + [tok.eos_id]
  else:
    literals = [str(x) for x in numbers] + ["0", "07", "12", "1000"]
    leaf = st.sampled_from(literals)
    text = draw(st.recursive(
        leaf, lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from("+-*/"), inner).map("".join),
            inner.map(lambda e: f"({e})")), max_leaves=5))
    if kind == "mutated":
      pos = draw(st.integers(0, len(text)))
      edit = draw(st.sampled_from(list("0123456789+-*/(),:=") + [""]))
      text = text[:pos] + edit + text[pos + 1:]
    ids = tok.encode(text) + [tok.eos_id] + draw(st.lists(st.integers(0, 21), max_size=3))
  ids = (ids + [0] * _HYP_WIDTH)[:_HYP_WIDTH]
  length = draw(st.sampled_from([_HYP_WIDTH, _HYP_WIDTH, _HYP_WIDTH, None]))
  length = draw(st.integers(0, _HYP_WIDTH)) if length is None else length
  value = None if text is None else evaluate(text, numbers, allow_division=True)
  use_value = value is not None and draw(st.sampled_from([True, True, True, False]))
  target = value if use_value else draw(st.integers(-3, 120))
  target = int(np.clip(target, -2**31, 2**31 - 1))
  return ids, length, [target] + numbers + [-1] * (4 - count)


@functools.lru_cache(maxsize=None)
def _hyp_fn(task_index):
  return jax.jit(_HYP_TASKS[task_index].reward)


@hypothesis.settings(max_examples=40, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow,
                                            hypothesis.HealthCheck.data_too_large])
@hypothesis.given(task_index=st.integers(0, len(_HYP_TASKS) - 1),
                  rows=st.lists(_countdown_row(), min_size=_HYP_ROWS, max_size=_HYP_ROWS))
def test_countdown_jax_evaluator_matches_python(task_index, rows):
  task = _HYP_TASKS[task_index]
  comps = np.asarray([r[0] for r in rows], np.int32)
  lengths = np.asarray([r[1] for r in rows], np.int32)
  targets = np.asarray([r[2] for r in rows], np.int32)
  got = np.asarray(_hyp_fn(task_index)(comps, lengths, targets))
  np.testing.assert_array_equal(got, task.reference_rewards(comps, lengths, targets))
