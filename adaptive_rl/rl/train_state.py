"""The train state pytree and the optimizer built from typed settings."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; checkpointed whole.

  Attributes:
    step: RL steps completed.
    params: the trained params: the whole policy, or with LoRA only its adapters (the frozen base
      is held by the trainer and passed to the step beside the state).
    opt_state: optax state (of `params` only).
    ref_params: frozen reference params for the KL term (None when unused, and with LoRA, whose
      reference is the frozen base).
    alloc: allocator state (per-prompt arrays sized for the whole dataset).
    rng: the run's PRNG key, split each step.
    counters: cumulative run counters (rollouts, tokens, skipped updates, ...).
    sft_adapters: LoRA runs: the adapters merged into the frozen base once before RL (the SFT
      warm start's; B = 0 ones, an exact no-op, without SFT), kept (adapter-sized) so a resume
      rebuilds the base as the model's init / HF weights + these without checkpointing the
      base. None without LoRA.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  ref_params: Any
  alloc: Any
  rng: jax.Array
  counters: dict[str, jax.Array]
  sft_adapters: Any = None


COUNTERS = ("rollouts", "tokens_generated", "nan_skips", "consecutive_nan_skips",
            "reward_errors")


def new_counters() -> dict[str, jax.Array]:
  """Zeroed run counters (int32: a run past 2^31 generated tokens would need int64 / x64)."""
  return {name: jnp.zeros((), jnp.int32) for name in COUNTERS}


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW with linear warm-up then constant or cosine decay, and global-norm clipping."""

  lr: float = 1e-3
  warmup_steps: int = 0
  decay: str = "constant"  # constant | cosine
  total_steps: int = 1
  min_lr_ratio: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  weight_decay: float = 0.0
  grad_clip: float = 1.0

  def __post_init__(self):
    if not self.lr > 0:
      raise ValueError(f"optimizer lr must be > 0, got {self.lr}")
    if self.decay not in ("constant", "cosine"):
      raise ValueError(f"optimizer decay must be 'constant' or 'cosine', got {self.decay!r}")
    if self.warmup_steps < 0 or self.total_steps < 1:
      raise ValueError("optimizer warmup_steps must be >= 0 and total_steps >= 1")
    if self.grad_clip < 0:
      raise ValueError(f"optimizer grad_clip must be >= 0 (0 = off), got {self.grad_clip}")

  def schedule(self) -> optax.Schedule:
    warm = max(self.warmup_steps, 0)
    if self.decay == "cosine":
      decay_steps = max(self.total_steps - warm, 1)
      after = optax.cosine_decay_schedule(self.lr, decay_steps, alpha=self.min_lr_ratio)
    else:
      after = optax.constant_schedule(self.lr)
    if not warm:
      return after
    return optax.join_schedules([optax.linear_schedule(0.0, self.lr, warm), after], [warm])

  def make(self, mask: Any = None) -> optax.GradientTransformation:
    """The optimizer; `mask` (a bool pytree) restricts updates and state to some params."""
    parts = []
    if self.grad_clip:
      parts.append(optax.clip_by_global_norm(self.grad_clip))
    parts.append(optax.adamw(self.schedule(), b1=self.b1, b2=self.b2,
                             weight_decay=self.weight_decay))
    tx = optax.chain(*parts)
    if mask is not None:
      tx = optax.masked(tx, mask)
    return tx
