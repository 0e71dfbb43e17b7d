"""Orbax checkpoints of the whole train state plus a JSON record of host-side run state.

Saves are atomic (Orbax writes to a temporary directory and renames on commit), so a kill
during a save leaves the previous checkpoint restorable. `keep` keeps the last N checkpoints,
and `keep_every` additionally keeps every K-th step.

A committed checkpoint can still be damaged afterwards (a disk fault, a partial copy or sync of
the workdir). Restoring "the latest" therefore falls back, with a warning naming the step and
the error, to the newest step that does restore; `set_aside` then moves the damaged newer steps
out of the way so that their step numbers can be saved again.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


class Checkpointer:
  """Save / restore `TrainState` pytrees and a metadata dict under DIR/checkpoints."""

  def __init__(self, workdir: str, keep: int = 2, keep_every: int | None = None,
               async_save: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every, create=True,
        enable_async_checkpointing=async_save)
    self._mngr = ocp.CheckpointManager(self.directory, options=options)
    self.restored_step: int | None = None  # set by `restore`
    self.skipped_steps: list[int] = []  # newer steps `restore(None, ...)` could not restore

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any], force: bool = True) -> None:
    """Saves `state` at `step`; a step that is already saved is left as it is."""
    if step in self._mngr.all_steps():
      return
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores a checkpoint onto the shardings / dtypes of `abstract_state`.

    Args:
      step: the step to restore, or None for the latest one that restores: a newer step whose
        files are missing or damaged is passed over with a warning naming it and the error
        (listed in `self.skipped_steps`, newest first). An explicit step that fails raises.
      abstract_state: a pytree of arrays or `jax.ShapeDtypeStruct`s (with shardings).

    Returns:
      (state, meta); the step restored is in `self.restored_step`.

    Raises:
      FileNotFoundError: there is no checkpoint.
      RuntimeError: the requested step (or, for None, every step) could not be restored; the
        message names each step tried and its error.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    if step is not None:
      out = self._restore_step(step, abstract)
      self.restored_step, self.skipped_steps = step, []
      return out
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no checkpoint under {self.directory}")
    errors = []
    for s in steps:
      try:
        out = self._restore_step(s, abstract)
      except RuntimeError as e:
        errors.append((s, e))
        logging.warning("%s%s", e, "; trying the previous checkpoint" if s != steps[-1] else "")
        continue
      self.restored_step, self.skipped_steps = s, [t for t, _ in errors]
      if jax.process_count() > 1:  # a file only one process reads may be the damaged one
        chosen = np.ravel(multihost_utils.process_allgather(np.int32(s)))
        if len(set(chosen.tolist())) > 1:
          raise RuntimeError(f"processes restored different checkpoint steps {chosen.tolist()} "
                             f"from {self.directory}; see the warnings on each process")
      return out
    tried = "\n".join(f"  {e}" for _, e in errors)
    raise RuntimeError(f"no checkpoint under {self.directory} could be restored; tried steps "
                       f"{steps} (newest first):\n{tried}")

  def _restore_step(self, step: int, abstract: Any) -> tuple[Any, dict[str, Any]]:
    try:
      out = self._mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      meta = dict(out.meta)  # a missing meta item restores as None
    except Exception as e:  # orbax raises many types; name the step and directory
      # TensorStore appends its whole JSON spec to every error; the chained exception keeps it.
      detail = re.sub(r"\s*\[tensorstore_spec=.*", "", str(e), flags=re.S)
      raise RuntimeError(
          f"could not restore checkpoint step {step} from {self.directory}: "
          f"{type(e).__name__}: {detail}") from e
    return out.state, meta

  def set_aside(self, steps: list[int]) -> list[str]:
    """Moves the directories of damaged `steps` to DIR/checkpoints_unreadable/<step>[.<time>].

    Kept for inspection rather than deleted, and out of `all_steps`, so that a resumed run can
    save those step numbers again and `keep` counts only restorable checkpoints. Process 0
    moves (the workdir is shared); every process then reloads the step list.

    Returns:
      The new paths.
    """
    moved = []
    if jax.process_index() == 0:
      dest_root = os.path.join(os.path.dirname(self.directory), "checkpoints_unreadable")
      os.makedirs(dest_root, exist_ok=True)
      for step in steps:
        src = os.path.join(self.directory, str(step))
        if not os.path.isdir(src):
          continue
        dest = os.path.join(dest_root, str(step))
        if os.path.exists(dest):
          dest += f".{int(time.time())}"
        os.rename(src, dest)
        moved.append(dest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("adaptive_rl:checkpoint_set_aside")
    self._mngr.reload()
    return moved

  def reached_preemption(self, step: int) -> bool:
    """Whether JAX's multi-host preemption sync point is `step` (a preemption notice, e.g. a TPU
    maintenance event, relayed to every process at the same step; needs `jax.distributed`).

    Call it at every step on every process. False without `jax.distributed` or the preemption
    service, and never raises.
    """
    try:
      return bool(self._mngr.reached_preemption(step))
    except Exception:  # pylint: disable=broad-except
      return False

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
