"""Network definitions (Flax Linen) and a registry that builds them by name.

Every model is a ``flax.linen.Module`` with ``__call__(x, train=False, features=False)`` taking NHWC images
(the MLP flattens them; ``cnn1d`` takes NLC signals) and returning float32 logits ``(batch, num_classes)``, or with ``features=True`` the
penultimate embedding (the input of the classifier). The causal language model of the LM-unlearning study is
`gpt` (`GPT`, `gpt_config`, `language_model`; Hugging Face checkpoints via `hf`), outside this registry. ``dtype`` is the compute dtype; parameters are float32.
BatchNorm statistics live in the ``batch_stats`` collection, so ``unlearn_jax.model.init`` puts them in
``state``, never in ``params``. Each module's docstring lists its exact parameter paths.

Example:
    >>> model, params, state = init(get_model('resnet20', 10, width=4), jax.random.key(0), x[:1])
    >>> logits, state = model.apply(params, state, x, train=True)
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from unlearn_jax.models import gpt, hf
from unlearn_jax.models.cnn import CNN
from unlearn_jax.models.cnn1d import CNN1D
from unlearn_jax.models.gpt import GPT, GPTConfig, gpt_config, language_model
from unlearn_jax.models.mlp import MLP
from unlearn_jax.models.resnet import BasicBlock, ResNet18, ResNet20
from unlearn_jax.models.vgg import VGG, VGG_CONFIGS

# name -> (class, constructor arguments fixed by the name)
_REGISTRY: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "mlp": (MLP, {}),
    "cnn": (CNN, {}),
    "cnn1d": (CNN1D, {}),
    "resnet18": (ResNet18, {}),
    "resnet20": (ResNet20, {}),
    **{f"{cfg}{suffix}": (VGG, {"cfg": cfg, "batch_norm": bool(suffix)})
       for suffix in ("", "_bn") for cfg in ("vgg11", "vgg16")},
}
MODELS: tuple[str, ...] = tuple(_REGISTRY)


def get_model(name: str, num_classes: int, *, dtype: Any = jnp.float32, **kwargs) -> nn.Module:
  """Builds the registered network ``name``.

  Args:
    name: one of ``MODELS``: 'mlp', 'cnn', 'cnn1d' (MNIST-1D signals), 'resnet18', 'resnet20', 'vgg11', 'vgg16', 'vgg11_bn', 'vgg16_bn'.
    num_classes: number of output logits (a positive integer).
    dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32, logits are float32.
    **kwargs: further constructor attributes of that model, e.g. ``width`` (resnet20), ``features`` (mlp),
      ``channels`` and ``dense`` (cnn), ``channels``, ``kernels`` and ``width`` (cnn1d).

  Returns:
    The unbound Linen module, ready for ``unlearn_jax.model.init``.

  Raises:
    ValueError: for an unknown name, an argument the model does not take, or a bad ``num_classes``.

  References:
    See each model's docstring (He et al. 2016 for the ResNets, Simonyan and Zisserman 2015 for VGG,
    Ainsworth et al. 2023 for the MLP and the ResNet-20 width multiplier).

  Example:
    >>> get_model('vgg16_bn', 100, dtype=jnp.bfloat16)
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
  cls, fixed = _REGISTRY[name]
  accepted = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "num_classes", "dtype"} - set(fixed)
  unknown = sorted(set(kwargs) - accepted)
  if unknown:
    raise ValueError(f"model {name!r} takes no argument(s) {unknown}; accepted: {sorted(accepted)}")
  try:
    ok = operator.index(num_classes) >= 1
  except TypeError:
    ok = False
  if not ok:
    raise ValueError(f"num_classes must be a positive integer, got num_classes={num_classes!r}")
  return cls(num_classes=num_classes, dtype=dtype, **fixed, **kwargs)


__all__ = ["MODELS", "get_model", "MLP", "CNN", "CNN1D", "BasicBlock", "ResNet18", "ResNet20", "VGG", "VGG_CONFIGS",
           "GPT", "GPTConfig", "gpt", "gpt_config", "hf", "language_model"]
