"""The merge_datasets study on a tiny config: the table's rows and arithmetic, the cache, the pixel permutation and
the config errors."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from configs import merge_datasets as merge_datasets_config
from unlearn_jax import run
from unlearn_jax.data.split import Split
from unlearn_jax.studies import merge_datasets


def tiny_config():
  config = merge_datasets_config.get_config()
  config.model.hidden = (16,)
  config.train.epochs = 2
  config.merge_datasets.update(dict(
      images_per_class=2, gm_iterations=2, gm_outer_loop=2, gm_inner_loop=1, dm_iterations=3, ste_epochs=1,
      ste_condensed_epochs=1, scratch_epochs=1, max_iter=5,
      ste_batch_size=40))  # the condensed union's size (2 per class x 10 x 2): one STE step program for all data
  return config


def test_permute_pixels_reorders_features():
  x = jnp.arange(2 * 2 * 3 * 1, dtype=jnp.float32).reshape(2, 2, 3, 1)
  split = Split(x, jnp.zeros(2, jnp.int32))
  perm = np.array([5, 4, 3, 2, 1, 0])
  out = merge_datasets.permute_pixels(split, perm)
  np.testing.assert_array_equal(np.asarray(out.x).reshape(2, -1), [[5, 4, 3, 2, 1, 0], [11, 10, 9, 8, 7, 6]])
  with pytest.raises(ValueError, match="perm has shape"):
    merge_datasets.permute_pixels(split, np.arange(5))


def test_gains_and_fractions():
  rows = {"WM + average": {"data": "none", "gain": 0.0}, "A": {"data": "real", "gain": 0.2},
          "B": {"data": "real", "gain": 0.1}, "C (gm)": {"data": "gm", "gain": 0.05},
          "Scratch on condensed (gm)": {"data": "gm", "gain": 0.5}, "Model A": {"data": "endpoint", "gain": 0.9}}
  out = merge_datasets.gains(rows)
  assert out["best_gain"] == {"real": 0.2, "gm": 0.05}
  assert out["fraction_of_real_gain"] == {"gm": pytest.approx(0.25)}


def test_pipeline_rows_cache_and_files(tmp_path):
  first = run.run(tiny_config(), tmp_path)
  rows = first["results"]["rows"]
  expected = {"Model A (digits)", "Model B (digits (permuted pixels))", "Average", "WM + average"}
  for suffix in ("", " (gm)", " (dm)"):
    expected |= {f"{m}{suffix}" for m in ("AM + average", "STE + average", "WM + RegMean", "WM + Fisher")}
  expected |= {"Scratch on condensed (gm)", "Scratch on condensed (dm)"}
  assert set(rows) == expected
  for r in rows.values():
    assert 0 <= r["acc_a"] <= 1 and 0 <= r["acc_b"] <= 1
    assert r["mean"] == pytest.approx((r["acc_a"] + r["acc_b"]) / 2)
    assert r["gain"] == pytest.approx(r["mean"] - rows["WM + average"]["mean"])
  # A is scored on its own test set far above B's (the pixel permutation changes the task for a trained MLP)
  assert rows["Model A (digits)"]["acc_a"] > rows["Model A (digits)"]["acc_b"]
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["rows"].keys() == rows.keys() and "best_gain" in saved
  assert "| WM + RegMean (dm) |" in (tmp_path / "results.md").read_text()
  assert not any(first["restored"].values())
  second = run.run(tiny_config(), tmp_path)
  assert all(second["restored"].values())
  for name in ("Model A (digits)", "Average", "WM + RegMean (gm)"):
    assert second["results"]["rows"][name]["mean"] == rows[name]["mean"]


@pytest.mark.parametrize("key,value,match", [
    ("merge_datasets.condense", ("gm", "kmeans"), r"config.merge_datasets.condense=.*choose from"),
    ("merge_datasets.images_per_class", 0, r"config.merge_datasets.images_per_class=0"),
    ("merge_datasets.regmean_alpha", 2.0, r"config.merge_datasets.regmean_alpha=2.0"),
    ("dataset.name", "synthetic", r"config.dataset.name='synthetic'"),
])
def test_bad_values_name_the_key(key, value, match, tmp_path):
  config = tiny_config()
  section, name = key.split(".")
  with config.unlocked():
    config[section][name] = value
  with pytest.raises(ValueError, match=match):
    run.run(config, tmp_path)
  assert not (tmp_path / "results.json").exists()


def test_unknown_key_is_named(tmp_path):
  config = tiny_config()
  with config.unlocked():
    config.merge_datasets.typo = 1
  with pytest.raises(ValueError, match="config.merge_datasets.typo"):
    run.run(config, tmp_path)
