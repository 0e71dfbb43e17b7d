"""Allocation: which prompts, how many rollouts, which samples train.

Three roles (`roles.py`: `SelectRole`, `BudgetRole`, `GroupRole`), each a frozen dataclass whose
fields are its settings, with pure, jittable methods over per-prompt arrays (static shapes,
vectorised over prompts) and a per-prompt state pytree sized for the whole dataset, so its
update is fused into the jitted train step. Each method's file holds its kernels and, at its
end, its roles, registered by name (`registry.register`); `build_allocator` composes one of
each from a config's `allocator` settings (`registry.PRESETS` name the papers' methods).

  select:  uniform, mopps (Thompson sampling), dps (HMM over solving states),
           vas (variance-aware)
  budget:  fixed, knapsack (Knapsack RL), gvm (gradient-variance-minimising),
           reinforce_ada (successive elimination over a static slot batch), dapo (dynamic
           sampling rounds)
  group:   all, balanced (Reinforce-Ada: balanced down-sampling, global pool baseline),
           dapo (the dynamic-sampling filter)

Adding an allocator: one file with its role class(es), decorated `@register_select("name")`
(or budget / group), plus one line in the import list below.

Shared conventions: ids are int32 prompt indices into the dataset; an id outside
[0, num_prompts) marks padding and its state updates are dropped; ids within one update are
distinct; static sizes (B, budgets, slot counts, modes) are Python ints / strings.
"""

from __future__ import annotations

# The built-in methods; importing a file registers its roles (a fork adds its file here).
from adaptive_rl.allocation import uniform  # noqa: F401,I001
from adaptive_rl.allocation import mopps, dps, vas  # noqa: F401,I001
from adaptive_rl.allocation import gvm, knapsack, reinforce_ada, dapo  # noqa: F401,I001

from adaptive_rl.allocation.dapo import DapoBudget, DapoGroup
from adaptive_rl.allocation.dps import (
    DPSSelect, DPSState, dps_current, dps_init, dps_materialise, dps_select, dps_update,
    observe_state, transition_matrix)
from adaptive_rl.allocation.fields import RunContext, context, setting
from adaptive_rl.allocation.gvm import (
    GVMBudget, GVMState, gvm_allocate, gvm_estimate, gvm_init, gvm_update, gvm_weights,
    largest_remainder)
from adaptive_rl.allocation.knapsack import (
    KnapsackBudget, KnapsackHistory, check_budget, knapsack_allocate, knapsack_dp,
    knapsack_estimate, knapsack_history_init, knapsack_history_update, marginal_gain)
from adaptive_rl.allocation.mopps import (
    MoPPSSelect, MoPPSState, mopps_init, mopps_mean, mopps_sample, mopps_select, mopps_update)
from adaptive_rl.allocation.registry import (
    PRESETS, AllocatorSpec, build_allocator, default_settings, parse_allocator_settings,
    register, register_budget, register_group, register_preset, register_select)
from adaptive_rl.allocation.reinforce_ada import (
    AdaCounters, AdaGroups, BalancedGroup, ReinforceAdaBudget, counters_init, counters_observe,
    exits, form_groups, plan_slots)
from adaptive_rl.allocation.roles import (
    STATISTICS, Allocator, BudgetRole, Groups, GroupRole, Plan, PoolView, PromptStats,
    SelectRole, prompt_stats)
from adaptive_rl.allocation.uniform import AllGroup, FixedBudget, UniformSelect
from adaptive_rl.allocation.vas import (
    VASSelect, VASState, vas_init, vas_select, vas_update, vps_scores)
