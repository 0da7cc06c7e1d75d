r"""SalUn for image generation: forget digit 0 of a class-conditional DDPM, compared with RL, GA and ESD.

Command (2-core CPU; Original, Retrain and the metric classifier are trained first and cached in
workdir/salun_diffusion/cache):

  python -m experiments.main --config=configs/salun_diffusion.py --workdir=workdir/salun_diffusion

Measured from scratch on a quiet 2-core CPU (2026-12-03 18:09-18:16 UTC, nothing else running): **7.5 minutes**
(Original 107 s, Retrain 98 s: 16/32-channel U-Net, 100 epochs, one jitted step per batch on the CPU). Earlier, with
the machine shared at load average 5-9, the same run took 21.6 minutes. The Original's samples are all recognised
by the metric CNN (100%, digit 0 included); Retrain, SalUn and RL reach UA 100 with the other classes at 100%
accuracy (remaining-class FD 7.0 / 7.8 / 10.0 against the Original's 6.8); ESD UA 96; GA UA 28 and remaining
accuracy 94.4. Table: benchmarks/RESULTS.md ("Unlearning in image generation").

``:cifar10`` is the SalUn CIFAR-10 DDPM setting for a GPU (the ch-128, ch_mult 1,2,2,2 U-Net of their
cifar10_train.yml, lr 2e-4, batch 128, 800k iterations = 2,048 epochs; their unlearning defaults: Adam lr 1e-4,
~1,000 steps, alpha 1e-3, mask fraction 0.5; 1000 sampling steps with guidance 2, eta 1; 500 samples per class):
``--config=configs/salun_diffusion.py:cifar10``. Not run (no GPU here); the reference's weight EMA (0.9999) is not
implemented. ``:tiny_test`` is the smoke config of the tests (one step per stage; about 2 minutes on the loaded
2-core CPU, almost all compilation). One method: ``--config.compare="('salun',)"``; any option with
``--config.methods.salun.fraction=0.3``.

Reference: Fan et al., "SalUn", ICLR 2024 (their DDPM/ code); Gandikota et al., "Erasing Concepts from Diffusion
Models", ICCV 2023 (ESD). Pipeline: unlearn_jax/studies/diffusion.py; methods: unlearn_jax/unlearning/generation.py.
"""
from unlearn_jax.studies import diffusion


def get_config(arg: str | None = None):
  return diffusion.diffusion_config(arg)
