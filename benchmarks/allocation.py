"""Cost of the allocation logic: per-prompt state updates at dataset scale, and the allocator's
share of a quickstart train step.

  python benchmarks/allocation.py --num_prompts 1000000 --json

For each preset: the jitted `Allocator.update` (select + budget state refresh from one step's
statistics) on a dataset of `num_prompts` prompts, state donated so the update is in place, and
the jitted selection + planning + group formation (`choose`, `start`, `plan`, `form`). Times are
medians over repeats after a warm-up, compile excluded. Each repeat updates a fresh random set of
prompts. DPS's state is lazy (a row is brought up to date when read), so its state is first aged
to the worst case: every prompt known, last observed 1,000,000 steps ago with counts off the
prior, so every read or update pays the full catch-up.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # runnable without installing the package


def _median_ms(fn, repeats):
  import jax
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append((time.perf_counter() - t0) * 1e3)
  return float(np.median(times))


def _age_dps(select_state):
  """Worst case for DPS's lazy catch-up: every row known, stale by 1e6 steps, A = A0 + 1."""
  from adaptive_rl.allocation.dps import DPSState
  import jax.numpy as jnp
  if not isinstance(select_state, DPSState):
    return select_state
  return select_state._replace(rows=select_state.rows.at[:, :9].add(1.0),
                               last=jnp.zeros_like(select_state.last),
                               step=jnp.asarray(1_000_000, jnp.int32))


def main():
  import jax
  import jax.numpy as jnp
  from adaptive_rl.allocation.registry import PRESETS, build_allocator
  from adaptive_rl.allocation.roles import PoolView, prompt_stats

  ap = argparse.ArgumentParser()
  ap.add_argument("--num_prompts", type=int, default=1_000_000)
  ap.add_argument("--batch_prompts", type=int, default=32)
  ap.add_argument("--group_size", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=20)
  ap.add_argument("--presets", default=",".join(PRESETS))
  ap.add_argument("--json", action="store_true")
  args = ap.parse_args()
  rows = []
  for name in args.presets.split(","):
    alloc = build_allocator(dict(name=name), batch_prompts=args.batch_prompts,
                            group_size=args.group_size, tau=0.5)
    b = alloc.budget.num_prompts
    m = alloc.pool_rows
    rng = np.random.default_rng(0)
    pool = PoolView(prompt=jnp.asarray(rng.integers(0, b, m), jnp.int32),
                    rewards=jnp.asarray(rng.integers(0, 2, m), jnp.float32),
                    valid=jnp.ones((m,), bool), order=jnp.arange(m, dtype=jnp.int32))
    # Distinct buffers: an init may reuse one array for two leaves, and donation needs copies.
    state = alloc.init(args.num_prompts, jax.random.PRNGKey(0))
    state = jax.tree.map(lambda x: jnp.array(x, copy=True),
                         {**state, "select": _age_dps(state["select"])})
    all_stats = []
    for _ in range(args.repeats + 1):
      ids = jnp.asarray(rng.choice(args.num_prompts, b, replace=False), jnp.int32)
      all_stats.append(prompt_stats(ids, pool, 0.5, jnp.ones((m,), jnp.float32),
                                    pool.rewards.astype(jnp.int32)))
    stats_iter = iter(all_stats[1:])
    update = jax.jit(alloc.update, donate_argnums=(0,))

    def plan_and_form(state, key):
      state, ids = alloc.choose(state, key)
      rs = alloc.budget.start(state["budget"], ids)
      plan = alloc.budget.plan(state["budget"], rs, 0)
      return state, plan, alloc.group.form(pool)

    plan_jit = jax.jit(plan_and_form, donate_argnums=(0,))
    state = jax.block_until_ready(update(state, all_stats[0], pool))  # compile
    holder = {"s": state}

    def run_update():
      holder["s"] = update(holder["s"], next(stats_iter), pool)
      return holder["s"]

    update_ms = _median_ms(run_update, args.repeats)
    out = plan_jit(holder["s"], jax.random.PRNGKey(1))
    holder["s"] = out[0]
    key = jax.random.PRNGKey(2)

    def run_plan():
      res = plan_jit(holder["s"], key)
      holder["s"] = res[0]
      return res

    plan_ms = _median_ms(run_plan, args.repeats)
    rows.append(dict(preset=name, update_ms=update_ms, select_plan_form_ms=plan_ms))
    print(json.dumps(rows[-1]), flush=True)
  print(f"| preset | state update, {args.num_prompts:,} prompts (ms) | select + plan + form (ms) |")
  print("|---|---|---|")
  for r in rows:
    print(f"| {r['preset']} | {r['update_ms']:.2f} | {r['select_plan_form_ms']:.2f} |")
  if args.json:
    print(json.dumps(dict(rows=rows, num_prompts=args.num_prompts, jax=jax.__version__,
                          cores=os.cpu_count(),
                          date=datetime.datetime.now(datetime.timezone.utc).isoformat())))


if __name__ == "__main__":
  main()
