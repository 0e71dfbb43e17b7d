"""Tests for adaptive_rl.rl.passk against brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from adaptive_rl.rl import passk


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
  """Fraction of k-subsets of n samples (the first c correct) holding a correct one."""
  subsets = list(itertools.combinations(range(n), k))
  return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration(n):
  for c in range(n + 1):
    for k in range(1, n + 1):
      assert passk.pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_closed_forms_and_stability():
  assert passk.pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 = c / n
  assert passk.pass_at_k(10, 0, 5) == 0.0
  assert passk.pass_at_k(10, 6, 5) == 1.0  # n - c < k
  # Large n: the product form agrees with exact big-integer binomials (no overflow, no NaN).
  n, c, k = 1000, 7, 100
  exact = 1 - math.comb(n - c, k) / math.comb(n, k)
  assert passk.pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)


def test_pass_at_k_vectorised():
  n = np.array([4, 4, 8])
  c = np.array([0, 2, 8])
  out = passk.pass_at_k(n, c, 2)
  assert out.shape == (3,) and out.dtype == np.float64
  np.testing.assert_allclose(out, [_brute_pass_at_k(4, 0, 2), _brute_pass_at_k(4, 2, 2), 1.0])
  np.testing.assert_allclose(passk.pass_at_k(4, np.array([[1], [3]]), 1), [[0.25], [0.75]])


def test_pass_at_k_errors():
  with pytest.raises(ValueError, match="0 <= c <= n"):
    passk.pass_at_k(4, 5, 1)
  with pytest.raises(ValueError, match="1 <= k <= n"):
    passk.pass_at_k(4, 1, 5)
  with pytest.raises(ValueError, match="1 <= k <= n"):
    passk.pass_at_k(4, 1, 0)


def test_avg_at_k_is_the_mean_over_subsets_of_pass_at_1():
  correct = [1, 0, 1, 1, 0]
  assert passk.avg_at_k(correct, 5) == pytest.approx(0.6)
  assert passk.avg_at_k(correct, 2) == pytest.approx(0.5)
  assert passk.avg_at_k(correct, 5) == pytest.approx(passk.pass_at_k(5, 3, 1))
  with pytest.raises(ValueError, match="1 <= k <= 5"):
    passk.avg_at_k(correct, 6)


def test_maj_at_k():
  answers = ["5", "0.50", "5", ".5", ".5", None]
  correct = [False, True, False, True, True, False]
  # First 3: "5" twice beats "0.5" once.
  assert passk.maj_at_k(answers, correct, 3) == 0.0
  # First 4: "5" x2 and "0.5" x2 (normalised) tie; "5" appeared first.
  assert passk.maj_at_k(answers, correct, 4) == 0.0
  assert passk.maj_at_k(answers, correct, 5) == 1.0  # "0.5" x3
  assert passk.maj_at_k(answers, correct, 6) == 1.0  # None does not vote
  assert passk.maj_at_k([None, None], [True, True], 2) == 0.0
  # A custom key: raw strings, so "0.50" and ".5" split their votes.
  assert passk.maj_at_k(answers, correct, 5, key=str) == 0.0
  with pytest.raises(ValueError, match="6 answers but 5"):
    passk.maj_at_k(answers, correct[:5], 1)
  with pytest.raises(ValueError, match="1 <= k <= 6"):
    passk.maj_at_k(answers, correct, 7)


def test_maj_at_1_equals_first_sample_and_maj_matches_enumerated_vote():
  rng = np.random.default_rng(0)
  for _ in range(50):
    n = int(rng.integers(1, 7))
    answers = [str(int(a)) for a in rng.integers(0, 3, n)]
    correct = [a == "1" for a in answers]
    assert passk.maj_at_k(answers, correct, 1) == float(correct[0])
    for k in range(1, n + 1):
      counts = {a: answers[:k].count(a) for a in answers[:k]}
      best = max(counts.values())
      winner = next(a for a in answers[:k] if counts[a] == best)
      assert passk.maj_at_k(answers, correct, k) == float(winner == "1")
