"""RL math and training: advantages, losses (and, later, the train state, step and trainer).

  advantages  group-relative (GRPO / Dr.GRPO / RLOO) and global-baseline advantages over a flat
              batch with group ids; per-group reward statistics.
  losses      clipped surrogate, KL estimators, entropy, loss aggregation, overlong penalty,
              and `policy_loss` combining them under a `LossConfig`.
"""

from __future__ import annotations

from adaptive_rl.rl.advantages import (
    ADVANTAGE_ESTIMATORS,
    GroupStats,
    baseline_advantages,
    clip_advantages,
    compute_advantages,
    group_advantages,
    group_metrics,
    group_stats,
    raft_advantages,
)
from adaptive_rl.rl.losses import (
    KL_ESTIMATORS,
    LOSS_AGG_MODES,
    ClipInfo,
    LossConfig,
    aggregate,
    clipped_surrogate,
    kl_k1,
    kl_k2,
    kl_k3,
    overlong_penalty,
    policy_loss,
    ratio_and_log_ratio,
    token_entropy,
)
