"""adaptive_rl: JAX-native RL post-training of language models with adaptive rollout allocation.

Subpackages:
  models      pure-functional Llama / Qwen2 / Qwen3 decoders, HF safetensors I/O, presets.
  sampling    jitted prefill + decode with a KV cache.
  tasks       tokenizers, built-in verifiable tasks, datasets and reward functions.
  allocation  select / budget / group roles for adaptive rollout allocation.
  rl          advantages, losses, the jitted train step and the trainer loop.
  parallel    device mesh and logical-axis sharding rules.
"""

__version__ = "0.1.0"
