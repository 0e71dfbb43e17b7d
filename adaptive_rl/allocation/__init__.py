"""Allocation kernels: which prompts, how many rollouts, which samples train.

Each method of ALGORITHMS.md is a set of pure, jittable JAX functions over per-prompt arrays
(static shapes, vectorised over prompts) with its per-prompt state a NamedTuple pytree sized for
the whole dataset, so its update can be fused into the jitted train step.

  select:  mopps (Thompson sampling), dps (HMM over solving states), vas (variance-aware)
  budget:  knapsack (Knapsack RL), gvm (gradient-variance-minimising), reinforce_ada
           (successive elimination over a static slot batch)
  group:   all, dapo (dynamic-sampling filter: budget.DapoBudget + group.DapoGroup),
           balanced (reinforce_ada.form_groups: balanced down-sampling, global pool baseline)

Shared conventions: ids are int32 prompt indices into the dataset; an id outside
[0, num_prompts) marks padding and its state updates are dropped; ids within one update are
distinct; static sizes (B, budgets, slot counts, modes) are Python ints / strings.
"""

from __future__ import annotations

from adaptive_rl.allocation.dps import (
    DPSSettings, DPSState, dps_current, dps_init, dps_materialise, dps_select, dps_update,
    observe_state, transition_matrix)
from adaptive_rl.allocation.gvm import (
    GVMSettings, GVMState, gvm_allocate, gvm_estimate, gvm_init, gvm_update, gvm_weights,
    largest_remainder)
from adaptive_rl.allocation.knapsack import (
    KnapsackHistory, KnapsackSettings, check_budget, knapsack_allocate, knapsack_allocate_with,
    knapsack_dp, knapsack_estimate, knapsack_history_init, knapsack_history_update,
    marginal_gain)
from adaptive_rl.allocation.mopps import (
    MoPPSSettings, MoPPSState, mopps_init, mopps_mean, mopps_sample, mopps_select,
    mopps_update)
from adaptive_rl.allocation.reinforce_ada import (
    AdaCounters, AdaGroups, ReinforceAdaSettings, counters_init, counters_observe, exits,
    form_groups, plan_slots)
from adaptive_rl.allocation.vas import (
    VASSettings, VASState, vas_init, vas_select, vas_update, vps_scores)
