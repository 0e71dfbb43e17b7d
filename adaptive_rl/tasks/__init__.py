"""Tokenizers, built-in verifiable tasks, datasets and reward functions.

  tokenizers   char/byte, sentencepiece and HF tokenizer.json behind one interface
  builtin      built-in tasks with in-graph rewards: arithmetic, countdown (`make_task`)
  host_reward  Python reward functions in worker processes with per-item timeouts
  chat         chat templates rendered as transformers does
  answers      final-answer extraction (\\boxed{}, "#### x", last number)
  rewards      `math_reward(completion, answer)` with math-verify or a bounded fallback
  datasets     JSONL / JSON / parquet / save_to_disk / tfds loaders with field mapping
"""

from adaptive_rl.tasks.builtin import TASK_NAMES, BuiltinTask, TaskData, make_task
from adaptive_rl.tasks.tokenizers import (
    CharTokenizer,
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    check_vocab,
    load_tokenizer,
)
