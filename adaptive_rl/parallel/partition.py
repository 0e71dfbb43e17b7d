"""Shardings of params, train state, batches and KV caches, built from logical-axis rules.

The only place that builds `NamedSharding`s. Every sharding here comes from a tree of logical
axes (e.g. `models.param_axes(cfg)`) mapped through the rules, with the divisibility fallback of
`logical_to_spec`: a mesh axis that does not divide a dimension is dropped from it (that
dimension is replicated), so 2 kv heads on tensor=4 are replicated rather than an error.

  params = sharded_init(functools.partial(models.init, cfg), mesh, models.param_axes(cfg), rng)
  tokens = shard_batch(mesh, host_tokens_BT)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from adaptive_rl.parallel.sharding import (
    DEFAULT_RULES,
    Rules,
    logical_to_spec,
    normalize_rules,
)

# Logical axes of the sampler's KV cache fields (models.KVCache).
KV_CACHE_AXES = {
    "k": ("layers", "batch", "kv_heads", "cache_length", "head_dim"),
    "v": ("layers", "batch", "kv_heads", "cache_length", "head_dim"),
    "valid": ("batch", "cache_length"),
    "index": (),
}


def _is_axes(x: Any) -> bool:
  return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def named_sharding(mesh: Mesh, axes: Sequence[str | None], rules: Rules = DEFAULT_RULES,
                   shape: Sequence[int] | None = None) -> NamedSharding:
  """The `NamedSharding` of one array from its logical axes (fallback applied given `shape`)."""
  return NamedSharding(mesh, logical_to_spec(axes, normalize_rules(rules), shape, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of `mesh`."""
  return NamedSharding(mesh, PartitionSpec())


def param_shardings(mesh: Mesh, axes_tree: Any, rules: Rules = DEFAULT_RULES,
                    shapes: Any = None) -> Any:
  """A pytree of `NamedSharding` matching the params.

  Args:
    mesh: the device mesh.
    axes_tree: logical axes of each param (tuples as leaves), e.g. `models.param_axes(cfg)`.
    rules: logical -> mesh axes rules.
    shapes: a pytree with the params' shapes (arrays or `jax.eval_shape` output). Without it no
      divisibility fallback is applied, and a non-dividing axis fails when the array is placed.

  Returns:
    A pytree with the structure of `axes_tree`, a `NamedSharding` in place of each axes tuple.
  """
  rules = normalize_rules(rules)
  if shapes is None:
    return jax.tree.map(lambda axes: named_sharding(mesh, axes, rules), axes_tree,
                        is_leaf=_is_axes)
  return jax.tree.map(lambda axes, x: named_sharding(mesh, axes, rules, x.shape), axes_tree,
                      shapes, is_leaf=_is_axes)


def sharded_init(init_fn: Callable[..., Any], mesh: Mesh, shardings: Any, *args: Any,
                 rules: Rules = DEFAULT_RULES) -> Any:
  """Runs `init_fn(*args)` so that each output is created directly in its sharding.

  Shapes come from `jax.eval_shape` and the init is jitted with `out_shardings`, so no device
  ever holds a full unsharded copy (unless the sharding says to replicate).

  Args:
    init_fn: a pure function of `args` returning a pytree of arrays (e.g. `models.init` with
      the config bound, or a whole train state constructor).
    mesh: the device mesh.
    shardings: a pytree of `Sharding`s matching the output, a pytree of logical axes tuples
      (mapped through `rules` with the divisibility fallback), or a callable
      `abstract_output -> pytree of Sharding`.
    *args: arguments of `init_fn` (e.g. a PRNG key).
    rules: rules for a tree of logical axes.

  Returns:
    The output of `init_fn`, sharded.
  """
  abstract = jax.eval_shape(init_fn, *args)
  if callable(shardings):
    shardings = shardings(abstract)
  elif any(_is_axes(s) for s in jax.tree.leaves(shardings, is_leaf=_is_axes)):
    shardings = param_shardings(mesh, shardings, rules, abstract)
  return jax.jit(init_fn, out_shardings=shardings)(*args)


def state_shardings(abstract_state: Any, params: Any, params_shardings: Any,
                    mesh: Mesh) -> Any:
  """Shardings for a pytree that contains params-shaped subtrees (train / optimizer state).

  A leaf whose key path ends with a param's key path and has that param's shape gets the
  param's sharding (optax moments `mu['layers']['wq']`, reference params, ...); every other
  leaf (step counters, scalars, RNG keys, allocator state) is replicated.

  Args:
    abstract_state: the state pytree, e.g. `jax.eval_shape(make_state, ...)`.
    params: the params pytree (arrays or shapes).
    params_shardings: `param_shardings(...)` for `params`.
    mesh: the mesh for the replicated leaves.
  """
  by_path = {}
  for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                    jax.tree.leaves(params_shardings)):
    by_path[tuple(path)] = (tuple(leaf.shape), sharding)
  repl = replicated(mesh)

  def pick(path, leaf):
    path = tuple(path)
    for n in range(len(path), 0, -1):
      hit = by_path.get(path[-n:])
      if hit is not None and hit[0] == tuple(getattr(leaf, "shape", ())):
        return hit[1]
    return repl

  return jax.tree_util.tree_map_with_path(pick, abstract_state)


def data_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
  """The leading (batch) dimension split over the batch rule's mesh axes (data x fsdp)."""
  return named_sharding(mesh, ("batch",), rules)


def shard_batch(mesh: Mesh, batch: Any, rules: Rules = DEFAULT_RULES) -> Any:
  """Places a pytree of host arrays with their leading dimension on the batch axes.

  Single process: each leaf is the whole batch; a batch not divisible by data x fsdp falls back
  to replication (per the rules' fallback). Multi-host: each leaf is this process's slice of the
  global batch (`jax.make_array_from_process_local_data`), and the global batch must divide.

  Args:
    mesh: the device mesh.
    batch: pytree of numpy / jax arrays with a leading batch dimension (scalars replicated).
    rules: rules giving the "batch" axis its mesh axes.

  Returns:
    The same pytree of global `jax.Array`s.
  """
  rules = normalize_rules(rules)
  multi = jax.process_count() > 1

  def put(x):
    x = np.asarray(x)
    axes = ("batch",) + (None,) * (x.ndim - 1) if x.ndim else ()
    spec = logical_to_spec(axes, rules, None if multi else x.shape, mesh)
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), x)

  return jax.tree.map(put, batch)


def kv_cache_shardings(mesh: Mesh, cache: Any, rules: Rules = DEFAULT_RULES) -> Any:
  """Shardings of a `models.KVCache` (or its `jax.eval_shape`): batch over data x fsdp,
  kv heads over tensor, the layer / slot / head_dim dimensions replicated."""
  rules = normalize_rules(rules)

  def one(name, axes):
    x = getattr(cache, name)
    if isinstance(x, tuple):  # per-layer buffers (scan_layers=False): no layers axis
      return tuple(named_sharding(mesh, axes[1:], rules, xi.shape) for xi in x)
    return named_sharding(mesh, axes, rules, x.shape)

  return cache._replace(**{name: one(name, axes) for name, axes in KV_CACHE_AXES.items()})
