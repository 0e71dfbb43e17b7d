"""Sequence-level advantages for GRPO-family losses, over a flat batch with group ids.

They live here, below `rl`, because the group roles form training rows with them; `rl.advantages`
re-exports every name (and adds per-group reward statistics).

A rollout batch is N sequences laid out flat (static shape). Sequence j has a scalar reward
`r_j`, a group id `g(j)` in `[0, num_groups)` and a `valid` flag; padding slots are invalid, never
enter a statistic, and always get advantage 0 (their group id may be any value). Groups may have
different sizes; every per-group statistic is a segment reduction over the valid members:

    n_g    = sum_{j: g(j)=g, valid_j} 1
    mean_g = (1 / n_g) sum_{j in g} r_j
    std_g  = sqrt( (1 / (n_g - 1)) sum_{j in g} (r_j - mean_g)^2 )        (unbiased, ddof=1)

Estimators are registered by name in `ADVANTAGE_ESTIMATORS` and called through
`compute_advantages(name, ...)`, so a config names its estimator with one string.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

SCALES = ("group", "batch", "none")
GROUP_ESTIMATORS = ("grpo", "rloo")


class _Segments(NamedTuple):
  """Per-group sums gathered back to every sequence (all arrays [N])."""
  count: Array   # n_{g(j)}, float
  mean: Array    # mean_{g(j)}
  sq_dev: Array  # sum_{k in g(j)} (r_k - mean_g)^2
  equal: Array   # bool: all valid rewards of g(j) are identical (bitwise)


def _segments(rewards: Array, group_ids: Array, valid: Array, num_groups: int) -> _Segments:
  """Two-pass (mean first, then squared deviations) segment statistics, gathered per sequence."""
  seg = lambda x: jax.ops.segment_sum(x, group_ids, num_segments=num_groups)
  vf = valid.astype(rewards.dtype)
  count_g = seg(vf)
  mean_g = seg(rewards * vf) / jnp.maximum(count_g, 1.0)
  mean = mean_g[group_ids]
  sq_dev = seg(jnp.square(rewards - mean) * vf)[group_ids]
  # Exact equality test, so that a group of identical rewards gets A = 0 exactly even when
  # float rounding of mean_g leaves a ~1e-8 residue that (std_g + eps) would amplify.
  r_hi = jnp.where(valid, rewards, -jnp.inf)
  r_lo = jnp.where(valid, rewards, jnp.inf)
  hi = jax.ops.segment_max(r_hi, group_ids, num_segments=num_groups)[group_ids]
  lo = jax.ops.segment_min(r_lo, group_ids, num_segments=num_groups)[group_ids]
  return _Segments(count_g[group_ids], mean, sq_dev, hi == lo)


def prepare_rewards(rewards, group_ids, valid) -> tuple[Array, Array, Array]:
  """float32 rewards (0 on padding, which may hold garbage), int32 group ids, bool valid."""
  rewards = jnp.asarray(rewards, jnp.float32)
  group_ids = jnp.asarray(group_ids, jnp.int32)
  valid = jnp.asarray(valid, bool)
  # Padding slots may hold garbage (even NaN); zero them so no statistic can see them.
  return jnp.where(valid, rewards, 0.0), group_ids, valid


def group_advantages(
    rewards: Array,
    group_ids: Array,
    valid: Array,
    num_groups: int,
    *,
    estimator: str = "grpo",
    scale: str = "group",
    eps: float = 1e-6,
) -> Array:
  """Group-relative advantages (GRPO, Dr.GRPO, RLOO) with segment reductions.

  The centred reward depends on `estimator`:

      grpo:  c_j = r_j - mean_g
      rloo:  c_j = r_j - (1 / (n_g - 1)) sum_{k in g, k != j} r_k
                 = n_g / (n_g - 1) * (r_j - mean_g)

  and the advantage divides it by a scale chosen by `scale`:

      group: A_j = c_j / (std_g + eps)                         (GRPO)
      batch: A_j = c_j / (std_B + eps),  std_B = unbiased std of all valid rewards in the batch
             (group mean, batch std; TRL's scale_rewards="batch", "Lite PPO")
      none:  A_j = c_j                                         (Dr.GRPO; plain RLOO)

  A sequence gets A_j = 0 exactly when it is invalid, when its group has fewer than 2 valid
  members (no baseline to compare against), or when all valid rewards of its group are equal.

  Args:
    rewards: [N] float rewards.
    group_ids: [N] int group index in [0, num_groups) (any value on invalid slots).
    valid: [N] bool; False marks padding slots.
    num_groups: static number of groups (segments).
    estimator: "grpo" or "rloo".
    scale: "group", "batch" or "none".
    eps: added to the std before dividing.

  Returns:
    [N] float32 advantages.
  """
  if estimator not in GROUP_ESTIMATORS:
    raise ValueError(f"estimator must be one of {GROUP_ESTIMATORS}, got {estimator!r}")
  if scale not in SCALES:
    raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
  rewards, group_ids, valid = prepare_rewards(rewards, group_ids, valid)
  s = _segments(rewards, group_ids, valid, num_groups)
  informative = valid & (s.count >= 2) & ~s.equal
  n_minus_1 = jnp.maximum(s.count - 1.0, 1.0)

  centred = rewards - s.mean
  if estimator == "rloo":
    centred = centred * s.count / n_minus_1

  if scale == "group":
    denom = jnp.sqrt(s.sq_dev / n_minus_1) + eps
  elif scale == "batch":
    vf = valid.astype(jnp.float32)
    n_b = jnp.sum(vf)
    mean_b = jnp.sum(rewards * vf) / jnp.maximum(n_b, 1.0)
    var_b = jnp.sum(jnp.square(rewards - mean_b) * vf) / jnp.maximum(n_b - 1.0, 1.0)
    denom = jnp.sqrt(var_b) + eps
  else:
    denom = 1.0
  return jnp.where(informative, centred / denom, 0.0)


def baseline_advantages(
    rewards: Array,
    baseline: Array,
    valid: Array,
    *,
    std: Array | None = None,
    eps: float = 1e-6,
) -> Array:
  """Advantages against an external per-sequence baseline (Reinforce-Ada global pool).

      A_j = r_j - b_j                         if std is None
      A_j = (r_j - b_j) / max(s_j, eps)       otherwise

  where b_j and s_j are the statistics of sequence j's prompt (e.g. the pool success rate
  p_hat = P / (P + N) over every sample drawn this step, gathered to the sequence).
  Invalid slots get 0.

  Args:
    rewards: [N] float rewards.
    baseline: [N] (or scalar) baseline b_j.
    valid: [N] bool.
    std: optional [N] (or scalar) scale s_j.
    eps: lower bound on the scale.

  Returns:
    [N] float32 advantages.
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  adv = rewards - jnp.asarray(baseline, jnp.float32)
  if std is not None:
    adv = adv / jnp.maximum(jnp.asarray(std, jnp.float32), eps)
  return jnp.where(jnp.asarray(valid, bool), adv, 0.0)


def clip_advantages(adv: Array, c: float | Array | None) -> Array:
  """Symmetric clip |A| <= c (Knapsack-RL uses c=5); c None or 0 turns it off.

  Args:
    adv: advantages, any shape.
    c: clip bound; a Python number >= 0, None, or a traced scalar (<= 0 means off).

  Returns:
    clip(A, -c, c), or A unchanged when off.
  """
  if c is None:
    return adv
  if isinstance(c, (int, float)):
    if c < 0:
      raise ValueError(f"advantage clip c must be None or >= 0 (0 = off), got {c}")
    return adv if c == 0 else jnp.clip(adv, -c, c)
  return jnp.where(c > 0, jnp.clip(adv, -c, c), adv)


def raft_advantages(rewards: Array, valid: Array) -> Array:
  """RAFT++ advantage: A_j = max(r_j, 0) (train only on accepted samples); 0 on invalid slots."""
  rewards = jnp.asarray(rewards, jnp.float32)
  return jnp.where(jnp.asarray(valid, bool), jnp.maximum(rewards, 0.0), 0.0)


# --- registry -------------------------------------------------------------------------------
# Every entry takes the same keyword arguments so a trainer can call any of them by name.

Estimator = Callable[..., Array]


def _need(name: str, **kwargs) -> None:
  missing = [k for k, v in kwargs.items() if v is None]
  if missing:
    raise ValueError(f"advantage estimator {name!r} needs {', '.join(missing)}")


def _group_entry(name: str, estimator: str, scale: str) -> Estimator:
  def fn(rewards, valid, *, group_ids=None, num_groups=None, baseline=None, std=None,
         eps=1e-6):
    del baseline, std
    _need(name, group_ids=group_ids, num_groups=num_groups)
    return group_advantages(rewards, group_ids, valid, num_groups, estimator=estimator,
                            scale=scale, eps=eps)
  fn.__doc__ = f"group_advantages(estimator={estimator!r}, scale={scale!r})."
  return fn


def _global_baseline(rewards, valid, *, group_ids=None, num_groups=None, baseline=None,
                     std=None, eps=1e-6):
  """baseline_advantages: Reinforce-Ada's global-pool baseline (std optional)."""
  del group_ids, num_groups
  _need("global_baseline", baseline=baseline)
  return baseline_advantages(rewards, baseline, valid, std=std, eps=eps)


def _raft(rewards, valid, *, group_ids=None, num_groups=None, baseline=None, std=None,
          eps=1e-6):
  """raft_advantages: max(r, 0)."""
  del group_ids, num_groups, baseline, std, eps
  return raft_advantages(rewards, valid)


ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {
    "grpo": _group_entry("grpo", "grpo", "group"),
    "grpo_batch_std": _group_entry("grpo_batch_std", "grpo", "batch"),
    "dr_grpo": _group_entry("dr_grpo", "grpo", "none"),
    "rloo": _group_entry("rloo", "rloo", "none"),
    "global_baseline": _global_baseline,
    "raft": _raft,
}


def compute_advantages(
    name: str,
    rewards: Array,
    valid: Array,
    *,
    group_ids: Array | None = None,
    num_groups: int | None = None,
    baseline: Array | None = None,
    std: Array | None = None,
    eps: float = 1e-6,
    clip: float | None = None,
) -> Array:
  """Advantages by estimator name, then the optional clip |A| <= clip.

  Group estimators ("grpo", "grpo_batch_std", "dr_grpo", "rloo") need group_ids and num_groups;
  "global_baseline" needs baseline (std optional); "raft" needs only rewards.

  Args:
    name: a key of ADVANTAGE_ESTIMATORS.
    rewards: [N] float rewards.
    valid: [N] bool.
    group_ids: [N] int group ids, for group estimators.
    num_groups: static group count, for group estimators.
    baseline: [N] baseline, for "global_baseline".
    std: optional [N] scale, for "global_baseline".
    eps: std floor / offset.
    clip: optional advantage clip (None or 0 = off).

  Returns:
    [N] float32 advantages, 0 on invalid slots.
  """
  if name not in ADVANTAGE_ESTIMATORS:
    raise ValueError(
        f"unknown advantage estimator {name!r}; valid names: {sorted(ADVANTAGE_ESTIMATORS)}")
  adv = ADVANTAGE_ESTIMATORS[name](rewards, valid, group_ids=group_ids, num_groups=num_groups,
                                   baseline=baseline, std=std, eps=eps)
  return clip_advantages(adv, clip)
