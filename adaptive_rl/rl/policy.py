"""The policy of a run: what the optimizer trains, and (LoRA) the frozen base beside it.

  policy = make_policy(run, layout)            # FullPolicy or LoraPolicy, one interface
  state = policy.start(warm_start)             # init -> SFT warm start -> the RL train state
  policy.restore(state)                        # after a checkpoint restore
  params = policy.sampling(state.params)       # what samples / is evaluated
  policy.export_hf(state.params, out_dir)      # a plain transformers checkpoint

Full fine-tuning trains the params; the KL reference is a copy of the post-SFT params. LoRA
trains adapters on a frozen base: the SFT warm start trains adapters too and merges them into
the base once (the RL policy starts from, and is regularised towards, the SFT'd model); those
SFT adapters ride in the train state so a resume rebuilds the base from the model's init / HF
weights without checkpointing it, and the base itself is the KL reference.
"""

from __future__ import annotations

import functools
import os
import shutil
from typing import Any, Callable

import jax
import jax.numpy as jnp

from adaptive_rl import models
from adaptive_rl.parallel import sharded_init
from adaptive_rl.rl.layout import Layout, fetch
from adaptive_rl.rl.train_state import TrainState, new_counters

# Copied from an HF base into an export, so the directory loads as is.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json")

# (trained, base, key) -> trained, or None when no warm start ran: the SFT warm start
# (`rl.sft.WarmStart`).
WarmStart = Callable[[Any, Any, jax.Array], Any]


def make_state(run, trained, sft_adapters=None) -> TrainState:
  """The initial train state around `trained` (pure; jitted with the state's shardings)."""
  key = jax.random.PRNGKey(run.config.seed)
  k_alloc, k_run = jax.random.split(jax.random.fold_in(key, 1))
  # Leaves must be distinct buffers: the step donates the state, and donating one buffer
  # twice (params shared with ref_params, or an init that reuses one array) is an error.
  # (Under jit an output that is an unchanged input is returned as that very buffer.)
  copy = lambda tree: jax.tree.map(lambda x: jnp.array(x, copy=True), tree)
  ref = copy(trained) if run.step_cfg.needs_ref and run.lora_cfg is None else None
  return TrainState(step=jnp.zeros((), jnp.int32), params=trained,
                    opt_state=run.tx.init(trained), ref_params=ref,
                    alloc=copy(run.allocator.init(run.train_data.size, k_alloc)), rng=k_run,
                    counters=copy(new_counters()), sft_adapters=copy(sft_adapters))


class FullPolicy:
  """Full fine-tuning: the state's params are the whole policy."""

  lora_scale = None

  def __init__(self, run, layout: Layout):
    self.run, self.layout = run, layout
    self.key = jax.random.PRNGKey(run.config.seed)
    self._make_state = layout.jit(functools.partial(make_state, run),
                                  in_shardings=(layout.trained_sh, self._sft_sharding()),
                                  out_shardings=layout.state_sh)

  def _sft_sharding(self):
    return None

  @property
  def base(self):
    """The frozen base the step reads beside the state (None: there is none)."""
    return None

  def init_params(self, key: jax.Array):
    """Params created (random init) or placed (HF checkpoint) directly in their shardings."""
    m, layout = self.run.config.model, self.layout
    if m.hf_path:
      return jax.tree.map(layout.put, _load_hf_on_host(m), layout.param_sh)
    init = functools.partial(models.init, self.run.model_cfg, init_std=m.init_std)
    with layout.rules_context():
      return sharded_init(init, layout.mesh, layout.param_sh, layout.put(key, layout.repl))

  def start(self, warm_start: WarmStart) -> TrainState:
    """Init -> warm start -> the RL phase's initial train state."""
    params = self.init_params(jax.random.fold_in(self.key, 0))
    trained = warm_start(params, None, jax.random.fold_in(self.key, 2))
    return self._make_state(params if trained is None else trained, None)

  def restore(self, state: TrainState) -> None:
    """Rebuilds what the checkpoint does not hold (nothing for full fine-tuning)."""
    del state

  def sampling(self, trained):
    """What samples and is evaluated."""
    return trained

  def export_hf(self, trained, out_dir: str) -> None:
    """Writes the policy as a transformers checkpoint directory (collective: every process)."""
    params = fetch(trained)
    if jax.process_index() == 0:
      models.to_hf(self.run.model_cfg, params, out_dir)
      self._copy_tokenizer(out_dir)

  def _copy_tokenizer(self, out_dir: str) -> None:
    src = self.run.config.model.hf_path
    for name in TOKENIZER_FILES:
      if src and os.path.exists(os.path.join(src, name)):
        shutil.copy(os.path.join(src, name), os.path.join(out_dir, name))


class LoraPolicy(FullPolicy):
  """LoRA: the state trains adapters; the frozen base (post-SFT) is held here."""

  def __init__(self, run, layout: Layout):
    self.lora = run.lora_cfg
    self.lora_scale = self.lora.scale
    super().__init__(run, layout)
    self._base = None
    # base + adapters, written into the base's buffers (a one-off: post-SFT, resume).
    self.merge = layout.jit(functools.partial(models.lora.merge, config=self.lora),
                             in_shardings=(layout.param_sh, layout.trained_sh),
                             out_shardings=layout.param_sh, donate_argnums=(0,))

  def _sft_sharding(self):
    return self.layout.trained_sh

  @property
  def base(self):
    return self._base

  def init_adapters(self, key: jax.Array):
    """Fresh adapters (A random, B = 0) created in their shardings."""
    layout = self.layout
    init = functools.partial(models.lora.init_lora, self.run.model_cfg, layout.abstract_params,
                             self.lora)
    with layout.rules_context():
      return sharded_init(init, layout.mesh, layout.trained_sh, layout.put(key, layout.repl))

  def start(self, warm_start: WarmStart) -> TrainState:
    """SFT trains adapters on the init / HF base, merged in once; RL trains fresh ones (B = 0,
    so the policy starts as the merged base). Without SFT the kept adapters are B = 0 ones, an
    exact no-op."""
    base = self.init_params(jax.random.fold_in(self.key, 0))
    k_sft = jax.random.fold_in(self.key, 2)
    sft_adapters = warm_start(self.init_adapters(jax.random.fold_in(k_sft, 1)), base, k_sft)
    key = jax.random.fold_in(self.key, 3)
    if sft_adapters is None:  # no warm start ran
      sft_adapters = self.init_adapters(jax.random.fold_in(key, 1))
    else:
      base = self.merge(base, sft_adapters)
    self._base = base
    return self._make_state(self.init_adapters(key), sft_adapters)

  def restore(self, state: TrainState) -> None:
    """The base as `start` left it: init / HF weights + the state's merged-in SFT adapters."""
    self._base = self.merge(self.init_params(jax.random.fold_in(self.key, 0)),
                             state.sft_adapters)

  def sampling(self, trained):
    return models.lora.adapted(self._base, trained, self.lora)

  def export_hf(self, trained, out_dir: str) -> None:
    """Base and adapters merged (`models.lora.export_merged`), loadable without PEFT."""
    base, adapters = fetch((self._base, trained))
    if jax.process_index() == 0:
      models.lora.export_merged(self.run.model_cfg, base, adapters, self.lora, out_dir)
      self._copy_tokenizer(out_dir)


def make_policy(run, layout: Layout) -> FullPolicy:
  return FullPolicy(run, layout) if run.lora_cfg is None else LoraPolicy(run, layout)


def _load_hf_on_host(m):
  """The checkpoint's params as host (CPU) arrays, so no accelerator holds them unsharded."""
  try:
    cpu = jax.local_devices(backend="cpu")[0]
  except RuntimeError:  # no CPU backend enabled: load on the default device
    return models.from_hf(m.hf_path, **dict(m.overrides))[1]
  with jax.default_device(cpu):
    return models.from_hf(m.hf_path, **dict(m.overrides))[1]
