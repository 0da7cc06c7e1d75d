"""Evaluation of unlearned models: UA / RA / TA, MIA-efficacy, KL to Retrain, gap tables and plots; population
metrics (U-LiRA, KLoM, the NeurIPS 2023 challenge score) in `population`."""
from unlearn_jax.evaluation.metrics import accuracy
from unlearn_jax.evaluation.metrics import avg_gap
from unlearn_jax.evaluation.metrics import evaluate_unlearning
from unlearn_jax.evaluation.metrics import GAP_KEYS
from unlearn_jax.evaluation.metrics import kl_to_reference
from unlearn_jax.evaluation.metrics import mia_efficacy
from unlearn_jax.evaluation.metrics import predict
from unlearn_jax.evaluation.metrics import unlearning_accuracies
from unlearn_jax.evaluation.mia import HEADLINE_FEATURE
from unlearn_jax.evaluation.mia import MIA_FEATURES
from unlearn_jax.evaluation.mia import mia_efficacy_from_logits
from unlearn_jax.evaluation.mia import mia_features
from unlearn_jax.evaluation.mia import svc_mia
from unlearn_jax.evaluation import population
from unlearn_jax.evaluation.population import challenge_epsilons
from unlearn_jax.evaluation.population import challenge_score
from unlearn_jax.evaluation.population import evaluate as evaluate_population
from unlearn_jax.evaluation.population import forgetting_quality
from unlearn_jax.evaluation.population import klom
from unlearn_jax.evaluation.population import linear_cka
from unlearn_jax.evaluation.population import noise_floor
from unlearn_jax.evaluation.population import relearn_time
from unlearn_jax.evaluation.population import ulira
from unlearn_jax.evaluation.report import aggregate_seeds
from unlearn_jax.evaluation.report import atomic_write
from unlearn_jax.evaluation.report import format_table
from unlearn_jax.evaluation.report import plot_gaps
from unlearn_jax.evaluation.report import write_results
from unlearn_jax.evaluation.plots import plot_barrier
from unlearn_jax.evaluation.plots import plot_method_bars
from unlearn_jax.evaluation.plots import plot_tradeoff
from unlearn_jax.evaluation.plots import write_plots

__all__ = [
    "accuracy",
    "aggregate_seeds",
    "atomic_write",
    "avg_gap",
    "evaluate_unlearning",
    "format_table",
    "GAP_KEYS",
    "HEADLINE_FEATURE",
    "kl_to_reference",
    "mia_efficacy",
    "mia_efficacy_from_logits",
    "MIA_FEATURES",
    "mia_features",
    "plot_barrier",
    "plot_gaps",
    "plot_method_bars",
    "plot_tradeoff",
    "predict",
    "svc_mia",
    "unlearning_accuracies",
    "write_plots",
    "write_results",
]
