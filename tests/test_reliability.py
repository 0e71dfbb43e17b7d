"""Failures a run meets outside the math: an unusable workdir fails at launch naming the path; a
damaged latest checkpoint falls back to the previous one; the preemption query never raises.

Tiny states only (a few KiB per checkpoint); the trainer-level cases are in test_trainer.py.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_rl.checkpoint import Checkpointer
from adaptive_rl.rl.config import ConfigError
from adaptive_rl.rl.workdir import WorkdirError, check_workdir_writable

_LIKE = {"w": jax.ShapeDtypeStruct((16, 8), np.float32), "b": jax.ShapeDtypeStruct((8,), np.int32)}


def _state(v: int):
  return {"w": jnp.full((16, 8), float(v)), "b": jnp.full((8,), v, jnp.int32)}


# --- workdir -----------------------------------------------------------------------------------

def test_workdir_that_is_a_file_is_rejected_naming_it(tmp_path):
  path = tmp_path / "run"
  path.write_text("not a directory")
  with pytest.raises(WorkdirError, match=rf"workdir {path} exists and is not a directory"):
    check_workdir_writable(str(path))


def test_workdir_below_a_file_is_rejected_naming_it(tmp_path):
  # Fails for root too (unlike permission bits): a regular file cannot hold a directory.
  (tmp_path / "file").write_text("x")
  path = str(tmp_path / "file" / "run")
  with pytest.raises(WorkdirError, match=rf"workdir {path} is not writable: "
                     r"(NotADirectoryError|FileExistsError).*pass a writable --workdir"):
    check_workdir_writable(path)
  assert issubclass(WorkdirError, ConfigError)  # launch/train.py reports it without a traceback


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_workdir_is_rejected(tmp_path):
  path = tmp_path / "ro"
  path.mkdir()
  path.chmod(0o555)
  try:
    with pytest.raises(WorkdirError, match=rf"workdir {path} is not writable: PermissionError"):
      check_workdir_writable(str(path))
  finally:
    path.chmod(0o755)


def test_writable_workdir_is_created_and_left_clean(tmp_path):
  path = tmp_path / "a" / "b"
  check_workdir_writable(str(path))
  assert path.is_dir() and not os.listdir(path)  # the probe file is removed


# --- damaged checkpoints -----------------------------------------------------------------------

def _three_steps(workdir: str) -> None:
  ckpt = Checkpointer(workdir, keep=3)
  for s in (1, 2, 3):
    ckpt.save(s, _state(s), {"step": s})
  ckpt.close()


def _truncate_data(workdir: str, step: int) -> None:
  files = glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "**", "d", "*"),
                    recursive=True)
  assert files
  for f in files:
    with open(f, "r+b") as fh:
      fh.truncate(10)


def _remove_state(workdir: str, step: int) -> None:
  shutil.rmtree(os.path.join(workdir, "checkpoints", str(step), "state"))


# Orbax's async reader can log "Event loop is closed" after a failed read; harmless here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", [_truncate_data, _remove_state])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage):
  workdir = str(tmp_path)
  _three_steps(workdir)
  damage(workdir, 3)
  ckpt = Checkpointer(workdir, keep=3)
  try:
    assert ckpt.latest_step() == 3  # committed, so Orbax still lists it
    with caplog.at_level(logging.WARNING):
      state, meta = ckpt.restore(None, _LIKE)
    assert meta == {"step": 2} and ckpt.restored_step == 2 and ckpt.skipped_steps == [3]
    np.testing.assert_array_equal(state["w"], 2.0)
    assert any("could not restore checkpoint step 3" in r.getMessage()
               and "trying the previous checkpoint" in r.getMessage() for r in caplog.records)
    # Asked for by number, the damaged step still raises.
    with pytest.raises(RuntimeError, match="could not restore checkpoint step 3 from"):
      ckpt.restore(3, _LIKE)
    # Set aside, its step number can be written again; the files are kept for inspection.
    moved = ckpt.set_aside([3])
    assert moved == [os.path.join(workdir, "checkpoints_unreadable", "3")]
    assert os.path.isdir(moved[0]) and ckpt.all_steps() == [1, 2]
    ckpt.save(3, _state(30), {"step": 30})
    ckpt.wait()
    assert ckpt.restore(None, _LIKE)[1] == {"step": 30} and ckpt.skipped_steps == []
  finally:
    ckpt.close()


def test_no_restorable_checkpoint_raises_listing_every_step_tried(tmp_path):
  workdir = str(tmp_path)
  _three_steps(workdir)
  for s in (1, 2, 3):
    _remove_state(workdir, s)
  ckpt = Checkpointer(workdir, keep=3)
  try:
    with pytest.raises(RuntimeError, match=r"could be restored; tried steps \[3, 2, 1\]") as e:
      ckpt.restore(None, _LIKE)
    assert all(f"could not restore checkpoint step {s}" in str(e.value) for s in (1, 2, 3))
  finally:
    ckpt.close()


def test_preemption_query_is_false_without_jax_distributed(tmp_path):
  ckpt = Checkpointer(str(tmp_path))
  try:
    assert [ckpt.reached_preemption(s) for s in range(3)] == [False] * 3
  finally:
    ckpt.close()
