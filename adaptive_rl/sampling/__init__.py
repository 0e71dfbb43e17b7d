"""Jitted prefill + decode with a KV cache, and sampling strategies."""

from adaptive_rl.sampling.sampler import (
    SampleOutput,
    Sampler,
    SamplerConfig,
    SamplingState,
    bucket_length,
    check_prompt_fits,
    left_pad,
    sample,
)
from adaptive_rl.sampling.strategies import Greedy, Sample, make_strategy
