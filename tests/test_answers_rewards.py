"""Tests for adaptive_rl.tasks.answers and adaptive_rl.tasks.rewards on GSM8K / MATH-style text."""

from __future__ import annotations

import sys
import time

import hypothesis
from hypothesis import strategies as st
import pytest

from adaptive_rl.tasks import answers
from adaptive_rl.tasks import rewards

# ------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("text, expected", [
    ("so the answer is $\\boxed{42}$.", "42"),
    ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # the last one
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),  # nested braces
    ("\\fbox{7}", "7"),
    ("answer: \\boxed 5 done", "5"),  # brace-less form
    ("\\boxed 5$ and more", "5"),
    ("\\boxed{a \\fbox{b}}", "a \\fbox{b}"),  # the box that ends last is the outer one
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are literal
    ("\\boxed{ 3 }", "3"),
    ("\\boxed{}", ""),
    ("\\boxed{unclosed", None),
    ("\\boxed{1} and \\boxed{unclosed", "1"),
    ("\\boxedfoo{3}", None),  # not the command
    ("no box here", None),
])
def test_extract_boxed(text, expected):
  assert answers.extract_boxed(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
    ("#### 1,234", "1234"),
    ("#### $1,234.\nextra line", "1234"),
    ("#### -5", "-5"),
    ("#### 1 #### 2", "2"),
    ("####", None),
    ("no marker 5", None),
])
def test_extract_gsm8k(text, expected):
  assert answers.extract_gsm8k(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("I have 3 apples and 12 pears.", "12"),
    ("total: 1,234,567.", "1234567"),
    ("it costs -3.5 dollars", "-3.5"),
    ("a list 1,2,3", "3"),
    ("ratio 3/4", "3/4"),
    ("only .5 left", ".5"),
    ("no digits", None),
])
def test_extract_last_number(text, expected):
  assert answers.extract_last_number(text) == expected


def test_extract_answer_order():
  assert answers.extract_answer("7 ... \\boxed{3} ... #### 5 ... 9") == "3"
  assert answers.extract_answer("7 ... #### 5 ... then 9") == "5"
  assert answers.extract_answer("7 then 9.") == "9"
  assert answers.extract_answer("\\boxed{} 4") == "4"  # an empty box is no answer
  assert answers.extract_answer("nothing") is None


def test_reference_answer_formats():
  gsm = "Natalia sold 48/2 = 24 clips in May.\n48+24 = 72\n#### 72"
  math = "We get $x = \\boxed{\\frac{1}{2}}$ as claimed."
  assert answers.reference_answer(gsm) == "72"
  assert answers.reference_answer(math) == "\\frac{1}{2}"
  assert answers.reference_answer(" 5 ") == "5"
  assert answers.reference_answer(gsm, "gsm8k") == "72"
  assert answers.reference_answer(math, "gsm8k") is None
  assert answers.reference_answer(math, "boxed") == "\\frac{1}{2}"
  assert answers.reference_answer(gsm, "boxed") is None
  assert answers.reference_answer(math, "raw") == math.strip()
  with pytest.raises(ValueError, match="fmt must be one of"):
    answers.reference_answer("x", "latex")


@pytest.mark.parametrize("text, expected", [
    ("$1,234$", "1234"), ("\\text{(A)}", "A"), ("18 \\text{ dollars}", "18"), ("x = 5", "5"),
    ("\\dfrac12", "\\frac{1}{2}"), ("50\\%", "50"), ("0.50", "0.5"), ("(1, 2)", "(1,2)"),
    ("x=1, y=2", "1,2"), ("{5}", "5"), ("30^\\circ", "30"), ("2 pi", "2pi"), ("5.", "5"),
    ("\\left( 1,2 \\right)", "(1,2)"), ("\\sqrt2", "\\sqrt{2}"), ("-0.0", "0"), ("007", "7"),
    ("x \\in [0, 1]", "[0,1]"), ("1{,}000", "1000"),
])
def test_normalize_answer(text, expected):
  assert answers.normalize_answer(text) == expected


def test_extraction_is_linear_on_adversarial_text():
  cases = [
      "{" * 100_000 + "\\boxed{" + "{" * 100_000,  # 100k unclosed nested braces
      "\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}",  # 100k closed nested braces
      "\\boxed{" * 50_000,
      "\\boxed " * 50_000,
      "1," * 100_000 + "x",
      "9" * 200_000,
      "#### " * 50_000,
      "-." * 100_000,
  ]
  for text in cases:
    start = time.perf_counter()
    answers.extract_answer(text)
    answers.extract_boxed(text)
    answers.normalize_answer(text)
    assert time.perf_counter() - start < 2.0, text[:40]
  deep = "\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}"
  assert answers.extract_boxed(deep) == "{" * 100_000 + "1" + "}" * 100_000


# ---------------------------------------------------------------------------------- rewards

# (completion, reference answer, expected reward): GSM8K- and MATH-style outputs.
_CASES = [
    # GSM8K: reference "#### x" solutions, completions in several conventions.
    ("Step 1 ... so the total is 72.", "...\n#### 72", 1.0),
    ("The answer is $\\boxed{72}$.", "Natalia sold 24 clips.\n#### 72", 1.0),
    ("... #### 72", "#### 72", 1.0),
    ("It costs \\boxed{\\$1,234}.", "#### 1,234", 1.0),
    ("She pays 1,234 dollars in total.", "#### 1234", 1.0),
    ("\\boxed{18 \\text{ dollars}}", "#### 18", 1.0),
    ("\\boxed{18.00}", "#### 18", 1.0),
    ("\\boxed{73}", "#### 72", 0.0),
    ("I am not sure.", "#### 72", 0.0),
    ("so 72 - 2 = 70", "#### 72", 0.0),  # the last number counts
    ("\\boxed{-5}", "#### -5", 1.0),
    ("\\boxed{5}", "#### -5", 0.0),
    ("\\boxed{}", "#### 0", 0.0),
    # MATH: references with boxed solutions or bare answers.
    ("Thus $\\boxed{\\frac{1}{2}}$.", "so $\\boxed{\\frac12}$", 1.0),
    ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", 1.0),
    ("\\boxed{3/4}", "\\frac{3}{4}", 1.0),
    ("\\boxed{0.75}", "\\frac34", 1.0),
    ("\\boxed{0.333}", "\\frac{1}{3}", 0.0),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}", 1.0),
    ("\\boxed{\\sqrt{2}}", "\\sqrt2", 1.0),
    ("\\boxed{\\frac{\\pi}{2}}", "\\pi/2", 1.0),
    ("\\boxed{(1, 2)}", "(1,2)", 1.0),
    ("\\boxed{(2, 1)}", "(1,2)", 0.0),
    ("\\boxed{[1, 2)}", "[1,2)", 1.0),
    ("\\boxed{3, -2}", "-2, 3", 1.0),
    ("\\boxed{\\{2, 1\\}}", "\\{1,2\\}", 1.0),
    ("\\boxed{x = 5}", "5", 1.0),
    ("\\boxed{30^\\circ}", "30", 1.0),
    ("\\boxed{50\\%}", "50", 1.0),
    ("\\boxed{\\text{(B)}}", "B", 1.0),
    ("\\boxed{(C)}", "B", 0.0),
    ("\\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
    ("\\boxed{x^2+1}", "x^2+2x+1", 0.0),
    ("\\boxed{y+1}", "x+1", 0.0),
    ("\\boxed{\\left(\\frac{1}{2}, 3\\right)}", "\\left( \\frac12, 3 \\right)", 1.0),
    ("\\boxed{1000000}", "10^6", 1.0),
    ("\\boxed{2^{10}}", "1024", 1.0),
    ("\\boxed{100000000000000000000000000001}", "100000000000000000000000000000", 0.0),
    # Adversarial: must not hang, must not be equivalent.
    ("\\boxed{9^{9^{9^{9}}}}", "2", 0.0),
    ("\\boxed{9^9^9^9}", "2", 0.0),
    ("\\boxed{10^{100000}}", "1", 0.0),
    ("\\boxed{10**100000}", "1", 0.0),
    ("\\boxed{(10^{999})^{999}}", "1", 0.0),
    ("\\boxed{1000000!}", "2", 0.0),
    ("\\boxed{\\binom{1000000}{500000}}", "2", 0.0),
    ("\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}", "1", 0.0),
    ("\\boxed{" + "(" * 5_000 + "1" + ")" * 5_000 + "}", "1", 0.0),
    ("\\boxed{" + "(" * 300 + "1" + ")" * 300 + "}", "1", 0.0),  # under the length cap
    ("\\boxed{" + "\\sqrt{" * 200 + "1" + "}" * 200 + "}", "1", 0.0),
    ("{" * 100_000, "1", 0.0),
    ("\\boxed{" + "1+" * 20_000 + "1}", "20001", 0.0),
    ("\\boxed{__import__('os').system('echo hi')}", "0", 0.0),
]


@pytest.fixture(params=["fallback", "math_verify"])
def backend(request, monkeypatch):
  if request.param == "fallback":
    monkeypatch.setitem(sys.modules, "math_verify", None)  # makes `import math_verify` fail
  else:
    pytest.importorskip("math_verify")
  return request.param


@pytest.mark.parametrize("completion, answer, expected", _CASES,
                         ids=[f"case{i:02d}" for i in range(len(_CASES))])
def test_math_reward(backend, completion, answer, expected):
  del backend  # selects the import state
  start = time.perf_counter()
  assert rewards.math_reward(completion, answer) == expected
  assert time.perf_counter() - start < 3.0


def test_fallback_is_used_without_math_verify(monkeypatch):
  monkeypatch.setitem(sys.modules, "math_verify", None)
  assert rewards._import_math_verify() is None  # pylint: disable=protected-access
  with pytest.raises(ImportError, match="pip install math-verify"):
    rewards.answers_match("1/2", "0.3", backend="math_verify")
  with pytest.raises(ValueError, match="backend must be one of"):
    rewards.answers_match("1", "1", backend="sympy")


def test_percent_on_one_side_matches_fraction():
  assert rewards.fallback_match("50\\%", "0.5")
  assert rewards.fallback_match("0.5", "50\\%")
  assert rewards.fallback_match("50\\%", "50")
  assert not rewards.fallback_match("50\\%", "5")


def test_too_expensive_screen():
  for text in ("9^{9^9}", "9^9^9", "10^{100000}", "10**100000", "(2^{99})^{99}", "1000!",
               "(3)!", "\\binom{100000}{3}", "2^{9999*9999}", "2^{" + "\\a" * 30 + "!}",
               "x" * 1001, "(" * 41 + ")" * 41, "\\boxed{" + "{" * 14 + "2" + "}" * 15):
    assert rewards.too_expensive(text), text
  for text in ("2^{10}", "x^2+2x+1", "2^{2005}", "e^{i\\pi/4}", "x^{n+1}", "5!", "\\binom{10}{3}",
               "10^{-3}", "2^{\\frac{1}{2}}", "(x+1)^2"):
    assert not rewards.too_expensive(text), text


def test_fallback_survives_deep_input_under_the_length_cap():
  """Inputs under the 1000-character cap that would overflow a naive recursive parser."""
  for text in ("-" * 998 + "1", "1" + "^-" * 300 + "1", "2" + "^2" * 400, "\\frac" * 150 + "1",
               "\\sqrt" * 150 + "1", "\\sqrt[" * 150 + "1", "(" * 450 + "1" + ")" * 450):
    start = time.perf_counter()
    assert rewards.fallback_match(text, "7") is False
    assert time.perf_counter() - start < 1.0
  assert rewards.fallback_match("-" * 998 + "1", "1")  # an even number of signs
  assert rewards.fallback_match("{" * 400 + "1" + "}" * 400, "1")  # braces around everything


def test_math_reward_in_host_runner():
  from adaptive_rl.tasks import host_reward  # pylint: disable=g-import-not-at-top
  runner = host_reward.HostRewardRunner(rewards.math_reward, timeout_s=20.0, max_workers=0)
  try:
    result = runner(["\\boxed{72}", "\\boxed{9^{9^{9^{9}}}}", "none"], ["#### 72"] * 3)
  finally:
    runner.close()
  assert result.rewards.tolist() == [1.0, 0.0, 0.0] and result.errors == 0


_PIECES = list("0123456789{}()[]^!/*-+.,=x $#%\\") + [
    "\\boxed{", "\\frac", "\\sqrt", "\\text{", "####", "\\left(", "\\pi", "9^{9^"]
_LATEXISH = st.lists(st.sampled_from(_PIECES), max_size=40).map("".join)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(completion=_LATEXISH, answer=_LATEXISH)
def test_fallback_is_total_on_random_latex(completion, answer):
  """The fallback never raises and answers quickly on arbitrary LaTeX soup."""
  start = time.perf_counter()
  pred, ref = answers.extract_answer(completion), answers.reference_answer(answer)
  if pred and ref:
    assert rewards.answers_match(pred, ref, backend="fallback") in (True, False)
    assert rewards.answers_match(ref, ref, backend="fallback")
  assert time.perf_counter() - start < 1.0
