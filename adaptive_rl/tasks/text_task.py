"""Text tasks: question / answer files + a real tokenizer + a chat template + a host reward.

The trainer sees the same interface as a built-in task (`split`, `tokenizer`, lengths,
`decode_completion`, `reward_text`) but there is no in-graph reward (`has_graph_reward` is
False): completions are decoded on the host and scored by `reward_text` (default
`rewards.math_reward`) in worker processes with a per-item timeout.

Prompts longer than `prompt_length` tokens are handled by `overlong`: "skip" drops them and
counts them (`overlong_count`), "truncate" keeps their last `prompt_length` tokens (the end of a
chat-formatted prompt holds the instruction and the assistant header) and counts them too,
"error" raises naming the row.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Callable, ClassVar, Sequence

import numpy as np

from adaptive_rl.tasks.builtin import TaskData
from adaptive_rl.tasks.chat import ChatFormat
from adaptive_rl.tasks.datasets import TextDatasetConfig, load_text_dataset
from adaptive_rl.tasks.tokenizers import load_tokenizer

OVERLONG = ("skip", "truncate", "error")


def _import(spec: str) -> Callable[[str, str], float]:
  module, _, name = spec.partition(":")
  try:
    return getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"task.reward_fn={spec!r} could not be imported: {e}") from None


@dataclasses.dataclass(frozen=True)
class TextTask:
  """Settings of a text task (the `config.task` section with name="text").

  Attributes:
    train_path: training questions (any `datasets.load_rows` source).
    test_path: held-out questions; empty = hold out `test_size` rows of train_path.
    tokenizer_path: a tokenizer path (tokenizer.json / directory / .model), usually the
      checkpoint's directory.
    question_key, answer_key, answer_format, skip_bad_rows: see `TextDatasetConfig`.
    max_rows: use only the first max_rows rows of each file (0 = all).
    test_size: held-out rows when test_path is empty.
    seed: shuffle seed of the train split.
    system_prompt, instruction, use_template: see `ChatFormat`.
    prompt_length: prompt tokens (left-padded to this length).
    completion_length: generation budget in tokens.
    overlong: "skip" | "truncate" | "error" for prompts longer than prompt_length.
    reward_fn: "module:function" (completion, answer) -> float; default math_reward.
  """

  train_path: str = ""
  test_path: str = ""
  tokenizer_path: str = ""
  question_key: str = "question"
  answer_key: str = "answer"
  answer_format: str = "auto"
  skip_bad_rows: bool = False
  max_rows: int = 0
  test_size: int = 100
  seed: int = 0
  system_prompt: str = ""
  instruction: str = "Please reason step by step, and put your final answer within \\boxed{}."
  use_template: bool = True
  prompt_length: int = 256
  completion_length: int = 512
  overlong: str = "skip"
  reward_fn: str = "adaptive_rl.tasks.rewards:math_reward"

  name: ClassVar[str] = "text"
  has_graph_reward: ClassVar[bool] = False

  def __post_init__(self):
    if not self.train_path:
      raise ValueError("task.train_path is required for a text task (a .jsonl / .json / "
                       ".parquet file, a save_to_disk directory or tfds:NAME/SPLIT)")
    if not self.tokenizer_path:
      raise ValueError("task.tokenizer_path is required for a text task (e.g. the checkpoint "
                       "directory holding tokenizer.json)")
    if self.overlong not in OVERLONG:
      raise ValueError(f"task.overlong must be one of {OVERLONG}, got {self.overlong!r}")
    for field in ("prompt_length", "completion_length"):
      if getattr(self, field) < 1:
        raise ValueError(f"task.{field} must be >= 1, got {getattr(self, field)}")
    if self.test_size < 1:
      raise ValueError(f"task.test_size must be >= 1, got {self.test_size}")
    ChatFormat(self.system_prompt, self.instruction, self.use_template)  # validates

  @functools.cached_property
  def tokenizer(self):
    return load_tokenizer(self.tokenizer_path)

  @property
  def max_prompt_len(self) -> int:
    return self.prompt_length

  @property
  def max_completion_len(self) -> int:
    return self.completion_length

  def reward(self, completions, lengths, targets):
    raise ValueError("text tasks have no in-graph reward; rewards run on the host "
                     "(reward.mode='host')")

  @functools.cached_property
  def _reward(self) -> Callable[[str, str], float]:
    return _import(self.reward_fn)

  def reward_text(self, completion: str, answer: str) -> float:
    return float(self._reward(completion, answer))

  def decode_completion(self, tokens: Sequence[int], length: int) -> str:
    """Text of the completion up to its eos (or all of it when it was truncated)."""
    tok = self.tokenizer
    ids = [int(t) for t in list(tokens)[:max(int(length), 0)]]
    if tok.eos_id in ids:
      ids = ids[:ids.index(tok.eos_id)]
    # Checkpoints pad their embedding past the tokenizer's vocabulary (Qwen2.5: 151,936 rows for
    # 151,665 tokens); a sampled id from that padding has no text and is dropped.
    return tok.decode([i for i in ids if 0 <= i < tok.vocab_size])

  @functools.cache
  def split(self, split: str) -> TaskData:
    """The tokenized "train" or "test" split (cached)."""
    if split not in ("train", "test"):
      raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    common = dict(question_key=self.question_key, answer_key=self.answer_key,
                  answer_format=self.answer_format, skip_bad_rows=self.skip_bad_rows,
                  max_rows=self.max_rows)
    if self.test_path:
      path = self.train_path if split == "train" else self.test_path
      data = load_text_dataset(TextDatasetConfig(path, shuffle_seed=self.seed if split == "train"
                                                 else None, **common))
      questions, answers = list(data.questions), list(data.answers)
    else:
      # Hold out a fixed slice of the file (independent of the training seed).
      data = load_text_dataset(TextDatasetConfig(self.train_path, shuffle_seed=None, **common))
      if len(data) <= self.test_size:
        raise ValueError(f"{self.train_path}: {len(data)} rows cannot leave a train split after "
                         f"holding out task.test_size={self.test_size}")
      n = len(data) - self.test_size
      sl = slice(0, n) if split == "train" else slice(n, None)
      questions, answers = list(data.questions)[sl], list(data.answers)[sl]
      if split == "train":
        order = np.random.default_rng(self.seed).permutation(len(questions))
        questions = [questions[i] for i in order]
        answers = [answers[i] for i in order]
    return self._encode(questions, answers, split)

  def _encode(self, questions, answers, split) -> TaskData:
    tok = self.tokenizer
    fmt = ChatFormat(self.system_prompt, self.instruction, self.use_template)
    p = self.max_prompt_len
    rows, kept_q, kept_a = [], [], []
    overlong = 0
    for i, (q, a) in enumerate(zip(questions, answers)):
      text = fmt.format_prompt(tok, q)
      ids = tok.encode(text, add_bos=not self.use_template and tok.bos_id is not None)
      if len(ids) > p:
        overlong += 1
        if self.overlong == "error":
          raise ValueError(f"{split} row {i}: prompt has {len(ids)} tokens, more than "
                           f"task.prompt_length={p} (set task.overlong to skip or truncate)")
        if self.overlong == "skip":
          continue
        ids = ids[-p:]
      rows.append(ids)
      kept_q.append(q)
      kept_a.append(a)
    if not rows:
      raise ValueError(f"{split} split of the text task is empty after dropping {overlong} "
                       f"over-long prompts (task.prompt_length={p})")
    n = len(rows)
    prompts = np.full((n, p), tok.pad_id, np.int32)
    lengths = np.zeros((n,), np.int32)
    for i, ids in enumerate(rows):
      prompts[i, p - len(ids):] = ids
      lengths[i] = len(ids)
    object.__setattr__(self, f"_overlong_{split}", overlong)
    return TaskData(prompts=prompts, prompt_lengths=lengths,
                    targets=np.zeros((n, 1), np.int32), difficulty=np.zeros((n,), np.int32),
                    demos=np.full((n, 1), tok.pad_id, np.int32), has_demo=np.zeros((n,), bool),
                    texts=tuple(kept_q), answers=tuple(kept_a))

  def overlong_count(self, split: str) -> int:
    self.split(split)
    return getattr(self, f"_overlong_{split}")
