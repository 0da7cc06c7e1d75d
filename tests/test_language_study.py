"""The LM-unlearning study end to end on the smoke config, and its config validation."""
import json

import numpy as np
import pytest

from configs import lm_npo
from tests import subprocesses
from unlearn_jax import run as run_lib
from unlearn_jax.evaluation import language as lm_eval
from unlearn_jax.studies import language



def test_lm_study_tiny_runs_every_method_and_caches(tmp_path):
  config = lm_npo.get_config("tiny_test")
  config.compare = ("ga", "npo", "rmu", "sae")
  config.methods.ga.update(lr=1e-2, epochs=3, warmup_epochs=0.0)
  out = run_lib.run(config, tmp_path)
  results = json.loads((tmp_path / "results.json").read_text())
  assert list(results) == ["Original", "Retrain", "GA", "NPO", "RMU", "SAE"]
  for row in results.values():
    for key in ("forget_quality", "model_utility", "forget_rouge", "privleak", "sae_separation", "seconds"):
      assert key in row and np.isfinite(row[key]), (key, row)
  assert results["Retrain"]["forget_quality"] == 1.0 and results["Retrain"]["privleak"] == 0.0
  # ascent at a large learning rate must push the forget answers down
  assert results["GA"]["forget_prob"] < 0.5 * results["Original"]["forget_prob"]
  assert "| Original |" in out["table"] and "| SAE |" in (tmp_path / "results.md").read_text()
  info = json.loads((tmp_path / "run.json").read_text())
  assert info["config"]["experiment"] == "lm_unlearning"
  # second run: Original and Retrain come from the cache; with the robustness probes and the relearning attack
  config.compare = ("ga",)
  config.robustness.enabled = True
  config.eval.open_unlearning = True
  again = run_lib.run(config, tmp_path)
  assert again["restored"] == {"Original": True, "Retrain": True}
  assert again["results"]["Original"]["forget_prob"] == pytest.approx(results["Original"]["forget_prob"], rel=1e-6)
  for row in ("Original", "Retrain", "GA"):
    r = again["results"][row]
    for key in ("probe_recall", "relearn_recall", "rephrased_recall", "few_shot_recall"):
      assert 0.0 <= r[key] <= 1.0, (row, key, r)
    assert all(0.0 <= r[f"mia_{a}"] <= 1.0 for a in lm_eval.MIA_ATTACKS) and 0.0 <= r["extraction_strength"] <= 1.0
  assert "Robustness: recall of the probed forget facts (relearning all 3 models" in again["table"]


@pytest.mark.parametrize("key,value,match", [
    ("data.forget", "forget50", "config.data.forget='forget50'"),
    ("model.preset", "gpt5", "config.model.preset='gpt5'"),
    ("compare", ("npo", "nope"), "'nope' is not a method"),
    ("methods.npo.beta", -1.0, "method.beta"),
    ("model.hf_checkpoint", "/no/such/model", "config.model.hf_checkpoint='/no/such/model'"),
    ("train.lr", 0.0, "config.train.lr"),
    ("eval.rouge_rows", 0, r"config.eval.rouge_rows=0: must be >= 1"),
])
def test_bad_lm_config_fails_before_any_work(tmp_path, key, value, match):
  config = lm_npo.get_config("tiny_test")
  *path, field = key.split(".")
  section = config
  for p in path:
    section = section[p]
  section[field] = value
  with pytest.raises(ValueError, match=match):
    run_lib.run(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()


def test_unknown_lm_option_from_the_command_line_is_named(tmp_path):
  out = subprocesses.run_main("configs/lm_npo.py:tiny_test", tmp_path, "--config.methods.npo.betta=1")
  assert out.returncode != 0 and "betta" in out.stderr


def test_every_lm_config_builds_and_validates():
  import importlib  # pylint: disable=g-import-not-at-top
  for name in ("ga", "graddiff", "npo", "simnpo", "idkdpo", "rmu", "sae"):
    config = importlib.import_module(f"configs.lm_{name}").get_config()
    language.validate_lm(config)
    assert config.compare[0 if name != "npo" else 2] == name
