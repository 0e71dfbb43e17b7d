"""Full GRPO steps/s of adaptive_rl vs Hugging Face TRL's `GRPOTrainer` on the same model (CPU).

  python benchmarks/vs_trl.py [--size tiny] [--steps 10] [--profile] [--json]

One invocation, one machine. The random Qwen2-shaped model is written ONCE in HF format
(`models.init` + `models.to_hf`) with a char-level tokenizer and the prompts; our side loads it
with `models.from_hf` in this interpreter, TRL with `AutoModelForCausalLM` (float32) in
`.bench_envs/trl` (created on first use with `python -m venv` + `pip install torch==2.13.0
trl==1.16.0 transformers==5.24.0`; the CPU torch wheel) as a subprocess
(`benchmarks/_trl_worker.py`).

TRL and ours take turns step by step (TRL step, our step, TRL step ...; `_peer.run_lockstep`),
so shared-machine noise hits both and they never overlap. After 2 untimed warm-up steps each,
`--steps` timed GRPO steps: P = 4 prompts x G = 4 completions of exactly 32 new tokens
(temperature 1, top_p 1, top_k 0; EOS is a tokenizer-only id, so it is never sampled), reward =
fraction of even token ids, one AdamW update (lr 1e-5, grad-norm clip 1, no weight decay,
constant schedule), clip eps 0.2, beta = 0 (no reference model), loss_type "grpo"
(seq-mean-token-mean), one iteration per batch. TRL: per_device_train_batch_size = P * G = 16,
num_generations = 4, max_completion_length = 32, gradient_accumulation_steps 1, transformers
`generate` (no vLLM), logging / saving / progress bars off.

TRL runs twice (two worker processes, each in lock-step with ours): with torch's default
intra-op threads (one per core) and with `torch.set_num_threads(1)` ("trl-1thread"). On a
machine shared with other jobs the default threads spin-wait for busy cores and a TRL step gets
several times slower, so the headline `ratio` (TRL s/step / ours s/step, > 1: ours is faster)
uses whichever TRL setting was faster.

Prints a table; with `--json` the last line is one JSON object with the median s/step of every
framework setting, `ratio`, the machine and both sides' versions.
"""

from __future__ import annotations

import _peer  # pylint: disable=import-error

TRL_REQUIREMENTS = ["torch==2.13.0", "trl==1.16.0", "transformers==5.24.0"]
# torch's default intra-op threads (= cores) spin and stall when other jobs share the cores, so
# TRL is also run with one thread; the headline ratio uses whichever TRL setting was faster.
TRL_VARIANTS = {"trl": {}, "trl-1thread": {"torch_threads": 1}}


def main(argv: list[str] | None = None) -> None:
  _peer.main(argv, peer="trl", requirements=TRL_REQUIREMENTS, worker="_trl_worker.py",
             sizes=["tiny"], default_size="tiny", doc=__doc__, variants=TRL_VARIANTS)


if __name__ == "__main__":
  main()
