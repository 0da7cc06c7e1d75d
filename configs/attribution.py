r"""The attribution study: how well TRAK and datamodels predict held-out α-subset models (the LDS).

Command (2-core CPU, MNIST-1D, MLP 256-256 trained 30 epochs; 64 + 16 models on random 50% subsets):

  python -m experiments.main --config=configs/attribution.py --workdir=workdir/attribution

Trains (or restores from ``workdir/cache``) 64 α-subset models — the population DMM uses with its defaults, so a
DMM run with the same workdir reuses it — and 16 held-out ones; fits ridge and lasso datamodels of the margins of
200 test rows on the 64, computes TRAK scores with ensembles of the first 1 and 3 of them (k = 2048), and writes
the LDS of each on the 16 held-out models (results.md, results.json). Figures and timings are in
benchmarks/RESULTS.md. ``:tiny_test`` shrinks everything (digits, a few models) for the tests.
"""
from unlearn_jax import config as config_lib
from unlearn_jax.studies import attribution


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.experiment = "attribution"
  config.dataset.name = "mnist1d"
  config.attribution = attribution.attribution_section()
  if arg == "tiny_test":
    config.dataset.name = "digits"
    config.model.hidden = (16,)
    config.train.epochs = 2
    config.attribution = attribution.attribution_section(num_models=6, num_heldout=4, num_targets=12,
                                                         trak_models=(2,), proj_dim=32, lasso_steps=20,
                                                         num_lambdas=3)
  elif arg:
    raise ValueError(f"config argument {arg!r}: only 'tiny_test'")
  return config
