"""adaptive_rl: JAX-native RL post-training of language models with adaptive rollout allocation."""

import setuptools

_CORE = [
    "jax>=0.6.0",
    "flax>=0.10",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "ml-collections>=1.0",
    "sentencepiece>=0.2",
    "numpy>=1.26",
    "absl-py>=2.1",
    "chex>=0.1.88",
    "tqdm>=4.66",
    "safetensors>=0.4",
    "tokenizers>=0.20",
    "matplotlib>=3.8",
    "tensorboardX>=2.6",
    "jinja2>=3.1.6",
]

# tensorflow-datasets 4.9.10 imports importlib_resources (for a builder class defined in a
# package) without declaring it.
_TFDS = ["tensorflow-datasets>=4.9", "importlib-resources>=6"]

_EXTRAS = {
    # torch is pinned to the CPU build that lies on the CI machines' disk; any CPU build works.
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "hypothesis>=6.100",
        "torch==2.13.0",
        "transformers>=4.51",
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6.29",
        "math-verify>=0.7",
        "pyarrow>=15",
        # tests/test_tfds.py writes and reads array_record TFDS datasets, which needs no
        # TensorFlow (~50 MB, seconds to install); tfrecord-format datasets need TensorFlow too
        # (~1.5 GB), left out: that test skips without it.
        *_TFDS,
    ],
    "math": ["math-verify>=0.7"],
    "tfds": _TFDS,
    "wandb": ["wandb>=0.17"],
    "data": ["pyarrow>=15", "datasets>=2.19"],
}

setuptools.setup(
    name="adaptive_rl",
    version="0.1.0",
    description=__doc__,
    packages=setuptools.find_packages(include=["adaptive_rl", "adaptive_rl.*"]),
    python_requires=">=3.10",
    install_requires=_CORE,
    extras_require=_EXTRAS,
)
