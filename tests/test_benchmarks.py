"""The throughput benchmarks run end to end as scripts, at tiny shapes, and report sane figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_step_benchmark_reports_positive_throughput():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one plain CPU device, as a user's run has (no fake mesh)
  cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "train_step.py"), "--sizes", "nano",
         "--rows", "8", "--group", "4", "--prompt_len", "8", "--completion_len", "8",
         "--repeats", "1", "--scan_layers", "false", "--json"]
  out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
                       check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report["machine"]["jax"] and report["machine"]["load_avg"]
  (r,) = report["results"]
  assert r["layers"] == "unrolled" and r["tokens_per_step"] == 8 * (8 + 8)
  assert r["step_s"] > 0 and all(t > 0 for t in r["step_times"])
  assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / r["step_s"])
  assert r["compile_s"] > 0 and r["recompiles"] == 0
  # XLA's count of an unrolled step agrees with the analytic 6 N T + head + attention count
  # (nano: 0.08 GFLOP either way) to well within 2x.
  assert r["flops_source"] == "xla"
  assert 0.5 < r["flops_per_step"] / r["flops_analytic"] < 2.0
  assert r["mfu"] is None and r["achieved_flops_per_s"] > 0  # CPU: no peak, so no MFU
