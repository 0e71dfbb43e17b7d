"""The device mesh and multi-host initialisation.

Every run uses one 4-axis mesh, ("data", "fsdp", "tensor", "sequence"); axes a run does not use
have size 1, so the same rules and code serve 1 CPU, 8 fake CPU devices, one GPU and a pod.

  info = initialize_distributed(None, None, None)  # multi-host: before any other JAX call
  mesh = make_mesh(MeshConfig(data=-1, fsdp=2))    # data = the remaining devices
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor", "sequence")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the four mesh axes; their product must equal the device count.

  Attributes:
    data: pure data parallelism (weights replicated across it).
    fsdp: data parallelism with weights, gradients and optimizer state sharded across it.
    tensor: tensor parallelism (heads, mlp and vocab dimensions split).
    sequence: activations split along the sequence (length) dimension.
  At most one axis may be -1, meaning "all the devices the others leave"; data defaults to -1,
  so `MeshConfig()` is data parallelism over every device and pure FSDP is
  `MeshConfig(data=1, fsdp=-1)`.
  """

  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  sequence: int = 1

  def __post_init__(self):
    for name in MESH_AXES:
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and value != -1):
        raise ValueError(f"mesh.{name} must be a positive int or -1 (the rest), got {value!r}")
    rest = [n for n in MESH_AXES if getattr(self, n) == -1]
    if len(rest) > 1:
      raise ValueError(f"at most one mesh axis may be -1 (the rest), got {rest} "
                       f"({self._describe()}; data defaults to -1: set it too)")

  def _describe(self) -> str:
    return " x ".join(f"mesh.{n}={getattr(self, n)}" for n in MESH_AXES)

  def shape(self, num_devices: int) -> tuple[int, int, int, int]:
    """The axis sizes for `num_devices` devices, with -1 resolved.

    Raises:
      ValueError naming the config fields and the device count when they do not match.
    """
    sizes = [getattr(self, n) for n in MESH_AXES]
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % fixed:
        raise ValueError(
            f"{self._describe()}: the fixed axes multiply to {fixed}, which does not divide "
            f"{num_devices} devices, so the -1 axis has no integer size")
      sizes = [num_devices // fixed if s == -1 else s for s in sizes]
    elif fixed != num_devices:
      raise ValueError(f"{self._describe()} = {fixed} != {num_devices} devices")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ("data", "fsdp", "tensor", "sequence") mesh over `devices` (default: all).

  Uses `jax.make_mesh` (topology-aware device order within a slice); on multi-slice TPU the data
  axis spans the slices (the only axis whose collectives tolerate the slow links between them).
  Axes are `AxisType.Auto`: shardings come from the logical-axis rules, not from types.

  Raises:
    ValueError when the axis sizes do not multiply to the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = cfg.shape(len(devices))
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  num_slices = len({getattr(d, "slice_index", 0) for d in devices})
  if num_slices > 1:
    if shape[0] % num_slices:
      raise ValueError(f"mesh.data={shape[0]} must be a multiple of the {num_slices} slices "
                       f"(the data axis spans slices)")
    per_slice = (shape[0] // num_slices,) + shape[1:]
    grid = mesh_utils.create_hybrid_device_mesh(per_slice, (num_slices, 1, 1, 1), devices)
    return Mesh(grid, MESH_AXES, axis_types=axis_types)
  return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
  """Where this process sits in a (possibly multi-host) run."""

  process_index: int
  process_count: int
  local_device_count: int
  device_count: int
  platform: str

  @property
  def is_main(self) -> bool:
    """True on the one process that writes logs, metrics and plots."""
    return self.process_index == 0


def process_info() -> ProcessInfo:
  """This process's index, the process count and the device counts."""
  return ProcessInfo(
      process_index=jax.process_index(), process_count=jax.process_count(),
      local_device_count=jax.local_device_count(), device_count=jax.device_count(),
      platform=jax.default_backend())


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None,
                           local_device_ids: int | Sequence[int] | None = None,
                           cpu_collectives: str | None = "gloo") -> ProcessInfo:
  """Connects this process to a multi-host run; call it before any other JAX computation.

  With all of coordinator / num_processes / process_id None, JAX detects them from the cluster
  environment (Cloud TPU, SLURM, Open MPI, Kubernetes). Calling it again is a no-op. For
  multi-process CPU runs the cross-process collectives implementation is set (gloo by default),
  without which CPU computations cannot communicate between processes.

  Args:
    coordinator: "host:port" of process 0's coordination service.
    num_processes: processes in the run.
    process_id: this process's index in [0, num_processes).
    local_device_ids: devices this process owns (GPU: one process per device setups).
    cpu_collectives: "gloo" or "mpi" (CPU only); None leaves JAX's setting.

  Returns:
    This process's `ProcessInfo`.
  """
  if jax.distributed.is_initialized():
    return process_info()
  explicit = (coordinator, num_processes, process_id)
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise ValueError(
        f"initialize_distributed: give all of coordinator, num_processes and process_id, or none "
        f"of them to auto-detect (got coordinator={coordinator!r}, "
        f"num_processes={num_processes!r}, process_id={process_id!r})")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"initialize_distributed: process_id={process_id} must be in "
                     f"[0, num_processes={num_processes})")
  if cpu_collectives is not None:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  if coordinator is None:
    jax.distributed.initialize(local_device_ids=local_device_ids)
  else:
    jax.distributed.initialize(coordinator, num_processes, process_id,
                               local_device_ids=local_device_ids)
  return process_info()
