"""End to end on a text task: a tiny random Qwen2 HF checkpoint + tokenizer.json + a JSONL math
file written by the test -> 2 RL steps with math_reward on the host -> evaluate.py pass@k."""

import json
import os
import subprocess
import sys

import pytest

from tests.hf_fixtures import make_hf_model
from tests.text_fixtures import write_math_jsonl, write_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("text")
  ckpt = str(d / "ckpt")
  write_tokenizer(ckpt)  # 53 tokens
  make_hf_model("qwen2", seed=0, vocab_size=64, max_position_embeddings=128).save_pretrained(
      ckpt, safe_serialization=True)
  return dict(ckpt=ckpt, train=write_math_jsonl(str(d / "train.jsonl"), 40),
              test=write_math_jsonl(str(d / "test.jsonl"), 6, seed=1), workdir=str(d / "run"))


def _arg(f):
  return f"configs/qwen2_5_0_5b_gsm8k.py:smoke=True,model={f['ckpt']},train={f['train']}," \
         f"test={f['test']}"


def test_train_then_evaluate(files):
  out = subprocess.run([sys.executable, "launch/train.py", "--config", _arg(files),
                        "--workdir", files["workdir"]], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.load(open(os.path.join(files["workdir"], "summary.json")))
  assert summary["steps"] == 2 and summary["rollouts"] == 2 * 2 * 2
  lines = [json.loads(l) for l in open(os.path.join(files["workdir"], "metrics.jsonl"))]
  assert [r["step"] for r in lines] == [1, 2] and all(r["reward_errors"] == 0 for r in lines)
  out = subprocess.run([sys.executable, "launch/evaluate.py", "--config", _arg(files),
                        "--workdir", files["workdir"], "--k", "2"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.load(open(os.path.join(files["workdir"], "eval_step2_k2.json")))
  assert result["num_prompts"] == 6 and 0.0 <= result["pass@2"] <= 1.0


def test_text_task_pieces(files):
  from adaptive_rl.tasks import make_task
  task = make_task("text", train_path=files["train"], tokenizer_path=files["ckpt"], test_size=5,
                   prompt_length=30, completion_length=8, overlong="skip")
  train = task.split("train")
  assert train.size + task.overlong_count("train") == 35
  assert train.prompts.shape[1] == 30
  assert task.reward_text("so \\boxed{7}", "7") == 1.0
  assert task.reward_text("so \\boxed{8}", "7") == 0.0
  with pytest.raises(ValueError, match="task.prompt_length=4"):
    make_task("text", train_path=files["train"], tokenizer_path=files["ckpt"], test_size=5,
              prompt_length=4, overlong="error").split("train")


def test_math_config_reads_boxed_solutions(files, tmp_path):
  import importlib.util
  from adaptive_rl.rl.config import parse_config
  from adaptive_rl.rl.run import build_run
  path = tmp_path / "math.jsonl"
  rows = [{"problem": f"what is {i} plus {i} ?",
           "solution": f"{i} + {i} = {2 * i} , so \\boxed{{\\frac{{{4 * i}}}{{2}}}}"}
          for i in range(1, 9)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  spec = importlib.util.spec_from_file_location(
      "m", os.path.join(ROOT, "configs", "qwen2_5_math_1_5b_math.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  full = mod.get_config(f"model={files['ckpt']},train={path}")
  assert full.task.completion_length == 3000 and full.task.answer_format == "boxed"
  c = mod.get_config(f"smoke=True,model={files['ckpt']},train={path}")
  run = build_run(parse_config(c))
  assert run.test_data.size == 4 and run.host_rewards
  assert set(run.train_data.answers) <= {f"\\frac{{{4 * i}}}{{2}}" for i in range(1, 9)}
  assert run.task.reward_text("\\boxed{4}", "\\frac{8}{2}") == 1.0
