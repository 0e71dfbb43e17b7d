"""Sampler throughput: compile time, prefill, decode and end-to-end tokens/s per model and batch.

  python benchmarks/sampler.py --sizes 10m,100m --batch 1,8,32 --prompt_len 32 --new_tokens 64 \
      [--repeats 3] [--dtype float32] [--strategy sample] [--scan_layers both] [--json]

For each (model preset, layer loop, batch) it builds random params and random full-length
prompts, then times:
  * compile: trace + lower + XLA compile of the first `Sampler` call, read from JAX's compile
    events (the first call's wall time, which also runs once, is reported beside it);
  * prefill: a jitted prefill-only function (empty cache + `apply` on the prompt, as `sample` does
    before its loop); prefill tokens/s = B * P / prefill time;
  * sample: the whole `Sampler` call. EOS is disabled (eos id = vocab_size, which no strategy can
    produce), so every row generates exactly `new_tokens`; decode tokens/s = B * N / (sample time -
    prefill time) and end-to-end tokens/s = B * N / sample time.
Each timing is the median of `--repeats` runs after one warm-up, with `jax.block_until_ready`.
Compiles that happen during the timed runs are counted (`recompiles`; it should be 0).
`--scan_layers` picks the layer loop (`ModelConfig.scan_layers`): true = `lax.scan` over stacked
layers (stacked [L, B, K, S, Dh] KV cache), false = unrolled (per-layer caches), both = each.
Prints a markdown table; with `--json` the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

# A script, not a package: let `python benchmarks/sampler.py` import the uninstalled repo (and
# `_common`, which sits beside this file on sys.path[0]).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import (  # noqa: E402  pylint: disable=import-error
    CompileMeter, layers_label, machine_info, parse_scan_layers, timed)
from adaptive_rl.models import ModelConfig, apply, get_preset, init, init_cache  # noqa: E402
from adaptive_rl.sampling import Greedy, Sample, Sampler, SamplerConfig  # noqa: E402


def _prefill_fn(model_cfg: ModelConfig, max_len: int) -> Callable:
  """Jitted prefill only: the part of `sample` before its decode loop."""

  def prefill(params, prompts_BP, lengths_B):
    b, p = prompts_BP.shape
    mask_BP = jnp.arange(p)[None, :] >= (p - lengths_B)[:, None]
    positions_BP = jnp.maximum(jnp.cumsum(mask_BP.astype(jnp.int32), axis=-1) - 1, 0)
    cache = init_cache(model_cfg, b, max_len, model_cfg.compute_dtype)
    logits, cache = apply(model_cfg, params, prompts_BP, positions_BP, cache=cache,
                          segment_ids_BT=mask_BP.astype(jnp.int32))
    return logits[:, -1], cache

  return jax.jit(prefill)


def bench_one(model_cfg: ModelConfig, params, batch: int, prompt_len: int, new_tokens: int,
              strategy, repeats: int, meter: CompileMeter) -> dict[str, Any]:
  """Times compile, prefill and sampling for one model and batch size.

  Args:
    model_cfg: model config (its dtype is the compute dtype; `scan_layers` the layer loop).
    params: model params.
    batch: rows B.
    prompt_len: prompt tokens per row P (all rows full length).
    new_tokens: generated tokens per row N.
    strategy: `Greedy()` or `Sample()`.
    repeats: timed runs per figure (median reported).
    meter: the compile-event listener.

  Returns:
    A dict of figures for this (model, batch).
  """
  rng = np.random.default_rng(batch)
  prompts = jnp.asarray(rng.integers(1, model_cfg.vocab_size, (batch, prompt_len)), jnp.int32)
  lengths = jnp.full((batch,), prompt_len, jnp.int32)
  # vocab_size is not a valid token id, so no row ever stops early.
  cfg = SamplerConfig(max_new_tokens=new_tokens, eos_ids=(model_cfg.vocab_size,), pad_id=0,
                      strategy=strategy)
  sampler = Sampler(model_cfg, cfg)
  prefill = _prefill_fn(model_cfg, prompt_len + new_tokens)
  key = jax.random.key(0)
  run_sample = lambda: sampler(params, prompts, lengths, key)
  run_prefill = lambda: prefill(params, prompts, lengths)

  meter.reset()
  meter.active = True
  first_call = timed(run_sample)
  compile_s = meter.seconds
  meter.reset()
  prefill_first = timed(run_prefill)
  prefill_compile_s = meter.seconds
  meter.reset()
  timed(run_sample)  # warm-up
  timed(run_prefill)
  prefill_times, sample_times = [], []
  for _ in range(repeats):
    prefill_times.append(timed(run_prefill))
    sample_times.append(timed(run_sample))
  recompiles = meter.compiles
  meter.active = False

  out = run_sample()
  if not bool(jnp.all(out.lengths == new_tokens)):
    raise RuntimeError(f"rows stopped early: lengths {np.asarray(out.lengths)}")
  prefill_s = statistics.median(prefill_times)
  sample_s = statistics.median(sample_times)
  decode_s = max(sample_s - prefill_s, 1e-9)
  return dict(
      batch=batch, prompt_len=prompt_len, new_tokens=new_tokens,
      compile_s=compile_s, first_call_s=first_call,
      prefill_compile_s=prefill_compile_s, prefill_first_call_s=prefill_first,
      prefill_s=prefill_s, sample_s=sample_s, decode_s=decode_s,
      decode_ms_per_step=1e3 * decode_s / new_tokens,
      prefill_tok_s=batch * prompt_len / prefill_s,
      decode_tok_s=batch * new_tokens / decode_s,
      e2e_tok_s=batch * new_tokens / sample_s,
      prefill_times=prefill_times, sample_times=sample_times, recompiles=recompiles)


def markdown_table(rows: list[dict[str, Any]]) -> str:
  """The results as a markdown table."""
  head = ("| model | params | layers | B | P | N | compile s | first call s | prefill ms "
          "| prefill tok/s | decode ms/step | decode tok/s | e2e tok/s | recompiles |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    lines.append(
        f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['layers']} | {r['batch']} "
        f"| {r['prompt_len']} "
        f"| {r['new_tokens']} | {r['compile_s']:.1f} | {r['first_call_s']:.1f} "
        f"| {1e3 * r['prefill_s']:.1f} | {r['prefill_tok_s']:,.0f} "
        f"| {r['decode_ms_per_step']:.1f} | {r['decode_tok_s']:,.0f} | {r['e2e_tok_s']:,.0f} "
        f"| {r['recompiles']} |")
  return "\n".join(lines)


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="10m,100m", help="comma-separated model presets")
  parser.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes")
  parser.add_argument("--prompt_len", type=int, default=32)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dtype", default="float32", help="compute and param dtype")
  parser.add_argument("--strategy", default="sample", choices=("sample", "greedy"))
  parser.add_argument("--scan_layers", default="both", choices=("true", "false", "both"),
                      help="layer loop: lax.scan (true), unrolled (false) or both")
  parser.add_argument("--json", action="store_true", help="end with one JSON line")
  args = parser.parse_args(argv)
  if args.repeats < 1 or args.prompt_len < 1 or args.new_tokens < 1:
    parser.error("--repeats, --prompt_len and --new_tokens must be >= 1")

  strategy = Sample() if args.strategy == "sample" else Greedy()
  meter = CompileMeter()
  rows = []
  for size in args.sizes.split(","):
    base_cfg = get_preset(size, dtype=args.dtype, param_dtype=args.dtype)
    params = jax.block_until_ready(init(base_cfg, jax.random.key(0)))  # same for both loops
    for scan in parse_scan_layers(args.scan_layers):
      model_cfg = base_cfg.replace(scan_layers=scan)
      for batch in _ints(args.batch):
        r = bench_one(model_cfg, params, batch, args.prompt_len, args.new_tokens, strategy,
                      args.repeats, meter)
        r.update(model=size, params=model_cfg.num_params(), scan_layers=scan,
                 layers=layers_label(scan))
        rows.append(r)
        print(f"done {size} {layers_label(scan)} B={batch}: e2e {r['e2e_tok_s']:,.0f} tok/s "
              f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    del params

  print(markdown_table(rows))
  if args.json:
    settings = dict(sizes=args.sizes, batch=args.batch, prompt_len=args.prompt_len,
                    new_tokens=args.new_tokens, repeats=args.repeats, dtype=args.dtype,
                    strategy=args.strategy, scan_layers=args.scan_layers)
    print(json.dumps(dict(machine=machine_info(), settings=settings, results=rows)))


if __name__ == "__main__":
  main()
