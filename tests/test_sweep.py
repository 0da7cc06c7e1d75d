"""The vmapped sweep: each grid point equals the same setting run alone."""
import jax
import numpy as np
import pytest

from unlearn_jax import sweep
from unlearn_jax import unlearning
from tests import method_checks


def _assert_point_equals_alone(name, lrs, coefs, options):
  model, params, state, splits = method_checks.digits_setup()
  rng = jax.random.key(3)
  grid, _, settings, history = sweep.sweep_method(name, model, params, state, splits.forget, splits.retain,
                                                  options=options, lrs=lrs, coefs=coefs, rng=rng)
  assert len(settings) == len(lrs) * (len(coefs) if coefs else 1)
  assert np.all(history["finite"])
  method = unlearning.get_method(name)
  for g, setting in enumerate(settings):
    alone, _ = method(model, params, state, splits.forget, splits.retain, config={**options, **setting}, rng=rng)
    for a, b in zip(jax.tree.leaves(sweep.grid_point(grid, g)), jax.tree.leaves(alone)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # the grid points really differ
  first, last = sweep.grid_point(grid, 0), sweep.grid_point(grid, len(settings) - 1)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(last)))


def test_salun_grid_of_lrs_and_mask_fractions_equals_each_setting_alone():
  _assert_point_equals_alone("salun", (0.01, 0.05), (0.3, 0.6), {"epochs": 2, "batch_size": 64})


def test_neggrad_plus_traced_coefficient_equals_each_setting_alone():
  _assert_point_equals_alone("neggrad_plus", (0.01, 0.03), (0.5, 0.9), {"epochs": 1, "batch_size": 64})


def test_sweep_rejects_bad_grids():
  model, params, state, splits = method_checks.digits_setup()
  kw = dict(rng=jax.random.key(0))
  with pytest.raises(ValueError, match="cannot be vectorised"):
    sweep.sweep_method("ssd", model, params, state, splits.forget, splits.retain, lrs=(0.1,), **kw)
  with pytest.raises(ValueError, match="positive"):
    sweep.sweep_method("ft", model, params, state, splits.forget, splits.retain, lrs=(0.0,), **kw)
  with pytest.raises(ValueError, match="without a coefficient"):
    sweep.sweep_method("ft", model, params, state, splits.forget, splits.retain, lrs=(0.1,), coefs=(1.0,), **kw)
  with pytest.raises(ValueError, match="method.beta_"):
    sweep.sweep_method("neggrad_plus", model, params, state, splits.forget, splits.retain, lrs=(0.1,),
                       options={"beta_": 1}, **kw)


@pytest.mark.parametrize("name", ["ssd", "fisher", "influence"])
def test_one_shot_grid_point_equals_the_method_alone(name):
  model, params, state, splits = method_checks.digits_setup()
  rng = jax.random.key(5)
  coef = sweep.coefficient(name)
  default = unlearning.options(None, name)[coef]
  coefs = (0.5 * default, default, 3.0 * default)
  grid, _, settings, history = sweep.sweep(name, model, params, state, splits.forget, splits.retain, coefs=coefs,
                                           rng=rng)
  assert sweep.kind(name) == "one_shot" and [s[coef] for s in settings] == pytest.approx(coefs)
  assert np.all(history["finite"])
  method = unlearning.get_method(name)
  outs = []
  for g, c in enumerate(coefs):
    alone, _ = method(model, params, state, splits.forget, splits.retain, config={coef: c}, rng=rng)
    for a, b in zip(jax.tree.leaves(sweep.grid_point(grid, g)), jax.tree.leaves(alone)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    outs.append(alone)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[-1])))


def test_sequential_sweep_and_dispatch_errors():
  model, params, state, splits = method_checks.digits_setup()
  rng = jax.random.key(0)
  assert sweep.kind("scrub") == "sequential" and sweep.kind("salun") == "vmapped"
  assert sweep.coefficient("ft") is None and sweep.coefficient("salun") == "fraction"
  with pytest.raises(ValueError, match="one-shot"):
    sweep.sweep("ssd", model, params, state, splits.forget, splits.retain, lrs=(0.1,), coefs=(1.0,), rng=rng)
  with pytest.raises(ValueError, match=">= 0"):
    sweep.sweep("ssd", model, params, state, splits.forget, splits.retain, coefs=(-1.0,), rng=rng)
  with pytest.raises(ValueError, match="learning rates only"):
    sweep.sweep("scrub", model, params, state, splits.forget, splits.retain, lrs=(0.1,), coefs=(1.0,), rng=rng)
  opts = {"epochs": 1, "batch_size": 64} if "epochs" in unlearning.options(None, "bad_teacher") else {}
  grid, _, settings, history = sweep.sweep("bad_teacher", model, params, state, splits.forget, splits.retain,
                                           options=opts, lrs=(1e-3, 1e-2), rng=rng)
  alone, _ = unlearning.get_method("bad_teacher")(model, params, state, splits.forget, splits.retain,
                                                  config={**opts, "lr": 1e-2}, rng=rng)
  for a, b in zip(jax.tree.leaves(sweep.grid_point(grid, 1)), jax.tree.leaves(alone)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  assert settings == [{"lr": 1e-3}, {"lr": 1e-2}] and history["finite"].shape == (2,)
