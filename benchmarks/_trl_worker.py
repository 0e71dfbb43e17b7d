"""TRL side of `vs_trl.py`: runs inside `.bench_envs/trl` (trl + torch 2.13 CPU + transformers).

  .bench_envs/trl/bin/python benchmarks/_trl_worker.py '<json config>'

Loads the shared HF checkpoint with `AutoModelForCausalLM` and the char-level tokenizer with
`AutoTokenizer`, and trains `GRPOTrainer` (transformers `generate`, no vLLM) for warmup + steps
+ 1 optimizer steps with per_device_train_batch_size = P * G completions, num_generations = G,
so each step generates G completions for P prompts and makes one AdamW update. At every
`on_step_end` the worker prints "STEP" and waits for a line on stdin, so the parent can run one
of its own steps while TRL is idle; a TRL step is timed from that release to the next
`on_step_end` (generation, reward, advantages, forward/backward, optimizer update); the first
`warmup` are dropped. Ends with one line "RESULT {json}" ({"step_s": [...], ...}).
Logging, saving and progress bars are off. `torch_threads` > 0 in the config sets torch's
intra-op threads (0: torch's default, one per core).
"""

import json
import os
import sys
import time

CHAR_BASE = 0x4E00


def main() -> None:
  cfg = json.loads(sys.argv[1])
  t_start = time.perf_counter()
  import datasets  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  import trl  # pylint: disable=import-outside-toplevel

  if cfg.get("torch_threads"):
    torch.set_num_threads(cfg["torch_threads"])
  ckpt = cfg["ckpt_dir"]
  tokenizer = transformers.AutoTokenizer.from_pretrained(os.path.join(ckpt, "tokenizer"))
  model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
  with open(os.path.join(ckpt, "prompts.json")) as f:
    workload = json.load(f)
  prompts = workload["text"]
  # The same token ids as our side sees (guards against a tokenizer that re-splits the text).
  tokens_match = [tokenizer.encode(t, add_special_tokens=False) for t in prompts[:8]] == \
      workload["ids"][:8]
  p, g = cfg["prompts"], cfg["group"]
  total = cfg["warmup"] + cfg["steps"] + 1
  train_ds = datasets.Dataset.from_dict(
      {"prompt": [prompts[i % len(prompts)] for i in range(p * total)]})

  rewards, lengths = [], []

  def even_fraction(prompts, completions, **kwargs):
    del prompts, kwargs
    out = []
    for text in completions:
      ids = [ord(c) - CHAR_BASE for c in text]
      lengths.append(len(ids))
      out.append(sum(i % 2 == 0 for i in ids) / max(len(ids), 1))
    rewards.append(sum(out) / len(out))
    return out

  arrive, resume = [], []

  class StepTimer(transformers.TrainerCallback):

    def on_step_end(self, args, state, control, **kwargs):
      # A step boundary: hand the machine to the parent for one of its steps, then go on.
      arrive.append(time.perf_counter())
      print("STEP", flush=True)
      sys.stdin.readline()
      resume.append(time.perf_counter())

  args = trl.GRPOConfig(
      output_dir=os.path.join(ckpt, "trl_out"), use_cpu=True, seed=0, max_steps=total,
      per_device_train_batch_size=p * g, gradient_accumulation_steps=1, num_generations=g,
      max_completion_length=cfg["new_tokens"], temperature=cfg["temperature"], top_p=1.0,
      top_k=0, learning_rate=cfg["lr"], lr_scheduler_type="constant", warmup_steps=0,
      weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=cfg["grad_clip"],
      optim="adamw_torch", beta=0.0, epsilon=cfg["eps"], loss_type="grpo", num_iterations=1,
      report_to="none", logging_strategy="no", save_strategy="no", disable_tqdm=True,
      log_completions=False, bf16=False, fp16=False, dataloader_num_workers=0,
      shuffle_dataset=False)
  trainer = trl.GRPOTrainer(model=model, reward_funcs=[even_fraction], args=args,
                            train_dataset=train_ds, processing_class=tokenizer,
                            callbacks=[StepTimer()])
  t_setup = time.perf_counter()
  trainer.train()
  t_end = time.perf_counter()
  intervals = [b - a for a, b in zip(resume, arrive[1:])]
  import accelerate  # pylint: disable=import-outside-toplevel
  print("RESULT " + json.dumps({
      "step_s": intervals[cfg["warmup"]:],
      "warmup_s": intervals[:cfg["warmup"]],
      "optimizer_steps": trainer.state.global_step,
      "reward_calls": len(rewards),
      "completion_len_min_max": [min(lengths), max(lengths)],
      "completions_per_step": len(lengths) // max(len(rewards), 1),
      "reward_mean": rewards[-1],
      "prompt_tokens_match": tokens_match,
      "setup_s": t_setup - t_start, "train_call_s": t_end - t_setup,
      "torch_threads": torch.get_num_threads(),
      "versions": {"trl": trl.__version__, "torch": torch.__version__,
                   "transformers": transformers.__version__,
                   "accelerate": accelerate.__version__, "datasets": datasets.__version__},
  }), flush=True)


if __name__ == "__main__":
  main()
