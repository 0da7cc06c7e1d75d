"""The population study end to end on :tiny_test: populations trained and cached, methods over the model axis,
the metric table with its noise-floor row, the KLoM histogram."""
import json

import jax
import numpy as np
import pytest

from configs import population as population_config
from unlearn_jax import run as run_lib
from unlearn_jax.studies import population as study


def test_population_study_tiny_end_to_end(tmp_path):
  config = population_config.get_config("tiny_test")
  settings = tmp_path / "settings.json"  # what a tuned benchmark run writes
  settings.write_text(json.dumps({"salun": {"lr": 0.05, "fraction": 0.5}, "ssd": {"alpha": 10.0}}))
  config.population.settings.random = str(settings)
  out = run_lib.run(config, tmp_path / "w")
  rows = json.loads((tmp_path / "w" / "results.json").read_text())["results"]["random"]
  assert list(rows) == [study.FLOOR, "Original", "salun", "ssd"]
  assert rows["salun"]["how"] == "vmapped" and rows["ssd"]["how"] == "one_shot"
  assert rows["ssd"]["setting"] == {"alpha": 10.0} and rows["salun"]["setting"] == {"lr": 0.05, "fraction": 0.5}
  for row in rows.values():
    assert 0.0 <= row["ulira_accuracy"] <= 1.0 and np.isfinite(row["klom_p95_forget"]) and row["avg_gap"] >= 0
  assert "| Retrain vs Retrain (floor) | trained |" in out["table"]
  assert (tmp_path / "w" / "klom_random.png").stat().st_size > 1000
  # the populations are cached: a second call restores them
  exp = run_lib.setup(study._kind_config(config, "random"), extra_sections=("population",))
  params, _, _, restored = study.train_population(exp, tmp_path / "w", "retrain", 4)
  assert restored and jax.tree.leaves(params)[0].shape[0] == 4


def test_population_study_refuses_bad_config_before_work(tmp_path):
  config = population_config.get_config("tiny_test")
  config.population.size = 1
  with pytest.raises(ValueError, match=r"config.population.size=1: a population needs at least 2 models"):
    run_lib.run(config, tmp_path)
  config = population_config.get_config("tiny_test")
  config.population.settings.random = str(tmp_path / "missing.json")
  with pytest.raises(ValueError, match=r"config.population.settings.random=.*: no such file"):
    run_lib.run(config, tmp_path)
  for bad, why in (({"ssd": {"lr": 0.1}}, r"ssd.lr: not a swept option of ssd \(expected \('alpha',\)\)"),
                   ({"salun": {"lr": -1.0}}, r"salun.lr=-1.0: must be a finite number, > 0"), ([1], "expected a JSON object")):
    config = population_config.get_config("tiny_test")
    config.population.settings.random = str(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"config.population.settings.random=.*bad.json.*: " + why):
      run_lib.run(config, tmp_path)
  assert not (tmp_path / "cache").exists()


def test_shipped_benchmark_settings_cover_every_default_method():
  """configs/settings/*.json (the tuned benchmark's settings.json, the default's source) pass the schema check and
  hold a setting for every method of the default study (and DMM / oracle matching for random forgetting)."""
  config = population_config.get_config("dmm")
  for kind in study.KINDS:
    chosen = study.load_settings(config.population, kind)
    expected = set(config.population.methods) - (set() if kind == "random" else set(study.INPUT_METHODS))
    assert expected <= set(chosen), (kind, expected - set(chosen))
