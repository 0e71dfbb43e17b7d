"""The run's workdir: writable, and holding this run (or none) before anything is written.

`open_workdir(workdir, raw_config)` checks both and records the config as config.json; a
workdir with a different run's config is refused (resume it with `--config.force=True`). The
layout sections (`mesh`, `logical_axis_rules`) may change on resume: a run may move to a larger
slice.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
from jax.experimental import multihost_utils

from adaptive_rl.metrics import write_json
from adaptive_rl.rl.config import ConfigError

# Config sections that only say how the run is laid out on devices (a resume may change them).
LAYOUT_KEYS = ("mesh", "logical_axis_rules")


class WorkdirError(ConfigError):
  """The workdir cannot be used for outputs (not a directory, or not writable)."""


def check_workdir_writable(workdir: str) -> None:
  """Creates `workdir` if needed and proves it writable with a probe file.

  Raises `WorkdirError` naming the path and the cause, at launch, rather than a traceback from
  deep inside Orbax or a metrics writer at the first save.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"workdir {workdir} exists and is not a directory; pass a new or "
                       f"existing directory as --workdir")
  probe = os.path.join(workdir, f".write_probe.{jax.process_index()}.{os.getpid()}")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f"workdir {workdir} is not writable: {type(e).__name__}: {e}; pass a "
                       f"writable --workdir") from None


def open_workdir(workdir: str, raw_config: dict[str, Any]) -> None:
  """Checks `workdir` (see the module docstring) and writes its config.json (process 0)."""
  check_workdir_writable(workdir)
  path = os.path.join(workdir, "config.json")
  raw = json.loads(json.dumps(raw_config, default=str))
  force = bool(raw.pop("force", False))
  old = None
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    old.pop("force", None)
    math = lambda c: {k: v for k, v in c.items() if k not in LAYOUT_KEYS}
    if math(old) != math(raw) and not force:
      changed = sorted(k for k in set(old) | set(raw)
                       if old.get(k) != raw.get(k) and k not in LAYOUT_KEYS)
      raise ConfigError(
          f"workdir {workdir} holds a run with a different config (sections differing: "
          f"{changed}); use a new workdir, or --config.force=True to resume it anyway")
  if jax.process_count() > 1:  # every process reads config.json before process 0 rewrites it
    multihost_utils.sync_global_devices("adaptive_rl:check_workdir")
  if old != raw and jax.process_index() == 0:
    write_json(path, raw)
