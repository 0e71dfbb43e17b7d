"""Where the time of one GRPO step goes: each phase jitted and timed on its own.

  python benchmarks/grpo_phases.py [--size medium] [--repeats 5] [--scan_layers false]
      [--trace DIR] [--json]

The step is the one `benchmarks/vs_tunix.py` times (same shapes, `_peer.OurGRPO` wiring: uniform
allocator, sampler log-probs as old log-probs, entropy metric on, no KL). Phases:

  select      allocator.choose + budget start (`begin`)
  prefill     the prompts' forward pass into an empty KV cache (one per distinct prompt)
  decode      the sampling round minus prefill and reward (the `while_loop` of decode steps)
  reward      the in-graph reward function on the round's completions
  observe     budget observation of the round's rewards (`finish_round`)
  logprobs    forward pass of the policy's completion log-probs (+ entropy) for the batch (each
              prompt once, its completions attending to it: `StepConfig.share_prompts`)
  backward    value_and_grad of the clipped surrogate minus its forward (`logprobs`) pass
  optimizer   AdamW (optax update + apply_updates) on gradient-shaped trees
  allocation  the allocator's per-prompt state update (fused in the train step)
  other       the measured train step minus logprobs, backward, optimizer and allocation
              (group formation, advantages, gathers, metrics, NaN guard)

Each phase is its own jitted function timed as the median of `--repeats` calls after warm-up,
so phases fused in the real step can overlap slightly differently; the table also gives the
measured whole sample round and train step. `--trace DIR` writes a `jax.profiler` trace of one
whole step (open it in Perfetto / TensorBoard) and prints the XLA op categories by summed time.
With `--json` the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import gzip
import json
import os
import statistics
import sys
import tempfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=wrong-import-position
import _common  # noqa: E402
import _peer  # noqa: E402

from adaptive_rl import models  # noqa: E402
from adaptive_rl.allocation.roles import prompt_stats  # noqa: E402
from adaptive_rl.allocation.rollout import as_view  # noqa: E402
from adaptive_rl.rl.logprobs import completion_logprobs  # noqa: E402
from adaptive_rl.rl.losses import LossConfig, policy_loss  # noqa: E402
from adaptive_rl.rl.train_state import OptimizerConfig  # noqa: E402
# pylint: enable=wrong-import-position


def _time(fn: Callable[[], Any], repeats: int) -> float:
  """Median wall seconds of `repeats` calls after one warm-up (compile) call."""
  _common.timed(fn)
  return statistics.median(_common.timed(fn) for _ in range(repeats))


def _op_categories(trace_dir: str, top: int = 12) -> list[tuple[str, float]]:
  """Summed XLA op time by op-name family ("ynn_fusion.12" -> "ynn_fusion") from a trace."""
  files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    return []
  with gzip.open(files[0]) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  cats: collections.Counter = collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or "dur" not in e or name.startswith(("$", "Thunk", "Pjit")):
      continue
    cats[name.split(".")[0]] += e["dur"] / 1e3
  return cats.most_common(top)


def run(size_name: str, repeats: int, scan_layers: bool, trace: str | None) -> dict[str, Any]:
  size = _peer.SIZES[size_name]
  with tempfile.TemporaryDirectory() as d:
    workload = _peer.write_workload(size, d, num_prompts=size.prompts * 4)
    ours = _peer.OurGRPO(size, d, workload["ids"], scan_layers=scan_layers)
  for _ in range(_peer.WARMUP):
    ours.step()
  cfg = ours.cfg
  # One real round, reused by the per-phase functions (jitted here without donation).
  rl_step = ours.rl_step
  sample_round = jax.jit(rl_step.sample_fn)
  ours.state, rollout = rl_step.begin(ours.state)
  rollout, plan = sample_round(ours.state.params, ours.state.alloc["budget"], ours.data, rollout)
  jax.block_until_ready(rollout)
  pool, ids = rollout.pool, rollout.ids
  t: dict[str, float] = {}

  def begin():
    ours.state, out = rl_step.begin(ours.state)
    return out
  t["select"] = _time(begin, repeats)

  unique_prompts = ours.data["prompts"][ids]
  p, n = unique_prompts.shape[1], size.new_tokens

  @jax.jit
  def prefill(params, prompts):
    cache = models.init_cache(cfg, prompts.shape[0], p + n)
    pos = jnp.broadcast_to(jnp.arange(p), prompts.shape)
    return models.apply(cfg, params if cfg.scan_layers else models.unstack_layers(params),
                        prompts, pos, cache=cache)
  t["prefill"] = _time(lambda: prefill(ours.state.params, unique_prompts), repeats)

  reward = jax.jit(ours.reward_fn)
  t["reward"] = _time(lambda: reward(pool.completions, pool.lengths, None), repeats)
  t["sample_round"] = _time(lambda: sample_round(
      ours.state.params, ours.state.alloc["budget"], ours.data, rollout), repeats)
  t["decode"] = t["sample_round"] - t["prefill"] - t["reward"]
  finish = jax.jit(rl_step.finish_fn)
  t["observe"] = _time(lambda: finish(rollout, plan, None), repeats)

  b = {"completions": pool.completions, "lengths": pool.lengths}
  mask = jnp.arange(n)[None, :] < pool.lengths[:, None]
  adv = jax.random.normal(jax.random.key(0), pool.lengths.shape)
  loss_cfg = LossConfig(eps_low=_peer.EPS, eps_high=_peer.EPS, dual_clip=None, kl_coef=0.0,
                        loss_agg=_peer.LOSS_AGG)

  def lp_fn(params):  # as the step runs it: each prompt's forward once (share_prompts)
    return completion_logprobs(cfg, params, unique_prompts, ours.data["prompt_lengths"][ids],
                               b["completions"], b["lengths"], with_entropy=True,
                               prompt_index=pool.prompt)

  def loss_fn(params):
    lp, ent = lp_fn(params)
    return policy_loss(loss_cfg, lp, pool.logp, None, adv, mask, ent)

  fwd = jax.jit(lp_fn)
  grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  t["logprobs"] = _time(lambda: fwd(ours.state.params), repeats)
  t["backward"] = _time(lambda: grad(ours.state.params), repeats) - t["logprobs"]
  tx = OptimizerConfig(lr=_peer.LR, weight_decay=0.0, grad_clip=_peer.GRAD_CLIP).make()
  opt_state = tx.init(ours.state.params)
  grads = jax.tree.map(jnp.ones_like, ours.state.params)

  @jax.jit
  def optimizer(params, opt_state):
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.map(jnp.add, params, updates), opt_state
  t["optimizer"] = _time(lambda: optimizer(ours.state.params, opt_state), repeats)

  alloc = ours.allocator

  @jax.jit
  def allocation(alloc_state):
    view = as_view(pool)
    return alloc.update(alloc_state, prompt_stats(ids, view, 0.5), view)
  t["allocation"] = _time(lambda: allocation(ours.state.alloc), repeats)

  def train():
    ours.state, metrics, _ = rl_step.train(ours.state, rollout, np.int32(0))
    return ours.state.params, metrics
  t["train_step"] = _time(train, repeats)
  t["other"] = t["train_step"] - t["logprobs"] - t["backward"] - t["optimizer"] - t["allocation"]
  t["whole_step"] = statistics.median(ours.step() for _ in range(repeats))

  out: dict[str, Any] = {"size": size_name, "scan_layers": scan_layers, "seconds": t}
  if trace:
    with jax.profiler.trace(trace, create_perfetto_trace=True):
      ours.step()
    out["op_categories_ms"] = _op_categories(trace)
  return out


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="medium", choices=sorted(_peer.SIZES))
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--scan_layers", default="false", choices=["true", "false"])
  parser.add_argument("--trace", default="", help="write a jax.profiler trace of one step here")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  load0 = os.getloadavg()[0]
  res = run(args.size, args.repeats, args.scan_layers == "true", args.trace or None)
  t = res["seconds"]
  step = t["select"] + t["sample_round"] + t["observe"] + t["train_step"]
  print(f"| phase | ms | share of step |\n|---|---|---|")
  for k in ("select", "prefill", "decode", "reward", "observe", "logprobs", "backward",
            "optimizer", "allocation", "other"):
    print(f"| {k} | {1e3 * t[k]:.1f} | {100 * t[k] / step:.1f}% |")
  print(f"| (sample round) | {1e3 * t['sample_round']:.1f} | "
        f"{100 * t['sample_round'] / step:.1f}% |")
  print(f"| (train step) | {1e3 * t['train_step']:.1f} | {100 * t['train_step'] / step:.1f}% |")
  print(f"| sum of phases | {1e3 * step:.1f} | 100% |")
  print(f"| whole step, measured | {1e3 * t['whole_step']:.1f} | |")
  for name, ms in res.get("op_categories_ms", []):
    print(f"  op family {name}: {ms:.1f} ms")
  if args.json:
    res["machine"] = dict(_peer.machine_info(), load_avg_start=load0,
                          load_avg_end=os.getloadavg()[0],
                          date_utc=datetime.datetime.now(datetime.timezone.utc).strftime(
                              "%Y-%m-%d %H:%M"))
    res["command"] = "benchmarks/grpo_phases.py " + " ".join(argv if argv is not None
                                                             else sys.argv[1:])
    print(json.dumps(res))


if __name__ == "__main__":
  main()
