r"""Per-device memory of an experiment, from the compiled program, before running anything.

``python -m experiments.memory --config=configs/<x>.py [--config.mesh.fsdp=4 ...]`` builds the experiment
abstractly and prints, per device, the bytes of

* the parameters, the non-trained state and the optimiser state, as laid out by the config's mesh and sharding
  rules (`unlearn_jax.sharding`: FSDP over ``mesh.fsdp`` where leaves are large enough, replicated otherwise);
* the sharded initialisation ``jax.jit(init, out_shardings=...)`` and one training step (the step every epoch
  scans: forward, backward, optimiser update, parameters gathered inside the step as FSDP does), from
  ``jit(...).lower(...).compile().memory_analysis()``: argument, output, aliased (donated), temporary and
  generated-code bytes, and their sum less the aliased bytes as the step's peak estimate.

An LM-unlearning config (``experiment = 'lm_unlearning'``, `lm_memory_report`) is planned for its first compared
method: the network's parameters, what the optimiser trains (all weights, or LoRA adapters with
``--config.methods.<m>.lora_rank=8``), the frozen pytrees the loop carries (the reference model / LoRA base),
AdamW's state, and one compiled unlearning step (`unlearn_jax.unlearning.loop.joint_term`, the loop's own step):
LoRA's saving shows in ``opt_state`` and the step's arguments.

Nothing is trained and no data is loaded: shapes come from `jax.eval_shape` and the dataset's known image
shape, so the numbers for a big model or a big mesh are available before committing to a run. Unlearning steps
run the same network and optimiser on batches of the same size, so the training step bounds them up to the
extra forward passes of teacher-based methods (whose frozen copies add one parameter set each to the
arguments).

References:
  The JAX ahead-of-time lowering API (``jax.stages.Compiled.memory_analysis``) and the explicit-sharding
  documentation; Rajbhandari et al., "ZeRO", SC 2020 (per-device memory of sharded parameters and optimiser
  state).

Example:
    python -m experiments.memory --config=configs/original.py
    python -m experiments.memory --config=configs/salun.py:resnet18 --config.mesh.fsdp=2
    python -m experiments.memory --config=configs/lm_npo.py --config.compare="('npo',)" \
        --config.methods.npo.lora_rank=8
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from absl import app
from ml_collections import config_flags

# name -> (image shape, number of classes); synthetic data takes both from its config section.
DATASET_SHAPES = {
    "digits": ((8, 8, 1), 10),
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "svhn_cropped": ((32, 32, 3), 10),
}
CIFAR100_COARSE = 20



def dataset_signature(config) -> tuple[tuple[int, ...], int]:
  """``(image_shape, num_classes)`` of ``config.dataset`` without loading it.

  Raises:
    ValueError: for a dataset name without a known shape.
  """
  d = config.dataset
  if d.name == "synthetic":
    return tuple(d.image_shape), int(d.num_classes)
  if d.name not in DATASET_SHAPES:
    raise ValueError(f"config.dataset.name={d.name!r}: no known image shape; known: {sorted(DATASET_SHAPES)}")
  shape, classes = DATASET_SHAPES[d.name]
  if d.name == "cifar100" and d.get("label", "fine") == "coarse":
    classes = CIFAR100_COARSE
  return shape, classes


def memory_stats(compiled) -> dict[str, int]:
  """Per-device bytes of a compiled program (``memory_analysis``): argument, output, alias, temp, generated code
  and their peak estimate ``argument + output - alias + temp + generated_code``."""
  m = compiled.memory_analysis()
  out = {k: int(getattr(m, f"{k}_size_in_bytes", 0)) for k in
         ("argument", "output", "alias", "temp", "generated_code")}
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"] + out["generated_code"]
  return out


def memory_report(config) -> dict[str, Any]:
  """Builds ``config``'s experiment abstractly and compiles its init and training step; returns the bytes.

  Returns:
    ``{'devices', 'mesh', 'batch_size', 'params': {'total', 'per_device'}, 'state': ..., 'opt_state': ...,
    'init': memory stats, 'step': memory stats, 'specs': {param path: str(PartitionSpec)}}``; memory stats are
    per-device bytes ``argument``, ``output``, ``alias``, ``temp``, ``generated_code`` and ``peak``.

  Raises:
    ValueError: for a bad config (see `unlearn_jax.config.validate`) or a batch size the mesh's ``data`` axis
      does not divide.
  """
  from unlearn_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from unlearn_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from unlearn_jax import run, sharding, train  # pylint: disable=g-import-not-at-top

  config_lib.validate(config, [k for k in config.keys() if k not in config_lib.base_config()])  # study sections
  mesh = sharding.mesh_from_config(config.mesh)
  rules = sharding.rules_from_config(config.mesh)
  batch_size = int(config.train.batch_size)
  if batch_size % mesh.shape[sharding.DATA]:
    raise ValueError(f"config.train.batch_size={batch_size}: not divisible by the mesh data axis "
                     f"({mesh.shape[sharding.DATA]} devices)")
  image_shape, num_classes = dataset_signature(config)
  module = run.build_model(config, num_classes)
  model = model_lib.from_linen(module)
  init = lambda key: model_lib.init(module, key, jnp.zeros((1,) + image_shape, jnp.float32))[1:]
  key = jax.random.key(config.seed)

  with jax.set_mesh(mesh):
    abstract, shardings, init_fn = sharding.abstract_init(init, mesh, rules, key)
    init_stats = memory_stats(init_fn.lower(key).compile())
    params, state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                                 shardings)
    tx = train.make_optimizer(config.train, steps_per_epoch=1)
    opt_abstract = jax.eval_shape(tx.init, params)
    opt_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), opt_abstract,
                             sharding.mirror_shardings(opt_abstract, params, mesh, rules))
    batch_sharding = lambda ndim: jax.NamedSharding(mesh, sharding.batch_spec(ndim, leading=0))
    x = jax.ShapeDtypeStruct((batch_size,) + image_shape, jnp.float32, sharding=batch_sharding(1 + len(image_shape)))
    y = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=batch_sharding(1))
    loss_fn = sharding.gathered(train.classification_loss(model))
    step = jax.jit(functools.partial(train.train_step, loss_fn, tx), donate_argnums=(0, 1, 2))
    step_stats = memory_stats(step.lower(params, state, opt_state, (x, y), key).compile())

  total = lambda tree: sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tree))
  flat = jax.tree_util.tree_flatten_with_path(shardings[0])[0]
  return {
      "devices": mesh.size, "mesh": dict(mesh.shape), "batch_size": batch_size,
      "params": {"total": total(params), "per_device": sharding.bytes_per_device(params)},
      "state": {"total": total(state), "per_device": sharding.bytes_per_device(state)},
      "opt_state": {"total": total(opt_state), "per_device": sharding.bytes_per_device(opt_state)},
      "init": init_stats, "step": step_stats,
      "specs": {jax.tree_util.keystr(p): str(s.spec) for p, s in flat},
  }


def lm_memory_report(config, *, compile_step: bool = True) -> dict[str, Any]:
  """`memory_report` of an LM-unlearning config: its first compared method's unlearning step, on one device.

  ``compile_step=False`` leaves out the compiled step (``'step'``: {}): the pytree sizes alone, without compiling.

  Returns:
    ``{'devices': 1, 'mesh', 'batch_size', 'method', 'vocab_size', 'params', 'trainable', 'state', 'opt_state',
    'step', 'specs': {}}``; ``state`` is the frozen pytrees the loop carries.

  Raises:
    ValueError: a bad config (`unlearn_jax.studies.language.validate_lm`, `check_model`), or a method whose
      objective needs data to build (RMU's and the SAE's read activations, WAGLE's mask gradients).
  """
  from unlearn_jax import sharding  # pylint: disable=g-import-not-at-top
  from unlearn_jax.models import gpt  # pylint: disable=g-import-not-at-top
  from unlearn_jax.studies import language as study  # pylint: disable=g-import-not-at-top
  from unlearn_jax.unlearning import language as lmu  # pylint: disable=g-import-not-at-top

  study.validate_lm(config)
  name = config.compare[0]
  if name in ("rmu", "sae", "wagle"):
    raise ValueError(f"config.compare={config.compare!r}: the memory plan builds {name!r}'s objective only with "
                     "data; put a likelihood method (ga, graddiff, npo, simnpo, ...) first")
  bench = study.make_benchmark(config)
  study.check_model(config, bench.tokenizer.vocab_size)
  opts = lmu.method_config(name, config.methods[name])
  cfg = study.model_config(config, bench.tokenizer.vocab_size)
  lm, _ = gpt.language_model(cfg)
  key = jax.random.key(config.seed)
  params = jax.eval_shape(functools.partial(gpt.init_params, cfg), key)

  step, trainable, carried, opt_state = lmu.unlearning_step(name, lm, params, opts, rng=key)
  bs, seq = int(opts.batch_size), int(bench.seq_len)
  batch = lambda fields: ({f: jax.ShapeDtypeStruct((bs, seq), jnp.int32 if "ids" in f else jnp.float32)
                           for f in fields}, jax.ShapeDtypeStruct((bs,), jnp.int32))
  batches = (batch(("input_ids", "loss_mask") + lmu.FORGET_FIELDS.get(name, ())),)
  if name not in lmu.FORGET_ONLY:
    batches += (batch(("input_ids", "loss_mask")),)
  step = jax.jit(step, donate_argnums=(0, 1, 2))
  step_stats = memory_stats(step.lower(trainable, carried, opt_state, batches, key, jnp.int32(0)).compile()) \
      if compile_step else {}
  size = lambda tree: {"total": sharding.bytes_per_device(tree), "per_device": sharding.bytes_per_device(tree)}
  return {"devices": 1, "mesh": {}, "batch_size": bs, "method": name, "vocab_size": cfg.vocab_size,
          "params": size(params),
          "trainable": size(trainable), "state": size(carried), "opt_state": size(opt_state), "step": step_stats,
          "specs": {}}


def format_report(report: dict[str, Any]) -> str:
  """The report as a plain-text table (MiB, per device)."""
  mib = lambda b: f"{b / 2**20:12.3f}"
  lines = [f"mesh {report['mesh']} ({report['devices']} devices), batch {report['batch_size']}",
           f"{'per-device MiB':<28}{'per device':>12}{'total':>12}"]
  for name in ("params", "trainable", "state", "opt_state"):
    if name in report:
      lines.append(f"{name:<28}{mib(report[name]['per_device'])}{mib(report[name]['total'])}")
  for stage in ("init", "step"):
    for k, v in report.get(stage, {}).items():
      lines.append(f"{stage + ' ' + k:<28}{mib(v)}")
  sharded = {p: s for p, s in report["specs"].items() if s != str(jax.P())}
  lines.append(f"sharded parameters: {len(sharded)} of {len(report['specs'])}")
  lines += [f"  {p}: {s}" for p, s in sharded.items()]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from absl import flags  # pylint: disable=g-import-not-at-top
  config = flags.FLAGS.config
  lm = config.get("experiment") == "lm_unlearning"
  print(format_report(lm_memory_report(config) if lm else memory_report(config)))


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top
  # defined here, not at import: a script importing this module (benchmarks/lm_step.py) has its own --config
  config_flags.DEFINE_config_file("config", None, "Path to a configs/<method>.py file.", lock_config=True)
  flags.mark_flags_as_required(["config"])
  app.run(main)
