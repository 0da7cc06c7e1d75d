"""Hugging Face checkpoints (local safetensors) to and from `unlearn_jax.models.gpt` parameters.

Two ``model_type`` families map one to one onto a `GPTConfig`:

* ``llama`` (``LlamaForCausalLM``): ``nn.Linear`` weights are stored ``[out, in]`` and transposed into our
  ``(in, out)`` kernels; RMSNorm weights become ``scale``; the rotary embedding needs no weights (our RoPE uses
  the same rotate_half convention; ``rope_theta`` and the 'default', 'linear' and 'llama3' ``rope_type`` are
  read from either ``config.json`` layout: transformers 4's top-level ``rope_theta`` / ``rope_scaling`` or
  transformers 5's ``rope_parameters`` dict, `rope_from_hf`; any other ``rope_type`` is refused by name);
* ``gpt2`` (``GPT2LMHeadModel``, with or without the ``transformer.`` prefix): ``Conv1D`` weights are already
  ``[in, out]``; the fused ``attn.c_attn`` ``[D, 3D]`` splits into ``q``, ``k``, ``v`` along its output axis;
  the head is tied to ``wte``.

HF tensor name  ->  our parameter path (``i`` the block index; ``T``: transposed)::

  llama                                           gpt2
  model.embed_tokens.weight    embed/embedding    wte.weight / wpe.weight     embed / pos_embed
  model.layers.i.input_layernorm.weight           h.i.ln_1.{weight,bias}      block_i/attn_norm/{scale,bias}
  model.layers.i.self_attn.{q,k,v,o}_proj.* (T)   h.i.attn.c_attn.* (split q|k|v), h.i.attn.c_proj.* (o)
  model.layers.i.post_attention_layernorm.weight  h.i.ln_2.{weight,bias}      block_i/mlp_norm
  model.layers.i.mlp.{gate,up,down}_proj.* (T)    h.i.mlp.c_fc.* (up), h.i.mlp.c_proj.* (down)
  model.norm.weight                               ln_f.{weight,bias}          final_norm
  lm_head.weight (T, untied only)                 lm_head.weight (T, untied only)

Export (`save_hf_checkpoint`) writes ``config.json`` in the layout the model was read from (``like=``) or
transformers 5's, the bos/eos/pad token ids, and a ``generation_config.json``.

A checkpoint is a directory holding ``config.json`` and ``model.safetensors`` or a sharded
``model.safetensors.index.json`` (its ``weight_map`` names each tensor's shard); tensors are read lazily,
one at a time, and cast to ``cfg.param_dtype``. Tensors the mapping does not use (e.g. GPT-2's ``attn.bias``
mask buffers, a tied ``lm_head.weight``) are ignored.

References:
  Hugging Face ``transformers``: ``models/llama/modeling_llama.py``, ``models/gpt2/modeling_gpt2.py``,
  ``modeling_rope_utils.py`` (``_compute_llama3_parameters``) and ``pytorch_utils.Conv1D``; the safetensors
  format (https://github.com/huggingface/safetensors).

Example:
    >>> cfg, params = load_hf_checkpoint("/models/Llama-3.2-1B", cfg=None)
    >>> lm, _ = gpt.language_model(cfg, pad_id=..., eos_id=128001)
    >>> save_hf_checkpoint(params, cfg, "/tmp/unlearned",       # loadable by transformers
    ...                    like=read_hf_config("/models/Llama-3.2-1B"))
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from unlearn_jax.models import gpt

Path = tuple[str, ...]
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
GENERATION_CONFIG = "generation_config.json"


def _get(config_json: dict, key: str, default: Any = None, *, required: bool = False):
  if key not in config_json or config_json[key] is None:
    if required:
      raise ValueError(f"HF config has no {key!r}")
    return default
  return config_json[key]


ROPE_TYPES = ("default", "linear", "llama3")
LAYOUTS = ("transformers5", "transformers4")
DEFAULT_ROPE_THETA = 10000.0


def hf_layout(config_json: dict) -> str:
  """'transformers5' when ``config_json`` keeps its RoPE settings in ``rope_parameters`` (what transformers 5
  writes), else 'transformers4' (top-level ``rope_theta`` and ``rope_scaling``)."""
  return "transformers5" if config_json.get("rope_parameters") is not None else "transformers4"


def rope_from_hf(config_json: dict) -> tuple[float, tuple | None]:
  """``(rope_theta, GPTConfig.rope_scaling)`` of a llama ``config.json`` in either layout.

  Follows transformers' ``convert_rope_params_to_dict`` / ``standardize_rope_params``: a 4.x ``rope_scaling``
  dict takes precedence over ``rope_parameters``; ``rope_theta`` comes from that dict, else the top level, else
  10000; ``rope_type`` (or its old name ``type``) defaults to 'default'; llama3's
  ``original_max_position_embeddings`` defaults to ``max_position_embeddings``.

  Raises:
    ValueError: a ``rope_type`` other than 'default', 'linear' or 'llama3' (naming it), per-layer-type RoPE
      parameters, or a ``partial_rotary_factor`` other than 1.
  """
  source = "rope_scaling" if config_json.get("rope_scaling") else "rope_parameters"
  rope = dict(config_json.get(source) or {})
  if any(isinstance(v, dict) for v in rope.values()):
    raise ValueError(f"llama {source} holds per-layer-type RoPE parameters ({sorted(rope)}); not supported")
  if float(rope.get("partial_rotary_factor", config_json.get("partial_rotary_factor")) or 1.0) != 1.0:
    raise ValueError("llama partial_rotary_factor != 1 is not supported")
  theta = rope.get("rope_theta", config_json.get("rope_theta"))
  theta = DEFAULT_ROPE_THETA if theta is None else float(theta)
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  try:
    if rope_type == "default":
      return theta, None
    if rope_type == "linear":
      return theta, (float(rope["factor"]),)
    if rope_type == "llama3":
      original = rope.get("original_max_position_embeddings", config_json.get("max_position_embeddings"))
      return theta, (float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"]),
                     int(original))
  except (KeyError, TypeError) as e:
    raise ValueError(f"llama {source} of rope_type {rope_type!r} lacks {e}") from e
  raise ValueError(f"llama {source}.rope_type {rope_type!r} is not supported (only {', '.join(ROPE_TYPES)})")


def config_from_hf(config_json: dict, **overrides) -> gpt.GPTConfig:
  """The `GPTConfig` of a Hugging Face ``config.json`` dict (``model_type`` 'llama' or 'gpt2').

  Args:
    config_json: the parsed ``config.json``.
    **overrides: `GPTConfig` fields to set on top (e.g. ``dtype=jnp.bfloat16``).

  Raises:
    ValueError: for another ``model_type``, a missing key, or a variant we do not implement (naming the key).
  """
  kind = config_json.get("model_type")
  if kind == "llama":
    if _get(config_json, "hidden_act", "silu") != "silu":
      raise ValueError(f"llama hidden_act {config_json['hidden_act']!r} is not supported (only 'silu')")
    bias = bool(_get(config_json, "attention_bias", False))
    if bool(_get(config_json, "mlp_bias", False)) != bias:
      raise ValueError("llama attention_bias and mlp_bias must be equal (GPTConfig.use_bias covers both)")
    d, heads = _get(config_json, "hidden_size", required=True), _get(config_json, "num_attention_heads",
                                                                      required=True)
    head_dim = _get(config_json, "head_dim", d // heads)
    if head_dim * heads != d:
      raise ValueError(f"llama head_dim={head_dim} != hidden_size / num_attention_heads = {d} / {heads}")
    theta, scaling = rope_from_hf(config_json)
    fields = dict(
        vocab_size=_get(config_json, "vocab_size", required=True),
        num_layers=_get(config_json, "num_hidden_layers", required=True), num_heads=heads,
        num_kv_heads=_get(config_json, "num_key_value_heads", heads), d_model=d,
        d_ff=_get(config_json, "intermediate_size", required=True),
        max_len=_get(config_json, "max_position_embeddings", 2048), norm="rms",
        norm_eps=float(_get(config_json, "rms_norm_eps", 1e-6)), positions="rope",
        rope_theta=theta, rope_scaling=scaling,
        tie_embeddings=bool(_get(config_json, "tie_word_embeddings", False)), mlp="swiglu", use_bias=bias)
  elif kind == "gpt2":
    act = _get(config_json, "activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
      raise ValueError(f"gpt2 activation_function {act!r} is not supported (only the tanh GELU 'gelu_new')")
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
      if _get(config_json, key, False):
        raise ValueError(f"gpt2 {key}=True is not supported")
    if not _get(config_json, "scale_attn_weights", True):
      raise ValueError("gpt2 scale_attn_weights=False is not supported")
    d = _get(config_json, "n_embd", required=True)
    fields = dict(
        vocab_size=_get(config_json, "vocab_size", required=True),
        num_layers=_get(config_json, "n_layer", required=True), num_heads=_get(config_json, "n_head", required=True),
        d_model=d, d_ff=_get(config_json, "n_inner", 4 * d), max_len=_get(config_json, "n_positions", 1024),
        norm="layer", norm_eps=float(_get(config_json, "layer_norm_epsilon", 1e-5)), positions="learned",
        tie_embeddings=bool(_get(config_json, "tie_word_embeddings", True)), mlp="gelu", use_bias=True)
  else:
    raise ValueError(f"HF model_type {kind!r} is not supported (only 'llama' and 'gpt2')")
  return gpt.GPTConfig(**{**fields, **overrides})


def hf_family(cfg: gpt.GPTConfig) -> str:
  """'llama' or 'gpt2': the HF layout ``cfg`` maps onto.

  Raises:
    ValueError: if ``cfg`` matches neither (e.g. RoPE with LayerNorm).
  """
  if cfg.norm == "rms" and cfg.positions == "rope" and cfg.mlp == "swiglu":
    return "llama"
  if (cfg.norm == "layer" and cfg.positions == "learned" and cfg.mlp == "gelu" and cfg.use_bias
      and cfg.kv_heads == cfg.num_heads):
    return "gpt2"
  raise ValueError("GPTConfig matches no Hugging Face layout: llama needs norm='rms', positions='rope', "
                   "mlp='swiglu'; gpt2 needs norm='layer', positions='learned', mlp='gelu', use_bias=True and "
                   f"num_kv_heads=num_heads; got {cfg}")


def hf_config(cfg: gpt.GPTConfig, *, layout: str = "transformers5", bos_id: int | None = None,
              eos_id: int | None = None, pad_id: int | None = None) -> dict:
  """The Hugging Face ``config.json`` dict of ``cfg`` (inverse of `config_from_hf`).

  Args:
    cfg: the network.
    layout: 'transformers5' (RoPE settings in ``rope_parameters``, dtype as ``dtype``) or 'transformers4'
      (top-level ``rope_theta`` / ``rope_scaling``, ``torch_dtype``); see `hf_layout`.
    bos_id / eos_id / pad_id: the special-token ids written as ``*_token_id`` (None: omitted).

  Raises:
    ValueError: an unknown ``layout``, or a ``cfg`` with no HF family (`hf_family`).
  """
  if layout not in LAYOUTS:
    raise ValueError(f"layout {layout!r}: choose one of {LAYOUTS}")
  tokens = {f"{k}_token_id": int(v) for k, v in (("bos", bos_id), ("eos", eos_id), ("pad", pad_id))
            if v is not None}
  dtype = {"dtype" if layout == "transformers5" else "torch_dtype": cfg.param_dtype.name}
  if hf_family(cfg) == "gpt2":
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
            "n_embd": cfg.d_model, "n_inner": cfg.d_ff, "n_layer": cfg.num_layers, "n_head": cfg.num_heads,
            "n_positions": cfg.max_len, "layer_norm_epsilon": cfg.norm_eps, "activation_function": "gelu_new",
            "tie_word_embeddings": cfg.tie_embeddings, **dtype, **tokens}
  rope = {"rope_type": "default"}
  if cfg.rope_scaling is not None and len(cfg.rope_scaling) == 1:
    rope = {"rope_type": "linear", "factor": cfg.rope_scaling[0]}
  elif cfg.rope_scaling is not None:
    factor, low, high, original = cfg.rope_scaling
    rope = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
            "original_max_position_embeddings": original}
  if layout == "transformers5":
    rope = {"rope_parameters": {**rope, "rope_theta": cfg.rope_theta}}
  else:
    rope = {"rope_theta": cfg.rope_theta, "rope_scaling": None if rope["rope_type"] == "default" else rope}
  return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
          "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.num_layers,
          "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
          "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.norm_eps, **rope,
          "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu", "attention_bias": cfg.use_bias,
          "mlp_bias": cfg.use_bias, **dtype, **tokens}


class Entry(NamedTuple):
  """One HF tensor: our parameter paths concatenated along its output axis, and whether it is ``[out, in]``."""
  name: str
  paths: tuple[Path, ...]
  transpose: bool


def hf_entries(cfg: gpt.GPTConfig, prefix: str = "") -> list[Entry]:
  """The name mapping of ``cfg``'s family (``prefix``: GPT-2's optional ``'transformer.'``)."""
  entries = []
  add = lambda name, paths, transpose=False: entries.append(Entry(name, tuple(paths), transpose))
  bias_kinds = ("weight", "bias") if cfg.use_bias else ("weight",)
  if hf_family(cfg) == "llama":
    add("model.embed_tokens.weight", [("embed", "embedding")])
    for i in range(cfg.num_layers):
      blk, hf = f"block_{i}", f"model.layers.{i}"
      add(f"{hf}.input_layernorm.weight", [(blk, "attn_norm", "scale")])
      add(f"{hf}.post_attention_layernorm.weight", [(blk, "mlp_norm", "scale")])
      for ours, group, theirs in (("q", "attn", "self_attn.q_proj"), ("k", "attn", "self_attn.k_proj"),
                                  ("v", "attn", "self_attn.v_proj"), ("o", "attn", "self_attn.o_proj"),
                                  ("gate", "mlp", "mlp.gate_proj"), ("up", "mlp", "mlp.up_proj"),
                                  ("down", "mlp", "mlp.down_proj")):
        for kind in bias_kinds:
          leaf = "kernel" if kind == "weight" else "bias"
          add(f"{hf}.{theirs}.{kind}", [(blk, group, ours, leaf)], transpose=kind == "weight")
    add("model.norm.weight", [("final_norm", "scale")])
  else:
    add(f"{prefix}wte.weight", [("embed", "embedding")])
    add(f"{prefix}wpe.weight", [("pos_embed", "embedding")])
    for i in range(cfg.num_layers):
      blk, hf = f"block_{i}", f"{prefix}h.{i}"
      for kind, leaf in (("weight", "scale"), ("bias", "bias")):
        add(f"{hf}.ln_1.{kind}", [(blk, "attn_norm", leaf)])
        add(f"{hf}.ln_2.{kind}", [(blk, "mlp_norm", leaf)])
      for kind, leaf in (("weight", "kernel"), ("bias", "bias")):
        add(f"{hf}.attn.c_attn.{kind}", [(blk, "attn", x, leaf) for x in ("q", "k", "v")])
        add(f"{hf}.attn.c_proj.{kind}", [(blk, "attn", "o", leaf)])
        add(f"{hf}.mlp.c_fc.{kind}", [(blk, "mlp", "up", leaf)])
        add(f"{hf}.mlp.c_proj.{kind}", [(blk, "mlp", "down", leaf)])
    add(f"{prefix}ln_f.weight", [("final_norm", "scale")])
    add(f"{prefix}ln_f.bias", [("final_norm", "bias")])
  if not cfg.tie_embeddings:
    add("lm_head.weight", [("lm_head", "kernel")], transpose=True)
  return entries


def _lookup(tree, path: Path):
  for key in path:
    tree = tree[key]
  return tree


def _hf_shape(entry: Entry, shapes) -> tuple[int, ...]:
  parts = [tuple(_lookup(shapes, p).shape) for p in entry.paths]
  shape = parts[0][:-1] + (sum(s[-1] for s in parts),)
  return shape[::-1] if entry.transpose else shape


def hf_shapes(cfg: gpt.GPTConfig, prefix: str = "") -> dict[str, tuple[int, ...]]:
  """The shape of every HF tensor of ``cfg`` (named as in `hf_entries`), without building any parameters."""
  shapes = jax.eval_shape(lambda k: gpt.init_params(cfg, k), jax.random.key(0))
  return {entry.name: _hf_shape(entry, shapes) for entry in hf_entries(cfg, prefix)}


def params_from_hf(get: Callable[[str], np.ndarray | None], cfg: gpt.GPTConfig, prefix: str = ""):
  """Our params from HF tensors; ``get(name)`` returns a tensor or None if the checkpoint lacks it.

  Raises:
    ValueError: naming a missing tensor, or a tensor of the wrong shape (with both shapes).
  """
  shapes = jax.eval_shape(lambda k: gpt.init_params(cfg, k), jax.random.key(0))
  params = jax.tree.map(lambda _: None, shapes)
  for entry in hf_entries(cfg, prefix):
    tensor = get(entry.name)
    if tensor is None:
      raise ValueError(f"checkpoint has no tensor {entry.name!r} (needed for {'/'.join(entry.paths[0])})")
    want = _hf_shape(entry, shapes)
    if tuple(tensor.shape) != want:
      raise ValueError(f"tensor {entry.name!r} has shape {tuple(tensor.shape)}, expected {want}")
    tensor = tensor.T if entry.transpose else tensor
    sizes = np.cumsum([_lookup(shapes, p).shape[-1] for p in entry.paths])[:-1]
    for path, piece in zip(entry.paths, np.split(tensor, sizes, axis=-1)):
      _lookup(params, path[:-1])[path[-1]] = jnp.asarray(piece.astype(cfg.param_dtype))
  unmapped = [jax.tree_util.keystr(p) for p, leaf in
              jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: x is None)[0] if leaf is None]
  if unmapped:
    raise ValueError(f"no HF tensor maps to {unmapped}")
  return params


def params_to_hf(params, cfg: gpt.GPTConfig, prefix: str = "") -> dict[str, np.ndarray]:
  """The HF tensors (contiguous NumPy arrays, named as in `hf_entries`) of our ``params``."""
  out = {}
  for entry in hf_entries(cfg, prefix):
    try:
      pieces = [np.asarray(_lookup(params, p)) for p in entry.paths]
    except (KeyError, TypeError) as e:
      raise ValueError(f"params lack {'/'.join(entry.paths[0])} (for {entry.name!r})") from e
    tensor = np.concatenate(pieces, axis=-1)
    out[entry.name] = np.ascontiguousarray(tensor.T if entry.transpose else tensor)
  return out


def _resolve(path: str) -> tuple[str, dict[str, str]]:
  """``(checkpoint directory, {tensor name: safetensors file})`` of a directory, ``.safetensors`` file or
  ``model.safetensors.index.json``."""
  path = os.fspath(path)
  if os.path.isdir(path):
    directory = path
    if os.path.exists(os.path.join(path, INDEX)):
      path = os.path.join(path, INDEX)
    elif os.path.exists(os.path.join(path, WEIGHTS)):
      path = os.path.join(path, WEIGHTS)
    else:
      raise ValueError(f"{directory} holds neither {WEIGHTS} nor {INDEX}")
  elif os.path.isfile(path):
    directory = os.path.dirname(path)
  else:
    raise ValueError(f"no checkpoint at {path}")
  if path.endswith(".json"):
    with open(path) as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
      raise ValueError(f"{path} has no 'weight_map'")
    return directory, {name: os.path.join(directory, file) for name, file in weight_map.items()}
  with safe_open(path, framework="numpy") as f:
    return directory, {name: path for name in f.keys()}


def load_hf_checkpoint(path: str, cfg: gpt.GPTConfig | None = None) -> tuple[gpt.GPTConfig, Any]:
  """Loads a local HF Llama or GPT-2 checkpoint into ``(cfg, params)`` for `gpt.GPT`.

  Args:
    path: a checkpoint directory (``config.json`` + ``model.safetensors`` or its sharded index), a
      ``.safetensors`` file, or a ``model.safetensors.index.json``.
    cfg: the config to load into; None reads ``config.json`` next to the weights (`config_from_hf`).

  Raises:
    ValueError: a missing file, config key or tensor, or a tensor of the wrong shape (named).
  """
  directory, files = _resolve(path)
  if cfg is None:
    cfg = config_from_hf(read_hf_config(directory))
  prefix = "transformer." if "transformer.wte.weight" in files else ""
  with contextlib.ExitStack() as stack:
    handles = {}

    def get(name):
      if name not in files:
        return None
      file = files[name]
      if file not in handles:
        handles[file] = stack.enter_context(safe_open(file, framework="numpy"))
      return handles[file].get_tensor(name)

    params = params_from_hf(get, cfg, prefix)
  return cfg, params


def read_hf_config(path: str) -> dict:
  """The parsed ``config.json`` of a checkpoint (a directory, or a weights/index file beside it).

  Raises:
    ValueError: no ``config.json`` there, naming the path.
  """
  path = os.fspath(path)
  directory = path if os.path.isdir(path) else os.path.dirname(path)
  config_path = os.path.join(directory, CONFIG)
  if not os.path.exists(config_path):
    raise ValueError(f"no {CONFIG} in {directory}; pass cfg")
  with open(config_path) as f:
    return json.load(f)


def save_hf_checkpoint(params, cfg: gpt.GPTConfig, path: str, *, like: dict | None = None,
                       layout: str | None = None, bos_id: int | None = None, eos_id: int | None = None,
                       pad_id: int | None = None) -> None:
  """Writes ``path/config.json``, ``path/generation_config.json`` and ``path/model.safetensors`` (HF names,
  ``param_dtype``), loadable by `load_hf_checkpoint` and by ``transformers``' ``from_pretrained``. GPT-2 is
  written with the ``transformer.`` prefix of ``GPT2LMHeadModel``.

  Args:
    params: our parameters.
    cfg: their config.
    path: the output directory.
    like: the ``config.json`` the model was loaded from (`read_hf_config`): its layout and special-token ids are
      kept unless given below.
    layout: 'transformers5' or 'transformers4' (`hf_config`); None: ``like``'s, else 'transformers5'.
    bos_id / eos_id / pad_id: special-token ids for ``config.json`` and ``generation_config.json``; None:
      ``like``'s ``*_token_id`` (omitted when neither has one).
  """
  like = like or {}
  layout = layout or (hf_layout(like) if like else "transformers5")
  ids = {k: v if v is not None else like.get(f"{k}_token_id")
         for k, v in (("bos", bos_id), ("eos", eos_id), ("pad", pad_id))}
  config = hf_config(cfg, layout=layout, bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["pad"])
  prefix = "transformer." if hf_family(cfg) == "gpt2" else ""
  tensors = params_to_hf(params, cfg, prefix)
  os.makedirs(path, exist_ok=True)
  save_file(tensors, os.path.join(path, WEIGHTS), metadata={"format": "pt"})
  generation = {"_from_model_config": True, **{k: v for k, v in config.items() if k.endswith("_token_id")}}
  for name, content in ((CONFIG, config), (GENERATION_CONFIG, generation)):
    with open(os.path.join(path, name), "w") as f:
      json.dump(content, f, indent=2)
