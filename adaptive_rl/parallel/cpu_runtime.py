"""XLA:CPU with more fake devices than cores: enough runtime threads for collectives to finish.

A workaround for an XLA:CPU runtime deadlock, not a sharding problem. With
`--xla_force_host_platform_device_count=N` the PjRt CPU client runs every device's share of a
computation on one thread pool of max(cores, N) threads ("enough for one collective", as its
source says). A multi-device launch runs on that pool too, and each launch first takes a slot
of its device's in-flight semaphore (32 computations): once the host has dispatched 32 steps
ahead, a launch waits there *holding a pool thread*. With N = 8 on 2 cores the pool has exactly
8 threads, so one or two launches parked on the semaphore leave fewer than 8 threads for the
collective step that would free the slots: 6 or 7 devices wait in its rendezvous for the others,
which never get a thread, and XLA aborts after 40 s ("Expected 8 threads to join the
rendezvous, but only 6 of them arrived"). Any collective does it (a plain all-reduce too), in
any asynchronously dispatched loop (the SFT warm start's 300 steps first); a machine with at
least 2N cores never sees it, and `jax_cpu_enable_async_dispatch=False` does not help
(collective launches are scheduled asynchronously regardless).

The fix is more pool threads: N parked launches plus the N devices of the running collective,
2N in all. The client's default size is read from `PJRT_NPROC` (else `NPROC`, else the cores)
when the CPU backend is created, so `ensure_collective_threads` sets `PJRT_NPROC=2N` when it
would be smaller. `adaptive_rl.parallel` calls it when imported, which every entry point does
before JAX creates its backends (JAX creates them lazily, at the first device query); a
`PJRT_NPROC` the user set is left alone.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import MutableMapping

_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def fake_cpu_device_count(environ: MutableMapping[str, str] | None = None) -> int:
  """The number of CPU devices JAX will create from the environment (1 when not forced).

  `JAX_NUM_CPU_DEVICES` (or `jax.config.jax_num_cpu_devices`, when set before this call)
  overrides the XLA flag, as in JAX; of several XLA flags the last one counts.
  """
  env = os.environ if environ is None else environ
  found = _DEVICE_COUNT_FLAG.findall(env.get("XLA_FLAGS", ""))
  count = int(found[-1]) if found else 1
  explicit = env.get("JAX_NUM_CPU_DEVICES", "").strip()
  if explicit.lstrip("-").isdigit() and int(explicit) >= 0:
    count = int(explicit)
  if environ is None:
    try:
      import jax  # pylint: disable=import-outside-toplevel
      configured = jax.config.values.get("jax_num_cpu_devices", -1)
    except Exception:  # pylint: disable=broad-except
      configured = -1
    if isinstance(configured, int) and configured >= 0:
      count = configured
  return max(count, 1)


def _default_pool_size(env: MutableMapping[str, str]) -> int:
  """XLA's `DefaultThreadPoolSize()`: $NPROC if set, else the schedulable cores."""
  nproc = env.get("NPROC", "").strip()
  if nproc.isdigit():
    return int(nproc)
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def ensure_collective_threads(environ: MutableMapping[str, str] | None = None) -> int | None:
  """Sets `PJRT_NPROC` to 2 x the fake CPU device count when XLA's pool would be smaller.

  Must run before JAX creates its CPU backend (see the module docstring); it warns when the
  backend already exists and may be too small, and leaves a user's `PJRT_NPROC` alone.

  Args:
    environ: the environment to read and update (default `os.environ`).

  Returns:
    The `PJRT_NPROC` value set, or None when nothing was changed.
  """
  env = os.environ if environ is None else environ
  devices = fake_cpu_device_count(environ)
  needed = 2 * devices
  if devices <= 1 or "PJRT_NPROC" in env or _default_pool_size(env) >= needed:
    return None
  if environ is None and _backends_initialized():
    warnings.warn(
        f"adaptive_rl: JAX's backends were created before adaptive_rl.parallel was imported, "
        f"with {devices} fake CPU devices on {_default_pool_size(env)} cores: XLA:CPU "
        f"collectives can deadlock in long asynchronous loops. Set PJRT_NPROC={needed} in the "
        f"environment (or import adaptive_rl before the first JAX computation).",
        RuntimeWarning, stacklevel=2)
    return None
  env["PJRT_NPROC"] = str(needed)
  return needed


def _backends_initialized() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
    return bool(xla_bridge.backends_are_initialized())
  except Exception:  # pylint: disable=broad-except  (a private API: assume not yet)
    return False
