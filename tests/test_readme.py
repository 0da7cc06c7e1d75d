"""The README's promises: the two quick-start commands, the method list, a config per method."""
import os
import re

from unlearn_jax import unlearning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def test_quick_start_is_make_demo_and_make_test():
  block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
  commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
  assert commands == ["make demo", "make test"]
  makefile = open(os.path.join(ROOT, "Makefile")).read()
  assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
  assert "make test" in open(os.path.join(ROOT, ".ci", "run")).read()


def test_every_listed_unlearning_method_is_registered():
  table = README.split("## Unlearning methods", 1)[1].split("\n## ", 1)[0]
  listed = set(re.findall(r"^\| `([a-z_0-9]+)`(?:, `([a-z_0-9]+)`)?", table, re.M))
  names = {n for pair in listed for n in pair if n}
  assert len(names) >= 15
  assert names <= set(unlearning.names()), names - set(unlearning.names())


def test_every_registered_method_has_a_config_or_benchmark_entry():
  from configs import benchmark
  configs = {f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py")}
  for name in unlearning.REGISTRY:
    assert name in configs or name in benchmark.METHODS or name in ("lfssd", "wfisher"), name


def test_every_listed_lm_method_has_an_objective_and_a_config():
  from unlearn_jax.unlearning import language  # pylint: disable=g-import-not-at-top
  table = README.split("## Language-model unlearning", 1)[1].split("\n## ", 1)[0]
  names = set(re.findall(r"^\| `([a-z_0-9]+)`", table, re.M))
  assert names == set(language.METHODS), names ^ set(language.METHODS)
  for name in names:
    assert os.path.exists(os.path.join(ROOT, "configs", f"lm_{name}.py")), name


def test_use_it_in_your_own_jax_code_runs_and_forgets():
  """The README's own-NNX-network example: SalUn and SSD (keyword options) forget the class and keep the others,
  TIES merges two fine-tunes and `nnx.update` puts the result back into the network."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  block = README.split("## Use it in your own JAX code", 1)[1].split("```python", 1)[1].split("```", 1)[0]
  ns = {}
  exec(compile(block, "README.md", "exec"), ns)  # pylint: disable=exec-used
  scores = ns["scores"]
  assert scores["original"][0] > 0.95
  for name in ("salun", "ssd"):
    assert scores[name][0] < 0.1 and scores[name][1] > 0.75, (name, scores[name])
  for a, b in zip(jax.tree.leaves(nnx.state(ns["net"], nnx.Param)), jax.tree.leaves(ns["merged"])):
    np.testing.assert_array_equal(a, b)
  assert ns["merged_acc"] > 0.8
