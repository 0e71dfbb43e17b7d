"""PPO epochs over mini-batches with exact gradient accumulation and a NaN-safe update.

  params, opt_state, per_update_metrics = ppo_update(cfg, loss_of, tx, params, opt_state, b, key)

Each epoch permutes the T training rows and splits them into `mini_batches` optimizer updates;
each update accumulates `micro_batches` chunks, weighted so the result equals the loss of the
whole mini-batch (token-mean: by token count; sequence aggregations: by row count). An update
whose loss or gradient norm is not finite is skipped (params and optimizer state kept) and
counted in `skipped`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax


def _tree_where(pred, a, b):
  return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def _weight_of(loss_agg: str, mask: jax.Array) -> jax.Array:
  """How much a micro-batch counts in its mini-batch's aggregate (exact accumulation)."""
  if loss_agg == "token-mean":
    return jnp.sum(mask)
  return jnp.sum(jnp.any(mask, axis=-1))


def minibatch_update(cfg, loss_of: Callable, tx: optax.GradientTransformation, carry, mb):
  """One optimizer update on mini-batch `mb` (micro-batches accumulated exactly).

  `loss_of(params, micro_batch) -> (loss, metrics)`.
  """
  params, opt_state = carry
  k = cfg.micro_batches
  loss_agg = cfg.loss.loss_agg
  micro = jax.tree.map(lambda x: x.reshape(k, x.shape[0] // k, *x.shape[1:]), mb)
  total_w = jnp.maximum(_weight_of(loss_agg, mb["mask"]).astype(jnp.float32), 1.0)

  def accumulate(acc, m):
    w = _weight_of(loss_agg, m["mask"]).astype(jnp.float32) / total_w
    (_, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(params, m)
    acc_g, acc_m = acc
    acc_g = jax.tree.map(lambda a, g: a + w * g, acc_g, grads)
    acc_m = jax.tree.map(lambda a, v: a + w * v, acc_m, metrics)
    return (acc_g, acc_m), None

  zeros_g = jax.tree.map(jnp.zeros_like, params)
  zeros_m = jax.tree.map(lambda x: jnp.zeros((), jnp.float32), jax.eval_shape(
      lambda: loss_of(params, jax.tree.map(lambda x: x[0], micro))[1]))
  (grads, metrics), _ = jax.lax.scan(accumulate, (zeros_g, zeros_m), micro)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(grad_norm) & jnp.isfinite(metrics["loss"])
  updates, new_opt = tx.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  params = _tree_where(finite, new_params, params)
  opt_state = _tree_where(finite, new_opt, opt_state)
  metrics = {**metrics, "grad_norm": grad_norm, "skipped": (~finite).astype(jnp.float32)}
  return (params, opt_state), metrics


def ppo_update(cfg, loss_of: Callable, tx: optax.GradientTransformation, params, opt_state,
               b: dict[str, jax.Array], key: jax.Array):
  """`cfg.ppo_epochs` passes of `cfg.mini_batches` updates over batch `b` ([T, ...] arrays).

  Returns:
    (params, opt_state, metrics of every update stacked [ppo_epochs * mini_batches]).
  """
  t = b["mask"].shape[0]
  mbs = cfg.mini_batches

  def epoch_batches(k):
    perm = jax.random.permutation(k, t)
    return jax.tree.map(lambda x: x[perm].reshape(mbs, t // mbs, *x.shape[1:]), b)

  batches = jax.vmap(epoch_batches)(jax.random.split(key, cfg.ppo_epochs))
  batches = jax.tree.map(lambda x: x.reshape(cfg.ppo_epochs * mbs, *x.shape[2:]), batches)
  update = lambda carry, mb: minibatch_update(cfg, loss_of, tx, carry, mb)
  (params, opt_state), metrics = jax.lax.scan(update, (params, opt_state), batches)
  return params, opt_state, metrics
