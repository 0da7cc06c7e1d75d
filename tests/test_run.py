"""The experiment pipeline end to end: digits, the Orbax cache, mock CIFAR-10, bad configs, the entry point."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import original as original_config
from configs import retrain as retrain_config
from tests import subprocesses
from unlearn_jax import run as run_lib



def tiny(config, epochs=3):
  """Small and fast; most tests keep the default 3 epochs: the cosine schedule's length is compiled into the training
  step, so one length means one Original and one Retrain program, reused through the compilation cache."""
  for section in (config.train, config.retrain):
    section.epochs = epochs
  config.model.hidden = (64,)
  return config


def test_retrain_on_digits_writes_results_and_reuses_cache(tmp_path):
  config = tiny(retrain_config.get_config(), epochs=8)
  first = run_lib.run(config, tmp_path)
  assert first["restored"] == {"Original": False, "Retrain": False}
  results = json.loads((tmp_path / "results.json").read_text())
  assert list(results) == ["Retrain", "Original"]
  assert results["Original"]["TA"] > 0.9 and results["Retrain"]["TA"] > 0.9
  # the Original has seen the forget set; Retrain has not
  assert results["Original"]["UA"] <= results["Retrain"]["UA"]
  table = (tmp_path / "results.md").read_text()
  assert table.index("| Retrain") < table.index("| Original")
  run_info = json.loads((tmp_path / "run.json").read_text())
  assert len(run_info["forget_index"]) == round(0.1 * 1437)
  second = run_lib.run(config, tmp_path)
  assert second["restored"] == {"Original": True, "Retrain": True}
  assert second["results"] == first["results"]
  # a change to the retrain schedule retrains only Retrain
  config.retrain.lr = 0.02
  third = run_lib.run(config, tmp_path)
  assert third["restored"] == {"Original": True, "Retrain": False}


def test_original_config_trains_only_the_original(tmp_path):
  out = run_lib.run(tiny(original_config.get_config()), tmp_path)
  assert list(out["results"]) == ["Original"] and out["results"]["Original"]["TA"] > 0.85


def test_mock_cifar10_runs_through_the_same_pipeline(tmp_path):
  config = tiny(retrain_config.get_config("cnn"), epochs=1)
  config.dataset.name = "cifar10"
  config.dataset.augment = "cifar"
  config.train.batch_size = config.retrain.batch_size = 16
  with tfds.testing.mock_data(num_examples=64):
    out = run_lib.run(config, tmp_path)
  assert set(out["results"]) == {"Original", "Retrain"}
  assert (tmp_path / "results.md").exists()


@pytest.mark.parametrize("key,value,match", [
    ("forget.fraction", 1.5, "forget.fraction"),
    ("forget.fraction", 0.0, "forget.fraction"),
    ("dataset.name", "imagenet", "dataset.name"),
    ("model.name", "resnet9000", "model.name"),
    ("method.name", "magic", "method.name"),
    ("train.optimizer", "lbfgs", "train.optimizer"),
    ("retrain.epochs", 0, "retrain.epochs"),
    ("train.from_checkpoint", "/no/such/dir", "config.train.from_checkpoint='/no/such/dir': no such directory"),
    ("retrain.from_checkpoint", "model.safetensors", "config.retrain.from_checkpoint='model.safetensors': no such file"),
    ("retrain.checkpoint_every", -1, "config.retrain.checkpoint_every"),
    ("train.checkpoint_min_seconds", -1.0, "config.train.checkpoint_min_seconds"),
])
def test_bad_values_fail_before_any_work(tmp_path, key, value, match):
  config = retrain_config.get_config()
  section, field = key.split(".")
  config[section][field] = value
  with pytest.raises(ValueError, match=match):
    run_lib.run(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()


def test_unknown_key_in_code_built_config(tmp_path):
  config = retrain_config.get_config()
  config.unlock()
  config.dataset.colour = "blue"
  with pytest.raises(ValueError, match="config.dataset.colour"):
    run_lib.run(config, tmp_path / "w")


def test_entry_point_rejects_unknown_override(tmp_path):
  out = subprocesses.run_main("configs/retrain.py", tmp_path, "--config.train.learning_rate=0.1")
  assert out.returncode != 0 and "learning_rate" in out.stderr
  assert not (tmp_path / "results.json").exists()


def test_cifar10_gpu_config_is_valid_and_uses_reference_settings():
  from configs import salun as salun_config
  from unlearn_jax import config as config_lib
  config = salun_config.get_config("cifar10")
  config_lib.validate(config)
  assert (config.dataset.name, config.model.name, config.dataset.augment) == ("cifar10", "resnet18", "cifar")
  assert (config.method.lr, config.method.epochs, config.method.fraction) == (0.013, 10, 0.5)
  assert config.train.epochs == 182 and tuple(config.train.milestones) == (91, 136)


def test_class_forgetting_takes_every_row_of_the_class(tmp_path):
  config = tiny(retrain_config.get_config())
  config.forget.kind = "class"
  config.forget.classes = (3,)
  exp = run_lib.setup(config)
  import numpy as np
  assert set(np.asarray(exp.splits.forget.y).tolist()) == {3}
  assert 3 not in set(np.asarray(exp.splits.retain.y).tolist())
  out = run_lib.run(config, tmp_path)
  assert out["results"]["Retrain"]["UA"] == 1.0  # a class never seen is never predicted
  config.forget.class_fraction = 1.5
  with pytest.raises(ValueError, match="forget.class_fraction"):
    run_lib.run(config, tmp_path)


def test_worst_case_forget_set_runs_through_the_pipeline(tmp_path):
  config = tiny(retrain_config.get_config(), epochs=3)
  config.forget.kind = "worst_case"
  config.forget.worst_case_steps = 2
  out = run_lib.run(config, tmp_path)
  info = json.loads((tmp_path / "run.json").read_text())
  assert len(info["forget_index"]) == round(0.1 * 1437)
  random_rows = set(run_lib.setup(config).splits.forget_index.tolist())
  assert set(info["forget_index"]) != random_rows  # the selection replaced the stand-in random set
  assert set(out["results"]) == {"Original", "Retrain"}


def test_run_record_and_bring_your_own_checkpoints(tmp_path):
  """run.json records what reproduces the run; ``from_checkpoint`` loads a model instead of training it."""
  import datetime
  import jax
  config = tiny(original_config.get_config())
  first = run_lib.run(config, tmp_path / "a")
  info = json.loads((tmp_path / "a" / "run.json").read_text())
  assert set(info["versions"]) == {"python", "jax", "jaxlib", "flax", "optax", "orbax", "numpy"}
  assert info["versions"]["jax"] == jax.__version__ and all(info["versions"].values())
  assert info["device"]["count"] == jax.device_count() and info["device"]["kind"] == jax.devices()[0].device_kind
  assert info["seed"] == config.seed and info["config"]["train"]["epochs"] == 3
  assert info["git_commit"] is None or len(info["git_commit"]) == 40
  assert isinstance(info["command"], list)
  start, end = (datetime.datetime.fromisoformat(info[k]) for k in ("start_time", "end_time"))
  assert start <= end and info["resumed"] == {} and info["sources"] == {}

  (original_dir,) = (tmp_path / "a" / "cache").glob("original-*")
  config = tiny(retrain_config.get_config())
  config.train.from_checkpoint = config.retrain.from_checkpoint = str(original_dir)
  out = run_lib.run(config, tmp_path / "b")
  assert out["restored"] == {"Original": True, "Retrain": True}
  assert not (tmp_path / "b" / "cache").exists()  # nothing was trained
  for row in ("Original", "Retrain"):  # both rows score the model of the first run
    for key in ("UA", "RA", "TA"):
      assert out["results"][row][key] == first["results"]["Original"][key]
  assert out["results"]["Retrain"]["KL_test"] == pytest.approx(0.0, abs=1e-9)
  info = json.loads((tmp_path / "b" / "run.json").read_text())
  assert info["sources"] == {"Original": str(original_dir), "Retrain": str(original_dir)}

  # a checkpoint of another width fails before any work, naming the key, the path and the leaf
  config.model.hidden = (32,)
  with pytest.raises(ValueError, match=rf"config.train.from_checkpoint: checkpoint {original_dir} does not match "
                                       rf"the model: params/Dense_0/bias: stored shape \(64,\), expected \(32,\)"):
    run_lib.run(config, tmp_path / "c")
  assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("section", ["train", "retrain"])
def test_empty_checkpoint_dir_fails_before_any_work(tmp_path, section):
  (tmp_path / "empty").mkdir()
  config = retrain_config.get_config()
  config[section].from_checkpoint = str(tmp_path / "empty")
  with pytest.raises(ValueError, match=rf"config.{section}.from_checkpoint=.*holds no complete checkpoint"):
    run_lib.run(config, tmp_path / "w")


def test_stale_cache_of_another_shape_fails_before_any_work(tmp_path):
  """A cache or progress checkpoint that does not fit the model is reported, not silently retrained over."""
  import jax.numpy as jnp
  from unlearn_jax import checkpoint
  from unlearn_jax import train
  config = tiny(retrain_config.get_config(), epochs=1)
  exp = run_lib.setup(config)
  _, _, parts, _ = run_lib._stage(exp, "retrain")
  directory = run_lib._cache_dir(tmp_path, "retrain", *parts)
  params = {**exp.init()[0], "Dense_1": {"kernel": jnp.zeros((64, 7)), "bias": jnp.zeros(7)}}  # another head
  opt_state = train.make_optimizer(config.retrain, 1).init(params)
  with checkpoint.EpochCheckpoints(directory / "progress") as progress:
    progress.save(1, {"params": params, "state": {}, "opt_state": opt_state}, {"epoch": 1, "epochs": 1})
  with pytest.raises(ValueError, match=rf"{directory / 'progress'} does not match the model: \S*Dense_1/bias: "
                                       rf"stored shape \(7,\), expected \(10,\)"):
    run_lib.run(config, tmp_path)
  checkpoint.save(directory, params, {}, {})
  with pytest.raises(ValueError, match=rf"{directory} does not match the model: params/Dense_1/bias"):
    run_lib.run(config, tmp_path)
  assert not (tmp_path / "run.json").exists() and not (tmp_path / "results.json").exists()
  assert not list(tmp_path.glob("cache/original-*"))  # the Original was not trained first


def test_original_from_a_pytorch_state_dict(tmp_path):
  """A torchvision-style ResNet ``state_dict`` file stands in for the Original: same logits as the exported model."""
  from unlearn_jax import torch_io  # pylint: disable=g-import-not-at-top
  config = retrain_config.get_config()
  config.model.name, config.model.width = "resnet20", 1
  exp = run_lib.setup(config)
  params, state = exp.init()
  params = jax.tree.map(lambda p: p + 0.01 * jnp.sign(p), params)  # not the initialisation the run would make
  path = tmp_path / "original.safetensors"
  torch_io.save_torch_checkpoint(path, torch_io.export_resnet(params, state))
  config.train.from_checkpoint = str(path)
  exp = run_lib.setup(config)
  p2, s2, meta, restored = run_lib.original(exp, tmp_path / "w")
  assert restored and meta["source"] == str(path)
  x = exp.dataset.test.x[:8]
  np.testing.assert_allclose(exp.model.apply(p2, s2, x, train=False)[0],
                             exp.model.apply(params, state, x, train=False)[0], rtol=1e-5, atol=1e-5)
  bad = tmp_path / "bad.safetensors"
  tensors = torch_io.export_resnet(params, state)
  tensors.pop("fc.bias")
  torch_io.save_torch_checkpoint(bad, tensors)
  config.retrain.from_checkpoint = str(bad)
  with pytest.raises(ValueError, match="config.retrain.from_checkpoint=.*fc.bias"):
    run_lib.setup(config)


def test_verdict_says_whether_the_method_beats_the_original():
  retrain = {"UA": 0.10, "RA": 1.0, "TA": 0.9, "MIA": 0.2}
  original = {"UA": 0.0, "RA": 1.0, "TA": 0.9, "MIA": 0.0}  # gap (10 + 20) / 4 = 7.5 points
  better = {"UA": 0.08, "RA": 1.0, "TA": 0.9, "MIA": 0.2}  # gap 0.5
  worse = {"UA": 0.5, "RA": 0.8, "TA": 0.7, "MIA": 0.9}
  line = run_lib.verdict({"Retrain": retrain, "Original": original, "m": better}, "m")
  assert line == ("verdict: m is closer to Retrain than the Original is (Avg. Gap 0.50 vs 7.50); m vs Retrain per "
                  "column (points): UA 2.00, RA 0.00, TA 0.00, MIA 0.00.")
  assert "does NOT beat" in run_lib.verdict({"Retrain": retrain, "Original": original, "m": worse}, "m")
  no_mia = {row: {k: v for k, v in r.items() if k != "MIA"} for row, r in (("Retrain", retrain),
                                                                           ("Original", original), ("m", better))}
  assert run_lib.verdict(no_mia, "m") == ("verdict: m is closer to Retrain than the Original is (Avg. Gap 0.67 vs "
                                          "3.33); m vs Retrain per column (points): UA 2.00, RA 0.00, TA 0.00.")


def test_layers_run_one_way_and_every_study_registers_its_name():
  """run.py imports no study (studies import run.py); each `run.STUDIES` module registers the name it is listed under
  when `run.pipeline` imports it, and an unknown name fails with the full list."""
  import ast  # pylint: disable=g-import-not-at-top
  tree = ast.parse(open(run_lib.__file__).read())
  imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
  imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
  assert not [m for m in imported if m and "studies" in m], imported
  for name, module in run_lib.STUDIES.items():
    assert run_lib.pipeline(name).__module__ == module, name
  with pytest.raises(ValueError, match=r"config.experiment='nope': unknown; choose one of \[.*'merge'.*'unlearning'"):
    run_lib.pipeline("nope")
