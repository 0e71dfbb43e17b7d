"""Question / answer datasets from files: JSONL, JSON, parquet, `save_to_disk` folders, TFDS.

`load_rows(path)` reads the records of one file (or folder) as dicts; `load_text_dataset(cfg)`
turns them into a `TextDataset` of (question, bare reference answer) pairs with stable ids, a
deterministic shuffle, per-process shards and a resumable position.

Sources, chosen by `fmt` or else by the path:
  * "jsonl" (`*.jsonl`): one JSON object per line; blank lines are ignored;
  * "json" (`*.json`): one JSON list of objects;
  * "parquet" (`*.parquet`): needs pyarrow (extra "data");
  * "disk" (a directory): a `datasets.Dataset.save_to_disk` folder, read with the `datasets`
    package when installed, else its arrow files with pyarrow (a `DatasetDict` folder must be
    given as its split's sub-folder);
  * "tfds" (`tfds:NAME/SPLIT[?data_dir=DIR][&download=true]`): a prepared TensorFlow Datasets
    dataset (extra "tfds"; see `parse_tfds`), bytes decoded as UTF-8. Datasets stored as
    array_record or parquet are read through `tfds.data_source` without TensorFlow; the older
    tfrecord format needs TensorFlow as well (`pip install tensorflow-cpu`).

A malformed record (a line that is not JSON, not an object, a missing field, a question that is not
a non-empty string, an answer without the required marker) raises ValueError naming the file, the
1-based line / item / row and what was expected; with `skip_bad_rows=True` it is skipped and
counted in `TextDataset.skipped`. A JSON file that does not parse at all always raises.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Iterator

import numpy as np

from adaptive_rl.tasks import answers as answers_lib

FORMATS = ("jsonl", "json", "parquet", "disk", "tfds")


@dataclasses.dataclass(frozen=True)
class _Bad:
  """A record that could not be read; `message` says what was expected."""

  message: str


def _infer_format(path: str) -> str:
  if path.startswith("tfds:"):
    return "tfds"
  if os.path.isdir(path):
    return "disk"
  for ext, fmt in ((".jsonl", "jsonl"), (".json", "json"), (".parquet", "parquet")):
    if path.endswith(ext):
      return fmt
  raise ValueError(
      f"load_rows: cannot tell the format of {path!r} from its name; use a .jsonl / .json / "
      f".parquet file, a save_to_disk directory or tfds:NAME/SPLIT, or pass fmt= one of {FORMATS}")


def _jsonl(path: str) -> Iterator[tuple[int, Any]]:
  # Lines are decoded one at a time so that a bad byte sequence names its own line.
  with open(path, "rb") as f:
    for n, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield n, _Bad(f"expected UTF-8 text, got an invalid byte at column {e.start + 1}")
        continue
      if not line.strip():
        continue
      try:
        yield n, json.loads(line)
      except json.JSONDecodeError as e:
        yield n, _Bad(f"expected one JSON object per line, got invalid JSON ({e.msg} at column "
                      f"{e.colno})")
      except (ValueError, RecursionError) as e:  # e.g. a 5000-digit integer, 100k nested [
        yield n, _Bad(f"expected one JSON object per line, got JSON that cannot be read "
                      f"({type(e).__name__}: {str(e)[:80]})")


def _json(path: str) -> Iterator[tuple[int, Any]]:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(
        f"{path}: line {e.lineno}: expected a JSON list of objects, got invalid JSON ({e.msg} "
        f"at column {e.colno}); for JSON Lines use the .jsonl extension or fmt='jsonl'") from e
  except (ValueError, RecursionError) as e:  # bad UTF-8, huge integers, extreme nesting
    raise ValueError(f"{path}: expected a JSON list of objects, got a file that cannot be read "
                     f"({type(e).__name__}: {str(e)[:80]})") from e
  if not isinstance(data, list):
    raise ValueError(f"{path}: expected a JSON list of objects at the top level, got "
                     f"{type(data).__name__}")
  yield from enumerate(data, start=1)


def _import_pyarrow(path: str):
  try:
    import pyarrow  # pylint: disable=g-import-not-at-top  (optional extra "data")
  except ImportError as e:
    raise ImportError(f"reading {path!r} needs pyarrow: pip install 'adaptive_rl[data]'") from e
  return pyarrow


def _parquet(path: str) -> Iterator[tuple[int, Any]]:
  _import_pyarrow(path)
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  yield from enumerate(pq.read_table(path).to_pylist(), start=1)


def _disk(path: str) -> Iterator[tuple[int, Any]]:
  dict_file = os.path.join(path, "dataset_dict.json")
  if os.path.isfile(dict_file):
    with open(dict_file, encoding="utf-8") as f:
      splits = json.load(f).get("splits", [])
    raise ValueError(f"{path}: is a DatasetDict folder; pass one split's folder, one of "
                     f"{[os.path.join(path, s) for s in splits]}")
  state_file = os.path.join(path, "state.json")
  if not os.path.isfile(state_file):
    raise ValueError(f"{path}: expected a datasets.save_to_disk folder (with state.json)")
  try:
    import datasets  # pylint: disable=g-import-not-at-top  (optional extra "data")
  except ImportError:
    datasets = None
  if datasets is not None:
    yield from enumerate(datasets.load_from_disk(path).to_list(), start=1)
    return
  pa = _import_pyarrow(path)
  with open(state_file, encoding="utf-8") as f:
    files = [entry["filename"] for entry in json.load(f)["_data_files"]]
  n = 0
  for name in files:  # save_to_disk writes Arrow IPC streams, one or more shards in order
    with pa.memory_map(os.path.join(path, name)) as source:
      for row in pa.ipc.open_stream(source).read_all().to_pylist():
        n += 1
        yield n, row


def _decode(value: Any) -> Any:
  """A TFDS record as plain Python: bytes -> str (UTF-8), numpy scalars / arrays -> Python."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return [_decode(v) for v in value.tolist()]
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, dict):
    return {k: _decode(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_decode(v) for v in value]
  return value


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
  """A TFDS source parsed from `tfds:NAME/SPLIT[?data_dir=DIR][&download=true]`.

  Attributes:
    name: the dataset, as `tfds.builder` takes it: `NAME`, `NAME/CONFIG`, `NAME:VERSION` or
      `NAME/CONFIG:VERSION` (e.g. `my_gsm8k`, `my_math/main:1.0.0`).
    split: a split or a split expression of that dataset (`train`, `test[:100]`, `train+test`).
    data_dir: the TFDS data directory holding `NAME/[CONFIG/]VERSION/`; None = TFDS's default
      (`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`).
    download: download and prepare the dataset (as array_record) when it is not prepared in
      `data_dir`; off by default, so that a training job never starts a download (and several
      processes never prepare the same directory at once): prepare it beforehand, e.g.
      `tfds.builder(NAME, data_dir=DIR, file_format="array_record").download_and_prepare()`.
  """

  name: str
  split: str
  data_dir: str | None = None
  download: bool = False


_TFDS_OPTIONS = ("data_dir", "download")
_TFDS_FORM = "tfds:NAME/SPLIT[?data_dir=DIR][&download=true], e.g. tfds:my_gsm8k/train"


def parse_tfds(path: str) -> TfdsSpec:
  """Parses `tfds:NAME/SPLIT[?data_dir=DIR][&download=true]` (the `tfds:` prefix is optional).

  The split is the part after the last "/" of the part before "?"; everything before it is the
  name (which may hold a config and a version).

  Args:
    path: the source string.

  Returns:
    The parsed spec.

  Raises:
    ValueError: naming the part that is missing or malformed (name, split, an unknown option
      or a bad `download` value).
  """
  spec = path[len("tfds:"):] if path.startswith("tfds:") else path
  spec, _, query = spec.partition("?")
  name, sep, split = spec.rpartition("/")
  if not name.strip("/") or not split:
    missing = "name" if sep and split else "split"
    raise ValueError(f"{path!r}: the TFDS dataset {missing} is missing; expected {_TFDS_FORM}")
  options: dict[str, str] = {}
  for item in query.split("&") if query else ():
    key, eq, value = item.partition("=")
    if key not in _TFDS_OPTIONS or not eq:
      raise ValueError(f"{path!r}: unknown TFDS option {item!r}; options are "
                       f"{list(_TFDS_OPTIONS)} (expected {_TFDS_FORM})")
    options[key] = value
  data_dir = options.get("data_dir") or None
  download = options.get("download", "false").lower()
  if download not in ("true", "false", "1", "0", "yes", "no"):
    raise ValueError(f"{path!r}: TFDS option download must be true or false, got {download!r}")
  if data_dir is not None:
    data_dir = os.path.expanduser(data_dir)
  return TfdsSpec(name=name.strip("/"), split=split, data_dir=data_dir,
                  download=download in ("true", "1", "yes"))


def _import_tfds(path: str):
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (extra "tfds")
  except ImportError as e:
    raise ImportError(f"reading {path!r} needs tensorflow-datasets: "
                      "pip install 'adaptive_rl[tfds]'") from e
  return tfds


def _first_line(e: BaseException) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _tfds_builder(path: str, spec: TfdsSpec):
  """The prepared dataset's builder, or a ValueError naming what is wrong."""
  tfds = _import_tfds(path)
  where = spec.data_dir or "the default TFDS data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
  try:
    builder = tfds.builder(spec.name, data_dir=spec.data_dir)
  except tfds.core.DatasetNotFoundError as e:
    raise ValueError(
        f"{path}: TFDS dataset name {spec.name!r} not found: neither a registered TFDS "
        f"dataset nor prepared in {where} ({_first_line(e)}); check the name (NAME, "
        f"NAME/CONFIG or NAME:VERSION) and data_dir") from None
  except ValueError as e:  # a name tfds cannot parse
    raise ValueError(f"{path}: bad TFDS dataset name {spec.name!r}: {_first_line(e)}") from None
  if not builder.is_prepared():
    if not spec.download:
      raise ValueError(
          f"{path}: TFDS dataset {spec.name!r} is not prepared in {where} (looked for "
          f"{builder.data_dir}); prepare it first (tfds.builder({spec.name!r}, data_dir=DIR, "
          f"file_format='array_record').download_and_prepare()) or add &download=true to the "
          f"source")
    builder = tfds.builder(spec.name, data_dir=spec.data_dir, file_format="array_record")
    builder.download_and_prepare()
  return tfds, builder


def _tfds(path: str) -> Iterator[tuple[int, Any]]:
  spec = parse_tfds(path)
  tfds, builder = _tfds_builder(path, spec)
  splits = sorted(builder.info.splits)
  try:
    source = builder.as_data_source(split=spec.split)
  except NotImplementedError:  # tfrecord (sequential) files: tf.data reads them
    source = None
  except (ValueError, KeyError, AssertionError) as e:
    raise ValueError(f"{path}: TFDS split {spec.split!r} is not a split of {spec.name!r} "
                     f"(splits: {splits}): {_first_line(e)}") from None
  if source is not None:
    records: Iterator[Any] = (source[i] for i in range(len(source)))
  else:
    try:
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      raise ImportError(
          f"reading {path!r} needs TensorFlow: the dataset is stored as "
          f"{builder.info.file_format.value} files, which only tf.data reads (pip install "
          f"tensorflow-cpu), or prepare it again as array_record (file_format='array_record'), "
          f"which is read without TensorFlow") from None
    try:
      records = iter(tfds.as_numpy(builder.as_dataset(split=spec.split, shuffle_files=False)))
    except (ValueError, KeyError) as e:
      raise ValueError(f"{path}: TFDS split {spec.split!r} is not a split of {spec.name!r} "
                       f"(splits: {splits}): {_first_line(e)}") from None
  for n, row in enumerate(records, start=1):
    try:
      yield n, _decode(row)
    except UnicodeDecodeError as e:
      yield n, _Bad(f"expected UTF-8 text, got an invalid byte at position {e.start + 1}")


_READERS = {"jsonl": (_jsonl, "line"), "json": (_json, "item"), "parquet": (_parquet, "row"),
            "disk": (_disk, "row"), "tfds": (_tfds, "row")}


def _records(path: str, fmt: str | None) -> tuple[str, Iterator[tuple[int, Any]]]:
  """(unit name, iterator of (1-based number, record or _Bad)) for a source."""
  path = os.fspath(path)
  fmt = fmt or _infer_format(path)
  if fmt not in _READERS:
    raise ValueError(f"load_rows: fmt must be one of {FORMATS}, got {fmt!r}")
  if fmt != "tfds" and not os.path.exists(path):
    raise ValueError(f"load_rows: {path!r} does not exist")
  reader, unit = _READERS[fmt]
  return unit, reader(path)


def load_rows(path: str | os.PathLike, *, fmt: str | None = None) -> list[dict]:
  """Reads every record of a dataset source.

  Args:
    path: a file, a `save_to_disk` folder, or "tfds:NAME/SPLIT".
    fmt: one of "jsonl", "json", "parquet", "disk", "tfds"; None infers it from `path`.

  Returns:
    The records as dicts, in source order.

  Raises:
    ValueError: naming the file and 1-based line / item / row of the first record that is not
      a JSON object (or not valid JSON), or when the source or format is unknown.
    ImportError: when the format's optional package is missing.
  """
  unit, records = _records(path, fmt)
  rows = []
  for n, record in records:
    if isinstance(record, _Bad):
      raise ValueError(f"{os.fspath(path)}: {unit} {n}: {record.message}")
    if not isinstance(record, dict):
      raise ValueError(f"{os.fspath(path)}: {unit} {n}: expected an object, got "
                       f"{type(record).__name__}")
    rows.append(record)
  return rows


@dataclasses.dataclass(frozen=True)
class TextDatasetConfig:
  """Which file to read and how to read its questions and answers.

  Attributes:
    path: a source accepted by `load_rows`.
    question_key: the field holding the question text.
    answer_key: the field holding the answer (a string, or a number converted with str()).
    answer_format: how to get the bare answer (`answers.reference_answer`): "gsm8k" (required
      "#### x"), "boxed" (required `\\boxed{x}`, e.g. MATH solutions), "raw" (the field as is)
      or "auto" (the first marker present, else raw).
    skip_bad_rows: skip and count malformed records instead of raising.
    max_rows: keep only the first `max_rows` valid records in source order (0: all), before
      shuffling, so a subset does not depend on the seed.
    shuffle_seed: seed of the shuffle (numpy default_rng); None keeps source order and does not
      reshuffle between epochs.
    fmt: the source format (see `load_rows`); None infers it from the path.
  """

  path: str
  question_key: str = "question"
  answer_key: str = "answer"
  answer_format: str = "auto"
  skip_bad_rows: bool = False
  max_rows: int = 0
  shuffle_seed: int | None = 0
  fmt: str | None = None

  def __post_init__(self):
    if not isinstance(self.path, (str, os.PathLike)) or not os.fspath(self.path):
      raise ValueError(f"TextDatasetConfig.path must be a non-empty path, got {self.path!r}")
    for field in ("question_key", "answer_key"):
      value = getattr(self, field)
      if not isinstance(value, str) or not value:
        raise ValueError(f"TextDatasetConfig.{field} must be a non-empty string, got {value!r}")
    if self.answer_format not in answers_lib.ANSWER_FORMATS:
      raise ValueError(f"TextDatasetConfig.answer_format must be one of "
                       f"{answers_lib.ANSWER_FORMATS}, got {self.answer_format!r}")
    if not isinstance(self.skip_bad_rows, bool):
      raise ValueError(f"TextDatasetConfig.skip_bad_rows must be a bool, got "
                       f"{self.skip_bad_rows!r}")
    if isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int) or self.max_rows < 0:
      raise ValueError(f"TextDatasetConfig.max_rows must be an int >= 0 (0: all), got "
                       f"{self.max_rows!r}")
    if self.shuffle_seed is not None and (isinstance(self.shuffle_seed, bool)
                                          or not isinstance(self.shuffle_seed, int)
                                          or self.shuffle_seed < 0):
      raise ValueError(f"TextDatasetConfig.shuffle_seed must be an int >= 0 or None, got "
                       f"{self.shuffle_seed!r}")
    if self.fmt is not None and self.fmt not in FORMATS:
      raise ValueError(f"TextDatasetConfig.fmt must be None or one of {FORMATS}, got "
                       f"{self.fmt!r}")


@dataclasses.dataclass(frozen=True)
class Example:
  """One prompt: its stable id (index among the loaded records), question and bare answer."""

  id: int
  question: str
  answer: str


class TextDataset:
  """Questions and bare answers, in a fixed shuffled order, with a resumable stream position.

  `next_batch(n)` streams examples forever: epoch 0 in the stored order, each later epoch in a
  permutation drawn from (seed, epoch) (the stored order again when the seed is None). Its
  position is `state_dict()` and is restored by `load_state_dict()`. Indexing and iteration
  (`ds[i]`, `for ex in ds`) read the stored order and leave the position alone.

  Attributes:
    questions: the questions, in stored order.
    answers: the bare reference answers, aligned with `questions`.
    ids: [N] int64, each example's index among the records loaded from the source (so allocator
      state keyed by id survives shuffling and sharding).
    skipped: malformed records skipped while loading.
    source: where the records came from.
    seed: the shuffle seed (None: source order).
  """

  def __init__(self, questions, answers, ids, *, source: str = "", skipped: int = 0,
               seed: int | None = None):
    """Wraps aligned sequences.

    Args:
      questions: question strings.
      answers: bare answers, one per question.
      ids: one int id per question.
      source: a description of where they came from.
      skipped: how many malformed records were skipped.
      seed: the seed for per-epoch reshuffles (None: never reshuffle).
    """
    self.questions = tuple(questions)
    self.answers = tuple(answers)
    self.ids = np.asarray(ids, np.int64)
    self.ids.flags.writeable = False
    if not len(self.questions) == len(self.answers) == len(self.ids):
      raise ValueError(f"TextDataset: {len(self.questions)} questions, {len(self.answers)} "
                       f"answers and {len(self.ids)} ids must have the same length")
    self.source, self.skipped, self.seed = source, skipped, seed
    self._epoch, self._offset, self._order = 0, 0, None

  def __repr__(self) -> str:
    return f"TextDataset({self.source!r}, size={len(self)}, skipped={self.skipped})"

  def __len__(self) -> int:
    return len(self.questions)

  def __getitem__(self, i: int) -> Example:
    return Example(int(self.ids[i]), self.questions[i], self.answers[i])

  def __iter__(self) -> Iterator[Example]:
    return (self[i] for i in range(len(self)))

  def shard(self, process_index: int, process_count: int) -> "TextDataset":
    """This process's part: every `process_count`-th example, all parts of equal size.

    The last `len(self) % process_count` examples of the stored order belong to no part, so
    every process runs the same number of steps per epoch.

    Args:
      process_index: this process, in [0, process_count).
      process_count: the number of processes.

    Returns:
      A new dataset of `len(self) // process_count` examples at position 0; parts are disjoint.

    Raises:
      ValueError: for an index out of range, or fewer examples than processes.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(f"TextDataset.shard: need 0 <= process_index < process_count, got "
                       f"process_index={process_index}, process_count={process_count}")
    size = len(self) // process_count
    if size == 0:
      raise ValueError(f"TextDataset.shard: {len(self)} examples cannot give each of "
                       f"{process_count} processes at least one")
    take = range(process_index, size * process_count, process_count)
    return TextDataset([self.questions[i] for i in take], [self.answers[i] for i in take],
                       self.ids[list(take)], source=f"{self.source}[shard {process_index}/"
                       f"{process_count}]", skipped=self.skipped, seed=self.seed)

  def _epoch_order(self) -> np.ndarray:
    if self._order is None:
      if self._epoch == 0 or self.seed is None:
        self._order = np.arange(len(self))
      else:
        self._order = np.random.default_rng([self.seed, self._epoch]).permutation(len(self))
    return self._order

  def next_batch(self, n: int) -> list[Example]:
    """The next `n` examples of the stream, crossing epoch boundaries as needed.

    Args:
      n: how many, >= 1.

    Returns:
      The examples.
    """
    if n < 1:
      raise ValueError(f"TextDataset.next_batch: n must be >= 1, got {n}")
    out = []
    while len(out) < n:
      order = self._epoch_order()
      take = order[self._offset:self._offset + n - len(out)]
      out.extend(self[int(i)] for i in take)
      self._offset += len(take)
      if self._offset == len(self):
        self._epoch, self._offset, self._order = self._epoch + 1, 0, None
    return out

  @property
  def epoch(self) -> int:
    """How many full passes `next_batch` has completed."""
    return self._epoch

  def _fingerprint(self) -> str:
    digest = hashlib.sha256(self.ids.tobytes())
    for q in self.questions:
      digest.update(q.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()[:16]

  def state_dict(self) -> dict:
    """The stream position, JSON-serialisable.

    Returns:
      {"epoch", "offset", "size", "fingerprint"}; the fingerprint identifies the examples and
      their order, so a position is never restored onto a different dataset or shard.
    """
    return {"epoch": self._epoch, "offset": self._offset, "size": len(self),
            "fingerprint": self._fingerprint()}

  def load_state_dict(self, state: dict) -> None:
    """Restores a position saved by `state_dict`.

    Args:
      state: the saved dict.

    Raises:
      ValueError: when it belongs to a different dataset (size or fingerprint) or is invalid.
    """
    try:
      epoch, offset = int(state["epoch"]), int(state["offset"])
      size, fingerprint = int(state["size"]), str(state["fingerprint"])
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"TextDataset.load_state_dict: expected the keys epoch, offset, size, "
                       f"fingerprint; got {state!r}") from e
    if size != len(self) or fingerprint != self._fingerprint():
      raise ValueError(
          f"TextDataset.load_state_dict: the state was saved for a different dataset (size "
          f"{size}, fingerprint {fingerprint}); this one has size {len(self)}, fingerprint "
          f"{self._fingerprint()} (same file, max_rows, shuffle_seed and shard?)")
    if epoch < 0 or not 0 <= offset < max(size, 1):
      raise ValueError(f"TextDataset.load_state_dict: epoch {epoch} / offset {offset} out of "
                       f"range for size {size}")
    self._epoch, self._offset, self._order = epoch, offset, None


def _example(record: Any, cfg: TextDatasetConfig) -> tuple[str, str] | str:
  """(question, bare answer), or a message saying what was expected."""
  if isinstance(record, _Bad):
    return record.message
  if not isinstance(record, dict):
    return (f"expected an object with fields {cfg.question_key!r} and {cfg.answer_key!r}, got "
            f"{type(record).__name__}")
  for key in (cfg.question_key, cfg.answer_key):
    if key not in record:
      return f"missing field {key!r} (fields present: {sorted(map(str, record))})"
  question, answer = record[cfg.question_key], record[cfg.answer_key]
  if not isinstance(question, str) or not question.strip():
    return f"field {cfg.question_key!r} must be a non-empty string, got {question!r:.80}"
  if isinstance(answer, (int, float)) and not isinstance(answer, bool):
    answer = str(answer)
  if not isinstance(answer, str):
    return (f"field {cfg.answer_key!r} must be a string or a number, got "
            f"{type(answer).__name__}")
  bare = answers_lib.reference_answer(answer, cfg.answer_format)
  if not bare:
    need = {"gsm8k": "a '#### <answer>' line", "boxed": "a \\boxed{...} answer"}.get(
        cfg.answer_format, "a non-empty answer")
    return f"field {cfg.answer_key!r} must contain {need}, got {answer[-80:]!r}"
  return question, bare


def load_text_dataset(cfg: TextDatasetConfig) -> TextDataset:
  """Loads questions and bare answers, shuffled by `cfg.shuffle_seed`.

  Args:
    cfg: the settings.

  Returns:
    The dataset at stream position 0.

  Raises:
    ValueError: a malformed record (without `skip_bad_rows`), naming the file, the 1-based
      line / item / row and what was expected; or no valid record at all.
  """
  path = os.fspath(cfg.path)
  unit, records = _records(path, cfg.fmt)
  questions, answers, skipped = [], [], 0
  for n, record in records:
    if cfg.max_rows and len(questions) >= cfg.max_rows:
      break
    parsed = _example(record, cfg)
    if isinstance(parsed, str):
      if not cfg.skip_bad_rows:
        raise ValueError(f"{path}: {unit} {n}: {parsed} (set skip_bad_rows=True to skip such "
                         "records)")
      skipped += 1
      continue
    questions.append(parsed[0])
    answers.append(parsed[1])
  if not questions:
    raise ValueError(f"{path}: no valid records ({skipped} skipped)")
  ids = np.arange(len(questions))
  if cfg.shuffle_seed is not None:
    ids = np.random.default_rng(cfg.shuffle_seed).permutation(len(questions))
  return TextDataset([questions[i] for i in ids], [answers[i] for i in ids], ids, source=path,
                     skipped=skipped, seed=cfg.shuffle_seed)
