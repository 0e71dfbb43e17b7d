"""Pure-functional decoder LMs (Llama / Qwen2 / Qwen3 family) and HF checkpoint I/O.

  cfg, params = models.from_hf(path)             # transformers checkpoint directory
  logits, _ = models.apply(cfg, params, tokens)  # [B, T] int32 -> [B, T, V] float32
  models.to_hf(cfg, params, out_dir)             # loadable by transformers
"""

from adaptive_rl.models import lora
from adaptive_rl.models.config import ModelConfig
from adaptive_rl.models.hf_io import config_from_hf, config_to_hf, from_hf, to_hf
from adaptive_rl.models.presets import PRESETS, get_preset
from adaptive_rl.models.transformer import (
    AdaptedParams,
    KVCache,
    Params,
    Prefix,
    apply,
    embed_tokens,
    init,
    init_cache,
    param_axes,
    positions_from_mask,
    split_adapted,
    unembed,
    unstack_layers,
)
