"""Orbax checkpoints of the whole train state plus a JSON record of host-side run state.

Saves are atomic (Orbax writes to a temporary directory and renames on commit), so a kill
during a save leaves the previous checkpoint restorable. `keep` keeps the last N checkpoints,
and `keep_every` additionally keeps every K-th step.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Save / restore `TrainState` pytrees and a metadata dict under DIR/checkpoints."""

  def __init__(self, workdir: str, keep: int = 2, keep_every: int | None = None,
               async_save: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every, create=True,
        enable_async_checkpointing=async_save)
    self._mngr = ocp.CheckpointManager(self.directory, options=options)

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
    """Restores `step` (default latest) onto the shardings / dtypes of `abstract_state`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      out = self._mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types; name the step and directory
      raise RuntimeError(
          f"could not restore checkpoint step {step} from {self.directory}: "
          f"{type(e).__name__}: {e}") from e
    return out.state, dict(out.meta)

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
