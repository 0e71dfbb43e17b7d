"""How a role dataclass declares its fields: run context, or settings with one default each.

A role is a frozen dataclass. Each field is one of

  context  filled by `build_allocator` from the run (B, n, tau, ...; `RunContext`), never set by
           the config: `num_select: int = context("num_prompts")`
  setting  the config's `allocator.<section>.<field>`, with its default and allowed values:
           `ratio: int = setting(4, at_least(1))` (a plain `use_std: bool = False` is a setting
           too, checked only for its type)

so the dataclass is the whole schema: `registry.default_settings()` reads the defaults from it,
`registry.parse_allocator_settings` checks a config against it before anything is built, and
the role's `__post_init__` calls `validate(self)` for the same checks on direct construction.
Messages name the config key: "allocator.mopps.ratio must be >= 1, got 0".
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class RunContext:
  """What the run tells the roles (the trainer's `rl.*` settings, not allocator settings).

  Attributes:
    batch_prompts: B, prompts trained per step.
    group_size: n, nominal samples per prompt (budget per step N = B n).
    tau: binarisation threshold of rewards for counts and metrics.
    adv_estimator: advantage estimator of the group-relative group roles.
    adv_clip: the group role's advantage clip: the budget method's own (`BudgetRole.adv_clip`,
      GVM / Knapsack), else the run's (None = off).
    num_prompts: prompts the budget samples per step (`BudgetRole.num_prompts`); known once
      the budget is built, so only select and group roles may ask for it.
  """

  batch_prompts: int
  group_size: int
  tau: float
  adv_estimator: str = "grpo"
  adv_clip: float | None = None
  num_prompts: int | None = None


CONTEXT = tuple(f.name for f in dataclasses.fields(RunContext))


@dataclasses.dataclass(frozen=True)
class Check:
  """An allowed-values rule: `ok(value)`, described as "must be <allowed>"."""

  ok: Callable[[Any], bool]
  allowed: str


def at_least(low) -> Check:
  return Check(lambda v: v >= low, f">= {low}")


def above(low) -> Check:
  return Check(lambda v: v > low, f"> {low}")


def within(low, high, *, open_low: bool = False, open_high: bool = False) -> Check:
  lo_ok = (lambda v: v > low) if open_low else (lambda v: v >= low)
  hi_ok = (lambda v: v < high) if open_high else (lambda v: v <= high)
  text = f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
  return Check(lambda v: lo_ok(v) and hi_ok(v), text)


def one_of(*choices) -> Check:
  return Check(lambda v: v in choices, f"one of {choices}")


def context(name: str, default: Any = dataclasses.MISSING) -> Any:
  """A field filled from `RunContext.<name>` by the builder (not a config setting)."""
  if name not in CONTEXT:
    raise ValueError(f"unknown run context {name!r}; valid: {CONTEXT}")
  return dataclasses.field(default=default, metadata={"context": name})


def setting(default: Any = dataclasses.MISSING, check: Check | None = None) -> Any:
  """A config setting with its default and allowed values.

  A field without a default shares its section with another role that has one (e.g. the
  balanced group role reads `allocator.reinforce_ada.tau`, whose default the Reinforce-Ada
  budget declares): one default per setting.
  """
  return dataclasses.field(default=default, metadata={"check": check})


def context_name(f: dataclasses.Field) -> str | None:
  return f.metadata.get("context")


def setting_fields(cls) -> list[dataclasses.Field]:
  """The fields of a role class that are config settings (everything but context)."""
  return [f for f in dataclasses.fields(cls) if f.init and context_name(f) is None]


def check_value(key: str, value: Any, default: Any, check: Check | None) -> None:
  """Raises ValueError naming `key` if `value` has the wrong type (that of `default`) or fails
  `check`."""
  if isinstance(default, bool):
    kind, ok = "a bool", isinstance(value, bool)
  elif isinstance(default, numbers.Integral):
    kind, ok = "an int", isinstance(value, numbers.Integral) and not isinstance(value, bool)
  elif isinstance(default, numbers.Real):
    kind, ok = "a number", isinstance(value, numbers.Real) and not isinstance(value, bool)
  elif isinstance(default, str):
    kind, ok = "a string", isinstance(value, str)
  else:
    kind, ok = "", True
  if not ok:
    raise ValueError(f"{key} must be {kind}, got {value!r}")
  if check is not None and not check.ok(value):
    raise ValueError(f"{key} must be {check.allowed}, got {value!r}")


def section_of(role) -> str:
  """The config section a role reads (`registry.register` sets it; the class name otherwise)."""
  return getattr(type(role), "section", "") or type(role).__name__


def validate(role) -> None:
  """Checks every setting of a role instance (its `__post_init__` calls this first)."""
  section = section_of(role)
  for f in setting_fields(type(role)):
    default = None if f.default is dataclasses.MISSING else f.default
    check_value(f"allocator.{section}.{f.name}", getattr(role, f.name), default,
                f.metadata.get("check"))
