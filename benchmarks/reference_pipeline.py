r"""End to end: unlearn_jax's pipeline vs a PyTorch loop written like the SalUn / Unlearn-Sparse reference code.

For each case (dataset:model) both sides run the same four stages on the same data, from the same initial weights
(the JAX initialisation is copied into the PyTorch network), with the same epochs, batch size and optimiser (SGD,
momentum 0.9, weight decay 5e-4, constant learning rate), and each stage is timed end to end:

- **Original**: train on the full training set.
- **Retrain**: train from the same initialisation on the retain set only.
- **SalUn**: saliency mask of the Original (top ``--fraction`` of ``|grad|`` of the forget loss over all weights),
  then random-label unlearning (forget batches, then retain batches, each epoch) with only masked weights moving.
- **Eval**: accuracy on retain, forget and test, and the SVC membership-inference attack on all five features
  (shadow members = first ``len(test)`` retain examples, non-members = test, targets = forget).

The JAX side is the project's own pipeline: `unlearn_jax.train.fit` for Original and Retrain, the registered
``salun`` method (`unlearning.get_method`, its defaults apart from ``lr``, ``epochs``, ``batch_size`` and
``fraction``) and `evaluation.evaluate_unlearning`. Its times include tracing and XLA compilation, which are also
reported on their own (the sum of JAX's ``/jax/core/compile/*`` duration events during the stage).

The PyTorch side follows the loop of ``Classification/`` in github.com/OPTML-Group/Unlearn-Saliency (the same
loop as Unlearn-Sparse's): ``torch.utils.data.DataLoader`` epochs over a ``TensorDataset`` (``shuffle=True``,
``num_workers=0``), per-batch ``.item()`` of the loss and top-1 accuracy into running-average meters, a progress
line every ``--print_freq`` batches (written to an in-memory log); ``main_train.py``'s validation pass after every
Original epoch; Retrain = the same ``train()`` on the retain loader; ``generate_mask.py``'s saliency (eval mode,
gradients of ``-CE`` summed over forget batches, ranks by a double ``argsort`` over all weights, one threshold
instead of its ten); ``unlearn/RL.py``'s CIFAR-10 branch: forget batches with ``torch.randint(0, num_classes)``
labels, then retain batches, the mask multiplied into every ``param.grad`` before ``optimizer.step()`` (the code
that produced the paper's tables, and the JAX method's default ``mask_mode='gradient'``; with
``--torch_restore``, as the reference has done since its Feb 2026 weight-decay fix, masked-out weights are also
put back at their starting values after each step and their momentum zeroed, like ``mask_mode='freeze'``);
``main_forget.py``'s evaluation: ``validate()`` over the retain,
forget and test loaders (the reference also has a validation loader; these datasets have none), then
``SVC_MIA`` collecting softmax outputs batch by batch and fitting one ``sklearn.svm.SVC(C=3, gamma='auto')``
per feature. The PyTorch side also counts the seconds spent fetching batches from the ``DataLoader``, in the
per-batch ``.item()`` bookkeeping and (Original) in the per-epoch validation, to show what its time goes to.
Checkpoint writing is left out on both sides. PyTorch runs with ``--torch_threads`` intra-op threads (default 1:
on a 2-core CPU shared with other jobs, two OpenMP threads made one MLP step about 100x slower, 170 ms instead of
1-2 ms; JAX keeps its default thread pool).

  PYTHONPATH=. python benchmarks/reference_pipeline.py                  # all four cases, about 2 min on 2 cores
  PYTHONPATH=. python benchmarks/reference_pipeline.py --smoke          # digits:mlp, 1 epoch each, seconds

Prints one markdown table (seconds per stage; JAX cold, with an empty persistent compilation cache, and its
compile seconds; JAX warm, the same pipeline run again with the in-memory caches cleared so every program is loaded
from the persistent cache, as a second process would; PyTorch; PyTorch / JAX ratios) and the accuracies of both
sides. Needs ``torch`` (``pip install -e '.[bench]'``; not a dependency of unlearn_jax).

References:
  Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both Image
  Classification and Generation", ICLR 2024 (code: github.com/OPTML-Group/Unlearn-Saliency).
  Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023 (code:
  github.com/OPTML-Group/Unlearn-Sparse).
"""
from __future__ import annotations

import io
import os
import platform
import tempfile
import time

import jax
import numpy as np
from absl import app
from absl import flags

from unlearn_jax import compilation
from unlearn_jax import config as config_lib
from unlearn_jax import data
from unlearn_jax import evaluation
from unlearn_jax import model as model_lib
from unlearn_jax import models
from unlearn_jax import train
from unlearn_jax import unlearning

_CASES = flags.DEFINE_list("cases", ["digits:mlp", "digits:cnn", "mnist1d:mlp", "mnist1d:cnn1d"],
                           "dataset:model pairs.")
_SIDES = flags.DEFINE_list("sides", ["jax", "torch"], "Which pipelines to run.")
_EPOCHS = flags.DEFINE_integer("epochs", 30, "Original and Retrain epochs.")
_LR = flags.DEFINE_float("lr", 0.05, "Original and Retrain learning rate.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch size of every stage.")
_UNLEARN_EPOCHS = flags.DEFINE_integer("unlearn_epochs", 5, "SalUn epochs.")
_UNLEARN_LR = flags.DEFINE_float("unlearn_lr", 0.1, "SalUn learning rate.")
_FRACTION = flags.DEFINE_float("fraction", 0.5, "Share of weights SalUn updates.")
_FORGET = flags.DEFINE_float("forget_fraction", 0.1, "Random forget-set share of the training set.")
_PRINT_FREQ = flags.DEFINE_integer("print_freq", 50, "PyTorch side: a log line every this many batches "
                                   "(the reference's default).")
_EPOCH_EVAL = flags.DEFINE_bool("torch_epoch_eval", True, "PyTorch side: validate after every Original epoch, "
                                "as main_train.py does.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 1, "PyTorch intra-op threads (0: PyTorch's default, one per "
                                     "core). 1 is the faster setting for these small networks on a shared CPU.")
_RESTORE = flags.DEFINE_bool("torch_restore", False, "PyTorch SalUn: after each step put masked-out weights back "
                              "and zero their momentum (the reference's 2026 _restore_masked_params).")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny run: digits:mlp, 1 epoch per stage (checks the script).")

STAGES = ("Original", "Retrain", "SalUn", "Eval")
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_compile_seconds = [0.0]


def _on_event(name, seconds, **_):
  if name in _COMPILE_EVENTS:
    _compile_seconds[0] += seconds


def build(dataset: str, model_name: str):
  """Dataset, unlearning splits, Linen module and initial ``(model, params, state)`` of one case."""
  ds = data.load_dataset(dataset, seed=0)
  splits = data.make_unlearning_splits(ds, kind="random", fraction=_FORGET.value, classes=None, seed=0)
  kwargs = {"features": (256, 256)} if model_name == "mlp" else {}
  module = models.get_model(model_name, ds.num_classes, **kwargs)
  model, params, state = model_lib.init(module, jax.random.key(0), ds.train.x[:1])
  return ds, splits, model, params, state


# ----------------------------------------------------------------------------------------------- JAX side


def jax_pipeline(ds, splits, model, params, state) -> tuple[dict, dict, dict]:
  """unlearn_jax's stages; returns ``(seconds, compile seconds, metrics)`` keyed by stage."""
  cfg = config_lib.train_config(lr=_LR.value, momentum=MOMENTUM, nesterov=False, weight_decay=WEIGHT_DECAY,
                                schedule="constant", epochs=_EPOCHS.value, batch_size=_BATCH.value)
  salun_cfg = unlearning.method_config("salun", lr=_UNLEARN_LR.value, epochs=_UNLEARN_EPOCHS.value,
                                       batch_size=_BATCH.value, fraction=_FRACTION.value)
  seconds, compiles, out = {}, {}, {}

  def timed(stage, fn):
    _compile_seconds[0] = 0.0
    start = time.perf_counter()
    out[stage] = jax.block_until_ready(fn())
    seconds[stage], compiles[stage] = time.perf_counter() - start, _compile_seconds[0]

  timed("Original", lambda: train.fit(model, params, state, ds.train, cfg, rng=jax.random.key(1))[:2])
  timed("Retrain", lambda: train.fit(model, params, state, splits.retain, cfg, rng=jax.random.key(2))[:2])
  timed("SalUn", lambda: unlearning.get_method("salun")(model, *out["Original"], splits.forget, splits.retain,
                                                        config=salun_cfg, rng=jax.random.key(3)))
  timed("Eval", lambda: evaluation.evaluate_unlearning(model, *out["SalUn"], splits, mia=True,
                                                       mia_features=evaluation.MIA_FEATURES))
  original_ta = evaluation.unlearning_accuracies(model, *out["Original"], splits)["TA"]
  return seconds, compiles, {"original_TA": original_ta, **out["Eval"]}


# ----------------------------------------------------------------------------------------------- PyTorch side


def torch_net(model_name: str, params):
  """The PyTorch twin of the JAX network, holding a copy of the JAX ``params``."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  class ChannelsLastFlatten(nn.Module):  # flattens (N, C, ...) in JAX's (N, ..., C) order, so Dense kernels match
    def forward(self, x):
      return x.movedim(1, -1).flatten(1)

  def linear(p):
    layer = nn.Linear(*p["kernel"].shape)
    layer.weight.data = torch.tensor(np.asarray(p["kernel"]).T.copy())
    layer.bias.data = torch.tensor(np.asarray(p["bias"]))
    return layer

  def conv(p, **kw):
    k = np.asarray(p["kernel"])  # (*spatial, in, out) -> (out, in, *spatial)
    layer = (nn.Conv2d if k.ndim == 4 else nn.Conv1d)(k.shape[-2], k.shape[-1], k.shape[:-2], **kw)
    layer.weight.data = torch.tensor(np.moveaxis(k, (-1, -2), (0, 1)).copy())
    layer.bias.data = torch.tensor(np.asarray(p["bias"]))
    return layer

  if model_name == "mlp":
    n = len(params)
    layers = [nn.Flatten()]
    for i in range(n):
      layers += [linear(params[f"Dense_{i}"])] + ([nn.ReLU()] if i < n - 1 else [])
  elif model_name == "cnn":
    layers = []
    for i in range(sum(k.startswith("conv_") for k in params)):
      layers += [conv(params[f"conv_{i}"], padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    layers += [ChannelsLastFlatten(), linear(params["Dense_0"]), nn.ReLU(), linear(params["fc"])]
  elif model_name == "cnn1d":
    layers = []
    for i in range(sum(k.startswith("conv_") for k in params)):
      layers += [conv(params[f"conv_{i}"], stride=2, padding=1), nn.ReLU()]
    layers += [ChannelsLastFlatten(), linear(params["fc"])]
  else:
    raise ValueError(f"model {model_name!r}: no PyTorch twin here (mlp, cnn, cnn1d)")
  return nn.Sequential(*layers)


class AverageMeter:
  """Running average of a per-batch value, weighted by batch size (the reference's ``utils.AverageMeter``)."""

  def __init__(self):
    self.val = self.sum = self.count = self.avg = 0.0

  def update(self, val, n=1):
    self.val, self.sum, self.count = val, self.sum + val * n, self.count + n
    self.avg = self.sum / self.count


class TorchPipeline:
  """The reference loop's stages on CPU (or CUDA when present), with counters of where the time goes."""

  def __init__(self, model_name, ds, splits, params0):
    import torch  # pylint: disable=g-import-not-at-top
    self.torch = torch
    if _TORCH_THREADS.value:
      torch.set_num_threads(_TORCH_THREADS.value)
    torch.manual_seed(0)  # the reference's utils.setup_seed(args.seed): shuffles and random labels repeat
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    self.model_name, self.params0, self.num_classes = model_name, params0, ds.num_classes
    self.log = io.StringIO()
    self.counters = {"loader": 0.0, "item": 0.0, "epoch_eval": 0.0}
    channels_first = model_name != "mlp"

    def dataset(split):
      x = np.asarray(split.x)
      if channels_first:
        x = np.moveaxis(x, -1, 1)
      return torch.utils.data.TensorDataset(torch.tensor(np.ascontiguousarray(x)),
                                            torch.tensor(np.asarray(split.y), dtype=torch.long))

    self.sets = {"train": dataset(ds.train), "retain": dataset(splits.retain), "forget": dataset(splits.forget),
                 "test": dataset(splits.test)}

  def loader(self, name, shuffle=True, dataset=None):
    return self.torch.utils.data.DataLoader(dataset or self.sets[name], batch_size=_BATCH.value, shuffle=shuffle,
                                            num_workers=0)

  def batches(self, loader):
    """Iterates ``loader``, moving each batch to the device, counting the time spent fetching it."""
    it = iter(loader)
    while True:
      start = time.perf_counter()
      try:
        image, target = next(it)
      except StopIteration:
        return
      image, target = image.to(self.device), target.to(self.device)
      self.counters["loader"] += time.perf_counter() - start
      yield image, target

  @staticmethod
  def accuracy(output, target):
    return (output.argmax(1) == target).float().sum() * (100.0 / target.size(0))

  def new_net(self):
    return torch_net(self.model_name, self.params0).to(self.device)

  def optimizer(self, net, lr):
    return self.torch.optim.SGD(net.parameters(), lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

  def step(self, net, opt, image, target, mask=None, theta0=None):
    output = net(image)
    loss = self.torch.nn.functional.cross_entropy(output, target)
    opt.zero_grad()
    loss.backward()
    if mask is not None:
      for name, p in net.named_parameters():
        if p.grad is not None:
          p.grad *= mask[name]
    opt.step()
    if mask is not None and theta0 is not None:
      with self.torch.no_grad():
        for name, p in net.named_parameters():
          p.mul_(mask[name]).add_(theta0[name] * (1 - mask[name]))
          buf = opt.state.get(p, {}).get("momentum_buffer")
          if buf is not None:
            buf.mul_(mask[name])
    return output, loss

  def meter(self, meters, output, loss, target, epoch, i, total):
    start = time.perf_counter()
    losses, top1 = meters
    losses.update(loss.float().item(), target.size(0))
    top1.update(self.accuracy(output.float().data, target).item(), target.size(0))
    if (i + 1) % _PRINT_FREQ.value == 0:
      print(f"Epoch: [{epoch}][{i}/{total}]\tLoss {losses.val:.4f} ({losses.avg:.4f})\t"
            f"Accuracy {top1.val:.3f} ({top1.avg:.3f})", file=self.log)
    self.counters["item"] += time.perf_counter() - start

  def train_epoch(self, net, opt, loader, epoch):
    net.train()
    meters = AverageMeter(), AverageMeter()
    for i, (image, target) in enumerate(self.batches(loader)):
      output, loss = self.step(net, opt, image, target)
      self.meter(meters, output, loss, target, epoch, i, len(loader))
    print(f"train_accuracy {meters[1].avg:.3f}", file=self.log)
    return meters[1].avg

  def validate(self, net, loader):
    net.eval()
    meters = AverageMeter(), AverageMeter()
    for i, (image, target) in enumerate(self.batches(loader)):
      with self.torch.no_grad():
        output = net(image)
        loss = self.torch.nn.functional.cross_entropy(output, target)
      self.meter(meters, output, loss, target, 0, i, len(loader))
    print(f"valid_accuracy {meters[1].avg:.3f}", file=self.log)
    return meters[1].avg

  def fit(self, split, epoch_eval):
    net = self.new_net()
    opt = self.optimizer(net, _LR.value)
    sched = self.torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[91, 136], gamma=0.1)  # reference default
    train_loader, test_loader = self.loader(split), self.loader("test", shuffle=False)
    for epoch in range(_EPOCHS.value):
      self.train_epoch(net, opt, train_loader, epoch)
      if epoch_eval:
        start = time.perf_counter()
        self.validate(net, test_loader)
        self.counters["epoch_eval"] += time.perf_counter() - start
      sched.step()
    return net

  def saliency_mask(self, net):
    torch = self.torch
    opt = self.optimizer(net, _UNLEARN_LR.value)
    net.eval()
    grads = {name: 0 for name, _ in net.named_parameters()}
    for image, target in self.batches(self.loader("forget")):
      loss = -torch.nn.functional.cross_entropy(net(image), target)
      opt.zero_grad()
      loss.backward()
      with torch.no_grad():
        for name, p in net.named_parameters():
          if p.grad is not None:
            grads[name] += p.grad.data
    with torch.no_grad():
      scores = {name: torch.abs_(g) for name, g in grads.items()}
      flat = -torch.cat([s.flatten() for s in scores.values()])
      ranks = torch.argsort(torch.argsort(flat))
      cut, mask, start = int(len(flat) * _FRACTION.value), {}, 0
      for name, s in scores.items():
        mask[name] = (ranks[start:start + s.numel()] < cut).float().reshape(s.shape)
        start += s.numel()
    return mask

  def salun(self, original):
    torch = self.torch
    net = self.new_net()
    net.load_state_dict(original.state_dict())
    mask = self.saliency_mask(net)
    theta0 = {name: p.detach().clone() for name, p in net.named_parameters()} if _RESTORE.value else None
    opt = self.optimizer(net, _UNLEARN_LR.value)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[91, 136], gamma=0.1)
    forget_loader, retain_loader = self.loader("forget"), self.loader("retain")
    for epoch in range(_UNLEARN_EPOCHS.value):
      net.train()
      for image, target in self.batches(forget_loader):
        target = torch.randint(0, self.num_classes, target.shape).to(self.device)
        self.step(net, opt, image, target, mask, theta0)
      meters = AverageMeter(), AverageMeter()
      for i, (image, target) in enumerate(self.batches(retain_loader)):
        output, loss = self.step(net, opt, image, target, mask, theta0)
        self.meter(meters, output, loss, target, epoch, i, len(forget_loader) + len(retain_loader))
      sched.step()
    return net

  def collect_prob(self, net, loader):
    net.eval()
    probs, targets = [], []
    with self.torch.no_grad():
      for image, target in self.batches(loader):
        probs.append(self.torch.softmax(net(image), dim=-1).data)
        targets.append(target)
    return self.torch.cat(probs), self.torch.cat(targets)

  def svc_mia(self, net):
    """``SVC_MIA`` of the reference with the forget set as ``target_test``: efficacy per feature."""
    from sklearn.svm import SVC  # pylint: disable=g-import-not-at-top
    torch = self.torch
    test_len = len(self.sets["test"])
    shadow = torch.utils.data.Subset(self.sets["retain"], list(range(min(test_len, len(self.sets["retain"])))))
    groups = [self.collect_prob(net, self.loader(n, shuffle=False, dataset=d))
              for n, d in (("retain", shadow), ("test", None), ("forget", None))]

    def entropy(p):
      return -torch.where(p > 0, p * p.log(), p.new([0.0])).sum(dim=-1)

    def m_entropy(p, y):  # as the reference computes it: columns indexed by the whole label vector
      log_p = torch.where(p > 0, p.log(), torch.tensor(1e-30).log())
      mod_p, mod_log = p.clone(), log_p.clone()
      mod_p[:, y] = (1 - p)[:, y]
      mod_log[:, y] = log_p[:, y]
      return -torch.sum(mod_p * mod_log, dim=-1)

    features = {"correctness": lambda p, y: (p.argmax(1) == y).int(),
                "confidence": lambda p, y: torch.gather(p, 1, y[:, None]),
                "entropy": lambda p, y: entropy(p), "m_entropy": m_entropy, "prob": lambda p, y: p}
    result = {}
    for name, fn in features.items():
      member, nonmember, target = (fn(p, y).cpu().numpy().reshape(len(y), -1) for p, y in groups)
      clf = SVC(C=3, gamma="auto", kernel="rbf")
      clf.fit(np.concatenate([member, nonmember]), np.concatenate([np.ones(len(member)), np.zeros(len(nonmember))]))
      result[name] = 1 - clf.predict(target).mean()
    return result

  def evaluate(self, net):
    acc = {name: self.validate(net, self.loader(name)) for name in ("retain", "forget", "test")}
    return {"UA": 1 - acc["forget"] / 100, "RA": acc["retain"] / 100, "TA": acc["test"] / 100,
            "MIA": self.svc_mia(net)["confidence"]}

  def run(self) -> tuple[dict, dict]:
    seconds, out = {}, {}
    stages = {"Original": lambda: self.fit("train", _EPOCH_EVAL.value), "Retrain": lambda: self.fit("retain", False),
              "SalUn": lambda: self.salun(out["Original"]), "Eval": lambda: self.evaluate(out["SalUn"])}
    for stage, fn in stages.items():
      start = time.perf_counter()
      out[stage] = fn()
      if self.device == "cuda":
        self.torch.cuda.synchronize()
      seconds[stage] = time.perf_counter() - start
    original_ta = self.validate(out["Original"], self.loader("test", shuffle=False)) / 100
    return seconds, {"original_TA": original_ta, **out["Eval"]}


# ----------------------------------------------------------------------------------------------- report


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _fmt(x, digits=2):
  return "–" if x is None else f"{x:.{digits}f}"


def table(results: dict) -> str:
  """Seconds per stage: JAX cold (empty compilation cache) and warm (programs from the cache), PyTorch, ratios."""
  lines = ["| case | stage | JAX cold s | of which compile s | JAX warm s | PyTorch s | PyTorch / JAX cold | "
           "PyTorch / JAX warm |", "|---|---|---:|---:|---:|---:|---:|---:|"]
  keys = ("jax", "compile", "warm", "torch")
  totals = dict.fromkeys(keys, 0.0)
  ratio = lambda t, j: f"{t / j:.2f}x" if j and t else "–"
  for case, r in results.items():
    for stage in STAGES + ("Total",):
      if stage == "Total":
        j, c, w, t = (sum(r[k].values()) if r.get(k) else None for k in keys)
        for k, v in zip(keys, (j, c, w, t)):
          totals[k] += v or 0.0
      else:
        j, c, w, t = (r.get(k, {}).get(stage) for k in keys)
      name = f"**{stage}**" if stage == "Total" else stage
      lines.append(f"| {case} | {name} | {_fmt(j)} | {_fmt(c)} | {_fmt(w)} | {_fmt(t)} | {ratio(t, j)} | "
                   f"{ratio(t, w)} |")
  j, c, w, t = (totals[k] for k in keys)
  if j and t:
    lines.append(f"| all | **Total** | {j:.2f} | {c:.2f} | {w:.2f} | {t:.2f} | {ratio(t, j)} | {ratio(t, w)} |")
  return "\n".join(lines)


def metrics_table(results: dict) -> str:
  lines = ["| case | side | Original TA | SalUn UA | SalUn RA | SalUn TA | SalUn MIA | PyTorch loader s | "
           "PyTorch .item() s | PyTorch per-epoch eval s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for case, r in results.items():
    for side in ("jax", "torch"):
      m = r.get(f"{side}_metrics")
      if m is None:
        continue
      c = r.get("counters", {}) if side == "torch" else {}
      lines.append(f"| {case} | {side} | {100 * m['original_TA']:.1f} | {100 * m['UA']:.1f} | {100 * m['RA']:.1f} | "
                   f"{100 * m['TA']:.1f} | {100 * m['MIA']:.1f} | " + " | ".join(
                       _fmt(c.get(k)) for k in ("loader", "item", "epoch_eval")) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  if _SMOKE.value:
    for flag, value in (("cases", ["digits:mlp"]), ("epochs", 1), ("unlearn_epochs", 1)):
      flags.FLAGS[flag].value = value
  # cold: an empty persistent compilation cache; warm: the same pipeline again with the in-memory caches cleared
  # (jax.clear_caches), so every program comes from the persistent cache, as in a second process
  cache_dir = tempfile.mkdtemp(prefix="reference_pipeline_xla_")
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  compilation.enable_cache(cache_dir)
  jax.monitoring.register_event_duration_secs_listener(_on_event)
  load = os.getloadavg()
  results = {}
  for case in _CASES.value:
    dataset, _, model_name = case.partition(":")
    ds, splits, model, params, state = build(dataset, model_name)
    r = results[case] = {}
    if "jax" in _SIDES.value:
      r["jax"], r["compile"], r["jax_metrics"] = jax_pipeline(ds, splits, model, params, state)
      jax.clear_caches()
      r["warm"], r["warm_compile"], _ = jax_pipeline(ds, splits, model, params, state)
    if "torch" in _SIDES.value:
      pipeline = TorchPipeline(model_name, ds, splits, jax.device_get(params))
      r["torch"], r["torch_metrics"] = pipeline.run()
      r["counters"] = pipeline.counters
    print(f"{case}: " + ", ".join(f"{k} {sum(v.values()):.2f} s" for k, v in r.items()
                                  if k in ("jax", "compile", "warm", "torch")), flush=True)
  threads = ""
  if "torch" in _SIDES.value:
    import torch  # pylint: disable=g-import-not-at-top
    threads = f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
  print(f"\nDevice: {jax.devices()[0].platform} ({cpu_name()}, {os.cpu_count()} cores), jax {jax.__version__}"
        f"{threads}; load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min) at the start; "
        f"epochs {_EPOCHS.value}, SalUn epochs {_UNLEARN_EPOCHS.value}, batch {_BATCH.value}.\n")
  print(table(results))
  print()
  print(metrics_table(results))


if __name__ == "__main__":
  app.run(main)
