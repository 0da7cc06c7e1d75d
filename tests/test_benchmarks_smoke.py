"""Cheap checks of benchmarks/reference_pipeline.py, benchmarks/gpu_table.py and benchmarks/gpu.sh.

The PyTorch checks skip without torch (CI has none). The GPU script itself is exercised by
``bash benchmarks/gpu.sh --smoke`` (minutes), not here.
"""
import importlib.util
import pathlib
import subprocess

import jax
import numpy as np
import pytest
from absl import flags

from unlearn_jax import model as model_lib
from unlearn_jax import models


BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
  spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def ref():
  module = _load("reference_pipeline")
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(["test"])
  return module


@pytest.mark.parametrize("model_name,shape", [("mlp", (8, 8, 1)), ("cnn", (8, 8, 1)), ("cnn1d", (40, 1))])
def test_torch_twin_computes_the_jax_logits(ref, model_name, shape):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).standard_normal((16,) + shape).astype(np.float32)
  module = models.get_model(model_name, 10, **({"features": (256, 256)} if model_name == "mlp" else {}))
  model, params, state = model_lib.init(module, jax.random.key(0), x[:1])
  want = np.asarray(model.apply(params, state, x, train=False)[0])
  net = ref.torch_net(model_name, jax.device_get(params))
  tx = torch.tensor(x if model_name == "mlp" else np.ascontiguousarray(np.moveaxis(x, -1, 1)))
  with torch.no_grad():
    got = net(tx).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_torch_salun_mask_and_masked_step(ref):
  torch = pytest.importorskip("torch")
  ds, splits, _, params, _ = ref.build("digits", "mlp")
  pipeline = ref.TorchPipeline("mlp", ds, splits, jax.device_get(params))
  net = pipeline.new_net()
  torch.manual_seed(0)
  mask = pipeline.saliency_mask(net)
  sizes = sum(m.numel() for m in mask.values())
  assert sum(int(m.sum()) for m in mask.values()) == int(sizes * ref._FRACTION.value)
  # the masked weights are those of largest |sum of forget-batch gradients| (same shuffle: batch means differ)
  net.zero_grad()
  torch.manual_seed(0)
  for image, target in pipeline.loader("forget"):
    (-torch.nn.functional.cross_entropy(net(image), target)).backward()
  scores = torch.cat([p.grad.abs().flatten() for p in net.parameters()])
  chosen = torch.cat([mask[n].flatten() for n, _ in net.named_parameters()]).bool()
  assert scores[chosen].min() >= scores[~chosen].max() - 1e-12
  # a masked SGD step: masked-out entries move by weight decay only (gradient mask, the default) or not at all
  # with their momentum zeroed (theta0 given: --torch_restore)
  theta0 = {n: p.detach().clone() for n, p in net.named_parameters()}
  image, target = next(iter(pipeline.loader("retain")))
  for restore in (False, True):
    net.load_state_dict({n: t.clone() for n, t in theta0.items()})
    opt = pipeline.optimizer(net, 0.1)
    pipeline.step(net, opt, image, target, mask, theta0 if restore else None)
    for n, p in net.named_parameters():
      frozen = mask[n] == 0
      decayed = theta0[n][frozen] * (1 - 0.1 * ref.WEIGHT_DECAY)
      torch.testing.assert_close(p.detach()[frozen], theta0[n][frozen] if restore else decayed)
      momentum = opt.state[p]["momentum_buffer"][frozen]  # first step: masked gradient (0) + weight decay
      torch.testing.assert_close(momentum, torch.zeros_like(momentum) if restore
                                 else ref.WEIGHT_DECAY * theta0[n][frozen])
      assert (p.detach()[~frozen] != theta0[n][~frozen]).any()


LOGS = {
    "train": "device=cpu model=resnet18\nfirst epoch (compile + run): 10.60 s; steady epoch: 5.70 s; 1.4 images/s\n",
    "salun": ("jax: first epoch 12.30 s, steady epoch 2.10 s, 100.5 images/s\n"
              "torch: first epoch 3.00 s, steady epoch 1.05 s, 201.0 images/s\nratio jax/torch = 0.50\n"),
    "lm": ("jax: params=1,136,256 first step 0.52 s, steady 0.127 s/step, 8,070.0 tokens/s, 1.2 GFLOP/s (6ND), "
           "MFU 17.0%\ntorch: params=1,136,256 first step 0.20 s, steady 0.078 s/step, 13,202.0 tokens/s, "
           "2.0 GFLOP/s (6ND), MFU n/a\nratio jax/torch (tokens/s) = 0.61\n"),
    "merge": "linear: 1.00 s, peak 2 GiB\n\n| Method | k |\n|---|---|\n| linear | 8 |\n",
}


def test_gpu_table_reads_each_script_format(tmp_path):
  table = _load("gpu_table")
  train, salun, lm, merge = (table.parse(LOGS[k]) for k in ("train", "salun", "lm", "merge"))
  assert train["jax"] == {"rate": "1.4 images/s", "first": "10.60"} and not train["torch"]
  assert salun["jax"]["rate"] == "100.5 images/s" and salun["torch"]["rate"] == "201.0 images/s"
  assert salun["ratio"] == "0.50" and salun["jax"]["first"] == "12.30"
  assert lm["jax"] == {"rate": "8,070.0 tokens/s", "first": "0.52", "mfu": "17.0%"} and lm["ratio"] == "0.61"
  assert merge["table"] == ["| Method | k |", "|---|---|", "| linear | 8 |"] and not merge["jax"]
  manifest = tmp_path / "manifest.tsv"
  lines = []
  for name, status in (("salun", "0"), ("merge", "124"), ("lm", "skipped")):
    (tmp_path / f"{name}.log").write_text(LOGS[name] if status != "skipped" else "")
    lines.append(f"{name}\t{status}\t7\t{tmp_path / f'{name}.log'}\tbenchmarks/{name}.py --x=1")
  manifest.write_text("\n".join(lines) + "\n")
  md = table.render(str(manifest), "NVIDIA H200")
  assert md.startswith("Device: NVIDIA H200")
  assert ("| salun | `benchmarks/salun.py --x=1` | 100.5 images/s (first 12.30 s) | 201.0 images/s "
          "(first 3.00 s) | 0.50 | 7 | ok |") in md
  assert "| merge | `benchmarks/merge.py --x=1` | table below | – | – | 7 | timed out |" in md
  assert "skipped (time budget)" in md and "\nmerge:\n\n| Method | k |" in md


def test_gpu_sh_parses():
  subprocess.run(["bash", "-n", str(BENCH / "gpu.sh")], check=True)
