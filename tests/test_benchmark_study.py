"""The benchmark study pipeline: several methods and seeds, one aggregated table."""
import json

import numpy as np
import pytest

from configs import benchmark as benchmark_config
from configs import sweep as sweep_config
from unlearn_jax import run as run_lib
from unlearn_jax.studies import benchmark


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
  """One workdir for the module's runs, so that their cached Original/Retrain per seed are trained once."""
  return tmp_path_factory.mktemp("benchmark")


def small(config):
  for section in (config.train, config.retrain):
    section.epochs = 4
  config.model.hidden = (32,)
  return config


def tiny(arg):
  config = benchmark_config.get_config(arg)
  config.benchmark.seeds = (0, 1)
  for section in (config.train, config.retrain):
    section.epochs = 4
  config.model.hidden = (32,)
  for name in config.benchmark.methods:
    config.benchmark.options[name].epochs = 1
  return config


def test_benchmark_aggregates_methods_over_seeds(shared):
  tmp_path = shared / "plain"
  tmp_path.mkdir()
  (shared / "cache").mkdir(exist_ok=True)
  (tmp_path / "cache").symlink_to(shared / "cache", target_is_directory=True)
  out = run_lib.run(tiny("ft,rl"), tmp_path)
  results = json.loads((tmp_path / "results.json").read_text())
  assert list(results) == ["Retrain", "Original", "ft", "rl"]
  per_seed = json.loads((tmp_path / "per_seed.json").read_text())
  assert len(per_seed) == 2
  for key in ("UA", "TA", "MIA"):
    values = [run["rl"][key] for run in per_seed]
    np.testing.assert_allclose(results["rl"][key], np.mean(values), rtol=1e-9)
    np.testing.assert_allclose(results["rl"][f"{key}_std"], np.std(values, ddof=1), rtol=1e-9, atol=1e-12)
  # different seeds give different forget sets
  assert per_seed[0]["Original"]["UA"] == 0.0 or per_seed[0] != per_seed[1]
  assert "±" in (tmp_path / "results.md").read_text() and (tmp_path / "gaps.png").stat().st_size > 1000
  assert out["table"].startswith("## benchmark")


def test_benchmark_rejects_a_bad_method_option_before_work(tmp_path):
  config = tiny("ft")
  config.benchmark.options.ft.lr = 0.0
  with pytest.raises(ValueError, match=r"config.benchmark.options.ft.lr=0.0: must be positive"):
    run_lib.run(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()


def test_benchmark_rejects_unknown_method_before_work(tmp_path):
  config = tiny("ft")
  config.benchmark.methods = ("ft", "unicorn")
  with pytest.raises(ValueError, match="unicorn"):
    run_lib.run(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()


def _gaps(rows):
  return [r["gap"] for r in rows]


def test_tuned_benchmark_picks_the_smallest_gap_on_the_selection_seed(shared):
  config = tiny("ft,ssd")
  config.benchmark = benchmark.benchmark_section(("ft", "ssd"), seeds=(0,), tune=True, selection_seed=1,
                                                 grids={"ft": {"lrs": (1e-3, 0.1)}, "ssd": {"coefs": (2.0, 50.0)}},
                                                 ft={"epochs": 1})
  out = run_lib.run(config, shared)
  for name, coef in (("ft", "lr"), ("ssd", "alpha")):
    selection = json.loads((shared / "selection" / f"{name}.json").read_text())
    rows = selection["rows"]
    assert len(rows) == 2 and selection["best"] == int(np.argmin(_gaps(rows)))
    assert out["settings"][name] == rows[selection["best"]]["setting"]
    assert set(out["settings"][name]) == {coef}
  assert "Settings chosen on seed 1" in (shared / "results.md").read_text()
  # the reported ft is the chosen setting run alone on seed 0: rerun it by hand and compare UA/TA
  exp, models = benchmark.baselines(config, 0, shared, ("benchmark",))
  exp.config.method = config.benchmark.options.ft
  exp.config.method.update(out["settings"]["ft"])
  row = run_lib.score(exp, *run_lib.unlearn(exp, *models["Original"][:2])[:2])
  for key in ("UA", "RA", "TA"):
    assert out["per_seed"][0]["ft"][key] == pytest.approx(row[key])


def test_sweep_pipeline_reports_the_chosen_setting(shared):
  config = small(sweep_config.get_config("ga"))
  config.sweep.selection_seed, config.sweep.seeds = 1, (0,)
  config.sweep.grid.lrs = (1e-4, 1e-3, 1e-2)
  config.sweep.options.epochs = 2
  out = run_lib.run(config, shared / "sweep")
  assert len(out["selection"]) == 3 and set(out["setting"]) == {"lr"}
  label = [k for k in out["results"] if k.startswith("ga (")]
  assert len(label) == 1 and "lr=" in label[0]
  assert min(_gaps(out["selection"])) == pytest.approx(
      [r["gap"] for r in out["selection"] if r["setting"] == out["setting"]][0])
  assert "chosen" in (shared / "sweep" / "selection" / "ga.md").read_text()


@pytest.mark.parametrize("change, match", [
    (lambda s: setattr(s, "selection_seed", 0), "selection_seed=0"),
    (lambda s: setattr(s.grid, "lrs", ()), "grid.lrs"),
    (lambda s: setattr(s.grid, "lrs", (0.1, -1.0)), "must be positive"),
    (lambda s: setattr(s.options, "epochs", -1), r"config.sweep.options.epochs=-1"),
])
def test_sweep_rejects_bad_grids_before_work(tmp_path, change, match):
  config = sweep_config.get_config("ft")
  change(config.sweep)
  with pytest.raises(ValueError, match=match):
    run_lib.run(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()
