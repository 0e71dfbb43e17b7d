"""Sampling metrics from n completions per prompt: pass@k, maj@k, avg@k.

pass@k is the unbiased estimator of Chen et al. (2021): with n samples of which c are correct,
the probability that a random k-subset (without replacement) holds at least one correct sample,

  pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i),

where the product form avoids huge binomials (and is exactly 1 when n - c < k).

maj@k takes the first k samples, votes among their (normalised) answers, and scores the winning
answer's correctness; avg@k is the mean correctness of the first k samples.
"""

from __future__ import annotations

import collections
from typing import Callable, Hashable, Sequence

import numpy as np


def _check_nck(n: int, c: int, k: int) -> None:
  if not 0 <= c <= n:
    raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
  if not 1 <= k <= n:
    raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}")


def _pass_at_k_scalar(n: int, c: int, k: int) -> float:
  _check_nck(n, c, k)
  if n - c < k:  # every k-subset contains a correct sample
    return 1.0
  i = np.arange(n - c + 1, n + 1, dtype=np.float64)
  return float(1.0 - np.prod(1.0 - k / i))


def pass_at_k(n, c, k: int):
  """Unbiased pass@k from n samples with c correct.

  Args:
    n: samples per prompt (int or int array).
    c: correct samples per prompt, 0 <= c <= n (int or int array, broadcast against n).
    k: the k of pass@k, 1 <= k <= n.

  Returns:
    A float for scalar inputs, else a float64 array of the broadcast shape.

  Raises:
    ValueError: when c or k is out of range for some n.
  """
  n_arr, c_arr = np.broadcast_arrays(np.asarray(n), np.asarray(c))
  if n_arr.ndim == 0:
    return _pass_at_k_scalar(int(n_arr), int(c_arr), int(k))
  out = np.empty(n_arr.shape, np.float64)
  for idx in np.ndindex(n_arr.shape):
    out[idx] = _pass_at_k_scalar(int(n_arr[idx]), int(c_arr[idx]), int(k))
  return out


def _default_key(answer: str) -> Hashable:
  from adaptive_rl.tasks import answers  # pylint: disable=g-import-not-at-top  (light module)
  return answers.normalize_answer(answer)


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool | float], k: int, *,
             key: Callable[[str], Hashable] | None = None) -> float:
  """Majority vote over the first k samples' answers.

  Samples without an answer (None, or an empty key) do not vote. The winner is the answer with
  the most votes; a tie goes to the answer that appeared first. The score is the correctness of
  the winner's first sample, so with a correct checker equivalent answers agree.

  Args:
    answers: one extracted answer per sample (None when the sample gave none).
    correct: one correctness flag (or reward in [0, 1]) per sample.
    k: how many of the first samples vote, 1 <= k <= len(answers).
    key: maps an answer to its vote (default `answers.normalize_answer`, so "0.50" and ".5"
      vote together).

  Returns:
    The winner's correctness as a float (0.0 when no sample among the first k has an answer).

  Raises:
    ValueError: on mismatched lengths or k out of range.
  """
  if len(answers) != len(correct):
    raise ValueError(f"maj_at_k: {len(answers)} answers but {len(correct)} correctness flags")
  if not 1 <= k <= len(answers):
    raise ValueError(f"maj_at_k: need 1 <= k <= {len(answers)}, got k={k}")
  key = key or _default_key
  votes = collections.Counter()
  first = {}  # vote key -> index of its first sample
  for i in range(k):
    if answers[i] is None:
      continue
    vote = key(answers[i])
    if vote in (None, ""):
      continue
    votes[vote] += 1
    first.setdefault(vote, i)
  if not votes:
    return 0.0
  winner = max(votes, key=lambda v: (votes[v], -first[v]))
  return float(correct[first[winner]])


def avg_at_k(correct: Sequence[bool | float], k: int) -> float:
  """Mean correctness of the first k samples.

  Args:
    correct: one flag (or reward) per sample.
    k: 1 <= k <= len(correct).

  Returns:
    The mean as a float.
  """
  if not 1 <= k <= len(correct):
    raise ValueError(f"avg_at_k: need 1 <= k <= {len(correct)}, got k={k}")
  return float(np.mean(np.asarray(correct[:k], np.float64)))
