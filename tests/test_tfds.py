"""TFDS sources for real: a tiny dataset written in TFDS format here (no download), read back
through `tfds:NAME/SPLIT?data_dir=DIR` by the loaders and by `launch/train.py` / `evaluate.py`.

The dataset is written as array_record, which tensorflow-datasets writes and reads without
TensorFlow (the "test" extra installs tensorflow-datasets, not TensorFlow). The tfrecord path
(tf.data) runs only where TensorFlow is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from adaptive_rl.tasks import datasets as ds

tfds = pytest.importorskip(
    "tensorflow_datasets", reason="tensorflow-datasets is not installed: pip install -e '.[tfds]' "
    "(the test extra includes it)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "tiny_gsm8k"


def _rows(n: int, seed: int) -> list[dict]:
  """GSM8K-style rows in the words of tests/text_fixtures' tokenizer."""
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    a, b = (int(x) for x in rng.integers(0, 10, size=2))
    rows.append({"question": f"what is {a} plus {b} ?",
                 "answer": f"{a} + {b} = {a + b} #### {a + b}", "id": i})
  return rows


_SPLITS = {"train": _rows(24, 0), "test": _rows(6, 1)}


def _write(data_dir: str, file_format: str = "array_record", name: str = NAME) -> None:
  """Writes `_SPLITS` as TFDS dataset `name` 1.0.0 under data_dir with tfds's own writer.

  The builder is not registered (skip_registration), so reading it back, here or in a
  subprocess, goes through TFDS's builder-from-files path as for any prepared dataset.
  """

  class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "question": tfds.features.Text(), "answer": tfds.features.Text(),
          "id": tfds.features.Scalar(dtype=np.int64)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(rows) for split, rows in _SPLITS.items()}

    def _generate_examples(self, rows):
      for row in rows:
        yield row["id"], row

  Builder.name = name
  Builder(data_dir=data_dir, file_format=file_format).download_and_prepare()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds"))
  _write(d)
  return d


def _src(data_dir: str, split: str = "train", name: str = NAME) -> str:
  return f"tfds:{name}/{split}?data_dir={data_dir}"


def _by_id(rows):
  return sorted(rows, key=lambda r: r["id"])


def test_load_rows_reads_the_written_splits(data_dir):
  assert os.path.isdir(os.path.join(data_dir, NAME, "1.0.0"))
  for split, rows in _SPLITS.items():
    got = ds.load_rows(_src(data_dir, split))
    assert _by_id(got) == rows  # str fields, Python ints; TFDS stores its own order
    assert all(isinstance(r["question"], str) and type(r["id"]) is int for r in got)
  assert len(ds.load_rows(_src(data_dir, "train[:5]"))) == 5  # split expressions pass through
  assert len(ds.load_rows(_src(data_dir, "train+test"))) == 30
  # TFDS_DATA_DIR is honoured when the source names no data_dir.
  code = (f"from adaptive_rl.tasks import datasets as ds; "
          f"print(len(ds.load_rows('tfds:{NAME}/test')))")
  env = dict(os.environ, TFDS_DATA_DIR=data_dir)
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0 and out.stdout.split()[-1] == "6", out.stderr[-2000:]


def test_reading_imports_no_tensorflow(data_dir):
  # A fresh process: the array_record path never imports TensorFlow, installed or not.
  code = ("import sys\n"
          "from adaptive_rl.tasks import datasets as ds\n"
          f"d = ds.load_text_dataset(ds.TextDatasetConfig({_src(data_dir)!r}))\n"
          "print(len(d), 'tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split()[-2:] == ["24", "False"]


def test_text_dataset_from_tfds(data_dir):
  data = ds.load_text_dataset(ds.TextDatasetConfig(_src(data_dir, "test"), shuffle_seed=None,
                                                   answer_format="gsm8k"))
  expected = {(r["question"], r["answer"].split("#### ")[1]) for r in _SPLITS["test"]}
  assert set(zip(data.questions, data.answers)) == expected and len(data) == 6
  # Other fields are addressed by name, numbers converted with str().
  ids = ds.load_text_dataset(ds.TextDatasetConfig(_src(data_dir, "test"), answer_key="id",
                                                  answer_format="raw", shuffle_seed=None))
  assert sorted(ids.answers, key=int) == [str(i) for i in range(6)]


def test_bad_sources_name_the_field(data_dir, tmp_path):
  def fails(src, pattern, **kwargs):
    with pytest.raises(ValueError, match=pattern):
      ds.load_text_dataset(ds.TextDatasetConfig(src, **kwargs))

  fails(_src(data_dir, name="no_such_dataset"),
        r"TFDS dataset name 'no_such_dataset' not found: neither a registered TFDS dataset nor "
        rf"prepared in {data_dir}")
  fails(_src(data_dir, "validation"),
        r"TFDS split 'validation' is not a split of 'tiny_gsm8k' \(splits: \['test', 'train'\]\)")
  fails(_src(data_dir),
        r"row 1: missing field 'prompt' \(fields present: \['answer', 'id', 'question'\]\)",
        question_key="prompt")
  fails(_src(data_dir), r"row 1: field 'question' must contain a '#### <answer>' line",
        answer_key="question", answer_format="gsm8k")
  fails(f"tfds:{NAME}?data_dir={data_dir}", r"the TFDS dataset split is missing; expected "
        r"tfds:NAME/SPLIT")
  fails("tfds:/train", r"the TFDS dataset name is missing")
  fails(f"tfds:{NAME}/train?datadir={data_dir}",
        r"unknown TFDS option 'datadir=.*'; options are \['data_dir', 'download'\]")
  fails(f"tfds:{NAME}/train?download=maybe", r"TFDS option download must be true or false")
  fails(f"tfds:Bad Name!/train?data_dir={data_dir}", r"bad TFDS dataset name 'Bad Name!'")
  # A registered TFDS dataset that is not prepared: no download unless asked for.
  fails(f"tfds:mnist/train?data_dir={tmp_path}",
        r"TFDS dataset 'mnist' is not prepared in .* add &download=true")


def test_tfrecord_needs_tensorflow_and_says_so(data_dir, tmp_path):
  # The same files relabelled as tfrecord: the reader must ask for TensorFlow, not crash.
  import importlib.util  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  if importlib.util.find_spec("tensorflow") is not None:
    pytest.skip("TensorFlow is installed (test_tfrecord_with_tensorflow reads tfrecord)")
  other = tmp_path / "relabelled"
  shutil.copytree(os.path.join(data_dir, NAME), other / NAME)
  info = other / NAME / "1.0.0" / "dataset_info.json"
  meta = json.loads(info.read_text())
  meta["fileFormat"] = "tfrecord"
  info.write_text(json.dumps(meta))
  for f in (other / NAME / "1.0.0").glob("*.array_record-*"):
    f.rename(str(f).replace(".array_record-", ".tfrecord-"))
  with pytest.raises(ImportError, match=r"needs TensorFlow: the dataset is stored as tfrecord "
                                        r"files.*pip install tensorflow-cpu"):
    ds.load_rows(_src(str(other)))


def test_tfrecord_with_tensorflow(tmp_path):
  pytest.importorskip("tensorflow", reason="tfrecord-format TFDS datasets are read with tf.data: "
                      "needs TensorFlow (pip install tensorflow-cpu), not in the test extra")
  _write(str(tmp_path), file_format="tfrecord")
  assert _by_id(ds.load_rows(_src(str(tmp_path), "test"))) == _SPLITS["test"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  from tests.hf_fixtures import make_hf_model  # pylint: disable=import-outside-toplevel
  from tests.text_fixtures import write_tokenizer  # pylint: disable=import-outside-toplevel
  path = str(tmp_path_factory.mktemp("tfds_ckpt"))
  write_tokenizer(path)
  make_hf_model("qwen2", seed=0, vocab_size=64, max_position_embeddings=128).save_pretrained(
      path, safe_serialization=True)
  return path


def test_train_and_evaluate_from_tfds(data_dir, ckpt, tmp_path):
  """launch/train.py and launch/evaluate.py on the GSM8K config with both splits from TFDS."""
  arg = (f"configs/qwen2_5_0_5b_gsm8k.py:smoke=True,model={ckpt},train={_src(data_dir)},"
         f"test={_src(data_dir, 'test')}")
  workdir = str(tmp_path / "run")
  out = subprocess.run([sys.executable, "launch/train.py", "--config", arg, "--workdir", workdir],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["steps"] == 2 and summary["rollouts"] == 2 * 2 * 2
  assert summary["config"]["task"]["train_path"] == _src(data_dir)
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in lines] == [1, 2] and all(r["reward_errors"] == 0 for r in lines)
  out = subprocess.run([sys.executable, "launch/evaluate.py", "--config", arg, "--workdir",
                        workdir, "--k", "2"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.load(open(os.path.join(workdir, "eval_step2_k2.json")))
  assert result["num_prompts"] == 6 and 0.0 <= result["pass@2"] <= 1.0
