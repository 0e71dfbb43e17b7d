"""Helpers shared by the throughput benchmarks (`sampler.py`, `train_step.py`).

  * `CompileMeter`: sums JAX's compile-phase durations (trace, lower to MLIR, XLA compile) from
    `jax.monitoring` events while active, and counts backend compiles (to catch recompiles);
  * `timed`: wall seconds of one call, waiting for every output buffer;
  * `machine_info`: where and when a benchmark ran (CPU, cores, JAX, device, date, load);
  * `parse_scan_layers`: the `--scan_layers true|false|both` flag as a list of bools.

Imported as `import _common` (the scripts run from `benchmarks/`, which is then on sys.path).
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from typing import Any, Callable

import jax

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class CompileMeter:
  """Sums JAX's compile-phase durations and counts backend compiles while `active`.

  `seconds` is the total; `by_phase` splits it into trace / lower / compile.
  """

  def __init__(self):
    self.seconds = 0.0
    self.compiles = 0
    self.by_phase = {"trace": 0.0, "lower": 0.0, "compile": 0.0}
    self.active = False
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    if self.active and event in COMPILE_EVENTS:
      self.seconds += duration
      self.compiles += event.endswith("backend_compile_duration")
      phase = ("trace", "lower", "compile")[COMPILE_EVENTS.index(event)]
      self.by_phase[phase] += duration

  def reset(self) -> None:
    self.seconds, self.compiles = 0.0, 0
    self.by_phase = dict.fromkeys(self.by_phase, 0.0)


def timed(fn: Callable[[], Any]) -> float:
  """Wall seconds of one call, waiting for every output buffer."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def cpu_model() -> str:
  """The CPU model name from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def machine_info() -> dict[str, Any]:
  """Where and when the benchmark ran (call at the end: `load_avg` is the 1/5/15-min load)."""
  dev = jax.devices()[0]
  return dict(
      processor=platform.processor(), cpu_model=cpu_model(), cpu_count=os.cpu_count(),
      platform=platform.platform(), python=platform.python_version(), jax=jax.__version__,
      backend=jax.default_backend(), device_kind=dev.device_kind, num_devices=jax.device_count(),
      date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
      load_avg=[round(x, 2) for x in os.getloadavg()])


def parse_scan_layers(text: str) -> list[bool]:
  """`--scan_layers`: "true" -> [True], "false" -> [False], "both" -> [True, False]."""
  choices = {"true": [True], "false": [False], "both": [True, False]}
  if text.lower() not in choices:
    raise ValueError(f"--scan_layers must be true, false or both, got {text!r}")
  return choices[text.lower()]


def layers_label(scan_layers: bool) -> str:
  return "scan" if scan_layers else "unrolled"
