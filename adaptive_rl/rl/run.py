"""A run built from a parsed config: everything static it needs, in one frozen bundle (no jit).

  run = build_run(parse_config(config))      # task, data, model, allocator, step configs, mesh
  summary = loop.train(run, workdir)

Every cross-section check that needs more than one config section (the prompt fits the model,
the tokenizer fits the vocabulary, mini-batches divide the training rows, the allocator does
not draw more prompts than the split has, the mesh matches the devices, every logical axis has
a rule, the memory estimate fits the device) happens here, at launch, as a `ConfigError` naming
the fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import optax
from jax.sharding import Mesh

from adaptive_rl import models
from adaptive_rl.allocation.registry import build_allocator
from adaptive_rl.allocation.roles import Allocator
from adaptive_rl.parallel import KV_CACHE_AXES, make_mesh, validate_rules
from adaptive_rl.rl.config import ConfigError, RunConfig
from adaptive_rl.rl.losses import policy_loss
from adaptive_rl.rl.memory import (
    MemoryEstimateError,
    check_memory,
    device_memory_bytes,
    estimate_memory,
)
from adaptive_rl.rl.step import StepConfig
from adaptive_rl.sampling import Greedy, SamplerConfig, check_prompt_fits, make_strategy
from adaptive_rl.tasks.builtin import make_task

# Logical axes the model code names on activations (`constrain` calls); with the params' and the
# KV cache's axes, every one of these needs a rule.
ACTIVATION_AXES = ("batch", "length", "embed", "heads", "kv_heads", "head_dim", "mlp")


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything static about a run.

  Attributes:
    config: the parsed config.
    task, train_data, test_data: the task and its splits (host numpy arrays).
    max_new: N, completion budget in tokens.
    model_cfg: the decoder's architecture.
    lora_cfg: LoRA's settings (None: full fine-tuning); `lora_axes` its adapters' logical axes.
    mesh, rules: the device mesh and the validated logical-axis rules.
    allocator: the composed select / budget / group roles.
    step_cfg, sampler_cfg, eval_sampler_cfg: the train step's and samplers' static settings.
    tx: the RL optimizer.
    memory: the per-device memory estimate of one step (bytes by part).
    host_rewards: rewards are scored on the host (asked for, or the task has no graph reward).
    loss_fn: the policy loss (`rl.losses.policy_loss`; a fork's own objective may replace it).
  """

  config: RunConfig
  task: Any
  train_data: Any
  test_data: Any
  max_new: int
  model_cfg: models.ModelConfig
  lora_cfg: models.lora.LoraConfig | None
  lora_axes: Any
  mesh: Mesh
  rules: tuple
  allocator: Allocator
  step_cfg: StepConfig
  sampler_cfg: SamplerConfig
  eval_sampler_cfg: SamplerConfig
  tx: optax.GradientTransformation
  memory: dict[str, int]
  host_rewards: bool
  loss_fn: Callable = policy_loss

  @property
  def tokenizer(self):
    return self.task.tokenizer

  @property
  def prompt_len(self) -> int:
    return self.train_data.prompts.shape[1]


def build_run(config: RunConfig) -> Run:
  """Builds and checks the run described by `config` (see the module docstring)."""
  rl = config.rl
  mesh = _make_mesh(config)
  try:
    task = make_task(config.task_name, **dict(config.task_settings))
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.task: {e}") from None
  train_data, test_data = task.split("train"), task.split("test")
  max_new = rl.max_new_tokens or task.max_completion_len
  model_cfg = _model_config(config, task, train_data.prompts.shape[1] + max_new)
  check_prompt_fits(model_cfg, train_data.prompts.shape[1], max_new)
  if task.tokenizer.vocab_size > model_cfg.vocab_size:
    raise ConfigError(f"tokenizer vocabulary {task.tokenizer.vocab_size} exceeds the model's "
                      f"vocab_size {model_cfg.vocab_size}")
  lora_cfg, lora_axes = config.lora.config(), None
  if lora_cfg is not None:
    try:
      lora_axes = models.lora.lora_axes(model_cfg, lora_cfg)
    except ValueError as e:
      raise ConfigError(f"config.lora.targets: {e}") from None
  try:
    rules = validate_rules(
        config.logical_axis_rules,
        (models.param_axes(model_cfg), ACTIVATION_AXES, tuple(KV_CACHE_AXES.values()),
         lora_axes or {}), mesh)
  except ValueError as e:
    raise ConfigError(f"config.logical_axis_rules: {e}") from None
  try:
    allocator = build_allocator(
        dict(config.allocator), batch_prompts=rl.batch_prompts, group_size=rl.group_size,
        tau=rl.tau, adv_estimator=rl.adv_estimator, adv_clip=rl.adv_clip or None)
  except ValueError as e:
    raise ConfigError(f"config.allocator: {e}") from None
  step_cfg = rl.step(max_new)
  if step_cfg.overlong_buffer > max_new:
    raise ConfigError(f"rl.overlong_buffer={step_cfg.overlong_buffer} must be <= the completion "
                      f"budget of {max_new} tokens (rl.max_new_tokens or the task's)")
  train_rows = allocator.train_rows
  if train_rows % (rl.mini_batches * rl.micro_batches):
    raise ConfigError(
        f"rl.mini_batches * rl.micro_batches = {rl.mini_batches * rl.micro_batches} must "
        f"divide the {train_rows} training rows per step")
  candidates = allocator.select.candidates_per_step()
  if candidates > train_data.size:
    raise ConfigError(
        f"allocator {allocator.name!r} draws {candidates} candidate prompts per step "
        f"(rl.batch_prompts={rl.batch_prompts}), more than the train split's "
        f"{train_data.size}")
  seq = train_data.prompts.shape[1] + max_new
  memory = _check_memory(config, model_cfg, mesh, rules, allocator, step_cfg, lora_cfg, seq,
                         max_new)
  eos, pad = (task.tokenizer.eos_id,), task.tokenizer.pad_id
  return Run(
      config=config, task=task, train_data=train_data, test_data=test_data, max_new=max_new,
      model_cfg=model_cfg, lora_cfg=lora_cfg, lora_axes=lora_axes, mesh=mesh, rules=rules,
      allocator=allocator, step_cfg=step_cfg,
      sampler_cfg=SamplerConfig(max_new, eos, pad, make_strategy(rl.temperature, rl.top_k,
                                                                 rl.top_p)),
      eval_sampler_cfg=SamplerConfig(max_new, eos, pad, Greedy()),
      tx=rl.optimizer().make(), memory=memory,
      host_rewards=(config.reward.mode == "host"
                    or not getattr(task, "has_graph_reward", True)))


def _make_mesh(config: RunConfig) -> Mesh:
  """The mesh of `config.mesh` over all devices (or the first `mesh.num_devices`)."""
  m = config.mesh
  devices = jax.devices()
  if m.num_devices:
    if m.num_devices > len(devices):
      raise ConfigError(f"mesh.num_devices={m.num_devices} but there are only {len(devices)} "
                        f"devices")
    if jax.process_count() > 1 and m.num_devices != len(devices):
      raise ConfigError(f"mesh.num_devices={m.num_devices}: a multi-host run's mesh spans all "
                        f"{len(devices)} devices of its {jax.process_count()} processes; set 0")
    devices = devices[:m.num_devices]
  try:
    return make_mesh(m.mesh_config(), devices)
  except ValueError as e:
    raise ConfigError(f"config.mesh: {e}") from None


def _model_config(config: RunConfig, task, seq_len: int) -> models.ModelConfig:
  m = config.model
  overrides = dict(m.overrides)
  if m.hf_path:
    return models.from_hf(m.hf_path, **overrides)[0]
  overrides.setdefault("vocab_size", task.tokenizer.vocab_size)
  overrides.setdefault("max_seq_len", seq_len)
  try:
    return models.get_preset(m.preset, **overrides)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.model: {e}") from None


def _check_memory(config, model_cfg, mesh, rules, allocator, step_cfg, lora_cfg, seq,
                  max_new) -> dict[str, int]:
  """The per-device memory estimate of an RL step; fails when it cannot fit the device."""
  rl = config.rl
  est = estimate_memory(
      model_cfg, batch=allocator.train_rows // rl.mini_batches, seq_len=seq,
      completion_len=max_new, mesh=mesh, rules=rules, logprob_chunk=rl.logprob_chunk,
      micro_batches=rl.micro_batches, ref_params=step_cfg.needs_ref,
      sample_batch=allocator.budget.num_slots, sample_len=seq, lora=lora_cfg is not None,
      lora_rank=lora_cfg.rank if lora_cfg else 16)
  try:  # device_memory_bytes() is None on CPU, where the check is skipped
    check_memory(est, device_memory_bytes())
  except MemoryEstimateError as e:
    raise ConfigError(f"the run does not fit in device memory: {e}") from None
  return est
