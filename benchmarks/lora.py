"""LoRA vs full fine-tuning: GRPO train-step time, and sampling unmerged vs merged per step.

  python benchmarks/lora.py --sizes nano,10m [--rank 16] [--rows 32] [--group 8] \
      [--prompt_len 16] [--completion_len 32] [--dtype float32] [--repeats 3] [--json]

For each model preset, on one device:
  * train step: the trainer's GRPO step (`train_step.build`: a real sampling round fills the
    pool) for full fine-tuning, and with `lora_scale` on rank-`rank` adapters of the seven
    projections (state = adapters + their AdamW state; the frozen base a non-donated argument);
  * sampling (`sample`, `rows` rows, no early EOS): from the params themselves, from
    `AdaptedParams` (the trainer's way: x W + s (x A) B in every projection), and "merged":
    `merge` once (timed separately, as a step would pay it) and sampling from the merged params.
Median of `--repeats` calls after a warm-up, waiting for every output. Prints a markdown table;
with `--json` the last line is one JSON object with every figure and the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import machine_info, timed  # noqa: E402  pylint: disable=import-error
from train_step import _pieces, build  # noqa: E402  pylint: disable=import-error
from adaptive_rl.models import get_preset, lora  # noqa: E402
from adaptive_rl.rl.step import make_train_step  # noqa: E402
from adaptive_rl.rl.train_state import TrainState  # noqa: E402
from adaptive_rl.sampling import Sample, SamplerConfig, sample  # noqa: E402


def _median(fn, repeats: int) -> float:
  timed(fn)  # warm-up (and compile)
  return statistics.median(timed(fn) for _ in range(repeats))


def bench_one(size: str, rank: int, rows: int, group: int, prompt_len: int, completion_len: int,
              dtype: str, repeats: int) -> dict[str, Any]:
  """Every figure for one preset."""
  cfg = get_preset(size, dtype=dtype, max_seq_len=prompt_len + completion_len)
  config = lora.LoraConfig(rank=rank, alpha=2.0 * rank)
  step_full, (state, rollout, f) = build(cfg, rows, group, prompt_len, completion_len)
  base = jax.tree.map(jnp.copy, state.params)
  adapters = lora.init_lora(cfg, base, config, jax.random.key(1))
  adapters = jax.tree.map(lambda x: x + 1e-3, adapters)  # B != 0: the adapters do work

  def run_full():
    nonlocal state
    state, metrics, _ = step_full(state, rollout, f)
    return state.params, metrics

  step_s_full = _median(run_full, repeats)

  step_cfg, allocator, tx = _pieces(rows, group)
  step_lora = jax.jit(make_train_step(cfg, step_cfg, allocator, tx, lora_scale=config.scale),
                      donate_argnums=(0,))  # the RL step's train half, with LoRA
  lstate = TrainState(step=state.step, params=adapters, opt_state=tx.init(adapters),
                      ref_params=None, alloc=jax.tree.map(jnp.copy, state.alloc),
                      rng=state.rng, counters=jax.tree.map(jnp.copy, state.counters))

  def run_lora():
    nonlocal lstate
    lstate, metrics, _ = step_lora(lstate, rollout, f, base)
    return lstate.params, metrics

  step_s_lora = _median(run_lora, repeats)
  adapters = lstate.params

  rng = np.random.default_rng(0)
  prompts = jnp.asarray(rng.integers(1, cfg.vocab_size, (rows, prompt_len)), jnp.int32)
  lengths = jnp.full((rows,), prompt_len, jnp.int32)
  scfg = SamplerConfig(completion_len, eos_ids=(cfg.vocab_size,), pad_id=0, strategy=Sample())
  sampler = jax.jit(functools.partial(sample, cfg, scfg))
  merge = jax.jit(functools.partial(lora.merge, config=config))
  key = jax.random.key(0)
  sample_plain = _median(lambda: sampler(base, prompts, lengths, key), repeats)
  sample_unmerged = _median(
      lambda: sampler(lora.adapted(base, adapters, config), prompts, lengths, key), repeats)
  merge_s = _median(lambda: merge(base, adapters), repeats)
  merged = merge(base, adapters)
  sample_merged = _median(lambda: sampler(merged, prompts, lengths, key), repeats)
  return dict(
      size=size, params=cfg.num_params(), rank=rank, lora_params=lora.count_params(adapters),
      rows=rows, prompt_len=prompt_len, completion_len=completion_len, dtype=dtype,
      step_s_full=step_s_full, step_s_lora=step_s_lora, sample_s_plain=sample_plain,
      sample_s_unmerged=sample_unmerged, merge_s=merge_s, sample_s_merged=sample_merged,
      sample_s_merge_then_sample=merge_s + sample_merged)


def markdown_table(rows: list[dict[str, Any]]) -> str:
  ms = lambda s: f"{1e3 * s:.1f}"
  lines = ["| model | params | LoRA params | train step full (ms) | train step LoRA (ms) | "
           "sample base (ms) | sample unmerged (ms) | merge + sample merged (ms) |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['size']} | {r['params'] / 1e6:.2f}M | {r['lora_params'] / 1e6:.3f}M | "
                 f"{ms(r['step_s_full'])} | {ms(r['step_s_lora'])} | {ms(r['sample_s_plain'])} | "
                 f"{ms(r['sample_s_unmerged'])} | {ms(r['merge_s'])} + "
                 f"{ms(r['sample_s_merged'])} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", default="nano,10m")
  p.add_argument("--rank", type=int, default=16)
  p.add_argument("--rows", type=int, default=32)
  p.add_argument("--group", type=int, default=8)
  p.add_argument("--prompt_len", type=int, default=16)
  p.add_argument("--completion_len", type=int, default=32)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--json", action="store_true")
  a = p.parse_args(argv)
  results = [bench_one(s, a.rank, a.rows, a.group, a.prompt_len, a.completion_len, a.dtype,
                       a.repeats) for s in a.sizes.split(",")]
  print(markdown_table(results))
  if a.json:
    print(json.dumps({"results": results, "machine": machine_info()}))


if __name__ == "__main__":
  main()
