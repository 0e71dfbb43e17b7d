"""Group roles: which samples of the step's pool train, and against which baseline.

  all       every valid sample; advantages within each prompt's group (GRPO / RLOO / Dr.GRPO),
            optionally clipped (variable group sizes: GVM, Knapsack)
  balanced  Reinforce-Ada: at most n per prompt, balanced positives / negatives, advantage
            r - p_hat with p_hat over the prompt's whole pool (std off by default); one-class
            groups dropped (§3)
  dapo      the first B groups with mixed binarised rewards; GRPO advantages (§2)

`form(pool)` returns `Groups` of a static number of rows `num_train_rows(pool_rows)`; rows that
don't train are marked invalid (their advantage is 0).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from adaptive_rl.allocation import reinforce_ada
from adaptive_rl.allocation.roles import Groups, PoolView
from adaptive_rl.allocation.advantages import compute_advantages


def compact(keep: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
  """Indices of the first `size` True entries of keep (in order), and which are real."""
  idx = jnp.nonzero(keep, size=size, fill_value=0)[0].astype(jnp.int32)
  valid = jnp.arange(size) < jnp.sum(keep)
  return idx, valid


@dataclasses.dataclass(frozen=True)
class AllGroup:
  """Every valid sample trains; advantages within each prompt's group by `estimator`."""

  num_groups: int
  estimator: str = "grpo"
  adv_clip: float | None = None

  def num_train_rows(self, pool_rows: int) -> int:
    return pool_rows

  def form(self, pool: PoolView) -> Groups:
    adv = compute_advantages(self.estimator, pool.rewards, pool.valid, group_ids=pool.prompt,
                             num_groups=self.num_groups, clip=self.adv_clip)
    return Groups(jnp.arange(pool.rewards.shape[0], dtype=jnp.int32), pool.valid, adv,
                  pool.prompt)


@dataclasses.dataclass(frozen=True)
class BalancedGroup:
  """Reinforce-Ada group formation with the global-pool baseline.

  Attributes:
    num_groups: B.
    n: final group size (training rows = B n).
    tau: binarisation threshold.
    variant: "balanced" | "positive".
    use_std: divide by the std of the pool's binarised rewards (max(std, 1e-6)); off by default.
    drop_one_class: drop groups whose kept samples are all of one class (their A is 0).
    adv_clip: optional |A| bound.
  """

  num_groups: int
  n: int = 4
  tau: float = 0.7
  variant: str = "balanced"
  use_std: bool = False
  drop_one_class: bool = True
  adv_clip: float | None = None

  def num_train_rows(self, pool_rows: int) -> int:
    return self.num_groups * self.n

  def form(self, pool: PoolView) -> Groups:
    b = self.num_groups
    g = reinforce_ada.form_groups(pool.rewards, pool.prompt, pool.order, pool.valid, b, self.n,
                                  self.tau, self.variant, self.drop_one_class)
    prompt = jnp.minimum(pool.prompt, b - 1)
    baseline = g.p_hat[prompt]
    std = None
    if self.use_std:
      # The same binarised pool counts as p_hat (Reinforce-Ada's reference code): the unbiased
      # std of the prompt's P ones and N zeros, sqrt(P N / ((P + N) (P + N - 1))). The raw
      # rewards' std would mix scales with the binarised baseline unless rewards are 0 / 1.
      pos, neg = g.num_pos.astype(jnp.float32), g.num_neg.astype(jnp.float32)
      cnt = pos + neg
      var = pos * neg / (jnp.maximum(cnt, 1.0) * jnp.maximum(cnt - 1.0, 1.0))
      std = jnp.maximum(jnp.sqrt(var), 1e-6)[prompt]
    # p_hat is the fraction of pool samples with reward > tau; with binary rewards it is the
    # pool's mean reward, the global baseline of §3.
    adv = compute_advantages("global_baseline", pool.rewards, g.keep, baseline=baseline, std=std,
                             clip=self.adv_clip)
    idx, valid = compact(g.keep, self.num_train_rows(pool.rewards.shape[0]))
    return Groups(idx, valid, jnp.where(valid, adv[idx], 0.0), prompt[idx])


@dataclasses.dataclass(frozen=True)
class DapoGroup:
  """DAPO filter: keep the first B groups (in generation order) with 0 < #correct < n.

  Attributes:
    num_groups: B kept groups wanted.
    group_size: n.
    num_prompts: prompts sampled per step (B x max_gen_batches).
    tau: binarisation threshold.
    estimator: advantage estimator within kept groups.
  """

  num_groups: int
  group_size: int
  num_prompts: int
  tau: float = 0.5
  estimator: str = "grpo"
  adv_clip: float | None = None

  def num_train_rows(self, pool_rows: int) -> int:
    return self.num_groups * self.group_size

  def form(self, pool: PoolView) -> Groups:
    p = self.num_prompts
    seg = jnp.where(pool.valid, pool.prompt, p)
    good = (pool.rewards > self.tau) & pool.valid
    correct = jax.ops.segment_sum(good.astype(jnp.int32), seg, p + 1)[:p]
    count = jax.ops.segment_sum(pool.valid.astype(jnp.int32), seg, p + 1)[:p]
    mixed = (correct > 0) & (correct < count)
    # Prompts are numbered in generation order (round r owns [r B, (r + 1) B)): keep the
    # first B mixed ones.
    rank = jnp.cumsum(mixed.astype(jnp.int32)) - 1
    kept = mixed & (rank < self.num_groups)
    row_kept = pool.valid & kept[jnp.minimum(pool.prompt, p - 1)]
    adv = compute_advantages(self.estimator, pool.rewards, row_kept, group_ids=pool.prompt,
                             num_groups=p, clip=self.adv_clip)
    idx, valid = compact(row_kept, self.num_train_rows(pool.rewards.shape[0]))
    return Groups(idx, valid, jnp.where(valid, adv[idx], 0.0), pool.prompt[idx])
