"""In-graph budget rounds vs rounds driven from Python, on the same RL step, in one process.

  python benchmarks/rl_step_rounds.py --allocator reinforce_ada --steps 20 --json

Builds the quickstart run with a multi-round budget (Reinforce-Ada by default: up to 4 rounds of
sampling per step) and times its RL step two ways, alternating step by step on the same warm
process so machine noise hits both alike:

  fused   `RLStep.__call__` with an in-graph reward: select -> every round (a `lax.while_loop`
          that stops when the budget is done) -> train, one jitted program, no host sync;
  rounds  the same pieces jitted separately and driven from Python (begin, then sample /
          observe per round with a `bool(done)` host sync after each, then train): how the step
          ran before, and how it still runs with host-scored rewards.

No SFT warm start (the policy's fresh init): the rounds' count and the step's work are what is
compared, not learning. Reports per-mode median seconds, the rounds each step ran, and the
ratio rounds / fused. With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # runnable without installing the package

import jax  # noqa: E402
import numpy as np  # noqa: E402

import _common  # noqa: E402  pylint: disable=import-error


def build(allocator: str, config_arg: str):
  from adaptive_rl.rl.config import load_config_file, parse_config
  from adaptive_rl.rl.run import build_run
  from adaptive_rl.rl.session import Session
  c = load_config_file(os.path.join(ROOT, "configs", "quickstart.py"),
                       f"allocator={allocator}" + (f",{config_arg}" if config_arg else ""))
  c.mesh.num_devices = 1
  session = Session(build_run(parse_config(c)))
  state = session.policy.start(lambda trained, base, key: None)  # no warm start
  return session, state


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--allocator", default="reinforce_ada")
  ap.add_argument("--config_arg", default="", help="extra quickstart get_config args")
  ap.add_argument("--steps", type=int, default=20, help="timed steps per mode")
  ap.add_argument("--json", action="store_true")
  args = ap.parse_args()
  session, state = build(args.allocator, args.config_arg)
  times = {"fused": [], "rounds": []}
  rounds = {"fused": [], "rounds": []}
  for mode in ("fused", "rounds"):  # compile both first
    state, metrics, _ = session.step(state, fused=mode == "fused")
    jax.block_until_ready(metrics)
  for i in range(2 * args.steps):
    mode = ("fused", "rounds")[i % 2]
    t0 = time.perf_counter()
    state, metrics, _ = session.step(state, fused=mode == "fused")
    jax.block_until_ready((state.params, metrics))
    times[mode].append(time.perf_counter() - t0)
    rounds[mode].append(int(metrics["rounds"]))
  med = {m: statistics.median(t) for m, t in times.items()}
  out = {
      "allocator": args.allocator, "steps_per_mode": args.steps,
      "max_rounds": session.run.allocator.budget.max_rounds,
      "fused_s": med["fused"], "rounds_s": med["rounds"],
      "rounds_over_fused": med["rounds"] / med["fused"],
      "mean_rounds": {m: float(np.mean(r)) for m, r in rounds.items()},
      "compiled": session.rl_step.compiled_counts(),
      "machine": _common.machine_info(),
  }
  print(f"{args.allocator}: fused {1e3 * med['fused']:.1f} ms/step, rounds from Python "
        f"{1e3 * med['rounds']:.1f} ms/step ({out['rounds_over_fused']:.2f}x), mean rounds "
        f"{out['mean_rounds']}")
  if args.json:
    print(json.dumps(out))


if __name__ == "__main__":
  main()
