r"""Tune one unlearning method by a vmapped sweep on a selection seed, then report it over 3 other seeds.

Command (any method; ``salun`` if none is given):

  python -m experiments.main --config=configs/sweep.py:salun --workdir=workdir/sweep_salun
  python -m experiments.main --config=configs/sweep.py:salun --config.dataset.name=mnist1d \
      --workdir=workdir/sweep_salun_mnist1d

The grid (`unlearn_jax.studies.sweep.GRIDS`: for SalUn 8 learning rates from 1e-3 to 1 × mask fractions 0.1, 0.3,
0.5) runs as one vmapped program on seed 100's forget set; the setting with the smallest Avg. Gap to that seed's
Retrain is then run on seeds 0, 1, 2. Change the grid with ``--config.sweep.grid.lrs='(0.01,0.03)'`` and
``--config.sweep.grid.coefs='(0.5,)'``, the method's other options with ``--config.sweep.options.epochs=5``.
Writes results.md (the chosen setting, mean ± std), selection/<method>.md (every grid point's UA, RA, TA,
MIA-efficacy and Avg. Gap) and per_seed.json. Measured figures: benchmarks/RESULTS.md.
"""
from unlearn_jax import config as config_lib
from unlearn_jax.studies import sweep


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.experiment = "sweep"
  config.sweep = sweep.sweep_section(arg or "salun")
  return config
