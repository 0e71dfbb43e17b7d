"""Named model shapes: real checkpoints' architectures and small random models.

Real presets reproduce the published configs, so `init` at that shape (e.g. for a benchmark) or
`jax.eval_shape` (for a free check) gives the same parameter count as the checkpoint.
"""

from __future__ import annotations

from adaptive_rl.models.config import ModelConfig

_QWEN2_5 = dict(model_type="qwen2", qkv_bias=True, rope_theta=1e6, rms_norm_eps=1e-6,
                vocab_size=151936, max_seq_len=32768)
_QWEN3 = dict(model_type="qwen3", qk_norm=True, rope_theta=1e6, rms_norm_eps=1e-6,
              vocab_size=151936, max_seq_len=40960, head_dim=128)
_LLAMA3_2 = dict(model_type="llama", rope_theta=500000.0, rms_norm_eps=1e-5, vocab_size=128256,
                 rope_type="llama3", rope_factor=32.0, rope_low_freq_factor=1.0,
                 rope_high_freq_factor=4.0, rope_original_max_positions=8192,
                 max_seq_len=131072, tie_embeddings=True)

PRESETS: dict[str, dict] = {
    # Random models for the built-in tasks, tests and benchmarks (vocab set by the task).
    "nano": dict(hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4,
                 num_kv_heads=2, vocab_size=32, max_seq_len=64, tie_embeddings=True),
    "micro": dict(hidden_size=96, intermediate_size=256, num_layers=3, num_heads=4,
                  num_kv_heads=2, vocab_size=32, max_seq_len=64, tie_embeddings=True),
    "10m": dict(hidden_size=256, intermediate_size=1024, num_layers=8, num_heads=8,
                num_kv_heads=4, vocab_size=8192, max_seq_len=1024, tie_embeddings=True),
    "100m": dict(hidden_size=640, intermediate_size=2048, num_layers=14, num_heads=10,
                 num_kv_heads=5, vocab_size=32000, max_seq_len=2048, tie_embeddings=True),
    # Real architectures.
    "qwen2.5-0.5b": dict(_QWEN2_5, hidden_size=896, intermediate_size=4864, num_layers=24,
                         num_heads=14, num_kv_heads=2, tie_embeddings=True),
    "qwen2.5-1.5b": dict(_QWEN2_5, hidden_size=1536, intermediate_size=8960, num_layers=28,
                         num_heads=12, num_kv_heads=2, tie_embeddings=True),
    "qwen2.5-math-1.5b": dict(_QWEN2_5, hidden_size=1536, intermediate_size=8960, num_layers=28,
                              num_heads=12, num_kv_heads=2, tie_embeddings=True,
                              rope_theta=10000.0, max_seq_len=4096),
    "qwen2.5-3b": dict(_QWEN2_5, hidden_size=2048, intermediate_size=11008, num_layers=36,
                       num_heads=16, num_kv_heads=2, tie_embeddings=True),
    "qwen2.5-7b": dict(_QWEN2_5, vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_layers=28, num_heads=28, num_kv_heads=4, tie_embeddings=False),
    "qwen3-0.6b": dict(_QWEN3, hidden_size=1024, intermediate_size=3072, num_layers=28,
                       num_heads=16, num_kv_heads=8, tie_embeddings=True),
    "qwen3-1.7b": dict(_QWEN3, hidden_size=2048, intermediate_size=6144, num_layers=28,
                       num_heads=16, num_kv_heads=8, tie_embeddings=True),
    "qwen3-4b": dict(_QWEN3, hidden_size=2560, intermediate_size=9728, num_layers=36,
                     num_heads=32, num_kv_heads=8, tie_embeddings=True),
    "qwen3-8b": dict(_QWEN3, hidden_size=4096, intermediate_size=12288, num_layers=36,
                     num_heads=32, num_kv_heads=8, tie_embeddings=False),
    "llama-3.2-1b": dict(_LLAMA3_2, hidden_size=2048, intermediate_size=8192, num_layers=16,
                         num_heads=32, num_kv_heads=8, head_dim=64),
    "llama-3.2-3b": dict(_LLAMA3_2, hidden_size=3072, intermediate_size=8192, num_layers=28,
                         num_heads=24, num_kv_heads=8, head_dim=128),
    "llama-3.1-8b": dict(_LLAMA3_2, hidden_size=4096, intermediate_size=14336, num_layers=32,
                         num_heads=32, num_kv_heads=8, rope_factor=8.0, tie_embeddings=False),
}


def get_preset(name: str, **overrides) -> ModelConfig:
  """The `ModelConfig` of a named preset, with field overrides (e.g. vocab_size, dtype)."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; valid: {sorted(PRESETS)}")
  return ModelConfig(**{**PRESETS[name], **overrides})
