"""Run outputs: metrics.jsonl (one JSON object per step), TensorBoard scalars, summary.json.

On resume the writer truncates metrics.jsonl to the steps at or before the restored checkpoint,
so steps after it are rewritten rather than repeated.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np


def _jsonable(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.ndarray, np.generic)):
    value = value.tolist()
    return _jsonable(value) if isinstance(value, list) else value
  if hasattr(value, "tolist"):  # jax arrays
    return _jsonable(np.asarray(value))
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


class MetricsWriter:
  """Appends per-step records to DIR/metrics.jsonl and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str, resume_step: int = 0, tensorboard: bool = True,
               enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._truncate_after(resume_step)
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=resume_step + 1)

  def _truncate_after(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    kept = []
    with open(self.path) as f:
      for line in f:
        line = line.strip()
        if not line:
          continue
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line cut by a crash mid-write
        if rec.get("step", 0) <= step:
          kept.append(line)
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.write("".join(k + "\n" for k in kept))
    os.replace(tmp, self.path)

  def write(self, step: int, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = _jsonable({"step": int(step), **record})
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for key, value in record.items():
        if isinstance(value, (int, float)) and key != "step" and not isinstance(value, bool):
          self._tb.add_scalar(key, value, int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_jsonable(obj), f, indent=2, sort_keys=True)
  os.replace(tmp, path)
