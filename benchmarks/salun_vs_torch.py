r"""SalUn unlearning-step throughput: unlearn_jax vs a plain PyTorch loop, same model, batch and device.

Both sides run SalUn's random-label epoch on CIFAR-shaped synthetic data with a CIFAR ResNet-18: every forget
batch (random wrong labels), then every retain batch (true labels), SGD with momentum 0.9 and weight decay 5e-4,
updates restricted to the top 50% of weights by forget-gradient saliency (the PyTorch side masks gradients and
restores masked weights, as the SalUn code does). Throughput is images/s over the epochs after the first
(which includes compilation / cuDNN autotuning); the ratio is JAX / PyTorch from one run. ``--dtype=bfloat16``
computes in bfloat16 on both sides (JAX: the model's compute dtype, parameters float32; PyTorch: ``torch.autocast``).

  python benchmarks/salun_vs_torch.py --num_forget=256 --num_retain=768 --batch_size=64 --epochs=3   # CPU
  python benchmarks/salun_vs_torch.py --num_forget=5000 --num_retain=45000 --batch_size=256 --epochs=3  # GPU

Needs ``torch`` (not a dependency of unlearn_jax).
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from unlearn_jax import config as config_lib
from unlearn_jax import data
from unlearn_jax import model as model_lib
from unlearn_jax import models
from unlearn_jax import torch_io
from unlearn_jax import train
from unlearn_jax.unlearning import loop
from unlearn_jax.unlearning import methods
from unlearn_jax.unlearning import saliency

_FORGET = flags.DEFINE_integer("num_forget", 256, "Forget-set size.")
_RETAIN = flags.DEFINE_integer("num_retain", 768, "Retain-set size.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs (the first is warm-up).")
_SIDES = flags.DEFINE_list("sides", ["jax", "torch"], "Which implementations to time.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (parameters float32).")


def jax_side(forget, retain):
  module = models.get_model("resnet18", 10, dtype=jnp.dtype(_DTYPE.value))
  model, params, state = model_lib.init(module, jax.random.key(0), forget.x[:1])
  mask = saliency.saliency_mask(saliency.forget_saliency(model, params, state, forget, batch_size=_BATCH.value),
                                fraction=0.5)
  opts = config_lib.train_config(lr=0.013, momentum=0.9, nesterov=False, weight_decay=5e-4, schedule="constant",
                                 epochs=_EPOCHS.value, batch_size=_BATCH.value)
  steps = forget.num_batches(_BATCH.value) + retain.num_batches(_BATCH.value)
  _, _, hist = loop.unlearn_loop(model, params, state, forget, retain, objective=methods.rl_objective(model, True),
                                 tx=train.make_optimizer(opts, steps), epochs=_EPOCHS.value,
                                 batch_size=_BATCH.value, rng=jax.random.key(1), mask=mask)
  return hist["epoch_seconds"]


def torch_side(forget, retain):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  device = "cuda" if torch.cuda.is_available() else "cpu"

  # the same CIFAR ResNet-18 as the JAX side (torchvision naming)
  net = torch_io.torch_resnet(models.get_model("resnet18", 10)).to(device).to(memory_format=torch.channels_last)
  to_t = lambda a: torch.from_numpy(np.asarray(a)).to(device)
  fx, fy = to_t(forget.x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last), to_t(forget.y).long()
  rx, ry = to_t(retain.x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last), to_t(retain.y).long()
  crit = nn.CrossEntropyLoss()
  autocast = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=_DTYPE.value == "bfloat16")

  def loss_of(x, y):
    with autocast():
      logits = net(x)
    return crit(logits.float(), y)

  net.eval()
  net.zero_grad()
  for i in range(0, len(fx), _BATCH.value):
    loss_of(fx[i:i + _BATCH.value], fy[i:i + _BATCH.value]).backward()
  scores = torch.cat([p.grad.abs().flatten() for p in net.parameters()])
  k = int(scores.numel() * 0.5)
  threshold = torch.topk(scores, k).values[-1]
  mask = [(p.grad.abs() >= threshold).float() for p in net.parameters()]
  theta0 = [p.detach().clone() for p in net.parameters()]
  opt = torch.optim.SGD(net.parameters(), lr=0.013, momentum=0.9, weight_decay=5e-4)
  net.train()

  def step(x, y):
    opt.zero_grad(set_to_none=True)
    loss_of(x, y).backward()
    for p, m in zip(net.parameters(), mask):
      p.grad.mul_(m)
    opt.step()
    with torch.no_grad():
      for p, m, p0 in zip(net.parameters(), mask, theta0):
        p.mul_(m).add_(p0 * (1 - m))

  times = []
  for _ in range(_EPOCHS.value):
    start = time.perf_counter()
    perm = torch.randperm(len(fx), device=device)
    for i in range(0, len(fx) - _BATCH.value + 1, _BATCH.value):
      idx = perm[i:i + _BATCH.value]
      y = fy[idx]
      fake = (y + torch.randint(1, 10, y.shape, device=device)) % 10
      step(fx[idx], fake)
    perm = torch.randperm(len(rx), device=device)
    for i in range(0, len(rx) - _BATCH.value + 1, _BATCH.value):
      idx = perm[i:i + _BATCH.value]
      step(rx[idx], ry[idx])
    if device == "cuda":
      torch.cuda.synchronize()
    times.append(time.perf_counter() - start)
  return times


def main(argv):
  del argv
  ds = data.load_dataset("synthetic", seed=0, image_shape=(32, 32, 3), num_train=_FORGET.value + _RETAIN.value,
                         num_test=10)
  forget, retain = ds.train.take(np.arange(_FORGET.value)), ds.train.take(np.arange(_FORGET.value, ds.train.size))
  images = (forget.size // _BATCH.value + retain.size // _BATCH.value) * _BATCH.value
  rates = {}
  for side in _SIDES.value:
    times = {"jax": jax_side, "torch": torch_side}[side](forget, retain)
    steady = float(np.mean(times[1:]))
    rates[side] = images / steady
    print(f"{side}: first epoch {times[0]:.2f} s, steady epoch {steady:.2f} s, {rates[side]:.1f} images/s")
  print(f"device={jax.devices()[0].device_kind} images/epoch={images} batch={_BATCH.value} dtype={_DTYPE.value}")
  if len(rates) == 2:
    print(f"ratio jax/torch = {rates['jax'] / rates['torch']:.2f}")


if __name__ == "__main__":
  app.run(main)
