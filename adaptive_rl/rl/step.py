"""The jitted pieces of one RL step: a sampling round into the step's pool, and the train step.

  round_fn:   plan the round's S slots (budget role) -> sample -> reward (in-graph) -> write the
              rows into the pool -> let the budget role observe the rewards.
  train_step: form training groups and advantages (group role) -> reference / old log-probs ->
              PPO epochs over mini-batches (with gradient accumulation) -> allocator state
              update -> metrics, including the efficiency ratios of ALGORITHMS.md.

Both are pure functions of static settings and pytrees, jitted once per run by the trainer.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adaptive_rl.allocation.metrics import efficiency_metrics
from adaptive_rl.allocation.roles import Allocator, Plan, PoolView, prompt_stats
from adaptive_rl.models import AdaptedParams, ModelConfig
from adaptive_rl.rl.logprobs import completion_logprobs, embedding_grad_norms
from adaptive_rl.rl.losses import LossConfig, aggregate, policy_loss
from adaptive_rl.rl.train_state import TrainState
from adaptive_rl.sampling import SamplerConfig, sample


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
    overlong_buffer: DAPO soft overlong penalty buffer length in tokens (0 = off).
    mask_truncated: completions that hit max_new_tokens without eos don't enter the loss.
    share_prompts: run each chosen prompt's forward pass once per micro-batch and let its
      completions attend to its keys / values (`models.Prefix`), instead of once per row;
      used when a micro-batch has more rows than the step has prompts. The same log-probs and
      gradients up to float rounding, at (U P + R N) / (R (P + N)) of the token count.
    inject_nan_step: a fault-injection hook for testing the NaN guard: the loss of this RL step
      (1-based) is made NaN (0 = off).
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
  inject_nan_step: int = 0

  def __post_init__(self):
    for name in ("ppo_epochs", "mini_batches", "micro_batches"):
      if getattr(self, name) < 1:
        raise ValueError(f"rl.{name} must be >= 1, got {getattr(self, name)}")
    if self.overlong_buffer < 0:
      raise ValueError(f"rl.overlong_buffer must be >= 0, got {self.overlong_buffer}")

  @property
  def needs_ref(self) -> bool:
    return self.loss.kl_coef > 0


def make_round_fns(model_cfg: ModelConfig, sampler_cfg: SamplerConfig, allocator: Allocator,
                   reward_fn: Callable[..., jax.Array] | None) -> tuple[Callable, Callable]:
  """The two halves of a sampling round.

  sample_round(params, pool, round_state, budget_state, ids, data, round_idx, rng)
      -> (pool, plan): plans the round's S slots (budget role), samples them and writes the rows
      into the pool; with an in-graph `reward_fn` the rewards are written too.
  finish_round(pool, round_state, plan, round_idx, rewards) -> (pool, round_state, done):
      writes host-computed rewards (None: keep the in-graph ones) and lets the budget role
      observe them.

  `data` is a dict of device arrays of the train split: prompts [D, P], prompt_lengths [D],
  targets [D, A].
  """
  budget = allocator.budget
  s = budget.num_slots

  def put(buf, x, round_idx):
    return jax.lax.dynamic_update_slice_in_dim(buf, x.astype(buf.dtype), round_idx * s, 0)

  def sample_round(params, pool: Pool, round_state, budget_state, ids, data, round_idx, rng):
    plan: Plan = budget.plan(budget_state, round_state, round_idx)
    rows = ids[plan.slot_prompt]
    prompts = data["prompts"][rows]
    prompt_lengths = data["prompt_lengths"][rows]
    if ids.shape[0] < s:  # fewer chosen prompts than slots: prefill each prompt once
      out = sample(model_cfg, sampler_cfg, params, data["prompts"][ids],
                   data["prompt_lengths"][ids], rng, prompt_index=plan.slot_prompt)
    else:
      out = sample(model_cfg, sampler_cfg, params, prompts, prompt_lengths, rng)
    if reward_fn is None:
      rewards = jnp.zeros((s,), jnp.float32)
    else:
      rewards = reward_fn(out.tokens, out.lengths, data["targets"][rows]).astype(jnp.float32)
    rewards = jnp.where(plan.slot_valid, rewards, 0.0)
    w = lambda buf, x: put(buf, x, round_idx)
    pool = Pool(
        prompts=w(pool.prompts, prompts), prompt_lengths=w(pool.prompt_lengths, prompt_lengths),
        completions=w(pool.completions, out.tokens), lengths=w(pool.lengths, out.lengths),
        truncated=w(pool.truncated, out.truncated), logp=w(pool.logp, out.policy_logprobs),
        rewards=w(pool.rewards, rewards), prompt=w(pool.prompt, plan.slot_prompt),
        valid=w(pool.valid, plan.slot_valid), order=pool.order)
    return pool, plan

  def finish_round(pool: Pool, round_state, plan: Plan, round_idx, rewards=None):
    if rewards is None:
      rewards = jax.lax.dynamic_slice_in_dim(pool.rewards, round_idx * s, s)
    else:
      rewards = jnp.where(plan.slot_valid, rewards.astype(jnp.float32), 0.0)
      pool = pool._replace(rewards=put(pool.rewards, rewards, round_idx))
    round_state, done = budget.observe(round_state, plan, rewards)
    return pool, round_state, done

  return sample_round, finish_round


def _tree_where(pred, a, b):
  return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def make_train_step(model_cfg: ModelConfig, cfg: StepConfig, allocator: Allocator,
                    tx: optax.GradientTransformation, lora_scale: float | None = None
                    ) -> Callable:
  """train_step(state, pool, ids, rounds_used, reward_failures[, base]) -> (state, metrics,
  samples per prompt [B]). `reward_failures` counts host reward calls that raised or timed out
  this step.

  With `lora_scale` (LoRA), `state.params` are the adapters and `base` the frozen base params
  (an argument, never part of the donated state): the policy is `AdaptedParams(base, adapters,
  lora_scale)`, gradients and optimizer state are the adapters' only, and the KL reference is
  the base itself (no reference copy).

  Metrics hold this step's figures plus the cumulative counters under "total/".
  """
  loss_cfg = cfg.loss
  group_role = allocator.group

  def policy(trainable, base):
    return trainable if lora_scale is None else AdaptedParams(base, trainable, lora_scale)

  def logprobs(params, b, with_entropy, shared):
    """Log-probs of batch `b`'s rows; `shared` = (prompts [U, P], lengths [U]): rows name
    their prompt by b["prompt"] (prefix sharing) instead of carrying its tokens."""
    if shared is None:
      prompts, prompt_lengths, index = b["prompts"], b["prompt_lengths"], None
    else:
      (prompts, prompt_lengths), index = shared, b["prompt"]
    return completion_logprobs(model_cfg, params, prompts, prompt_lengths, b["completions"],
                               b["lengths"], chunk_size=cfg.logprob_chunk,
                               with_entropy=with_entropy, prompt_index=index)

  def weight_of(mask):
    """How much a micro-batch counts in its mini-batch's aggregate (exact accumulation)."""
    if loss_cfg.loss_agg == "token-mean":
      return jnp.sum(mask)
    return jnp.sum(jnp.any(mask, axis=-1))

  def micro_loss(params, base, shared, b):
    lp, ent = logprobs(policy(params, base), b, cfg.compute_entropy, shared)
    loss, m = policy_loss(loss_cfg, lp, b["old_logp"], b.get("ref_logp"), b["advantages"],
                          b["mask"], ent)
    if cfg.inject_nan_step:
      loss = loss * jnp.where(b["poison"][0], jnp.nan, 1.0)
    return loss, m

  def minibatch_update(base, shared, carry, mb):
    params, opt_state = carry
    k = cfg.micro_batches
    micro = jax.tree.map(lambda x: x.reshape(k, x.shape[0] // k, *x.shape[1:]), mb)
    total_w = jnp.maximum(weight_of(mb["mask"]).astype(jnp.float32), 1.0)

    def accumulate(acc, m):
      w = weight_of(m["mask"]).astype(jnp.float32) / total_w
      (loss, metrics), grads = jax.value_and_grad(micro_loss, has_aux=True)(params, base,
                                                                            shared, m)
      acc_g, acc_m = acc
      acc_g = jax.tree.map(lambda a, g: a + w * g, acc_g, grads)
      acc_m = jax.tree.map(lambda a, v: a + w * v, acc_m, metrics)
      return (acc_g, acc_m), None

    zeros_g = jax.tree.map(jnp.zeros_like, params)
    zeros_m = jax.tree.map(lambda x: jnp.zeros((), jnp.float32),
                           jax.eval_shape(lambda: micro_loss(params, base, shared, jax.tree.map(
                               lambda x: x[0], micro))[1]))
    (grads, metrics), _ = jax.lax.scan(accumulate, (zeros_g, zeros_m), micro)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(grad_norm) & jnp.isfinite(metrics["loss"])
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    params = _tree_where(finite, new_params, params)
    opt_state = _tree_where(finite, new_opt, opt_state)
    metrics = {**metrics, "grad_norm": grad_norm, "skipped": (~finite).astype(jnp.float32)}
    return (params, opt_state), metrics

  def train_step(state: TrainState, pool: Pool, ids: jax.Array, rounds_used: jax.Array,
                 reward_failures: jax.Array, base: Any = None):
    view = pool.view()
    groups = group_role.form(view)
    rows = groups.index
    t = rows.shape[0]
    mbs = cfg.mini_batches
    b = {
        "completions": pool.completions[rows], "lengths": pool.lengths[rows],
        "advantages": jnp.where(groups.valid, groups.advantages, 0.0),
    }
    u = ids.shape[0]
    shared = None
    if cfg.share_prompts and u < t // (mbs * cfg.micro_batches):
      # One pool row per chosen prompt (a valid one where there is one; never-sampled prompts
      # get any row, and no training row refers to them).
      match = (pool.prompt[None, :] == jnp.arange(u)[:, None]).astype(jnp.int32)
      first = jnp.argmax(match * (1 + pool.valid[None, :].astype(jnp.int32)), axis=1)
      shared = (pool.prompts[first], pool.prompt_lengths[first])
      b["prompt"] = pool.prompt[rows]
    else:
      b["prompts"], b["prompt_lengths"] = pool.prompts[rows], pool.prompt_lengths[rows]
    n = pool.completions.shape[1]
    token_ok = jnp.arange(n)[None, :] < b["lengths"][:, None]
    row_ok = groups.valid
    if cfg.mask_truncated:
      row_ok = row_ok & ~pool.truncated[rows]
    b["mask"] = token_ok & row_ok[:, None]
    if cfg.recompute_old_logp:
      b["old_logp"] = jax.lax.stop_gradient(
          logprobs(policy(state.params, base), b, False, shared)[0])
    else:
      b["old_logp"] = pool.logp[rows]
    if cfg.needs_ref:
      ref = state.ref_params if lora_scale is None else base  # LoRA: the frozen base
      b["ref_logp"] = jax.lax.stop_gradient(logprobs(ref, b, False, shared)[0])

    rng, perm_key = jax.random.split(state.rng)

    def epoch_batches(key):
      perm = jax.random.permutation(key, t)
      return jax.tree.map(lambda x: x[perm].reshape(mbs, t // mbs, *x.shape[1:]), b)

    if cfg.inject_nan_step:
      b["poison"] = jnp.broadcast_to(state.step + 1 == cfg.inject_nan_step, (t,))
    keys = jax.random.split(perm_key, cfg.ppo_epochs)
    batches = jax.vmap(epoch_batches)(keys)
    batches = jax.tree.map(lambda x: x.reshape(cfg.ppo_epochs * mbs, *x.shape[2:]), batches)
    (params, opt_state), upd = jax.lax.scan(functools.partial(minibatch_update, base, shared),
                                            (state.params, state.opt_state), batches)

    # Allocator state update, fused into the step.
    grad_norms = None
    if allocator.needs_grad_norms:  # GVM's G: gradients wrt embeddings, pre-update policy
      grad_norms = embedding_grad_norms(model_cfg, policy(state.params, base), pool.prompts,
                                        pool.prompt_lengths, pool.completions, pool.lengths,
                                        chunk_size=cfg.logprob_chunk)
    completion_hash = None
    if allocator.needs_diversity:
      completion_hash = hash_completions(pool.completions, pool.lengths)
    stats = prompt_stats(ids, view, cfg.tau, grad_norms, completion_hash)
    alloc = allocator.update(state.alloc, stats, view)

    eff = efficiency_metrics(groups, b["advantages"], stats, view)
    generated = eff["rollouts_step"]
    trained = eff["samples_trained"]
    tokens = jnp.sum(jnp.where(pool.valid, pool.lengths, 0))
    valid_f = pool.valid.astype(jnp.float32)
    skipped = jnp.sum(upd["skipped"]).astype(jnp.int32)
    consecutive = jnp.where(skipped > 0, state.counters["consecutive_nan_skips"] + skipped, 0)
    counters = {
        **state.counters,
        "rollouts": state.counters["rollouts"] + generated.astype(jnp.int32),
        "tokens_generated": state.counters["tokens_generated"] + tokens.astype(jnp.int32),
        "nan_skips": state.counters["nan_skips"] + skipped,
        "consecutive_nan_skips": consecutive,
        "reward_errors": state.counters["reward_errors"] + reward_failures,
    }
    mean_upd = {k: jnp.mean(v) for k, v in upd.items() if k not in ("skipped",)}
    metrics = {
        **mean_upd,
        "grad_norm_max": jnp.max(upd["grad_norm"]),
        "skipped_updates": skipped,
        "reward_mean": jnp.sum(pool.rewards * valid_f) / jnp.maximum(generated, 1),
        "accuracy": jnp.sum((pool.rewards > cfg.tau) * valid_f) / jnp.maximum(generated, 1),
        "tokens_step": tokens,
        "mean_length": tokens / jnp.maximum(generated, 1),
        "truncated_frac": jnp.sum(pool.truncated * valid_f) / jnp.maximum(generated, 1),
        **eff,
        "rounds": rounds_used,
        "adv_abs_mean": jnp.sum(jnp.abs(b["advantages"])) / jnp.maximum(trained, 1),
        **{f"alloc/{k}": v for k, v in allocator.summary(alloc).items()},
        **{f"total/{k}": v for k, v in counters.items()},
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              alloc=alloc, rng=rng, counters=counters)
    return new_state, metrics, stats.num_samples

  return train_step


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
