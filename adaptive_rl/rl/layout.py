"""Where a run's arrays live on its mesh: shardings of params, state, pool and data; placement.

  layout = Layout.of(run, abstract_state_fn)
  x = layout.put(numpy_array, sharding)        # each process transfers only its own shard
  f = layout.jit(fn, in_shardings=..., ...)    # traced and called inside the mesh's axis rules

Params are never materialised unsharded: shapes come from `jax.eval_shape`, then a jit with
`out_shardings` creates them in place. The step's rows (pool, batches) are split over the batch
axes (data x fsdp) where divisible; everything else small (allocator state, keys, metrics) is
replicated.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from adaptive_rl import models
from adaptive_rl.parallel import axis_rules, named_sharding, param_shardings, replicated
from adaptive_rl.parallel import state_shardings
from adaptive_rl.rl.step import empty_pool


class InRules:
  """A jitted function that is always called inside `axis_rules(mesh, rules)`.

  `jax.jit` does not key its cache on the rules context, so a function first traced outside it
  would silently keep its unconstrained trace; entering the context on every call (cheap)
  makes every trace see the rules, whoever calls. Other attributes (`_cache_size`, `lower`)
  are the jitted function's.
  """

  def __init__(self, fn, mesh: Mesh, rules):
    self._fn, self._mesh, self._rules = fn, mesh, rules

  def __call__(self, *args, **kwargs):
    with axis_rules(self._mesh, self._rules):
      return self._fn(*args, **kwargs)

  def __getattr__(self, name):
    return getattr(self._fn, name)


def fetch(tree):
  """Host copies of (possibly batch-sharded, multi-host) arrays: the whole global value."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


@dataclasses.dataclass(frozen=True)
class Layout:
  """The shardings of one run.

  Attributes:
    mesh, rules: the device mesh and its logical-axis rules.
    repl: the replicated sharding.
    abstract_params: shapes / dtypes of the model's params.
    param_sh: the params' shardings; `trained_sh` what the optimizer trains (the params, or
      LoRA's adapters); `base_sh` LoRA's frozen base (None without LoRA); `policy_sh` what
      samples (params, or `AdaptedParams` of base and adapters).
    abstract_trained: shapes of the trained tree.
    state_sh, abstract_state: the train state's shardings and its sharded shapes (a restore's
      target).
    pool_sh: the step's pool.
  """

  mesh: Mesh
  rules: tuple
  repl: NamedSharding
  abstract_params: Any
  param_sh: Any
  abstract_trained: Any
  trained_sh: Any
  base_sh: Any
  policy_sh: Any
  state_sh: Any
  abstract_state: Any
  pool_sh: Any

  @classmethod
  def of(cls, run, make_state: Callable) -> "Layout":
    """`make_state(trained, sft_adapters)` builds a train state (traced with eval_shape)."""
    mesh, rules = run.mesh, run.rules
    abstract_params = jax.eval_shape(functools.partial(models.init, run.model_cfg),
                                     jax.random.PRNGKey(0))
    param_sh = param_shardings(mesh, models.param_axes(run.model_cfg), rules, abstract_params)
    abstract_trained, trained_sh, base_sh, policy_sh = abstract_params, param_sh, None, param_sh
    lora = run.lora_cfg
    if lora is not None:
      abstract_trained = jax.eval_shape(functools.partial(
          models.lora.init_lora, run.model_cfg, abstract_params, lora), jax.random.PRNGKey(0))
      trained_sh = param_shardings(mesh, run.lora_axes, rules, abstract_trained)
      base_sh = param_sh
      policy_sh = models.AdaptedParams(param_sh, trained_sh, lora.scale)
    abstract = jax.eval_shape(make_state, abstract_trained,
                              abstract_trained if lora is not None else None)
    state_sh = state_shardings(abstract, abstract_trained, trained_sh, mesh)
    abstract_state = jax.tree.map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract, state_sh)
    batch_sh = lambda a: _batch_sharding(mesh, rules, a.shape)
    pool_sh = jax.tree.map(batch_sh, jax.eval_shape(
        lambda: empty_pool(run.allocator.pool_rows, run.prompt_len, run.max_new)))
    return cls(mesh=mesh, rules=rules, repl=replicated(mesh), abstract_params=abstract_params,
               param_sh=param_sh, abstract_trained=abstract_trained, trained_sh=trained_sh,
               base_sh=base_sh, policy_sh=policy_sh, state_sh=state_sh,
               abstract_state=abstract_state, pool_sh=pool_sh)

  def batch_sharding(self, shape) -> NamedSharding:
    """Leading dimension over the batch axes (data x fsdp), dropping axes that do not divide."""
    return _batch_sharding(self.mesh, self.rules, shape)

  def put(self, x, sharding: NamedSharding) -> jax.Array:
    """A global array from a value every process holds in full (numpy or a local array).

    Each process transfers only the slices its own devices hold, so in a multi-host run this
    is how a process "reads its shard" of a batch all processes can compute.
    """
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  def put_batch(self, tree):
    """Host arrays placed with their leading dimension over the batch axes."""
    return jax.tree.map(lambda x: self.put(x, self.batch_sharding(np.shape(x))), tree)

  def jit(self, fn, **kwargs) -> InRules:
    return InRules(jax.jit(fn, **kwargs), self.mesh, self.rules)

  def rules_context(self):
    return axis_rules(self.mesh, self.rules)


def _batch_sharding(mesh, rules, shape) -> NamedSharding:
  axes = ("batch",) + (None,) * (len(shape) - 1) if len(shape) else ()
  return named_sharding(mesh, axes, rules, tuple(shape))
