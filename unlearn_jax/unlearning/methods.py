"""Iterative unlearning methods of the SalUn / Unlearn-Sparse benchmark: each an objective run by `loop`.

Every method has the signature ``method(model, params, state, forget, retain, *, config, rng) -> (params,
state)``. ``config`` holds the optimiser fields of `unlearn_jax.train.make_optimizer` (``optimizer``, ``lr``,
``momentum``, ``weight_decay``, ``schedule``...), ``epochs``, ``batch_size``, ``phases`` (``'sequential'``:
all forget batches then all retain batches each epoch, as the SalUn code does; ``'joint'``: one summed loss per
step, as the papers write it) and the method's own options below.

Methods:
  ft: fine-tune on the retain set (cross-entropy).
  ga: gradient ascent on the forget set (−CE).
  neggrad_plus: ``β·CE(retain) − (1−β)·CE(forget)`` per step (Kurmanji et al. 2023), ``beta``.
  rl: random labels on the forget set plus retain CE (Golatkar et al. 2020; SalUn). Labels are drawn over all
    classes, the true one included, as the SalUn code's ``torch.randint`` (``exclude_true=True``: a wrong class).
  l1_sparse: retain CE + ``α_t‖θ‖₁`` with α decaying linearly to 0 (Jia et al. 2023), ``alpha``.
  salun: RL restricted to the top-``fraction`` salient weights (Fan et al. 2024), ``fraction``, ``per_layer``,
    ``mask_mode``: ``'gradient'`` (default, as the SalUn code that produced the paper's tables: the mask multiplies
    the gradients before the optimiser, so weight decay and momentum still move masked weights) or ``'freeze'``
    (masked weights stay exactly at the Original's values, as the SalUn repository's 2026 ``_restore_masked_params``).
  salun_soft: RL with a soft saliency mask (`saliency.soft_saliency_mask`).

Defaults follow the SalUn / Unlearn-Sparse ``arg_parser.py``: SGD (momentum 0.9, weight decay 5e-4), constant
learning rate 0.01, 10 epochs, batch size 256 (GA: lr 1e-4; NegGrad+: the SCRUB code's batch size 64).

Each method is a `Plan`: its objective as a function of its main coefficient (``beta``, ``alpha``; traced under a
sweep), the mask it needs for a given coefficient (SalUn's ``fraction``), and the mask mode. The method runs its
plan once (`run_plan`); `unlearn_jax.sweep` runs a whole grid of learning rates and coefficients of the same plan
as one vmapped program.

References:
  Fan et al., "SalUn", ICLR 2024; Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023;
  Kurmanji et al., "Towards Unbounded Machine Unlearning" (SCRUB, NegGrad+), NeurIPS 2023.

Example:
    >>> params, state = unlearn_jax.unlearning.salun(model, params, state, forget, retain,
    ...                                              rng=jax.random.key(0), lr=0.013, epochs=10)
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from unlearn_jax import train as train_lib
from unlearn_jax.unlearning import loop
from unlearn_jax.unlearning import objectives as obj
from unlearn_jax.unlearning import options, register, saliency

Pytree = Any

# Optimiser and loop fields every iterative method accepts (the SalUn / Unlearn-Sparse arg_parser defaults: SGD,
# momentum 0.9, wd 5e-4, constant learning rate 0.01 over 10 epochs, batch size 256).
LOOP_DEFAULTS = dict(epochs=10, lr=0.01, optimizer="sgd", momentum=0.9, nesterov=False, weight_decay=5e-4,
                     schedule="constant", warmup_epochs=0, milestones=(), gamma=0.1, batch_size=256,
                     phases="sequential")


class Plan(NamedTuple):
  """How an iterative method runs, for one setting or a grid of them.

  Attributes:
    objective: ``objective(coef) -> loop.Objective``; ``coef`` is the value of the option ``coef`` names (a float,
      or a traced scalar under a sweep), None for a method without one.
    coef: the option a sweep varies besides the learning rate (``beta``, ``alpha``, ``fraction``), or None.
    mask: ``mask(coef) -> pytree`` (a concrete float ``coef``), or None for no mask.
    mask_mode: how the mask acts (`loop.masked_optimizer`).
  """
  objective: Callable[[Any], loop.Objective]
  coef: str | None = None
  mask: Callable[[float], Pytree] | None = None
  mask_mode: str = "freeze"


# name -> plan(model, params, state, forget, retain, opts) -> Plan; every method here registers one.
PLANS: dict[str, Callable[..., Plan]] = {}
# name -> the ``Plan.coef`` its plans have (known without building one, which may need a saliency pass).
COEFS: dict[str, str | None] = {}


def plan_method(name: str, coef: str | None = None, *, check=None, **defaults):
  """Registers ``build(model, params, state, forget, retain, opts) -> Plan`` as the method ``name``; ``coef`` is
  the option its plans vary (``Plan.coef``); ``check``: as for `unlearn_jax.unlearning.register`."""

  def wrap(build):
    PLANS[name], COEFS[name] = build, coef

    def method(model, params, state, forget, retain, *, config, rng):
      opts = options(config, name)
      return run_plan(model, params, state, forget, retain, build(model, params, state, forget, retain, opts),
                      opts, rng)

    method.__name__, method.__doc__ = build.__name__, build.__doc__
    return register(name, check=check, **defaults)(method)

  return wrap


def loop_kwargs(plan: Plan, opts, forget, retain) -> dict:
  """The splits and loop options of ``plan`` (a term's split is passed only if the objective has that term)."""
  probe = plan.objective(opts[plan.coef] if plan.coef else None)
  return dict(forget=forget if probe.forget is not None else None,
              retain=retain if probe.retain is not None else None,
              epochs=opts.epochs, batch_size=opts.batch_size, schedule=opts.phases, mask_mode=plan.mask_mode,
              steps=loop.steps_per_epoch(forget, retain, probe, schedule=opts.phases, batch_size=opts.batch_size))


def run_plan(model, params, state, forget, retain, plan: Plan, opts, rng):
  """Runs ``plan`` at the options' own coefficient and learning rate; returns ``(params, state)``."""
  coef = opts[plan.coef] if plan.coef else None
  kw = loop_kwargs(plan, opts, forget, retain)
  tx = train_lib.make_optimizer(opts, kw.pop("steps"))
  mask = plan.mask(coef) if plan.mask is not None else None
  # a scalar coefficient (beta, alpha) is a traced argument of the loop; a mask coefficient (SalUn's fraction)
  # only shapes the mask, which the optimiser state carries
  scalar = plan.coef is not None and plan.mask is None
  params, state, _ = loop.unlearn_loop(model, params, state, kw.pop("forget"), kw.pop("retain"),
                                       objective=plan.objective if scalar else plan.objective(coef), tx=tx,
                                       rng=rng, mask=mask, coef=coef if scalar else None, **kw)
  return params, state


def run_objective(model, params, state, forget, retain, objective: loop.Objective, opts, rng, *, mask=None,
                  forget_epochs=None):
  """Builds the optimiser from ``opts`` and runs `loop.unlearn_loop`; returns ``(params, state)``."""
  steps = loop.steps_per_epoch(forget, retain, objective, schedule=opts.phases, batch_size=opts.batch_size)
  tx = train_lib.make_optimizer(opts, steps)
  params, state, _ = loop.unlearn_loop(model, params, state, forget, retain, objective=objective, tx=tx,
                                       epochs=opts.epochs, batch_size=opts.batch_size, rng=rng,
                                       schedule=opts.phases, mask=mask, forget_epochs=forget_epochs)
  return params, state


@plan_method("ft", **LOOP_DEFAULTS)
def fine_tune(model, params, state, forget, retain, opts):
  """FT: continue training on the retain set only."""
  return Plan(lambda _: loop.Objective(retain=obj.cross_entropy(model)))


@plan_method("ga", **{**LOOP_DEFAULTS, "lr": 1e-4})
def gradient_ascent(model, params, state, forget, retain, opts):
  """GA: ascend the cross-entropy of the forget set."""
  return Plan(lambda _: loop.Objective(forget=obj.negated(obj.cross_entropy(model))))


def _check_beta(opts) -> None:
  """NegGrad+'s ``beta`` (the retain share of the loss) in [0, 1]."""
  if not 0 <= opts.beta <= 1:
    raise ValueError(f"method.beta={opts.beta!r}: must be in [0, 1]")


@plan_method("neggrad_plus", "beta", check=_check_beta,
             **{**LOOP_DEFAULTS, "batch_size": 64, "beta": 0.95, "phases": "joint"})
def neggrad_plus(model, params, state, forget, retain, opts):
  """NegGrad+: ``β·CE(retain) − (1−β)·CE(forget)``, jointly per step by default."""
  ce = obj.cross_entropy(model)
  return Plan(lambda beta: loop.Objective(forget=obj.scaled(obj.negated(ce), 1.0 - beta),
                                          retain=obj.scaled(ce, beta)), coef="beta")


def rl_objective(model, exclude_true: bool) -> loop.Objective:
  return loop.Objective(forget=obj.random_labels(model, exclude_true), retain=obj.cross_entropy(model),
                        shared=obj.random_or_true_labels(model, exclude_true))


@plan_method("rl", **LOOP_DEFAULTS, exclude_true=False)
def random_label(model, params, state, forget, retain, opts):
  """RL: cross-entropy to random labels on the forget set (over all classes unless ``exclude_true``), plus retain
  cross-entropy."""
  return Plan(lambda _: rl_objective(model, opts.exclude_true))


def _check_alpha(opts) -> None:
  """l1-sparse's ``alpha`` (the L1 weight at the first epoch) >= 0."""
  if not opts.alpha >= 0:
    raise ValueError(f"method.alpha={opts.alpha!r}: must be >= 0 (the L1 penalty's weight)")


@plan_method("l1_sparse", "alpha", check=_check_alpha, **LOOP_DEFAULTS, alpha=5e-4)
def l1_sparse(model, params, state, forget, retain, opts):
  """l1-sparse: fine-tune with ``α_t‖θ‖₁``, α decaying linearly from ``alpha`` to 0 over the epochs."""
  ce = obj.cross_entropy(model)
  return Plan(lambda alpha: loop.Objective(retain=obj.with_decaying_l1(ce, alpha, opts.epochs)), coef="alpha")


SALUN_DEFAULTS = dict(LOOP_DEFAULTS, fraction=0.5, per_layer=False, exclude_true=False, saliency_batch_size=256,
                      mask_mode="gradient")


def _salun_plan(model, params, state, forget, opts, soft: bool) -> Plan:
  grads = saliency.forget_saliency(model, params, state, forget, batch_size=opts.saliency_batch_size)
  if soft:
    mask = lambda fraction: saliency.soft_saliency_mask(grads, fraction=fraction)
  else:
    mask = lambda fraction: saliency.saliency_mask(grads, fraction=fraction, per_layer=opts.per_layer)
  return Plan(lambda _: rl_objective(model, opts.exclude_true), coef="fraction", mask=mask, mask_mode=opts.mask_mode)


@plan_method("salun", "fraction", **SALUN_DEFAULTS)
def salun(model, params, state, forget, retain, opts):
  """SalUn: RL on the top-``fraction`` weights by forget-gradient saliency (``mask_mode``: see the module doc)."""
  return _salun_plan(model, params, state, forget, opts, soft=False)


@plan_method("salun_soft", "fraction", **SALUN_DEFAULTS)
def salun_soft(model, params, state, forget, retain, opts):
  """SalUn-soft: RL with the gradients (or updates) scaled by a soft saliency mask in [0, 1]."""
  return _salun_plan(model, params, state, forget, opts, soft=True)
