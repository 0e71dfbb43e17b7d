"""RL math and training.

The math:
  advantages  group-relative (GRPO / Dr.GRPO / RLOO) and global-baseline advantages over a flat
              batch with group ids; per-group reward statistics.
  losses      clipped surrogate, KL estimators, entropy, loss aggregation, overlong penalty,
              and `policy_loss` combining them under a `LossConfig`.
The one RL step:
  rl_step     `RLStep`: rollout (select -> budget rounds, `allocation.rollout`) + train step,
              one jitted program with in-graph rewards; `step` the train step, built from
              `batch` (rows, masks, old / reference log-probs) and `optimize` (PPO epochs).
The trainer, split by job:
  run         `build_run(RunConfig) -> Run`: the frozen bundle of everything static (no jit).
  layout      shardings and placement on the mesh.
  policy      trained params + (LoRA) frozen base: init, warm start, restore, merge, export.
  sft         the supervised warm start.
  host_scoring  host reward scoring (train rounds and evaluation).
  session     a run's jitted pieces together (`Session(run)`).
  preemption, workdir  stopping cleanly; workdir checks and config.json.
  loop        `train(run, workdir) -> summary`.
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
