"""The README's 8-fake-device command, run as documented: it finishes, and its RL steps equal the
1-device command's.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python launch/train.py \
      --config configs/quickstart.py:smoke=True --config.mesh.data=2 --config.mesh.fsdp=2 \
      --config.mesh.tensor=2 --workdir DIR

It used to abort in the SFT warm start (XLA:CPU's thread pool, 8 threads for 8 devices on 2
cores, starved a collective's rendezvous; see adaptive_rl/parallel/cpu_runtime.py).

Which steps are compared. The two runs' own first RL steps cannot agree to 1e-4: float32
reduction order (an all-reduce over four batch shards vs one sum) moves the SFT params by ~1e-7
in the first steps, and 300 Adam steps at lr 3e-3 amplify that chaotically (measured max
relative param difference, 8 devices vs 1: 0 after 1 step, 1e-7 after 5, 4e-7 after 20, 7e-4
after 80, 0.23 after 300), so different completions are sampled from the first RL step on. So
the 1-device command resumes the 8-device run's earliest kept checkpoint (params, optimizer and
allocator state, RNG, data position; a resume may change the mesh) and the three RL steps after
it are compared: same state in, same math on 1 and on 8 devices.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MESH = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]
_RTOL = 1e-4
# GRPO losses are sums of O(1) per-token terms with centred advantages that nearly cancel (a
# step's loss can be 0 on one mesh and 1e-8 on the other): float32-scale absolute floor.
_ATOL = 1e-6


def _train(workdir, devices, mesh_flags):
  """launch/train.py as a user runs it: a fresh process whose env sets the device count.

  The parent's PJRT_NPROC / NPROC (conftest imports adaptive_rl, which sets PJRT_NPROC) are
  dropped, so the command gets no help the documented one would not get.
  """
  env = {k: v for k, v in os.environ.items() if k not in ("PJRT_NPROC", "NPROC")}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  cmd = [sys.executable, "launch/train.py", "--config", "configs/quickstart.py:smoke=True",
         *mesh_flags, "--workdir", str(workdir)]
  # A hang aborts on its own (XLA's 40 s rendezvous timeout); the timeout is a backstop.
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, (out.returncode, out.stderr[-4000:])
  return out


def _records(workdir):
  """{step: record}; a resumed run's rewritten steps replace the earlier lines."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r for r in map(json.loads, f)}


# ~40 s on a 2-core CPU (the documented run, then a 10-step resume on 1 device): not `slow`.
def test_documented_8_device_command_finishes_and_matches_one_device(tmp_path):
  sharded = tmp_path / "s8"
  _train(sharded, 8, _MESH)  # the documented command, verbatim
  records8 = _records(sharded)
  assert sorted(records8) == list(range(1, 21))
  assert all(np.isfinite(r["loss"]) for r in records8.values())

  # The 1-device command on a copy of the run, rolled back to its earliest kept checkpoint.
  one = tmp_path / "s1"
  shutil.copytree(sharded, one)
  steps = sorted(int(d) for d in os.listdir(one / "checkpoints") if d.isdigit())
  assert steps and steps[0] < 20 - 3, steps
  start = steps[0]
  for later in steps[1:]:
    shutil.rmtree(one / "checkpoints" / str(later))
  out = _train(one, 1, [])
  assert f"checkpoint step {start}" in out.stdout + out.stderr
  records1 = _records(one)

  compared = range(start + 1, start + 4)
  a = np.array([records8[s]["loss"] for s in compared])
  e = np.array([records1[s]["loss"] for s in compared])
  assert np.any(np.abs(e) > 1e-3), e  # not a vacuous comparison of zero losses
  rel = np.abs(a - e) / np.maximum(np.abs(e), 1e-30)
  assert np.all(np.abs(a - e) <= _RTOL * np.abs(e) + _ATOL), (list(compared), a, e, rel)
  # The same completions were sampled and scored on both meshes.
  assert ([records8[s]["reward_mean"] for s in compared]
          == [records1[s]["reward_mean"] for s in compared])
  print(f"steps {list(compared)}: 8 devices {a}, 1 device {e}, relative difference {rel}")
