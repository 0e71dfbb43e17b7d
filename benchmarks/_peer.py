"""Shared pieces of the head-to-head benchmarks (`vs_tunix.py`, `vs_trl.py`).

  * `SIZES`: the benchmark shapes (a random Qwen2-shaped model + the GRPO batch);
  * `write_workload`: ONE random checkpoint in HF format (our `models.init` + `models.to_hf`),
    a char-level HF tokenizer (token id i <-> character U+4E00+i, so text and ids map 1:1 and a
    text reward equals the token-id reward) and the prompts, for every framework to load;
  * `OurGRPO`: one full GRPO step of `adaptive_rl` built from the same pieces `Trainer` wires
    together (begin -> sample_round -> finish_round -> train_step), timed per step;
  * `ensure_venv`: the peer's virtual environment (created on first use);
  * `run_lockstep`: the peer's worker subprocess, stepped in turn with ours (peer step, our
    step, peer step ...) so shared-machine noise hits both and they never overlap.

The reward everywhere is the fraction of even token ids in the completion.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer, decoders
from tokenizers import models as tok_models
from transformers import PreTrainedTokenizerFast

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # a script, not a package: import the uninstalled repo

import _common  # noqa: E402  pylint: disable=wrong-import-position  (this folder's helpers)

# pylint: disable=wrong-import-position
from adaptive_rl import models  # noqa: E402
from adaptive_rl.allocation.registry import build_allocator  # noqa: E402
from adaptive_rl.rl.losses import LossConfig  # noqa: E402
from adaptive_rl.rl.rl_step import RLStep  # noqa: E402
from adaptive_rl.rl.step import StepConfig  # noqa: E402
from adaptive_rl.rl.train_state import OptimizerConfig, TrainState, new_counters  # noqa: E402
from adaptive_rl.sampling import Sample, SamplerConfig  # noqa: E402
# pylint: enable=wrong-import-position

CHAR_BASE = 0x4E00  # token id i is the character chr(CHAR_BASE + i)
LR = 1e-5
GRAD_CLIP = 1.0
EPS = 0.2  # symmetric clip (tunix GRPO has a single epsilon)
LOSS_AGG = "seq-mean-token-mean"  # tunix's default "sequence-mean-token-mean"
TEMPERATURE = 1.0
WARMUP = 2  # steps run before timing (compilation)


@dataclasses.dataclass(frozen=True)
class Size:
  """A benchmark shape: model (Qwen2-shaped, tied embeddings) and GRPO batch."""

  name: str
  layers: int
  hidden: int
  intermediate: int
  heads: int
  kv_heads: int
  vocab: int
  prompts: int  # P prompts per step
  group: int  # G completions per prompt
  prompt_len: int  # every prompt has exactly this many tokens (no padding)
  new_tokens: int  # every completion has exactly this many tokens (EOS is never sampled)

  @property
  def pad_id(self) -> int:
    return self.vocab  # tokenizer-only ids past the model's vocabulary: never sampled

  @property
  def eos_id(self) -> int:
    return self.vocab + 1


SIZES = {
    "tiny": Size("tiny", layers=2, hidden=64, intermediate=192, heads=4, kv_heads=2, vocab=2048,
                 prompts=4, group=4, prompt_len=16, new_tokens=32),
    "medium": Size("medium", layers=4, hidden=256, intermediate=1024, heads=8, kv_heads=4,
                   vocab=8192, prompts=8, group=8, prompt_len=32, new_tokens=64),
}


def write_workload(size: Size, out_dir: str, num_prompts: int, seed: int = 0) -> dict[str, Any]:
  """Writes the shared workload: the random model, the tokenizer and the prompts.

  Args:
    size: the benchmark shape.
    out_dir: directory to fill with config.json + model.safetensors (HF format), tokenizer/
      (tokenizer.json + tokenizer_config.json) and prompts.json ({"ids", "text"}).
    num_prompts: prompts to draw (uniform random token ids, `size.prompt_len` each).
    seed: seed of the weights and the prompts.

  Returns:
    {"ids": int32 [num_prompts, prompt_len], "text": the same prompts as strings}.
  """
  cfg = models.get_preset(
      "nano", model_type="qwen2", qkv_bias=True, vocab_size=size.vocab, hidden_size=size.hidden,
      intermediate_size=size.intermediate, num_layers=size.layers, num_heads=size.heads,
      num_kv_heads=size.kv_heads, max_seq_len=size.prompt_len + size.new_tokens,
      tie_embeddings=True, rope_theta=10000.0)
  params = models.init(cfg, jax.random.PRNGKey(seed))
  models.to_hf(cfg, params, out_dir)

  vocab = {chr(CHAR_BASE + i): i for i in range(size.vocab)}
  vocab.update({"<pad>": size.pad_id, "<eos>": size.eos_id})
  tok = Tokenizer(tok_models.BPE(vocab=vocab, merges=[]))  # no merges: one char = one token
  tok.decoder = decoders.Fuse()
  tok.add_special_tokens(["<pad>", "<eos>"])
  # In its own folder: next to a config.json with model_type qwen2, AutoTokenizer would pick
  # Qwen2's tokenizer class and rebuild a byte-level pre-tokenizer around our vocabulary.
  PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                          eos_token="<eos>").save_pretrained(os.path.join(out_dir, "tokenizer"))

  rng = np.random.default_rng(seed)
  ids = rng.integers(0, size.vocab, (num_prompts, size.prompt_len))
  prompts = ["".join(chr(CHAR_BASE + int(i)) for i in row) for row in ids]
  with open(os.path.join(out_dir, "prompts.json"), "w") as f:
    json.dump({"ids": ids.tolist(), "text": prompts}, f)
  return {"ids": ids.astype(np.int32), "text": prompts}


class OurGRPO:
  """`adaptive_rl`'s GRPO step on the shared checkpoint, wired as `Trainer` wires it."""

  def __init__(self, size: Size, ckpt_dir: str, prompt_ids: np.ndarray, seed: int = 0,
               scan_layers: bool = False):
    cfg, params = models.from_hf(ckpt_dir)
    # Unrolled layers (as tunix's Qwen2 and TRL's models run them): on CPU and for shallow
    # models they skip the scan's stacked-residual bookkeeping and per-step weight slices.
    cfg = cfg.replace(scan_layers=scan_layers)
    n = size.new_tokens
    allocator = build_allocator({"name": "uniform"}, batch_prompts=size.prompts,
                                group_size=size.group, tau=0.5)
    # Trainer settings: sampler log-probs as old log-probs, entropy metric on, no KL.
    step_cfg = StepConfig(loss=LossConfig(eps_low=EPS, eps_high=EPS, dual_clip=None,
                                          kl_coef=0.0, loss_agg=LOSS_AGG))
    tx = OptimizerConfig(lr=LR, weight_decay=0.0, grad_clip=GRAD_CLIP).make()
    sampler_cfg = SamplerConfig(n, eos_ids=(size.eos_id,), pad_id=0,
                                strategy=Sample(temperature=TEMPERATURE))

    def reward(tokens, lengths, targets):
      del targets
      valid = jnp.arange(tokens.shape[1])[None] < lengths[:, None]
      return jnp.sum(valid & (tokens % 2 == 0), axis=1) / jnp.maximum(lengths, 1)

    # The pieces, for benchmarks/grpo_phases.py (it jits them without donation).
    self.cfg, self.allocator, self.reward_fn = cfg, allocator, reward
    self.rl_step = RLStep(cfg, sampler_cfg, step_cfg, allocator, tx,
                          prompt_len=prompt_ids.shape[1], reward_fn=reward)
    d = prompt_ids.shape[0]
    self.data = {"prompts": jnp.asarray(prompt_ids),
                 "prompt_lengths": jnp.full((d,), p, jnp.int32),
                 "targets": jnp.zeros((d, 1), jnp.int32)}
    key = jax.random.PRNGKey(seed)
    self.state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                            opt_state=tx.init(params), ref_params=None,
                            alloc=allocator.init(d, jax.random.fold_in(key, 1)),
                            rng=jax.random.fold_in(key, 2), counters=new_counters())
    self.last_reward = float("nan")

  def _sample(self):
    rl_step = self.rl_step
    self.state, rollout = rl_step.begin(self.state)
    rollout, plan = rl_step.sample(self.state.params, self.state.alloc["budget"], self.data,
                                   rollout)
    return rl_step.finish(rollout, plan, None)

  def _train(self, rollout):
    self.state, metrics, _ = self.rl_step.train(self.state, rollout, np.int32(0))
    return metrics

  def step(self) -> float:
    """One full GRPO step (generate G x P, reward, one AdamW update); wall seconds."""
    t0 = time.perf_counter()
    self.state, metrics, _ = self.rl_step(self.state, self.data)  # one jitted program
    jax.block_until_ready((self.state.params, metrics))
    dt = time.perf_counter() - t0
    self.last_reward = float(metrics["reward_mean"])
    return dt

  def step_split(self) -> tuple[float, float]:
    """One step with a sync between the halves: (sample + reward s, train-step s)."""
    t0 = time.perf_counter()
    rollout = self._sample()
    jax.block_until_ready(rollout)
    t1 = time.perf_counter()
    metrics = self._train(rollout)
    jax.block_until_ready((self.state.params, metrics))
    return t1 - t0, time.perf_counter() - t1


# --- the peer's environment and worker ------------------------------------------------------

def venv_python(name: str) -> str:
  return os.path.join(REPO, ".bench_envs", name, "bin", "python")


def ensure_venv(name: str, requirements: list[str]) -> str:
  """Creates `.bench_envs/<name>` with `requirements` on first use; returns its python."""
  py = venv_python(name)
  marker = os.path.join(REPO, ".bench_envs", name, "requirements.txt")
  if os.path.exists(marker):
    with open(marker) as f:
      if f.read().split() == requirements:
        return py
  print(f"[setup] creating .bench_envs/{name} with {' '.join(requirements)}", file=sys.stderr)
  if not os.path.exists(py):
    subprocess.run([sys.executable, "-m", "venv", os.path.dirname(os.path.dirname(py))],
                   check=True)
  subprocess.run([py, "-m", "pip", "install", "-q", *requirements], check=True)
  with open(marker, "w") as f:
    f.write("\n".join(requirements))
  return py


def run_lockstep(python: str, script: str, config: dict[str, Any], ours: OurGRPO,
                 steps: int, timeout_s: float = 3600) -> tuple[dict[str, Any], list[float]]:
  """Runs the peer `script` under `python` in lock-step with our steps.

  The worker stops at every step boundary (prints "STEP", waits for a line on stdin). After
  its WARMUP steps, each stop runs one of our steps before the worker is released, so the
  two frameworks take turns step by step (peer, ours, peer, ours ...) and never overlap; the
  worker times its steps from release to its next stop. Returns (the worker's RESULT json,
  our step times).
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
             TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
  env.pop("PYTHONPATH", None)
  cmd = [python, os.path.join(REPO, "benchmarks", script), json.dumps(config)]
  ours_t: list[float] = []
  result = None
  t_end = time.monotonic() + timeout_s
  with tempfile.TemporaryFile("w+") as err, subprocess.Popen(
      cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
      env=env) as proc:
    stops = 0
    for line in proc.stdout:
      if time.monotonic() > t_end:
        proc.kill()
        raise RuntimeError(f"{script} ran past {timeout_s} s")
      if line.strip() == "STEP":
        stops += 1
        if WARMUP < stops <= WARMUP + steps:
          ours_t.append(ours.step())
        proc.stdin.write("go\n")
        proc.stdin.flush()
      elif line.startswith("RESULT "):
        result = json.loads(line[len("RESULT "):])
    proc.wait()
    if proc.returncode or result is None:
      err.seek(0)
      raise RuntimeError(f"{script} exited with {proc.returncode}:\n{err.read()[-6000:]}")
  return result, ours_t


def compare(size: Size, steps: int, python: str, worker: str, label: str,
            variants: dict[str, dict[str, Any]], profile: bool = False) -> dict[str, Any]:
  """Writes the workload, then runs each peer variant in lock-step with our steps at one size.

  Ours warms up once (WARMUP steps) in this interpreter; each entry of `variants` (name ->
  extra worker settings) is one worker process that drops its first WARMUP steps.
  """
  with tempfile.TemporaryDirectory(prefix=f"vs_{label}_{size.name}_") as ckpt:
    workload = write_workload(size, ckpt, size.prompts * (WARMUP + steps + 1))
    ours = OurGRPO(size, ckpt, workload["ids"])
    warm = [ours.step() for _ in range(WARMUP)]
    worker_cfg = dict(ckpt_dir=ckpt, prompts=size.prompts, group=size.group,
                      new_tokens=size.new_tokens, prompt_len=size.prompt_len, warmup=WARMUP,
                      steps=steps, lr=LR, grad_clip=GRAD_CLIP, temperature=TEMPERATURE, eps=EPS)
    ours_t: list[float] = []
    peers: dict[str, Any] = {}
    for name, extra in variants.items():
      rep, mine = run_lockstep(python, worker, {**worker_cfg, **extra}, ours, steps)
      ours_t += mine
      times = rep["step_s"]
      peers[name] = dict(
          s_per_step=statistics.median(times), steps=len(times),
          min_max=[min(times), max(times)], ours_s_per_step_alongside=statistics.median(mine),
          warmup_s=rep["warmup_s"], setup_s=rep["setup_s"], reward_mean=rep["reward_mean"],
          completion_len=rep["completion_len_min_max"],
          prompt_tokens_match=rep["prompt_tokens_match"], versions=rep["versions"],
          settings=extra, **({"generate_s": statistics.median(rep["generate_s"])}
                             if rep.get("generate_s") else {}))
      print(f"[{label} {size.name}] {name}: {peers[name]['s_per_step']:.3f} s/step, ours "
            f"alongside {peers[name]['ours_s_per_step_alongside']:.3f} s/step (load avg "
            f"{os.getloadavg()[0]:.1f})", file=sys.stderr)
    mo = statistics.median(ours_t)
    for pr in peers.values():
      pr["ratio"] = pr["s_per_step"] / mo
    # The headline compares against the peer's fastest setting (conservative for us).
    best = min(peers, key=lambda k: peers[k]["s_per_step"])
    out: dict[str, Any] = dict(
        ours_s_per_step=mo, ours_steps=len(ours_t), ours_min_max=[min(ours_t), max(ours_t)],
        ours_warmup_s=warm, reward_mean_ours=ours.last_reward, shape=dataclasses.asdict(size),
        peers=peers, peer_s_per_step=peers[best]["s_per_step"], ratio=peers[best]["ratio"],
        ratio_vs=best)
    if profile:  # where our step's time goes: sample + reward vs the train step
      split = [ours.step_split() for _ in range(steps)]
      out["ours_sample_s"] = statistics.median(s for s, _ in split)
      out["ours_train_s"] = statistics.median(t for _, t in split)
    return out


def main(argv: list[str] | None, *, peer: str, requirements: list[str], worker: str,
         sizes: list[str], default_size: str, doc: str,
         variants: dict[str, dict[str, Any]] | None = None) -> None:
  """The command line shared by `vs_tunix.py` and `vs_trl.py`."""
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("--size", default=default_size, choices=sizes + ["all"])
  parser.add_argument("--steps", type=int, default=10,
                      help="timed steps per framework (and per peer setting)")
  parser.add_argument("--profile", action="store_true",
                      help="also time our sample and train halves separately")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  python = ensure_venv(peer, requirements)
  machine = machine_info()
  variants = variants or {peer: {}}
  names = sizes if args.size == "all" else [args.size]
  results = {n: compare(SIZES[n], args.steps, python, worker, peer, variants, args.profile)
             for n in names}
  machine["load_avg_end"] = os.getloadavg()[0]
  print("| size | framework | s/step (median) | steps/s | s/step / ours |")
  print("|---|---|---|---|---|")
  for n, r in results.items():
    print(f"| {n} | adaptive_rl | {r['ours_s_per_step']:.3f} | {1 / r['ours_s_per_step']:.2f} "
          f"| 1.00x |")
    for name, pr in r["peers"].items():
      print(f"| {n} | {name} | {pr['s_per_step']:.3f} | {1 / pr['s_per_step']:.2f} | "
            f"{pr['ratio']:.2f}x |")
  if args.json:
    default = default_size if default_size in results else names[0]
    print(json.dumps({"benchmark": f"vs_{peer}", "command": " ".join(sys.argv),
                      "steps": args.steps, "warmup": WARMUP,
                      "ratio": results[default]["ratio"], "ratio_size": default,
                      "sizes": results, "machine": machine}))


def machine_info() -> dict[str, Any]:
  """CPU model, cores, date and this interpreter's JAX version."""
  return dict(cpu_model=_common.cpu_model(), cpu_count=os.cpu_count(),
              platform=platform.platform(), python=platform.python_version(), jax=jax.__version__,
              jaxlib=importlib.metadata.version("jaxlib"),
              date_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
              load_avg_start=os.getloadavg()[0])
