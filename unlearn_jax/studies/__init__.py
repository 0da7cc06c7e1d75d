"""Study pipelines beyond unlearning, one module each.

Each module registers its pipeline(s) with `unlearn_jax.run.register_pipeline` when imported; `unlearn_jax.run.run`
imports the module named for ``config.experiment`` in `unlearn_jax.run.STUDIES` on first use. This package imports
none of them itself, so importing one study does not import the others.
"""
