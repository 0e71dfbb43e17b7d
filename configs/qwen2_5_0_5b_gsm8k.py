"""GRPO on GSM8K with Qwen2.5-0.5B (-Instruct) from a local checkpoint, math-verify rewards.

  python launch/train.py --config configs/qwen2_5_0_5b_gsm8k.py:model=/ckpt/Qwen2.5-0.5B-Instruct,\
train=/data/gsm8k/train.jsonl,test=/data/gsm8k/test.jsonl --workdir /runs/q05_gsm8k
  python launch/train.py --config configs/qwen2_5_0_5b_gsm8k.py:...,allocator=reinforce_ada ...
  python launch/train.py --config configs/qwen2_5_0_5b_gsm8k.py:...,lora=True ...  # LoRA r=16
  # Same code path on a tiny random checkpoint (tests use this):
  python launch/train.py --config configs/qwen2_5_0_5b_gsm8k.py:smoke=True,model=DIR,train=FILE

Data: JSONL rows {"question": ..., "answer": "... #### 42"} (GSM8K's own format). The model
directory must hold config.json, *.safetensors and tokenizer.json (+ tokenizer_config.json with
the chat template). Hyper-parameters follow the Reinforce-Ada / DAPO recipes scaled to 0.5B:
lr 1e-6, 64 prompts x n = 8 per step, 4 mini-batches, clip 0.2 / 0.28, token-mean, no KL,
temperature 1.0, 512 new tokens.
"""

import ml_collections

from adaptive_rl.allocation.registry import default_settings
from adaptive_rl.parallel import DEFAULT_RULES
from adaptive_rl.rl.config import parse_arg


def get_config(arg: str = ""):
  args = parse_arg(arg, model="", train="", test="", allocator="uniform", smoke=False, seed=0,
                   lora=False)
  c = ml_collections.ConfigDict()
  c.seed = args.seed
  c.force = False
  c.task = ml_collections.ConfigDict(dict(
      name="text", train_path=args.train, test_path=args.test, tokenizer_path=args.model,
      question_key="question", answer_key="answer", answer_format="gsm8k", skip_bad_rows=False,
      max_rows=0, test_size=500, seed=args.seed, system_prompt="",
      instruction="Please reason step by step, and put your final answer within \\boxed{}.",
      use_template=True, prompt_length=256, completion_length=512, overlong="skip",
      reward_fn="adaptive_rl.tasks.rewards:math_reward"))
  c.model = ml_collections.ConfigDict(dict(preset="qwen2.5-0.5b", hf_path=args.model,
                                           init_std=0.02, dtype="bfloat16", remat="full"))
  c.sft = ml_collections.ConfigDict(dict(steps=0, batch_size=64, lr=1e-5, warmup_steps=0,
                                         weight_decay=0.0))
  c.rl = ml_collections.ConfigDict(dict(
      steps=500, batch_prompts=64, group_size=8, temperature=1.0, top_k=0, top_p=1.0,
      max_new_tokens=0, lr=1e-6, warmup_steps=10, decay="constant", min_lr_ratio=0.0,
      weight_decay=0.0, grad_clip=1.0, b1=0.9, b2=0.999, ppo_epochs=1, mini_batches=4,
      micro_batches=4, recompute_old_logp=True, logprob_chunk=128, eps_low=0.2, eps_high=0.28,
      dual_clip=3.0, kl_coef=0.0, kl_estimator="k3", entropy_coef=0.0, loss_agg="token-mean",
      adv_estimator="grpo", adv_clip=0.0, tau=0.5, overlong_buffer=0, mask_truncated=False,
      max_consecutive_nan=5))
  c.allocator = ml_collections.ConfigDict(default_settings())
  c.allocator.name = args.allocator
  c.allocator.reinforce_ada.samples_per_round = 8
  c.reward = ml_collections.ConfigDict(dict(mode="host", fn="", timeout_s=5.0, workers=4))
  c.eval = ml_collections.ConfigDict(dict(every=50, batch_size=128, limit=0))
  c.checkpoint = ml_collections.ConfigDict(dict(every=50, keep=2, keep_every=0))
  c.log = ml_collections.ConfigDict(dict(tensorboard=True, progress=True, plots=True))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, sequence=1,
                                          num_devices=0))
  c.logical_axis_rules = DEFAULT_RULES
  # LoRA on every projection; the frozen base is the KL reference and DIR/merged_hf gets the
  # merged model (+ tokenizer) at the end. LoRA's best lr is ~10x full fine-tuning's
  # (Schulman et al., "LoRA Without Regret", 2025).
  c.lora = ml_collections.ConfigDict(dict(
      enabled=args.lora, rank=16, alpha=32.0,
      targets=r"layers/(wq|wk|wv|wo|w_gate|w_up|w_down)", param_dtype="float32"))
  if args.lora:
    c.rl.lr = 1e-5
  if args.smoke:  # a tiny random checkpoint through the same code path, on a CPU
    c.task.test_size = 4
    c.task.prompt_length = 48
    c.task.completion_length = 8
    c.model.dtype = "float32"
    c.model.remat = "none"
    c.rl.steps = 2
    c.rl.batch_prompts = 2
    c.rl.group_size = 2
    c.rl.mini_batches = 1
    c.rl.micro_batches = 1
    c.rl.logprob_chunk = 0
    c.reward.workers = 1
    c.eval.every = 0
    c.eval.batch_size = 4
    c.checkpoint.every = 1
    c.log.progress = False
    c.log.plots = False
    c.mesh.num_devices = 1
  return c
