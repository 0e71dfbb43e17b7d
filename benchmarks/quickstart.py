"""The quickstart's claims, measured: RL over the SFT warm start for several seeds, and a
"continued SFT for the same wall time" baseline, on the built-in tasks.

  python benchmarks/quickstart.py --seeds 0,1,2 --json
  python benchmarks/quickstart.py --task countdown --seeds 0 --json

Each run is the real trainer (`launch/train.py`'s code path) in a fresh workdir. The SFT
baseline continues the warm start with supervised steps (RL off) until it has used the same
wall time as the RL run of the same seed. With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # runnable without installing the package


def _config(task: str, seed: int, overrides: dict):
  from adaptive_rl.rl.config import load_config_file  # pylint: disable=import-outside-toplevel
  c = load_config_file(os.path.join(ROOT, "configs", "quickstart.py"), f"task={task},seed={seed}")
  c.log.progress = False
  c.log.plots = False
  for dotted, value in overrides.items():
    node = c
    *path, last = dotted.split(".")
    for part in path:
      node = node[part]
    node[last] = type(node[last])(value)
  return c


def _run(config, workdir):
  from adaptive_rl.rl.config import parse_config
  from adaptive_rl.rl.loop import train
  from adaptive_rl.rl.run import build_run
  t0 = time.time()
  summary = train(build_run(parse_config(config)), workdir)
  summary["measured_wall_s"] = time.time() - t0
  return summary


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--task", default="arithmetic")
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--sft_step_s", type=float, default=0.0,
                  help="seconds per SFT step for the baseline (0: measure it)")
  ap.add_argument("--set", action="append", default=[],
                  help="config override key=value, e.g. rl.steps=500 (repeatable)")
  ap.add_argument("--json", action="store_true")
  args = ap.parse_args()
  overrides = dict(kv.split("=", 1) for kv in args.set)
  rows = []
  for seed in [int(s) for s in args.seeds.split(",")]:
    with tempfile.TemporaryDirectory() as d:
      rl = _run(_config(args.task, seed, overrides), os.path.join(d, "rl"))
      base = _config(args.task, seed, overrides)
      sft_steps = int(base.sft.steps)
      # Steps of continued SFT that fit in the RL phase's wall time (SFT steps are timed from
      # the warm start of the same run).
      per_step = args.sft_step_s or rl["sft_time_s"] / max(sft_steps, 1)
      extra = int((rl["wall_time_s"] - rl["sft_time_s"]) / per_step)
      base.sft.steps = sft_steps + extra
      base.rl.steps = 0
      sft = _run(base, os.path.join(d, "sft"))
    rows.append(dict(seed=seed, sft_accuracy=rl["sft_accuracy"], rl_accuracy=rl["final_accuracy"],
                     gain=rl["final_accuracy"] - rl["sft_accuracy"], rl_wall_s=rl["wall_time_s"],
                     rollouts=rl["rollouts"], continued_sft_accuracy=sft["final_accuracy"],
                     continued_sft_steps=base.sft.steps, continued_sft_wall_s=sft["wall_time_s"]))
    print(json.dumps(rows[-1]), flush=True)
  print("| seed | SFT warm start | + RL | gain | RL run wall s | rollouts | continued SFT "
        "(same wall) | SFT steps |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['seed']} | {r['sft_accuracy']:.3f} | {r['rl_accuracy']:.3f} | "
          f"{r['gain']:+.3f} | {r['rl_wall_s']:.0f} | {r['rollouts']} | "
          f"{r['continued_sft_accuracy']:.3f} ({r['continued_sft_wall_s']:.0f} s) | "
          f"{r['continued_sft_steps']} |")
  if args.json:
    import jax
    print(json.dumps(dict(task=args.task, rows=rows, overrides=overrides,
                          machine=dict(processor=platform.processor() or platform.machine(),
                                       cores=os.cpu_count(), jax=jax.__version__),
                          date=datetime.datetime.now(datetime.timezone.utc).isoformat())))


if __name__ == "__main__":
  main()
