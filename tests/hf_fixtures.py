"""Tiny random transformers checkpoints written by the tests (no downloads)."""

from __future__ import annotations

import numpy as np


def make_hf_model(kind: str, seed: int = 0, **overrides):
  """A random transformers model of `kind` (qwen2 | llama | qwen3) with every weight random."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  base = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
              num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-6, tie_word_embeddings=False)
  base.update(overrides)
  if kind == "qwen2":
    config = transformers.Qwen2Config(**base)
    cls = transformers.Qwen2ForCausalLM
  elif kind == "llama":
    config = transformers.LlamaConfig(**base)
    cls = transformers.LlamaForCausalLM
  elif kind == "qwen3":
    config = transformers.Qwen3Config(**base)
    cls = transformers.Qwen3ForCausalLM
  else:
    raise ValueError(kind)
  torch.manual_seed(seed)
  model = cls(config).to(torch.float32).eval()
  rng = np.random.default_rng(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(torch.from_numpy(1.0 + 0.1 * rng.standard_normal(p.shape).astype(np.float32)))
      else:
        p.copy_(torch.from_numpy(0.2 * rng.standard_normal(p.shape).astype(np.float32)))
  return model


def hf_logits(model, tokens: np.ndarray, attention_mask: np.ndarray | None = None,
              position_ids: np.ndarray | None = None) -> np.ndarray:
  import torch  # pylint: disable=import-outside-toplevel
  kwargs = {}
  if attention_mask is not None:
    kwargs["attention_mask"] = torch.from_numpy(attention_mask.astype(np.int64))
  if position_ids is not None:
    kwargs["position_ids"] = torch.from_numpy(position_ids.astype(np.int64))
  with torch.no_grad():
    out = model(torch.from_numpy(tokens.astype(np.int64)), **kwargs)
  return out.logits.float().numpy()
