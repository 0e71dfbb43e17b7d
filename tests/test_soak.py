"""The soak benchmark (`benchmarks/soak.py`): its growth arithmetic, and (slow, 30 minutes) a
quickstart run whose host memory after warm-up grows by at most 10%."""

from __future__ import annotations

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _soak():
  spec = importlib.util.spec_from_file_location("soak", os.path.join(ROOT, "benchmarks", "soak.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_growth_is_measured_from_the_first_sample_after_warmup():
  mib = 2**20
  samples = [(60, 500 * mib), (120, 700 * mib), (180, 720 * mib), (240, 770 * mib),
             (300, 760 * mib)]
  # Warm-up ends at 120 s: reference 700 MiB, peak after it 770 MiB -> 10% growth, a pass.
  out = _soak().summarize(samples, warmup_s=120, max_growth=0.10)
  assert out["warmup_rss_mb"] == 700 and out["max_rss_after_warmup_mb"] == 770
  assert out["growth"] == pytest.approx(0.10) and out["passed"]
  assert not _soak().summarize(samples, warmup_s=60, max_growth=0.10)["passed"]  # 500 -> 770


def test_rss_of_this_process_is_positive():
  assert _soak().rss_bytes(os.getpid()) > 10 * 2**20


@pytest.mark.slow  # 30 minutes of the quickstart config
def test_quickstart_memory_is_flat_over_30_minutes(tmp_path):
  result = _soak().main(["--minutes", "30", "--interval", "60", "--warmup", "5",
                         "--workdir", str(tmp_path / "soak")])
  assert not result["exited_early"], result
  assert result["exit_code"] == 143  # stopped by SIGTERM, checkpointed
  assert result["growth"] <= 0.10, result
