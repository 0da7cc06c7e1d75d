r"""LoRA unlearning: low-rank adapters on chosen projections, trained in place of the weights.

A targeted Dense kernel :math:`W \in \mathbb{R}^{d_\text{in} \times d_\text{out}}` (our kernels are ``(in, out)``)
is used as

.. math::

   W' = W + \frac{\alpha}{r} A B, \qquad A \in \mathbb{R}^{d_\text{in} \times r},\
   B \in \mathbb{R}^{r \times d_\text{out}}

with :math:`W` frozen. As in the reference implementation (peft's ``LoraLayer.reset_lora_parameters`` with
``init_lora_weights=True``) :math:`A` starts Kaiming-uniform, :math:`\mathcal{U}(-1/\sqrt{d_\text{in}},
1/\sqrt{d_\text{in}})`, and :math:`B = 0`, so the model's outputs are unchanged before the first step; the
defaults ``alpha = 16``, ``targets = ('q', 'v')`` are peft's Llama defaults (``lora_alpha`` of its examples,
``target_modules`` of ``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING['llama']``); ``rank = 0`` means full
fine-tuning.

**Why a parameter-level formulation and not** ``flax.nnx.LoRA``: the LM methods take a `LanguageModel` — plain
functions over a params pytree (the linen tiny GPT of `unlearn_jax.models.gpt`, an imported Hugging Face
checkpoint, any JAX causal LM) — and never own a module. ``nnx.LoRA`` / ``nnx.LoRALinear`` are layers that must be
built into an NNX model, and linen has no LoRA layer; lorax (the JAX LoRA library) wraps ``apply`` through qax's
implicit arrays and is unmaintained. So the adapters are a separate pytree and every objective term sees
`merge`\ d weights: the term is wrapped (`lora_objective`), the frozen base rides in the loop's carried state
(the Original, which is also the reference model of NPO/IdkDPO/RMU: one copy serves both), and only the adapters
are differentiated and handed to the optimiser, so the optimiser state (AdamW's two moments) covers the adapters
alone. The price against an activation-level LoRA (``x W + (x A) B``): each step builds :math:`W'` and
:math:`\partial L / \partial W'` for the targeted kernels (weight-sized temporaries, full fine-tuning's matmul
FLOPs); what is saved is the optimiser state and the gradients of every other weight.

Targets name modules the way peft's ``target_modules`` does: a target matches a Dense kernel whose module path
(``block_0/attn/q``) equals it or ends with ``/<target>`` (``'q'``, ``'attn/q'``, ``'block_3/mlp/down'``).

References:
  Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022; Hugging Face peft
  (github.com/huggingface/peft): ``src/peft/tuners/lora/layer.py`` (``update_layer``, ``reset_lora_parameters``,
  ``get_delta_weight``) and ``src/peft/utils/constants.py``; open-unlearning issue #179 (LoRA unlearning).

Example:
    >>> adapters = init_adapters(params, rank=8, targets=("q", "v"), rng=jax.random.key(0))
    >>> merged = merge(params, adapters, scale=16 / 8)        # W + (alpha / r) A B on q and v
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax.unlearning import loop
from unlearn_jax.unlearning import teachers

Pytree = Any
A, B = "lora_a", "lora_b"
KERNEL = "kernel"
# The options every LM method takes (`unlearn_jax.unlearning.language.COMMON`); rank 0 = full fine-tuning.
OPTIONS = dict(lora_rank=0, lora_alpha=16.0, lora_targets=("q", "v"))


def _kernels(params: Pytree) -> dict[str, tuple[tuple, Any]]:
  """``{module path 'block_0/attn/q': (key path of the kernel, leaf)}`` of every 2-D ``kernel`` leaf."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    if names and names[-1] == KERNEL and len(getattr(leaf, "shape", ())) == 2:
      out["/".join(names[:-1])] = (tuple(names[:-1]), leaf)
  return out


def check_options(*, rank: int, alpha: float, targets: Sequence[str]) -> tuple[str, ...]:
  """Validates the LoRA options alone (no parameters needed); returns ``targets`` as a tuple.

  Raises:
    ValueError: one line naming ``method.lora_rank`` (not an integer >= 0; 0 is full fine-tuning),
      ``method.lora_alpha`` (not positive) or ``method.lora_targets`` (empty, or not strings).
  """
  if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 0:
    raise ValueError(f"method.lora_rank={rank!r}: must be a positive integer (0: train all weights)")
  if not float(alpha) > 0:
    raise ValueError(f"method.lora_alpha={alpha!r}: must be positive")
  targets = (targets,) if isinstance(targets, str) else tuple(targets)
  if not targets or not all(isinstance(t, str) and t.strip("/") for t in targets):
    raise ValueError(f"method.lora_targets={targets!r}: give one or more module names, e.g. ('q', 'v')")
  return targets


def check(params: Pytree, *, rank: int, targets: Sequence[str], alpha: float = 1.0) -> dict[str, tuple[tuple, Any]]:
  """Validates LoRA options against ``params`` (arrays or `jax.ShapeDtypeStruct`\\ s) before any training.

  Returns:
    ``{module path: (its key names, kernel)}`` of the kernels ``targets`` select (see the module docstring).

  Raises:
    ValueError: one line naming ``method.lora_targets`` (a target matching no Dense kernel, with example
      paths), ``method.lora_rank`` (not in ``1..min(d_in, d_out)`` of every targeted kernel, naming the
      smallest) or ``method.lora_alpha`` (`check_options`).
  """
  targets = check_options(rank=rank, alpha=alpha, targets=targets)
  if rank < 1:
    raise ValueError(f"method.lora_rank={rank!r}: must be a positive integer for adapters")
  kernels = _kernels(params)
  match = lambda path, t: path == t.strip("/") or path.endswith("/" + t.strip("/"))
  for t in targets:
    if not any(match(path, t) for path in kernels):
      raise ValueError(f"method.lora_targets: {t!r} names no Dense kernel; module paths are e.g. "
                       f"{sorted(kernels)[:8]}")
  chosen = {path: v for path, v in kernels.items() if any(match(path, t) for t in targets)}
  path, (_, leaf) = min(chosen.items(), key=lambda kv: min(kv[1][1].shape))
  if rank > min(leaf.shape):
    raise ValueError(f"method.lora_rank={rank}: larger than {path}'s kernel {tuple(leaf.shape)} (at most "
                     f"{min(leaf.shape)})")
  return chosen


def init_adapters(params: Pytree, *, rank: int, targets: Sequence[str], rng: jax.Array) -> Pytree:
  """Adapters for ``params``' targeted kernels: a nested dict mirroring the module paths, each module holding
  ``lora_a [d_in, r]`` (peft's Kaiming-uniform) and ``lora_b [r, d_out]`` (zeros), in the kernel's dtype.

  Raises:
    ValueError: bad ``rank`` or ``targets`` (`check`).
  """
  chosen = check(params, rank=rank, targets=targets)
  adapters: dict = {}
  for i, (_, (names, leaf)) in enumerate(sorted(chosen.items())):
    d_in, d_out = leaf.shape
    bound = 1.0 / np.sqrt(d_in)
    node = adapters
    for name in names:
      node = node.setdefault(name, {})
    node[A] = jax.random.uniform(jax.random.fold_in(rng, i), (d_in, rank), leaf.dtype, -bound, bound)
    node[B] = jnp.zeros((rank, d_out), leaf.dtype)
  return adapters


def merge(params: Pytree, adapters: Pytree, scale: float) -> Pytree:
  """``params`` with every adapted kernel replaced by ``W + scale · A B`` (``scale = alpha / rank``); the
  other leaves are returned as they are. Works inside ``jit`` and under differentiation by ``adapters``."""

  def walk(p, a):
    if not isinstance(a, dict) or not a:
      return p
    if A in a:
      w = p[KERNEL]
      delta = (a[A].astype(jnp.float32) @ a[B].astype(jnp.float32)) * scale
      return {**p, KERNEL: (w.astype(jnp.float32) + delta).astype(w.dtype)}
    return {**p, **{k: walk(p[k], v) for k, v in a.items()}}

  return walk(params, adapters)


def lora_objective(objective: loop.Objective, *, base_key: str, scale: float) -> loop.Objective:
  """``objective`` over adapters: each term evaluates at ``merge(frozen[base_key], adapters, scale)``.

  The terms are `teachers.frozen_term`-style (a `teachers.carry`-ed state whose frozen dict holds the base
  parameters under ``base_key``); the base is outside the gradient.
  """

  def wrap(term):
    if term is None:
      return None

    def lora_term(adapters, carried, batch, rng, epoch):
      base = jax.lax.stop_gradient(carried[teachers.FROZEN][base_key])
      return term(merge(base, adapters, scale), carried, batch, rng, epoch)

    return lora_term

  return loop.Objective(forget=wrap(objective.forget), retain=wrap(objective.retain))

