"""Tunix side of `vs_tunix.py`: runs inside `.bench_envs/tunix` (google-tunix 0.1.7, CPU JAX).

  .bench_envs/tunix/bin/python benchmarks/_tunix_worker.py '<json config>'

Loads the shared HF checkpoint with tunix's own Qwen2 safetensors loader, builds an `RLCluster`
(actor = rollout on one 1x1 CPU mesh, no reference model since beta = 0, vanilla rollout engine
with a KV cache of exactly prompt + new tokens) and trains `GRPOLearner` for warmup + steps + 1
steps. tunix calls the reward function once per step (one rollout micro-batch); there the
worker prints "STEP" and waits for a line on stdin, so the parent can run one of its own steps
while tunix is idle. A tunix step is timed from that release to the next reward call: it covers
the policy update, the next generation and reward, i.e. one full step; the first `warmup` are
dropped (compilation). Ends with one line "RESULT {json}" ({"step_s": [...], ...}).
"""

import json
import os
import sys
import time

CHAR_BASE = 0x4E00


def main() -> None:
  cfg = json.loads(sys.argv[1])
  t_start = time.perf_counter()
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from tunix.models.qwen2 import model as qwen2_model  # pylint: disable=import-outside-toplevel
  from tunix.models.qwen2 import params as qwen2_params  # pylint: disable=import-outside-toplevel
  from tunix.rl import rl_cluster as rl_cluster_lib  # pylint: disable=import-outside-toplevel
  from tunix.rl.grpo import grpo_learner  # pylint: disable=import-outside-toplevel
  from tunix.rl.rollout import base_rollout  # pylint: disable=import-outside-toplevel

  ckpt = cfg["ckpt_dir"]
  with open(os.path.join(ckpt, "config.json")) as f:
    hf = json.load(f)
  model_cfg = qwen2_model.ModelConfig(
      num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"],
      embed_dim=hf["hidden_size"], hidden_dim=hf["intermediate_size"],
      num_heads=hf["num_attention_heads"], head_dim=hf["head_dim"],
      num_kv_heads=hf["num_key_value_heads"], rope_theta=int(hf["rope_theta"]),
      norm_eps=hf["rms_norm_eps"], use_tied_embedding=hf["tie_word_embeddings"])
  # Auto axes, as tunix's examples use (jax.make_mesh now defaults to Explicit axes, which
  # tunix's embedding gather rejects).
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("fsdp", "tp"))
  model = qwen2_params.create_model_from_safe_tensors(ckpt, model_cfg, mesh)
  tokenizer = transformers.AutoTokenizer.from_pretrained(os.path.join(ckpt, "tokenizer"))
  with open(os.path.join(ckpt, "prompts.json")) as f:
    workload = json.load(f)
  prompts = workload["text"]
  # The same token ids as our side sees (guards against a tokenizer that re-splits the text).
  tokens_match = [tokenizer.encode(t, add_special_tokens=False) for t in prompts[:8]] == \
      workload["ids"][:8]

  p, g, n, plen = cfg["prompts"], cfg["group"], cfg["new_tokens"], cfg["prompt_len"]
  total = cfg["warmup"] + cfg["steps"] + 1
  optimizer = optax.chain(optax.clip_by_global_norm(cfg["grad_clip"]),
                          optax.adamw(cfg["lr"], b1=0.9, b2=0.999, weight_decay=0.0))
  cluster_cfg = rl_cluster_lib.ClusterConfig(
      role_to_mesh={rl_cluster_lib.Role.ACTOR: mesh, rl_cluster_lib.Role.REFERENCE: mesh,
                    rl_cluster_lib.Role.ROLLOUT: mesh},
      rollout_engine="vanilla", offload_to_cpu=False,
      training_config=rl_cluster_lib.RLTrainingConfig(
          actor_optimizer=optimizer, eval_every_n_steps=10**9, max_steps=total,
          pbar_description=None),
      rollout_config=base_rollout.RolloutConfig(
          max_tokens_to_generate=n, max_prompt_length=plen, kv_cache_size=plen + n,
          temperature=cfg["temperature"], top_p=1.0, top_k=None,
          eos_tokens=[tokenizer.eos_token_id]))
  cluster = rl_cluster_lib.RLCluster(actor=model, reference=None, tokenizer=tokenizer,
                                     cluster_config=cluster_cfg)
  algo = grpo_learner.GRPOConfig(num_generations=g, num_iterations=1, beta=0.0,
                                 epsilon=cfg["eps"], loss_agg_mode="sequence-mean-token-mean")

  arrive, resume, rewards, lengths = [], [], [], []

  def even_fraction(prompts, completions, **kwargs):
    del prompts, kwargs
    # A step boundary: hand the machine to the parent for one of its steps, then go on.
    arrive.append(time.perf_counter())
    print("STEP", flush=True)
    sys.stdin.readline()
    resume.append(time.perf_counter())
    out = []
    for text in completions:
      ids = [ord(c) - CHAR_BASE for c in text]
      lengths.append(len(ids))
      out.append(sum(i % 2 == 0 for i in ids) / max(len(ids), 1))
    rewards.append(sum(out) / len(out))
    return out

  # Time spent inside rollout generation per step (text in, tokens + text out: it returns host
  # data, so it has finished when the call returns); the rest of an interval is the update.
  gen_s = []
  generate = cluster.generate

  def timed_generate(*args, **kwargs):
    t0 = time.perf_counter()
    out = generate(*args, **kwargs)
    gen_s.append(time.perf_counter() - t0)
    return out

  cluster.generate = timed_generate
  learner = grpo_learner.GRPOLearner(rl_cluster=cluster, algo_config=algo,
                                     reward_fns=[even_fraction])
  # A batch is a numpy array of strings, as a grain data loader yields it (tunix repeats it G
  # times with np.repeat).
  batches = [{"prompts": np.array([prompts[(s * p + i) % len(prompts)]
                                   for i in range(p)])} for s in range(total)]
  t_setup = time.perf_counter()
  learner.train(batches)
  t_end = time.perf_counter()
  intervals = [b - a for a, b in zip(resume, arrive[1:])]
  import flax  # pylint: disable=import-outside-toplevel
  import importlib.metadata as md  # pylint: disable=import-outside-toplevel
  print("RESULT " + json.dumps({
      "step_s": intervals[cfg["warmup"]:],
      "warmup_s": intervals[:cfg["warmup"]],
      "generate_s": gen_s[cfg["warmup"] + 1:],  # the generations inside the timed intervals
      "reward_calls": len(arrive),
      "train_steps": cluster.actor_trainer.train_steps,
      "completion_len_min_max": [min(lengths), max(lengths)],
      "reward_mean": rewards[-1],
      "prompt_tokens_match": tokens_match,
      "setup_s": t_setup - t_start, "train_call_s": t_end - t_setup,
      "versions": {"tunix": md.version("google-tunix"), "jax": jax.__version__,
                   "jaxlib": md.version("jaxlib"), "flax": flax.__version__,
                   "optax": optax.__version__, "transformers": transformers.__version__},
      "devices": [str(d) for d in jax.devices()],
  }), flush=True)


if __name__ == "__main__":
  main()
