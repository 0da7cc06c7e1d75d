"""Permutation symmetries: `PermutationSpec`, spec builders, weight / activation / STE matching, and the
singular-vector alignment they produce (`singular_alignment`).

Example:
    >>> from unlearn_jax.merging import permutation
    >>> spec = permutation.spec_for_model('resnet20', params, state)
    >>> perms = permutation.weight_matching(spec, params_a, params_b, rng=jax.random.key(0))
    >>> params_b, state_b = permutation.apply_permutation(spec, perms, params_b, state_b)
"""
from unlearn_jax.merging.permutation.matching import activation_matching
from unlearn_jax.merging.permutation.matching import apply_permutation
from unlearn_jax.merging.permutation.matching import identity_perms
from unlearn_jax.merging.permutation.matching import invert_perms
from unlearn_jax.merging.permutation.matching import random_perms
from unlearn_jax.merging.permutation.matching import ste_matching
from unlearn_jax.merging.permutation.matching import weight_matching
from unlearn_jax.merging.permutation.matching import weight_matching_many
from unlearn_jax.merging.permutation.singular import singular_alignment
from unlearn_jax.merging.permutation.singular import subspace_overlap
from unlearn_jax.merging.permutation.singular import weight_matrices
from unlearn_jax.merging.permutation.spec import check_spec
from unlearn_jax.merging.permutation.spec import cnn1d_permutation_spec
from unlearn_jax.merging.permutation.spec import cnn_permutation_spec
from unlearn_jax.merging.permutation.spec import flatten
from unlearn_jax.merging.permutation.spec import hidden_layers
from unlearn_jax.merging.permutation.spec import kernel_layers
from unlearn_jax.merging.permutation.spec import mlp_permutation_spec
from unlearn_jax.merging.permutation.spec import perm_sizes
from unlearn_jax.merging.permutation.spec import PermutationSpec
from unlearn_jax.merging.permutation.spec import resnet18_permutation_spec
from unlearn_jax.merging.permutation.spec import resnet20_permutation_spec
from unlearn_jax.merging.permutation.spec import resnet_permutation_spec
from unlearn_jax.merging.permutation.spec import spec_for_model
from unlearn_jax.merging.permutation.spec import vgg_permutation_spec

__all__ = [
    "PermutationSpec",
    "activation_matching",
    "apply_permutation",
    "check_spec",
    "cnn1d_permutation_spec",
    "cnn_permutation_spec",
    "flatten",
    "hidden_layers",
    "identity_perms",
    "invert_perms",
    "kernel_layers",
    "mlp_permutation_spec",
    "perm_sizes",
    "random_perms",
    "resnet18_permutation_spec",
    "resnet20_permutation_spec",
    "resnet_permutation_spec",
    "singular_alignment",
    "spec_for_model",
    "ste_matching",
    "subspace_overlap",
    "vgg_permutation_spec",
    "weight_matching",
    "weight_matching_many",
    "weight_matrices",
]
