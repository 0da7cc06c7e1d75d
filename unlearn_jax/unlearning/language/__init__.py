"""Language-model unlearning: GA, GradDiff, NPO, SimNPO, IdkDPO, AltPO, RMU, SAE-latent, UNDIAL, CE-U, SatImp,
WGA, PDU, FLAT and WAGLE, run by the one loop.

`unlearn_lm` looks a method up in `METHODS` (its default options), builds its `unlearn_jax.unlearning.loop`
objective (`objectives`, `tokenwise`, `_rmu`, `_sae`; WAGLE adds a `_wagle` mask), an AdamW optimiser with a
linear-warmup schedule (`optimizer`), and runs `loop.unlearn_loop` with the ``'joint'`` schedule: each step takes
one forget and one retain batch and descends
on ``forget term + retain term``. Frozen pytrees (the reference model, RMU's control vector, the SAE probe) ride
in the loop state (`unlearn_jax.unlearning.teachers.carry`).

Every method can train LoRA adapters instead of all weights (options ``lora_rank`` > 0, ``lora_alpha``,
``lora_targets``; `lora`): the objective's terms are wrapped to read the merged weights, the Original rides frozen
in the loop state, only the adapters (and their AdamW moments) are updated, and the merged weights are returned.

Epochs are anchored on the forget set, as open-unlearning's ``ForgetRetainDataset(anchor='forget')`` does: one
epoch is one pass over the forget rows, each paired with a cycled retain batch (``anchor='retain'`` swaps the
roles); the ``anchor`` option is handed to the loop (`loop.unlearn_loop(anchor=...)`).

Defaults (open-unlearning's ``configs/trainer/*.yaml`` and TOFU experiment): AdamW (β₁ 0.9, β₂ 0.999, ε 1e-8),
lr 1e-5, weight decay 0.01, 10 epochs, effective batch 32 (8 × 4 accumulation), one warm-up epoch then a linear
decay (HF's default scheduler); GradDiff/NPO/IdkDPO ``γ = α = 1``, NPO/IdkDPO ``β = 0.1``, SimNPO ``β = 4.5,
δ = 0, γ = 0.125``; RMU as in its WMDP experiment (lr 5e-5, constant, no weight decay, ``c = 2``). These are
starting points for 1B-parameter models; the tiny-GPT configs override lr and epochs.

The newer methods take their defaults from the same place (``configs/trainer/<NAME>.yaml``, and where that leaves
a value open, the method's ``community/methods/<NAME>/run.sh`` for TOFU): UNDIAL lr 1e-4, ``β = 10``, ``α = 0``
(no retain term, as its yaml); CE-U forget-only, ``ignore_first_n = 1``; SatImp 5 epochs, ``β₁ = 5, β₂ = 1``,
``γ = 0.1, α = 1`` (the yaml; the class's own defaults are ``γ = 1, α = 0.1``); WGA 5 epochs, ``β = 1``; PDU
``ε = 0.3`` (the yaml leaves it required; TOFU's run.sh), dual step 1, 5 dual warm-up epochs, ``λ₀ = α = 1``;
AltPO = DPO (``β = 0.1``) on alternate answers for 2 epochs (its run.sh); FLAT (its own repository's
``config/forget.yaml``): forget-only, 5 epochs, batch 64, Total-Variation; WAGLE (`_wagle`): NPO with a 95 % mask,
5 epochs, weight decay 0.1.

References:
  open-unlearning (github.com/locuslab/open-unlearning): ``src/trainer/unlearn/*.py``, ``src/data/unlearn.py``,
  ``configs/trainer/*.yaml``, ``configs/experiment/unlearn/{tofu,wmdp}/default.yaml``.

Every method is also a function of this module taking its options as keywords (`unlearn_jax.unlearning`'s
``keyword_method``: the signature and the docstring list them, an unknown one raises ValueError before any work):
``npo(lm, params, forget, retain, *, rng, config=None, lr=1e-5, beta=0.1, ...)`` is ``unlearn_lm('npo', ...)``.
The learning rate (in AdamW's state: `unlearn_jax.train.make_optimizer`) and the method's main coefficient
(`COEFS`: NPO's ``beta``, GradDiff's ``alpha``...) are arguments of the compiled epochs, so a second run that
changes only them compiles nothing (with the persistent compilation cache, `unlearn_jax.compilation`).

Example:
    >>> params_u, history = npo(lm, params, forget, retain, rng=jax.random.key(0), lr=1e-3, epochs=5)
    >>> params_u, history = unlearn_lm("npo", lm, params, forget, retain, options={"lr": 1e-3, "epochs": 5},
    ...                                rng=jax.random.key(0))
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from unlearn_jax import language
from unlearn_jax import model as model_lib
from unlearn_jax import sharding
from unlearn_jax import train as train_lib
from unlearn_jax.data import split as split_lib
from unlearn_jax.unlearning import keyword_method
from unlearn_jax.unlearning import loop
from unlearn_jax.unlearning import options as method_options
from unlearn_jax.unlearning import teachers
from unlearn_jax.unlearning.language import lora
from unlearn_jax.unlearning.language import objectives
from unlearn_jax.unlearning.language import _rmu
from unlearn_jax.unlearning.language import _sae
from unlearn_jax.unlearning.language import tokenwise
from unlearn_jax.unlearning.language import _wagle
from unlearn_jax.unlearning import saliency
from unlearn_jax.unlearning.language.objectives import REFERENCE
from unlearn_jax.unlearning.language._sae import SAEProbe, fit_probe, sae_separation

Pytree = Any
ANCHORS = loop.ANCHORS

# Optimiser and loop options shared by every method, and LoRA's (`lora.OPTIONS`; lora_rank 0: all weights train).
COMMON = dict(lr=1e-5, epochs=10, batch_size=32, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, schedule="linear",
              warmup_epochs=1.0, anchor="forget", **lora.OPTIONS)
_GRADDIFF = dict(gamma=1.0, alpha=1.0, retain_loss="nll")
# name -> default options (an option absent here is rejected, naming ``method.<key>``). ``layer=None``: chosen
# from the model's depth (`_rmu.default_layer`: a quarter of the blocks for RMU, half for the SAE).
METHODS: dict[str, dict] = {
    "ga": dict(COMMON),
    "graddiff": dict(COMMON, **_GRADDIFF),
    "npo": dict(COMMON, **_GRADDIFF, beta=0.1),
    "simnpo": dict(COMMON, **{**_GRADDIFF, "gamma": 0.125}, beta=4.5, delta=0.0),
    "idkdpo": dict(COMMON, **_GRADDIFF, beta=0.1),
    "rmu": dict(COMMON, lr=5e-5, weight_decay=0.0, schedule="constant", warmup_epochs=0.0, gamma=1.0, alpha=1.0,
                steering_coeff=2.0, layer=None, params_regex=".*"),
    "sae": dict(COMMON, **_GRADDIFF, layer=None, sae_expansion=4, sae_l1=1e-2, sae_steps=1000, sae_lr=1e-3,
                sae_batch_size=1024),
    "altpo": dict(COMMON, epochs=2, **_GRADDIFF, beta=0.1),
    "undial": dict(COMMON, lr=1e-4, **{**_GRADDIFF, "alpha": 0.0}, beta=10.0, positions="real"),
    "ceu": dict(COMMON, gamma=1.0, ignore_first_n=1),
    "satimp": dict(COMMON, epochs=5, **{**_GRADDIFF, "gamma": 0.1}, beta1=5.0, beta2=1.0),
    "wga": dict(COMMON, epochs=5, **_GRADDIFF, beta=1.0),
    "pdu": dict(COMMON, **_GRADDIFF, retain_eps=0.3, primal_dual=True, dual_step=1.0, dual_warmup_epochs=5),
    "flat": dict(COMMON, epochs=5, batch_size=64, gamma=1.0, divergence="total_variation", flat_mean="positions"),
    "wagle": dict(COMMON, epochs=5, weight_decay=0.1, **_GRADDIFF, base="npo", beta=0.1, fraction=0.95,
                  hessian="squared_gradient", wagle_gamma=1.0, mu=1e-3),
}
# name -> the method's main coefficient: an argument of the compiled epochs (`build`'s ``traced``), as the
# learning rate is (`unlearn_jax.train.make_optimizer`), so runs differing only in them compile nothing new.
COEFS = {"graddiff": "alpha", "npo": "beta", "simnpo": "beta", "idkdpo": "beta", "altpo": "beta", "rmu": "alpha",
         "sae": "alpha", "undial": "beta", "ceu": "gamma", "satimp": "beta1", "wga": "beta", "pdu": "gamma",
         "flat": "gamma", "wagle": "alpha"}
# How a method's parameter mask acts (`loop.unlearn_loop`'s ``mask_mode``; the others: 'freeze').
MASK_MODES = {"wagle": "gradient"}
# Batch fields each method's forget term reads beyond input_ids / loss_mask.
FORGET_FIELDS = {"idkdpo": ("idk_input_ids", "idk_loss_mask"), "sae": ("entity_mask",),
                 "altpo": ("alt_input_ids", "alt_loss_mask"), "flat": ("idk_input_ids", "idk_loss_mask")}
# Methods with no retain term (the loop walks the forget set alone).
FORGET_ONLY = ("ga", "ceu", "flat")
WAGLE_BASES = ("npo", "graddiff")
# Options naming a choice -> the choices.
_CHOICES = {"positions": tokenwise.UNDIAL_POSITIONS, "divergence": tuple(tokenwise.FLAT_DIVERGENCES),
            "flat_mean": tokenwise.FLAT_MEANS, "hessian": _wagle.HESSIANS, "base": WAGLE_BASES}


def method_config(name: str, options: dict | None = None) -> ml_collections.ConfigDict:
  """The full options of LM method ``name``: `METHODS` defaults updated with ``options``.

  Raises:
    ValueError: for an unknown method, an unknown option (naming ``method.<key>``) or a bad value.
  """
  if name not in METHODS:
    raise ValueError(f"unknown language-model unlearning method {name!r}; choose one of {sorted(METHODS)}")
  opts = method_options(options or {}, name, **METHODS[name])
  for key in ("epochs", "batch_size"):
    if int(opts[key]) < 1:
      raise ValueError(f"method.{key}={opts[key]}: must be >= 1")
  if opts.anchor not in ANCHORS:
    raise ValueError(f"method.anchor={opts.anchor!r}: choose one of {ANCHORS}")
  if "retain_loss" in opts and opts.retain_loss not in objectives.RETAIN_LOSSES:
    raise ValueError(f"method.retain_loss={opts.retain_loss!r}: choose one of {objectives.RETAIN_LOSSES}")
  if "beta" in opts and opts.beta <= 0:
    raise ValueError(f"method.beta={opts.beta}: must be > 0")
  for key, choices in _CHOICES.items():
    if key in opts and opts[key] not in choices:
      raise ValueError(f"method.{key}={opts[key]!r}: choose one of {choices}")
  if "fraction" in opts and not 0 < opts.fraction <= 1:
    raise ValueError(f"method.fraction={opts.fraction}: must be in (0, 1]")
  if "ignore_first_n" in opts and int(opts.ignore_first_n) < 0:
    raise ValueError(f"method.ignore_first_n={opts.ignore_first_n}: must be >= 0")
  lora.check_options(rank=opts.lora_rank, alpha=opts.lora_alpha, targets=opts.lora_targets)  # shapes: lora.check
  if opts.lora_rank and name == "wagle":
    raise ValueError(f"method.lora_rank={opts.lora_rank}: WAGLE's mask selects single weights, which adapters do "
                     "not have; use lora_rank=0")
  if name == "wagle" and int(opts.lora_rank):
    raise ValueError(f"method.lora_rank={opts.lora_rank}: WAGLE masks weights of the full model; use lora_rank=0")
  return opts


def _check_fields(role: str, split: split_lib.Split, fields) -> None:
  if not isinstance(split.x, dict):
    raise ValueError(f"{role}.x must be a dict of arrays (input_ids, loss_mask, ...), got {type(split.x).__name__}")
  missing = [f for f in fields if f not in split.x]
  if missing:
    raise ValueError(f"{role}.x lacks {missing} (has {sorted(split.x)}); build the split with these fields")


def _layer(opts, lm: language.LanguageModel, depth: float) -> int:
  return _rmu.check_layer(lm, _rmu.default_layer(lm.num_layers, depth) if opts.layer is None else int(opts.layer))


def fit_sae_probe(lm: language.LanguageModel, params: Pytree, opts, *, forget: split_lib.Split,
                  retain: split_lib.Split, holdout: split_lib.Split | None, rng: jax.Array,
                  known: split_lib.Split | None = None) -> SAEProbe:
  """The `SAEProbe` of method 'sae' from its options (``layer``, ``sae_*``): an SAE trained under ``params`` on the
  tokens of forget + retain + holdout, the known centroid from ``known`` (default: ``retain``) and the unknown one
  from ``holdout``."""
  if holdout is None:
    raise ValueError("sae: needs a holdout split (the unknown entities) or a fitted sae_probe")
  known = retain if known is None else known
  _check_fields("holdout", holdout, ("input_ids", "entity_mask"))
  _check_fields("retain", known, ("entity_mask",))
  layer = _layer(opts, lm, 0.5)
  dim = _rmu.hidden_width(lm, params, forget.x["input_ids"], layer)
  return fit_probe(lm, params, [forget.x, retain.x, holdout.x], known_x=known.x, unknown_x=holdout.x,
                   layer=layer, num_latents=int(opts.sae_expansion * dim), l1_coeff=opts.sae_l1,
                   steps=opts.sae_steps, lr=opts.sae_lr, rng=rng, batch_size=opts.sae_batch_size)


def build(name: str, lm: language.LanguageModel, params: Pytree, opts, *, forget: split_lib.Split,
          retain: split_lib.Split, holdout: split_lib.Split | None, rng: jax.Array,
          probe: SAEProbe | None = None, traced: bool = False) -> tuple[loop.Objective, dict, Pytree | None]:
  """``(objective, frozen, mask)`` of method ``name``: its loop terms, the frozen pytrees they read, the
  parameter mask (RMU, WAGLE) or None.

  With ``traced`` and a method in `COEFS`, ``objective`` is ``objective(coef) -> loop.Objective`` with the
  method's main coefficient left as an argument (`loop.unlearn_loop`'s ``coef``: a traced argument of the compiled
  epochs, so runs differing only in it share one program)."""
  frozen: dict = {}
  mask = None
  retain_loss = opts.get("retain_loss", "nll")
  if (name in ("npo", "idkdpo", "altpo", "undial", "rmu") or retain_loss == "kl"
      or (name == "wagle" and opts.base == "npo")):
    frozen[REFERENCE] = params
  # the data-dependent parts, computed once: RMU's layer, control vector and mask, the SAE probe, WAGLE's mask
  if name == "rmu":
    layer = _layer(opts, lm, 0.25)
    dim = _rmu.hidden_width(lm, params, forget.x["input_ids"], layer)
    frozen[_rmu.CONTROL] = _rmu.control_vector(rng, dim, opts.steering_coeff)
    mask = _rmu.param_mask(params, opts.params_regex)
  elif name == "sae":
    if probe is None:
      probe = fit_sae_probe(lm, params, opts, forget=forget, retain=retain, holdout=holdout, rng=rng)
    frozen[_sae.PROBE] = probe
  elif name == "wagle":
    scores = _wagle.wagle_scores(lm, params, forget.x, retain.x, hessian=opts.hessian, gamma=opts.wagle_gamma,
                                 mu=opts.mu)
    mask = saliency.saliency_mask(scores, fraction=opts.fraction)

  def objective(coef=None) -> loop.Objective:
    o = lambda key: coef if coef is not None and key == COEFS.get(name) else opts[key]  # noqa: E731
    if name == "ga":
      return loop.Objective(forget=objectives.gradient_ascent(lm))
    if name == "rmu":
      return _rmu.rmu_objective(lm, layer=layer, gamma=o("gamma"), alpha=o("alpha"))
    if name == "sae":
      return _sae.sae_objective(lm, gamma=o("gamma"), alpha=o("alpha"), retain_loss=retain_loss)
    if name == "ceu":
      return loop.Objective(forget=tokenwise.ceu(lm, int(opts.ignore_first_n), o("gamma")))
    if name == "flat":
      return loop.Objective(forget=tokenwise.flat(lm, opts.divergence, opts.flat_mean, o("gamma")))
    if name == "pdu":
      return loop.Objective(forget=tokenwise.pdu_forget(lm, o("gamma")),
                            retain=tokenwise.pdu_retain(lm, retain_loss, eps=opts.retain_eps,
                                                        dual_step=opts.dual_step,
                                                        warmup_epochs=int(opts.dual_warmup_epochs),
                                                        primal_dual=bool(opts.primal_dual)))
    forget_term = {
        "graddiff": lambda: objectives.gradient_ascent(lm, o("gamma")),
        "npo": lambda: objectives.npo(lm, o("beta"), o("gamma")),
        "simnpo": lambda: objectives.simnpo(lm, o("beta"), o("delta"), o("gamma")),
        "idkdpo": lambda: objectives.idk_dpo(lm, o("beta"), o("gamma")),
        "altpo": lambda: objectives.idk_dpo(lm, o("beta"), o("gamma"), win="alt"),
        "undial": lambda: tokenwise.undial(lm, o("beta"), o("gamma"), opts.positions),
        "satimp": lambda: tokenwise.weighted_ascent(lm, o("beta1"), opts.beta2, o("gamma"), "satimp"),
        "wga": lambda: tokenwise.weighted_ascent(lm, o("beta"), 0.0, o("gamma"), "wga"),
    }[opts.base if name == "wagle" else name]()
    return loop.Objective(forget=forget_term, retain=objectives.retain_term(lm, retain_loss, o("alpha")))

  return (objective if traced and name in COEFS else objective()), frozen, mask


def with_adapters(params: Pytree, objective: loop.Objective, frozen: dict, mask: Pytree | None, opts,
                  rng: jax.Array) -> tuple[Pytree, loop.Objective, dict, Pytree | None]:
  """``(trainable, objective, frozen, mask)`` of `build`'s output under ``opts.lora_rank`` (unchanged when 0).

  With adapters (`lora`): the trainable pytree is the adapters, the Original rides frozen as the base (under
  ``REFERENCE``: it is also the reference model, where the objective reads one), the terms read the merged
  weights, and a parameter mask (RMU's ``params_regex``) is rebuilt over the adapters' paths.
  """
  rank = int(opts.lora_rank)
  if not rank:
    return params, objective, frozen, mask
  adapters = lora.init_adapters(params, rank=rank, targets=opts.lora_targets, rng=rng)
  wrap = lambda o: lora.lora_objective(o, base_key=REFERENCE, scale=opts.lora_alpha / rank)  # noqa: E731
  objective = wrap(objective) if isinstance(objective, loop.Objective) else (lambda c, f=objective: wrap(f(c)))
  mask = None if mask is None else _rmu.param_mask(adapters, opts.params_regex)
  return adapters, objective, {**frozen, REFERENCE: params}, mask


def optimizer(opts, steps_per_epoch: int) -> optax.GradientTransformation:
  """The methods' AdamW (``lr``, ``b1``, ``b2``, ``eps``, ``weight_decay``) under their ``schedule``: the library's
  one optimiser factory (`unlearn_jax.train.make_optimizer`), so the learning rate is in the optimiser state, an
  argument of the compiled programs rather than a constant in them."""
  return train_lib.make_optimizer(ml_collections.ConfigDict({**opts, "optimizer": "adamw"}), steps_per_epoch,
                                  b1=opts.b1, b2=opts.b2, eps=opts.eps)


def prepare(name: str, lm: language.LanguageModel, params: Pytree, opts, *, rng: jax.Array, adapter_rng: jax.Array,
            forget: split_lib.Split | None = None, retain: split_lib.Split | None = None,
            holdout: split_lib.Split | None = None, probe: SAEProbe | None = None, traced: bool = False):
  """``(trainable, objective, state, mask)``: what `unlearn_lm`'s loop starts from (`build`, then
  `with_adapters`; the carried state with the frozen pytrees and PDU's dual variable)."""
  objective, frozen, mask = build(name, lm, params, opts, forget=forget, retain=retain, holdout=holdout, rng=rng,
                                  probe=probe, traced=traced)
  trainable, objective, frozen, mask = with_adapters(params, objective, frozen, mask, opts, adapter_rng)
  state = tokenwise.init_dual(opts.alpha) if name == "pdu" else {}
  return trainable, objective, teachers.carry(state, frozen), mask


def unlearning_step(name: str, lm: language.LanguageModel, params: Pytree, opts, *, rng: jax.Array,
                    forget: split_lib.Split | None = None, retain: split_lib.Split | None = None):
  """One optimiser step of method ``name`` as `unlearn_lm`'s loop takes it (for timings and memory plans).

  ``params`` may be `jax.ShapeDtypeStruct`\\ s for the methods whose objective needs no data (not RMU, the SAE,
  WAGLE); the optimiser state is then abstract too.

  Returns:
    ``(step, trainable, state, opt_state)`` with ``step(trainable, state, opt_state, batches, rng, epoch) ->
    (trainable, state, opt_state, loss, metrics)`` (`loop.term_step` of `loop.joint_term`; of the forget term
    alone for a forget-only method), ``batches`` being ``((forget_x, y), (retain_x, y))`` or ``((forget_x, y),)``.
  """
  trainable, objective, state, mask = prepare(name, lm, params, opts, rng=rng, forget=forget, retain=retain,
                                              adapter_rng=jax.random.fold_in(rng, 7))
  tx = loop.masked_optimizer(optimizer(opts, 1), mask, MASK_MODES.get(name, "freeze"))
  abstract = any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(trainable))
  opt_state = jax.eval_shape(tx.init, trainable) if abstract else tx.init(trainable)
  term = objective.forget if objective.retain is None else loop.joint_term(objective)
  return loop.term_step(term, tx, None), trainable, state, opt_state


def unlearn_lm(name: str, lm: language.LanguageModel, params: Pytree, forget: split_lib.Split,
               retain: split_lib.Split, *, options: dict | None, rng: jax.Array,
               holdout: split_lib.Split | None = None, sae_probe: SAEProbe | None = None):
  """Runs LM unlearning method ``name`` from ``params`` (the Original); returns ``(params, history)``.

  Args:
    name: a key of `METHODS`: 'ga', 'graddiff', 'npo', 'simnpo', 'idkdpo', 'altpo', 'rmu', 'sae', 'undial',
      'ceu', 'satimp', 'wga', 'pdu', 'flat', 'wagle'.
    lm: the model (`unlearn_jax.language.LanguageModel`); RMU and SAE need ``lm.hidden``.
    params: the Original's parameters (not modified).
    forget, retain: splits whose ``x`` is the batch dict (``input_ids``, ``loss_mask``; IdkDPO also
      ``idk_input_ids``/``idk_loss_mask`` (and FLAT), AltPO ``alt_input_ids``/``alt_loss_mask``, SAE
      ``entity_mask``).
    options: overrides of the method's `METHODS` defaults (a dict or ConfigDict; ``name`` is ignored).
    rng: PRNG key (shuffling, the RMU control vector, the SAE).
    holdout: the unknown-entity split (with ``entity_mask``), needed by 'sae' unless ``sae_probe`` is given.
    sae_probe: a fitted `SAEProbe` for 'sae' (e.g. the one the evaluation uses; its layer wins over
      ``layer``); if None it is fitted here on the Original (``sae_*`` options).

  Returns:
    The unlearned parameters (with ``lora_rank > 0``: the merged ``W + (lora_alpha / lora_rank) A B``, see
    `lora`) and the loop's history (per-epoch means: ``joint_loss``, ``joint_forget_loss``,
    ``joint_retain_loss``, ``joint_forget_<metric>``..., ``epoch_seconds``, ``seconds``; and
    ``trainable_params``, ``opt_state_bytes``: what the optimiser updates and keeps).

  Raises:
    ValueError: unknown method or option (``method.<key>``), a bad option value, or a split lacking a field.
  """
  opts = method_config(name, options)
  _check_fields("forget", forget, ("input_ids", "loss_mask") + FORGET_FIELDS.get(name, ()))
  if name not in FORGET_ONLY:
    if retain is None:
      raise ValueError(f"{name}: needs a retain split")
    _check_fields("retain", retain, ("input_ids", "loss_mask"))
  build_rng, loop_rng = jax.random.split(rng)
  trainable, objective, state, mask = prepare(name, lm, params, opts, forget=forget, retain=retain,
                                              holdout=holdout, rng=build_rng, probe=sae_probe,
                                              adapter_rng=jax.random.fold_in(rng, 7), traced=True)
  coef = opts[COEFS[name]] if name in COEFS else None
  bs = int(opts.batch_size)
  if (objective(coef) if coef is not None else objective).retain is None:
    retain = None
  walked = retain if (retain is not None and opts.anchor == "retain") else forget  # the split an epoch walks
  tx = optimizer(opts, walked.num_batches(min(bs, walked.size)))
  trained, _, history = loop.unlearn_loop(None, trainable, state, forget, retain, objective=objective, tx=tx,
                                          epochs=int(opts.epochs), batch_size=bs, rng=loop_rng, schedule="joint",
                                          anchor=opts.anchor, mask=mask, mask_mode=MASK_MODES.get(name, "freeze"),
                                          desc=name, coef=coef)
  history.update(trainable_params=model_lib.num_params(trainable),
                 opt_state_bytes=sharding.bytes_per_device(jax.eval_shape(tx.init, trainable)))
  rank = int(opts.lora_rank)
  return (lora.merge(params, trained, opts.lora_alpha / rank) if rank else trained), history


# name -> the summary and references of its keyword function (`unlearn_jax.unlearning.language.<name>`); the
# options section is generated from `METHODS` (`unlearn_jax.unlearning.keyword_method`), open-unlearning's
# references (the defaults' source) from this module's docstring.
_OPEN_UNLEARNING = "  open-unlearning (github.com/locuslab/open-unlearning): ``src/trainer/unlearn/{}.py``."
_DOCS = {
    "ga": ("Gradient ascent: the token-mean NLL of the forget answers, ascended.",
           "Jang et al., \"Knowledge Unlearning for Mitigating Privacy Risks in Language Models\", ACL 2023.",
           "grad_ascent"),
    "graddiff": ("GradDiff: gradient ascent on the forget set plus ``alpha`` times a retain loss (NLL or KL to the "
                 "Original).", "Maini et al., \"TOFU: A Task of Fictitious Unlearning for LLMs\", 2024.",
                 "grad_diff"),
    "npo": ("NPO: negative preference optimisation against the Original as the reference, plus GradDiff's retain "
            "term.", "Zhang, Lin, Bai and Mei, \"Negative Preference Optimization: From Catastrophic Collapse to "
            "Effective Unlearning\", COLM 2024.", "npo"),
    "simnpo": ("SimNPO: reference-free NPO on the length-normalised log-likelihood with margin ``delta``.",
               "Fan et al., \"Simplicity Prevails: Rethinking Negative Preference Optimization for LLM "
               "Unlearning\", 2024.", "simnpo"),
    "idkdpo": ("IdkDPO: DPO preferring the \"I don't know\" answers (``idk_input_ids``) over the true ones.",
               "Rafailov et al., \"Direct Preference Optimization\", NeurIPS 2023; Maini et al., \"TOFU\", 2024.",
               "dpo"),
    "altpo": ("AltPO: DPO preferring plausible alternate answers (``alt_input_ids``) over the true ones.",
              "Mekala et al., \"Alternate Preference Optimization for Unlearning Factual Knowledge in Large Language "
              "Models\", COLING 2025.", "dpo"),
    "rmu": ("RMU: the forget activations at ``layer`` pushed to a random control vector (``steering_coeff``), the "
            "retain ones held at the Original's.", "Li et al., \"The WMDP Benchmark: Measuring and Reducing "
            "Malicious Use With Unlearning\", ICML 2024.", "rmu"),
    "sae": ("SAE-latent unlearning: the forget people's sparse-autoencoder codes at ``layer`` moved to the "
            "unknown-entity centroid (needs ``holdout`` or ``sae_probe``), plus GradDiff's retain term.",
            "Farrell, Lau and Conmy, \"Applying Sparse Autoencoders to Unlearn Knowledge in Language Models\", 2024;"
            " Ferrando et al., \"Do I Know This Entity?\", ICLR 2025.", None),
    "undial": ("UNDIAL: self-distillation to the Original's logits with the true token's logit lowered by "
               "``beta``.", "Dong et al., \"UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in "
               "Large Language Models\", NAACL 2025.", "undial"),
    "ceu": ("CE-U: cross-entropy to the model's own distribution with the true token removed (forget-only).",
            "Yang et al., \"CE-U: Cross Entropy Unlearning\", 2025 (arXiv:2503.01224).", "ceu"),
    "satimp": ("SatImp: token-weighted ascent, weights ``p^beta1 (1 - p)^beta2`` of each true token's "
               "probability.", "Yang et al., \"Exploring Criteria of Loss Reweighting to Enhance LLM "
               "Unlearning\", ICML 2025.", "satimp"),
    "wga": ("WGA: token-weighted ascent, weights ``p^beta`` of each true token's probability.",
            "Wang et al., \"Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond\", ICLR "
            "2025.", "wga"),
    "pdu": ("PDU: a forget margin under a retain-loss constraint (``retain_eps``) held by a dual variable.",
            "Entesari et al., \"Constrained Entropic Unlearning: A Primal-Dual Framework for Large Language "
            "Models\", 2025.", "pdu"),
    "flat": ("FLAT: forget-only loss adjustment between the \"I don't know\" and the true answers "
             "(``divergence``).", "Wang et al., \"LLM Unlearning via Loss Adjustment with Only Forget Data\", "
             "ICLR 2025 (github.com/UCSC-REAL/FLAT).", None),
    "wagle": ("WAGLE: NPO (or GradDiff, ``base``) on the top-``fraction`` weights by weight attribution.",
              "Jia et al., \"WAGLE: Strategic Weight Attribution for Effective and Modular Unlearning in Large "
              "Language Models\", NeurIPS 2024 (github.com/OPTML-Group/WAGLE).", None),
}
LM_INPUTS = ("lm", "params", "forget", "retain")


def _keyword_function(name: str):
  """``unlearn_jax.unlearning.language.<name>``: `unlearn_lm` of method ``name`` with keyword options."""

  def fn(lm, params, forget, retain, *, config, rng, holdout=None, sae_probe=None):
    return unlearn_lm(name, lm, params, forget, retain, options=config, rng=rng, holdout=holdout,
                      sae_probe=sae_probe)

  summary, reference, source = _DOCS[name]
  fn.__doc__ = (f"{summary}\n\nRuns `unlearn_lm` ({', '.join(LM_INPUTS)}, ``holdout``, ``sae_probe`` as there) "
                f"and returns ``(params, history)``.\n\nReferences:\n  {reference}"
                + ("\n" + _OPEN_UNLEARNING.format(source) if source else ""))
  return keyword_method(name, fn, METHODS[name], options_fn=lambda config: method_config(name, config),
                        positional=LM_INPUTS, returns="params, history", where=__name__)


for _name in METHODS:
  globals()[_name] = _keyword_function(_name)
del _name

__all__ = ["COEFS", "METHODS", "SAEProbe", "build", "fit_probe", "fit_sae_probe", "lora", "method_config",
           "objectives", "optimizer", "prepare", "sae_separation", "tokenwise", "unlearn_lm", "unlearning_step",
           "with_adapters", *METHODS]
