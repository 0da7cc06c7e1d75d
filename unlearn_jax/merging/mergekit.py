"""mergekit YAML files run on local Hugging Face checkpoints: lazy safetensors in, merged safetensors out.

A mergekit user writes a YAML file and gets a merged checkpoint that ``transformers`` loads::

    merge_method: ties
    base_model: ./llama-base
    models:
      - model: ./llama-math
        parameters: {weight: 0.6, density: [0.2, 0.5]}   # a gradient over the layers
      - model: ./llama-code
        parameters: {weight: 0.4, density: 0.5}
    parameters: {normalize: true}
    dtype: float32

`merge_file` (and ``python -m experiments.merge --config=merge.yml --out=DIR``) reads the same schema as mergekit
0.1.5 (``models`` or ``slices`` with ``sources``/``layer_range``, per-model and global ``parameters`` with
gradient lists and ``filter`` conditions, ``base_model``, ``dtype``, ``out_dtype``, ``tokenizer_source`` as a
model or ``base``), resolves every parameter per tensor exactly as mergekit does (a gradient list is interpolated
over a slice's layers; tensors outside the layers take its first value), and runs the merges of
`unlearn_jax.merging.arithmetic` with mergekit's semantics (their ``mergekit`` options and mergekit's parameter
defaults). Methods: linear, task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs, breadcrumbs_ties, della,
della_linear, model_stock, slerp, nuslerp, multislerp, karcher, nearswap, sce, passthrough (with ``slices``, a
"frankenmerge" of layer ranges).

Everything is checked before anything is written: unknown keys, unknown methods or parameters, missing models,
missing tensors, mismatched shapes, mismatched layer counts and tokenizers each raise one ``ValueError`` naming the
YAML key, the model and the tensor. The checkpoints are then read lazily, one transformer layer (one group of
tensors that share parameters) at a time, so memory holds one layer of each input and of the output, which is
streamed to disk as it is merged (the header of ``model.safetensors`` is known from the plan); each group is one
jitted call, and layers of the same shapes and parameters reuse one compiled program. The output directory
(``model.safetensors``, ``config.json`` with the layer count of the slices, the donor's tokenizer files and the
YAML as ``mergekit_config.yml``) is written next to its destination and renamed into place.

Differences from mergekit: the random masks of DARE/DELLA are jax's (same distribution, other draws); TIES's
exact top-k keeps every entry tied with the threshold (mergekit's sort breaks ties arbitrarily); Model Stock
floors each norm at 1e-8 instead of clamping the pairwise norm product at 1e-6; ``tokenizer_source: union``,
``tokenizer:`` token edits, ``chat_template``, ``modules`` and LoRA references (``model+lora``) are refused.

References:
  Goddard et al., "Arcee's MergeKit: A Toolkit for Merging Large Language Models", EMNLP 2024 (industry track);
  https://github.com/arcee-ai/mergekit (``config.py``, ``plan.py``, ``merge_methods/``).

Example:
    >>> merge_file("merge.yml", "/tmp/merged")          # then AutoModelForCausalLM.from_pretrained("/tmp/merged")
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from safetensors import safe_open

from unlearn_jax import progress
from unlearn_jax.merging import arithmetic
from unlearn_jax.models import hf

# ----------------------------------------------------------------------------------------------------------------
# The YAML schema (mergekit 0.1.5's MergeConfiguration, the parts we run).

_TOP_KEYS = ("merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
             "tokenizer_source", "tokenizer")
_REFUSED_TOP = {"modules": "multi-module configs are not supported",
                "chat_template": "chat templates are not supported; copy one into the output yourself"}
_MODEL_KEYS = ("model", "parameters")
_SOURCE_KEYS = ("model", "layer_range", "parameters")
_SLICE_KEYS = ("sources", "base_model", "parameters")
_DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "float16": jnp.float16, "fp16": jnp.float16,
           "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16, "float64": jnp.float64}


class Source(NamedTuple):
  """One input of an output slice: a model and, for ``slices``, its ``[start, end)`` layers."""
  model: str
  layer_range: tuple[int, int] | None
  parameters: Mapping[str, Any]


class Slice(NamedTuple):
  sources: tuple[Source, ...]
  base_model: str | None
  parameters: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class MergeConfig:
  """A parsed mergekit YAML file. ``models`` and ``slices``: exactly one is set."""
  merge_method: str
  base_model: str | None
  models: tuple[Source, ...] | None
  slices: tuple[Slice, ...] | None
  parameters: Mapping[str, Any]
  dtype: str | None
  out_dtype: str | None
  tokenizer_source: str | None
  text: str

  def referenced_models(self) -> list[str]:
    """Every model the file names, base first, each once, in order of appearance."""
    names = [self.base_model] if self.base_model else []
    for source in self.models or ():
      names.append(source.model)
    for s in self.slices or ():
      names += ([s.base_model] if s.base_model else []) + [src.model for src in s.sources]
    if self.tokenizer_source not in (None, "base"):
      names.append(self.tokenizer_source)
    return list(dict.fromkeys(names))


def _fail(where: str, why: str):
  raise ValueError(f"{where}: {why}")


def _mapping(value, where: str) -> dict:
  if not isinstance(value, dict):
    _fail(where, f"must be a mapping, got {type(value).__name__}")
  return value


def _keys(value: dict, known: Sequence[str], where: str) -> None:
  for key in value:
    if key not in known:
      _fail(f"{where}.{key}" if where else str(key), f"unknown key (known: {', '.join(known)})")


def _entries(value, where: str, known: Sequence[str]) -> list[tuple[str, dict]]:
  """``[(where[i], entry)]`` of a non-empty YAML list of mappings, each with only ``known`` keys."""
  if not isinstance(value, list) or not value:
    _fail(where, "must be a non-empty list")
  out = []
  for i, entry in enumerate(value):
    entry = _mapping(entry, f"{where}[{i}]")
    _keys(entry, known, f"{where}[{i}]")
    out.append((f"{where}[{i}]", entry))
  return out


def _model_ref(value, where: str) -> str:
  if isinstance(value, dict) and set(value) <= {"model", "path"}:  # mergekit's {model: {path: ...}} form
    value = value.get("path", value.get("model"))
    value = value.get("path") if isinstance(value, dict) else value
  if not isinstance(value, str) or not value:
    _fail(where, "must be the path of a local Hugging Face checkpoint directory")
  if "+" in value:
    _fail(where, f"{value!r}: LoRA references (model+lora) are not supported")
  return value


def _parameters(value, where: str) -> dict:
  if value is None:
    return {}
  value = _mapping(value, where)
  for name, setting in value.items():
    _check_setting(setting, f"{where}.{name}")
  return value


_SCALARS = (bool, int, float, str)


def _check_setting(setting, where: str) -> None:
  """A parameter setting: a scalar, a gradient list of scalars, or ``{filter, value}`` conditions."""
  if isinstance(setting, _SCALARS):
    return
  if isinstance(setting, dict):
    _keys(setting, ("filter", "value"), where)
    if "value" not in setting:
      _fail(where, "a conditional parameter needs a value")
    _check_setting(setting["value"], f"{where}.value")
    return
  if isinstance(setting, list) and setting:
    if all(isinstance(e, _SCALARS) for e in setting):
      return
    for i, cond in enumerate(setting):
      if not isinstance(cond, dict):
        _fail(f"{where}[{i}]", "a list mixes values and {filter, value} conditions")
      _check_setting(cond, f"{where}[{i}]")
    return
  _fail(where, f"must be a number, a list of numbers (a gradient) or {{filter, value}} conditions, got {setting!r}")


def parse_config(text: str) -> MergeConfig:
  """Parses and checks a mergekit YAML document; raises ``ValueError`` naming the first bad key."""
  try:
    raw = yaml.safe_load(text)
  except yaml.YAMLError as e:
    raise ValueError(f"not valid YAML: {' '.join(str(e).split())}") from None
  raw = _mapping(raw, "the YAML document")
  for key, why in _REFUSED_TOP.items():
    if key in raw:
      _fail(key, why)
  _keys(raw, _TOP_KEYS, "")
  method = raw.get("merge_method")
  if method not in METHODS:
    _fail("merge_method", f"{method!r} is not one of {', '.join(sorted(METHODS))}")
  base = _model_ref(raw["base_model"], "base_model") if raw.get("base_model") is not None else None
  if (raw.get("models") is None) == (raw.get("slices") is None):
    _fail("models", "give exactly one of 'models' and 'slices'")
  models = slices = None
  if raw.get("models") is not None:
    models = tuple(Source(_model_ref(entry.get("model"), f"{where}.model"), None,
                          _parameters(entry.get("parameters"), f"{where}.parameters"))
                   for where, entry in _entries(raw["models"], "models", _MODEL_KEYS))
  else:
    slices = []
    for where, entry in _entries(raw["slices"], "slices", _SLICE_KEYS):
      sources = []
      for w, src in _entries(entry.get("sources"), f"{where}.sources", _SOURCE_KEYS):
        lr = src.get("layer_range")
        if not (isinstance(lr, list) and len(lr) == 2 and all(isinstance(x, int) and x >= 0 for x in lr)
                and lr[0] < lr[1]):
          _fail(f"{w}.layer_range", f"must be [start, end) with 0 <= start < end, got {lr!r}")
        sources.append(Source(_model_ref(src.get("model"), f"{w}.model"), (lr[0], lr[1]),
                              _parameters(src.get("parameters"), f"{w}.parameters")))
      lengths = {s.layer_range[1] - s.layer_range[0] for s in sources}
      if len(lengths) > 1:
        _fail(f"{where}.sources", f"every source must span the same number of layers, got {sorted(lengths)}")
      slice_base = entry.get("base_model")
      slices.append(Slice(tuple(sources), _model_ref(slice_base, f"{where}.base_model") if slice_base else None,
                          _parameters(entry.get("parameters"), f"{where}.parameters")))
    slices = tuple(slices)
  for key in ("dtype", "out_dtype"):
    if raw.get(key) is not None and raw[key] not in _DTYPES:
      _fail(key, f"{raw[key]!r} is not one of {', '.join(_DTYPES)}")
  tokenizer_source = raw.get("tokenizer_source")
  if raw.get("tokenizer") is not None:
    tok = _mapping(raw["tokenizer"], "tokenizer")
    _keys(tok, ("source",), "tokenizer")
    tokenizer_source = tok.get("source")
  if tokenizer_source == "union":
    _fail("tokenizer_source", "'union' (a merged vocabulary) is not supported; use 'base' or a model")
  if tokenizer_source is not None and tokenizer_source != "base":
    tokenizer_source = _model_ref(tokenizer_source, "tokenizer_source")
  if tokenizer_source == "base" and base is None:
    _fail("tokenizer_source", "'base' needs a base_model")
  config = MergeConfig(method, base, models, slices, _parameters(raw.get("parameters"), "parameters"),
                       raw.get("dtype"), raw.get("out_dtype"), tokenizer_source, text)
  _check_parameter_names(config)
  return config


# ----------------------------------------------------------------------------------------------------------------
# Parameters: mergekit's per-tensor resolution of filters and gradients.

_MISSING = object()


class Param(NamedTuple):
  name: str
  kind: type  # float, int or bool; float | None for optional floats
  scope: str  # 'shared', 'input' (every input) or 'non_base' (every input but the base)
  default: Any = _MISSING


def _validate(param: Param, value, where: str):
  kind = param.kind
  if value is None and param.default is None:
    return None
  if kind is bool:
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
      return value.lower() in ("true", "1", "yes")
    if isinstance(value, (int, float)) and value in (0, 1):
      return bool(value)
  elif kind is int:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
      return int(value)
  else:
    try:
      number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
      number = None
    if number is not None and math.isfinite(number):
      return number
  _fail(where, f"{value!r} is not a valid {param.name} ({'finite float' if kind is not bool else kind.__name__})")


def evaluate_setting(setting, tensor_name: str, t: float, param: Param, where: str):
  """One setting's value for ``tensor_name`` at layer position ``t`` in [0, 1], or None if no filter matches.

  A list of numbers is a gradient: ``t`` scaled to its length interpolates linearly between neighbours (a list of
  other scalars picks one); a ``{filter, value}`` condition applies where ``filter`` is ``*`` or a substring of
  the tensor name, the first match winning.
  """
  if isinstance(setting, dict):
    setting = [setting]
  if isinstance(setting, _SCALARS):
    return _validate(param, setting, where)
  if all(isinstance(e, _SCALARS) for e in setting):
    values = [_validate(param, e, where) for e in setting]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
      return values[int(t * (len(values) - 1))]
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return _validate(param, (1 - frac) * values[i0] + frac * values[i1], where)
  for cond in setting:
    flt = cond.get("filter")
    if flt is None or flt == "*" or (tensor_name and flt in tensor_name):
      return evaluate_setting(cond["value"], tensor_name, t, param, where)
  return None


def _resolve(param: Param, scopes: Sequence[tuple[str, Mapping[str, Any] | None]], tensor_name: str, t: float,
             model: str | None, method: str):
  for where, scope in scopes:
    if scope and param.name in scope:
      value = evaluate_setting(scope[param.name], tensor_name, t, param, f"{where}.{param.name}")
      if value is not None:
        return value
  if param.default is _MISSING:
    who = f"model {model}, tensor {tensor_name}" if model else f"tensor {tensor_name}"
    _fail(f"parameters.{param.name}", f"missing (required by {method} for {who})")
  return param.default


# ----------------------------------------------------------------------------------------------------------------
# Methods: mergekit's parameters and input contracts, run by `unlearn_jax.merging.arithmetic`.


class Method(NamedTuple):
  params: tuple[Param, ...]
  base: str  # 'required', 'optional' or 'ignored' (the base, if any, is one more input)
  run: Callable  # (entries, base_index, shared, per_input, rng) -> merged dict
  min_inputs: int = 1
  max_inputs: int | None = None
  min_non_base: int | None = None
  max_non_base: int | None = None


def _split(entries, base_index):
  base = entries[base_index] if base_index is not None else None
  others = [e for i, e in enumerate(entries) if i != base_index]
  return base, others


def _gta(sparsify: str | None, consensus: bool):
  def run(entries, base_index, shared, per, rng):
    base, others = _split(entries, base_index)
    per = [p for i, p in enumerate(per) if i != base_index]
    if not others:
      return base
    return arithmetic._task_vector_merge(
        "merge", others, base, scale=shared["lambda"], weights=[p["weight"] for p in per], rng=rng,
        sparsify=sparsify, density=[p["density"] for p in per], gamma=[p.get("gamma", 0.0) for p in per],
        epsilon=[p.get("epsilon", 0.0) for p in per], rescale=shared["rescale"],
        combine="ties" if consensus else "linear", normalize=shared["normalize"], mergekit=True)
  return run


def _gta_method(sparsify, consensus, normalize, rescale, extra=()):
  params = (Param("int8_mask", bool, "shared", False), Param("normalize", bool, "shared", normalize),
            Param("rescale", bool, "shared", rescale), Param("lambda", float, "shared", 1.0),
            Param("weight", float, "non_base"), Param("density", float, "non_base", 1.0)) + tuple(extra)
  return Method(params, "required", _gta(sparsify, consensus))


def _non_base(entries, base_index, per, key):
  base, others = _split(entries, base_index)
  values = [p[key] for i, p in enumerate(per) if i != base_index]
  return base, others, values


def _run_linear(entries, base_index, shared, per, rng):
  return arithmetic.linear(entries, weights=[p["weight"] for p in per], normalize=shared["normalize"],
                           check_finite=False)


def _run_model_stock(entries, base_index, shared, per, rng):
  base, others = _split(entries, base_index)
  return arithmetic.model_stock(others, base=base, filter_wise=shared["filter_wise"], check_finite=False)


def _run_slerp(entries, base_index, shared, per, rng):
  base, (other,) = _split(entries, base_index)
  return arithmetic.slerp(base, other, t=shared["t"], check_finite=False)


def _run_nuslerp(entries, base_index, shared, per, rng):
  base, others, w = _non_base(entries, base_index, per, "weight")
  return arithmetic.nuslerp(others, base=base, weights=w, row_wise=shared["nuslerp_row_wise"],
                            flatten=shared["nuslerp_flatten"], check_finite=False)


def _run_multislerp(entries, base_index, shared, per, rng):
  base, others, w = _non_base(entries, base_index, per, "weight")
  return arithmetic.multislerp(others, base=base, weights=w, normalize_weights=shared["normalize_weights"],
                               eps=shared["eps"], check_finite=False)


def _run_karcher(entries, base_index, shared, per, rng):
  return arithmetic.karcher(entries, max_iter=shared["max_iter"], tol=shared["tol"], check_finite=False)


def _run_nearswap(entries, base_index, shared, per, rng):
  base, (other,) = _split(entries, base_index)
  return arithmetic.nearswap(other, base=base, t=shared["t"], check_finite=False)


def _run_sce(entries, base_index, shared, per, rng):
  base, others = _split(entries, base_index)
  if not others:
    return base
  return arithmetic.sce(others, base=base, density=shared["select_topk"], check_finite=False)


def _run_passthrough(entries, base_index, shared, per, rng):
  scale = per[0]["scale"]
  return entries[0] if scale is None else arithmetic.passthrough(entries[0], scale=scale, check_finite=False)


_GAMMA = (Param("gamma", float, "non_base", 0.01),)
_EPSILON = (Param("epsilon", float, "non_base", 0.15),)
METHODS: dict[str, Method] = {
    "linear": Method((Param("weight", float, "input"), Param("normalize", bool, "shared", True)), "ignored",
                     _run_linear),
    "task_arithmetic": _gta_method(None, False, False, False),
    "ties": _gta_method("magnitude", True, True, False),
    "dare_ties": _gta_method("random", True, False, True),
    "dare_linear": _gta_method("random", False, False, True),
    "breadcrumbs": _gta_method("outliers", False, False, False, _GAMMA),
    "breadcrumbs_ties": _gta_method("outliers", True, False, False, _GAMMA),
    "della": _gta_method("della", True, True, True, _EPSILON),
    "della_linear": _gta_method("della", False, False, True, _EPSILON),
    "model_stock": Method((Param("filter_wise", bool, "shared", False),), "required", _run_model_stock,
                          min_inputs=3),
    "slerp": Method((Param("t", float, "shared"),), "required", _run_slerp, min_inputs=2, max_inputs=2),
    "nuslerp": Method((Param("weight", float, "non_base"), Param("nuslerp_row_wise", bool, "shared", False),
                       Param("nuslerp_flatten", bool, "shared", True)), "optional", _run_nuslerp,
                      min_non_base=2, max_non_base=2),
    "multislerp": Method((Param("weight", float, "non_base"), Param("normalize_weights", bool, "shared", True),
                          Param("eps", float, "shared", 1e-8)), "optional", _run_multislerp, min_non_base=1),
    "karcher": Method((Param("max_iter", int, "shared", 10), Param("tol", float, "shared", 1e-5)), "ignored",
                      _run_karcher),
    "nearswap": Method((Param("t", float, "shared"),), "required", _run_nearswap, min_inputs=2, max_inputs=2),
    "sce": Method((Param("int8_mask", bool, "shared", False), Param("select_topk", float, "shared", 1.0)),
                  "required", _run_sce),
    "passthrough": Method((Param("scale", float, "input", None),), "ignored", _run_passthrough, max_inputs=1),
}


def _check_parameter_names(config: MergeConfig) -> None:
  known = {p.name for p in METHODS[config.merge_method].params}
  scopes = [("parameters", config.parameters)]
  scopes += [(f"models[{i}].parameters", m.parameters) for i, m in enumerate(config.models or ())]
  for i, s in enumerate(config.slices or ()):
    scopes.append((f"slices[{i}].parameters", s.parameters))
    scopes += [(f"slices[{i}].sources[{j}].parameters", src.parameters) for j, src in enumerate(s.sources)]
  for where, scope in scopes:
    for name in scope:
      if name not in known:
        _fail(f"{where}.{name}", f"not a parameter of {config.merge_method} (known: {', '.join(sorted(known))})")


def _check_contract(method_name: str, models: Sequence[str], base: str | None, where: str) -> None:
  method = METHODS[method_name]
  if len(set(models)) != len(models):
    _fail(where, f"a model appears twice: {models}")
  has_base = base is not None and base in models and method.base != "ignored"
  if method.base == "required" and not has_base:
    _fail("base_model", f"{method_name} needs a base_model among its inputs ({where})")
  n, non_base = len(models), len(models) - int(has_base)
  for what, count, low, high in (("inputs", n, method.min_inputs, method.max_inputs),
                                 ("non-base inputs", non_base, method.min_non_base, method.max_non_base)):
    if low is not None and count < low:
      _fail(where, f"{method_name} needs at least {low} {what}, got {count}")
    if high is not None and count > high:
      _fail(where, f"{method_name} takes at most {high} {what}, got {count}")


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: lazily read tensors, and where the transformer layers are.

_LAYER = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|h|blocks?)\.)(?P<index>\d+)\.(?P<rest>.+)$")
_PRE = re.compile(r"(^|\.)(embed_tokens|wte|wpe|embed_positions|embeddings?)\.")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


class Checkpoint:
  """A local HF checkpoint: its ``config.json``, tensor names, shapes and dtypes (read from the safetensors
  headers), and `load` for one tensor at a time."""

  def __init__(self, path: str, where: str):
    self.path, self.where = path, where
    if not os.path.isdir(path):
      _fail(where, f"{path!r} is not a directory (a local Hugging Face checkpoint)")
    config_path = os.path.join(path, hf.CONFIG)
    if not os.path.exists(config_path):
      _fail(where, f"{path!r} has no {hf.CONFIG}")
    with open(config_path) as f:
      self.config = json.load(f)
    try:
      _, self.files = hf._resolve(path)
    except ValueError as e:
      _fail(where, str(e))
    self.specs = {}
    for file in sorted(set(self.files.values())):
      with safe_open(file, framework="numpy") as f:
        for name in f.keys():
          s = f.get_slice(name)
          self.specs[name] = (tuple(s.get_shape()), s.get_dtype())
    self.layers: dict[int, dict[str, str]] = {}
    self.prefix = None
    for name in self.specs:
      m = _LAYER.match(name)
      if m:
        self.layers.setdefault(int(m["index"]), {})[m["rest"]] = name
        self.prefix = self.prefix or m["prefix"]
    self.num_layers = next((self.config[k] for k in _LAYER_KEYS if isinstance(self.config.get(k), int)),
                           len(self.layers))
    if sorted(self.layers) != list(range(len(self.layers))) or (self.layers and len(self.layers) != self.num_layers):
      _fail(where, f"{path!r}: its tensors hold layers {sorted(self.layers)[:3]}... but config.json says "
                   f"{self.num_layers} layers")
    self.others = [n for n in self.specs if not _LAYER.match(n)]
    self._handles: dict[str, Any] = {}
    self._stack = contextlib.ExitStack()

  def pre(self) -> list[str]:
    return [n for n in self.others if _PRE.search(n)]

  def post(self) -> list[str]:
    return [n for n in self.others if not _PRE.search(n)]

  def load(self, name: str) -> np.ndarray:
    file = self.files[name]
    if file not in self._handles:
      self._handles[file] = self._stack.enter_context(safe_open(file, framework="numpy"))
    return self._handles[file].get_tensor(name)

  def close(self):
    self._stack.close()
    self._handles.clear()


# ----------------------------------------------------------------------------------------------------------------
# The plan: every output tensor, its inputs and its resolved parameters, checked before anything is read.


class Group(NamedTuple):
  """Output tensors merged by one call: the same models and the same resolved parameters. Groups of the same
  shapes and parameters (one per layer) reuse one compiled program."""
  out_names: tuple[str, ...]
  models: tuple[str, ...]
  in_names: tuple[tuple[str, ...], ...]  # per model, per tensor
  base_index: int | None
  shared: tuple[tuple[str, Any], ...]
  per_input: tuple[tuple[tuple[str, Any], ...], ...]


class Plan(NamedTuple):
  groups: tuple[Group, ...]
  config_json: dict
  donor: str
  tokenizer_from: str


def _scopes(config: MergeConfig, out_slice: Slice | None, model: str | None):
  scopes = []
  if model is not None:
    if config.models is not None:
      for i, m in enumerate(config.models):
        if m.model == model:
          scopes.append((f"models[{i}].parameters", m.parameters))
    elif out_slice is not None:
      s_index = config.slices.index(out_slice)
      for j, src in enumerate(out_slice.sources):
        if src.model == model:
          scopes.append((f"slices[{s_index}].sources[{j}].parameters", src.parameters))
  if out_slice is not None and config.slices is not None:
    scopes.append((f"slices[{config.slices.index(out_slice)}].parameters", out_slice.parameters))
  scopes.append(("parameters", config.parameters))
  return scopes


def _resolved(config: MergeConfig, method: Method, out_slice, models, base, out_name, in_names, t):
  name = config.merge_method
  shared = tuple((p.name, _resolve(p, _scopes(config, out_slice, None), out_name, t, None, name))
                 for p in method.params if p.scope == "shared")
  per = []
  for model, in_name in zip(models, in_names):
    is_base = model == base and method.base != "ignored"
    per.append(tuple((p.name, _resolve(p, _scopes(config, out_slice, model), in_name, t, model, name))
                     for p in method.params
                     if p.scope == "input" or (p.scope == "non_base" and not is_base)))
  return shared, tuple(per)


def _check_tensor(ckpts: Mapping[str, Checkpoint], models: Sequence[str], names: Sequence[str], out_name: str):
  spec = None
  for model, name in zip(models, names):
    ck = ckpts[model]
    if name not in ck.specs:
      _fail(ck.where, f"{model!r} has no tensor {name!r} (needed for {out_name!r})")
    shape = ck.specs[name][0]
    if spec is None:
      spec = (models[0], shape)
    elif shape != spec[1]:
      _fail(ck.where, f"tensor {name!r} of {model!r} has shape {list(shape)} but {spec[0]!r} has {list(spec[1])}")


def _vocab(path: str) -> dict | None:
  """The token -> id map of a checkpoint's tokenizer (``tokenizer.json`` or ``vocab.json``), or None."""
  for file in ("tokenizer.json", "vocab.json"):
    full = os.path.join(path, file)
    if os.path.exists(full):
      with open(full) as f:
        data = json.load(f)
      vocab = data.get("model", {}).get("vocab") if file == "tokenizer.json" else data
      added = {t["content"]: t["id"] for t in data.get("added_tokens", [])} if file == "tokenizer.json" else {}
      if isinstance(vocab, list):  # unigram: [[piece, score], ...]
        vocab = {piece[0]: i for i, piece in enumerate(vocab)}
      return {**(vocab or {}), **added}
  return None


def plan(config: MergeConfig) -> tuple[Plan, dict[str, Checkpoint]]:
  """Checks every model, tensor, shape, parameter and tokenizer the merge needs; returns the plan and the open
  checkpoints. Raises ``ValueError`` (one line naming the key, model and tensor) before anything is read."""
  method = METHODS[config.merge_method]
  where = {}
  if config.base_model:
    where[config.base_model] = "base_model"
  for i, m in enumerate(config.models or ()):
    where.setdefault(m.model, f"models[{i}].model")
  for i, s in enumerate(config.slices or ()):
    if s.base_model:
      where.setdefault(s.base_model, f"slices[{i}].base_model")
    for j, src in enumerate(s.sources):
      where.setdefault(src.model, f"slices[{i}].sources[{j}].model")
  if config.tokenizer_source not in (None, "base"):
    where.setdefault(config.tokenizer_source, "tokenizer_source")
  ckpts = {m: Checkpoint(m, where[m]) for m in config.referenced_models()}

  # models -> one slice over all layers, the base appended if it is not an input (as mergekit)
  if config.models is not None:
    models = [m.model for m in config.models]
    if config.base_model and config.base_model not in models:
      models.append(config.base_model)
    counts = {m: ckpts[m].num_layers for m in models}
    if len(set(counts.values())) > 1:
      bad = next(m for m in models if counts[m] != counts[models[0]])
      _fail(ckpts[bad].where, f"{bad!r} has {counts[bad]} layers but {models[0]!r} has {counts[models[0]]}; "
                              "use slices to merge models of different depths")
    out_slices = [(None, [(m, 0) for m in models], counts[models[0]], config.base_model)]
  else:
    out_slices = []
    for s in config.slices:
      for src in s.sources:
        ck = ckpts[src.model]
        if src.layer_range[1] > ck.num_layers:
          _fail(f"slices[{config.slices.index(s)}]", f"layer_range {list(src.layer_range)} of {src.model!r} "
                                                     f"exceeds its {ck.num_layers} layers")
      out_slices.append((s, [(src.model, src.layer_range[0]) for src in s.sources],
                         s.sources[0].layer_range[1] - s.sources[0].layer_range[0], s.base_model or config.base_model))
  for s, sources, _, base in out_slices:
    _check_contract(config.merge_method, [m for m, _ in sources], base,
                    f"slices[{config.slices.index(s)}]" if s is not None else "models")

  groups = []

  def add(out_slice, models, base, out_names, in_names, t):
    by_params: dict[tuple, list[int]] = {}
    for j, out_name in enumerate(out_names):
      names = [n[j] for n in in_names]
      _check_tensor(ckpts, models, names, out_name)
      resolved = _resolved(config, method, out_slice, models, base, out_name, names, t)
      by_params.setdefault(resolved, []).append(j)
    for (shared, per), js in by_params.items():
      base_index = models.index(base) if base in models and method.base != "ignored" else None
      groups.append(Group(tuple(out_names[j] for j in js), tuple(models),
                          tuple(tuple(n[j] for j in js) for n in in_names), base_index, shared, per))

  first, last = out_slices[0], out_slices[-1]
  union = lambda lists: sorted(set().union(*lists))  # a tensor some input lacks fails in _check_tensor
  # tensors before the layers (embeddings), from the first slice's models; t = 0 as mergekit
  models = [m for m, _ in first[1]]
  pre = union(ckpts[m].pre() for m in models)
  if pre:
    add(first[0], models, first[3], pre, [pre] * len(models), 0.0)
  out_layer = 0
  prefix = ckpts[models[0]].prefix
  for s, sources, length, base in out_slices:
    models = [m for m, _ in sources]
    for offset in range(length):
      t = offset / (length - 1) if length > 1 else 1.0
      rests = union(ckpts[m].layers.get(start + offset, {}) for m, start in sources)
      out_names = [f"{prefix}{out_layer}.{r}" for r in rests]
      in_names = []
      for m, start in sources:
        layer = ckpts[m].layers.get(start + offset, {})
        in_names.append([layer.get(r, f"{ckpts[m].prefix or prefix}{start + offset}.{r}") for r in rests])
      add(s, models, base, out_names, in_names, t)
      out_layer += 1
  models = [m for m, _ in last[1]]
  post = union(ckpts[m].post() for m in models)
  if post:
    add(last[0], models, last[3], post, [post] * len(models), 0.0)

  donor = config.base_model or config.referenced_models()[0]
  tokenizer_from = {None: donor, "base": config.base_model}.get(config.tokenizer_source, config.tokenizer_source)
  vocab = _vocab(tokenizer_from)
  if vocab is not None:
    for m in config.referenced_models():
      other = _vocab(m)
      if other is not None and other != vocab:
        diff = sorted(set(other.items()) ^ set(vocab.items()))[:1]
        _fail(ckpts[m].where, f"{m!r} has another tokenizer than {tokenizer_from!r} (e.g. token {diff[0][0]!r}); "
                              "vocabulary alignment is not supported")
  config_json = dict(ckpts[donor].config)
  if config.slices is not None:
    key = next((k for k in _LAYER_KEYS if k in config_json), "num_hidden_layers")
    config_json[key] = out_layer
  dtype = config.out_dtype or config.dtype
  if dtype:
    # transformers 5 writes "dtype" (older configs "torch_dtype")
    config_json["torch_dtype" if "torch_dtype" in config_json and "dtype" not in config_json else "dtype"] = \
        {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(dtype, dtype)
  return Plan(tuple(groups), config_json, donor, tokenizer_from), ckpts


# ----------------------------------------------------------------------------------------------------------------
# Running the plan.

_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
                    "added_tokens.json", "merges.txt", "vocab.json", "chat_template.jinja", "generation_config.json",
                    "chat_template.json")


_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


def _group_dtypes(group: Group, ckpts, compute_dtype, out_dtype):
  """``(compute dtype, output dtype)`` of a group, or ``(None, input dtype)`` for non-float buffers (copied from
  the first input, as mergekit). Without a YAML ``dtype`` the inputs' promoted dtype is used, as mergekit."""
  in_dtypes = [np.dtype(_ST_DTYPES[ckpts[m].specs[n][1]]) for m, names in zip(group.models, group.in_names)
               for n in names]
  if not all(jnp.issubdtype(d, jnp.floating) for d in in_dtypes):
    return None, in_dtypes[0]
  compute = np.dtype(compute_dtype or jnp.result_type(*in_dtypes))
  return compute, np.dtype(out_dtype or compute)


def _merge_group(group: Group, ckpts, method: Method, compute_dtype, out_dtype, rng) -> list[np.ndarray]:
  """The group's merged tensors, in ``group.out_names`` order. Each input is converted as it is read, so the
  group's inputs are held once."""
  compute, out = _group_dtypes(group, ckpts, compute_dtype, out_dtype)
  if compute is None:
    return [ckpts[group.models[0]].load(n) for n in group.in_names[0]]
  keys = [f"t{j}" for j in range(len(group.out_names))]
  entries = [{k: jnp.asarray(ckpts[m].load(n), compute) for k, n in zip(keys, names)}
             for m, names in zip(group.models, group.in_names)]
  merged = method.run(entries, group.base_index, dict(group.shared), [dict(p) for p in group.per_input], rng)
  del entries
  return [np.asarray(jnp.asarray(merged[k]).astype(out)) for k in keys]


class _SafetensorsWriter:
  """Streams tensors into one ``.safetensors`` file whose header (names, dtypes, shapes, offsets) is known up
  front, so that each merged group is written and freed at once instead of the whole model being held."""

  def __init__(self, path: str, layout: Sequence[tuple[str, np.dtype, tuple[int, ...]]]):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape in layout:
      size = math.prod(shape) * np.dtype(dtype).itemsize
      header[name] = {"dtype": _ST_NAMES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset,
                                                                                               offset + size]}
      offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    self._order = [(name, np.dtype(dtype), tuple(shape)) for name, dtype, shape in layout]
    self._next = 0
    self._file = open(path, "wb")
    self._file.write(len(text).to_bytes(8, "little") + text)

  def write(self, name: str, array: np.ndarray) -> None:
    expected = self._order[self._next]
    if (name, array.dtype, tuple(array.shape)) != expected:
      raise RuntimeError(f"safetensors writer: got {name} {array.dtype}{list(array.shape)}, expected {expected}")
    np.ascontiguousarray(array).reshape(-1).view(np.uint8).tofile(self._file)
    self._next += 1

  def finish(self) -> None:
    if self._next != len(self._order):
      raise RuntimeError(f"safetensors writer: {len(self._order) - self._next} tensors were not written")

  def close(self) -> None:
    self._file.close()


def merge_config(config: MergeConfig, out: str, *, seed: int = 0, show_progress: bool | None = None) -> str:
  """Runs a parsed mergekit config and writes the merged checkpoint to ``out`` (atomically); returns ``out``."""
  the_plan, ckpts = plan(config)
  method = METHODS[config.merge_method]
  compute_dtype = _DTYPES[config.dtype] if config.dtype else None
  out_dtype = _DTYPES[config.out_dtype] if config.out_dtype else None
  out = os.path.abspath(os.fspath(out))
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = f"{out}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    os.makedirs(tmp)
    layout = [(name, _group_dtypes(g, ckpts, compute_dtype, out_dtype)[1], ckpts[g.models[0]].specs[n][0])
              for g in the_plan.groups for name, n in zip(g.out_names, g.in_names[0])]
    writer = _SafetensorsWriter(os.path.join(tmp, hf.WEIGHTS), layout)
    try:
      key = jax.random.key(seed)
      for i, group in enumerate(progress.progress(the_plan.groups, desc=config.merge_method, force=show_progress)):
        merged = _merge_group(group, ckpts, method, compute_dtype, out_dtype, jax.random.fold_in(key, i))
        for name, array in zip(group.out_names, merged):
          writer.write(name, array)
        del merged
      writer.finish()
    finally:
      writer.close()
    with open(os.path.join(tmp, hf.CONFIG), "w") as f:
      json.dump(the_plan.config_json, f, indent=2)
    for name in _TOKENIZER_FILES:
      src = os.path.join(the_plan.tokenizer_from, name)
      if os.path.exists(src):
        shutil.copy(src, os.path.join(tmp, name))
    with open(os.path.join(tmp, "mergekit_config.yml"), "w") as f:
      f.write(config.text)
    old = None
    if os.path.lexists(out):
      old = f"{out}.old-{os.getpid()}"
      os.rename(out, old)
    os.rename(tmp, out)
    if old:
      shutil.rmtree(old, ignore_errors=True) if os.path.isdir(old) else os.remove(old)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  finally:
    for ck in ckpts.values():
      ck.close()
  return out


def merge_file(path: str, out: str, *, seed: int = 0, show_progress: bool | None = None) -> str:
  """Runs the mergekit YAML file ``path`` and writes the merged checkpoint to ``out``; returns ``out``.

  Args:
    path: a mergekit YAML file (model paths relative to the current directory, as mergekit).
    out: the output directory; written next to itself and renamed into place (an existing one is replaced).
    seed: seeds the random drops of DARE and DELLA.
    show_progress: force the progress bar on or off (default: on a terminal).

  Raises:
    ValueError: one line naming the bad key, model or tensor, before anything is written.

  Example:
    >>> merge_file("ties.yml", "/tmp/ties-merged")
  """
  with open(path) as f:
    text = f.read()
  return merge_config(parse_config(text), out, seed=seed, show_progress=show_progress)
