"""Run an allocator on simulated prompts (Bernoulli rewards from true pass rates).

  python launch/simulate.py --allocator knapsack --steps 200 --json
  python launch/simulate.py --allocator reinforce_ada --pass_rates rates.npy --drift 0.05

The allocator code is the same jitted role functions the trainer uses. With --json the last
line printed is one JSON object with the run's figures.
"""

import json
import sys

import numpy as np
from absl import app, flags

flags.DEFINE_string("allocator", "uniform", "Allocator preset name.")
flags.DEFINE_string("select", "", "Override the preset's select role.")
flags.DEFINE_string("budget", "", "Override the preset's budget role.")
flags.DEFINE_string("group", "", "Override the preset's group role.")
flags.DEFINE_string("pass_rates", "", "A .npy file of true pass rates, one prompt per entry.")
flags.DEFINE_string("distribution", "u_shaped", "Named pass-rate distribution when no file.")
flags.DEFINE_integer("num_prompts", 512, "Prompts in the simulated dataset (no file).")
flags.DEFINE_integer("batch_prompts", 64, "Prompts per step B.")
flags.DEFINE_integer("group_size", 8, "Nominal samples per prompt n (budget N = B n).")
flags.DEFINE_integer("steps", 200, "Steps to simulate.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_float("drift", 0.0, "Learning drift: p += drift (1 - p) when trained with signal.")
flags.DEFINE_float("tau", 0.5, "Binarisation threshold.")
flags.DEFINE_bool("json", False, "Print the summary as one JSON object on the last line.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from adaptive_rl.allocation.registry import build_allocator  # imports JAX after flags
  from adaptive_rl.allocation.simulate import pass_rates, simulate
  if FLAGS.pass_rates:
    try:
      p = np.load(FLAGS.pass_rates).astype(np.float32).ravel()
    except (OSError, ValueError) as e:
      sys.exit(f"--pass_rates {FLAGS.pass_rates}: cannot read a .npy array ({e})")
  else:
    p = pass_rates(FLAGS.distribution, FLAGS.num_prompts, FLAGS.seed)
  try:
    allocator = build_allocator(
        dict(name=FLAGS.allocator, select=FLAGS.select, budget=FLAGS.budget, group=FLAGS.group),
        batch_prompts=FLAGS.batch_prompts, group_size=FLAGS.group_size, tau=FLAGS.tau)
    out = simulate(allocator, p, FLAGS.steps, FLAGS.seed, FLAGS.drift)
  except ValueError as e:
    sys.exit(f"error: {e}")
  per_step = out.pop("per_step")
  if FLAGS.json:
    print(json.dumps(out))
  else:
    for k, v in out.items():
      print(f"{k:>24}: {v}")
    print(f"{'effective_ratio by step':>24}: {np.round(per_step['effective_ratio'][:10], 3)} ...")


if __name__ == "__main__":
  app.run(main)
