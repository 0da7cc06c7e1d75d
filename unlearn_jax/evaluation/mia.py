"""Membership-inference efficacy (MIA-efficacy) as SalUn and Unlearn-Sparse measure it, in NumPy + scikit-learn.

The attack is a shadow-model-free SVC: an RBF ``sklearn.svm.SVC(C=3, gamma='auto')`` is fitted on one feature
of the model's softmax outputs, with *shadow members* (retain examples the model was trained on, label 1) and
*shadow non-members* (test examples, label 0). It is then applied to the forget set; **MIA-efficacy** is the
fraction of forget examples it calls non-members, ``1 - mean(prediction)``. A perfectly unlearned model makes the
forget set look like unseen data (high efficacy); the Original model makes it look like training data (low).

Protocol, as in ``Classification/main_forget.py`` of Unlearn-Saliency (SalUn): shadow members are the first
``len(test)`` retain examples (all of retain if it is smaller), shadow non-members the whole test set, targets
the forget set, and one SVC per feature:

- ``'confidence'``: ``p[y]``, the probability of the true label (the headline value, see `HEADLINE_FEATURE`);
- ``'correctness'``: ``1[argmax p == y]``;
- ``'entropy'``: ``-sum_i p_i log p_i``;
- ``'m_entropy'``: the modified entropy of Song & Mittal (2021),
  ``-(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``;
- ``'prob'``: the whole probability vector.

``'confidence'``, ``'correctness'``, ``'entropy'`` and ``'prob'`` match the reference code. ``'m_entropy'`` follows
Song & Mittal's formula as written; the reference ``m_entropy`` indexes columns with the whole label vector
(``p[:, labels]``) and takes ``log p`` where ``log(1 - p)`` is meant, so on a batch that covers every class it
computes ``-sum_i (1 - p_i) log p_i`` instead. Its numbers for that one feature therefore differ from ours.

Everything here takes probabilities (or logits, for `mia_efficacy_from_logits`) as arrays, so the attack can be
checked on hand-made numbers; `unlearn_jax.evaluation.metrics.mia_efficacy` runs a model first.

Example:
    >>> eff = svc_mia(p_retain, y_retain, p_test, y_test, p_forget, y_forget, feature='confidence')

References:
    Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both Image
    Classification and Generation", ICLR 2024 (code: github.com/OPTML-Group/Unlearn-Saliency,
    ``Classification/evaluation/SVC_MIA.py``, ``Classification/main_forget.py``).
    Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023, Appendix C.3 (code:
    github.com/OPTML-Group/Unlearn-Sparse, ``evaluation/SVC_MIA.py``).
    Song & Mittal, "Systematic Evaluation of Privacy Risks of Machine Learning Models", USENIX Security 2021.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import special

# The key SalUn reports as "MIA": its Classification/README.md says MIA is
# ``SVC_MIA_forget_efficacy['confidence'] * 100``; Unlearn-Sparse's main_forget.py logs the same key as
# "Forget Confidence (MIA)".
HEADLINE_FEATURE = "confidence"

# SVC hyper-parameters of the reference ``SVC_fit_predict``.
SVC_C = 3.0
SVC_GAMMA = "auto"

_LOG_FLOOR = 1e-30  # the reference replaces log(0) by log(1e-30)


def _confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
  return np.take_along_axis(probs, labels[:, None], axis=1)


def _correctness(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
  return (np.argmax(probs, axis=1) == labels).astype(np.float64)[:, None]


def _entropy(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
  del labels
  return special.entr(probs).sum(axis=1, keepdims=True)


def _modified_entropy(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
  log_p = np.log(np.maximum(probs, _LOG_FLOOR))
  log_not_p = np.log(np.maximum(1.0 - probs, _LOG_FLOOR))
  is_label = np.arange(probs.shape[1])[None, :] == labels[:, None]
  terms = np.where(is_label, (1.0 - probs) * log_p, probs * log_not_p)
  return -terms.sum(axis=1, keepdims=True)


def _prob(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
  del labels
  return probs


_FEATURES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "confidence": _confidence,
    "correctness": _correctness,
    "entropy": _entropy,
    "m_entropy": _modified_entropy,
    "prob": _prob,
}

# Every feature, the headline first.
MIA_FEATURES: tuple[str, ...] = tuple(_FEATURES)


def _check_probs(name: str, probs, labels) -> tuple[np.ndarray, np.ndarray]:
  probs = np.asarray(probs, dtype=np.float64)
  labels = np.asarray(labels)
  if probs.ndim != 2:
    raise ValueError(f"{name}: probabilities must have shape (n, num_classes), got {probs.shape}")
  if labels.shape != probs.shape[:1]:
    raise ValueError(f"{name}: labels of shape {labels.shape} do not match probabilities of shape {probs.shape}")
  if probs.shape[0] == 0:
    raise ValueError(f"{name}: no examples")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name}: labels must be integers, got dtype {labels.dtype}")
  if labels.min() < 0 or labels.max() >= probs.shape[1]:
    raise ValueError(f"{name}: labels must lie in [0, {probs.shape[1]}), got [{labels.min()}, {labels.max()}]")
  if not np.all(np.isfinite(probs)):
    raise ValueError(f"{name}: probabilities are not all finite")
  return probs, labels


def mia_features(probs, labels, feature: str = HEADLINE_FEATURE) -> np.ndarray:
  """The attack feature of each example, shape ``(n, d)`` (``d = num_classes`` for ``'prob'``, else 1).

  Args:
    probs: softmax outputs, shape ``(n, num_classes)``.
    labels: integer true labels, shape ``(n,)``.
    feature: one of `MIA_FEATURES`.

  Returns:
    float64 array ``(n, d)``.
  """
  if feature not in _FEATURES:
    raise ValueError(f"unknown MIA feature {feature!r}; expected one of {MIA_FEATURES}")
  probs, labels = _check_probs("mia_features", probs, labels)
  return _FEATURES[feature](probs, labels)


def svc_mia(shadow_member_probs, shadow_member_labels, shadow_nonmember_probs, shadow_nonmember_labels,
            target_probs, target_labels, feature: str = HEADLINE_FEATURE) -> float:
  """MIA-efficacy of one feature: the fraction of targets an SVC trained on shadow data calls non-members.

  The SVC (``C=3``, ``gamma='auto'``, RBF kernel) is fitted on the feature of shadow members (label 1) and
  shadow non-members (label 0); the result is ``1 - mean(svc.predict(target features))``.

  Args:
    shadow_member_probs: ``(m, C)`` softmax outputs on examples the model was trained on.
    shadow_member_labels: ``(m,)`` their integer labels.
    shadow_nonmember_probs: ``(k, C)`` softmax outputs on held-out examples.
    shadow_nonmember_labels: ``(k,)`` their labels.
    target_probs: ``(t, C)`` softmax outputs on the examples under attack (the forget set).
    target_labels: ``(t,)`` their labels.
    feature: one of `MIA_FEATURES`.

  Returns:
    MIA-efficacy in ``[0, 1]``.

  References:
    ``SVC_fit_predict`` in ``Classification/evaluation/SVC_MIA.py`` of github.com/OPTML-Group/Unlearn-Saliency
    (the forget set is passed there as ``target_test``, hence ``1 - mean``).
  """
  if feature not in _FEATURES:
    raise ValueError(f"unknown MIA feature {feature!r}; expected one of {MIA_FEATURES}")
  groups = {"shadow members": (shadow_member_probs, shadow_member_labels),
            "shadow non-members": (shadow_nonmember_probs, shadow_nonmember_labels),
            "targets": (target_probs, target_labels)}
  feats = {}
  for name, (probs, labels) in groups.items():
    probs, labels = _check_probs(name, probs, labels)
    feats[name] = _FEATURES[feature](probs, labels)
  members, nonmembers, targets = feats.values()
  if not members.shape[1] == nonmembers.shape[1] == targets.shape[1]:
    raise ValueError(f"number of classes differs between groups: {[f.shape[1] for f in feats.values()]}")
  x = np.concatenate([members, nonmembers])
  y = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
  # imported here: scikit-learn (with pandas) is a third of the library's import time, which every process the
  # runner, the tests and the benchmarks start would pay without running an attack
  from sklearn import svm  # pylint: disable=g-import-not-at-top
  clf = svm.SVC(C=SVC_C, gamma=SVC_GAMMA, kernel="rbf").fit(x, y)
  return float(1.0 - clf.predict(targets).mean())


def mia_efficacy_from_logits(*, retain_logits, retain_labels, test_logits, test_labels, forget_logits,
                             forget_labels, features: Sequence[str] = MIA_FEATURES) -> dict[str, float]:
  """MIA-efficacy of the forget set for each feature, from logits, with SalUn's shadow sets.

  Shadow members are the first ``len(test)`` retain rows (all of retain if fewer), shadow non-members the test
  set. Logits are turned into probabilities with a stable softmax.

  Args:
    retain_logits, retain_labels: model outputs ``(n_r, C)`` and labels ``(n_r,)`` on the retain set.
    test_logits, test_labels: the same on the test set.
    forget_logits, forget_labels: the same on the forget set.
    features: which features to attack with (a subset of `MIA_FEATURES`).

  Returns:
    ``{feature: efficacy}`` in the order of ``features``; ``HEADLINE_FEATURE`` is the number the papers report.

  References:
    ``Classification/main_forget.py`` of github.com/OPTML-Group/Unlearn-Saliency (``shadow_train`` is
    ``Subset(retain, range(len(test)))``, ``shadow_test`` the test set, ``target_test`` the forget set).
  """
  if not features:
    raise ValueError("features must name at least one MIA feature")
  n_shadow = min(len(retain_logits), len(test_logits))
  probs = [special.softmax(np.asarray(logits, np.float64), axis=-1)
           for logits in (retain_logits[:n_shadow], test_logits, forget_logits)]
  labels = (np.asarray(retain_labels)[:n_shadow], test_labels, forget_labels)
  return {f: svc_mia(probs[0], labels[0], probs[1], labels[1], probs[2], labels[2], feature=f) for f in features}
