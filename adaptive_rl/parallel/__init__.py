"""Device mesh, logical-axis sharding rules and multi-host initialisation.

This is the only package that builds `NamedSharding`s. Model code names logical axes
(`batch`, `length`, `embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, `vocab`, `layers`) and calls
`constrain`; which mesh axes those map to is decided by the active rules.

  mesh = make_mesh(MeshConfig(data=-1, fsdp=2))
  rules = validate_rules(DEFAULT_RULES, models.param_axes(cfg), mesh)
  params = sharded_init(functools.partial(models.init, cfg), mesh, models.param_axes(cfg), rng,
                        rules=rules)
  with axis_rules(mesh, rules):
    logits, _ = jax.jit(functools.partial(models.apply, cfg))(params, shard_batch(mesh, tokens))

Importing this package sizes XLA:CPU's thread pool for the fake CPU device count
(`cpu_runtime.ensure_collective_threads`), so it must come before JAX's first computation. It
imports no other adaptive_rl package (the run's memory estimate is `adaptive_rl.rl.memory`).
"""

from adaptive_rl.parallel.cpu_runtime import (
    ensure_collective_threads,
    fake_cpu_device_count,
)
from adaptive_rl.parallel.mesh import (
    MESH_AXES,
    MeshConfig,
    ProcessInfo,
    initialize_distributed,
    make_mesh,
    process_info,
)
from adaptive_rl.parallel.partition import (
    KV_CACHE_AXES,
    data_sharding,
    kv_cache_shardings,
    named_sharding,
    param_shardings,
    replicated,
    shard_batch,
    sharded_init,
    state_shardings,
)
from adaptive_rl.parallel.sharding import (
    DEFAULT_RULES,
    LOGICAL_AXES,
    axis_rules,
    constrain,
    current_rules,
    logical_to_spec,
    normalize_rules,
    validate_rules,
)

# Before JAX creates its CPU backend (importing JAX does not; the first device query does): with
# more fake CPU devices than cores, XLA:CPU needs more runtime threads than it starts with, or
# its collectives deadlock (see cpu_runtime).
ensure_collective_threads()
