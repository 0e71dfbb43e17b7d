"""Roles by name, presets, and the allocator settings: parsed and validated, then built.

Every role registers itself at the end of its own file:

  @register_select("mopps")
  @dataclasses.dataclass(frozen=True)
  class MoPPSSelect(SelectRole[MoPPSState]):
    num_select: int = context("num_prompts")      # from the run, not a setting
    ratio: int = setting(4, at_least(1))          # allocator.mopps.ratio, default 4
    ...

and `allocation/__init__.py` imports each such file once, so a fork adds an allocator with one
new file and one import line there. Presets reproduce each paper's method; `select=`,
`budget=`, `group=` override a preset's roles, so MoPPS selection with the Reinforce-Ada budget
is

  allocator = dict(name="reinforce_ada", select="mopps")

A role's settings live in the sub-dict named after its section (by default its registered
name; `BalancedGroup` reads `allocator.reinforce_ada`). `parse_allocator_settings` checks a
settings dict against the role dataclasses (unknown names, types, ranges) and returns an
`AllocatorSpec`; `build_allocator` builds one with the run's sizes.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any, Mapping

from adaptive_rl.allocation import fields
from adaptive_rl.allocation.roles import STATISTICS, Allocator, BudgetRole, GroupRole, SelectRole

KINDS = ("select", "budget", "group")
_PROTOCOLS = {"select": SelectRole, "budget": BudgetRole, "group": GroupRole}
_ROLES: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}

# name -> (select, budget, group, overrides of section settings). Data: `register_preset` adds.
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


# --- registration ---------------------------------------------------------------------------

def register(kind: str, name: str):
  """Class decorator: registers a frozen role dataclass as the `kind` role `name`.

  Sets `cls.section = name` unless the class names its section. Checks what can be checked
  before a run: the kind, the dataclass, `requires` against `STATISTICS`, and a name that
  another class already holds.
  """
  if kind not in KINDS:
    raise ValueError(f"unknown role kind {kind!r}; valid: {KINDS}")

  def decorate(cls):
    if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):
      raise TypeError(f"{kind} role {name!r}: {cls.__name__} must be a frozen dataclass")
    if _PROTOCOLS[kind] not in cls.__mro__:
      raise TypeError(f"{kind} role {name!r}: {cls.__name__} must subclass "
                      f"{_PROTOCOLS[kind].__name__}")
    unknown = set(cls.requires) - STATISTICS
    if unknown:
      raise ValueError(f"{kind} role {name!r} requires unknown statistics {sorted(unknown)}; "
                       f"valid: {sorted(STATISTICS)}")
    old = _ROLES[kind].get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__,
                                                                  cls.__qualname__):
      raise ValueError(f"{kind} role {name!r} is already registered by "
                       f"{old.__module__}.{old.__qualname__}")
    if "section" not in vars(cls):
      cls.section = name
    _ROLES[kind][name] = cls
    try:
      _sections(complete=False)  # two roles sharing a section must agree on its defaults
    except ValueError:
      if old is None:
        del _ROLES[kind][name]
      else:
        _ROLES[kind][name] = old
      raise
    return cls

  return decorate


register_select = functools.partial(register, "select")
register_budget = functools.partial(register, "budget")
register_group = functools.partial(register, "group")


def register_preset(name: str, select: str = "uniform", budget: str = "fixed",
                    group: str = "all", settings: Mapping[str, Mapping[str, Any]] | None = None):
  """Adds a preset: a select, budget and group role by name, plus section settings it fixes."""
  entry = (select, budget, group, {k: dict(v) for k, v in (settings or {}).items()})
  if PRESETS.get(name, entry) != entry:
    raise ValueError(f"allocator preset {name!r} already exists: {PRESETS[name]}")
  PRESETS[name] = entry


def roles(kind: str) -> dict[str, type]:
  """The registered `kind` roles, name -> class."""
  return dict(_ROLES[kind])


# --- the settings schema, derived from the role dataclasses ----------------------------------

@dataclasses.dataclass(frozen=True)
class _Field:
  default: Any
  checks: tuple[fields.Check, ...]


def _sections(complete: bool = True) -> dict[str, dict[str, _Field]]:
  """section -> field -> (default, checks), over every registered role.

  Raises ValueError when roles sharing a section declare different defaults for a field, or
  (`complete`) when no role declares one.
  """
  found: dict[str, dict[str, list]] = {}
  for kind in KINDS:
    for cls in _ROLES[kind].values():
      for f in fields.setting_fields(cls):
        entry = found.setdefault(cls.section, {}).setdefault(f.name, [[], []])
        if f.default is not dataclasses.MISSING:
          entry[0].append((f.default, cls.__name__))
        if f.metadata.get("check") is not None:
          entry[1].append(f.metadata["check"])
  out: dict[str, dict[str, _Field]] = {}
  for section, entries in found.items():
    out[section] = {}
    for key, (defaults, checks) in entries.items():
      values = {repr(v) for v, _ in defaults}
      if len(values) > 1 or (complete and not values):
        where = ", ".join(f"{v!r} in {c}" for v, c in defaults) or "none"
        raise ValueError(f"allocator.{section}.{key} needs exactly one default; found {where}")
      if values:
        out[section][key] = _Field(defaults[0][0], tuple(checks))
  return out


def default_settings() -> dict[str, Any]:
  """The full allocator settings dict with every default (what configs start from)."""
  return dict(name="uniform", select="", budget="", group="",
              **{s: {k: f.default for k, f in fs.items()} for s, fs in _sections().items()})


def _pick(kind: str, name: str, valid) -> str:
  if name not in valid:
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown {kind} {name!r}{hint}; valid {kind}s: {list(valid)}")
  return name


@dataclasses.dataclass(frozen=True)
class AllocatorSpec:
  """Validated allocator settings: the preset, the three role names, every section's values.

  Attributes:
    name: the preset.
    select, budget, group: registered role names (the preset's unless overridden).
    settings: ((section, ((key, value), ...)), ...), every registered section, resolved
      (defaults, then the preset's, then the config's).
  """

  name: str
  select: str
  budget: str
  group: str
  settings: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]

  def section(self, name: str) -> dict[str, Any]:
    return dict(dict(self.settings).get(name, ()))

  def to_dict(self) -> dict[str, Any]:
    """The settings dict this spec parses from (a config's `allocator` section)."""
    return dict(name=self.name, select=self.select, budget=self.budget, group=self.group,
                **{s: dict(v) for s, v in self.settings})


def parse_allocator_settings(settings: Mapping[str, Any] | AllocatorSpec) -> AllocatorSpec:
  """Checks a config's `allocator` settings against the registered roles; no run sizes needed.

  Keys: `name` (a preset), `select` / `budget` / `group` ("" = the preset's role), and one
  sub-dict per section (`allocator.mopps.ratio`, ...); missing keys take defaults. A config
  file spells every default out, so a setting equal to its default leaves the preset's value
  in place (the `reinforce_ada_positive` preset keeps variant="positive" under a config full
  of defaults); any other value wins over the preset.

  Raises:
    ValueError: an unknown preset, role, section or setting (naming the valid ones and the
      closest), or a value of the wrong type or out of range, naming `allocator.<section>.<key>`.
      Checks that need the run's sizes (e.g. a knapsack budget below B N_low) are
      `build_allocator`'s.
  """
  if isinstance(settings, AllocatorSpec):
    return settings
  given = dict(settings)
  name = _pick("allocator", given.pop("name", None) or "uniform", list(PRESETS))
  preset = PRESETS[name]
  chosen = {}
  for kind, default in zip(KINDS, preset[:3]):
    role = given.pop(kind, None) or default
    if not isinstance(role, str):
      raise ValueError(f"allocator.{kind} must be a role name, got {role!r}")
    chosen[kind] = _pick(f"{kind} role", role, list(_ROLES[kind]))
  schema = _sections()
  for key in given:
    _pick("allocator setting", key, list(schema))
  resolved = []
  for section, fs in schema.items():
    raw = given.get(section) or {}
    if not hasattr(raw, "items"):
      raise ValueError(f"allocator.{section} must be a dict of settings, got {raw!r}")
    raw = dict(raw.items())
    for key in raw:
      _pick(f"allocator.{section} setting", key, list(fs))
    over = preset[3].get(section, {})
    values = []
    for key, f in fs.items():
      value = raw.get(key, f.default)
      if key in over and value == f.default:
        value = over[key]
      for check in f.checks or (None,):
        fields.check_value(f"allocator.{section}.{key}", value, f.default, check)
      values.append((key, value))
    resolved.append((section, tuple(values)))
  return AllocatorSpec(name=name, select=chosen["select"], budget=chosen["budget"],
                       group=chosen["group"], settings=tuple(resolved))


def _make(kind: str, name: str, spec: AllocatorSpec, run: fields.RunContext):
  cls = _ROLES[kind][name]
  section = spec.section(cls.section)
  kwargs = {}
  for f in dataclasses.fields(cls):
    if not f.init:
      continue
    source = fields.context_name(f)
    if source is None:
      kwargs[f.name] = section[f.name]
    elif getattr(run, source) is None and source == "num_prompts":
      raise TypeError(f"{kind} role {name!r} asks for num_prompts, which only select and group "
                      f"roles get (it is the budget's)")
    else:
      kwargs[f.name] = getattr(run, source)
  return cls(**kwargs)


def build_allocator(settings: Mapping[str, Any] | AllocatorSpec, *, batch_prompts: int,
                    group_size: int, tau: float, adv_estimator: str = "grpo",
                    adv_clip: float | None = None) -> Allocator:
  """Builds the allocator described by `settings` (see `default_settings`).

  Args:
    settings: {name, select, budget, group, <section>: {...}} (missing keys take defaults), or
      an `AllocatorSpec` from `parse_allocator_settings`.
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
  spec = parse_allocator_settings(settings)
  if batch_prompts < 1 or group_size < 1:
    raise ValueError(f"batch_prompts and group_size must be >= 1, got {batch_prompts} and "
                     f"{group_size}")
  run = fields.RunContext(batch_prompts=batch_prompts, group_size=group_size, tau=tau,
                          adv_estimator=adv_estimator, adv_clip=adv_clip)
  budget = _make("budget", spec.budget, spec, run)
  run = dataclasses.replace(run, num_prompts=budget.num_prompts,
                            adv_clip=budget.adv_clip or adv_clip)
  select = _make("select", spec.select, spec, run)
  group = _make("group", spec.group, spec, run)
  return Allocator(select=select, budget=budget, group=group, tau=tau, name=spec.name)
