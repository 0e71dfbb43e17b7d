"""Allocator presets by name, and composition of any select / budget / group from settings.

Presets reproduce each paper's method; `select=`, `budget=`, `group=` override a preset's
roles, so e.g. MoPPS selection with the Reinforce-Ada budget is

  allocator = dict(name="reinforce_ada", select="mopps")

Each role's settings live in a sub-dict named after the method (`allocator.mopps.ratio`, ...).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from adaptive_rl.allocation import budget as budgets
from adaptive_rl.allocation import group as groups
from adaptive_rl.allocation import knapsack
from adaptive_rl.allocation import select as selects
from adaptive_rl.allocation.roles import Allocator

# name -> (select, budget, group, overrides of method settings)
PRESETS: dict[str, tuple[str, str, str, dict[str, dict[str, Any]]]] = {
    "uniform": ("uniform", "fixed", "all", {}),
    "dapo_filter": ("uniform", "dapo", "dapo", {}),
    "reinforce_ada": ("uniform", "reinforce_ada", "balanced",
                      {"reinforce_ada": {"variant": "balanced"}}),
    "reinforce_ada_positive": ("uniform", "reinforce_ada", "balanced",
                               {"reinforce_ada": {"variant": "positive"}}),
    "gvm": ("uniform", "gvm", "all", {}),
    "knapsack": ("uniform", "knapsack", "all", {}),
    "mopps": ("mopps", "fixed", "all", {}),
    "dps": ("dps", "fixed", "all", {}),
    "vas": ("vas", "fixed", "all", {}),
}
SELECT_ROLES = ("uniform", "mopps", "dps", "vas")
BUDGET_ROLES = ("fixed", "reinforce_ada", "gvm", "knapsack", "dapo")
GROUP_ROLES = ("all", "balanced", "dapo")

# Every method's settings and their defaults (the config file repeats these).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "mopps": dict(ratio=4, lam=1.0, mode="topk", a0=1.0, b0=1.0),
    "dps": dict(ratio=4, lam=0.7, entropy_weight=0.0, a0=1.0),
    "vas": dict(lam=0.5, alpha=0.8, beta=0.2, ema=0.0),
    "gvm": dict(alpha=1e-3, beta=2.0, filter_threshold=1.0, filter_insufficient=0.0, n_unknown=0,
                ema=0.0, adv_clip=5.0),
    "knapsack": dict(n_low=2, n_up=128, n_pos=2, n_neg=2, confidence=0.9, window=16,
                     min_known=8, adv_clip=5.0),
    # variant "" = the preset's (reinforce_ada: balanced, reinforce_ada_positive: positive).
    "reinforce_ada": dict(rounds=4, samples_per_round=8, tau=0.7, variant="",
                          use_std=False, drop_one_class=True),
    "dapo": dict(max_gen_batches=3),
}


def default_settings() -> dict[str, Any]:
  """The full allocator settings dict with every default (what configs start from)."""
  return dict(name="uniform", select="", budget="", group="",
              **{k: dict(v) for k, v in METHOD_DEFAULTS.items()})


def _pick(kind: str, name: str, valid) -> str:
  if name not in valid:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown {kind} {name!r}{hint}; valid {kind}s: {list(valid)}")
  return name


def build_allocator(settings: dict[str, Any], *, batch_prompts: int, group_size: int, tau: float,
                    adv_estimator: str = "grpo", adv_clip: float | None = None) -> Allocator:
  """Builds the allocator described by `settings` (see `default_settings`).

  Args:
    settings: {name, select, budget, group, <method>: {...}}; missing keys take defaults.
    batch_prompts: B, prompts trained per step.
    group_size: n, the nominal samples per prompt (budget per step N = B n).
    tau: binarisation threshold of rewards for counts and metrics.
    adv_estimator: advantage estimator of the group-relative roles.
    adv_clip: advantage clip of the group-relative roles (None = off; GVM / Knapsack use their
      own `adv_clip` setting as their papers do).

  Raises:
    ValueError: unknown preset, role or setting name (listing valid ones), or settings a role
      rejects (e.g. a knapsack budget B n < B N_low, with the numbers).
  """
  settings = dict(settings)
  name = _pick("allocator", settings.pop("name", "uniform"), list(PRESETS))
  select_name, budget_name, group_name, preset_over = PRESETS[name]
  select_name = _pick("select role", settings.pop("select", "") or select_name, SELECT_ROLES)
  budget_name = _pick("budget role", settings.pop("budget", "") or budget_name, BUDGET_ROLES)
  group_name = _pick("group role", settings.pop("group", "") or group_name, GROUP_ROLES)
  for key in settings:
    _pick("allocator setting", key, list(METHOD_DEFAULTS))
  method: dict[str, dict[str, Any]] = {}
  for key, defaults in METHOD_DEFAULTS.items():
    given = dict(settings.get(key) or {})
    for k in given:
      if k not in defaults:
        _pick(f"allocator.{key} setting", k, list(defaults))
    # Settings left at their "" default take the preset's value.
    given = {k: v for k, v in given.items() if v != "" or k not in preset_over.get(key, {})}
    method[key] = {**defaults, **preset_over.get(key, {}), **given}
  if not method["reinforce_ada"]["variant"]:
    method["reinforce_ada"]["variant"] = "balanced"

  b, n = batch_prompts, group_size
  ra = method["reinforce_ada"]
  if budget_name == "fixed":
    budget = budgets.FixedBudget(b, n)
  elif budget_name == "reinforce_ada":
    budget = budgets.ReinforceAdaBudget(b, n=n, rounds=ra["rounds"],
                                        samples_per_round=ra["samples_per_round"], tau=ra["tau"],
                                        variant=ra["variant"])
  elif budget_name == "gvm":
    g = method["gvm"]
    budget = budgets.GVMBudget(b, n, **{k: v for k, v in g.items() if k != "adv_clip"})
  elif budget_name == "knapsack":
    k = method["knapsack"]
    budget = budgets.KnapsackBudget(knapsack.KnapsackSettings(
        batch_size=b, total_budget=b * n, n=n,
        **{kk: v for kk, v in k.items() if kk != "adv_clip"}))
  else:
    budget = budgets.DapoBudget(b, n, method["dapo"]["max_gen_batches"], tau)

  num = budget.num_prompts
  if select_name == "uniform":
    select = selects.UniformSelect(num)
  elif select_name == "mopps":
    select = selects.MoPPSSelect(num, **method["mopps"])
  elif select_name == "dps":
    select = selects.DPSSelect(num, **method["dps"])
  else:
    select = selects.VASSelect(num, **method["vas"])

  clip = adv_clip
  if budget_name in ("gvm", "knapsack"):
    clip = method[budget_name]["adv_clip"] or adv_clip
  if group_name == "all":
    group = groups.AllGroup(num, estimator=adv_estimator, adv_clip=clip)
  elif group_name == "balanced":
    group = groups.BalancedGroup(num, n=n, tau=ra["tau"], variant=ra["variant"],
                                 use_std=ra["use_std"], drop_one_class=ra["drop_one_class"],
                                 adv_clip=clip)
  else:
    group = groups.DapoGroup(b, n, num, tau=tau, estimator=adv_estimator, adv_clip=clip)
  return Allocator(select=select, budget=budget, group=group, tau=tau, name=name)
