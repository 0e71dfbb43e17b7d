"""Train-step throughput: compile time, step time, tokens/s, FLOPs and MFU of the GRPO train step.

  python benchmarks/train_step.py --sizes 10m,100m [--rows 64] [--group 8] [--prompt_len 32] \
      [--completion_len 64] [--dtype float32] [--scan_layers both] [--repeats 3] [--json]

For each (model preset, layer loop) it wires one GRPO step as a run does (uniform allocator,
`StepConfig(LossConfig(...))`, AdamW from `OptimizerConfig.make()`, `RLStep`), runs one
sampling round to fill a real pool (random prompts of `prompt_len` tokens, `rows / group`
prompts x `group` samples; EOS is never sampled, eos id = vocab_size, so every completion has
`completion_len` tokens; the reward is the fraction of even token ids, so advantages are
non-zero), then times `RLStep.train` (the train half of the RL step, state donated):
  * compile: trace + lower + XLA compile of the step (ahead of time: `.lower().compile()`), the
    sum of JAX's compile events, split into its phases in the JSON;
  * step: the median of `--repeats` calls after one warm-up, with `jax.block_until_ready`;
    tokens/s = rows * (prompt_len + completion_len) / step time;
  * FLOPs per step: "flops" of the compiled executable's `cost_analysis()`. XLA counts a while
    loop's body once, so for `scan_layers=True` the figure is taken from the same step with the
    layers unrolled (its lowered program's cost analysis; no extra compile); where XLA gives no
    figure, the analytic 6 * non-embedding params * tokens + LM head (6 D V per completion token)
    + attention (12 L H Dh T^2 per row). `flops_source` says which; the analytic figure is in
    the JSON either way;
  * achieved FLOP/s = FLOPs / step time; MFU = achieved / the device's peak (dense bf16 peak for
    `--dtype bfloat16`, float32 otherwise; see `PEAK_FLOPS`). On CPU there is no reliable peak:
    MFU is "n/a" and achieved GFLOP/s is the figure to compare.
`--dtype` is the compute dtype; params and optimizer state stay float32 (as the trainer keeps
them). Prints a markdown table; with `--json` the last line is one JSON object with every figure
and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# A script, not a package: let `python benchmarks/train_step.py` import the uninstalled repo (and
# `_common`, which sits beside this file on sys.path[0]).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import (  # noqa: E402  pylint: disable=import-error
    CompileMeter, layers_label, machine_info, parse_scan_layers, timed)
from adaptive_rl.allocation.registry import build_allocator  # noqa: E402
from adaptive_rl.models import ModelConfig, get_preset, init  # noqa: E402
from adaptive_rl.rl.losses import LossConfig  # noqa: E402
from adaptive_rl.rl.rl_step import RLStep  # noqa: E402
from adaptive_rl.rl.step import (  # noqa: E402
    StepConfig, make_train_step)
from adaptive_rl.rl.train_state import OptimizerConfig, TrainState, new_counters  # noqa: E402
from adaptive_rl.sampling import Sample, SamplerConfig  # noqa: E402

# Dense peak FLOP/s per device: (device_kind substring, bf16, float32). First match wins.
# NVIDIA: SXM datasheet figures without sparsity; float32 is the non-tensor-core rate (with
# TF32 matmuls, JAX's GPU default for float32 dots, the H100 / H200 ceiling is 494e12).
# TPU: float32 dots run as bf16 passes at the default matmul precision, so the bf16 peak is used.
PEAK_FLOPS: tuple[tuple[str, float, float], ...] = (
    ("h100 pcie", 756e12, 51e12),
    ("h100", 989e12, 67e12),
    ("h200", 989e12, 67e12),
    ("a100", 312e12, 19.5e12),
    ("v6 lite", 918e12, 918e12), ("v6e", 918e12, 918e12),
    ("v5 lite", 197e12, 197e12), ("v5e", 197e12, 197e12),
    ("v5p", 459e12, 459e12), ("tpu v5", 459e12, 459e12),
    ("v4", 275e12, 275e12),
)


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """The device's dense peak FLOP/s for `dtype`, or None where unknown (e.g. CPU)."""
  kind = device_kind.lower()
  for key, bf16, f32 in PEAK_FLOPS:
    if key in kind:
      return bf16 if dtype == "bfloat16" else f32
  return None


def analytic_flops(cfg: ModelConfig, rows: int, prompt_len: int, completion_len: int) -> float:
  """Forward + backward FLOPs of one update over `rows` sequences (no recompute, no reference).

  6 N_body T per row for the matmul weights outside the embedding (N_body = params - embedding
  - untied head), 6 D V per completion token for the LM head (log-probs are projected only at
  completion positions), and 12 L H Dh T^2 per row for the two attention contractions (the
  mask is dense, so all T^2 scores are computed).
  """
  t = prompt_len + completion_len
  d, v = cfg.hidden_size, cfg.vocab_size
  body = cfg.num_params() - v * d * (1 if cfg.tie_embeddings else 2)
  head = 6 * d * v * completion_len
  attn = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * t * t
  return float(rows * (6 * body * t + head + attn))


def _xla_flops(stage) -> float | None:
  """"flops" of a Lowered / Compiled stage's cost analysis (None where the backend has none)."""
  try:
    ca = stage.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # some backends raise instead of None
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  flops = (ca or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def _pieces(rows: int, group: int) -> tuple[StepConfig, Any, Any]:
  """`make_train_step`'s step settings, allocator and optimizer (the trainer's defaults)."""
  allocator = build_allocator({"name": "uniform"}, batch_prompts=rows // group,
                              group_size=group, tau=0.5)
  tx = OptimizerConfig(lr=1e-5, weight_decay=0.0, grad_clip=1.0).make()
  return StepConfig(loss=LossConfig()), allocator, tx


def build(cfg: ModelConfig, rows: int, group: int, prompt_len: int, completion_len: int,
          seed: int = 0) -> tuple[Any, tuple]:
  """The jitted train step and its arguments, wired as a run wires them.

  Returns:
    (the RL step's jitted train step, state donated, (state, rollout, reward_failures)) where
    the rollout holds one real sampling round of the initial params.
  """
  prompts = rows // group
  step_cfg, allocator, tx = _pieces(rows, group)
  # vocab_size is not a token the model can emit: no row stops early.
  sampler_cfg = SamplerConfig(completion_len, eos_ids=(cfg.vocab_size,), pad_id=0,
                              strategy=Sample())

  def reward(tokens, lengths, targets):
    del targets
    valid = jnp.arange(tokens.shape[1])[None] < lengths[:, None]
    return jnp.sum(valid & (tokens % 2 == 0), axis=1) / jnp.maximum(lengths, 1)

  rl_step = RLStep(cfg, sampler_cfg, step_cfg, allocator, tx, prompt_len=prompt_len,
                   reward_fn=reward)
  rng = np.random.default_rng(seed)
  data = {"prompts": jnp.asarray(rng.integers(1, cfg.vocab_size, (prompts, prompt_len)),
                                 jnp.int32),
          "prompt_lengths": jnp.full((prompts,), prompt_len, jnp.int32),
          "targets": jnp.zeros((prompts, 1), jnp.int32)}
  key = jax.random.key(seed)
  params = init(cfg, jax.random.fold_in(key, 0))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     ref_params=None, alloc=allocator.init(prompts, jax.random.fold_in(key, 1)),
                     rng=jax.random.fold_in(key, 2), counters=new_counters())
  # The step's `begin` + sampling round 0, as the RL step runs them.
  state, rollout = rl_step.begin(state)
  rollout, plan = rl_step.sample(state.params, state.alloc["budget"], data, rollout)
  rollout = jax.block_until_ready(rl_step.finish(rollout, plan, None))
  pool = rollout.pool
  if not bool(jnp.all(pool.lengths == completion_len)) or not bool(jnp.all(pool.valid)):
    raise RuntimeError(f"pool not full: lengths {np.asarray(pool.lengths)}, valid "
                       f"{np.asarray(pool.valid)}")
  return rl_step.train, (state, rollout, np.int32(0))


def bench_one(cfg: ModelConfig, rows: int, group: int, prompt_len: int, completion_len: int,
              repeats: int, meter: CompileMeter) -> dict[str, Any]:
  """Compiles and times the train step for one model config.

  Args:
    cfg: model config (`dtype` the compute dtype, `scan_layers` the layer loop).
    rows: training rows per step (prompts x group).
    group: samples per prompt.
    prompt_len: prompt tokens per row (all rows full length).
    completion_len: completion tokens per row (all rows full length).
    repeats: timed steps (median reported).
    meter: the compile-event listener.

  Returns:
    A dict of figures for this config.
  """
  step, (state, *rest) = build(cfg, rows, group, prompt_len, completion_len)
  meter.reset()
  meter.active = True
  t0 = time.perf_counter()
  compiled = step.lower(state, *rest).compile()
  compile_wall_s = time.perf_counter() - t0
  meter.active = False
  compile_s, compile_phases = meter.seconds, dict(meter.by_phase)

  flops_compiled = _xla_flops(compiled)
  flops_unrolled = None
  if cfg.scan_layers:  # XLA counted one layer's body: count the same step unrolled instead
    step_cfg, allocator, tx = _pieces(rows, group)
    twin = make_train_step(cfg.replace(scan_layers=False), step_cfg, allocator, tx)
    flops_unrolled = _xla_flops(jax.jit(twin).lower(state, *rest))
  flops_analytic = analytic_flops(cfg, rows, prompt_len, completion_len)
  if cfg.scan_layers and flops_unrolled:
    flops, source = flops_unrolled, "xla (unrolled twin)"
  elif not cfg.scan_layers and flops_compiled:
    flops, source = flops_compiled, "xla"
  else:
    flops, source = flops_analytic, "analytic"

  def run():
    nonlocal state
    state, metrics, _ = compiled(state, *rest)
    return state.params, metrics

  meter.reset()
  meter.active = True
  timed(run)  # warm-up
  times = [timed(run) for _ in range(repeats)]
  meter.active = False
  step_s = statistics.median(times)
  tokens = rows * (prompt_len + completion_len)
  return dict(
      rows=rows, group=group, prompt_len=prompt_len, completion_len=completion_len,
      tokens_per_step=tokens, compile_s=compile_s, compile_wall_s=compile_wall_s,
      compile_phases=compile_phases, step_s=step_s, step_times=times,
      tokens_per_s=tokens / step_s, flops_per_step=flops, flops_source=source,
      flops_xla_compiled=flops_compiled, flops_xla_unrolled=flops_unrolled,
      flops_analytic=flops_analytic, achieved_flops_per_s=flops / step_s,
      recompiles=meter.compiles)


def _fmt_mfu(mfu: float | None) -> str:
  return "n/a" if mfu is None else f"{100 * mfu:.1f}%"


def markdown_table(rows: list[dict[str, Any]]) -> str:
  """The results as a markdown table."""
  head = ("| model | params | layers | rows | tokens/step | compile s | step s | tokens/s "
          "| GFLOP/step | FLOPs from | achieved GFLOP/s | MFU |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    lines.append(
        f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['layers']} | {r['rows']} "
        f"| {r['tokens_per_step']:,} | {r['compile_s']:.1f} | {r['step_s']:.3f} "
        f"| {r['tokens_per_s']:,.0f} | {r['flops_per_step'] / 1e9:,.1f} | {r['flops_source']} "
        f"| {r['achieved_flops_per_s'] / 1e9:,.1f} | {_fmt_mfu(r['mfu'])} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="10m,100m", help="comma-separated model presets")
  parser.add_argument("--rows", type=int, default=64, help="training rows (prompts x group)")
  parser.add_argument("--group", type=int, default=8, help="samples per prompt")
  parser.add_argument("--prompt_len", type=int, default=32)
  parser.add_argument("--completion_len", type=int, default=64)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="compute dtype (params and optimizer state stay float32)")
  parser.add_argument("--scan_layers", default="both", choices=("true", "false", "both"),
                      help="layer loop: lax.scan (true), unrolled (false) or both")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--json", action="store_true", help="end with one JSON line")
  args = parser.parse_args(argv)
  if min(args.repeats, args.prompt_len, args.completion_len, args.group, args.rows) < 1:
    parser.error("--repeats, --prompt_len, --completion_len, --group and --rows must be >= 1")
  if args.rows % args.group:
    parser.error(f"--rows ({args.rows}) must be a multiple of --group ({args.group})")

  device_kind = jax.devices()[0].device_kind
  peak = peak_flops(device_kind, args.dtype)
  meter = CompileMeter()
  results = []
  for size in args.sizes.split(","):
    for scan in parse_scan_layers(args.scan_layers):
      cfg = get_preset(size, dtype=args.dtype, param_dtype="float32", scan_layers=scan)
      r = bench_one(cfg, args.rows, args.group, args.prompt_len, args.completion_len,
                    args.repeats, meter)
      r.update(model=size, params=cfg.num_params(), scan_layers=scan, layers=layers_label(scan),
               peak_flops_per_s=peak,
               mfu=None if peak is None else r["achieved_flops_per_s"] / peak)
      results.append(r)
      print(f"done {size} {layers_label(scan)}: {r['step_s']:.3f} s/step, "
            f"{r['tokens_per_s']:,.0f} tok/s (load {os.getloadavg()[0]:.1f})", file=sys.stderr,
            flush=True)

  print(markdown_table(results))
  if args.json:
    settings = {k: getattr(args, k) for k in ("sizes", "rows", "group", "prompt_len",
                                               "completion_len", "dtype", "scan_layers",
                                               "repeats")}
    print(json.dumps(dict(command=" ".join(sys.argv), machine=machine_info(), settings=settings,
                          results=results)))


if __name__ == "__main__":
  main()
