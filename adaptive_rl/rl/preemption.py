"""Stopping a run cleanly: SIGTERM / SIGINT and multi-host preemption notices.

  with StopFlag() as stop:
    for step in ...:
      ...
      if stop.requested(checkpointer, step):
        break            # checkpoint, then raise Preempted(stop.describe(...))

A signal only sets a flag; the loop checks it between steps, so the checkpoint is always of a
whole step. All processes of a multi-host run agree to stop together (an all-gather of the
flags), and JAX's preemption sync point (a TPU maintenance notice) stops every process at the
same step.
"""

from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preempted(RuntimeError):
  """Raised after a SIGTERM / SIGINT (or a multi-host preemption notice) once the checkpoint is
  written."""


class StopFlag:
  """Set by SIGTERM / SIGINT while inside its `with` block (handlers restored on exit)."""

  def __init__(self):
    self.signal: int | None = None
    self.notice = False  # the stop came from the preemption sync point
    self._old = {}

  def __enter__(self) -> "StopFlag":
    def handler(signum, frame):
      del frame
      self.signal = signum

    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, handler)
      except ValueError:  # not the main thread (e.g. inside a notebook worker)
        pass
    return self

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)
    self._old = {}

  def requested(self, ckpt=None, step: int = 0) -> bool:
    """Whether to checkpoint and stop: any process got a signal, or `step` is JAX's preemption
    sync point (multi-host runs with `jax.distributed`)."""
    if ckpt is not None and self.signal is None and ckpt.reached_preemption(step):
      self.notice = True
      self.signal = int(signal.SIGTERM)  # stop exactly as on SIGTERM
    stop = self.signal is not None
    if jax.process_count() > 1:
      flags = multihost_utils.process_allgather(np.int32(self.signal or 0))
      signals = [int(f) for f in np.ravel(flags) if f]
      if signals and self.signal is None:
        self.signal = signals[0]
      stop = bool(signals)
    return stop

  def describe(self) -> str:
    return ("a preemption notice" if self.notice else signal.Signals(self.signal).name)
