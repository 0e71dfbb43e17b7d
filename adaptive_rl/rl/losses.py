"""Token-level policy losses: clipped surrogate, KL to a reference, entropy, aggregation.

Per-token arrays are [N, T] (N sequences, T completion positions); `mask` marks the completion
tokens that count. All pieces are pure and jittable, compute in float32, and are built so that
`jax.grad` w.r.t. `logp` is finite even when whole sequences are masked out: masked positions
are removed with `jnp.where` (never multiplied by 0), so garbage there cannot leak NaN.

    loss = agg(l_pg) + kl_coef * agg(kl) - entropy_coef * agg(H)

with every term aggregated by the same `loss_agg` mode (see `aggregate`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from adaptive_rl.rl.advantages import clip_advantages

Array = jax.Array

LOG_RATIO_CLAMP = 20.0  # |log rho| bound before exp, so rho and its gradient stay finite.
KL_CLAMP = 10.0         # k3 output bound (verl "low_var_kl").


def ratio_and_log_ratio(logp: Array, old_logp: Array) -> tuple[Array, Array]:
  """Importance ratio rho = exp(clip(logp - old_logp, -20, 20)).

  Args:
    logp: [N, T] log-probs under the current policy.
    old_logp: [N, T] log-probs under the sampling policy (treated as data: no gradient).

  Returns:
    (rho, log_rho), both [N, T] float32.
  """
  log_ratio = jnp.asarray(logp, jnp.float32) - jax.lax.stop_gradient(
      jnp.asarray(old_logp, jnp.float32))
  log_ratio = jnp.clip(log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
  return jnp.exp(log_ratio), log_ratio


class ClipInfo(NamedTuple):
  """Per-token diagnostics of `clipped_surrogate`; all [N, T].

  Attributes:
    ratio: rho.
    clipped_low: the lower clip is active (A < 0, rho < 1 - eps_low): no gradient.
    clipped_high: the upper clip is active (A > 0, rho > 1 + eps_high): no gradient.
    dual_clipped: the dual clip is active (A < 0, -A*c < clipped loss): no gradient.
  """
  ratio: Array
  clipped_low: Array
  clipped_high: Array
  dual_clipped: Array


def clipped_surrogate(
    logp: Array,
    old_logp: Array,
    adv: Array,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    dual_clip: float | None = None,
) -> tuple[Array, ClipInfo]:
  """PPO / DAPO clipped surrogate per token, with optional dual clip.

      rho = exp(logp - old_logp)
      l   = max(-A * rho, -A * clip(rho, 1 - eps_low, 1 + eps_high))
      l   = min(l, -A * c)   where A < 0                         (dual clip, c > 1)

  Args:
    logp: [N, T] current log-probs.
    old_logp: [N, T] sampling-policy log-probs.
    adv: [N] sequence advantages (broadcast over tokens) or [N, T] token advantages.
    eps_low: lower clip range, rho >= 1 - eps_low.
    eps_high: upper clip range (DAPO clip-higher), rho <= 1 + eps_high.
    dual_clip: c > 1, or None for no dual clip.

  Returns:
    (l [N, T] float32 per-token loss, ClipInfo).
  """
  if dual_clip is not None and not dual_clip > 1.0:
    raise ValueError(f"dual_clip must be None or > 1, got {dual_clip}")
  ratio, _ = ratio_and_log_ratio(logp, old_logp)
  adv = jax.lax.stop_gradient(jnp.asarray(adv, jnp.float32))
  if adv.ndim == 1:
    adv = adv[:, None]
  unclipped = -adv * ratio
  clipped = -adv * jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  loss = jnp.maximum(unclipped, clipped)
  clip_active = clipped > unclipped
  dual_active = jnp.zeros_like(clip_active)
  if dual_clip is not None:
    bound = -adv * dual_clip
    dual_active = (adv < 0) & (bound < loss)
    loss = jnp.where(adv < 0, jnp.minimum(loss, bound), loss)
  info = ClipInfo(
      ratio=ratio,
      clipped_low=clip_active & (ratio < 1.0 - eps_low),
      clipped_high=clip_active & (ratio > 1.0 + eps_high),
      dual_clipped=dual_active,
  )
  return loss, info


# --- KL to the reference policy ------------------------------------------------------------

def _delta(logp: Array, ref_logp: Array) -> Array:
  return jnp.asarray(logp, jnp.float32) - jax.lax.stop_gradient(
      jnp.asarray(ref_logp, jnp.float32))


def kl_k1(logp: Array, ref_logp: Array) -> Array:
  """k1 = logp - logp_ref per token (unbiased, high variance)."""
  return _delta(logp, ref_logp)


def kl_k2(logp: Array, ref_logp: Array) -> Array:
  """k2 = 0.5 * (logp - logp_ref)^2 per token."""
  return 0.5 * jnp.square(_delta(logp, ref_logp))


def kl_k3(logp: Array, ref_logp: Array) -> Array:
  """k3 ("low_var_kl") = exp(d) - d - 1 with d = logp_ref - logp, clamped to [-10, 10].

  d itself is clamped to [-20, 20] first (as verl does): for d > 88, exp(d) overflows f32 and
  the gradient of the output clamp would be 0 * inf = NaN.
  """
  d = jnp.clip(-_delta(logp, ref_logp), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
  return jnp.clip(jnp.exp(d) - d - 1.0, -KL_CLAMP, KL_CLAMP)


KL_ESTIMATORS: dict[str, Callable[[Array, Array], Array]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
    "low_var_kl": kl_k3,
}


def token_entropy(logits: Array) -> Array:
  """Entropy of the next-token distribution, H = -sum_v p_v log p_v, from [N, T, V] logits.

  Computed in float32 through log_softmax; vocabulary entries with logit -inf (p = 0)
  contribute 0 to the value and to the gradient.

  Returns:
    [N, T] float32 entropies.
  """
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  p = jnp.exp(logp)
  # Double where: 0 * -inf would give NaN in both the value and its gradient.
  safe_logp = jnp.where(p > 0, logp, 0.0)
  return -jnp.sum(p * safe_logp, axis=-1)


# --- aggregation ---------------------------------------------------------------------------

LOSS_AGG_MODES = (
    "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def aggregate(per_token: Array, mask: Array, mode: str, *, max_len: int | None = None) -> Array:
  """Reduces a per-token quantity x [N, T] to a scalar over the tokens with mask m [N, T].

      token-mean:              sum_{i,t} m x / sum_{i,t} m              (DAPO)
      seq-mean-token-mean:     mean_{i in S} ( sum_t m x / sum_t m )    (original GRPO)
      seq-mean-token-sum:      mean_{i in S} ( sum_t m x )
      seq-mean-token-sum-norm: mean_{i in S} ( sum_t m x ) / max_len    (Dr.GRPO)

  where S = {i : sum_t m_it > 0}: sequences without a counted token are left out of every
  seq-mean. An empty selection gives 0, never NaN.

  Args:
    per_token: [N, T] values.
    mask: [N, T] bool (or 0/1) mask of counted tokens.
    mode: one of LOSS_AGG_MODES.
    max_len: the constant L_max, required by "seq-mean-token-sum-norm".

  Returns:
    float32 scalar.
  """
  if mode not in LOSS_AGG_MODES:
    raise ValueError(f"loss_agg mode must be one of {LOSS_AGG_MODES}, got {mode!r}")
  if mode == "seq-mean-token-sum-norm" and (max_len is None or max_len <= 0):
    raise ValueError(f"max_len must be a positive int for {mode!r}, got {max_len}")
  mask = jnp.asarray(mask).astype(bool)
  x = jnp.where(mask, jnp.asarray(per_token, jnp.float32), 0.0)
  if mode == "token-mean":
    return jnp.sum(x) / jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)
  count = jnp.sum(mask, axis=-1)
  seq = jnp.sum(x, axis=-1)
  if mode == "seq-mean-token-mean":
    seq = seq / jnp.maximum(count, 1).astype(jnp.float32)
  elif mode == "seq-mean-token-sum-norm":
    seq = seq / float(max_len)
  has = count > 0
  return jnp.sum(jnp.where(has, seq, 0.0)) / jnp.maximum(jnp.sum(has), 1).astype(jnp.float32)


def overlong_penalty(lengths: Array, max_len: int, cache_len: int) -> Array:
  """DAPO soft overlong penalty, added to the reward; lengths are in tokens.

      R(L) = 0                                 if L <= L_max - L_cache
             ((L_max - L_cache) - L) / L_cache  if L_max - L_cache < L <= L_max
             -1                                if L > L_max

  Args:
    lengths: [N] completion lengths.
    max_len: L_max > 0.
    cache_len: L_cache in [0, max_len]; 0 gives a hard -1 beyond L_max.

  Returns:
    [N] float32 penalties in [-1, 0].
  """
  if not max_len > 0:
    raise ValueError(f"max_len must be > 0, got {max_len}")
  if not 0 <= cache_len <= max_len:
    raise ValueError(f"cache_len must be in [0, max_len={max_len}], got {cache_len}")
  lengths = jnp.asarray(lengths, jnp.float32)
  if cache_len == 0:
    return jnp.where(lengths > max_len, -1.0, 0.0)
  return jnp.clip(((max_len - cache_len) - lengths) / cache_len, -1.0, 0.0)


# --- the combined loss ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Settings of `policy_loss`.

  Attributes:
    eps_low: lower clip range, in [0, 1).
    eps_high: upper clip range, >= 0 (DAPO clip-higher: 0.28).
    dual_clip: dual-clip bound c > 1 for A < 0, or None for off.
    kl_coef: beta >= 0 on the KL-to-reference term (0 = no KL in the loss).
    kl_estimator: a key of KL_ESTIMATORS.
    entropy_coef: coefficient of the entropy bonus (loss -= entropy_coef * H); finite.
    loss_agg: one of LOSS_AGG_MODES.
    max_len: L_max for "seq-mean-token-sum-norm" (required there), else optional.
    adv_clip: |A| <= adv_clip before the surrogate; None or 0 = off.
  """
  eps_low: float = 0.2
  eps_high: float = 0.28
  dual_clip: float | None = 3.0
  kl_coef: float = 0.0
  kl_estimator: str = "k3"
  entropy_coef: float = 0.0
  loss_agg: str = "token-mean"
  max_len: int | None = None
  adv_clip: float | None = None

  def __post_init__(self):
    if not 0.0 <= self.eps_low < 1.0:
      raise ValueError(f"eps_low must be in [0, 1), got {self.eps_low}")
    if not self.eps_high >= 0.0:
      raise ValueError(f"eps_high must be >= 0, got {self.eps_high}")
    if self.dual_clip is not None and not self.dual_clip > 1.0:
      raise ValueError(f"dual_clip must be None or > 1, got {self.dual_clip}")
    if not self.kl_coef >= 0.0:
      raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
    if self.kl_estimator not in KL_ESTIMATORS:
      raise ValueError(
          f"kl_estimator must be one of {sorted(KL_ESTIMATORS)}, got {self.kl_estimator!r}")
    if not math.isfinite(self.entropy_coef):
      raise ValueError(f"entropy_coef must be a finite number, got {self.entropy_coef}")
    if self.loss_agg not in LOSS_AGG_MODES:
      raise ValueError(f"loss_agg must be one of {LOSS_AGG_MODES}, got {self.loss_agg!r}")
    if self.max_len is not None and not (
        isinstance(self.max_len, numbers.Integral) and self.max_len > 0):
      raise ValueError(f"max_len must be None or a positive int, got {self.max_len!r}")
    if self.loss_agg == "seq-mean-token-sum-norm" and self.max_len is None:
      raise ValueError("max_len is required when loss_agg='seq-mean-token-sum-norm'")
    if self.adv_clip is not None and not self.adv_clip >= 0.0:
      raise ValueError(f"adv_clip must be None or >= 0 (0 = off), got {self.adv_clip}")


def policy_loss(
    cfg: LossConfig,
    logp: Array,
    old_logp: Array,
    ref_logp: Array | None,
    adv: Array,
    mask: Array,
    entropy: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
  """Clipped policy-gradient loss with optional KL and entropy terms, and its metrics.

      A'   = clip(A, -adv_clip, adv_clip)
      loss = agg(l_pg(A')) + kl_coef * agg(kl(logp, logp_ref)) - entropy_coef * agg(H)

  Args:
    cfg: LossConfig.
    logp: [N, T] current log-probs (differentiate w.r.t. this).
    old_logp: [N, T] sampling-policy log-probs.
    ref_logp: [N, T] reference log-probs, or None (then kl_coef must be 0).
    adv: [N] or [N, T] advantages.
    mask: [N, T] tokens that count.
    entropy: optional [N, T] token entropies (required when entropy_coef != 0).

  Returns:
    (loss scalar, metrics) with metrics pg_loss, kl (if ref_logp), entropy (if given), all
    aggregated like the loss, and token-means clip_frac (= clip_frac_low + clip_frac_high),
    clip_frac_low, clip_frac_high, dual_clip_frac, ratio_mean, plus ratio_max (0 without
    counted tokens) and loss.
  """
  if ref_logp is None and cfg.kl_coef > 0:
    raise ValueError(f"kl_coef={cfg.kl_coef} > 0 needs ref_logp")
  if entropy is None and cfg.entropy_coef != 0:
    raise ValueError(f"entropy_coef={cfg.entropy_coef} != 0 needs entropy")
  mask = jnp.asarray(mask).astype(bool)
  # Padding positions may hold -inf / NaN log-probs; replace them before any arithmetic, since
  # a masked-out NaN still turns the gradient into NaN (0 * NaN) on its way back.
  clean = lambda x: jnp.where(mask, jnp.asarray(x, jnp.float32), 0.0)
  logp, old_logp = clean(logp), clean(old_logp)
  ref_logp = None if ref_logp is None else clean(ref_logp)
  entropy = None if entropy is None else clean(entropy)
  agg = lambda x: aggregate(x, mask, cfg.loss_agg, max_len=cfg.max_len)
  tok_mean = lambda x: aggregate(x, mask, "token-mean")

  adv = clip_advantages(adv, cfg.adv_clip)
  pg_tok, info = clipped_surrogate(logp, old_logp, adv, eps_low=cfg.eps_low,
                                   eps_high=cfg.eps_high, dual_clip=cfg.dual_clip)
  pg = agg(pg_tok)
  loss = pg
  metrics = {"pg_loss": pg}
  if ref_logp is not None:
    kl = agg(KL_ESTIMATORS[cfg.kl_estimator](logp, ref_logp))
    metrics["kl"] = kl
    if cfg.kl_coef > 0:
      loss = loss + cfg.kl_coef * kl
  if entropy is not None:
    ent = agg(entropy)
    metrics["entropy"] = ent
    if cfg.entropy_coef != 0:
      loss = loss - cfg.entropy_coef * ent

  ratio = jax.lax.stop_gradient(info.ratio)
  metrics.update(
      clip_frac=tok_mean(info.clipped_low | info.clipped_high),
      clip_frac_low=tok_mean(info.clipped_low),
      clip_frac_high=tok_mean(info.clipped_high),
      dual_clip_frac=tok_mean(info.dual_clipped),
      ratio_mean=tok_mean(ratio),
      ratio_max=jnp.max(jnp.where(mask, ratio, 0.0)),
  )
  metrics["loss"] = loss
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)
