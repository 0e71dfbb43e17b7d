"""Quickstart: GRPO on built-in 1-2 digit addition with a ~0.1M-parameter decoder, on a CPU.

  python launch/train.py --config configs/quickstart.py --workdir /tmp/quickstart
  python launch/train.py --config configs/quickstart.py:smoke=True --workdir /tmp/smoke
  python launch/train.py --config configs/quickstart.py:allocator=uniform --workdir DIR
  python launch/train.py --config configs/quickstart.py:task=countdown --workdir DIR
  python launch/train.py --config configs/quickstart.py:lora=True --workdir DIR  # adapters only
  python launch/train.py --config configs/quickstart.py --config.rl.lr=3e-4 --workdir DIR
  python launch/train.py --config configs/quickstart.py --config.mesh.data=2 \
      --config.mesh.fsdp=2 --config.mesh.tensor=2 --workdir DIR     # 8 devices: DP x FSDP x TP

A short supervised warm start on generated solutions gives the random model a non-trivial pass
rate (about 50%), then RL raises held-out (greedy) accuracy (to about 85% in 2000 steps, about
5 minutes on a 2-core CPU; see BENCHMARKS.md). Answers are written least-significant digit first
(`reverse_answer`), the order in which carries are produced, which a tiny model learns far more
easily. Every knob has its default here; unknown keys
fail at launch.
"""

import ml_collections

from adaptive_rl.allocation.registry import default_settings
from adaptive_rl.rl.config import parse_arg
from adaptive_rl.parallel import DEFAULT_RULES


def get_config(arg: str = ""):
  args = parse_arg(arg, smoke=False, allocator="uniform", task="arithmetic", seed=0, lora=False)
  c = ml_collections.ConfigDict()
  c.seed = args.seed
  c.force = False  # resume a workdir whose recorded config differs from this one

  if args.task == "arithmetic":
    c.task = dict(name="arithmetic", ops="+", max_digits=2, train_size=20000, test_size=500,
                  seed=args.seed, test_seed=0, reverse_answer=True)
  elif args.task == "countdown":
    c.task = dict(name="countdown", seed=args.seed)
  else:
    raise ValueError(f"unknown task {args.task!r}; valid: arithmetic, countdown")
  c.task = ml_collections.ConfigDict(c.task)

  # Any ModelConfig field overrides the preset; a 2-layer model on CPU runs its layers unrolled
  # (no scan bookkeeping; compile time is no concern at this depth).
  c.model = ml_collections.ConfigDict(dict(preset="nano", hf_path="", init_std=0.02,
                                           scan_layers=False))

  c.sft = ml_collections.ConfigDict(dict(steps=600, batch_size=64, lr=3e-3, warmup_steps=20,
                                         weight_decay=0.0))

  c.rl = ml_collections.ConfigDict(dict(
      steps=2000, batch_prompts=32, group_size=8, temperature=1.0, top_k=0, top_p=1.0,
      max_new_tokens=0, lr=1e-4, warmup_steps=5, decay="constant", min_lr_ratio=0.0,
      weight_decay=0.0, grad_clip=1.0, b1=0.9, b2=0.99, ppo_epochs=1, mini_batches=2,
      micro_batches=1, recompute_old_logp=False, logprob_chunk=0, eps_low=0.2, eps_high=0.28,
      dual_clip=3.0, kl_coef=0.0, kl_estimator="k3", entropy_coef=0.0, loss_agg="token-mean",
      adv_estimator="grpo", adv_clip=0.0, tau=0.5, overlong_buffer=0, mask_truncated=False,
      share_prompts=True, max_consecutive_nan=5))

  # name: a preset (uniform, dapo_filter, reinforce_ada, reinforce_ada_positive, gvm, knapsack,
  # mopps, dps, vas); select / budget / group override its roles; per-method settings below.
  c.allocator = ml_collections.ConfigDict(default_settings())
  c.allocator.name = args.allocator
  c.reward = ml_collections.ConfigDict(dict(mode="graph", fn="", timeout_s=5.0, workers=2))
  c.eval = ml_collections.ConfigDict(dict(every=250, batch_size=500, limit=0))
  c.checkpoint = ml_collections.ConfigDict(dict(every=500, keep=2, keep_every=0))
  c.log = ml_collections.ConfigDict(dict(tensorboard=True, progress=True, plots=True))

  # Devices. The mesh axis sizes must multiply to the device count; one axis may be -1 (the
  # devices the others leave), so the default, data=-1, is data parallelism over every device
  # (1 CPU: a one-device mesh; 8 devices: data=8). fsdp shards weights, gradients and optimizer
  # state; tensor splits heads / mlp / vocab; sequence splits activations along the length.
  # num_devices: use the first N devices only (0 = all; single-process runs).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, sequence=1, num_devices=0))
  # Logical axis (named by the model code) -> mesh axis, tuple of axes, or None (replicated).
  # A mesh axis that does not divide a dimension is dropped from it (that dimension replicated).
  c.logical_axis_rules = DEFAULT_RULES

  # LoRA: train rank-r adapters (A [in, r], B [r, out], update (alpha / r) A B) on the param
  # paths `targets` full-matches ("layers/wq", ..., "lm_head", "embed") and freeze the rest, in
  # SFT and RL alike; the frozen base is the KL reference, and DIR/merged_hf gets base +
  # adapters merged as a transformers checkpoint at the end. The (tied) embedding is adapted
  # too: this random base's frozen 0.02-scale embeddings would cap its logits near +-1.
  c.lora = ml_collections.ConfigDict(dict(
      enabled=args.lora, rank=16, alpha=32.0,
      targets=r"layers/(wq|wk|wv|wo|w_gate|w_up|w_down)|embed", param_dtype="float32"))

  if args.smoke:  # < 60 s end to end on a 2-core CPU
    c.task.train_size = 2000
    c.task.test_size = 100
    c.sft.steps = 300
    c.rl.steps = 20
    c.rl.batch_prompts = 8
    c.rl.group_size = 4
    c.eval.every = 10
    c.checkpoint.every = 10
  return c
