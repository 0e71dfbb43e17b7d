"""Train a policy with RL from an ml_collections config.

  python launch/train.py --config configs/quickstart.py --workdir /tmp/quickstart
  python launch/train.py --config configs/quickstart.py:smoke=True --config.rl.lr=3e-4 \
      --workdir /tmp/smoke

Re-running the same command on the same workdir resumes from the latest checkpoint.

Multi-host: run the same command on every host (or once per GPU) with
  --coordinator HOST:PORT --num_processes N --process_id I
(see launch/slurm.sbatch and launch/tpu_pod.sh). Without these flags, `jax.distributed` is
initialised with auto-detection when a multi-process cluster environment is found (SLURM with
more than one task, Open MPI, TPU worker lists, JAX_COORDINATOR_ADDRESS), or when --distributed
is given (e.g. a Cloud TPU pod, which JAX detects from its metadata server); a plain single-host
run never touches it. The workdir must be on storage all hosts share (e.g. gs:// or NFS).
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from adaptive_rl.rl.config import ConfigError, parse_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Output directory (resumes if it "
                               "holds a checkpoint of the same run).")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "Multi-host: HOST:PORT of process 0's "
                                   "coordination service.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", None, "Initialise jax.distributed with "
                                 "auto-detection (default: only when the flags above or a "
                                 "multi-process cluster environment are present).")


def _cluster_env() -> bool:
  """Whether the environment describes a multi-process job JAX can auto-detect."""
  env = os.environ
  if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
    return True
  if "OMPI_MCA_orte_hnp_uri" in env or "JAX_COORDINATOR_ADDRESS" in env:
    return True
  hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
  return "," in hosts


def _init_distributed():
  """Joins the multi-host run, before any other JAX use (a no-op for single-host runs)."""
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  wanted = _DISTRIBUTED.value
  if wanted is False or (wanted is None and all(v is None for v in explicit)
                         and not _cluster_env()):
    return
  from adaptive_rl.parallel import initialize_distributed  # pylint: disable=import-outside-toplevel
  try:
    info = initialize_distributed(*explicit)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if info.is_main:
    print(f"jax.distributed: {info.process_count} processes, {info.device_count} devices "
          f"({info.local_device_count} per process, {info.platform})", flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the console
  _init_distributed()
  from adaptive_rl.rl.loop import train  # after flags: imports JAX
  from adaptive_rl.rl.preemption import Preempted
  from adaptive_rl.rl.run import build_run
  try:
    train(build_run(parse_config(_CONFIG.value)), _WORKDIR.value)
  except ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    sys.exit(2)
  except Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(143)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
