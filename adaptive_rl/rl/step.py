"""The train step: the pool of one step's rollouts -> an update of the policy and the allocator.

  train_step: (DAPO overlong shaping) -> training groups and advantages (group role) -> batch
              and old / reference log-probs (`batch`) -> PPO epochs over mini-batches with
              gradient accumulation (`optimize`) -> allocator state update (`allocation.rollout.
              settle`) -> metrics, including the efficiency ratios of ALGORITHMS.md.

A pure function of static settings and pytrees; `rl.rl_step.RLStep` composes it with the
rollout into the one RL step every caller uses.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adaptive_rl.allocation.roles import Allocator, PoolView
from adaptive_rl.allocation.rollout import as_view, settle
from adaptive_rl.models import AdaptedParams, ModelConfig
from adaptive_rl.rl import batch
from adaptive_rl.rl.logprobs import completion_logprobs, embedding_grad_norms
from adaptive_rl.rl.losses import LossConfig, aggregate, overlong_penalty, policy_loss
from adaptive_rl.rl.optimize import ppo_update
from adaptive_rl.rl.train_state import TrainState


class Pool(NamedTuple):
  """Every rollout of one step: R rounds of S slots ([M] = [R * S] rows)."""

  prompts: jax.Array  # [M, P] int32, left-padded
  prompt_lengths: jax.Array  # [M]
  completions: jax.Array  # [M, N]
  lengths: jax.Array  # [M] generated tokens incl. eos
  truncated: jax.Array  # [M] bool
  logp: jax.Array  # [M, N] sampler's temperature-1 log-probs
  rewards: jax.Array  # [M] float32
  prompt: jax.Array  # [M] int32 index into the step's chosen prompts
  valid: jax.Array  # [M] bool
  order: jax.Array  # [M] int32

  def view(self) -> PoolView:
    return PoolView(self.prompt, self.rewards, self.valid, self.order)


def empty_pool(rows: int, prompt_len: int, new_tokens: int) -> Pool:
  z = lambda *s: jnp.zeros(s, jnp.int32)
  return Pool(prompts=z(rows, prompt_len), prompt_lengths=z(rows), completions=z(rows, new_tokens),
              lengths=z(rows), truncated=jnp.zeros((rows,), bool),
              logp=jnp.zeros((rows, new_tokens), jnp.float32),
              rewards=jnp.zeros((rows,), jnp.float32), prompt=z(rows),
              valid=jnp.zeros((rows,), bool), order=jnp.arange(rows, dtype=jnp.int32))


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the train step.

  Attributes:
    loss: the policy loss settings.
    ppo_epochs: passes over the rollout batch.
    mini_batches: optimizer updates per epoch (the training rows split evenly).
    micro_batches: gradient-accumulation chunks per mini-batch.
    recompute_old_logp: recompute old log-probs with the trainer's forward pass instead of
      using the sampler's (needed when they may differ, e.g. a bf16 sampler).
    logprob_chunk: positions per vocabulary projection in the log-prob computation (0 = all).
    compute_entropy: compute per-token entropy (for the bonus or the metric).
    tau: binarisation threshold of rewards (counts, all-correct / all-wrong).
    overlong_buffer: DAPO's soft overlong penalty: L_cache, the buffer before the completion
      budget N in tokens (0 = off); see `shape_rewards`.
    mask_truncated: completions that hit max_new_tokens without eos don't enter the loss.
    share_prompts: run each chosen prompt's forward pass once per micro-batch and let its
      completions attend to its keys / values (`models.Prefix`), instead of once per row;
      used when a micro-batch has more rows than the step has prompts. The same log-probs and
      gradients up to float rounding, at (U P + R N) / (R (P + N)) of the token count.
  """

  loss: LossConfig = LossConfig()
  ppo_epochs: int = 1
  mini_batches: int = 1
  micro_batches: int = 1
  recompute_old_logp: bool = False
  logprob_chunk: int = 0
  compute_entropy: bool = True
  tau: float = 0.5
  overlong_buffer: int = 0
  mask_truncated: bool = False
  share_prompts: bool = True

  def __post_init__(self):
    for name in ("ppo_epochs", "mini_batches", "micro_batches"):
      if getattr(self, name) < 1:
        raise ValueError(f"rl.{name} must be >= 1, got {getattr(self, name)}")
    if self.overlong_buffer < 0:
      raise ValueError(f"rl.overlong_buffer must be >= 0, got {self.overlong_buffer}")

  @property
  def needs_ref(self) -> bool:
    return self.loss.kl_coef > 0


def policy_params(params, base, lora_scale: float | None):
  """What samples and is differentiated: `params`, or with LoRA (`lora_scale`) the frozen `base`
  with the adapters `params` applied unmerged."""
  return params if lora_scale is None else AdaptedParams(base, params, lora_scale)


def shape_rewards(cfg: StepConfig, pool: Pool) -> jax.Array:
  """The rewards the group role turns into advantages: the pool's, plus DAPO's soft overlong
  penalty when `cfg.overlong_buffer` > 0 (L_max = the completion budget N, L_cache = the
  buffer; invalid rows stay 0)."""
  if not cfg.overlong_buffer:
    return pool.rewards
  n = pool.completions.shape[1]
  penalty = overlong_penalty(pool.lengths, n, cfg.overlong_buffer)
  return jnp.where(pool.valid, pool.rewards + penalty, 0.0)


def make_train_step(model_cfg: ModelConfig, cfg: StepConfig, allocator: Allocator,
                    tx: optax.GradientTransformation, lora_scale: float | None = None,
                    loss_fn: Callable = policy_loss) -> Callable:
  """train_step(state, rollout, reward_failures[, base]) -> (state, metrics, samples per prompt
  [B]). `rollout` is the step's `allocation.rollout.Rollout` (chosen ids, pool, rounds run);
  `reward_failures` counts host reward calls that raised or timed out this step.

  With `lora_scale` (LoRA), `state.params` are the adapters and `base` the frozen base params
  (an argument, never part of the donated state): the policy is `AdaptedParams(base, adapters,
  lora_scale)`, gradients and optimizer state are the adapters' only, and the KL reference is
  the base itself (no reference copy). `loss_fn` has `rl.losses.policy_loss`'s signature (a
  fork's own objective, or a test's fault injection).

  Metrics hold this step's figures plus the cumulative counters under "total/".
  """
  group_role = allocator.group

  def train_step(state: TrainState, rollout, reward_failures: jax.Array, base: Any = None):
    pool, ids = rollout.pool, rollout.ids
    shaped = shape_rewards(cfg, pool)
    groups = group_role.form(as_view(pool)._replace(rewards=shaped))
    advantages = jnp.where(groups.valid, groups.advantages, 0.0)
    b, shared = batch.assemble(cfg, pool, ids.shape[0], groups, advantages)
    policy = policy_params(state.params, base, lora_scale)
    reference = state.ref_params if lora_scale is None else base  # LoRA: the frozen base
    b = batch.add_old_and_ref_logprobs(cfg, model_cfg, b, shared, pool.logp[groups.index],
                                       policy, reference)

    def loss_of(params, mb):
      lp, ent = batch.logprobs(cfg, model_cfg, policy_params(params, base, lora_scale), mb,
                               cfg.compute_entropy, shared)
      return loss_fn(cfg.loss, lp, mb["old_logp"], mb.get("ref_logp"), mb["advantages"],
                     mb["mask"], ent)

    rng, perm_key = jax.random.split(state.rng)
    params, opt_state, upd = ppo_update(cfg, loss_of, tx, state.params, state.opt_state, b,
                                        perm_key)

    # Allocator state update, fused into the step.
    grad_norms = None
    if "grad_norms" in allocator.requires:  # GVM's G: gradients wrt embeddings, pre-update
      grad_norms = embedding_grad_norms(model_cfg, policy, pool.prompts, pool.prompt_lengths,
                                        pool.completions, pool.lengths,
                                        chunk_size=cfg.logprob_chunk)
    completion_hash = None
    if "diversity" in allocator.requires:
      completion_hash = hash_completions(pool.completions, pool.lengths)
    alloc, stats, eff = settle(allocator, state.alloc, rollout, groups, advantages, grad_norms,
                               completion_hash)
    counters, metrics = step_metrics(cfg, state.counters, pool, rollout.rounds, shaped,
                                     reward_failures, upd, eff, advantages)
    metrics.update({f"alloc/{k}": v for k, v in allocator.summary(alloc).items()})
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              alloc=alloc, rng=rng, counters=counters)
    return new_state, metrics, stats.num_samples

  return train_step


def step_metrics(cfg: StepConfig, counters: dict[str, jax.Array], pool: Pool, rounds: jax.Array,
                 shaped_rewards: jax.Array, reward_failures: jax.Array,
                 upd: dict[str, jax.Array], eff: dict[str, jax.Array], advantages: jax.Array):
  """The new run counters and this step's metrics (cumulative counters under "total/")."""
  generated = eff["rollouts_step"]
  per = lambda x: x / jnp.maximum(generated, 1)
  tokens = jnp.sum(jnp.where(pool.valid, pool.lengths, 0))
  valid_f = pool.valid.astype(jnp.float32)
  skipped = jnp.sum(upd["skipped"]).astype(jnp.int32)
  consecutive = jnp.where(skipped > 0, counters["consecutive_nan_skips"] + skipped, 0)
  counters = {
      **counters,
      "rollouts": counters["rollouts"] + generated.astype(jnp.int32),
      "tokens_generated": counters["tokens_generated"] + tokens.astype(jnp.int32),
      "nan_skips": counters["nan_skips"] + skipped,
      "consecutive_nan_skips": consecutive,
      "reward_errors": counters["reward_errors"] + reward_failures,
  }
  metrics = {
      **{k: jnp.mean(v) for k, v in upd.items() if k != "skipped"},
      "grad_norm_max": jnp.max(upd["grad_norm"]),
      "skipped_updates": skipped,
      "reward_mean": per(jnp.sum(pool.rewards * valid_f)),
      "accuracy": per(jnp.sum((pool.rewards > cfg.tau) * valid_f)),
      "tokens_step": tokens,
      "mean_length": per(tokens),
      "truncated_frac": per(jnp.sum(pool.truncated * valid_f)),
      **eff,
      "rounds": rounds,
      "adv_abs_mean": jnp.sum(jnp.abs(advantages)) / jnp.maximum(eff["samples_trained"], 1),
      **{f"total/{k}": v for k, v in counters.items()},
  }
  if cfg.overlong_buffer:
    metrics["overlong_penalty_mean"] = per(jnp.sum((shaped_rewards - pool.rewards) * valid_f))
  return counters, metrics


def hash_completions(completions: jax.Array, lengths: jax.Array) -> jax.Array:
  """A 32-bit polynomial hash of each completion's tokens (within its length)."""
  n = completions.shape[1]
  weights = (jnp.arange(n, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(97)) | 1
  toks = jnp.where(jnp.arange(n)[None] < lengths[:, None], completions + 1, 0).astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(jnp.sum(toks * weights[None], axis=1), jnp.int32)


def sft_loss(model_cfg: ModelConfig, params, prompts, prompt_lengths, demos, demo_lengths,
             weights, chunk: int = 0):
  """Token-mean negative log-likelihood of demonstrations given prompts."""
  lp, _ = completion_logprobs(model_cfg, params, prompts, prompt_lengths, demos, demo_lengths,
                              chunk_size=chunk)
  mask = (jnp.arange(demos.shape[1])[None] < demo_lengths[:, None]) & (weights[:, None] > 0)
  return -aggregate(lp, mask, "token-mean")
