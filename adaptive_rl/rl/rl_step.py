"""One RL step, shared by every caller: rollout (select -> budget rounds -> pool) then train.

  rl_step = RLStep(model_cfg, sampler_cfg, step_cfg, allocator, tx, reward_fn=task.reward)
  state, metrics, samples_per_prompt = rl_step(state, data)           # one jitted program

With an in-graph `reward_fn` the whole step (prompt choice, every budget round as a
`lax.while_loop`, groups, the PPO update, the allocator update) is one jitted function: no host
sync between rounds. With rewards scored on the host (`host_score`), the same round body runs in
a Python loop: `begin` -> (`sample` -> score -> `finish`) per round -> `train`, each jitted once.

The pure functions are attributes too (`begin_fn`, `sample_fn`, `finish_fn`, `train_fn`,
`step_fn`) for callers that jit them their own way (benchmarks that time phases). Shardings are
given as one `StepShardings` pytree bundle, never positional tuples; `jit` may be any
`jax.jit`-like wrapper (the trainer's enters the mesh's logical-axis rules on each call).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
import optax

from adaptive_rl.allocation import rollout as ro_lib
from adaptive_rl.allocation.roles import Allocator, Plan
from adaptive_rl.allocation.rollout import Rollout
from adaptive_rl.models import ModelConfig
from adaptive_rl.rl.losses import policy_loss
from adaptive_rl.rl.step import Pool, StepConfig, empty_pool, make_train_step, policy_params
from adaptive_rl.rl.train_state import TrainState
from adaptive_rl.sampling import SamplerConfig, sample

# (rollout, plan) -> (rewards [S] float32 numpy, failed reward calls): the host reward scorer.
HostScore = Callable[[Rollout, Plan], tuple[np.ndarray, int]]


@dataclasses.dataclass(frozen=True)
class StepShardings:
  """Where the step's inputs and outputs live (a bundle of pytrees of `NamedSharding`s).

  Attributes:
    state: the `TrainState`'s shardings.
    data: the train split's arrays (a dict like `data`).
    pool: the step's `Pool` (rows over the batch axes).
    replicated: everything small (allocator state, keys, metrics).
    base: LoRA's frozen base params (None without LoRA).
    policy: what samples: the params' shardings, or LoRA's `AdaptedParams` of them.
  """

  state: Any
  data: Any
  pool: Any
  replicated: Any
  policy: Any
  base: Any = None

  def rollout(self) -> Rollout:
    r = self.replicated
    return Rollout(ids=r, round_state=r, pool=self.pool, key=r, rounds=r, done=r)


class RLStep:
  """The RL step of a run: jitted once per run (test: `compiled_counts()`)."""

  def __init__(self, model_cfg: ModelConfig, sampler_cfg: SamplerConfig, step_cfg: StepConfig,
               allocator: Allocator, tx: optax.GradientTransformation, *,
               prompt_len: int, reward_fn: Callable[..., jax.Array] | None = None,
               lora_scale: float | None = None, shardings: StepShardings | None = None,
               jit: Callable = jax.jit, loss_fn: Callable = policy_loss):
    """Args:
      prompt_len: P, the padded prompt length of the data.
      reward_fn: in-graph reward (tokens [S, N], lengths [S], targets [S, A]) -> [S]; None:
        rewards come from a host scorer at call time.
      lora_scale: LoRA runs: `state.params` are adapters and the frozen base is an argument.
      shardings: in / out shardings of the jitted functions (None: let JAX choose).
      jit: the jit wrapper.
      loss_fn: the policy loss (`rl.losses.policy_loss`'s signature).
    """
    self.allocator, self.reward_fn, self.lora_scale = allocator, reward_fn, lora_scale
    n, s = sampler_cfg.max_new_tokens, allocator.budget.num_slots
    pool_rows = allocator.pool_rows
    train = make_train_step(model_cfg, step_cfg, allocator, tx, lora_scale=lora_scale,
                            loss_fn=loss_fn)

    def begin(state: TrainState):
      rng, k_sel, k_round = jax.random.split(state.rng, 3)
      alloc, rollout = ro_lib.begin(allocator, state.alloc, k_sel, k_round,
                                    empty_pool(pool_rows, prompt_len, n))
      return state.replace(alloc=alloc, rng=rng), rollout

    def generate(params, data, rollout: Rollout, plan: Plan, key):
      ids = rollout.ids
      rows = ids[plan.slot_prompt]
      prompts, prompt_lengths = data["prompts"][rows], data["prompt_lengths"][rows]
      if ids.shape[0] < s:  # fewer chosen prompts than slots: prefill each prompt once
        out = sample(model_cfg, sampler_cfg, params, data["prompts"][ids],
                     data["prompt_lengths"][ids], key, prompt_index=plan.slot_prompt)
      else:
        out = sample(model_cfg, sampler_cfg, params, prompts, prompt_lengths, key)
      rewards = None
      if reward_fn is not None:
        rewards = reward_fn(out.tokens, out.lengths, data["targets"][rows])
      return dict(prompts=prompts, prompt_lengths=prompt_lengths, completions=out.tokens,
                  lengths=out.lengths, truncated=out.truncated,
                  logp=out.policy_logprobs), rewards

    def sample_round(params, budget_state, data, rollout: Rollout):
      plan = ro_lib.plan_round(allocator, budget_state, rollout)
      rows, rewards = generate(params, data, rollout, plan, ro_lib.round_key(rollout))
      return ro_lib.write_round(allocator, rollout, plan, rows, rewards), plan

    def finish_round(rollout: Rollout, plan: Plan, rewards=None):
      return ro_lib.observe_round(allocator, rollout, plan, rewards)

    def step(state: TrainState, data, base=None):
      state, rollout = begin(state)
      params = policy_params(state.params, base, lora_scale)
      rollout = ro_lib.run_rounds(allocator, state.alloc["budget"], rollout,
                                  lambda r, plan, key: generate(params, data, r, plan, key))
      return train(state, rollout, np.int32(0), base)

    self.begin_fn, self.sample_fn, self.finish_fn = begin, sample_round, finish_round
    self.train_fn, self.step_fn = train, step

    lora = lora_scale is not None

    def shard(fn: str) -> dict[str, Any]:
      """in / out shardings of the jitted piece `fn` (none: JAX decides)."""
      if shardings is None:
        return {}
      sh, r = shardings, shardings.replicated
      rollout_sh, base_sh = sh.rollout(), ((sh.base,) if lora else ())
      return {
          "begin": dict(in_shardings=(sh.state,), out_shardings=(sh.state, rollout_sh)),
          "sample": dict(in_shardings=(sh.policy, r, sh.data, rollout_sh),
                         out_shardings=(rollout_sh, r)),
          "finish": dict(in_shardings=(rollout_sh, r, r), out_shardings=rollout_sh),
          "train": dict(in_shardings=(sh.state, rollout_sh, r) + base_sh,
                        out_shardings=(sh.state, r, r)),
          "step": dict(in_shardings=(sh.state, sh.data) + base_sh,
                       out_shardings=(sh.state, r, r)),
      }[fn]

    # Positional-only wrappers: jit's shardings are per positional argument.
    self.begin = jit(begin, donate_argnums=(0,), **shard("begin"))
    self.sample = jit(sample_round, donate_argnums=(3,), **shard("sample"))
    self.finish = jit(finish_round, donate_argnums=(0,), **shard("finish"))
    self.train = jit(lambda state, rollout, failures, *base: train(state, rollout, failures,
                                                                   *base),
                     donate_argnums=(0,), **shard("train"))
    self.step = jit(lambda state, data, *base: step(state, data, *base), donate_argnums=(0,),
                    **shard("step"))

  def policy(self, params, base=None):
    """What samples: `params`, or with LoRA the base with these adapters (unmerged)."""
    return policy_params(params, base, self.lora_scale)

  def __call__(self, state: TrainState, data, base=None, host_score: HostScore | None = None,
               fused: bool = True):
    """One RL step. Returns (state, metrics, samples per chosen prompt [B]).

    Args:
      state: the train state (donated).
      data: the train split's device arrays: prompts [D, P], prompt_lengths [D], targets [D, A].
      base: LoRA's frozen base params.
      host_score: scores each round on the host (required without an in-graph reward).
      fused: with an in-graph reward, run the whole step as one jitted program; False drives
        the rounds from Python (a host sync per round; what host rewards need).
    """
    extra = () if self.lora_scale is None else (base,)
    if self.reward_fn is not None and host_score is None and fused:
      return self.step(state, data, *extra)
    if self.reward_fn is None and host_score is None:
      raise ValueError("this RLStep has no in-graph reward_fn: pass host_score")
    state, rollout = self.begin(state)
    params = self.policy(state.params, base)
    budget = self.allocator.budget
    failures = 0
    for r in range(budget.max_rounds):
      rollout, plan = self.sample(params, state.alloc["budget"], data, rollout)
      rewards = None
      if host_score is not None:
        rewards, failed = host_score(rollout, plan)
        failures += failed
      rollout = self.finish(rollout, plan, rewards)
      if r + 1 < budget.max_rounds and bool(rollout.done):
        break
    return self.train(state, rollout, np.int32(failures), *extra)

  def compiled_counts(self) -> dict[str, int]:
    """How many times each jitted piece compiled (each is 0 or 1 in a run)."""
    return {name: getattr(self, name)._cache_size()
            for name in ("begin", "sample", "finish", "train", "step")}


__all__ = ["HostScore", "Pool", "RLStep", "Rollout", "StepShardings"]
