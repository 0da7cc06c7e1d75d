"""unlearn_jax: machine unlearning and model merging as pure JAX functions."""
import setuptools

setuptools.setup(
    name="unlearn_jax",
    version="0.1.0",
    description="Machine unlearning and model merging for JAX/Flax.",
    packages=setuptools.find_packages(include=["unlearn_jax", "unlearn_jax.*", "experiments", "configs"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.7.0",
        "flax>=0.11.0",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11.0",
        "chex>=0.1.89",
        "ml-collections>=1.0.0",
        "absl-py>=2.1.0",
        "scikit-learn>=1.5.0",
        "scipy>=1.13.0",
        "numpy>=1.26",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "safetensors>=0.4",
        "rouge-score>=0.1.2",
        "mnist1d>=0.0.2",
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-xdist>=3.8", "tensorflow-datasets>=4.9.7", "matplotlib>=3.8",
                 "transformers>=5.0", "torch==2.13.0", "tokenizers>=0.15", "pyarrow>=14",
                 "mergekit==0.1.5", "pyyaml>=6.0"],  # mergekit: tests/test_mergekit.py compares YAML merges
        "benchmarks": ["tokenizers>=0.15", "pyarrow>=14"],  # TOFU / MUSE / WMDP files (data/lm_benchmarks.py)
        "tfds": ["tensorflow-datasets>=4.9.7"],
        "plots": ["matplotlib>=3.8"],
        # what benchmarks/*.py import beyond the library: PyTorch (CPU build from PyPI; pinned, as in "test")
        "bench": ["torch==2.13.0"],
    },
)
