"""Typed run settings, built from an ml_collections ConfigDict at the edge.

`parse_config(config)` turns the experiment's ConfigDict into frozen dataclasses; an unknown key
fails here, at launch, naming the key and suggesting the nearest valid name, and every value is
checked by its dataclass's `__post_init__`. Library code below the trainer sees only these types.

`config.mesh` and `config.logical_axis_rules` are checked here for form (sizes, known logical
axis names); that the mesh matches the device count and that every logical axis the model uses
has a rule is checked by the trainer, which knows the devices and the model.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
from typing import Any

from adaptive_rl.models.lora import DEFAULT_TARGETS, LoraConfig
from adaptive_rl.parallel import DEFAULT_RULES, LOGICAL_AXES, MeshConfig, normalize_rules
from adaptive_rl.rl.losses import LossConfig
from adaptive_rl.rl.step import StepConfig
from adaptive_rl.rl.train_state import OptimizerConfig


class ConfigError(ValueError):
  """A bad config key or value, reported at launch."""


@dataclasses.dataclass(frozen=True)
class ModelSection:
  """Which model: a preset (random init) or a HF checkpoint, plus ModelConfig field overrides."""

  preset: str = "micro"
  hf_path: str = ""
  overrides: tuple[tuple[str, Any], ...] = ()
  init_std: float = 0.02


@dataclasses.dataclass(frozen=True)
class LoraSection:
  """LoRA: train low-rank adapters on a frozen base instead of every weight.

  Attributes:
    enabled: off = full fine-tuning.
    rank, alpha, targets, param_dtype: see `models.lora.LoraConfig` (targets: a regex
      full-matched against param paths such as "layers/wq", "lm_head", "embed").
  """

  enabled: bool = False
  rank: int = LoraConfig.rank
  alpha: float = LoraConfig.alpha
  targets: str = DEFAULT_TARGETS
  param_dtype: str = LoraConfig.param_dtype

  def __post_init__(self):
    if not isinstance(self.enabled, bool):
      raise ConfigError(f"lora.enabled must be a bool, got {self.enabled!r}")
    self.config()  # validates the other fields

  def config(self) -> LoraConfig | None:
    """The adapters' settings, or None when LoRA is off."""
    try:
      config = LoraConfig(rank=self.rank, alpha=self.alpha, targets=self.targets,
                          param_dtype=self.param_dtype)
    except ValueError as e:
      raise ConfigError(f"config.lora: {e}") from None
    return config if self.enabled else None


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """Supervised warm start on the task's demonstrations (0 steps = off)."""

  steps: int = 300
  batch_size: int = 64
  lr: float = 3e-3
  warmup_steps: int = 20
  weight_decay: float = 0.0

  def __post_init__(self):
    if self.steps < 0 or self.batch_size < 1:
      raise ConfigError(f"sft.steps must be >= 0 and sft.batch_size >= 1, got {self.steps} / "
                        f"{self.batch_size}")


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """The RL phase: rollout sizes, sampling, optimizer and loss settings."""

  steps: int = 100
  batch_prompts: int = 32
  group_size: int = 8
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  max_new_tokens: int = 0  # 0: the task's completion budget
  lr: float = 1e-3
  warmup_steps: int = 0
  decay: str = "constant"
  min_lr_ratio: float = 0.0
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  b1: float = 0.9
  b2: float = 0.999
  ppo_epochs: int = 1
  mini_batches: int = 1
  micro_batches: int = 1
  recompute_old_logp: bool = False
  logprob_chunk: int = 0
  eps_low: float = 0.2
  eps_high: float = 0.28
  dual_clip: float = 3.0  # 0 = off
  kl_coef: float = 0.0
  kl_estimator: str = "k3"
  entropy_coef: float = 0.0
  loss_agg: str = "token-mean"
  adv_estimator: str = "grpo"
  adv_clip: float = 0.0
  tau: float = 0.5
  overlong_buffer: int = 0
  mask_truncated: bool = False
  share_prompts: bool = True  # one forward pass per prompt, not per completion (StepConfig)
  max_consecutive_nan: int = 5

  def __post_init__(self):
    if self.steps < 0:
      raise ConfigError(f"rl.steps must be >= 0 (0 = supervised warm start only), got "
                        f"{self.steps}")
    for name in ("batch_prompts", "group_size"):
      if getattr(self, name) < 1:
        raise ConfigError(f"rl.{name} must be >= 1, got {getattr(self, name)}")
    if self.max_new_tokens < 0:
      raise ConfigError(f"rl.max_new_tokens must be >= 0, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ConfigError(f"rl.temperature must be >= 0, got {self.temperature}")
    if self.max_consecutive_nan < 1:
      raise ConfigError(f"rl.max_consecutive_nan must be >= 1, got {self.max_consecutive_nan}")

  def loss(self) -> LossConfig:
    try:
      return LossConfig(eps_low=self.eps_low, eps_high=self.eps_high,
                        dual_clip=self.dual_clip or None, kl_coef=self.kl_coef,
                        kl_estimator=self.kl_estimator, entropy_coef=self.entropy_coef,
                        loss_agg=self.loss_agg, max_len=self.max_new_tokens or None,
                        adv_clip=self.adv_clip or None)
    except ValueError as e:
      raise ConfigError(f"rl: {e}") from None

  def step(self, max_new_tokens: int) -> StepConfig:
    loss = self.loss()
    if loss.max_len is None and self.loss_agg == "seq-mean-token-sum-norm":
      loss = dataclasses.replace(loss, max_len=max_new_tokens)
    return StepConfig(
        loss=loss, ppo_epochs=self.ppo_epochs, mini_batches=self.mini_batches,
        micro_batches=self.micro_batches, recompute_old_logp=self.recompute_old_logp,
        logprob_chunk=self.logprob_chunk, compute_entropy=True, tau=self.tau,
        overlong_buffer=self.overlong_buffer, mask_truncated=self.mask_truncated,
        share_prompts=self.share_prompts)

  def optimizer(self) -> OptimizerConfig:
    return OptimizerConfig(lr=self.lr, warmup_steps=self.warmup_steps, decay=self.decay,
                           total_steps=max(self.steps, 1), min_lr_ratio=self.min_lr_ratio, b1=self.b1,
                           b2=self.b2, weight_decay=self.weight_decay, grad_clip=self.grad_clip)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Held-out evaluation: every N RL steps (0 = only at start and end), greedy by default."""

  every: int = 10
  batch_size: int = 500
  limit: int = 0  # evaluate at most this many held-out prompts (0 = all)

  def __post_init__(self):
    if self.every < 0 or self.batch_size < 1 or self.limit < 0:
      raise ConfigError("eval.every >= 0, eval.batch_size >= 1 and eval.limit >= 0 required")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """Checkpoint every N RL steps and at the end; keep the last `keep` (+ every `keep_every`)."""

  every: int = 25
  keep: int = 2
  keep_every: int = 0

  def __post_init__(self):
    if self.every < 0 or self.keep < 1 or self.keep_every < 0:
      raise ConfigError("checkpoint.every >= 0, checkpoint.keep >= 1, keep_every >= 0 required")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """Where rewards are computed.

  Attributes:
    mode: "graph" (the task's jittable reward, inside the sampling step) or "host" (a Python
      function over decoded text, in worker processes with a per-item timeout; an item that
      raises or times out scores 0 and is counted in `reward_errors`).
    fn: "module:function" with signature fn(completion: str, answer: str) -> float in [0, 1];
      empty = the task's own `reward_text`.
    timeout_s: seconds one host reward call may take.
    workers: host reward processes (0 = in-process: exceptions caught, no timeout).
  """

  mode: str = "graph"
  fn: str = ""
  timeout_s: float = 5.0
  workers: int = 2

  def __post_init__(self):
    if self.mode not in ("graph", "host"):
      raise ConfigError(f"reward.mode must be 'graph' or 'host', got {self.mode!r}")
    if self.fn and ":" not in self.fn:
      raise ConfigError(f"reward.fn must look like 'package.module:function', got {self.fn!r}")
    if not self.timeout_s > 0 or self.workers < 0:
      raise ConfigError("reward.timeout_s must be > 0 and reward.workers >= 0")


@dataclasses.dataclass(frozen=True)
class LogConfig:
  """Outputs: TensorBoard events, the progress bar, plots, and a note printed at start and end
  (e.g. a smoke config's "a plumbing check, too short to show learning")."""

  tensorboard: bool = True
  progress: bool = True
  plots: bool = True
  note: str = ""


@dataclasses.dataclass(frozen=True)
class MeshSection:
  """The device mesh: axis sizes (see `parallel.MeshConfig`) and how many devices it spans.

  Attributes:
    data, fsdp, tensor, sequence: mesh axis sizes; one may be -1 (the devices the others leave).
    num_devices: use the first N devices (0 = all). Single process only: a multi-host mesh spans
      every process's devices.
  """

  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  sequence: int = 1
  num_devices: int = 0

  def __post_init__(self):
    if isinstance(self.num_devices, bool) or not isinstance(self.num_devices, int) or (
        self.num_devices < 0):
      raise ConfigError(f"mesh.num_devices must be an int >= 0 (0 = all devices), got "
                        f"{self.num_devices!r}")
    self.mesh_config()  # validates the axis sizes

  def mesh_config(self) -> MeshConfig:
    try:
      return MeshConfig(data=self.data, fsdp=self.fsdp, tensor=self.tensor,
                        sequence=self.sequence)
    except ValueError as e:
      raise ConfigError(f"config.mesh: {e}") from None


def _parse_rules(rules) -> tuple:
  """The logical-axis rules in canonical form; an unknown logical name fails, suggesting one."""
  try:
    rules = normalize_rules(rules)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.logical_axis_rules: {e}") from None
  for name, _ in rules:
    if name not in LOGICAL_AXES:
      raise ConfigError(f"config.logical_axis_rules names unknown logical axis {name!r}"
                        f"{_suggest(name, LOGICAL_AXES)} (logical axes: {list(LOGICAL_AXES)})")
  return rules


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything a run needs, typed."""

  seed: int
  task_name: str
  task_settings: tuple[tuple[str, Any], ...]
  model: ModelSection
  sft: SFTConfig
  rl: RLConfig
  allocator: tuple[tuple[str, Any], ...]
  reward: RewardConfig
  eval: EvalConfig
  checkpoint: CheckpointConfig
  log: LogConfig
  mesh: MeshSection
  logical_axis_rules: tuple  # ((logical name, mesh axes), ...), see parallel.DEFAULT_RULES
  raw: dict[str, Any]  # the whole config as a plain dict, recorded in the workdir
  lora: LoraSection = LoraSection()


def _suggest(key: str, valid) -> str:
  close = difflib.get_close_matches(key, list(valid), n=1)
  return f"; did you mean {close[0]!r}?" if close else ""


def _section(cls, values: dict[str, Any], name: str):
  fields = {f.name for f in dataclasses.fields(cls)}
  for key in values:
    if key not in fields:
      raise ConfigError(f"unknown config key {name}.{key}{_suggest(key, fields)} "
                        f"(valid keys of {name}: {sorted(fields)})")
  try:
    return cls(**values)
  except ConfigError:
    raise
  except (TypeError, ValueError) as e:
    raise ConfigError(f"bad value in config section {name!r}: {e}") from None


_TOP = ("seed", "task", "model", "sft", "rl", "allocator", "reward", "eval", "checkpoint", "log",
        "mesh", "logical_axis_rules", "lora", "force")

def parse_arg(arg: str, **defaults):
  """The `get_config(arg)` string of a config file: 'a=1,b=x' -> ConfigDict with typed defaults.

  Every key must be one of `defaults` and takes its default's type (bools accept 1/true/yes).
  big_vision style: `--config configs/quickstart.py:smoke=True,allocator=knapsack`.
  """
  import ml_collections  # pylint: disable=import-outside-toplevel
  out = ml_collections.ConfigDict(defaults)
  if arg:
    for item in arg.split(","):
      if not item:
        continue
      if "=" not in item:
        raise ValueError(f"config arg {item!r} must look like key=value")
      key, value = item.split("=", 1)
      if key not in defaults:
        raise ValueError(f"unknown config arg {key!r}; valid: {sorted(defaults)}")
      kind = type(defaults[key])
      if kind is bool:
        value = value.lower() in ("1", "true", "yes")
      out[key] = kind(value)
  return out



def _mapping(raw: dict[str, Any], name: str, default: Any = None) -> dict[str, Any]:
  """config.<name> as a dict with string keys, or a ConfigError saying what it is instead."""
  value = raw.get(name, {} if default is None else default)
  if not isinstance(value, dict):
    raise ConfigError(f"config.{name} must be a section (a dict of settings), got "
                      f"{type(value).__name__} {value!r:.60}")
  for key in value:
    if not isinstance(key, str):
      raise ConfigError(f"config.{name} has a non-string key {key!r}")
  return dict(value)


def load_config_file(path: str, arg: str = ""):
  """`get_config(arg)` of a config file such as configs/quickstart.py (what `--config
  path:arg` gives `launch/train.py`), for notebooks, tests and benchmarks."""
  spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  if spec is None or spec.loader is None:
    raise ConfigError(f"cannot load config file {path}")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def parse_config(config) -> RunConfig:
  """ConfigDict (or nested dict) -> RunConfig; raises ConfigError naming any bad key."""
  raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  for key in raw:
    if not isinstance(key, str) or key not in _TOP:
      hint = _suggest(key, _TOP) if isinstance(key, str) else ""
      raise ConfigError(f"unknown config key {key!r}{hint} (valid top-level keys: {list(_TOP)})")
  seed = raw.get("seed", 0)
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise ConfigError(f"config.seed must be an int, got {seed!r:.60}")
  task = _mapping(raw, "task")
  if "name" not in task:
    raise ConfigError("config.task.name is required (e.g. 'arithmetic')")
  task_name = task.pop("name")
  model = _mapping(raw, "model")
  model_fields = {f.name for f in dataclasses.fields(ModelSection)} - {"overrides"}
  overrides = tuple(sorted((k, v) for k, v in model.items() if k not in model_fields))
  model = {k: v for k, v in model.items() if k in model_fields}
  from adaptive_rl.models import ModelConfig  # pylint: disable=import-outside-toplevel
  arch_fields = {f.name for f in dataclasses.fields(ModelConfig)}
  for key, _ in overrides:
    if key not in arch_fields:
      raise ConfigError(f"unknown config key model.{key}"
                        f"{_suggest(key, arch_fields | model_fields)}")
  return RunConfig(
      seed=seed,
      task_name=task_name,
      task_settings=tuple(sorted(task.items())),
      model=_section(ModelSection, {**model, "overrides": overrides}, "model"),
      sft=_section(SFTConfig, _mapping(raw, "sft"), "sft"),
      rl=_section(RLConfig, _mapping(raw, "rl"), "rl"),
      allocator=tuple(sorted(_mapping(raw, "allocator", {"name": "uniform"}).items())),
      reward=_section(RewardConfig, _mapping(raw, "reward"), "reward"),
      eval=_section(EvalConfig, _mapping(raw, "eval"), "eval"),
      checkpoint=_section(CheckpointConfig, _mapping(raw, "checkpoint"), "checkpoint"),
      log=_section(LogConfig, _mapping(raw, "log"), "log"),
      mesh=_section(MeshSection, _mapping(raw, "mesh"), "mesh"),
      logical_axis_rules=_parse_rules(raw.get("logical_axis_rules", DEFAULT_RULES)),
      raw=raw,
      lora=_section(LoraSection, _mapping(raw, "lora"), "lora"))
