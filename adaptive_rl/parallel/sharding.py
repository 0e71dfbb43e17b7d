"""Logical axis names and the context that maps them to mesh axes.

Model code calls `constrain(x, ("batch", "length", "embed"))`. Outside an `axis_rules(...)`
context this is a no-op, so the model runs unchanged on one device; inside it, the logical names
are mapped through the rules to a `PartitionSpec` on the active mesh and applied with
`jax.lax.with_sharding_constraint`.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Every logical axis name the model and trainer use. A rule set must cover each one it sees.
LOGICAL_AXES = (
    "batch", "length", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "layers",
    "cache_length", "lora_rank",
)

_state = threading.local()

Rules = tuple[tuple[str, "str | tuple[str, ...] | None"], ...]


@contextlib.contextmanager
def axis_rules(mesh: Mesh, rules: Sequence[tuple[str, object]]) -> Iterator[None]:
  """Activates `rules` (logical name -> mesh axis / axes / None) on `mesh` for this thread."""
  prev = getattr(_state, "ctx", None)
  _state.ctx = (mesh, tuple((k, v) for k, v in rules))
  try:
    yield
  finally:
    _state.ctx = prev


def current_rules() -> tuple[Mesh, Rules] | None:
  return getattr(_state, "ctx", None)


def logical_to_spec(axes: Sequence[str | None], rules: Rules) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec; unknown names raise, naming the axis."""
  table = dict(rules)
  out = []
  used: set[str] = set()
  for name in axes:
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise ValueError(
          f"logical axis {name!r} has no rule in logical_axis_rules (rules cover "
          f"{sorted(table)})")
    mesh_axes = table[name]
    if mesh_axes is None:
      out.append(None)
      continue
    mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    # A mesh axis may shard only one dimension of an array; later dims fall back to replication.
    mesh_axes = tuple(a for a in mesh_axes if a not in used)
    used.update(mesh_axes)
    out.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
  return PartitionSpec(*out)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Applies a sharding constraint from logical axis names when rules are active."""
  ctx = current_rules()
  if ctx is None:
    return x
  mesh, rules = ctx
  spec = logical_to_spec(axes, rules)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
