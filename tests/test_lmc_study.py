"""The rebasin and width_lmc pipelines end to end on digits and MNIST-1D (tiny settings)."""
import json

import jax
import numpy as np
import pytest

import unlearn_jax.studies.lmc as lmc  # registers the pipelines
from configs import rebasin as rebasin_config
from configs import width_lmc as width_config
from unlearn_jax import run


def test_rebasin_writes_curves_and_plot_and_weight_matching_cuts_the_barrier(tmp_path):
  config = rebasin_config.get_config()
  config.train.epochs = 12
  config.lmc.num_points = 3
  config.lmc.ste_epochs = 1
  config.lmc.merge_seeds = ()  # the merge of several models: test_rebasin_merges_many_models
  out = run.run(config, tmp_path)
  assert out["restored"] == [False, False]
  results = json.loads((tmp_path / "results.json").read_text())
  curves = json.loads((tmp_path / "curves.json").read_text())
  assert (tmp_path / "rebasin.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "| weight | repair |" in (tmp_path / "results.md").read_text()
  assert set(curves) == {"naive", "weight", "activation", "ste"}
  for method in curves:
    for correction in ("none", "repair"):
      row = curves[method][correction]["train"]
      assert row["alpha"] == [0.0, 0.5, 1.0] and len(row["loss"]) == 3
  barriers = results["barriers"]
  naive = barriers["naive"]["none"]["train"]["loss_barrier"]
  weight = barriers["weight"]["none"]["train"]["loss_barrier"]
  assert naive > 0.1 and weight < naive / 3
  assert results["endpoints"]["A"]["test_accuracy"] > 0.9 and results["endpoints"]["B"]["test_accuracy"] > 0.9
  # the two endpoints come from the cache the second time
  config.lmc.methods, config.lmc.corrections, config.lmc.num_points = ("naive",), ("none",), 2
  assert run.run(config, tmp_path)["restored"] == [True, True]


def _random_endpoints(exp, config, module, workdir, seeds, extra=()):
  """Stands in for training: random ResNet-20 weights (the pipeline's plumbing is what is tested here)."""
  del workdir, extra
  assert config.model.name != "resnet20" or config.model.width == 1
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), exp.dataset.train.x[:1], train=False))
  out = []
  for seed in seeds:
    rng = np.random.default_rng(seed)
    variables = jax.tree.map(lambda s: (rng.normal(size=s.shape) / np.sqrt(max(1, np.prod(s.shape[:-1])))
                                        ).astype(np.float32), dict(shapes))
    params = variables.pop("params")
    variables = jax.tree.map(lambda v: np.abs(v) + 0.5, variables)  # positive running variances
    out.append((params, variables, False))
  return out


def test_width_lmc_resnet20_writes_barriers_per_width(tmp_path, monkeypatch):
  monkeypatch.setattr(lmc, "train_endpoints", _random_endpoints)
  config = width_config.get_config("resnet20")
  config.lmc.widths = (1,)
  config.lmc.num_points = 3
  out = run.run(config, tmp_path)
  results = json.loads((tmp_path / "results.json").read_text())
  row = results["widths"]["1"]["barriers"]["weight"]["reset_bn"]["test"]
  assert set(row) == {"loss_barrier", "accuracy_barrier", "calibrated_loss_barrier"}
  curve = json.loads((tmp_path / "curves.json").read_text())["1"][0]["naive"]["reset_bn"]["train"]
  assert len(curve["temperature"]) == 3 and len(curve["calibrated_loss"]) == 3
  assert (tmp_path / "width_lmc.png").read_bytes()[:4] == b"\x89PNG"
  assert out["restored"] == {"1": [False, False]}


def test_rebasin_reports_l2_distances_and_merges_many_models(tmp_path, monkeypatch):
  endpoints = []
  monkeypatch.setattr(lmc, "train_endpoints", lambda *a, **k: endpoints.extend(_random_endpoints(*a, **k))
                      or endpoints)
  config = rebasin_config.get_config()
  config.lmc.update(dict(methods=("naive", "weight"), corrections=("none",), num_points=2, merge_seeds=(3,),
                         merge_methods=("average", "weight", "merge_many"), max_iter=20))  # ste: align() as above
  out = run.run(config, tmp_path)
  results = json.loads((tmp_path / "results.json").read_text())
  l2 = results["l2_distance"]
  assert set(l2) == {"naive", "weight"} and 0 < l2["weight"] <= l2["naive"]
  merged = results["merge_many"]
  assert list(merged["merged"]) == ["average", "weight", "merge_many"]
  assert set(merged["merged"]["weight"]) == {"train_loss", "train_accuracy", "test_loss", "test_accuracy"}
  # aligning to model 0 can only bring the others closer to it than the unaligned average does
  assert merged["l2_to_first"]["weight"] <= merged["l2_to_first"]["average"]
  # the unaligned average against NumPy's norms of the three models' flattened parameters
  flat = [np.concatenate([np.ravel(x).astype(np.float64) for x in jax.tree.leaves(p)]) for p, _, _ in endpoints]
  assert len(flat) == 3 and l2["naive"] == pytest.approx(np.linalg.norm(flat[0] - flat[1]), rel=1e-5)
  assert merged["l2_to_first"]["average"] == pytest.approx(
      np.mean([np.linalg.norm(flat[0] - f) for f in flat[1:]]), rel=1e-5)
  mean = np.mean(flat, axis=0)
  assert merged["l2_to_merged"]["average"] == pytest.approx(np.mean([np.linalg.norm(mean - f) for f in flat]),
                                                            rel=1e-5)
  assert "| merge_many |" in out["table"] and "| weight |" in out["table"] and "L2 distance" in out["table"]


@pytest.mark.parametrize("key,value,match", [
    ("bogus", 1, "config.lmc.bogus"),
    ("methods", ("naive", "magic"), "config.lmc.methods"),
    ("corrections", ("bn",), "config.lmc.corrections"),
    ("seeds", (1, 1), "config.lmc.seeds"),
    ("seeds", (1, 2, 3), "config.lmc.seeds"),
    ("singular_k", -1, "config.lmc.singular_k"),
    ("merge_seeds", (2,), "config.lmc.merge_seeds"),
    ("merge_methods", ("magic",), "config.lmc.merge_methods"),
])
def test_bad_lmc_options_fail_before_any_work(tmp_path, key, value, match):
  config = rebasin_config.get_config()
  with config.unlocked():
    config.lmc[key] = value
  with pytest.raises(ValueError, match=match):
    run.run(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()


def test_width_lmc_mlp_on_mnist1d_two_pairs_with_lewc_and_singular_alignment(tmp_path):
  config = width_config.get_config()
  config.lmc.widths = (1, 2)
  config.lmc.num_points = 3
  config.train.epochs = 2
  out = run.run(config, tmp_path)
  results = json.loads((tmp_path / "results.json").read_text())
  row = results["widths"]["2"]
  assert row["params"] == 40 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
  assert [p["seeds"] for p in row["pairs"]] == [[1, 2], [3, 4]]
  pairs = [p["barriers"]["naive"]["none"]["train"]["loss_barrier"] for p in row["pairs"]]
  assert row["barriers"]["naive"]["none"]["train"]["loss_barrier"] == pytest.approx(np.mean(pairs))
  assert row["barriers_spread"]["naive"]["none"]["train"]["loss_barrier"] == pytest.approx(np.ptp(pairs) / 2)
  lewc = row["pairs"][0]["lewc"]["naive"]
  assert list(lewc) == ["Dense_0", "Dense_1", "Dense_2"]
  assert lewc["Dense_0"]["residual"] < 1e-5  # the first layer is affine in the weights
  assert lewc["Dense_2"]["lewc_weight_a"] == pytest.approx(0.125)
  sv = row["pairs"][0]["singular_alignment"]
  assert set(sv) == {"naive", "weight"} and sv["naive"]["Dense_1"]["k"] == 8
  assert "| 2 | 2,698 |" in out["table"] and "singular alignment" in out["table"]
  assert (tmp_path / "width_lmc.png").read_bytes()[:4] == b"\x89PNG"
  assert out["restored"] == {"1": [False] * 4, "2": [False] * 4}


def test_width_lmc_cnn1d_base_channels_join_the_cache_key(tmp_path):
  config = width_config.get_config("cnn1d")
  config.lmc.update(dict(widths=(1,), seeds=(1, 2), num_points=2, singular_k=2))
  config.train.epochs = 1
  first = run.run(config, tmp_path)
  assert first["results"]["widths"]["1"]["params"] == 5 * 2 + 2 + 2 * (3 * 2 * 2 + 2) + 5 * 2 * 10 + 10
  assert list(first["results"]["widths"]["1"]["pairs"][0]["lewc"]["weight"]) == ["conv_0", "conv_1", "conv_2",
                                                                               "fc"]
  config.lmc.channels = (3, 2, 2)  # another model: trained anew, not restored from the (2, 2, 2) cache
  assert run.run(config, tmp_path)["restored"] == {"1": [False, False]}


def test_width_lmc_needs_a_width_model(tmp_path):
  config = width_config.get_config()
  config.model.name = "cnn"
  with pytest.raises(ValueError, match="config.model.name='cnn'"):
    run.run(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()
  config = rebasin_config.get_config()
  config.lmc.seeds, config.lmc.merge_seeds = (1, 2, 3, 4), ()
  with pytest.raises(ValueError, match="exactly two seeds"):
    run.run(config, tmp_path / "w")
