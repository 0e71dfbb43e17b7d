"""Built-in verifiable tasks: the split container, the task base class and a name registry.

A built-in task is a frozen dataclass of settings with three jobs:
  * `split("train" | "test")` builds a deterministic `TaskData`: token arrays for the sampler and
    trainer, plus display strings. `train` depends on `seed`; `test` depends only on the task
    config and `test_seed`, so every training seed is evaluated on the same held-out prompts,
    and no train prompt text appears in `test`.
  * `reward(completions, lengths, targets)` scores sampled completions in-graph. It is pure and
    jittable; all shapes are static, so it compiles once per batch shape.
  * `reward_text(completion, answer)` is the pure-Python reference of the same reward. It is
    picklable, so it also runs in `host_reward.HostRewardRunner`.

Completion convention (shared by every task): a completion row holds the tokens sampled after
the prompt; `lengths` counts generated tokens including eos. Only the first eos at a position
`< length` ends the answer; a row without one scores 0, and so does any special token (pad,
bos) or out-of-vocabulary id before that eos. Tokens after the eos are ignored.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import importlib
import random
from typing import ClassVar, Sequence

import numpy as np

from adaptive_rl.tasks.tokenizers import CharTokenizer

SPLITS = ("train", "test")

# name -> (module, class). Imported lazily so `make_task` does not import every task up front
# and the task modules can import this one without a cycle.
_TASKS = {
    "arithmetic": ("adaptive_rl.tasks.arithmetic", "ArithmeticTask"),
    "countdown": ("adaptive_rl.tasks.countdown", "CountdownTask"),
    "text": ("adaptive_rl.tasks.text_task", "TextTask"),
}
TASK_NAMES = tuple(sorted(_TASKS))


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous; compare fields
class TaskData:
  """One split of a built-in task, all numpy (N prompts).

  Attributes:
    prompts: [N, P] int32, left-padded with pad id; each prompt is bos + text.
    prompt_lengths: [N] int32 prompt tokens including bos.
    targets: [N, A] int32 task-specific encoding read by the task's in-graph `reward`.
    difficulty: [N] int32 difficulty level (task-specific; see the task's docstring).
    demos: [N, C] int32 one demonstration completion, right-padded, ending with eos; all pad
      where `has_demo` is False.
    has_demo: [N] bool, False where the task withholds the demonstration.
    texts: prompt texts (no bos), for display.
    answers: reference answer strings, for display and host rewards (`reward_text`).
  """

  prompts: np.ndarray
  prompt_lengths: np.ndarray
  targets: np.ndarray
  difficulty: np.ndarray
  demos: np.ndarray
  has_demo: np.ndarray
  texts: tuple[str, ...]
  answers: tuple[str, ...]

  def __post_init__(self):
    n = self.prompts.shape[0]
    for field, ndim in (("prompts", 2), ("prompt_lengths", 1), ("targets", 2),
                        ("difficulty", 1), ("demos", 2), ("has_demo", 1)):
      value = getattr(self, field)
      if value.ndim != ndim or value.shape[0] != n:
        raise ValueError(
            f"TaskData.{field} must have {ndim} dims and {n} rows, got shape {value.shape}")
    if len(self.texts) != n or len(self.answers) != n:
      raise ValueError(
          f"TaskData.texts / answers must have {n} entries, got {len(self.texts)} / "
          f"{len(self.answers)}")

  @property
  def size(self) -> int:
    return int(self.prompts.shape[0])


@dataclasses.dataclass(frozen=True)
class Example:
  """One generated problem, before tokenization (what a task's generator returns).

  Attributes:
    text: prompt text without bos.
    completion: one correct completion text without eos (the demonstration).
    answer: reference answer string (the task's `answers` entry).
    target: the full target row (length `target_len`).
    difficulty: difficulty level.
    has_demo: whether the demonstration is shown to the trainer.
  """

  text: str
  completion: str
  answer: str
  target: tuple[int, ...]
  difficulty: int
  has_demo: bool = True


class BuiltinTask(abc.ABC):
  """Base of the built-in tasks; subclasses are frozen dataclasses of settings.

  Subclasses define the dataclass fields `train_size`, `test_size`, `seed` and `test_seed`, the
  class constants `name` and `alphabet`, the length properties, `_sample` (one random problem)
  and the two rewards.
  """

  name: ClassVar[str] = ""
  alphabet: ClassVar[str] = ""
  has_graph_reward: ClassVar[bool] = True  # `reward` is jittable (text tasks score on the host)

  @property
  def tokenizer(self) -> CharTokenizer:
    return CharTokenizer(self.alphabet)

  @property
  @abc.abstractmethod
  def max_prompt_len(self) -> int:
    """Prompt tokens including bos (the P of `TaskData.prompts`)."""

  @property
  @abc.abstractmethod
  def max_completion_len(self) -> int:
    """Completion tokens including eos the sampler should allow (the C of `TaskData.demos`)."""

  @property
  @abc.abstractmethod
  def target_len(self) -> int:
    """Width A of `TaskData.targets`."""

  @abc.abstractmethod
  def reward(self, completions, lengths, targets):
    """In-graph reward: [S, L] int32, [S] int32, [S, A] int32 -> [S] float32 in [0, 1]."""

  @abc.abstractmethod
  def reward_text(self, completion: str, answer) -> float:
    """Python reference reward of `completion` (text before eos) against `answer`.

    `answer` is an `answers` entry or a target row.
    """

  @abc.abstractmethod
  def _sample(self, rng: random.Random, split: str) -> Example:
    """Draws one problem from `rng` (only `rng.random()`, whose stream Python keeps stable)."""

  def _test_cap(self, difficulty: int) -> int | None:
    """Most test problems of one difficulty level (None: no cap); keeps small levels in train."""
    del difficulty
    return None

  def split(self, split: str) -> TaskData:
    """Returns the `"train"` or `"test"` split (deterministic; cached per task config).

    Args:
      split: "train" (`train_size` problems drawn with `seed`, duplicates allowed, no text that
        is in the test split) or "test" (`test_size` distinct problems drawn with `test_seed`).

    Returns:
      The split as read-only numpy arrays.
    """
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _build_split(self, split)

  def decode_completion(self, tokens: Sequence[int], length: int) -> str | None:
    """Text before the first eos within `length`, or None.

    None means the in-graph rewards score the row 0: there is no eos before `length`, or a
    special or out-of-vocabulary token precedes it.
    """
    tok = self.tokenizer
    ids = [int(t) for t in list(tokens)[:max(int(length), 0)]]
    if tok.eos_id not in ids:
      return None
    content = ids[:ids.index(tok.eos_id)]
    if any(not 3 <= i < tok.vocab_size for i in content):
      return None
    return tok.decode(content)

  def reference_rewards(self, completions, lengths, targets) -> np.ndarray:
    """Python reference of `reward` on token arrays (a loop over rows; for tests and hosts)."""
    completions, lengths, targets = map(np.asarray, (completions, lengths, targets))
    out = np.zeros(completions.shape[0], np.float32)
    for i in range(completions.shape[0]):
      text = self.decode_completion(completions[i], lengths[i])
      out[i] = 0.0 if text is None else self.reward_text(text, targets[i])
    return out

  def encode_completions(self, texts: Sequence[str], length: int | None = None) -> tuple[
      np.ndarray, np.ndarray]:
    """Encodes completion texts as a sampler would return them: text + eos, right-padded.

    Returns:
      (completions [S, length] int32, lengths [S] int32 including eos).
    """
    tok = self.tokenizer
    length = self.max_completion_len if length is None else length
    out = np.full((len(texts), length), tok.pad_id, np.int32)
    lengths = np.zeros(len(texts), np.int32)
    for i, text in enumerate(texts):
      ids = (tok.encode(text) + [tok.eos_id])[:length]
      out[i, :len(ids)] = ids
      lengths[i] = len(ids)
    return out, lengths


def make_task(name: str, **settings) -> BuiltinTask:
  """Builds the built-in task `name` with `settings` (its dataclass fields).

  Raises:
    ValueError: unknown task name (the message lists the valid ones) or unknown setting.
  """
  if name not in _TASKS:
    raise ValueError(f"unknown built-in task {name!r}; valid names: {', '.join(TASK_NAMES)}")
  module_name, class_name = _TASKS[name]
  cls = getattr(importlib.import_module(module_name), class_name)
  valid = sorted(f.name for f in dataclasses.fields(cls))
  unknown = sorted(set(settings) - set(valid))
  if unknown:
    raise ValueError(f"unknown settings {unknown} for task {name!r}; valid settings: {valid}")
  return cls(**settings)


def randbelow(rng: random.Random, n: int) -> int:
  """Uniform int in [0, n) from `rng.random()` only (stable across Python versions)."""
  return min(int(rng.random() * n), n - 1)


@functools.lru_cache(maxsize=8)
def _examples(task: BuiltinTask, split: str) -> tuple[Example, ...]:
  if split == "test":
    rng = random.Random(f"{task.name}/test/{task.test_seed}")
    out, seen, per_level = [], set(), {}
    attempts = 0
    while len(out) < task.test_size:
      attempts += 1
      if attempts > 200 * task.test_size + 10_000:
        raise ValueError(
            f"{task.name}: could not draw test_size={task.test_size} distinct test problems; "
            "lower test_size or widen the task settings")
      ex = task._sample(rng, split)
      cap = task._test_cap(ex.difficulty)
      if ex.text in seen or (cap is not None and per_level.get(ex.difficulty, 0) >= cap):
        continue
      seen.add(ex.text)
      per_level[ex.difficulty] = per_level.get(ex.difficulty, 0) + 1
      out.append(ex)
    return tuple(out)
  held_out = {ex.text for ex in _examples(task, "test")}
  rng = random.Random(f"{task.name}/train/{task.seed}")
  out = []
  attempts = 0
  while len(out) < task.train_size:
    attempts += 1
    if attempts > 100 * task.train_size + 10_000:
      raise ValueError(f"{task.name}: the test split holds out almost every problem; widen the "
                       "task settings or lower test_size")
    ex = task._sample(rng, split)
    if ex.text not in held_out:
      out.append(ex)
  return tuple(out)


@functools.lru_cache(maxsize=8)
def _build_split(task: BuiltinTask, split: str) -> TaskData:
  examples = _examples(task, split)
  tok = task.tokenizer
  n, p, c = len(examples), task.max_prompt_len, task.max_completion_len
  prompts = np.full((n, p), tok.pad_id, np.int32)
  prompt_lengths = np.zeros(n, np.int32)
  demos = np.full((n, c), tok.pad_id, np.int32)
  targets = np.asarray([ex.target for ex in examples], np.int32).reshape(n, task.target_len)
  for i, ex in enumerate(examples):
    ids = tok.encode(ex.text, add_bos=True)
    demo = tok.encode(ex.completion) + [tok.eos_id]
    if len(ids) > p or len(demo) > c:  # a bug in the task's length bounds, not a user error
      raise AssertionError(f"{task.name}: {ex.text!r} -> {ex.completion!r} exceeds ({p}, {c})")
    prompts[i, p - len(ids):] = ids
    prompt_lengths[i] = len(ids)
    if ex.has_demo:
      demos[i, :len(demo)] = demo
  data = TaskData(
      prompts=prompts, prompt_lengths=prompt_lengths, targets=targets,
      difficulty=np.asarray([ex.difficulty for ex in examples], np.int32),
      demos=demos, has_demo=np.asarray([ex.has_demo for ex in examples], bool),
      texts=tuple(ex.text for ex in examples), answers=tuple(ex.answer for ex in examples))
  for field in ("prompts", "prompt_lengths", "targets", "difficulty", "demos", "has_demo"):
    getattr(data, field).flags.writeable = False  # shared through the cache
  return data
