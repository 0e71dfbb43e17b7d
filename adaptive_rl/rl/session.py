"""A run on its devices: the layout, the policy, the one jitted RL step, evaluation, scoring.

  session = Session(build_run(parse_config(config)))
  state = session.start()                       # init + SFT warm start, or
  state, meta = session.restore(workdir)        # the latest readable checkpoint
  state, metrics, counts = session.step(state)  # one RL step (`rl_step.RLStep`)
  session.evaluate(state.params)                # held-out accuracy
  session.close()

What `loop.train` drives, and what notebooks, `launch/evaluate.py`, benchmarks and tests use to
reach the same pieces a run uses.
"""

from __future__ import annotations

import functools
from typing import Any

import jax

from adaptive_rl.checkpoint import Checkpointer
from adaptive_rl.rl.evaluation import evaluate, make_eval_fn
from adaptive_rl.rl.host_scoring import HostScorer
from adaptive_rl.rl.layout import Layout
from adaptive_rl.rl.policy import make_policy, make_state
from adaptive_rl.rl.rl_step import RLStep, StepShardings
from adaptive_rl.rl.run import Run
from adaptive_rl.rl.sft import SFTWarmStart
from adaptive_rl.rl.train_state import TrainState


class Session:
  """The jitted, placed runtime of a `Run` (see the module docstring)."""

  def __init__(self, run: Run, warm_start: Any = None):
    """`warm_start`: replaces the SFT warm start (`rl.sft.SFTWarmStart`'s call signature)."""
    self.run = run
    layout = self.layout = Layout.of(run, functools.partial(make_state, run))
    self.policy = make_policy(run, layout)
    self.warm_start = warm_start or SFTWarmStart(run, layout)
    d = run.train_data
    self.data = layout.put_batch({"prompts": d.prompts, "prompt_lengths": d.prompt_lengths,
                                  "targets": d.targets})
    self.scorer = HostScorer(run.task, run.config.reward) if run.host_rewards else None
    shardings = StepShardings(state=layout.state_sh, data=jax.tree.map(lambda x: x.sharding,
                                                                       self.data),
                              pool=layout.pool_sh, replicated=layout.repl,
                              policy=layout.policy_sh, base=layout.base_sh)
    self.rl_step = RLStep(run.model_cfg, run.sampler_cfg, run.step_cfg, run.allocator, run.tx,
                          prompt_len=run.prompt_len,
                          reward_fn=None if run.host_rewards else run.task.reward,
                          lora_scale=self.policy.lora_scale, shardings=shardings,
                          jit=layout.jit, loss_fn=run.loss_fn)
    self._round_scorer = (None if self.scorer is None else
                          self.scorer.for_rounds(d, run.allocator.budget.num_slots))
    # Held-out batches are placed here; results come back replicated (host-readable on every
    # process).
    self._eval_jit = layout.jit(make_eval_fn(run.model_cfg, run.eval_sampler_cfg,
                                             None if run.host_rewards else run.task.reward),
                                out_shardings=layout.repl)

  def start(self) -> TrainState:
    """The RL phase's initial state: init (or HF weights), then the SFT warm start."""
    return self.policy.start(self.warm_start)

  def restore(self, workdir: str, step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
    """Checkpoint `step` (default: the latest readable one) of `workdir`, placed in this run's
    shardings (which may differ from those it was saved with). Returns (state, its metadata)."""
    ckpt = Checkpointer(workdir)
    try:
      state, meta = ckpt.restore(step, self.layout.abstract_state)
    finally:
      ckpt.close()
    self.policy.restore(state)
    return state, meta

  def step(self, state: TrainState, fused: bool = True):
    """One RL step: (state, metrics, samples per chosen prompt). `fused=False` drives the
    rounds from Python even with in-graph rewards."""
    return self.rl_step(state, self.data, self.policy.base, host_score=self._round_scorer,
                        fused=fused)

  def _eval_fn(self, params, prompts, prompt_lengths, targets, rng):
    layout = self.layout
    return self._eval_jit(params, *layout.put_batch((prompts, prompt_lengths, targets)),
                          layout.put(rng, layout.repl))

  def evaluate(self, trained, tag: int = 0) -> dict[str, Any]:
    """Greedy held-out figures of the policy of `trained` (a state's params)."""
    e, run = self.run.config.eval, self.run
    host = None if self.scorer is None else self.scorer.for_eval(run.test_data)
    return evaluate(self._eval_fn, self.policy.sampling(trained), run.test_data, e.batch_size,
                    jax.random.PRNGKey(tag), limit=e.limit, host_score=host)

  def host_score(self, data):
    """The host scorer for `data`'s rows (None: rewards are in-graph)."""
    return None if self.scorer is None else self.scorer.for_eval(data)

  def close(self):
    if self.scorer is not None:
      self.scorer.close()
