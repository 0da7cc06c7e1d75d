r"""SalUn for image generation: forget digit 0 of a class-conditional DDPM, compared with RL, GA and ESD.

Command (2-core CPU; Original, Retrain and the metric classifier are trained first and cached in
workdir/salun_diffusion/cache):

  python -m experiments.main --config=configs/salun_diffusion.py --workdir=workdir/salun_diffusion

NOT MEASURED YET. A from-scratch attempt on the shared 2-core CPU (load average 7-9, 2026-12-03) was stopped
after 8 minutes: the Original's epochs took about 145 s each (12 steps of batch 128; 300 epochs are configured),
because XLA:CPU runs the U-Net's convolutions inside the whole-epoch `lax.scan` about 40-60x slower than the
same step jitted alone (0.29 s per step alone, ~12 s in the scan). The digits defaults below (32/64-channel
U-Net, 300 epochs, the DIGITS_OPTIONS of unlearn_jax/studies/diffusion.py) are therefore untested guesses;
benchmarks/RESULTS.md ("Unlearning in image generation") records the attempt. On a GPU the scan is the fast path.

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
