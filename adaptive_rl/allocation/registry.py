"""Allocator presets by name and their construction from the run's settings."""

from __future__ import annotations

from typing import Any

from adaptive_rl.allocation.roles import AllGroup, Allocator, FixedBudget, UniformSelect

PRESETS = ("uniform",)


def build_allocator(settings: dict[str, Any], *, batch_prompts: int, group_size: int, tau: float,
                    adv_estimator: str, adv_clip: float | None) -> Allocator:
  """Builds the allocator named by settings["name"].

  Raises:
    ValueError: unknown name (listing the valid ones) or unknown setting.
  """
  settings = dict(settings)
  name = settings.pop("name", "uniform")
  if name not in PRESETS:
    raise ValueError(f"unknown allocator {name!r}; valid allocators: {list(PRESETS)}")
  if settings:
    raise ValueError(f"allocator {name!r} takes no settings, got {sorted(settings)}")
  return Allocator(
      select=UniformSelect(batch_prompts),
      budget=FixedBudget(batch_prompts, group_size),
      group=AllGroup(batch_prompts, estimator=adv_estimator, adv_clip=adv_clip),
      tau=tau)
