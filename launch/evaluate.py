"""Evaluate a trained policy: pass@k, maj@k and avg@k with k samples per held-out prompt.

  python launch/evaluate.py --config configs/quickstart.py --workdir /tmp/qs --k 8
  python launch/evaluate.py --config configs/quickstart.py --workdir /tmp/qs --checkpoint 500

Reads the checkpoint (default: latest) of the run in --workdir and writes
WORKDIR/eval_step{STEP}_k{K}.json plus a table on stdout. The trainer's periodic evaluation
uses the same sampling code (greedy, k = 1).
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir (holds checkpoints/).")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Checkpoint step (default: latest).")
_K = flags.DEFINE_integer("k", 8, "Samples per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
_BATCH = flags.DEFINE_integer("batch_prompts", 64, "Prompts per sampling call.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Evaluate at most this many prompts (0 = all).")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "train"], "Which split.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from adaptive_rl.metrics import write_json  # imports JAX after flags
  from adaptive_rl.rl.config import ConfigError, parse_config
  from adaptive_rl.rl.evaluation import evaluate_k
  from adaptive_rl.rl.run import build_run
  from adaptive_rl.rl.session import Session
  workdir = os.path.abspath(_WORKDIR.value)
  try:
    run = build_run(parse_config(_CONFIG.value))
    session = Session(run)
    state, _ = session.restore(workdir, _CHECKPOINT.value)
  except (ConfigError, FileNotFoundError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  data = run.test_data if _SPLIT.value == "test" else run.train_data
  try:
    out = evaluate_k(run.model_cfg, session.policy.sampling(state.params), run.task, data,
                     k=_K.value, temperature=_TEMPERATURE.value, max_new_tokens=run.max_new,
                     batch_size=_BATCH.value, limit=_LIMIT.value,
                     host_score=session.host_score(data))
  finally:
    session.close()
  out.update(step=int(state.step), split=_SPLIT.value)
  path = os.path.join(workdir, f"eval_step{int(state.step)}_k{_K.value}.json")
  write_json(path, out)
  print("| metric | value |\n|---|---|")
  for key, value in out.items():
    print(f"| {key} | {value} |")
  print(f"wrote {path}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
