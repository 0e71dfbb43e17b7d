"""Logical axis names, the default rules that map them to mesh axes, and the rules context.

Model code calls `constrain(x, ("batch", "length", "embed"))`. Outside an `axis_rules(...)`
context this is a no-op, so the model runs unchanged on one device; inside it, the logical names
are mapped through the rules to a `PartitionSpec` on the active mesh and applied with
`jax.lax.with_sharding_constraint`.

Rules are a sequence of `(logical name, mesh axes)` pairs, where mesh axes is one mesh axis name,
a tuple of them (the dimension is split over their product), or None (replicated). Two
fallbacks keep one rule set valid for every model and mesh:
  * a mesh axis shards at most one dimension of an array (the first that asks for it);
  * when a dimension's size is not divisible by a mesh axis, that axis is dropped for that
    dimension (e.g. 2 kv heads on tensor=4 are replicated), instead of failing or padding.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Every logical axis name the model and trainer use. A rule set must cover each one it sees.
LOGICAL_AXES = (
    "batch", "length", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "layers",
    "cache_length", "lora_rank",
)

Rules = tuple[tuple[str, "str | tuple[str, ...] | None"], ...]

# FSDP over ("data", "fsdp") for the batch and "fsdp" for the weights' embed dimension, tensor
# parallelism over heads / mlp / vocab, sequence parallelism of activations over "length".
# With fsdp = tensor = sequence = 1 this is plain data parallelism with replicated weights.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", "sequence"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("cache_length", None),
    ("lora_rank", None),
)

_state = threading.local()


def normalize_rules(rules: Sequence[Sequence[Any]] | Mapping[str, Any]) -> Rules:
  """Canonical hashable form of rules given as pairs (lists from a ConfigDict) or a mapping.

  Raises:
    ValueError naming a malformed or duplicated rule.
  """
  pairs = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
  out, seen = [], set()
  for pair in pairs:
    if isinstance(pair, str) or len(pair) != 2:
      raise ValueError(f"logical_axis_rules entries must be (logical, mesh_axes) pairs, got "
                       f"{pair!r}")
    name, mesh_axes = pair
    if not isinstance(name, str):
      raise ValueError(f"logical_axis_rules: logical axis name must be a str, got {name!r}")
    if name in seen:
      raise ValueError(f"logical_axis_rules: logical axis {name!r} has more than one rule")
    seen.add(name)
    if mesh_axes is not None and not isinstance(mesh_axes, str):
      mesh_axes = tuple(mesh_axes)
      if not all(isinstance(a, str) for a in mesh_axes):
        raise ValueError(f"logical_axis_rules[{name!r}] must be None, a mesh axis name or a "
                         f"tuple of names, got {mesh_axes!r}")
      if len(set(mesh_axes)) != len(mesh_axes):
        raise ValueError(f"logical_axis_rules[{name!r}] repeats a mesh axis: {mesh_axes!r}")
    out.append((name, mesh_axes))
  return tuple(out)


def validate_rules(rules: Sequence[Sequence[Any]] | Mapping[str, Any],
                   axes_used: Any = LOGICAL_AXES, mesh: Mesh | None = None) -> Rules:
  """Checks at launch that every logical axis in use has a rule and every rule names real axes.

  Args:
    rules: the rule set (pairs or a mapping).
    axes_used: logical names in use: an iterable of names or any pytree of axes tuples, e.g.
      `models.param_axes(cfg)` (None entries are ignored).
    mesh: when given, every mesh axis named by a rule must exist in it.

  Returns:
    The normalized rules.

  Raises:
    ValueError naming the logical axis without a rule, or the unknown mesh axis.
  """
  rules = normalize_rules(rules)
  table = dict(rules)
  names = sorted({n for n in jax.tree.leaves(axes_used) if n is not None})
  missing = [n for n in names if n not in table]
  if missing:
    raise ValueError(
        f"logical axis {missing[0]!r} has no rule in logical_axis_rules (missing: {missing}; "
        f"rules cover {sorted(table)})")
  if mesh is not None:
    for name, mesh_axes in rules:
      for a in _as_tuple(mesh_axes):
        if a not in mesh.axis_names:
          raise ValueError(f"logical_axis_rules[{name!r}] names mesh axis {a!r}, not one of the "
                           f"mesh's axes {tuple(mesh.axis_names)}")
  return rules


@contextlib.contextmanager
def axis_rules(mesh: Mesh, rules: Sequence[Sequence[Any]] | Mapping[str, Any] = DEFAULT_RULES
               ) -> Iterator[None]:
  """Activates `rules` (logical name -> mesh axis / axes / None) on `mesh` for this thread.

  The rules are read when a function is traced, and `jax.jit` does not key its cache on them:
  enter the context before the first call of a jitted function and keep it for the run.
  """
  prev = getattr(_state, "ctx", None)
  _state.ctx = (mesh, normalize_rules(rules))
  try:
    yield
  finally:
    _state.ctx = prev


def current_rules() -> tuple[Mesh, Rules] | None:
  return getattr(_state, "ctx", None)


def _as_tuple(mesh_axes) -> tuple[str, ...]:
  if mesh_axes is None:
    return ()
  return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def logical_to_spec(axes: Sequence[str | None], rules: Rules,
                    shape: Sequence[int] | None = None, mesh: Mesh | None = None
                    ) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec; unknown names raise, naming the axis.

  Args:
    axes: one logical name (or None) per array dimension.
    rules: the rule set.
    shape: the array's shape; with `mesh`, mesh axes that do not divide a dimension are dropped
      from it (replication on that dimension) instead of producing an invalid sharding.
    mesh: the mesh the spec is for (needed for the divisibility fallback).
  """
  table = dict(rules)
  if shape is not None and len(shape) != len(axes):
    raise ValueError(f"logical axes {tuple(axes)} do not match an array of rank {len(shape)} "
                     f"(shape {tuple(shape)})")
  out = []
  used: set[str] = set()
  for dim, name in enumerate(axes):
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise ValueError(
          f"logical axis {name!r} has no rule in logical_axis_rules (rules cover "
          f"{sorted(table)})")
    # A mesh axis may shard only one dimension of an array; later dims fall back to replication.
    mesh_axes = tuple(a for a in _as_tuple(table[name]) if a not in used)
    if shape is not None and mesh is not None:
      kept, size = [], 1
      for a in mesh_axes:
        if shape[dim] % (size * mesh.shape[a]) == 0:
          kept.append(a)
          size *= mesh.shape[a]
      mesh_axes = tuple(kept)
    used.update(mesh_axes)
    out.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
  return PartitionSpec(*out)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Applies a sharding constraint from logical axis names when rules are active."""
  ctx = current_rules()
  if ctx is None:
    return x
  mesh, rules = ctx
  spec = logical_to_spec(axes, rules, x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

