"""The supervised warm start: a pure step jitted once and a short loop over demonstrations.

  warm = SFTWarmStart(run, layout)
  trained = warm(trained, base, key)     # None when sft.steps = 0 (nothing ran)
  warm.final_loss

The trained tree is the params (full fine-tuning) or LoRA adapters on the frozen `base` (then
the run never holds a full-size gradient or optimizer state). AdamW with warm-up and cosine
decay to 10% of `sft.lr`; batches drawn with replacement only when there are fewer
demonstrations than `sft.batch_size`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adaptive_rl import models
from adaptive_rl.parallel import state_shardings
from adaptive_rl.rl.config import ConfigError
from adaptive_rl.rl.layout import Layout
from adaptive_rl.rl.step import sft_loss
from adaptive_rl.rl.train_state import OptimizerConfig


def sft_step(model_cfg, tx: optax.GradientTransformation, lora, params, opt, base, data, idx):
  """One SFT update of `params` on the demonstrations `data[idx]`; returns (params, opt, loss)."""

  def loss_fn(p):
    policy = p if lora is None else models.lora.adapted(base, p, lora)
    return sft_loss(model_cfg, policy, data["prompts"][idx], data["prompt_lengths"][idx],
                    data["demos"][idx], data["demo_len"][idx], jnp.ones(idx.shape))

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt = tx.update(grads, opt, params)
  return optax.apply_updates(params, updates), opt, loss


class SFTWarmStart:
  """`sft.steps` supervised updates of a run's trained tree (see the module docstring)."""

  def __init__(self, run, layout: Layout):
    self.run, self.layout = run, layout
    self.final_loss: float | None = None

  def __call__(self, trained, base, key: jax.Array) -> Any:
    cfg, run, layout = self.run.config.sft, self.run, self.layout
    if not cfg.steps:
      return None
    d = run.train_data
    rows = np.nonzero(d.has_demo)[0]
    if not rows.size:
      raise ConfigError(f"sft.steps={cfg.steps} but task {run.task.name!r} has no "
                        f"demonstrations")
    demo_len = (d.demos != run.tokenizer.pad_id).sum(1).astype(np.int32)
    data = layout.put_batch({"prompts": d.prompts, "prompt_lengths": d.prompt_lengths,
                             "demos": d.demos, "demo_len": demo_len})
    tx = OptimizerConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                         decay="cosine", min_lr_ratio=0.1, weight_decay=cfg.weight_decay).make()
    train_sh = layout.trained_sh
    opt_sh = state_shardings(jax.eval_shape(tx.init, trained), trained, train_sh, layout.mesh)
    opt = layout.jit(tx.init, in_shardings=(train_sh,), out_shardings=opt_sh)(trained)
    idx_sh = layout.batch_sharding((cfg.batch_size,))
    step = layout.jit(
        functools.partial(sft_step, run.model_cfg, tx, run.lora_cfg),
        in_shardings=(train_sh, opt_sh, layout.base_sh,
                      jax.tree.map(lambda x: x.sharding, data), idx_sh),
        out_shardings=(train_sh, opt_sh, layout.repl), donate_argnums=(0, 1))
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    loss = None
    for _ in range(cfg.steps):
      idx = rng.choice(rows, size=cfg.batch_size, replace=rows.size < cfg.batch_size)
      trained, opt, loss = step(trained, opt, base, data,
                                layout.put(idx.astype(np.int32), idx_sh))
    self.final_loss = float(loss)
    return trained
