r"""SSD (Selective Synaptic Dampening): one-shot dampening of the weights far more important to the forget set.

Command (2-core CPU, digits, MLP 256-256, 10% random forget; about 25 s including training Original and
Retrain, about 3 s of it SSD with compilation; under 10 s once Original and Retrain are cached):

  python -m experiments.main --config=configs/ssd.py --workdir=workdir/ssd

The loss-free variant (LFSSD, no labels used): ``--config=configs/ssd.py:lfssd``. The reference defaults are
``alpha=10`` (selection), ``lam=1`` (dampening), importances from squared batch-mean gradients over batches of 128
(``per_example=False``).

Measured with `unlearn_jax.run.run` (mean ± std over seeds 0, 1, 2; UA / RA / TA / MIA-efficacy in %; Avg. Gap =
mean |difference| to Retrain over the four):
  Retrain                 1.9±1.4 / 100.0±0.0 / 97.7±0.7 /  4.2±1.7
  Original                0.0     / 100.0     / 98.1±0.5 /  0.0       gap 1.6 (doing nothing is already close)
  ssd, alpha=10 (default) 9.7±7.7 /  89.6±8.4 / 88.4±8.2 / 12.3±9.9   gap 9.7 (over-forgets on seeds 0 and 2)
  ssd, alpha=12           3.9±5.1 /  97.0±4.0 / 95.5±3.7 /  5.8±6.2   gap 3.2
  ssd, alpha=15           1.4±2.0 /  99.3±0.9 / 97.0±1.8 /  2.3±3.3   gap 1.2 (changes nothing on seeds 1 and 2)
  lfssd, alpha=10         = Original (no weight selected: the LFSSD importance ratios stay below 4 here)
  lfssd, alpha=2          0.0±0.0 /  99.8±0.2 / 97.3±0.3 /  1.9±1.2   gap 1.3
  lfssd, alpha=1.5        8.6±4.6 /  92.5±4.6 / 89.5±4.5 / 13.2±4.0   gap 8.1
SSD takes 3-5 s here (mostly compilation). The selection is all-or-nothing in alpha and varies from seed to seed;
per example the ratio I_forget / I_full cannot exceed n / n_forget = 10 for this 10% forget set (see
`unlearn_jax.unlearning._ssd`), so the reference defaults sit at the edge; the reference evaluates 0.2%-5% forget sets.
"""
from unlearn_jax import config as config_lib
from unlearn_jax.unlearning import _ssd  # noqa: F401  pylint: disable=unused-import  (registers ssd, lfssd)


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  name = "lfssd" if arg == "lfssd" else "ssd"
  config.method = config_lib.method_config(name, alpha=10.0, lam=1.0, batch_size=128, per_example=False)
  return config_lib.apply_model_arg(config, None if arg == "lfssd" else arg)
