"""Data attribution in JAX: TRAK, datamodels and the linear datamodeling score (LDS).

`trak` scores training rows by projected per-example gradients ensembled over models; `datamodels` regresses
each target's output on the subset indicators of models trained on α-subsets; `lds` judges either on held-out
subset models. DMM unlearning (`unlearn_jax.unlearning.dmm`, in `unlearn_jax.unlearning._dmm`) is built on them.
"""
from unlearn_jax.attribution.datamodels import Datamodels, fit_datamodels, predict, removal_effect
from unlearn_jax.attribution.lds import lds, spearman_per_target
from unlearn_jax.attribution.trak import (Features, cached_features, featurize, kernel_features, margin,
                                          out_to_loss, predicted_outputs, project, trak_scores, unstack)

__all__ = [
    "Datamodels",
    "Features",
    "cached_features",
    "featurize",
    "fit_datamodels",
    "kernel_features",
    "lds",
    "margin",
    "out_to_loss",
    "predict",
    "predicted_outputs",
    "project",
    "removal_effect",
    "spearman_per_target",
    "trak_scores",
    "unstack",
]
