"""Full GRPO steps/s of adaptive_rl vs google/tunix 0.1.7 on the same random Qwen2 model (CPU).

  python benchmarks/vs_tunix.py [--size tiny|medium|all] [--steps 10] [--profile] [--json]

One invocation, one machine. The model is written ONCE in HF format (`models.init` at a Qwen2
shape + `models.to_hf`) together with a char-level tokenizer and the prompts; our side loads it
with `models.from_hf` in this interpreter, tunix with its own `tunix.models.qwen2.params` loader
in `.bench_envs/tunix` (created on first use with `python -m venv` + `pip install
google-tunix==0.1.7` and the CPU jax / jaxlib 0.10.2 it resolves to, pinned) as a subprocess
(`benchmarks/_tunix_worker.py`) running tunix's `GRPOLearner` on an `RLCluster` (vanilla
rollout, actor = rollout on one CPU mesh).

The two take turns step by step (tunix step, our step, tunix step ...; `_peer.run_lockstep`), so
shared-machine noise hits both and they never run at the same time. Each side runs 2 untimed
warm-up steps (compilation), then `--steps` timed steps: generate G completions for each of P
prompts (temperature 1, no top-k / top-p, exactly N new tokens: EOS is a tokenizer-only id the
model cannot emit), reward = fraction of even token ids, GRPO advantages, one AdamW update
(lr 1e-5, global-norm clip 1, no weight decay; clip eps 0.2 both sides, no dual clip, beta = 0
so no reference model, seq-mean-token-mean loss, one iteration per batch).

Sizes (vocab 2048 / 8192, tied embeddings, GQA, qkv bias):
  tiny:   2 layers, d=64,  4 prompts x G=4, prompt 16 tokens, 32 new tokens
  medium: 4 layers, d=256, 8 prompts x G=8, prompt 32 tokens, 64 new tokens

Prints a table; with `--json` the last line is one JSON object: per size the median s/step of
both, `ratio` = tunix s/step / ours s/step (> 1: ours is faster; top-level `ratio` is the
default size, medium), the machine, and the versions on both sides. `--profile` adds our
sample-vs-train split (extra steps with a sync in between, run after the comparison).
"""

from __future__ import annotations

import _peer  # pylint: disable=import-error

# tunix 0.1.7 plus the versions pip resolved for it (CPU jaxlib), pinned for reproducibility.
TUNIX_REQUIREMENTS = ["google-tunix==0.1.7", "jax==0.10.2", "jaxlib==0.10.2", "flax==0.12.8",
                      "transformers==5.12.1"]


def main(argv: list[str] | None = None) -> None:
  _peer.main(argv, peer="tunix", requirements=TUNIX_REQUIREMENTS, worker="_tunix_worker.py",
             sizes=["tiny", "medium"], default_size="medium", doc=__doc__)


if __name__ == "__main__":
  main()
