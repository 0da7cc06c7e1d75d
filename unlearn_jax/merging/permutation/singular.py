"""Singular-vector alignment of two models' weight matrices: why weight matching finds linear mode connectivity.

A permutation of hidden units multiplies a layer's weight matrix by permutation matrices on both sides,
``W -> P_in W P_out^T``: it leaves the singular values unchanged and rotates the singular vectors. Ito, Yamada and
Kumagai argue that weight matching works because, maximising ``sum <W_a, P W_b P^T>``, it mostly aligns the
singular vectors of the largest singular values across the two models (those carry the layer's function), not
because it makes the weights close. `singular_alignment` measures that alignment per layer.

The measure (our choice; the paper's text beyond its abstract was not available here, so this is not its exact
statistic): each kernel is read as a matrix ``(inputs, outputs)`` (a convolution's ``(k..., in, out)`` kernel as
``(k * in, out)``), and for the top ``k`` singular directions on each side the **subspace overlap**
``||U_a^T U_b||_F^2 / k`` is reported: the mean squared cosine of the principal angles between the two
``k``-dimensional subspaces. It is 1 when the subspaces coincide (a permuted copy after the inverse permutation),
invariant to the sign and to rotations within degenerate singular values (which per-vector cosines are not), and
about ``k / n`` for independent random subspaces of ``R^n`` (reported as ``chance_*``).

Example:
    >>> before = singular_alignment(params_a, params_b, spec, k=8)
    >>> after = singular_alignment(params_a, params_b, spec, k=8, perms=weight_matching(spec, params_a, params_b,
    ...                                                                                   rng=key))
    >>> before['Dense_1']['output'], after['Dense_1']['output']

References:
    Ito, Yamada and Kumagai, "Analysis of Linear Mode Connectivity via Permutation-Based Weight Matching: With
    Insights into Other Permutation Search Methods", ICLR 2025 (arXiv:2402.04051).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from unlearn_jax.merging import connectivity
from unlearn_jax.merging.permutation import matching
from unlearn_jax.merging.permutation import spec as spec_lib
from unlearn_jax.merging.permutation.spec import PermutationSpec

Pytree = Any


def weight_matrices(spec: PermutationSpec, params: Pytree) -> dict[str, np.ndarray]:
  """``{module path: kernel as a float64 (inputs, outputs) matrix}`` for every kernel the spec permutes.

  A kernel is an array of at least 2 axes with a permutation on one of them; its last axis is the output.
  """
  flat = spec_lib.flatten(params)
  out = {}
  for path, axes in spec.axes_to_perm.items():
    if len(axes) >= 2 and any(p is not None for p in axes):
      w = np.asarray(jax.device_get(flat[path]), np.float64)
      out[spec_lib._module(path) or path] = w.reshape(-1, w.shape[-1])  # pylint: disable=protected-access
  return out


def subspace_overlap(u_a: np.ndarray, u_b: np.ndarray) -> float:
  """``||u_a^T u_b||_F^2 / k`` of two ``(n, k)`` orthonormal bases: 1 for the same subspace, 0 for orthogonal."""
  if u_a.shape != u_b.shape or u_a.ndim != 2:
    raise ValueError(f"subspace_overlap: bases {u_a.shape} and {u_b.shape} must both be (n, k)")
  return float(np.sum(np.square(u_a.T @ u_b)) / u_a.shape[1])


def singular_alignment(params_a: Pytree, params_b: Pytree, spec: PermutationSpec, *, k: int = 8,
                       perms: Mapping[str, Any] | None = None) -> dict[str, dict]:
  """Per layer, how much the top-``k`` singular subspaces of ``A``'s and ``B``'s kernels coincide.

  Args:
    params_a: the reference parameters.
    params_b: the other model's parameters (already permuted onto ``A``, or not).
    spec: the `PermutationSpec` covering both (checked).
    k: singular directions per side (clipped to the matrix's smaller dimension).
    perms: if given, ``B`` is first permuted by them (`apply_permutation`): pass the result of weight
      matching to get the "after" numbers, leave None for "before".

  Returns:
    ``{module path: {'k', 'input', 'output', 'mean', 'chance_input', 'chance_output'}}`` where ``input`` is the
    overlap of the top-``k`` singular subspaces in the layer's input space (the kernel's rows), ``output`` the
    same in its output space, ``mean`` their average and ``chance_*`` = ``k / dimension``, the expected overlap
    of independent uniformly random subspaces.

  Raises:
    ValueError: if the spec does not cover the trees, or ``k < 1``.

  References:
    Ito, Yamada and Kumagai, arXiv:2402.04051 (ICLR 2025), Sec. 4 (singular vectors under permutation).

  Example:
    >>> singular_alignment(pa, apply_permutation(spec, weight_matching(spec, pa, pb, rng=key), pb), spec, k=4)
  """
  if k < 1:
    raise ValueError(f"singular_alignment: k must be at least 1, got {k}")
  spec_lib.check_spec(spec, params_a)
  connectivity.check_same_structure(params_a, params_b, ("params_a", "params_b"), "singular_alignment")
  if perms is not None:
    params_b = matching.apply_permutation(spec, perms, params_b)
  mats_a, mats_b = weight_matrices(spec, params_a), weight_matrices(spec, params_b)
  out = {}
  for layer, w_a in mats_a.items():
    kk = min(k, *w_a.shape)
    u_a, _, vt_a = np.linalg.svd(w_a, full_matrices=False)
    u_b, _, vt_b = np.linalg.svd(mats_b[layer], full_matrices=False)
    inputs = subspace_overlap(u_a[:, :kk], u_b[:, :kk])
    outputs = subspace_overlap(vt_a[:kk].T, vt_b[:kk].T)
    out[layer] = {"k": kk, "input": inputs, "output": outputs, "mean": (inputs + outputs) / 2,
                  "chance_input": kk / w_a.shape[0], "chance_output": kk / w_a.shape[1]}
  return out
