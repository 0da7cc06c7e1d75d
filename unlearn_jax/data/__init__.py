"""Datasets as in-memory device arrays, forget/retain splits and on-device augmentation.

Importing this package never imports TensorFlow or TFDS; TFDS is imported when a TFDS dataset is loaded.
"""
from unlearn_jax.data.augment import augment_cifar, get_augment
from unlearn_jax.data.condense import (
    condense_distribution_matching,
    condense_gradient_matching,
    distribution_matching_loss,
    gradient_matching_distance,
    gradient_matching_loss,
    linen_init_fn,
)
from unlearn_jax.data.datasets import (
    Dataset,
    dataset_names,
    from_arrays,
    load_dataset,
    load_digits,
    load_mnist1d,
    load_synthetic,
    load_tfds,
    register_dataset,
)
from unlearn_jax.data.facts import FactsBenchmark, QASet, Tokenizer, make_facts_benchmark
from unlearn_jax.data.forget import UnlearningSplits, make_unlearning_splits
from unlearn_jax.data.split import Split, batch_arrays, num_batches
from unlearn_jax.data.worst_case import (
    project_capped_simplex,
    splits_from_indices,
    worst_case_forget_indices,
    worst_case_selection,
)

__all__ = [
    "Dataset",
    "FactsBenchmark",
    "QASet",
    "Tokenizer",
    "Split",
    "UnlearningSplits",
    "augment_cifar",
    "batch_arrays",
    "condense_distribution_matching",
    "condense_gradient_matching",
    "dataset_names",
    "distribution_matching_loss",
    "from_arrays",
    "get_augment",
    "gradient_matching_distance",
    "gradient_matching_loss",
    "linen_init_fn",
    "load_dataset",
    "load_digits",
    "load_mnist1d",
    "load_synthetic",
    "load_tfds",
    "make_facts_benchmark",
    "make_unlearning_splits",
    "num_batches",
    "project_capped_simplex",
    "register_dataset",
    "splits_from_indices",
    "worst_case_forget_indices",
    "worst_case_selection",
]
