"""GRPO on MATH with Qwen2.5-Math-1.5B from a local checkpoint (the Reinforce-Ada setting).

  python launch/train.py --config configs/qwen2_5_math_1_5b_math.py:model=/ckpt/Qwen2.5-Math-1.5B,\
train=/data/math/train.jsonl,test=/data/math500.jsonl,allocator=reinforce_ada --workdir /runs/m15
  # Same code path on a tiny random checkpoint:
  python launch/train.py --config configs/qwen2_5_math_1_5b_math.py:smoke=True,model=DIR,train=FILE

Data: JSONL rows {"problem": ..., "solution": "... \\boxed{answer} ..."} (MATH's own format; the
reference answer is the last \\boxed{}). Hyper-parameters from the Reinforce-Ada recipe: lr 1e-6,
n = 4 per prompt (Reinforce-Ada: R = 4 rounds of M = 8), token-mean, clip 0.2 / 0.28, no KL,
temperature 1.0; Qwen2.5-Math's 4k context holds a 1,024-token prompt and 3,000 new tokens.
Every other knob is the GSM8K config's.
"""

import importlib.util
import os

from adaptive_rl.rl.config import parse_arg


def _gsm8k_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "qwen2_5_0_5b_gsm8k.py")
  spec = importlib.util.spec_from_file_location("qwen2_5_0_5b_gsm8k", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str = ""):
  args = parse_arg(arg, model="", train="", test="", allocator="uniform", smoke=False, seed=0,
                   lora=False)
  c = _gsm8k_config().get_config(arg)  # lora=True: the GSM8K config's LoRA settings
  c.task.question_key = "problem"
  c.task.answer_key = "solution"
  c.task.answer_format = "boxed"
  c.model.preset = "qwen2.5-math-1.5b"
  if not args.smoke:  # the smoke variant keeps the GSM8K config's tiny sizes
    c.task.prompt_length = 1024
    c.task.completion_length = 3000
    c.rl.batch_prompts = 128
    c.rl.group_size = 4
    c.rl.mini_batches = 4
    c.rl.micro_batches = 16
    c.rl.steps = 400
  c.allocator.reinforce_ada.rounds = 4
  c.allocator.reinforce_ada.samples_per_round = 8
  return c
