"""Per-token log-probabilities of completions, computed in vocabulary-sized chunks.

The model returns hidden states; each chunk of positions is projected to the vocabulary and
reduced to log-sum-exp (and entropy) inside `jax.checkpoint`, so with several chunks neither
the forward nor the backward pass ever holds float32 logits for the whole [B, N, V] batch at
once. With one chunk (`chunk_size=0`) nothing is rematerialised.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adaptive_rl.models import (
    ModelConfig,
    Params,
    apply,
    embed_tokens,
    positions_from_mask,
    split_adapted,
    unembed,
)


def _real(lengths_B: jax.Array, width: int, left_padded: bool) -> jax.Array:
  """[B, width] int32: 1 on the `lengths_B` real tokens (right-aligned if left-padded)."""
  idx = jnp.arange(width)[None, :]
  real = idx >= (width - lengths_B)[:, None] if left_padded else idx < lengths_B[:, None]
  return real.astype(jnp.int32)


def sequence_mask(prompt_lengths_B: jax.Array, completion_lengths_B: jax.Array, prompt_len: int,
                  completion_len: int) -> jax.Array:
  """[B, P + N] int32 segment ids: 1 on real prompt and completion tokens, 0 on padding."""
  return jnp.concatenate([_real(prompt_lengths_B, prompt_len, True),
                          _real(completion_lengths_B, completion_len, False)], axis=1)


def completion_logprobs(model_cfg: ModelConfig, params: Params, prompts_BP: jax.Array,
                        prompt_lengths_B: jax.Array, completions_BN: jax.Array,
                        completion_lengths_B: jax.Array, *, chunk_size: int = 0,
                        with_entropy: bool = False, input_embeds: jax.Array | None = None,
                        prompt_index: jax.Array | None = None,
                        ) -> tuple[jax.Array, jax.Array | None]:
  """log pi(completion token | prefix) for every completion position.

  With `prompt_index`, `prompts_BP` / `prompt_lengths_B` are the U distinct prompts ([U, P],
  [U]) and completion row b continues prompt `prompt_index[b]`: each prompt's forward pass runs
  once and its rows attend to its keys / values (`models.Prefix`), instead of once per row. The
  result equals the per-row computation on `prompts_BP[prompt_index]` (up to float rounding);
  gradients reach the shared prompt positions summed over their rows.

  Args:
    model_cfg: model config.
    params: model params.
    prompts_BP: left-padded prompts ([U, P] distinct ones with `prompt_index`).
    prompt_lengths_B: real prompt lengths.
    completions_BN: sampled tokens (pad after eos).
    completion_lengths_B: tokens generated including eos.
    chunk_size: positions per vocabulary projection (0 = all N at once).
    with_entropy: also return per-token entropies of the temperature-1 policy.
    input_embeds: optional [B, P + N, D] embeddings of prompt + completion tokens (not with
      `prompt_index`).
    prompt_index: optional [B] int32: the prompt (row of `prompts_BP`) each completion continues.

  Returns:
    (logp [B, N] float32, entropy [B, N] or None); positions past the length hold garbage that
    callers mask.
  """
  p = prompts_BP.shape[1]
  n = completions_BN.shape[1]
  if prompt_index is None:
    tokens = jnp.concatenate([prompts_BP, completions_BN], axis=1)
    seg = sequence_mask(prompt_lengths_B, completion_lengths_B, p, n)
    # Positions continue from the prompt through the completion (pad slots get any position).
    positions = positions_from_mask(jnp.concatenate(
        [seg[:, :p], jnp.ones_like(completions_BN)], axis=1))
    hidden, _ = apply(model_cfg, params, tokens, positions, segment_ids_BT=seg,
                      return_hidden=True, input_embeds_BTD=input_embeds)
    # The hidden state at position t predicts token t + 1.
    h = hidden[:, p - 1:p + n - 1]
  else:
    if input_embeds is not None:
      raise ValueError("completion_logprobs: input_embeds with prompt_index is not supported")
    seg_p = _real(prompt_lengths_B, p, left_padded=True)
    hidden_p, prefix = apply(model_cfg, params, prompts_BP, positions_from_mask(seg_p),
                             segment_ids_BT=seg_p, return_hidden=True, return_kv=True)
    seg_c = _real(completion_lengths_B, n, left_padded=False)
    positions_c = jnp.take(prompt_lengths_B, prompt_index)[:, None] + jnp.arange(n)[None, :]
    hidden_c, _ = apply(model_cfg, params, completions_BN, positions_c, segment_ids_BT=seg_c,
                        return_hidden=True, prefix=prefix._replace(index=prompt_index))
    # The prompt's last position predicts completion token 0; completion token t, token t + 1.
    h = jnp.concatenate([jnp.take(hidden_p[:, p - 1:], prompt_index, axis=0),
                         hidden_c[:, :n - 1]], axis=1)
  chunk = n if chunk_size <= 0 else min(chunk_size, n)
  pad = (-n) % chunk
  targets = completions_BN
  if pad:
    h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
  b, total, d = h.shape
  h_chunks = h.reshape(b, total // chunk, chunk, d).swapaxes(0, 1)
  t_chunks = targets.reshape(b, total // chunk, chunk).swapaxes(0, 1)

  def one(args):
    hc, tc = args
    logits = unembed(model_cfg, params, hc)
    lse = jax.nn.logsumexp(logits, axis=-1)
    # The target's logit as h . w[target]: its backward is a scatter-add into [V, D] weight rows
    # rather than a dense [.., V] one-hot (what take_along_axis on the logits costs).
    lp = _target_logits(model_cfg, params, hc, tc) - lse
    if with_entropy:
      ent = lse - jnp.sum(jax.nn.softmax(logits, axis=-1) * logits, axis=-1)
    else:
      ent = jnp.zeros_like(lp)
    return lp, ent

  if h_chunks.shape[0] > 1:  # several chunks: keep only one chunk's logits alive at a time
    one = jax.checkpoint(one)
  lp, ent = jax.lax.map(one, (h_chunks, t_chunks))
  lp = lp.swapaxes(0, 1).reshape(b, total)[:, :n]
  ent = ent.swapaxes(0, 1).reshape(b, total)[:, :n]
  return lp, (ent if with_entropy else None)


def _target_logits(model_cfg: ModelConfig, params: Params, h: jax.Array,
                   targets: jax.Array) -> jax.Array:
  """float32 logits of `targets` [...] from hidden states h [..., D] (== unembed(h)[targets])."""
  dt = model_cfg.compute_dtype
  params, adapters, scale = split_adapted(params)
  if model_cfg.tie_embeddings:
    w = jnp.take(params["embed"], targets, axis=0)
  else:
    w = jnp.moveaxis(jnp.take(params["lm_head"], targets, axis=1), 0, -1)
  out = jnp.einsum("...d,...d->...", h.astype(dt), w.astype(dt),
                   preferred_element_type=jnp.float32)
  ab = adapters.get("embed" if model_cfg.tie_embeddings else "lm_head")
  if ab is not None:  # + s h . (A B)[:, target]: h's rank-r projection . the target's r-vector
    if model_cfg.tie_embeddings:  # (E + s A B)[t] . h = E[t] . h + s A[t] . (B h)
      hr = jnp.einsum("...d,rd->...r", h.astype(dt), ab["b"].astype(dt))
      wr = jnp.take(ab["a"], targets, axis=0)
    else:  # (W + s A B)[:, t] . h = W[:, t] . h + s (h A) . B[:, t]
      hr = jnp.einsum("...d,dr->...r", h.astype(dt), ab["a"].astype(dt))
      wr = jnp.moveaxis(jnp.take(ab["b"], targets, axis=1), 0, -1)
    out = out + scale * jnp.einsum("...r,...r->...", hr, wr.astype(dt),
                                   preferred_element_type=jnp.float32)
  return out


def embedding_grad_norms(model_cfg: ModelConfig, params: Params, prompts_BP: jax.Array,
                         prompt_lengths_B: jax.Array, completions_BN: jax.Array,
                         completion_lengths_B: jax.Array, *, chunk_size: int = 0) -> jax.Array:
  """Per-sequence || d(-sum_t log pi(y_t)) / d(token embeddings) ||_2, [B] (GVM's G proxy).

  Sequences are independent, so one backward pass of the summed NLL gives every row's own
  gradient with respect to its embedded tokens.
  """
  tokens = jnp.concatenate([prompts_BP, completions_BN], axis=1)
  embeds = embed_tokens(params, tokens).astype(jnp.float32)
  mask = jnp.arange(completions_BN.shape[1])[None] < completion_lengths_B[:, None]

  def nll(e):
    lp, _ = completion_logprobs(model_cfg, params, prompts_BP, prompt_lengths_B, completions_BN,
                                completion_lengths_B, chunk_size=chunk_size, input_embeds=e)
    return -jnp.sum(jnp.where(mask, lp, 0.0))

  g = jax.grad(nll)(embeds)
  return jnp.sqrt(jnp.sum(g * g, axis=(1, 2)))
