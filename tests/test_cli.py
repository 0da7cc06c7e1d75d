"""The command line (experiments/main.py): every config file parses and validates, bad values fail before any
training with one line naming the key (exit status 2), method switching, corrupt caches, quiet output.

Most checks run in this process through `experiments.main.parse_flags` on a fresh absl FlagValues; two start the
real entry point in a subprocess (quiet output, exit status of the process).
"""
import glob
import os
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
from absl import flags

from experiments import main as cli
from unlearn_jax import checkpoint
from unlearn_jax import config as config_lib
from unlearn_jax import unlearning

from tests import subprocesses

ROOT = subprocesses.ROOT
CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not os.path.basename(p).startswith("_"))
# Documented config-file arguments, checked as well as the default: every `config.method_experiment` config takes
# ``cifar10``.
ARGS = {"ssd.py": ("lfssd",), "retrain.py": ("cnn",)}
EXPERIMENT_CONFIGS = [p for p in CONFIGS if "method_experiment(" in open(os.path.join(ROOT, p)).read()]
# Study configs keep a section of their own that the base validation leaves to the pipeline.
STUDY_SECTIONS = ("benchmark", "sweep", "merge", "merge_datasets", "lmc", "attribution", "population")
# A tiny run: the smallest network and 1 epoch each.
TINY = ("--config.model.hidden=16,", "--config.train.epochs=1", "--config.retrain.epochs=1",
        "--config.eval.mia=False")


def parse(*args):
  """The config ``python -m experiments.main <args>`` would run (method switching included)."""
  argv = cli.switch_method(["main", *args])
  flag_values = flags.FlagValues()
  config, _ = cli.define_flags(flag_values, argv)
  cli.parse_flags(argv, flag_values)
  return config.value


def error_line(capsys, fn, *args, code=2) -> str:
  """Calls ``fn(*args)``, which must exit with status ``code`` (2: a config error, 1: a fault) printing one line;
  returns that line."""
  with pytest.raises(SystemExit) as exit_info:
    fn(*args)
  assert exit_info.value.code == code
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: "), err
  return err.strip()


def validate(config):
  """The validation the config's pipeline runs before any work."""
  experiment = config.get("experiment", "unlearning")
  if experiment in ("lm_unlearning", "lm_concept"):
    from unlearn_jax.studies import language, lm_concept  # pylint: disable=g-import-not-at-top
    return (language.validate_lm if experiment == "lm_unlearning" else lm_concept.validate_concept)(config)
  if experiment == "diffusion":  # owns its whole config (its own dataset, unet, classifier sections)
    from unlearn_jax.studies import diffusion  # pylint: disable=g-import-not-at-top
    return diffusion.validate_diffusion(config)
  if experiment == "merge":
    from unlearn_jax.studies import merge  # pylint: disable=g-import-not-at-top
    merge.validate_merge(config)
  return config_lib.validate(config, extra_sections=[k for k in STUDY_SECTIONS if k in config])


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_file_parses_and_validates(path):
  name = os.path.basename(path)
  if name == "salun_diffusion.py" and not os.path.exists(os.path.join(ROOT, "unlearn_jax", "studies",
                                                                      "diffusion.py")):
    pytest.skip("the diffusion study is not in this tree")
  for arg in (None, *ARGS.get(name, ()), *(("cifar10",) if path in EXPERIMENT_CONFIGS else ())):
    config = parse(f"--config={path}" + (f":{arg}" if arg else ""))
    validate(config)
    if config.get("experiment", "unlearning") == "unlearning":
      assert config.method.name in unlearning.names()


def test_every_registered_method_has_a_config_file_with_its_defaults():
  for name in unlearning.names():
    path = os.path.join("configs", f"{name}.py")
    assert path in CONFIGS, f"no {path}"
    config = parse(f"--config={path}")
    assert config.method.name == name
    if name not in unlearning.BASELINES:  # every option present, so each can be set from the command line
      assert set(config.method) == {"name", *unlearning.DEFAULTS[name]}


def test_help_names_every_config_section():
  sections = {k for path in CONFIGS for k in parse(f"--config={path}").keys()}
  for section in sections | {"sweep"}:
    assert f" {section}" in cli.__doc__, section


@pytest.mark.parametrize("override,key", [
    ("--config.train.lr=0", "train.lr"), ("--config.retrain.lr=-0.1", "retrain.lr"),
    ("--config.method.lr=0", "method.lr"), ("--config.method.lr=-1", "method.lr"),
    ("--config.train.epochs=-1", "train.epochs"), ("--config.retrain.epochs=0", "retrain.epochs"),
    ("--config.method.epochs=-1", "method.epochs"), ("--config.method.epochs=0", "method.epochs"),
    ("--config.train.batch_size=0", "train.batch_size"), ("--config.retrain.batch_size=-2", "retrain.batch_size"),
    ("--config.method.batch_size=0", "method.batch_size"),
    ("--config.method.saliency_batch_size=0", "method.saliency_batch_size"),
    ("--config.method.warmup_epochs=-1", "method.warmup_epochs"),
    ("--config.forget.fraction=1.5", "forget.fraction"),
])
def test_bad_value_fails_before_training_with_one_line(override, key, tmp_path, capsys):
  config = parse("--config=configs/salun.py", override)
  line = error_line(capsys, cli.execute, config, str(tmp_path / "w"), "configs/salun.py")
  assert line.startswith(f"error: config.{key}="), line
  assert not (tmp_path / "w").exists()  # nothing trained, nothing written


def test_fraction_error_reads_as_documented(tmp_path, capsys):
  config = parse("--config=configs/retrain.py", "--config.forget.fraction=1.5")
  line = error_line(capsys, cli.execute, config, str(tmp_path / "w"), "configs/retrain.py")
  assert line == "error: config.forget.fraction=1.5: must be in (0, 1)"


def test_runtime_errors_keep_their_traceback(monkeypatch, tmp_path):
  from unlearn_jax import run  # pylint: disable=g-import-not-at-top

  def broken(config, workdir):
    raise ValueError("operands could not be broadcast together")

  monkeypatch.setattr(run, "run", broken)
  with pytest.raises(ValueError, match="broadcast"):
    cli.execute(parse("--config=configs/retrain.py"), str(tmp_path), "configs/retrain.py")
  assert not cli.is_config_error(ValueError("checkpoint /x does not match the model"))
  assert cli.is_config_error(ValueError("config.merge.k=3: more subsets than examples"))


def test_method_options_are_checked_against_the_registry():
  config = config_lib.method_experiment("ga")
  config.method.betta = 1.0  # a config built in code is not locked
  with pytest.raises(ValueError, match=r"config.method: method 'ga': unknown option\(s\) method.betta"):
    config_lib.validate(config)


def test_unknown_key_suggests_the_close_ones(capsys):
  line = error_line(capsys, parse, "--config=configs/retrain.py", "--config.train.lrr=0.1")
  assert line.startswith("error: unknown key config.train.lrr (did you mean config.train.lr"), line
  line = error_line(capsys, parse, "--config=configs/retrain.py", "--config.foo=1")
  assert line == "error: unknown key config.foo"
  line = error_line(capsys, parse, "--config=configs/retrain.py", "--config.method.lr=1")
  assert "unknown key config.method.lr" in line and "--config.method.name" in line


def test_bad_config_path_argument_and_value_are_one_line(capsys):
  assert "configs/nope.py: no such config file" in error_line(capsys, parse, "--config=configs/nope.py")
  assert "'foo': not a model name" in error_line(capsys, parse, "--config=configs/retrain.py:foo")
  line = error_line(capsys, parse, "--config=configs/retrain.py", "--config.train.lr=abc")
  assert line.startswith("error: flag --config.train.lr=abc:"), line


def test_method_name_switches_to_the_methods_own_config():
  ga = parse("--config=configs/ga.py")
  switched = parse("--config=configs/salun.py", "--config.method.name=ga", "--config.method.lr=0.5")
  assert switched.method.name == "ga" and switched.method.lr == 0.5
  assert {k: v for k, v in switched.method.items() if k != "lr"} == {k: v for k, v in ga.method.items()
                                                                      if k != "lr"}
  # the config-file argument goes along: the CIFAR-10 setting of the other method
  cifar = parse("--config=configs/salun.py:cifar10", "--config.method.name=ft")
  assert cifar.method.name == "ft" and cifar.model.name == "resnet18"
  assert cifar.method.to_dict() == parse("--config=configs/ft.py:cifar10").method.to_dict()
  # the two-word flag forms
  assert parse("--config", "configs/salun.py", "--config.method.name", "ga").method.lr == ga.method.lr
  # an option only the other method has
  assert parse("--config=configs/ga.py", "--config.method.name=neggrad_plus", "--config.method.beta=0.5"
               ).method.beta == 0.5
  # the same method, or a study config, is left as it is
  assert parse("--config=configs/salun.py", "--config.method.name=salun").method.fraction == \
      parse("--config=configs/salun.py").method.fraction


def test_method_without_a_config_file_takes_its_registered_defaults(tmp_path):
  own = tmp_path / "my_salun.py"  # a config of the user's, with no ga.py beside it
  own.write_text(open(os.path.join(ROOT, "configs", "salun.py")).read())
  config = parse(f"--config={own}", "--config.method.name=ga", "--config.method.lr=0.5")
  assert config.method.to_dict() == {**config_lib.method_config("ga").to_dict(), "lr": 0.5}
  assert config.model.name == "mlp" and config.dataset.name == "digits"
  cifar = parse(f"--config={own}:cifar10", "--config.method.name=ga")
  assert cifar.model.name == "resnet18" and cifar.method.name == "ga"
  from unlearn_jax import run  # pylint: disable=g-import-not-at-top
  with mock.patch.object(run, "run", lambda config, workdir: workdir):  # the default workdir names the method
    assert cli.execute(config, None, cli.__file__) == os.path.join("workdir", "ga")
    assert cli.execute(config, None, str(own)) == os.path.join("workdir", "my_salun")


def test_unknown_method_name_lists_the_methods(capsys):
  line = error_line(capsys, parse, "--config=configs/salun.py", "--config.method.name=nope")
  assert line.startswith("error: config.method.name='nope': unknown method; choose one of original, retrain")


def test_batch_larger_than_its_split_is_capped_with_one_warning_each():
  config = config_lib.method_experiment("salun", digits=dict(batch_size=256))
  config.train.batch_size = 64
  lines = config_lib.batch_warnings(config, train=1437, retain=1293, forget=144)
  assert lines == ["config.method.batch_size=256 is larger than the 144 forget examples: capped to 144 (one "
                   "batch per epoch)"]
  config.retrain.batch_size = 2000
  assert len(config_lib.batch_warnings(config, train=1437, retain=1293, forget=144)) == 2
  config.method.batch_size = 144
  assert config_lib.batch_warnings(config, train=1437, retain=1293, forget=144) == [
      "config.retrain.batch_size=2000 is larger than the 1293 retain examples: capped to 1293 (one batch per "
      "epoch)"]


def _truncate_arrays(directory):
  files = [p for p in glob.glob(os.path.join(directory, "**", "d", "*"), recursive=True) if os.path.isfile(p)]
  assert files
  for p in files:
    with open(p, "r+b") as f:
      f.truncate(8)


def test_corrupt_cache_is_moved_aside_and_rebuilt(tmp_path):
  params, state = {"w": np.arange(6.0, dtype=np.float32).reshape(2, 3)}, {}
  directory = tmp_path / "original-abc"
  checkpoint.save(directory, params, state, {"seconds": 1.0})
  _truncate_arrays(directory)
  calls = []

  def build():
    calls.append(1)
    return {"w": params["w"] + 1}, state, {"seconds": 2.0}

  p, _, meta, restored = checkpoint.cached(directory, build, like=(params, state))
  assert not restored and calls == [1] and meta["seconds"] == 2.0
  aside = list(tmp_path.glob("original-abc.corrupt-*"))
  assert len(aside) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["original-abc", aside[0].name]
  np.testing.assert_array_equal(checkpoint.restore(directory, (params, state))[0]["w"], params["w"] + 1)
  # garbage metadata: the same, and a mismatch (a different model) is still an error, not moved
  (directory / "0" / "model" / "_METADATA").write_text("garbage")
  with pytest.raises(checkpoint.CorruptCheckpointError, match="cannot read its metadata"):
    checkpoint.check(directory, (params, state))
  assert not checkpoint.cached(directory, build, like=(params, state))[3]
  assert len(list(tmp_path.glob("original-abc.corrupt-*"))) == 2
  with pytest.raises(ValueError, match="does not match the model: params/w: stored shape"):
    checkpoint.cached(directory, build, like=({"w": np.zeros((3, 3), np.float32)}, state))
  assert len(list(tmp_path.glob("original-abc.corrupt-*"))) == 2


def test_corrupt_progress_step_restarts_training(tmp_path):
  tree = {"w": np.ones(4, np.float32)}
  with checkpoint.EpochCheckpoints(tmp_path / "progress") as progress:
    progress.save(1, tree, {"epoch": 1, "epochs": 3})
  _truncate_arrays(tmp_path / "progress")
  with checkpoint.EpochCheckpoints(tmp_path / "progress") as progress:
    assert progress.latest(tree, 3) is None
  assert [p.name.split(".")[0] for p in tmp_path.iterdir()] == ["progress"]


def test_run_with_a_corrupt_cached_original_retrains_it(tmp_path):
  from unlearn_jax import run  # pylint: disable=g-import-not-at-top
  exp = run.setup(parse("--config=configs/original.py", *TINY))
  assert not run.original(exp, tmp_path)[3]
  (cache,) = tmp_path.glob("cache/original-*")
  _truncate_arrays(cache)
  run.check_caches(exp, tmp_path, ("original",))  # unreadable is not a mismatch: the run goes on
  assert not run.original(exp, tmp_path)[3]
  assert len(list(tmp_path.glob("cache/original-*.corrupt-*"))) == 1
  assert run.original(exp, tmp_path)[3]


def _entry_point(*args, verbosity=()):
  return subprocess.run([sys.executable, "-m", "experiments.main", *args, *verbosity], cwd=ROOT,
                        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))


def test_default_output_is_the_table_only(tmp_path):
  out = _entry_point("--config=configs/original.py", f"--workdir={tmp_path}", *TINY)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.startswith("## original on digits (mlp)") and "| Original |" in out.stdout
  logs = [line for line in out.stderr.splitlines() if line[:1] in "IW" and line[1:5].isdigit()]
  assert not [line for line in logs if line.startswith("I")], logs[:5]


def test_entry_point_config_error_exits_2_with_one_line(tmp_path):
  out = _entry_point("--config=configs/retrain.py", f"--workdir={tmp_path / 'w'}", "--config.train.epochs=-1")
  assert out.returncode == 2 and out.stderr == "error: config.train.epochs=-1: must be at least 1\n", out.stderr
  assert not (tmp_path / "w").exists()


# Every bad value of issue 23, by config file: (config file, overrides, the key the one-line error names).
BAD_VALUES = [
    ("configs/salun.py", ("--config.method.fraction=1.5",), "method.fraction"),
    ("configs/salun.py", ("--config.train.lr=inf",), "train.lr"),
    ("configs/salun.py", ("--config.retrain.lr=1e400",), "retrain.lr"),
    ("configs/salun.py", ("--config.method.lr=inf",), "method.lr"),
    ("configs/salun.py", ("--config.train.momentum=nan",), "train.momentum"),
    ("configs/salun.py", ("--config.train.epochs=1000000000",), "train.epochs"),
    ("configs/salun.py", ("--config.method.epochs=1000000000",), "method.epochs"),
    ("configs/salun.py", ("--config.forget.kind=class", "--config.forget.classes=99,"), "forget.classes"),
    ("configs/salun.py", ("--config.forget.kind=class", "--config.forget.classes=10,"), "forget.classes"),
    ("configs/salun.py", ("--config.forget.kind=class", "--config.forget.classes=-1,"), "forget.classes"),
    ("configs/salun.py", ("--config.forget.kind=class", "--config.forget.classes=(0,1,2,3,4,5,6,7,8,9)"),
     "forget.classes"),
    ("configs/salun.py", ("--config.forget.kind=subclass", "--config.forget.classes=1,"), "forget.kind"),
    ("configs/salun.py", ("--config.forget.classes=3,",), "forget.classes"),
    ("configs/salun.py", ("--config.forget.class_fraction=1.5",), "forget.class_fraction"),
    ("configs/salun.py", ("--config.forget.class_fraction=0.5",), "forget.class_fraction"),
    ("configs/salun.py", ("--config.seed=-1",), "seed"),
    ("configs/salun.py", ("--config.seed=4294967296",), "seed"),
    ("configs/salun.py", ("--config.model.name=resnet20", "--config.model.width=0"), "model.width"),
    ("configs/salun.py", ("--config.model.hidden=0,",), "model.hidden"),
    ("configs/salun.py", ("--config.dataset.test_fraction=0.999",), "dataset.test_fraction"),
    ("configs/salun.py", ("--config.mesh.data=3",), "mesh.data"),
    ("configs/salun.py", ("--config.dataset.name=synthetic", "--config.dataset.noise=-1"), "dataset.noise"),
    ("configs/salun.py", ("--config.dataset.name=synthetic", "--config.dataset.image_shape=(32,32)"),
     "dataset.image_shape"),
    ("configs/dmm.py", ("--config.method.alpha=1.5",), "method.alpha"),
    ("configs/dmm.py", ("--config.method.num_models=2",), "method.num_models"),
    ("configs/dmm.py", ("--config.method.regression=lars",), "method.regression"),
    ("configs/oracle_matching.py", ("--config.method.retain_multiplier=-1.0",), "method.retain_multiplier"),
    ("configs/merge_ties.py", ("--config.merge.finetune.lr=inf",), "merge.finetune.lr"),
    ("configs/salun_diffusion.py", ("--config.methods.salun.fraction=2.0",), "methods.salun.fraction"),
    ("configs/lm_ga.py", ("--config.eval.max_new_tokens=1000",), "eval.max_new_tokens"),
    ("configs/lm_ga.py", ("--config.model.d_model=65",), "model.d_model"),
    ("configs/lm_ga.py", ("--config.model.num_heads=0",), "model.num_heads"),
    ("configs/lm_ga.py", ("--config.data.num_people=0",), "data.num_people"),
    ("configs/lm_ga.py", ("--config.data.facts_per_person=-1",), "data.facts_per_person"),
    ("configs/lm_ga.py", ("--config.methods.ga.lr=inf",), "methods.ga.lr"),
    ("configs/salun.py", ("--config.train.momentum=-0.5",), "train.momentum"),
    ("configs/salun.py", ("--config.retrain.weight_decay=-1.0",), "retrain.weight_decay"),
    ("configs/salun.py", ("--config.train.schedule=step", "--config.train.gamma=-1.0"), "train.gamma"),
    ("configs/salun.py", ("--config.train.milestones=-1,",), "train.milestones"),
    ("configs/salun.py", ("--config.train.mnemonic_code_seed=-1",), "train.mnemonic_code_seed"),
    ("configs/salun.py", ("--config.method.optimizer=nope",), "method.optimizer"),
    ("configs/salun.py", ("--config.method.schedule=nope",), "method.schedule"),
    ("configs/salun.py", ("--config.method.momentum=2.0",), "method.momentum"),
    ("configs/salun.py", ("--config.method.weight_decay=-1.0",), "method.weight_decay"),
    ("configs/salun.py", ("--config.method.gamma=0.0",), "method.gamma"),
    ("configs/salun.py", ("--config.method.phases=nope",), "method.phases"),
    ("configs/salun.py", ("--config.method.mask_mode=nope",), "method.mask_mode"),
    ("configs/benchmark.py", ("--config.benchmark.options.bad_teacher.optimizer=nope",),
     "benchmark.options.bad_teacher.optimizer"),
    ("configs/lm_ga.py", ("--config.methods.ga.b2=1.0",), "methods.ga.b2"),
    ("configs/lm_ga.py", ("--config.methods.npo.eps=0.0",), "methods.npo.eps"),
    ("configs/fisher.py", ("--config.method.eps=-1.0",), "method.eps"),
    ("configs/population.py", ("--config.population.classes=()",), "population.classes"),
    ("configs/population.py", ("--config.population.classes=(10,)",), "population.classes"),
    ("configs/population.py", ("--config.population.kinds=()",), "population.kinds"),
    ("configs/population.py", ("--config.population.selection_seed=-1",), "population.selection_seed"),
    ("configs/salun_diffusion.py", ("--config.classifier.channels=()",), "classifier.channels"),
    ("configs/salun_diffusion.py", ("--config.classifier.channels=(-1,)",), "classifier.channels"),
    ("configs/salun_diffusion.py", ("--config.classifier.dense=0",), "classifier.dense"),
    ("configs/rebasin.py", ("--config.lmc.seeds=(0,-1)",), "lmc.seeds"),
    ("configs/rebasin.py", ("--config.lmc.merge_seeds=(-5,)",), "lmc.merge_seeds"),
    ("configs/rebasin.py", ("--config.lmc.matching_seed=-1",), "lmc.matching_seed"),
    ("configs/merge_ties.py", ("--config.merge.finetune.checkpoint_every=-1",), "merge.finetune.checkpoint_every"),
    ("configs/salun_diffusion.py", ("--config.train.checkpoint_min_seconds=-1.0",), "train.checkpoint_min_seconds"),
    ("configs/merge_datasets.py", ("--config.merge_datasets.permutation_seed=-1",),
     "merge_datasets.permutation_seed"),
    ("configs/merge_datasets.py", ("--config.merge_datasets.matching_seed=-1",), "merge_datasets.matching_seed"),
    ("configs/fisher_mnemonic.py", ("--config.method.code_seed=-1",), "method.code_seed"),
    ("configs/scrub.py", ("--config.method.msteps=-1",), "method.msteps"),
    ("configs/scrub.py", ("--config.method.ce_weight=-1.0",), "method.ce_weight"),
    ("configs/ssd.py", ("--config.method.alpha=-1.0",), "method.alpha"),
    ("configs/lfssd.py", ("--config.method.lam=-1.0",), "method.lam"),
    ("configs/fisher.py", ("--config.method.alpha=-1.0",), "method.alpha"),
    ("configs/influence.py", ("--config.method.damping=-1.0",), "method.damping"),
    ("configs/wfisher.py", ("--config.method.num_examples=0",), "method.num_examples"),
    ("configs/neggrad_plus.py", ("--config.method.beta=1.5",), "method.beta"),
    ("configs/l1_sparse.py", ("--config.method.alpha=-1.0",), "method.alpha"),
    ("configs/laf.py", ("--config.method.latent_dims=0",), "method.latent_dims"),
    ("configs/laf.py", ("--config.method.kld_weight=-1.0",), "method.kld_weight"),
    ("configs/laf.py", ("--config.method.vae_hidden=(0,)",), "method.vae_hidden"),
    ("configs/sweep.py", ("--config.sweep.seeds=(-1,)",), "sweep.seeds"),
    ("configs/sweep.py", ("--config.sweep.selection_seed=4294967296",), "sweep.selection_seed"),
    ("configs/sweep.py", ("--config.sweep.grid.coefs=(-1.0,)",), "sweep.grid.coefs"),
    ("configs/benchmark.py", ("--config.benchmark.seeds=(0,-1)",), "benchmark.seeds"),
    ("configs/attribution.py", ("--config.attribution.alpha=2.0",), "attribution.alpha"),
    ("configs/attribution.py", ("--config.attribution.num_lambdas=0",), "attribution.num_lambdas"),
    ("configs/attribution.py", ("--config.attribution.lasso_steps=-1",), "attribution.lasso_steps"),
    ("configs/attribution.py", ("--config.attribution.trak_models=()", "--config.attribution.regressions=()"),
     "attribution.regressions"),
]


@pytest.mark.parametrize("path,overrides,key", BAD_VALUES, ids=[f"{p[8:-3]}:{k}" for p, _, k in BAD_VALUES])
def test_every_bad_value_is_one_line_naming_the_key_before_any_work(path, overrides, key, tmp_path, capsys,
                                                                     monkeypatch):
  from unlearn_jax import train  # pylint: disable=g-import-not-at-top
  from unlearn_jax.unlearning import loop  # pylint: disable=g-import-not-at-top

  def no_training(*args, **kwargs):
    raise AssertionError("training started")

  monkeypatch.setattr(train, "run_epochs", no_training)
  monkeypatch.setattr(loop, "unlearn_loop", no_training)
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "mine.txt").write_text("kept")
  line = error_line(capsys, lambda: cli.execute(parse(f"--config={path}", *overrides), str(workdir), path))
  assert line.startswith(f"error: config.{key}="), line
  assert sorted(os.listdir(workdir)) == ["mine.txt"]


def test_a_config_file_that_fails_to_import_is_one_line_with_its_line(tmp_path, capsys):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n  pass\n")
  assert error_line(capsys, parse, f"--config={broken}") == \
      f"error: --config={broken}, line 1: SyntaxError: invalid syntax"
  broken.write_text("import math\n\n\ndef get_config():\n  return 1 / 0\n")
  assert error_line(capsys, parse, f"--config={broken}") == \
      f"error: --config={broken}, line 5: ZeroDivisionError: division by zero"
  assert error_line(capsys, parse, f"--config={broken}", "--config.method.name=ga").startswith(
      f"error: --config={broken}, line 5")


def test_entry_point_stray_argument_exits_2_with_one_line(tmp_path):
  out = _entry_point("--config=configs/retrain.py", f"--workdir={tmp_path / 'w'}", "stray")
  assert out.returncode == 2 and out.stderr.count("\n") == 1 and "unexpected argument 'stray'" in out.stderr, \
      out.stderr
  assert not (tmp_path / "w").exists()


def test_unusable_workdirs_are_one_line(tmp_path, capsys):
  from unlearn_jax import files  # pylint: disable=g-import-not-at-top
  config = parse("--config=configs/original.py", *TINY)
  (tmp_path / "file").write_text("")
  line = error_line(capsys, cli.execute, config, str(tmp_path / "file"), "configs/original.py", code=1)
  assert line == f"error: workdir {tmp_path / 'file'}: is a file, not a directory"
  with files.workdir_lock(tmp_path / "busy"):
    line = error_line(capsys, cli.execute, config, str(tmp_path / "busy"), "configs/original.py", code=1)
    assert line.startswith(f"error: workdir {tmp_path / 'busy'}: in use by another run (pid {os.getpid()})")
    assert sorted(os.listdir(tmp_path / "busy")) == [".lock"]
  assert error_line(capsys, cli.execute, config, "", "configs/original.py").startswith("error: --workdir=: empty")
