"""The diffusion study end to end on a tiny config: outputs, the cache, bad configs named by key."""
import json

import pytest

from configs import salun_diffusion
from unlearn_jax import run
from unlearn_jax.studies import diffusion


def test_tiny_study_writes_results_and_reuses_the_cache(tmp_path):
  config = salun_diffusion.get_config("tiny_test")
  config.compare = ("salun", "esd")  # the masked joint loop and the sampled-pool loop
  out = run.run(config, tmp_path)
  rows = json.loads((tmp_path / "results.json").read_text())["rows"]
  assert list(rows) == ["Original", "Retrain", "SalUn", "ESD"]
  for row in rows.values():
    assert 0 <= row["UA"] <= 1 and 0 <= row["Acc_remain"] <= 1 and row["FD_remain"] >= 0
    assert {f"Acc_{k}" for k in range(10)} <= set(row) and "FD_0" in row
  assert "| SalUn |" in (tmp_path / "results.md").read_text()
  assert (tmp_path / "samples.png").stat().st_size > 0
  record = json.loads((tmp_path / "run.json").read_text())
  assert record["end_time"] is not None and record["restored"] == {"Original": False, "Retrain": False,
                                                                  "classifier": False}
  assert not out["restored"]["Original"]
  config.compare = ("esd",)  # a second run of one method: its programs come from the session's compilation cache
  again = run.run(config, tmp_path)
  assert again["restored"] == {"Original": True, "Retrain": True, "classifier": True}
  assert list(again["results"]) == ["Original", "Retrain", "ESD"]
  for row in ("Original", "ESD"):  # restored models and a rerun method reproduce the first run's scores
    wall = {k: again["results"][row][k] for k in ("seconds", "eval_seconds")} if row == "ESD" else {
        "eval_seconds": again["results"][row]["eval_seconds"]}
    assert again["results"][row] == out["results"][row] | wall, row


@pytest.mark.parametrize("key,value,match", [
    ("forget.classes", (11,), "config.forget.classes"),
    ("sampling.sampler", "euler", "config.sampling.sampler"),
    ("sampling.steps", 0, "config.sampling.steps"),
    ("unet.channels", (8, 8, 8, 8, 8), "config.unet.channels"),
    ("compare", ("sga",), "config.compare"),
    ("train.lr", -1.0, "config.train.lr"),
])
def test_bad_values_name_the_key(key, value, match):
  config = salun_diffusion.get_config("tiny_test")
  section, _, field = key.rpartition(".")
  (config[section] if section else config)[field] = value
  with pytest.raises(ValueError, match=match):
    diffusion.validate_diffusion(config)


def test_unknown_keys_and_method_options_are_named():
  config = salun_diffusion.get_config("tiny_test")
  config.methods.salun.unlock()
  config.methods.salun.lrr = 1.0
  with pytest.raises(ValueError, match="config.methods.salun.lrr"):
    diffusion.validate_diffusion(config)
  config = salun_diffusion.get_config()
  config.unlock()
  config.sampling.cfg = 1.0
  with pytest.raises(ValueError, match="config.sampling.cfg"):
    diffusion.validate_diffusion(config)
  for arg in (None, "cifar10"):
    diffusion.validate_diffusion(salun_diffusion.get_config(arg))
  with pytest.raises(ValueError, match="config argument"):
    salun_diffusion.get_config("mnist")
