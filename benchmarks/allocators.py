"""Every allocator preset on the built-in quickstart task: held-out accuracy vs rollouts.

  python benchmarks/allocators.py --seeds 0,1,2 --steps 1000 --json
  python benchmarks/allocators.py --presets uniform,knapsack --seeds 0 --steps 300

For each preset and seed it trains the quickstart config (same SFT warm start, same RL budget
settings) with held-out evaluation every `--eval_every` steps, then reports the final accuracy,
the rollouts and wall time each preset needed to first reach uniform's final accuracy (same
seed), and the mean efficiency ratios. With --json the last line is one JSON object.

The SFT warm start depends only on the seed (and the task / model / SFT settings, the same for
every preset), so it is computed once per seed and reused by every preset of that seed
(`--no_share_sft` recomputes it per run). Wall times are RL step times only (SFT, held-out
evaluation and compilation excluded: the first step, which compiles, counts as the run's median
step), so they compare across presets of one seed on an unshared machine. `--max_digits 3` runs
the harder arithmetic variant (operands up to 3 digits); `--train_size 2000` a smaller prompt
set (more visits per prompt, so history-based allocators have estimates).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # runnable without installing the package

PRESETS = ("uniform", "dapo_filter", "reinforce_ada", "reinforce_ada_positive", "gvm", "knapsack",
           "mopps", "dps", "vas")


def _config(preset: str, seed: int, steps: int, eval_every: int, max_digits: int = 0,
            train_size: int = 0):
  from adaptive_rl.rl.config import load_config_file  # pylint: disable=import-outside-toplevel
  c = load_config_file(os.path.join(ROOT, "configs", "quickstart.py"),
                       f"allocator={preset},seed={seed}")
  c.rl.steps = steps
  if max_digits:
    c.task.max_digits = max_digits
  if train_size:
    c.task.train_size = train_size
  c.eval.every = eval_every
  c.checkpoint.every = 0
  c.log.progress = False
  c.log.plots = False
  c.log.tensorboard = False
  return c


_SFT_CACHE: dict = {}  # seed -> SFT'd params on the host


def _session(run, share_sft: bool):
  """The run's session, with its SFT warm start memoised per seed when `share_sft`."""
  import jax
  from adaptive_rl.rl.session import Session
  from adaptive_rl.rl.sft import SFTWarmStart
  if not share_sft or run.lora_cfg is not None:  # (full fine-tuning only)
    return Session(run)
  seed = int(run.config.seed)

  def warm_start(trained, base, key):
    """Reuses the SFT'd params of the first run of the same seed."""
    if seed not in _SFT_CACHE:
      out = SFTWarmStart(run, session.layout)(trained, base, key)
      _SFT_CACHE[seed] = None if out is None else jax.device_get(out)
      return out
    if _SFT_CACHE[seed] is None:
      return None
    # Fresh device buffers in the params' own shardings (the RL step donates them).
    return jax.tree.map(lambda h, p: jax.device_put(h, p.sharding), _SFT_CACHE[seed], trained)

  session = Session(run, warm_start=warm_start)
  return session


def _run(preset: str, seed: int, steps: int, eval_every: int, max_digits: int = 0,
         share_sft: bool = True, train_size: int = 0) -> dict:
  from adaptive_rl.metrics import read_metrics
  from adaptive_rl.rl.config import parse_config
  from adaptive_rl.rl.loop import train
  from adaptive_rl.rl.run import build_run
  with tempfile.TemporaryDirectory() as d:
    t0 = time.time()
    run = build_run(parse_config(_config(preset, seed, steps, eval_every, max_digits,
                                         train_size)))
    summary = train(run, d, session=_session(run, share_sft))
    total_s = time.time() - t0
    records = read_metrics(d)
  curve = [(0, 0.0, summary["sft_accuracy"])]
  wall = 0.0  # RL step time only
  times = [r["step_time_s"] for r in records]
  if len(times) > 1:  # the first step's time is mostly compilation: count a typical step
    times[0] = float(np.median(times[1:]))
  for r, t in zip(records, times):
    wall += t
    if "eval_accuracy" in r:
      curve.append((r["rollouts"], wall, r["eval_accuracy"]))
  curve.append((summary["rollouts"], wall, summary["final_accuracy"]))
  mean = lambda k: float(np.mean([r[k] for r in records]))
  return dict(preset=preset, seed=seed, final_accuracy=summary["final_accuracy"],
              sft_accuracy=summary["sft_accuracy"], rollouts=summary["rollouts"],
              rl_step_time_s=wall, run_time_s=total_s, curve=curve,
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
  ap.add_argument("--max_digits", type=int, default=0, help="task.max_digits (0: the config's)")
  ap.add_argument("--train_size", type=int, default=0, help="task.train_size (0: the config's)")
  ap.add_argument("--no_share_sft", action="store_true", help="recompute SFT for every run")
  ap.add_argument("--json", action="store_true")
  args = ap.parse_args()
  presets = args.presets.split(",")
  if presets[0] != "uniform":
    presets = ["uniform"] + [p for p in presets if p != "uniform"]
  runs = []
  for seed in [int(s) for s in args.seeds.split(",")]:
    target = None
    for preset in presets:
      r = _run(preset, seed, args.steps, args.eval_every, args.max_digits, not args.no_share_sft,
               args.train_size)
      if preset == "uniform":
        target = r["final_accuracy"]
      r["target"] = target
      r["rollouts_to_target"], r["wall_to_target_s"] = _reach(r["curve"], target)
      runs.append(r)
      print(json.dumps({k: v for k, v in r.items() if k != "curve"}), flush=True)
  print("| preset | seed | final acc | rollouts | rollouts to uniform's final (ratio) | RL wall s "
        "to it | effective_ratio | prompt_eff | rollout_eff |")
  print("|---|---|---|---|---|---|---|---|---|")
  base = {r["seed"]: r for r in runs if r["preset"] == "uniform"}
  for r in runs:
    u = base[r["seed"]]
    reach, u_reach = r["rollouts_to_target"], u["rollouts_to_target"]
    if reach is None:
      ratio = "not reached"
    elif u_reach:
      ratio = f"{reach} ({reach / u_reach:.2f}x)"
    else:  # uniform's final accuracy was already the SFT start's
      ratio = f"{reach}"
    wall = f"{r['wall_to_target_s']:.0f}" if reach is not None else "-"
    print(f"| {r['preset']} | {r['seed']} | {r['final_accuracy']:.3f} | {r['rollouts']} | "
          f"{ratio} | {wall} | {r['effective_ratio']:.3f} | {r['prompt_effective_ratio']:.3f} | "
          f"{r['rollout_efficiency']:.3f} |")
  if args.json:
    import jax
    print(json.dumps(dict(runs=runs, steps=args.steps, max_digits=args.max_digits,
                          train_size=args.train_size,
                          share_sft=not args.no_share_sft, jax=jax.__version__,
                          date=datetime.datetime.now(datetime.timezone.utc).isoformat())))


if __name__ == "__main__":
  main()
