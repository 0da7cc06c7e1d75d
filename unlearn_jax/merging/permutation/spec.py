"""`PermutationSpec`: which axes of which arrays each hidden-unit permutation acts on, and builders per model.

A ReLU network computes the same function when the units of a hidden layer are reordered, provided every array
that produces or consumes those units is reordered the same way: the layer's kernel output axis and bias, the
normalisation scale, shift and running statistics of those channels, and the next layers' kernel input axes
(for a residual network, every layer writing into or reading from the same residual stream). A spec names each
such permutation and lists, for every array, which permutation (or none) acts on each of its axes.

Arrays are named by their key path in the pytree, joined with ``/``: ``'Dense_0/kernel'`` in ``params``,
``'batch_stats/bn_0/mean'`` in ``state``. A permutation ``perm`` of size ``n`` acts on an axis by
``jnp.take(w, perm, axis)`` (unit ``i`` of the result is unit ``perm[i]`` of the input). An axis whose size is
``k * n`` (a flattened ``(..., n)`` feature map, as in the CNN's Dense layer after ``reshape``) is permuted within
each of its ``k`` consecutive blocks of ``n``.

Example:
    >>> spec = mlp_permutation_spec(2)
    >>> spec.axes_to_perm['Dense_1/kernel']
    ('P_0', 'P_1')
    >>> spec.perm_to_axes['P_0']
    (('Dense_0/kernel', 1), ('Dense_0/bias', 0), ('Dense_1/kernel', 0))
    >>> check_spec(spec, params)          # ValueError naming any uncovered or missing key

References:
    Ainsworth, Hayase and Srinivasa, "Git Re-Basin: Merging Models modulo Permutation Symmetries", ICLR 2023
    (the declarative spec: permutation -> axes, and its inverse).
"""
from __future__ import annotations

import collections
import re
import types
from typing import Any, Mapping, Sequence

import jax
import numpy as np

Pytree = Any
Axes = tuple  # tuple[str | None, ...], one entry per axis of an array

_RESNET_STAGES = {"resnet18": (2, 2, 2, 2), "resnet20": (3, 3, 3)}


def _freeze(mapping: Mapping | None, what: str) -> types.MappingProxyType:
  out = {}
  for key, value in (mapping or {}).items():
    if not isinstance(key, str):
      raise ValueError(f"{what}: keys must be '/'-joined path strings, got {key!r}")
    value = (value,) if isinstance(value, str) else tuple(value)
    out[key] = value
  return types.MappingProxyType(out)


class PermutationSpec:
  """Permutation name -> ``(path, axis)`` pairs, and array path -> the permutation of each of its axes.

  Attributes:
    axes_to_perm: ``{params path: (perm name or None per axis)}``; every leaf of ``params`` must appear.
    state_axes_to_perm: the same for ``state`` leaves (BatchNorm ``mean``/``var``), e.g.
      ``{'batch_stats/bn_0/mean': ('P_0',)}``.
    activations: ``{perm name: module paths}``: modules (``'stage1_block0/bn1'``) whose output's last axis the
      permutation acts on; used by activation matching. Optional.
    perm_to_axes: derived: ``{perm name: ((params path, axis), ...)}`` (params only), in insertion order.
    state_perm_to_axes: derived, the same for ``state``.
    perm_names: the permutation names in order of first appearance.

  The spec is immutable and hashable, so it can be a static argument of ``jax.jit``.

  Example:
    >>> spec = PermutationSpec({'h/kernel': (None, 'P'), 'h/bias': ('P',), 'out/kernel': ('P', None),
    ...                         'out/bias': (None,)})
  """

  def __init__(self, axes_to_perm: Mapping[str, Sequence[str | None]],
               state_axes_to_perm: Mapping[str, Sequence[str | None]] | None = None,
               activations: Mapping[str, Sequence[str]] | None = None):
    self.axes_to_perm = _freeze(axes_to_perm, "axes_to_perm")
    self.state_axes_to_perm = _freeze(state_axes_to_perm, "state_axes_to_perm")
    self.activations = _freeze(activations, "activations")
    self.perm_to_axes = self._invert(self.axes_to_perm)
    self.state_perm_to_axes = self._invert(self.state_axes_to_perm)
    names = list(self.perm_to_axes)
    names += [p for p in self.state_perm_to_axes if p not in self.perm_to_axes]
    self.perm_names = tuple(names)
    unknown = sorted(set(self.activations) - set(self.perm_names))
    if unknown:
      raise ValueError(f"PermutationSpec: activations name permutation(s) {unknown} that act on no axis")
    self._key = (tuple(self.axes_to_perm.items()), tuple(self.state_axes_to_perm.items()),
                 tuple(self.activations.items()))

  @staticmethod
  def _invert(axes_to_perm) -> types.MappingProxyType:
    inv = collections.defaultdict(list)
    for path, perms in axes_to_perm.items():
      for axis, p in enumerate(perms):
        if p is not None:
          inv[p].append((path, axis))
    return types.MappingProxyType({p: tuple(v) for p, v in inv.items()})

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, PermutationSpec) and self._key == other._key

  def __repr__(self):
    return (f"PermutationSpec({len(self.perm_names)} permutations over {len(self.axes_to_perm)} params and "
            f"{len(self.state_axes_to_perm)} state arrays)")


# ----------------------------------------------------------------------------------------------------------------
# Key paths.


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_str(path) -> str:
  """A ``jax.tree_util`` key path as a ``/``-joined string: ``(DictKey('a'), DictKey('b')) -> 'a/b'``."""
  return "/".join(_key_name(k) for k in path)


def flatten(tree: Pytree) -> dict[str, Any]:
  """``{'/'-joined key path: leaf}`` of a pytree, in its flattening order."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_str(p): leaf for p, leaf in leaves}


# ----------------------------------------------------------------------------------------------------------------
# Sizes and validation.


def perm_sizes(spec: PermutationSpec, params: Pytree, state: Pytree | None = None) -> dict[str, int]:
  """``{perm name: n}``: the smallest size among the axes a permutation acts on (the others are multiples)."""
  flat = flatten(params)
  flat_state = flatten(state) if state is not None else {}
  sizes: dict[str, int] = {}
  for table, arrays in ((spec.perm_to_axes, flat), (spec.state_perm_to_axes, flat_state)):
    for p, axes in table.items():
      for path, axis in axes:
        if path in arrays:
          n = int(np.shape(arrays[path])[axis])
          sizes[p] = min(sizes.get(p, n), n)
  missing = [p for p in spec.perm_names if p not in sizes]
  if missing:
    raise ValueError(f"permutation(s) {missing} act on no array of params/state")
  return sizes


def _module(path: str) -> str:
  return path.rsplit("/", 1)[0] if "/" in path else ""


def check_spec(spec: PermutationSpec, params: Pytree, state: Pytree | None = None) -> dict[str, int]:
  """Checks that ``spec`` covers ``params`` (and ``state``) exactly and consistently.

  Checks: every spec path names an existing array, every array is in the spec, each entry has one item per axis,
  the axes of a permutation agree in size (or are whole multiples of it, for flattened maps), every permutation
  that reorders a layer's outputs (last axis) also reorders some consumer's input axis (and the converse), the
  1-D siblings of a permuted layer (bias, scale) are permuted with it, and the running statistics in ``state``
  of a permuted normalisation layer are permuted with its scale.

  Args:
    spec: the spec to check.
    params: the parameter pytree (arrays or ``jax.ShapeDtypeStruct`` leaves).
    state: the state pytree, or None to check ``params`` only.

  Returns:
    ``{perm name: size}``.

  Raises:
    ValueError: naming the missing key, the uncovered array or axis, or the inconsistent permutation.
  """
  trees = [("params", flatten(params), spec.axes_to_perm)]
  if state is not None:
    trees.append(("state", flatten(state), spec.state_axes_to_perm))
  for where, arrays, table in trees:
    for path, perms in table.items():
      if path not in arrays:
        close = sorted(arrays, key=lambda k: -len(set(k.split("/")) & set(path.split("/"))))[:3]
        raise ValueError(f"permutation spec names {where} key {path!r}, which is missing from {where} "
                         f"(nearest keys: {close})")
      ndim = len(np.shape(arrays[path]))
      if len(perms) != ndim:
        raise ValueError(f"permutation spec gives {len(perms)} axes for {where} key {path!r}, which has "
                         f"shape {tuple(np.shape(arrays[path]))}")
    for path, leaf in arrays.items():
      if path not in table:
        raise ValueError(f"{where} key {path!r} (shape {tuple(np.shape(leaf))}) is not covered by the "
                         "permutation spec: list it, with None on axes no permutation acts on")
  sizes = perm_sizes(spec, params, state)
  for where, arrays, table in trees:
    for path, perms in table.items():
      for axis, p in enumerate(perms):
        if p is not None and np.shape(arrays[path])[axis] % sizes[p]:
          raise ValueError(f"axis {axis} of {where} key {path!r} has size {np.shape(arrays[path])[axis]}, not a "
                           f"multiple of permutation {p!r} (size {sizes[p]})")
  flat_params = trees[0][1]
  # Outputs and inputs: a permutation on a layer's output axis must reach an input axis somewhere, and back.
  outputs, inputs = collections.defaultdict(list), collections.defaultdict(list)
  for path, perms in spec.axes_to_perm.items():
    if len(perms) >= 2:
      if perms[-1] is not None:
        outputs[perms[-1]].append(path)
      for axis, p in enumerate(perms[:-1]):
        if p is not None:
          inputs[p].append((path, axis))
  for p, paths in outputs.items():
    if not inputs.get(p):
      raise ValueError(f"permutation {p!r} reorders the outputs of {paths[0]!r} but no input axis of any layer: "
                       "the axis of the layer that reads those units is not covered by the spec")
  for p, axes in inputs.items():
    if not outputs.get(p):
      raise ValueError(f"permutation {p!r} reorders input axis {axes[0][1]} of {axes[0][0]!r} but the outputs "
                       "of no layer: the layer that produces those units is not covered by the spec")
  # Siblings: every 1-D array of a module whose outputs are permuted is permuted with them.
  by_module = collections.defaultdict(list)
  for path in flat_params:
    by_module[_module(path)].append(path)
  module_perm: dict[str, tuple[str, str]] = {}
  for module, paths in by_module.items():
    out = [(spec.axes_to_perm[p][-1], p) for p in paths if len(spec.axes_to_perm[p]) >= 1]
    permuted = [(q, p) for q, p in out if q is not None]
    if not permuted:
      continue
    q, source = permuted[0]
    size = np.shape(flat_params[source])[-1]
    for other, path in out:
      if np.shape(flat_params[path])[-1] == size and other != q:
        raise ValueError(f"last axis of params key {path!r} is {'not covered' if other is None else other!r}, "
                         f"but {source!r} in the same module is permuted by {q!r}")
    module_perm[module] = (q, source)
  if state is not None:
    for path, perms in spec.state_axes_to_perm.items():
      module = path.split("/", 1)[1] if "/" in path else path
      module = _module(module)
      if module in module_perm and perms and perms[-1] != module_perm[module][0]:
        q, source = module_perm[module]
        raise ValueError(f"last axis of state key {path!r} is {'not covered' if perms[-1] is None else perms[-1]!r}"
                         f", but params key {source!r} of the same module is permuted by {q!r}")
  return sizes


def kernel_layers(spec: PermutationSpec) -> tuple[str, ...]:
  """Module paths of every array named ``.../kernel`` the spec covers, in spec order (forward order for the
  builders of this module): the hidden layers and the classifier, e.g. ``('Dense_0', 'Dense_1', 'Dense_2')``."""
  return tuple(path.rsplit("/", 1)[0] for path in spec.axes_to_perm if path.endswith("/kernel"))


def hidden_layers(spec: PermutationSpec) -> tuple[str, ...]:
  """Module paths whose output channels are permuted and that hold a ``bias`` and a ``kernel`` or ``scale``.

  These are the affine layers REPAIR can rescale (`unlearn_jax.merging.connectivity.repair`), in spec order
  (forward order for the builders of this module).
  """
  out = []
  for path, perms in spec.axes_to_perm.items():
    module, leaf = _module(path), path.rsplit("/", 1)[-1]
    if leaf in ("kernel", "scale") and perms and perms[-1] is not None and f"{module}/bias" in spec.axes_to_perm:
      if spec.axes_to_perm[f"{module}/bias"][-1] == perms[-1] and module not in out:
        out.append(module)
  return tuple(out)


# ----------------------------------------------------------------------------------------------------------------
# Builders.


def _dense(name: str, p_in, p_out) -> dict:
  return {f"{name}/kernel": (p_in, p_out), f"{name}/bias": (p_out,)}


def _conv(name: str, p_in, p_out, bias: bool, spatial: int = 2) -> dict:
  out = {f"{name}/kernel": (None,) * spatial + (p_in, p_out)}
  if bias:
    out[f"{name}/bias"] = (p_out,)
  return out


def _norm(name: str, p, *, stats: bool) -> tuple[dict, dict]:
  params = {f"{name}/scale": (p,), f"{name}/bias": (p,)}
  state = {f"batch_stats/{name}/mean": (p,), f"batch_stats/{name}/var": (p,)} if stats else {}
  return params, state


def mlp_permutation_spec(num_hidden_layers: int) -> PermutationSpec:
  """The spec of a ReLU MLP in Linen's auto-named layout ``{'Dense_0': {'kernel', 'bias'}, ...}``.

  ``Dense_0 .. Dense_{L-1}`` are the hidden layers (permutation ``P_i`` on the outputs of ``Dense_i``) and
  ``Dense_L`` the classifier; this is `unlearn_jax.models.MLP`'s layout and git-re-basin's.

  Args:
    num_hidden_layers: ``L``, at least 1.

  References:
    Ainsworth, Hayase and Srinivasa, "Git Re-Basin", ICLR 2023.

  Example:
    >>> spec = mlp_permutation_spec(len(model_def.features))
  """
  if num_hidden_layers < 1:
    raise ValueError(f"mlp_permutation_spec: num_hidden_layers must be at least 1, got {num_hidden_layers}")
  axes, acts = {}, {}
  for i in range(num_hidden_layers):
    axes.update(_dense(f"Dense_{i}", f"P_{i - 1}" if i else None, f"P_{i}"))
    acts[f"P_{i}"] = (f"Dense_{i}",)
  axes.update(_dense(f"Dense_{num_hidden_layers}", f"P_{num_hidden_layers - 1}", None))
  return PermutationSpec(axes, activations=acts)


def cnn_permutation_spec(num_convs: int = 2) -> PermutationSpec:
  """The spec of `unlearn_jax.models.CNN`: ``conv_0 .. conv_{C-1}``, ``Dense_0`` and the classifier ``fc``.

  ``P_conv_i`` permutes the channels of ``conv_i``; the flattened last map enters ``Dense_0`` as
  ``h * w`` blocks of those channels, so its kernel input axis is permuted block-wise. ``P_dense`` permutes the
  hidden Dense units.

  Args:
    num_convs: the number of convolutions ``C`` (``len(channels)``), at least 1.
  """
  if num_convs < 1:
    raise ValueError(f"cnn_permutation_spec: num_convs must be at least 1, got {num_convs}")
  axes, acts = {}, {}
  for i in range(num_convs):
    axes.update(_conv(f"conv_{i}", f"P_conv_{i - 1}" if i else None, f"P_conv_{i}", bias=True))
    acts[f"P_conv_{i}"] = (f"conv_{i}",)
  axes.update(_dense("Dense_0", f"P_conv_{num_convs - 1}", "P_dense"))
  acts["P_dense"] = ("Dense_0",)
  axes.update(_dense("fc", "P_dense", None))
  return PermutationSpec(axes, activations=acts)


def cnn1d_permutation_spec(num_convs: int = 3) -> PermutationSpec:
  """The spec of `unlearn_jax.models.CNN1D`: 1-D convolutions ``conv_0 .. conv_{C-1}`` and the classifier ``fc``.

  ``P_conv_i`` permutes the channels of ``conv_i`` (kernel ``(k, in, out)`` and bias); the flattened last map
  ``(positions, channels)`` enters ``fc`` as one block of channels per position, so its kernel input axis is
  permuted block-wise (any width multiplier).

  Args:
    num_convs: the number of convolutions ``C`` (``len(channels)``), at least 1.

  Example:
    >>> spec = cnn1d_permutation_spec(3)
    >>> spec.axes_to_perm['conv_1/kernel']
    (None, 'P_conv_0', 'P_conv_1')
  """
  if num_convs < 1:
    raise ValueError(f"cnn1d_permutation_spec: num_convs must be at least 1, got {num_convs}")
  axes, acts = {}, {}
  for i in range(num_convs):
    axes.update(_conv(f"conv_{i}", f"P_conv_{i - 1}" if i else None, f"P_conv_{i}", bias=True, spatial=1))
    acts[f"P_conv_{i}"] = (f"conv_{i}",)
  axes.update(_dense("fc", f"P_conv_{num_convs - 1}", None))
  return PermutationSpec(axes, activations=acts)


def vgg_permutation_spec(cfg: str | int = "vgg16", *, norm: str | None = None,
                         conv_bias: bool | None = None) -> PermutationSpec:
  """The spec of a VGG: ``conv_i`` (+ ``bn_i`` BatchNorm or ``ln_i`` LayerNorm) and the classifier ``fc``.

  ``P_conv_i`` permutes the channels of ``conv_i``, its norm's scale and bias and (BatchNorm) its running
  ``batch_stats/bn_i/mean`` and ``var``.

  Args:
    cfg: ``'vgg11'``, ``'vgg16'`` (see `unlearn_jax.models.VGG_CONFIGS`) or the number of convolutions.
    norm: None, ``'batch'`` (`unlearn_jax.models.VGG` with ``batch_norm=True``) or ``'layer'`` (a channel
      LayerNorm ``ln_i`` after each conv, as git-re-basin's VGG has).
    conv_bias: whether the convolutions have a bias; by default they do unless ``norm='batch'``, as in
      `unlearn_jax.models.VGG`.

  References:
    Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015.
  """
  from unlearn_jax.models.vgg import VGG_CONFIGS  # pylint: disable=g-import-not-at-top
  if isinstance(cfg, str):
    if cfg not in VGG_CONFIGS:
      raise ValueError(f"vgg_permutation_spec: unknown cfg {cfg!r}; known: {sorted(VGG_CONFIGS)}")
    num_convs = sum(v != "M" for v in VGG_CONFIGS[cfg])
  else:
    num_convs = int(cfg)
  if norm not in (None, "batch", "layer"):
    raise ValueError(f"vgg_permutation_spec: norm must be None, 'batch' or 'layer', got {norm!r}")
  if conv_bias is None:
    conv_bias = norm != "batch"
  axes, state, acts = {}, {}, {}
  for i in range(num_convs):
    p = f"P_conv_{i}"
    axes.update(_conv(f"conv_{i}", f"P_conv_{i - 1}" if i else None, p, bias=conv_bias))
    acts[p] = (f"conv_{i}",)
    if norm is not None:
      name = ("bn_" if norm == "batch" else "ln_") + str(i)
      norm_params, norm_state = _norm(name, p, stats=norm == "batch")
      axes.update(norm_params)
      state.update(norm_state)
      acts[p] = (name,)
  axes.update(_dense("fc", f"P_conv_{num_convs - 1}", None))
  return PermutationSpec(axes, state, acts)


def resnet_permutation_spec(stage_sizes: Sequence[int]) -> PermutationSpec:
  """The spec of the CIFAR ResNets of `unlearn_jax.models.resnet` (stem, stages of BasicBlocks, ``fc``).

  All layers writing into the residual stream of stage ``s`` (the stem for stage 1, each block's ``conv2``/``bn2``,
  the projection shortcut) share ``P_stage{s}``; each block's inner channels (``conv1``/``bn1``) have their own
  ``P_stage{s}_block{b}``. BatchNorm scale, bias and running statistics follow their channels. Block 0 of every
  stage after the first has the projection shortcut.

  Args:
    stage_sizes: blocks per stage, e.g. ``(3, 3, 3)`` for ResNet-20, ``(2, 2, 2, 2)`` for ResNet-18.

  References:
    He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
    Ainsworth, Hayase and Srinivasa, "Git Re-Basin", ICLR 2023 (one permutation per residual stream).
  """
  axes, state, acts = {}, {}, {}

  def norm(name, p):
    norm_params, norm_state = _norm(name, p, stats=True)
    axes.update(norm_params)
    state.update(norm_state)

  axes.update(_conv("conv_init", None, "P_stage1", bias=False))
  norm("bn_init", "P_stage1")
  acts["P_stage1"] = ["bn_init"]
  p_in = "P_stage1"
  for s, n_blocks in enumerate(stage_sizes, start=1):
    p_out = f"P_stage{s}"
    acts.setdefault(p_out, [])
    for b in range(n_blocks):
      name, inner = f"stage{s}_block{b}", f"P_stage{s}_block{b}"
      axes.update(_conv(f"{name}/conv1", p_in, inner, bias=False))
      norm(f"{name}/bn1", inner)
      axes.update(_conv(f"{name}/conv2", inner, p_out, bias=False))
      norm(f"{name}/bn2", p_out)
      if s > 1 and b == 0:
        axes.update(_conv(f"{name}/shortcut_conv", p_in, p_out, bias=False))
        norm(f"{name}/shortcut_bn", p_out)
      acts[inner] = (f"{name}/bn1",)
      acts[p_out].append(name)
      p_in = p_out
  axes.update(_dense("fc", p_in, None))
  return PermutationSpec(axes, state, {k: tuple(v) for k, v in acts.items()})


def resnet20_permutation_spec() -> PermutationSpec:
  """`resnet_permutation_spec` of ResNet-20 (any width): stages of 3, 3, 3 blocks."""
  return resnet_permutation_spec(_RESNET_STAGES["resnet20"])


def resnet18_permutation_spec() -> PermutationSpec:
  """`resnet_permutation_spec` of the CIFAR ResNet-18: stages of 2, 2, 2, 2 blocks."""
  return resnet_permutation_spec(_RESNET_STAGES["resnet18"])


def spec_for_model(name: str, params: Pytree, state: Pytree | None = None) -> PermutationSpec:
  """The spec of the registered model ``name`` (`unlearn_jax.models.MODELS`), checked against its arrays.

  Layer counts (MLP depth, CNN convolutions) are read from ``params``.

  Raises:
    ValueError: for a model without a builder, or if the spec does not fit ``params``/``state`` (see
      `check_spec`).

  Example:
    >>> spec = spec_for_model(config.model.name, params, state)
  """
  keys = list(params)
  if name == "mlp":
    spec = mlp_permutation_spec(sum(bool(re.fullmatch(r"Dense_\d+", k)) for k in keys) - 1)
  elif name == "cnn":
    spec = cnn_permutation_spec(sum(bool(re.fullmatch(r"conv_\d+", k)) for k in keys))
  elif name == "cnn1d":
    spec = cnn1d_permutation_spec(sum(bool(re.fullmatch(r"conv_\d+", k)) for k in keys))
  elif name.startswith("vgg"):
    batch_norm = name.endswith("_bn")
    spec = vgg_permutation_spec(name[:-3] if batch_norm else name, norm="batch" if batch_norm else None)
  elif name in _RESNET_STAGES:
    spec = resnet_permutation_spec(_RESNET_STAGES[name])
  else:
    raise ValueError(f"spec_for_model: no permutation spec builder for model {name!r}")
  check_spec(spec, params, state)
  return spec
