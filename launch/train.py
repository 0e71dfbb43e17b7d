"""Train a policy with RL from an ml_collections config.

  python launch/train.py --config configs/quickstart.py --workdir /tmp/quickstart
  python launch/train.py --config configs/quickstart.py:smoke=True --config.rl.lr=3e-4 \
      --workdir /tmp/smoke

Re-running the same command on the same workdir resumes from the latest checkpoint.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from adaptive_rl.rl.config import ConfigError, parse_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Output directory (resumes if it "
                               "holds a checkpoint of the same run).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the console
  from adaptive_rl.rl.trainer import Preempted, Trainer  # after flags: imports JAX
  try:
    trainer = Trainer(parse_config(_CONFIG.value), _WORKDIR.value)
    trainer.run()
  except ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    sys.exit(2)
  except Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(143)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
