"""Host reward functions for tests (module-level so worker processes can import them)."""

import time


def flaky_exact(completion: str, answer: str) -> float:
  """Exact match, but raises on answers ending in 7 and hangs on answers ending in 3."""
  if answer.endswith("7"):
    raise RuntimeError("reward function failure")
  if answer.endswith("3"):
    time.sleep(60)
  return float(completion == answer)
