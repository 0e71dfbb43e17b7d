"""Soak test: does a long run's host memory stay flat?

  python benchmarks/soak.py --minutes 30 --interval 60 --json
  python benchmarks/soak.py --minutes 2 --interval 10 --warmup 1 --config configs/quickstart.py:smoke=True

Runs `launch/train.py` on the quickstart config (with rl.steps large enough not to finish) in a
subprocess for --minutes, samples the resident set size (RSS) of the process and its children
every --interval seconds, then stops it with SIGTERM (the trainer checkpoints and exits 143).
Growth is measured against the first sample taken after --warmup minutes (by then the SFT warm
start, compilation and the first eval and checkpoint are done):

  growth = (max RSS after warm-up - RSS at warm-up) / RSS at warm-up,  pass if <= --max_growth.

With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _proc_rss(pid: int) -> int:
  """RSS in bytes of one process from /proc (0 if it is gone)."""
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) * 1024
  except (FileNotFoundError, ProcessLookupError):
    pass
  return 0


def rss_bytes(pid: int) -> int:
  """RSS of `pid` plus its descendants (reward workers, if any); psutil if installed."""
  try:
    import psutil  # pylint: disable=import-outside-toplevel
  except ImportError:
    return _proc_rss(pid)
  try:
    proc = psutil.Process(pid)
    procs = [proc] + proc.children(recursive=True)
  except psutil.NoSuchProcess:
    return 0
  total = 0
  for p in procs:
    try:
      total += p.memory_info().rss
    except psutil.NoSuchProcess:
      pass
  return total


def last_step(workdir: str) -> int:
  """The last step recorded in DIR/metrics.jsonl (0 if none)."""
  step = 0
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        try:
          step = max(step, int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):
          continue  # a line cut mid-write
  except FileNotFoundError:
    pass
  return step


def summarize(samples: list[tuple[float, int]], warmup_s: float, max_growth: float) -> dict:
  """Warm-up RSS, max RSS after it and growth from (elapsed s, rss bytes) samples.

  The warm-up RSS is the first sample at or after `warmup_s` (the last sample if none is).
  """
  if not samples:
    return dict(warmup_rss_mb=None, max_rss_after_warmup_mb=None, growth=None, passed=False)
  after = [s for s in samples if s[0] >= warmup_s] or samples[-1:]
  warm = after[0][1]
  peak = max(r for _, r in after)
  growth = (peak - warm) / warm if warm else float("inf")
  return dict(warmup_rss_mb=warm / 2**20, max_rss_after_warmup_mb=peak / 2**20,
              growth=growth, passed=growth <= max_growth)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--minutes", type=float, default=30.0)
  ap.add_argument("--interval", type=float, default=60.0, help="seconds between RSS samples")
  ap.add_argument("--warmup", type=float, default=5.0, help="minutes before the reference sample")
  ap.add_argument("--max_growth", type=float, default=0.10)
  ap.add_argument("--config", default="configs/quickstart.py")
  ap.add_argument("--steps", type=int, default=10_000_000, help="rl.steps (not reached)")
  ap.add_argument("--workdir", default="", help="default: a fresh temporary directory")
  ap.add_argument("--json", action="store_true")
  args = ap.parse_args(argv)

  tmp = None
  workdir = args.workdir
  if not workdir:
    tmp = tempfile.TemporaryDirectory(prefix="soak_")
    workdir = tmp.name
  cmd = [sys.executable, os.path.join(ROOT, "launch", "train.py"),
         f"--config={os.path.join(ROOT, args.config)}", f"--workdir={workdir}",
         f"--config.rl.steps={args.steps}", "--config.log.progress=False",
         "--config.log.plots=False"]
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  log_path = os.path.join(workdir, "soak_train.log")
  os.makedirs(workdir, exist_ok=True)
  log = open(log_path, "w")  # pylint: disable=consider-using-with
  t0 = time.time()
  proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
  samples = []
  end = t0 + args.minutes * 60
  next_t = t0 + args.interval
  while True:
    time.sleep(max(0.0, min(next_t, end) - time.time()))
    if proc.poll() is not None:
      break
    now = time.time()
    rss = rss_bytes(proc.pid)
    samples.append((now - t0, rss))
    step = last_step(workdir)
    print(f"t={now - t0:7.0f} s  rss={rss / 2**20:8.1f} MiB  step={step}", flush=True)
    if now >= end - 1e-3:
      break
    next_t += args.interval
  early_exit = proc.poll()
  if early_exit is None:
    proc.send_signal(signal.SIGTERM)  # checkpoint-and-exit path (143)
    try:
      rc = proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
      proc.kill()
      rc = proc.wait()
  else:
    rc = early_exit
  log.close()
  steps = last_step(workdir)
  result = summarize(samples, args.warmup * 60, args.max_growth)
  result.update(
      minutes=args.minutes, interval_s=args.interval, warmup_min=args.warmup,
      max_growth=args.max_growth, config=args.config, steps_reached=steps,
      exit_code=rc, exited_early=early_exit is not None,
      samples=[dict(t_s=round(t, 1), rss_mb=round(r / 2**20, 1)) for t, r in samples])
  if early_exit is not None:
    result["passed"] = False
    with open(log_path) as f:
      print(f.read()[-4000:], file=sys.stderr)
    print(f"train.py exited early with code {early_exit}", file=sys.stderr)
  print("| t (s) | RSS (MiB) |\n|---|---|")
  for s in result["samples"]:
    print(f"| {s['t_s']:.0f} | {s['rss_mb']:.1f} |")
  if result["growth"] is not None:
    print(f"warm-up RSS {result['warmup_rss_mb']:.1f} MiB, max after warm-up "
          f"{result['max_rss_after_warmup_mb']:.1f} MiB, growth {100 * result['growth']:.2f}% "
          f"({'PASS' if result['passed'] else 'FAIL'} at {100 * args.max_growth:.0f}%), "
          f"{steps} RL steps, exit code {rc}")
  if tmp is not None:
    tmp.cleanup()
  if args.json:
    import jax  # pylint: disable=import-outside-toplevel
    result.update(machine=dict(processor=platform.processor() or platform.machine(),
                               cores=os.cpu_count(), jax=jax.__version__),
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat())
    print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
