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
  assert not (tmp_path / "cache").exists()
