"""The public API: namespaces with curated ``__all__``, and every registered method called with keyword options."""
import inspect

import jax
import pytest

import unlearn_jax
from unlearn_jax import unlearning
from unlearn_jax.unlearning import generation
from unlearn_jax.unlearning import language as lmu


def test_namespaces_and_all():
  for name in ("unlearning", "merging", "evaluation", "data", "models"):
    module = getattr(unlearn_jax, name)
    assert module.__all__ and name in unlearn_jax.__all__
    for public in module.__all__:
      assert not public.startswith("_") and hasattr(module, public), (name, public)
  assert {"salun", "ssd", "ties"} <= set(unlearn_jax.unlearning.__all__) | set(unlearn_jax.merging.__all__)
  # the LM and generation subpackages are reached from `unlearn_jax.unlearning` without importing them by name
  assert unlearning.__getattr__("language") is lmu and unlearning.__getattr__("generation") is generation
  assert {"npo", "rmu", "unlearn_lm"} <= set(lmu.__all__)


@pytest.mark.parametrize("registry,defaults,inputs", [
    (unlearning.REGISTRY, unlearning.DEFAULTS, 5),
    (generation.GENERATION_METHODS, generation.GENERATION_DEFAULTS, 5),
    ({name: getattr(lmu, name) for name in lmu.METHODS}, lmu.METHODS, 4)])  # (lm, params, forget, retain)
def test_every_method_lists_its_options_in_signature_and_docstring(registry, defaults, inputs):
  for name, method in registry.items():
    if registry is unlearning.REGISTRY:
      assert getattr(unlearning, name) is method and name in unlearning.__all__, name
    if defaults is lmu.METHODS:
      assert name in lmu.__all__ and method.__name__ == name, name
    params = inspect.signature(method).parameters
    assert list(params)[inputs:inputs + 2] == ["rng", "config"], name
    for key, value in defaults[name].items():
      assert params[key].kind is inspect.Parameter.KEYWORD_ONLY and params[key].default == value, (name, key)
      assert f"  {key} ({'Any' if value is None else type(value).__name__}): default ``{value!r}``." in method.__doc__
    assert "Example:" in method.__doc__ and "References:" in method.__doc__, name


def test_every_registered_method_is_called_with_its_defaults_as_keywords():
  """The method contract tests pass every registered default as a keyword (a few sizes overridden) and compare
  with ``config=``; each registered method (and each language-model method, `lmu.METHODS`) must be in one of their
  lists."""
  from tests import test_unlearning, test_unlearning_oneshot, test_unlearning_teachers  # pylint: disable=g-import-not-at-top
  # with keywords too: test_laf (laf), test_unlearning_oneshot (fisher_mnemonic), test_dmm (dmm, oracle_matching)
  checked = {*test_unlearning.ITERATIVE, *test_unlearning_teachers.METHODS, "laf", "fisher_mnemonic", "dmm",
             "oracle_matching",
             *(name for name, _ in test_unlearning_oneshot.METHOD_CONFIGS)}
  assert set(unlearning.REGISTRY) <= checked, set(unlearning.REGISTRY) - checked
  from tests import test_language_objectives  # pylint: disable=g-import-not-at-top
  assert set(lmu.METHODS) <= set(test_language_objectives.LM_METHODS), set(lmu.METHODS)


def test_unknown_keyword_option_fails_before_any_work():
  with pytest.raises(ValueError, match=r"salun\(\): unknown option\(s\) learning_rate; known: "):
    unlearning.salun(None, None, None, None, None, rng=jax.random.key(0), learning_rate=0.1)
  with pytest.raises(ValueError, match=r"npo\(\): unknown option\(s\) temperature; known: "):
    lmu.npo(None, None, None, None, rng=jax.random.key(0), temperature=2.0)
  with pytest.raises(ValueError, match=r"method.beta=0.0: must be > 0"):  # a bad value: before any work too
    lmu.npo(None, None, None, None, rng=jax.random.key(0), beta=0.0)


def test_a_methods_registered_value_check_runs_before_any_work():
  assert {"dmm", "oracle_matching"} <= set(unlearning.CHECKS)
  with pytest.raises(ValueError, match=r"^method.alpha=1.5: an α-subset fraction must be in \(0, 1\)$"):
    unlearning.dmm(None, None, None, None, None, rng=jax.random.key(0), alpha=1.5)
  with pytest.raises(ValueError, match=r"^method.num_models=2: "):
    unlearning.checked_options({"num_models": 2}, "dmm")
