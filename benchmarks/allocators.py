"""Every allocator preset on the built-in quickstart task: held-out accuracy vs rollouts.

  python benchmarks/allocators.py --seeds 0,1,2 --steps 1000 --json
  python benchmarks/allocators.py --presets uniform,knapsack --seeds 0 --steps 300

For each preset and seed it trains the quickstart config (same SFT warm start, same RL budget
settings) with held-out evaluation every `--eval_every` steps, then reports the final accuracy,
the rollouts and wall time each preset needed to first reach uniform's final accuracy (same
seed), and the mean efficiency ratios. With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # runnable without installing the package

PRESETS = ("uniform", "dapo_filter", "reinforce_ada", "reinforce_ada_positive", "gvm", "knapsack",
           "mopps", "dps", "vas")


def _config(preset: str, seed: int, steps: int, eval_every: int):
  spec = importlib.util.spec_from_file_location("quickstart",
                                                os.path.join(ROOT, "configs", "quickstart.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(f"allocator={preset},seed={seed}")
  c.rl.steps = steps
  c.eval.every = eval_every
  c.checkpoint.every = 0
  c.log.progress = False
  c.log.plots = False
  c.log.tensorboard = False
  return c


def _run(preset: str, seed: int, steps: int, eval_every: int) -> dict:
  from adaptive_rl.metrics import read_metrics
  from adaptive_rl.rl.config import parse_config
  from adaptive_rl.rl.trainer import Trainer
  with tempfile.TemporaryDirectory() as d:
    summary = Trainer(parse_config(_config(preset, seed, steps, eval_every)), d).run()
    records = read_metrics(d)
  curve = [(0, 0.0, summary["sft_accuracy"])]
  wall = summary["sft_time_s"]
  for r in records:
    wall += r["step_time_s"]
    if "eval_accuracy" in r:
      curve.append((r["rollouts"], wall, r["eval_accuracy"]))
  curve.append((summary["rollouts"], summary["wall_time_s"], summary["final_accuracy"]))
  mean = lambda k: float(np.mean([r[k] for r in records]))
  return dict(preset=preset, seed=seed, final_accuracy=summary["final_accuracy"],
              sft_accuracy=summary["sft_accuracy"], rollouts=summary["rollouts"],
              wall_time_s=summary["wall_time_s"], curve=curve,
              effective_ratio=mean("effective_ratio"),
              prompt_effective_ratio=mean("prompt_effective_ratio"),
              rollout_efficiency=mean("rollout_efficiency"))


def _reach(curve, target):
  for rollouts, wall, acc in curve:
    if acc >= target:
      return rollouts, wall
  return None, None


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--presets", default=",".join(PRESETS))
  ap.add_argument("--seeds", default="0")
  ap.add_argument("--steps", type=int, default=1000)
  ap.add_argument("--eval_every", type=int, default=100)
  ap.add_argument("--json", action="store_true")
  args = ap.parse_args()
  presets = args.presets.split(",")
  if presets[0] != "uniform":
    presets = ["uniform"] + [p for p in presets if p != "uniform"]
  runs = []
  for seed in [int(s) for s in args.seeds.split(",")]:
    target = None
    for preset in presets:
      r = _run(preset, seed, args.steps, args.eval_every)
      if preset == "uniform":
        target = r["final_accuracy"]
      r["target"] = target
      r["rollouts_to_target"], r["wall_to_target_s"] = _reach(r["curve"], target)
      runs.append(r)
      print(json.dumps({k: v for k, v in r.items() if k != "curve"}), flush=True)
  print("| preset | seed | final acc | rollouts | rollouts to uniform's final (ratio) | wall s to "
        "it | effective_ratio | prompt_eff | rollout_eff |")
  print("|---|---|---|---|---|---|---|---|---|")
  base = {r["seed"]: r for r in runs if r["preset"] == "uniform"}
  for r in runs:
    u = base[r["seed"]]
    reach = r["rollouts_to_target"]
    ratio = f"{reach} ({reach / u['rollouts_to_target']:.2f}x)" if reach else "not reached"
    wall = f"{r['wall_to_target_s']:.0f}" if reach else "-"
    print(f"| {r['preset']} | {r['seed']} | {r['final_accuracy']:.3f} | {r['rollouts']} | "
          f"{ratio} | {wall} | {r['effective_ratio']:.3f} | {r['prompt_effective_ratio']:.3f} | "
          f"{r['rollout_efficiency']:.3f} |")
  if args.json:
    print(json.dumps(dict(runs=runs, steps=args.steps, date=datetime.datetime.now(
        datetime.timezone.utc).isoformat())))


if __name__ == "__main__":
  main()
