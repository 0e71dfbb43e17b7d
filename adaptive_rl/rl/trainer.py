"""The trainer loop: SFT warm start, then RL steps of select -> sample -> reward -> train.

  trainer = Trainer(parse_config(config), workdir)
  summary = trainer.run()

Everything per step runs in three jitted functions (begin, round, train step); the host only
loops over sampling rounds (syncing on one bool when the budget has several), fetches metrics
one step behind, evaluates, checkpoints and writes outputs. Re-running on the same workdir
resumes from the latest checkpoint.

Sharding. `config.mesh` and `config.logical_axis_rules` give the device mesh and the rules that
map the model's logical axes onto it; both are checked when the trainer is built. Params are
created directly in their shardings (shapes from `jax.eval_shape`, then a jit with
`out_shardings`), the train state follows them (`parallel.state_shardings`), every jitted
function has explicit in / out shardings, and is called (hence traced) inside
`axis_rules(mesh, rules)` so the model's `constrain` calls see the rules. The train split, the
step's rollout pool and every batch are split over the batch axes (data x fsdp) where divisible;
everything else (allocator state, RNG keys, metrics) is replicated.

Multi-host (`jax.distributed` initialised before the trainer is built): every process holds the
whole (small, built-in) dataset and runs the same loop; each global batch is built with
`jax.make_array_from_callback`, so a process transfers only the rows its own devices hold (its
shard). Only process 0 writes config.json, metrics, plots and summary.json; Orbax checkpoints are
written by all processes together (the workdir must be on a filesystem they share).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from adaptive_rl import models
from adaptive_rl.allocation.registry import build_allocator
from adaptive_rl.checkpoint import Checkpointer
from adaptive_rl.metrics import MetricsWriter, read_metrics, write_json
from adaptive_rl.parallel import (
    KV_CACHE_AXES,
    MemoryEstimateError,
    axis_rules,
    check_memory,
    device_memory_bytes,
    estimate_memory,
    make_mesh,
    named_sharding,
    param_shardings,
    replicated,
    sharded_init,
    state_shardings,
    validate_rules,
)
from adaptive_rl.rl.config import ConfigError, RunConfig
from adaptive_rl.rl.evaluation import evaluate, make_eval_fn
from adaptive_rl.rl.step import empty_pool, make_round_fns, make_train_step, sft_loss
from adaptive_rl.rl.train_state import OptimizerConfig, TrainState, new_counters
from adaptive_rl.sampling import Greedy, SamplerConfig, check_prompt_fits, make_strategy
from adaptive_rl.tasks.builtin import make_task


# Logical axes the model code names on activations (`constrain` calls); with the params' and the
# KV cache's axes, every one of these needs a rule.
_ACTIVATION_AXES = ("batch", "length", "embed", "heads", "kv_heads", "head_dim", "mlp")
_MIB = 1024 ** 2
# Copied from an HF base into a LoRA run's merged export, so the directory loads as is.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json")


class _InRules:
  """A jitted function that is always called inside `axis_rules(mesh, rules)`.

  `jax.jit` does not key its cache on the rules context, so a function first traced outside it
  would silently keep its unconstrained trace; entering the context on every call (cheap)
  makes every trace see the rules, whoever calls. Other attributes (`_cache_size`, `lower`)
  are the jitted function's.
  """

  def __init__(self, fn, mesh: Mesh, rules):
    self._fn, self._mesh, self._rules = fn, mesh, rules

  def __call__(self, *args, **kwargs):
    with axis_rules(self._mesh, self._rules):
      return self._fn(*args, **kwargs)

  def __getattr__(self, name):
    return getattr(self._fn, name)


# Config sections that only say how the run is laid out on devices (a resume may change them).
_LAYOUT_KEYS = ("mesh", "logical_axis_rules")


def _fetch(tree):
  """Host copies of (possibly batch-sharded, multi-host) arrays: the whole global value."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


class Preempted(RuntimeError):
  """Raised after a SIGTERM / SIGINT (or a multi-host preemption notice) once the checkpoint is
  written."""


class NumericalFailure(RuntimeError):
  """Too many consecutive non-finite updates."""


class WorkdirError(ConfigError):
  """The workdir cannot be used for outputs (not a directory, or not writable)."""


def check_workdir_writable(workdir: str) -> None:
  """Creates `workdir` if needed and proves it writable with a probe file.

  Raises `WorkdirError` naming the path and the cause, at launch, rather than a traceback from
  deep inside Orbax or a metrics writer at the first save.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"workdir {workdir} exists and is not a directory; pass a new or "
                       f"existing directory as --workdir")
  probe = os.path.join(workdir, f".write_probe.{jax.process_index()}.{os.getpid()}")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f"workdir {workdir} is not writable: {type(e).__name__}: {e}; pass a "
                       f"writable --workdir") from None


def resolve_reward_fn(spec: str, task) -> Any:
  """'' -> the task's `reward_text`; 'module:function' -> that function (imported)."""
  if not spec:
    return task.reward_text
  import importlib  # pylint: disable=import-outside-toplevel
  module, _, name = spec.partition(":")
  try:
    return getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError) as e:
    raise ConfigError(f"reward.fn={spec!r} could not be imported: {e}") from None


class Trainer:
  """Builds everything a run needs from a `RunConfig` and runs it in `workdir`."""

  def __init__(self, run: RunConfig, workdir: str):
    self.run_cfg = run
    self.workdir = os.path.abspath(workdir)
    self.is_main = jax.process_index() == 0
    rl = run.rl
    self.mesh = self._make_mesh()
    try:
      self.task = make_task(run.task_name, **dict(run.task_settings))
    except (TypeError, ValueError) as e:
      raise ConfigError(f"config.task: {e}") from None
    self.tokenizer = self.task.tokenizer
    self.train_data = self.task.split("train")
    self.test_data = self.task.split("test")
    self.max_new = rl.max_new_tokens or self.task.max_completion_len
    self.model_cfg = self._model_config()
    check_prompt_fits(self.model_cfg, self.train_data.prompts.shape[1], self.max_new)
    if self.tokenizer.vocab_size > self.model_cfg.vocab_size:
      raise ConfigError(f"tokenizer vocabulary {self.tokenizer.vocab_size} exceeds the model's "
                        f"vocab_size {self.model_cfg.vocab_size}")
    self.lora_cfg = run.lora.config()  # None: full fine-tuning
    self.lora_axes = None
    if self.lora_cfg is not None:
      try:
        self.lora_axes = models.lora.lora_axes(self.model_cfg, self.lora_cfg)
      except ValueError as e:
        raise ConfigError(f"config.lora.targets: {e}") from None
    try:
      self.rules = validate_rules(
          run.logical_axis_rules,
          (models.param_axes(self.model_cfg), _ACTIVATION_AXES, tuple(KV_CACHE_AXES.values()),
           self.lora_axes or {}),
          self.mesh)
    except ValueError as e:
      raise ConfigError(f"config.logical_axis_rules: {e}") from None
    try:
      self.allocator = build_allocator(
          dict(run.allocator), batch_prompts=rl.batch_prompts, group_size=rl.group_size,
          tau=rl.tau, adv_estimator=rl.adv_estimator, adv_clip=rl.adv_clip or None)
    except ValueError as e:
      raise ConfigError(f"config.allocator: {e}") from None
    self.step_cfg = rl.step(self.max_new)
    pool_rows = self.allocator.pool_rows
    train_rows = self.allocator.train_rows
    if train_rows % (rl.mini_batches * rl.micro_batches):
      raise ConfigError(
          f"rl.mini_batches * rl.micro_batches = {rl.mini_batches * rl.micro_batches} must "
          f"divide the {train_rows} training rows per step")
    candidates = self.allocator.select.candidates_per_step()
    if candidates > self.train_data.size:
      raise ConfigError(
          f"allocator {self.allocator.name!r} draws {candidates} candidate prompts per step "
          f"(rl.batch_prompts={rl.batch_prompts}), more than the train split's "
          f"{self.train_data.size}")
    self.memory = self._check_memory(train_rows)
    self.tx = rl.optimizer().make()
    strategy = make_strategy(rl.temperature, rl.top_k, rl.top_p)
    eos = (self.tokenizer.eos_id,)
    pad = self.tokenizer.pad_id
    self.sampler_cfg = SamplerConfig(self.max_new, eos, pad, strategy)
    self.eval_sampler_cfg = SamplerConfig(self.max_new, eos, pad, Greedy())
    self._build_shardings(pool_rows)
    self.data = self._put_batch({k: getattr(self.train_data, k)
                                 for k in ("prompts", "prompt_lengths", "targets")})
    self._build_fns()
    self._stop_signal: int | None = None
    self._preemption_notice = False  # the stop came from the preemption sync point
    self.state: TrainState | None = None  # the final state after `run()`

  # --- construction --------------------------------------------------------------------------

  def _make_mesh(self) -> Mesh:
    """The mesh of `config.mesh` over all devices (or the first `mesh.num_devices`)."""
    m = self.run_cfg.mesh
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

  def _model_config(self) -> models.ModelConfig:
    m = self.run_cfg.model
    overrides = dict(m.overrides)
    if m.hf_path:
      return models.from_hf(m.hf_path, **overrides)[0]
    overrides.setdefault("vocab_size", self.tokenizer.vocab_size)
    overrides.setdefault("max_seq_len", self.train_data.prompts.shape[1] + self.max_new)
    try:
      return models.get_preset(m.preset, **overrides)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"config.model: {e}") from None

  def _check_memory(self, train_rows: int) -> dict[str, int]:
    """The per-device memory estimate of an RL step; fails when it cannot fit the device."""
    rl = self.run_cfg.rl
    seq = self.train_data.prompts.shape[1] + self.max_new
    est = estimate_memory(
        self.model_cfg, batch=train_rows // rl.mini_batches, seq_len=seq,
        completion_len=self.max_new, mesh=self.mesh, rules=self.rules,
        logprob_chunk=rl.logprob_chunk, micro_batches=rl.micro_batches,
        ref_params=self.step_cfg.needs_ref, sample_batch=self.allocator.budget.num_slots,
        sample_len=seq, lora=self.lora_cfg is not None,
        lora_rank=self.lora_cfg.rank if self.lora_cfg else 16)
    try:  # device_memory_bytes() is None on CPU, where the check is skipped
      check_memory(est, device_memory_bytes())
    except MemoryEstimateError as e:
      raise ConfigError(f"the run does not fit in device memory: {e}") from None
    return est

  def _build_shardings(self, pool_rows: int):
    mesh = self.mesh
    self.repl = replicated(mesh)
    abstract_params = jax.eval_shape(functools.partial(models.init, self.model_cfg),
                                     jax.random.PRNGKey(0))
    self.abstract_params = abstract_params
    self.param_sh = param_shardings(mesh, models.param_axes(self.model_cfg), self.rules,
                                    abstract_params)
    # What the optimizer trains: the params, or with LoRA the adapters (the base then rides
    # beside the state as a non-donated argument, sharded like the params: `base_sh`).
    self.base_sh, self.policy_sh = None, self.param_sh
    abstract_trained, self.trained_sh = abstract_params, self.param_sh
    if self.lora_cfg is not None:
      abstract_trained = jax.eval_shape(functools.partial(
          models.lora.init_lora, self.model_cfg, abstract_params, self.lora_cfg),
          jax.random.PRNGKey(0))
      self.trained_sh = param_shardings(mesh, self.lora_axes, self.rules, abstract_trained)
      self.base_sh = self.param_sh
      self.policy_sh = models.AdaptedParams(self.param_sh, self.trained_sh, self.lora_cfg.scale)
    self.abstract_trained = abstract_trained
    sft_adapters = abstract_trained if self.lora_cfg is not None else None
    abstract = jax.eval_shape(self._make_state, abstract_trained, sft_adapters)
    self.state_sh = state_shardings(abstract, abstract_trained, self.trained_sh, mesh)
    self.abstract_state = jax.tree.map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract,
        self.state_sh)
    p = self.train_data.prompts.shape[1]
    self.pool_sh = jax.tree.map(lambda a: self._batch_sharding(a.shape),
                                jax.eval_shape(lambda: empty_pool(pool_rows, p, self.max_new)))

  def _batch_sharding(self, shape) -> NamedSharding:
    """Leading dimension over the batch axes (data x fsdp), dropping axes that do not divide."""
    axes = ("batch",) + (None,) * (len(shape) - 1) if len(shape) else ()
    return named_sharding(self.mesh, axes, self.rules, tuple(shape))

  def _put(self, x, sharding: NamedSharding) -> jax.Array:
    """A global array from a value every process holds in full (numpy or a local array).

    Each process transfers only the slices its own devices hold, so in a multi-host run this
    is how a process "reads its shard" of a batch all processes can compute.
    """
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  def _put_batch(self, tree):
    return jax.tree.map(lambda x: self._put(x, self._batch_sharding(np.shape(x))), tree)

  def _jit(self, fn, **kwargs) -> _InRules:
    return _InRules(jax.jit(fn, **kwargs), self.mesh, self.rules)

  def _init_params(self, key):
    """Params created (random init) or placed (HF checkpoint) directly in their shardings."""
    m = self.run_cfg.model
    if m.hf_path:
      return jax.tree.map(self._put, self._load_hf_on_host(), self.param_sh)
    init = functools.partial(models.init, self.model_cfg, init_std=m.init_std)
    with axis_rules(self.mesh, self.rules):
      return sharded_init(init, self.mesh, self.param_sh, self._put(key, self.repl))

  def _load_hf_on_host(self):
    """The checkpoint's params as host (CPU) arrays, so no accelerator holds them unsharded."""
    m = self.run_cfg.model
    try:
      cpu = jax.local_devices(backend="cpu")[0]
    except RuntimeError:  # no CPU backend enabled: load on the default device
      return models.from_hf(m.hf_path, **dict(m.overrides))[1]
    with jax.default_device(cpu):
      return models.from_hf(m.hf_path, **dict(m.overrides))[1]

  @property
  def host_rewards(self) -> bool:
    """Rewards scored on the host: asked for, or the task has no in-graph reward."""
    return (self.run_cfg.reward.mode == "host"
            or not getattr(self.task, "has_graph_reward", True))

  def _build_fns(self):
    host = self.host_rewards
    repl, state_sh, pool_sh = self.repl, self.state_sh, self.pool_sh
    data_sh = jax.tree.map(lambda x: x.sharding, self.data)
    sample_round, finish_round = make_round_fns(
        self.model_cfg, self.sampler_cfg, self.allocator, None if host else self.task.reward)
    # (params, pool, round_state, budget_state, ids, data, round_idx, rng) -> (pool, plan)
    self._sample_round = self._jit(
        sample_round,
        in_shardings=(self.policy_sh, pool_sh, repl, repl, repl, data_sh, repl, repl),
        out_shardings=(pool_sh, repl), donate_argnums=(1,))
    # (pool, round_state, plan, round_idx, host_rewards) -> (pool, round_state, done)
    self._finish_round = self._jit(
        finish_round, in_shardings=(pool_sh, repl, repl, repl, repl),
        out_shardings=(pool_sh, repl, repl), donate_argnums=(0,))
    self._host_runner = None
    if host:
      from adaptive_rl.tasks.host_reward import HostRewardRunner  # pylint: disable=import-outside-toplevel
      r = self.run_cfg.reward
      self._host_runner = HostRewardRunner(resolve_reward_fn(r.fn, self.task),
                                           timeout_s=r.timeout_s, max_workers=r.workers)
    # (state, pool, ids, rounds_used, reward_failures[, base]) -> (state, metrics, samples per
    # prompt); with LoRA the frozen base is a sixth argument, read in place (never donated).
    lora = self.lora_cfg
    self._train_step = self._jit(
        make_train_step(self.model_cfg, self.step_cfg, self.allocator, self.tx,
                        lora_scale=lora.scale if lora else None),
        in_shardings=(state_sh, pool_sh, repl, repl, repl) + ((self.base_sh,) if lora else ()),
        out_shardings=(state_sh, repl, repl), donate_argnums=(0,))
    if lora:  # base + adapters, written into the base's buffers (a one-off: post-SFT, resume)
      self._merge = self._jit(functools.partial(models.lora.merge, config=lora),
                              in_shardings=(self.param_sh, self.trained_sh),
                              out_shardings=self.param_sh, donate_argnums=(0,))
    p = self.train_data.prompts.shape[1]
    allocator = self.allocator
    pool_rows = allocator.pool_rows

    def begin(state: TrainState):
      rng, k_sel, k_round = jax.random.split(state.rng, 3)
      alloc, ids = allocator.choose(state.alloc, k_sel)
      round_state = allocator.budget.start(alloc["budget"], ids)
      pool = empty_pool(pool_rows, p, self.max_new)
      return state.replace(alloc=alloc, rng=rng), ids, round_state, pool, k_round

    self._begin = self._jit(begin, in_shardings=(state_sh,),
                            out_shardings=(state_sh, repl, repl, pool_sh, repl),
                            donate_argnums=(0,))
    self._make_state_fn = self._jit(self._make_state, in_shardings=(
        self.trained_sh, self.trained_sh if lora else None), out_shardings=state_sh)
    # Held-out batches are placed by `_eval_fn`; results come back replicated (host-readable on
    # every process).
    eval_jit = self._jit(make_eval_fn(self.model_cfg, self.eval_sampler_cfg,
                                      None if host else self.task.reward), out_shardings=repl)

    def eval_fn(params, prompts, prompt_lengths, targets, rng):
      return eval_jit(params, *self._put_batch((prompts, prompt_lengths, targets)),
                      self._put(rng, repl))

    self._eval_fn = eval_fn

  # --- state ---------------------------------------------------------------------------------

  def _make_state(self, params, sft_adapters=None) -> TrainState:
    key = jax.random.PRNGKey(self.run_cfg.seed)
    k_alloc, k_run = jax.random.split(jax.random.fold_in(key, 1))
    # Leaves must be distinct buffers: the step donates the state, and donating one buffer
    # twice (params shared with ref_params, or an init that reuses one array) is an error.
    # (Under jit an output that is an unchanged input is returned as that very buffer.)
    copy = lambda tree: jax.tree.map(lambda x: jnp.array(x, copy=True), tree)
    ref = copy(params) if self.step_cfg.needs_ref and self.lora_cfg is None else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), ref_params=ref,
                      alloc=copy(self.allocator.init(self.train_data.size, k_alloc)), rng=k_run,
                      counters=copy(new_counters()), sft_adapters=copy(sft_adapters))

  def init_state(self, params) -> TrainState:
    """The initial train state around `params`, created in the state's shardings.

    With LoRA, `params` become the frozen base (`self.base_params`: the policy's start and the
    KL reference) and the state trains fresh adapters (B = 0, so the policy starts as the
    base). The base must be what `_rebuild_base` gives back on resume: the model's init / HF
    weights with `sft_adapters` merged in (B = 0 adapters, an exact no-op, without SFT).
    """
    if self.lora_cfg is None:
      return self._make_state_fn(params, None)
    self.base_params = params
    key = jax.random.fold_in(jax.random.PRNGKey(self.run_cfg.seed), 3)
    sft_adapters = getattr(self, "sft_adapters", None)
    if sft_adapters is None:
      sft_adapters = self._init_adapters(jax.random.fold_in(key, 1))
    return self._make_state_fn(self._init_adapters(key), sft_adapters)

  def _init_adapters(self, key):
    """Fresh LoRA adapters (A random, B = 0) created in their shardings."""
    init = functools.partial(models.lora.init_lora, self.model_cfg, self.abstract_params,
                             self.lora_cfg)
    with axis_rules(self.mesh, self.rules):
      return sharded_init(init, self.mesh, self.trained_sh, self._put(key, self.repl))

  def _rebuild_base(self, state: TrainState):
    """LoRA: sets `self.base_params` to the model's init / HF weights + the state's merged-in
    SFT adapters (what `init_state` was given), so the base itself is never checkpointed."""
    if self.lora_cfg is None:
      return
    key = jax.random.PRNGKey(self.run_cfg.seed)
    self.base_params = self._merge(self._init_params(jax.random.fold_in(key, 0)),
                                   state.sft_adapters)

  def policy(self, params) -> Any:
    """What samples and is evaluated: `params` (a state's), or with LoRA the frozen base with
    these adapters, applied unmerged (`models.AdaptedParams`)."""
    if self.lora_cfg is None:
      return params
    return models.lora.adapted(self.base_params, params, self.lora_cfg)

  def export_hf(self, params, out_dir: str):
    """Writes the policy of `params` (a state's) as a transformers checkpoint directory; with
    LoRA the base and adapters merged (`models.lora.export_merged`), loadable without PEFT.
    The tokenizer files of an HF base are copied along. Collective: call on every process."""
    if self.lora_cfg is None:
      base, adapters = _fetch(params), None
    else:
      base, adapters = _fetch((self.base_params, params))
    if not self.is_main:
      return
    if adapters is None:
      models.to_hf(self.model_cfg, base, out_dir)
    else:
      models.lora.export_merged(self.model_cfg, base, adapters, self.lora_cfg, out_dir)
    src = self.run_cfg.model.hf_path
    for name in _TOKENIZER_FILES:
      if src and os.path.exists(os.path.join(src, name)):
        shutil.copy(os.path.join(src, name), os.path.join(out_dir, name))

  def restore_state(self, step: int | None = None) -> TrainState:
    """The train state of checkpoint `step` (default: latest) of this trainer's workdir, placed
    in this trainer's shardings (which may differ from those it was saved with)."""
    ckpt = Checkpointer(self.workdir)
    try:
      state = ckpt.restore(step, self._abstract_state())[0]
    finally:
      ckpt.close()
    self._rebuild_base(state)
    return state

  def _abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of the train state (what a restore fills in)."""
    return self.abstract_state

  # --- SFT -----------------------------------------------------------------------------------

  def sft(self, params, key) -> Any:
    """Supervised warm start of `params` on the task's demonstrations; returns the new params.

    With LoRA only adapters are trained here too (the run never holds a full-size gradient or
    optimizer state), and they are then merged into the base once: the returned params are the
    frozen base of the RL phase, so the RL policy starts from it and the KL reference is the
    SFT'd model, as in full fine-tuning. The SFT adapters are kept (`self.sft_adapters`, then in
    the train state) so that a resume rebuilds the base without it ever being checkpointed.
    """
    cfg = self.run_cfg.sft
    self.sft_adapters = None
    if not cfg.steps:
      return params
    d = self.train_data
    rows = np.nonzero(d.has_demo)[0]
    if not rows.size:
      raise ConfigError(f"sft.steps={cfg.steps} but task {self.task.name!r} has no demonstrations")
    demo_len = (d.demos != self.tokenizer.pad_id).sum(1).astype(np.int32)
    data = self._put_batch({"prompts": d.prompts, "prompt_lengths": d.prompt_lengths,
                            "demos": d.demos, "demo_len": demo_len})
    tx = OptimizerConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                         decay="cosine", min_lr_ratio=0.1, weight_decay=cfg.weight_decay).make()
    lora, base = self.lora_cfg, None
    if lora is not None:  # train adapters on the (not donated) base
      base, params = params, self._init_adapters(jax.random.fold_in(key, 1))
    train_sh = self.trained_sh
    opt_sh = state_shardings(jax.eval_shape(tx.init, params), params, train_sh, self.mesh)
    opt = self._jit(tx.init, in_shardings=(train_sh,), out_shardings=opt_sh)(params)
    mc = self.model_cfg

    def step(params, opt, base, data, idx):
      def loss_fn(p):
        policy = p if lora is None else models.lora.adapted(base, p, lora)
        return sft_loss(mc, policy, data["prompts"][idx], data["prompt_lengths"][idx],
                        data["demos"][idx], data["demo_len"][idx], jnp.ones(idx.shape))

      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt = tx.update(grads, opt, params)
      return optax.apply_updates(params, updates), opt, loss

    idx_sh = self._batch_sharding((cfg.batch_size,))
    step = self._jit(step, in_shardings=(train_sh, opt_sh, self.base_sh, jax.tree.map(
        lambda x: x.sharding, data), idx_sh), out_shardings=(train_sh, opt_sh, self.repl),
                     donate_argnums=(0, 1))
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    for _ in range(cfg.steps):
      idx = rng.choice(rows, size=cfg.batch_size, replace=rows.size < cfg.batch_size)
      params, opt, loss = step(params, opt, base, data, self._put(idx.astype(np.int32), idx_sh))
    self.sft_final_loss = float(loss)
    if lora is None:
      return params
    self.sft_adapters = params
    return self._merge(base, params)

  def eval_accuracy(self, params, tag: int = 0) -> dict[str, Any]:
    e = self.run_cfg.eval
    host = self.host_score(self.test_data) if self._host_runner is not None else None
    return evaluate(self._eval_fn, params, self.test_data, e.batch_size,
                    jax.random.PRNGKey(tag), limit=e.limit, host_score=host)

  def host_score(self, data):
    """(tokens, lengths, rows) -> rewards of `data`'s rows, scored by the host reward runner
    (process 0 scores, every process gets the result)."""

    def score(tokens, lengths, rows):
      rewards = np.zeros(len(rows), np.float32)
      if self.is_main:
        texts, answers, where = [], [], []
        for i, row in enumerate(rows):
          text = self.task.decode_completion(tokens[i], lengths[i])
          if text is not None:
            texts.append(text)
            answers.append(data.answers[int(row)])
            where.append(i)
        if texts:
          rewards[where] = self._host_runner(texts, answers).rewards
      if jax.process_count() > 1:
        rewards = multihost_utils.broadcast_one_to_all(rewards)
      return np.asarray(rewards)

    return score

  # --- signals -------------------------------------------------------------------------------

  def _install_signal_handlers(self):
    def handler(signum, frame):
      del frame
      self._stop_signal = signum

    self._old_handlers = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old_handlers[sig] = signal.signal(sig, handler)
      except ValueError:  # not the main thread (e.g. inside a notebook worker)
        pass

  def _restore_signal_handlers(self):
    for sig, old in getattr(self, "_old_handlers", {}).items():
      signal.signal(sig, old)

  # --- main loop -----------------------------------------------------------------------------

  def _check_workdir(self):
    check_workdir_writable(self.workdir)
    path = os.path.join(self.workdir, "config.json")
    raw = json.loads(json.dumps(self.run_cfg.raw, default=str))
    force = bool(raw.pop("force", False))
    old = None
    if os.path.exists(path):
      with open(path) as f:
        old = json.load(f)
      old.pop("force", None)
      # A run may resume on another mesh (e.g. a larger slice): the layout is not the math.
      same = lambda a, b: ({k: v for k, v in a.items() if k not in _LAYOUT_KEYS}
                           == {k: v for k, v in b.items() if k not in _LAYOUT_KEYS})
      if not same(old, raw) and not force:
        changed = sorted(k for k in set(old) | set(raw)
                         if old.get(k) != raw.get(k) and k not in _LAYOUT_KEYS)
        raise ConfigError(
            f"workdir {self.workdir} holds a run with a different config (sections differing: "
            f"{changed}); use a new workdir, or --config.force=True to resume it anyway")
    if jax.process_count() > 1:  # every process reads config.json before process 0 rewrites it
      multihost_utils.sync_global_devices("adaptive_rl:check_workdir")
    if old != raw and self.is_main:
      write_json(path, raw)

  def _log(self, message: str):
    if self.is_main:
      print(message, flush=True)

  def _stop_requested(self, ckpt: Checkpointer | None = None, step: int = 0) -> bool:
    """Whether to checkpoint and stop: any process got SIGTERM / SIGINT (all processes must
    agree to stop together), or `step` is JAX's preemption sync point (multi-host runs with
    `jax.distributed`, e.g. a TPU maintenance notice; every process sees it at the same step).
    """
    if ckpt is not None and self._stop_signal is None and ckpt.reached_preemption(step):
      self._preemption_notice = True
      self._stop_signal = int(signal.SIGTERM)  # stop exactly as on SIGTERM
    stop = self._stop_signal is not None
    if jax.process_count() > 1:
      flags = multihost_utils.process_allgather(np.int32(self._stop_signal or 0))
      signals = [int(f) for f in np.ravel(flags) if f]
      if signals and self._stop_signal is None:
        self._stop_signal = signals[0]
      stop = bool(signals)
    return stop

  def _describe_memory(self) -> str:
    m, mesh = self.memory, dict(self.mesh.shape)
    return (f"Mesh {mesh} over {self.mesh.size} device(s), {jax.process_count()} process(es); "
            f"estimated memory per device: peak {m['peak'] / _MIB:.1f} MiB (train "
            f"{m['train_total'] / _MIB:.1f}, sample {m['sample_total'] / _MIB:.1f}; params "
            f"{m['params'] / _MIB:.1f}, optimizer {m['optimizer'] / _MIB:.1f}, activations "
            f"{m['activations'] / _MIB:.1f}, kv cache {m['kv_cache'] / _MIB:.1f})")

  def run(self) -> dict[str, Any]:
    """Trains (or resumes) to the configured number of steps; returns the summary."""
    run = self.run_cfg
    self._check_workdir()
    ckpt = Checkpointer(self.workdir, keep=run.checkpoint.keep,
                        keep_every=run.checkpoint.keep_every or None)
    self._log(self._describe_memory())
    t0 = time.time()
    if ckpt.latest_step() is not None:
      # The latest step that restores: damaged newer ones are warned about and set aside, and
      # the steps after the restored one are trained (and their metrics written) again.
      state, meta = ckpt.restore(None, self._abstract_state())
      if ckpt.skipped_steps:
        moved = ckpt.set_aside(ckpt.skipped_steps)
        self._log(f"Checkpoint step(s) {ckpt.skipped_steps} could not be restored (see the "
                  f"warnings above); moved to {moved or 'checkpoints_unreadable'}")
      self._rebuild_base(state)
      elapsed0 = float(meta["wall_time_s"])
      sft_acc = float(meta["sft_accuracy"])
      sft_time = float(meta["sft_time_s"])
      self._log(f"Resuming from checkpoint step {ckpt.restored_step} in {self.workdir}")
    else:
      key = jax.random.PRNGKey(run.seed)
      params = self._init_params(jax.random.fold_in(key, 0))
      params = self.sft(params, jax.random.fold_in(key, 2))
      sft_time = time.time() - t0
      state = self.init_state(params)
      # (LoRA: the base with the fresh B = 0 adapters, so the eval compiles once for the run.)
      sft_acc = self.eval_accuracy(self.policy(state.params))["accuracy"]
      self._log(f"SFT warm start: held-out accuracy {sft_acc:.3f} ({sft_time:.1f} s)")
      elapsed0 = 0.0
      ckpt.save(0, state, self._meta(0, sft_acc, sft_time, time.time() - t0))
    start_step = int(state.step)
    writer = MetricsWriter(self.workdir, resume_step=start_step,
                           tensorboard=run.log.tensorboard, enabled=self.is_main)
    self._install_signal_handlers()
    samples_hist = np.zeros(0, np.int64)  # [k] = prompts given k samples (bounded size)
    pending = None
    progress = None
    if run.log.progress and self.is_main:
      from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
      progress = tqdm(total=run.rl.steps, initial=start_step, desc="RL", dynamic_ncols=True)
    last_eval: dict[str, Any] = {}
    step_t = time.time()
    try:
      for step in range(start_step, run.rl.steps):
        state, ids, round_state, pool, k_round = self._begin(state)
        rounds = 0
        failures = 0
        budget = self.allocator.budget
        for r in range(budget.max_rounds):
          pool, plan = self._sample_round(
              self.policy(state.params), pool, round_state, state.alloc["budget"], ids,
              self.data, np.int32(r), jax.random.fold_in(k_round, r))
          host_rewards = None
          if self._host_runner is not None:
            host_rewards, failed = self._host_rewards(pool, ids, plan, r)
            failures += failed
          pool, round_state, done = self._finish_round(pool, round_state, plan, np.int32(r),
                                                       host_rewards)
          rounds += 1
          if budget.max_rounds > 1 and r + 1 < budget.max_rounds and bool(done):
            break
        state, metrics, counts = self._train_step(
            state, pool, ids, np.int32(rounds), np.int32(failures),
            *(() if self.lora_cfg is None else (self.base_params,)))
        if pending is not None:  # fetch the previous step's metrics one step behind
          samples_hist = self._emit(writer, progress, *pending, samples_hist)
        now = time.time()
        pending = (step + 1, metrics, counts, now - step_t, {})
        step_t = now
        done_steps = step + 1
        if run.eval.every and done_steps % run.eval.every == 0 and done_steps < run.rl.steps:
          last_eval = self.eval_accuracy(self.policy(state.params), done_steps)
          pending[4].update({f"eval_{k}": v for k, v in last_eval.items()})
        if int(state.counters["consecutive_nan_skips"]) >= run.rl.max_consecutive_nan:
          samples_hist = self._emit(writer, progress, *pending, samples_hist)
          pending = None
          raise NumericalFailure(
              f"{int(state.counters['consecutive_nan_skips'])} consecutive updates had a "
              f"non-finite loss or gradient (step {done_steps}); stopping with the last good "
              f"state checkpointed")
        if self._stop_requested(ckpt, done_steps):
          break
        if run.checkpoint.every and done_steps % run.checkpoint.every == 0:
          ckpt.save(done_steps, state, self._meta(done_steps, sft_acc, sft_time,
                                                  elapsed0 + time.time() - t0))
      if pending is not None:
        samples_hist = self._emit(writer, progress, *pending, samples_hist)
        pending = None
    except NumericalFailure:
      ckpt.save(int(state.step), state, self._meta(int(state.step), sft_acc, sft_time,
                                                   elapsed0 + time.time() - t0))
      ckpt.close()
      writer.close()
      raise
    finally:
      if progress is not None:
        progress.close()
      self._restore_signal_handlers()
      self.close()
    wall = elapsed0 + time.time() - t0
    self.state = state
    final_step = int(state.step)
    if self._stop_signal is not None:
      ckpt.save(final_step, state, self._meta(final_step, sft_acc, sft_time, wall))
      ckpt.close()
      writer.close()
      name = ("a preemption notice" if self._preemption_notice
              else signal.Signals(self._stop_signal).name)
      raise Preempted(f"received {name}: checkpointed step {final_step} in {self.workdir}; "
                      f"run the same command again to resume")
    final = self.eval_accuracy(self.policy(state.params), final_step)
    ckpt.save(final_step, state, self._meta(final_step, sft_acc, sft_time, wall))
    ckpt.close()
    if self.lora_cfg is not None:  # the checkpoint holds only adapters: write the whole model
      self.export_hf(state.params, os.path.join(self.workdir, "merged_hf"))
    # Only process 0 writes metrics.jsonl; the others' summaries (returned, not written) lack
    # the figures read from it.
    records = read_metrics(self.workdir) if self.is_main else []
    summary = {
        "sft_accuracy": sft_acc, "final_accuracy": final["accuracy"],
        "final_eval": final, "steps": final_step,
        "rollouts": int(state.counters["rollouts"]),
        "tokens_generated": int(state.counters["tokens_generated"]),
        "nan_skips": int(state.counters["nan_skips"]),
        "wall_time_s": wall, "sft_time_s": sft_time,
        "model_params": self.model_cfg.num_params(),
        "trainable_params": models.lora.count_params(state.params),
        "last_loss": records[-1].get("loss") if records else None,
        "config": self.run_cfg.raw,
    }
    if self.is_main:
      write_json(os.path.join(self.workdir, "summary.json"), summary)
      if run.log.plots:
        from adaptive_rl.plots import plot_run  # pylint: disable=import-outside-toplevel
        records.append({"step": final_step, "rollouts": summary["rollouts"],
                        "eval_accuracy": final["accuracy"]})
        records.insert(0, {"step": 0, "rollouts": 0, "eval_accuracy": sft_acc})
        plot_run(records, os.path.join(self.workdir, "plots"), samples_hist)
    writer.close()
    self._log(f"Held-out accuracy: SFT {sft_acc:.3f} -> RL {final['accuracy']:.3f} after "
              f"{summary['rollouts']} rollouts, {wall:.0f} s")
    return summary

  def _host_rewards(self, pool, ids, plan, round_idx: int):
    """Decodes one round's completions and scores them with the host reward function.

    Multi-host: process 0 scores and broadcasts, so every process feeds the step the same
    rewards (timeouts are not deterministic, so scoring everywhere could disagree).
    """
    s = self.allocator.budget.num_slots
    sl = slice(round_idx * s, (round_idx + 1) * s)
    tokens, lengths, slot_prompt, slot_valid, ids = _fetch(
        (pool.completions[sl], pool.lengths[sl], plan.slot_prompt, plan.slot_valid, ids))
    rewards, failed = np.zeros(s, np.float32), np.int32(0)
    if self.is_main:
      rows = ids[slot_prompt]
      texts, answers, where = [], [], []
      for i in range(s):
        if not slot_valid[i]:
          continue
        text = self.task.decode_completion(tokens[i], lengths[i])
        if text is None:  # no eos: nothing to score
          continue
        texts.append(text)
        answers.append(self.train_data.answers[rows[i]])
        where.append(i)
      if texts:
        result = self._host_runner(texts, answers)
        rewards[where] = result.rewards
        failed = np.int32(result.errors + result.timeouts)
    if jax.process_count() > 1:
      rewards, failed = multihost_utils.broadcast_one_to_all((rewards, failed))
    return np.asarray(rewards), int(failed)

  def close(self):
    if self._host_runner is not None:
      self._host_runner.close()

  def _meta(self, step, sft_acc, sft_time, wall) -> dict[str, Any]:
    return {"step": int(step), "sft_accuracy": float(sft_acc), "sft_time_s": float(sft_time),
            "wall_time_s": float(wall)}

  def _emit(self, writer, progress, step, metrics, counts, step_time, extra, samples_hist):
    metrics, counts = jax.device_get((metrics, counts))
    rec = {k: (float(v) if np.ndim(v) == 0 else v) for k, v in metrics.items()
           if not k.startswith("total/")}
    rec.update(rollouts=int(metrics["total/rollouts"]),
               tokens_generated=int(metrics["total/tokens_generated"]),
               nan_skips=int(metrics["total/nan_skips"]),
               reward_errors=int(metrics["total/reward_errors"]), step_time_s=step_time,
               samples_per_second=float(metrics["rollouts_step"]) / max(step_time, 1e-9))
    rec.update(extra)
    writer.write(step, rec)
    if progress is not None:
      post = {"reward": f"{rec['reward_mean']:.3f}", "eff": f"{rec['effective_ratio']:.2f}"}
      if "eval_accuracy" in rec:
        post["held_out"] = f"{rec['eval_accuracy']:.3f}"
      progress.set_postfix(post)
      progress.update(1)
    # A histogram, not the raw counts: appending every step's counts grew without bound.
    step_hist = np.bincount(np.asarray(counts).ravel().astype(np.int64),
                            minlength=samples_hist.size)
    samples_hist = np.pad(samples_hist, (0, step_hist.size - samples_hist.size))
    return samples_hist + step_hist
