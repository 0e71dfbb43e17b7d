"""Device mesh, logical-axis sharding rules and multi-host initialisation.

This is the only package that builds `NamedSharding`s. Model code names logical axes
(`batch`, `length`, `embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, `vocab`, `layers`) and calls
`constrain`; which mesh axes those map to is decided by the active rules.
"""

from adaptive_rl.parallel.sharding import (
    LOGICAL_AXES,
    axis_rules,
    constrain,
    current_rules,
)
