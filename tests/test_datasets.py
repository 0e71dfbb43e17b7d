"""Tests for adaptive_rl.tasks.datasets on small files written here."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from adaptive_rl.tasks import datasets as ds

_ROWS = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}.\n#### {2 * i:,}"}
         for i in range(0, 1500, 100)]  # 15 rows; answers like "#### 2,800"


def _write_jsonl(path, rows, extra_lines=()) -> None:
  lines = [json.dumps(r) for r in rows]
  for at, line in extra_lines:
    lines.insert(at, line)
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_jsonl_gsm8k_answers_and_ids(tmp_path):
  path = tmp_path / "train.jsonl"
  _write_jsonl(path, _ROWS, extra_lines=[(3, "   ")])  # blank lines are ignored
  data = ds.load_text_dataset(ds.TextDatasetConfig(str(path), shuffle_seed=None))
  assert len(data) == 15 and data.skipped == 0
  assert data[0] == ds.Example(0, "What is 0 + 0?", "0")
  assert data[14].answer == "2800"  # "#### 2,800" -> "2800"
  assert list(data.ids) == list(range(15))
  assert [ex.question for ex in data] == [r["question"] for r in _ROWS]


def test_shuffle_is_deterministic_and_keeps_pairs(tmp_path):
  path = tmp_path / "train.jsonl"
  _write_jsonl(path, _ROWS)
  a = ds.load_text_dataset(ds.TextDatasetConfig(str(path), shuffle_seed=3))
  b = ds.load_text_dataset(ds.TextDatasetConfig(str(path), shuffle_seed=3))
  c = ds.load_text_dataset(ds.TextDatasetConfig(str(path), shuffle_seed=4))
  assert a.questions == b.questions and a.questions != c.questions
  assert sorted(a.ids.tolist()) == list(range(15)) and a.ids.tolist() != list(range(15))
  for ex in a:  # each id still points at its own row
    assert ex.question == _ROWS[ex.id]["question"]
    assert ex.answer == str(2 * ex.id * 100)


def test_malformed_rows_raise_with_file_line_and_expectation(tmp_path):
  path = tmp_path / "bad.jsonl"
  _write_jsonl(path, _ROWS[:4], extra_lines=[(2, '{"question": "broken'),  # line 3
                                             (4, "[1, 2]")])  # line 5
  with pytest.raises(ValueError, match=r"bad\.jsonl: line 3: expected one JSON object per line"):
    ds.load_text_dataset(ds.TextDatasetConfig(str(path)))
  with pytest.raises(ValueError, match=r"bad\.jsonl: line 3: expected one JSON object"):
    ds.load_rows(path)
  data = ds.load_text_dataset(ds.TextDatasetConfig(str(path), skip_bad_rows=True))
  assert len(data) == 4 and data.skipped == 2

  cases = [
      ({"answer": "#### 1"}, r"line 2: missing field 'question' \(fields present: \['answer'\]\)"),
      ({"question": 5, "answer": "#### 1"}, r"line 2: field 'question' must be a non-empty string"),
      ({"question": "q", "answer": None}, r"line 2: field 'answer' must be a string or a number"),
      ({"question": "q", "answer": "no marker"}, r"line 2: field 'answer' must contain a '####"),
  ]
  for row, message in cases:
    _write_jsonl(path, [_ROWS[0], row, _ROWS[1]])
    with pytest.raises(ValueError, match=message):
      ds.load_text_dataset(ds.TextDatasetConfig(str(path), answer_format="gsm8k"))
    data = ds.load_text_dataset(ds.TextDatasetConfig(str(path), answer_format="gsm8k",
                                                     skip_bad_rows=True))
    assert (len(data), data.skipped) == (2, 1)


def test_answer_formats_keys_and_max_rows(tmp_path):
  rows = [{"problem": "Find x.", "solution": "So $x = \\boxed{\\frac{1}{2}}$."},
          {"problem": "Count.", "solution": 7},
          {"problem": "Pick.", "solution": "The answer is (B)"}]
  path = tmp_path / "math.json"
  path.write_text(json.dumps(rows), encoding="utf-8")
  cfg = dict(path=str(path), question_key="problem", answer_key="solution", shuffle_seed=None)
  data = ds.load_text_dataset(ds.TextDatasetConfig(**cfg))
  assert data.answers == ("\\frac{1}{2}", "7", "The answer is (B)")
  with pytest.raises(ValueError, match=r"math\.json: item 2: field 'solution' must contain a "
                                       r"\\boxed\{\.\.\.\} answer, got '7'"):
    ds.load_text_dataset(ds.TextDatasetConfig(**cfg, answer_format="boxed"))
  raw = ds.load_text_dataset(ds.TextDatasetConfig(**cfg, answer_format="raw"))
  assert raw.answers[0] == rows[0]["solution"]
  assert ds.load_text_dataset(ds.TextDatasetConfig(**cfg, max_rows=2)).answers == (
      "\\frac{1}{2}", "7")
  (tmp_path / "obj.json").write_text('{"a": 1}', encoding="utf-8")
  with pytest.raises(ValueError, match="expected a JSON list of objects at the top level"):
    ds.load_rows(tmp_path / "obj.json")
  (tmp_path / "broken.json").write_text('[\n{"a": 1},\n{"a"}]', encoding="utf-8")
  with pytest.raises(ValueError, match=r"broken\.json: line 3: expected a JSON list"):
    ds.load_rows(tmp_path / "broken.json")


def test_config_validation(tmp_path):
  bad = [(dict(answer_format="latex"), "answer_format"), (dict(max_rows=-1), "max_rows"),
         (dict(shuffle_seed=1.5), "shuffle_seed"), (dict(question_key=""), "question_key"),
         (dict(skip_bad_rows=1), "skip_bad_rows"), (dict(fmt="csv"), "fmt")]
  for kwargs, field in bad:
    with pytest.raises(ValueError, match=f"TextDatasetConfig.{field}"):
      ds.TextDatasetConfig("x.jsonl", **kwargs)
  with pytest.raises(ValueError, match="cannot tell the format"):
    ds.load_rows(tmp_path / "data.csv")
  with pytest.raises(ValueError, match="does not exist"):
    ds.load_rows(tmp_path / "missing.jsonl")
  with pytest.raises(ValueError, match="expected tfds:NAME/SPLIT"):
    ds.load_rows("tfds:gsm8k")


def test_shards_are_disjoint_equal_and_cover(tmp_path):
  path = tmp_path / "train.jsonl"
  _write_jsonl(path, _ROWS)
  data = ds.load_text_dataset(ds.TextDatasetConfig(str(path), shuffle_seed=1))
  shards = [data.shard(i, 4) for i in range(4)]
  assert [len(s) for s in shards] == [3] * 4  # 15 // 4; the last 3 of the stored order dropped
  ids = [set(s.ids.tolist()) for s in shards]
  assert sum(map(len, ids)) == len(set().union(*ids)) == 12
  assert set().union(*ids) == set(data.ids[:12].tolist())
  for s in shards:
    for ex in s:
      assert ex.question == _ROWS[ex.id]["question"]
  with pytest.raises(ValueError, match="process_index < process_count"):
    data.shard(4, 4)
  with pytest.raises(ValueError, match="cannot give each of 16 processes"):
    data.shard(0, 16)


def test_stream_position_save_and_restore(tmp_path):
  path = tmp_path / "train.jsonl"
  _write_jsonl(path, _ROWS)
  cfg = ds.TextDatasetConfig(str(path), shuffle_seed=5)
  data = ds.load_text_dataset(cfg)
  first = [ex.id for ex in data.next_batch(10)]
  assert first == data.ids[:10].tolist()
  state = json.loads(json.dumps(data.state_dict()))
  rest = [ex.id for ex in data.next_batch(25)]  # crosses two epoch boundaries
  assert data.epoch == 2
  # Every epoch is a permutation; later epochs are reshuffled.
  stream = first + rest
  assert sorted(stream[:15]) == sorted(stream[15:30]) == list(range(15))
  assert stream[:15] != stream[15:30]

  resumed = ds.load_text_dataset(cfg)
  resumed.load_state_dict(state)
  assert [ex.id for ex in resumed.next_batch(25)] == rest
  other = ds.load_text_dataset(ds.TextDatasetConfig(str(path), shuffle_seed=6))
  with pytest.raises(ValueError, match="saved for a different dataset"):
    other.load_state_dict(state)
  with pytest.raises(ValueError, match="saved for a different dataset"):
    data.shard(0, 2).load_state_dict(state)
  with pytest.raises(ValueError, match="expected the keys"):
    data.load_state_dict({"epoch": 0})
  # Without a seed the order is the file order in every epoch.
  plain = ds.load_text_dataset(ds.TextDatasetConfig(str(path), shuffle_seed=None))
  assert [ex.id for ex in plain.next_batch(30)] == list(range(15)) * 2


def test_parquet(tmp_path):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  path = tmp_path / "train.parquet"
  pq.write_table(pa.Table.from_pylist(_ROWS[:5] + [{"question": None, "answer": "#### 1"}]), path)
  rows = ds.load_rows(path)
  assert rows[:5] == _ROWS[:5]
  with pytest.raises(ValueError, match=r"train\.parquet: row 6: field 'question' must be a "
                                       r"non-empty string, got None"):
    ds.load_text_dataset(ds.TextDatasetConfig(str(path)))
  data = ds.load_text_dataset(ds.TextDatasetConfig(str(path), skip_bad_rows=True,
                                                   shuffle_seed=None))
  assert data.answers == ("0", "200", "400", "600", "800") and data.skipped == 1


@pytest.fixture
def saved_dataset(tmp_path):
  datasets = pytest.importorskip("datasets")
  folder = tmp_path / "saved"
  datasets.Dataset.from_list(_ROWS).save_to_disk(str(folder), num_shards=2)
  datasets.DatasetDict({"train": datasets.Dataset.from_list(_ROWS[:2])}).save_to_disk(
      str(tmp_path / "dict"))
  return folder


@pytest.mark.parametrize("reader", ["datasets", "pyarrow"])
def test_save_to_disk_folder(saved_dataset, reader, monkeypatch):
  if reader == "pyarrow":
    monkeypatch.setitem(sys.modules, "datasets", None)  # the fallback reads the arrow shards
  assert ds.load_rows(saved_dataset) == _ROWS
  data = ds.load_text_dataset(ds.TextDatasetConfig(str(saved_dataset), shuffle_seed=None))
  assert data.answers[-1] == "2800"
  with pytest.raises(ValueError, match="is a DatasetDict folder; pass one split's folder"):
    ds.load_rows(saved_dataset.parent / "dict")
  assert ds.load_rows(saved_dataset.parent / "dict" / "train") == _ROWS[:2]


def test_numbers_are_decoded_for_tfds_rows():
  row = {"question": b"caf\xc3\xa9", "answer": np.int64(3)}
  assert ds._decode(row) == {"question": "café", "answer": 3}  # pylint: disable=protected-access


def test_tfds_sources_parse_without_tfds():
  spec = ds.parse_tfds("tfds:my_math/main:1.0.0/test[:10%]?data_dir=~/d&download=true")
  assert spec == ds.TfdsSpec("my_math/main:1.0.0", "test[:10%]", os.path.expanduser("~/d"), True)
  assert ds.parse_tfds("tfds:x/train") == ds.TfdsSpec("x", "train", None, False)
  for path, message in [("tfds:gsm8k", "split is missing"), ("tfds:/train", "name is missing"),
                        ("tfds:x/", "split is missing"),
                        ("tfds:x/train?datadir=/d", r"unknown TFDS option 'datadir=/d'"),
                        ("tfds:x/train?download=maybe", "download must be true or false")]:
    with pytest.raises(ValueError, match=message):
      ds.parse_tfds(path)
  arrays = {"tokens": np.array([b"a", b"b"], dtype=object), "n": np.arange(2)}
  assert ds._decode(arrays) == {"tokens": ["a", "b"], "n": [0, 1]}  # pylint: disable=protected-access
