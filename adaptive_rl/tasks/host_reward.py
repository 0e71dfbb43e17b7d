"""Python reward functions on the host, in a pool of worker processes with timeouts.

Text tasks score completions with arbitrary Python (`fn(completion, answer) -> float`), which may
raise, return junk, or hang (a pathological regex, a symbolic simplifier). `HostRewardRunner`
keeps such failures from stalling or crashing training:
  * each item runs in a worker process; an item that raises, returns something that is not a
    finite number in [0, 1], or kills its worker scores 0 and counts as an error;
  * an item still running `timeout_s` after it started scores 0 and counts as a timeout; its
    worker is killed and a replacement started in the background;
  * the whole batch returns within `batch_timeout_s` (default `timeout_s`) after it starts, plus
    process overhead; items unfinished or not started by then also count as timeouts.
Results come back in input order.

Workers are started with the "forkserver" method (or "spawn" where there is none), never plain
fork: forking a parent whose JAX runtime holds threads can deadlock the child. So `fn` must be
picklable by reference, i.e. a module-level function or a bound method of a picklable object
(for example a built-in task's `reward_text`), not a lambda or a notebook-local closure.

`max_workers=0` runs `fn` in-process instead: cheap, still catches exceptions and bad values,
but cannot enforce timeouts (a hanging `fn` hangs the caller).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import multiprocessing
import os
import pickle
import time
from multiprocessing import connection
from typing import Callable, Sequence

import numpy as np

OK, ERROR, TIMEOUT = 0, 1, 2
_START_TIMEOUT_S = 120.0  # a fresh worker imports the package and `fn`'s module
_MAX_START_FAILURES = 3


@dataclasses.dataclass(frozen=True)
class HostRewardResult:
  """Rewards of one batch.

  Attributes:
    rewards: [B] float32 in [0, 1]; 0 where the item failed.
    status: [B] int8, OK (0), ERROR (1) or TIMEOUT (2) per item.
    errors: number of ERROR items.
    timeouts: number of TIMEOUT items.
  """

  rewards: np.ndarray
  status: np.ndarray
  errors: int
  timeouts: int


def _worker_main(fn: Callable[[str, str], float], conn) -> None:
  """Worker loop: announce readiness, then score (index, completion, answer) requests."""
  conn.send(("ready",))
  while True:
    try:
      request = conn.recv()
    except (EOFError, OSError):
      return
    index, completion, answer = request
    try:
      conn.send((index, OK, float(fn(completion, answer))))
    except BaseException as e:  # noqa: BLE001  (any failure of user code is that item's error)
      conn.send((index, ERROR, f"{type(e).__name__}: {e}"[:500]))


class _Worker:
  """One worker process and the parent's end of its pipe."""

  def __init__(self, ctx, fn):
    self.conn, child_conn = ctx.Pipe(duplex=True)
    self.process = ctx.Process(target=_worker_main, args=(fn, child_conn), daemon=True)
    self.process.start()
    child_conn.close()
    self.ready = False
    self.item: int | None = None  # index of the item it is scoring
    self.deadline = math.inf

  def kill(self) -> None:
    self.conn.close()
    if self.process.is_alive():
      self.process.kill()
    self.process.join(timeout=5.0)


class HostRewardRunner:
  """Scores batches with a Python reward function in worker processes, with timeouts.

  Use as a context manager or call `close()`; workers start on the first call.

  Attributes:
    errors: errors over all batches so far.
    timeouts: timeouts over all batches so far.
  """

  def __init__(self, fn: Callable[[str, str], float], timeout_s: float = 5.0,
               max_workers: int | None = None, batch_timeout_s: float | None = None,
               start_method: str | None = None):
    """Builds the runner (starts nothing yet).

    Args:
      fn: `fn(completion, answer) -> float` in [0, 1]; picklable when `max_workers > 0`.
      timeout_s: most seconds one item may run, > 0.
      max_workers: worker processes, in [0, 256]; 0 runs in-process (no timeouts); None uses
        min(4, cpu count).
      batch_timeout_s: most seconds one batch may take, >= timeout_s; None means timeout_s.
      start_method: "forkserver" or "spawn"; None picks forkserver where available.
    """
    if max_workers is None:
      max_workers = min(4, os.cpu_count() or 1)
    if not 0 <= max_workers <= 256:
      raise ValueError(f"HostRewardRunner.max_workers must be in [0, 256], got {max_workers}")
    if not timeout_s > 0:
      raise ValueError(f"HostRewardRunner.timeout_s must be > 0, got {timeout_s}")
    batch_timeout_s = timeout_s if batch_timeout_s is None else batch_timeout_s
    if not batch_timeout_s >= timeout_s:
      raise ValueError(f"HostRewardRunner.batch_timeout_s must be >= timeout_s ({timeout_s}), "
                       f"got {batch_timeout_s}")
    if start_method is None:
      methods = multiprocessing.get_all_start_methods()
      start_method = "forkserver" if "forkserver" in methods else "spawn"
    if start_method not in ("forkserver", "spawn"):
      raise ValueError(
          f"HostRewardRunner.start_method must be 'forkserver' or 'spawn', got {start_method!r}")
    if max_workers:
      try:
        pickle.dumps(fn)
      except Exception as e:
        raise ValueError(
            "HostRewardRunner.fn must be picklable (a module-level function) to run in worker "
            f"processes; use max_workers=0 for in-process evaluation ({e})") from e
    self.fn = fn
    self.timeout_s = float(timeout_s)
    self.batch_timeout_s = float(batch_timeout_s)
    self.max_workers = max_workers
    self._ctx = multiprocessing.get_context(start_method) if max_workers else None
    self._workers: list[_Worker] = []
    self._start_failures = 0
    self.errors = 0
    self.timeouts = 0

  def __enter__(self) -> "HostRewardRunner":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # noqa: BLE001  (interpreter shutdown)
      pass

  def close(self) -> None:
    """Stops all workers (the runner restarts them if called again)."""
    for w in self._workers:
      w.kill()
    self._workers = []

  def __call__(self, completions: Sequence[str], answers: Sequence[str]) -> HostRewardResult:
    """Scores `fn(completions[i], answers[i])` for every i.

    Returns:
      A `HostRewardResult` in input order; never raises for failures of `fn`.
    """
    if len(completions) != len(answers):
      raise ValueError(f"got {len(completions)} completions but {len(answers)} answers")
    n = len(completions)
    rewards = np.zeros(n, np.float32)
    status = np.full(n, TIMEOUT, np.int8)
    if self.max_workers == 0:
      for i in range(n):
        try:
          value = float(self.fn(completions[i], answers[i]))
        except Exception:  # noqa: BLE001
          value = math.nan
        self._record(rewards, status, i, OK, value)
    elif n:
      self._run_pool(completions, answers, rewards, status)
    errors, timeouts = int(np.sum(status == ERROR)), int(np.sum(status == TIMEOUT))
    self.errors += errors
    self.timeouts += timeouts
    return HostRewardResult(rewards=rewards, status=status, errors=errors, timeouts=timeouts)

  @staticmethod
  def _record(rewards, status, index, code, value) -> None:
    valid = code == OK and isinstance(value, float) and math.isfinite(value) and 0 <= value <= 1
    status[index] = OK if valid else ERROR
    rewards[index] = value if valid else 0.0

  def _replace(self, worker: _Worker) -> None:
    worker.kill()
    self._workers[self._workers.index(worker)] = _Worker(self._ctx, self.fn)

  def _wait_for_one_ready(self) -> None:
    while len(self._workers) < self.max_workers:
      self._workers.append(_Worker(self._ctx, self.fn))
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not any(w.ready for w in self._workers):
      left = deadline - time.monotonic()
      if left <= 0:
        raise RuntimeError(f"HostRewardRunner: no worker started within {_START_TIMEOUT_S} s")
      for conn in connection.wait([w.conn for w in self._workers], timeout=left):
        self._handle(next(w for w in self._workers if w.conn is conn), None, None)

  def _handle(self, worker: _Worker, rewards, status) -> None:
    """Reads one message from `worker`; a dead worker is replaced (its item is an error)."""
    try:
      message = worker.conn.recv()
    except (EOFError, OSError):
      if not worker.ready:
        self._start_failures += 1
        if self._start_failures >= _MAX_START_FAILURES:
          raise RuntimeError(
              "HostRewardRunner: workers die while starting; is `fn` importable from a module "
              "the workers can import?") from None
      elif worker.item is not None and status is not None:
        self._record(rewards, status, worker.item, ERROR, None)
      self._replace(worker)
      return
    if message[0] == "ready":
      worker.ready = True
      self._start_failures = 0
      return
    index, code, value = message
    if status is not None and index == worker.item:
      self._record(rewards, status, index, code, value)
    worker.item, worker.deadline = None, math.inf

  def _run_pool(self, completions, answers, rewards, status) -> None:
    self._wait_for_one_ready()
    batch_deadline = time.monotonic() + self.batch_timeout_s
    pending = collections.deque(range(len(completions)))
    while True:
      now = time.monotonic()
      for w in list(self._workers):
        if pending and w.ready and w.item is None and now < batch_deadline:
          index = pending.popleft()
          try:
            w.conn.send((index, completions[index], answers[index]))
          except OSError:  # the idle worker died since its last item: requeue, replace it
            pending.appendleft(index)
            self._replace(w)
            continue
          w.item, w.deadline = index, now + self.timeout_s
      busy = [w for w in self._workers if w.item is not None]
      if not busy and (not pending or now >= batch_deadline):
        break
      wake = min([batch_deadline] + [w.deadline for w in busy])
      live = [w.conn for w in self._workers if w.item is not None or not w.ready]
      for conn in connection.wait(live, timeout=max(0.0, wake - now)):
        worker = next((w for w in self._workers if w.conn is conn), None)
        if worker is not None:  # else replaced earlier in this loop
          self._handle(worker, rewards, status)
      now = time.monotonic()
      for w in list(self._workers):
        if w.item is not None and (now >= w.deadline or now >= batch_deadline):
          status[w.item] = TIMEOUT  # already the default; the worker may be stuck, so kill it
          self._replace(w)
    # Items never dispatched keep status TIMEOUT and reward 0.
