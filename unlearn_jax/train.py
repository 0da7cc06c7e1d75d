"""The one training loop: whole-epoch `jax.lax.scan` over device-resident, shuffled batches.

Used to train the Original and Retrain models, and (through `make_epoch_fn`/`train_step`) by the iterative
unlearning driver. Each epoch is one jitted call with donated parameter, state and optimiser buffers; the
host reads metrics once per epoch.

Example:
    >>> tx = make_optimizer(config.train, steps_per_epoch=split.num_batches(config.train.batch_size))
    >>> params, state, history = fit(model, params, state, split, config.train, rng=jax.random.key(0))
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearn_jax import sharding as sharding_lib
from unlearn_jax.data import split as split_lib
from unlearn_jax.model import Model
from unlearn_jax.progress import progress

Pytree = Any
# loss_fn(params, state, batch, rng) -> (loss, (new_state, metrics: dict[str, scalar]))
LossFn = Callable[..., tuple[jax.Array, tuple[Pytree, dict]]]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step", "linear", "exponential")


def make_schedule(cfg, steps_per_epoch: int, lr=None) -> optax.Schedule:
  """Learning-rate schedule from ``cfg`` (fields: lr, schedule, epochs, warmup_epochs, milestones, gamma).

  ``'exponential'`` multiplies the rate by ``gamma`` after every epoch (``torch.optim.lr_scheduler.ExponentialLR``
  stepped once per epoch).

  ``lr`` replaces ``cfg.lr`` (it may be a traced scalar, as in a vmapped learning-rate sweep).
  """
  lr = cfg.lr if lr is None else lr
  total = max(1, int(cfg.epochs * steps_per_epoch))
  warmup = int(cfg.get("warmup_epochs", 0) * steps_per_epoch)
  name = cfg.get("schedule", "constant")
  decay_steps = max(1, total - warmup)
  if name == "constant":
    main = optax.constant_schedule(lr)
  elif name == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps)
  elif name == "linear":
    main = optax.linear_schedule(lr, 0.0, decay_steps)
  elif name == "exponential":
    main = optax.exponential_decay(lr, max(1, int(steps_per_epoch)), cfg.get("gamma", 0.1), staircase=True)
  elif name == "step":
    boundaries = {int(m * steps_per_epoch) - warmup: cfg.get("gamma", 0.1) for m in cfg.get("milestones", ())}
    main = optax.piecewise_constant_schedule(lr, boundaries)
  else:
    raise ValueError(f"schedule: unknown {name!r}; choose one of {SCHEDULES}")
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def make_optimizer(cfg, steps_per_epoch: int, lr=None, *, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8) -> optax.GradientTransformation:
  """Optax optimiser from ``cfg`` (fields: optimizer, lr, momentum, nesterov, weight_decay + schedule fields).

  ``sgd`` adds L2 weight decay to the gradient before momentum, as ``torch.optim.SGD`` does; ``adamw`` uses
  decoupled decay; ``adam`` uses L2 like ``torch.optim.Adam``; ``b1``, ``b2``, ``eps`` are the Adam moments' (optax's
  and torch's defaults). ``lr`` replaces ``cfg.lr`` (see `make_schedule`).

  The learning rate lives in the optimiser state (`optax.inject_hyperparams`, the schedule's shape times the
  state's ``learning_rate``: every schedule here is proportional to its peak rate), so a jitted step takes it as an
  argument: runs that differ only in their learning rate share one compiled program (and the persistent
  compilation cache's entry).
  """
  name = cfg.get("optimizer", "sgd")
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer: unknown {name!r}; choose one of {OPTIMIZERS}")
  shape = make_schedule(cfg, steps_per_epoch, 1.0)
  wd = cfg.get("weight_decay", 0.0)
  momentum = cfg.get("momentum", 0.0) or None
  nesterov = bool(cfg.get("nesterov", False)) and bool(momentum)
  adam = dict(b1=b1, b2=b2, eps=eps)

  def build(learning_rate):
    schedule = lambda count: learning_rate * shape(count)
    if name == "adamw":
      return optax.adamw(schedule, weight_decay=wd, **adam)
    opt = optax.sgd(schedule, momentum=momentum, nesterov=nesterov) if name == "sgd" else optax.adam(schedule, **adam)
    return optax.chain(optax.add_decayed_weights(wd), opt) if wd else opt

  return optax.inject_hyperparams(build)(learning_rate=cfg.lr if lr is None else lr)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of integer labels, computed in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def classification_loss(model: Model) -> LossFn:
  """Cross-entropy loss in train mode, returning the updated BatchNorm state and accuracy."""

  def loss_fn(params, state, batch, rng):
    x, y = batch
    logits, new_state = model.apply(params, state, x, train=True, rng=rng)
    acc = jnp.mean(jnp.argmax(logits, -1) == y)
    return cross_entropy(logits, y), (new_state, {"accuracy": acc})

  return loss_fn


def train_step(loss_fn: LossFn, tx: optax.GradientTransformation, params, state, opt_state, batch, rng):
  """One gradient step: returns ``(params, state, opt_state, loss, metrics)``."""
  (loss, (new_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, batch, rng)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), new_state, opt_state, loss, metrics


def shard_batches(arrays, mesh):
  """Shards the batch axis (axis 1 of ``(num_batches, batch, ...)`` arrays) over the mesh's data axis."""
  if mesh is None or mesh.shape[sharding_lib.DATA] == 1:
    return arrays
  return jax.tree.map(lambda a: jax.sharding.reshard(a, sharding_lib.batch_spec(a.ndim)), arrays)


# How `make_epoch_fn` loops over an epoch's batches. 'scan': one jitted program per epoch (`lax.scan`), the fast
# path on accelerators. 'steps': one jitted, donating step per batch called from Python, with the batches and keys
# prepared on device and the losses stacked at the end (no host sync per step). XLA:CPU (jax 0.10.2) runs a
# convolution's backward pass inside a while loop 40-60x slower than the same step jitted alone (4 conv layers,
# batch 128 of 8x8: 1.9 s per step in a scan vs 0.04 s; see benchmarks/RESULTS.md), so the default (None) is
# 'steps' on the CPU and 'scan' elsewhere. Both compute the same steps on the same batches and keys.
LOOPS = ("scan", "steps")


def default_loop() -> str:
  return "steps" if jax.default_backend() == "cpu" else "scan"


def make_epoch_fn(loss_fn: LossFn, tx: optax.GradientTransformation, *, batch_size: int,
                  augment: Callable | None = None, mesh=None, loop: str | None = None):
  """A jitted ``epoch(params, state, opt_state, x, y, rng) -> (params, state, opt_state, losses, metrics)``.

  The data ``(x, y)`` stays on device; each epoch shuffles it with ``rng``, reshapes it into batches and
  runs ``train_step`` over them, as one ``lax.scan`` or one jitted step per batch (``loop``: see `LOOPS`; None:
  `default_loop`). ``params``, ``state`` and ``opt_state`` are donated. ``losses`` and each metric are per-step
  arrays of length ``num_batches``.
  """
  if mesh is not None and batch_size % mesh.shape[sharding_lib.DATA]:
    raise ValueError(f"batch_size {batch_size} is not divisible by the mesh data axis "
                     f"({mesh.shape[sharding_lib.DATA]} devices)")
  loss_fn = sharding_lib.gathered(loss_fn)  # sharded (FSDP) parameters are all-gathered inside each step
  body = step_body(loss_fn, tx, augment)
  return epoch_program(epoch_batches(batch_size, mesh), lambda carry, inp, shared: body(carry, inp), loop=loop)


def epoch_batches(batch_size: int, mesh=None) -> Callable:
  """``prepare(x, y, rng) -> ((), (xb, yb, keys))``: an epoch's shuffled ``(num_batches, batch_size, ...)`` batches
  (`split.batch_arrays` with ``split(rng)[0]``; sharded over ``mesh``'s data axis) and one key per step (from
  ``split(rng)[1]``). `make_epoch_fn` and the unlearning loop's phases use this one function, so a phase over the
  same rows loads the training epoch's shuffle program from the compilation cache.

  Memoised on ``(batch_size, mesh)``: every call returns the same function, so `jax.jit` of it keeps one traced and
  compiled shuffle per data shape for the whole process (a second run, a Retrain after the Original, every method
  of a benchmark: none of them traces, lowers or compiles the shuffle again)."""
  return _epoch_batches(int(batch_size), mesh)  # one cache key however the arguments are spelled


@functools.lru_cache(maxsize=64)
def _epoch_batches(batch_size: int, mesh) -> Callable:
  def prepare(x, y, rng):
    perm_rng, step_rng = jax.random.split(rng)
    xb, yb = shard_batches(split_lib.batch_arrays((x, y), batch_size, perm_rng), mesh)
    return (), (xb, yb, jax.random.split(step_rng, yb.shape[0]))

  return prepare


def step_body(loss_fn: LossFn, tx: optax.GradientTransformation, augment: Callable | None = None):
  """``body((params, state, opt_state), (xs, ys, key)) -> (carry, (loss, metrics))``: one training step of
  `make_epoch_fn` (the key split into an augmentation and a dropout key)."""

  def body(carry, inp):
    params, state, opt_state = carry
    xs, ys, key = inp
    aug_key, drop_key = jax.random.split(key)
    if augment is not None:
      xs = augment(aug_key, xs)
    params, state, opt_state, loss, metrics = train_step(loss_fn, tx, params, state, opt_state, (xs, ys), drop_key)
    return (params, state, opt_state), (loss, metrics)

  return body


# The per-step loops read one batch, cut from the stacked ones by this tiny program: a step's program is then the
# same for any number of steps (a Retrain on fewer rows reuses the Original's; SalUn's phases share one step).
take_step = jax.jit(lambda steps, i: jax.tree.map(lambda a: a[i], steps))


def epoch_program(prepare: Callable, body: Callable, *, loop: str | None = None):
  """The jitted epoch ``epoch(params, state, opt_state, *data) -> (params, state, opt_state, losses, metrics)``.

  ``prepare(*data) -> (shared, steps)`` makes the epoch's inputs on device: ``steps`` a pytree with a leading
  step axis, ``shared`` what every step reads whole; ``body(carry, steps[i], shared) -> (carry, (loss,
  metrics))`` is one step. With ``loop='scan'`` the epoch is one `jax.lax.scan`; with ``'steps'`` a jitted,
  donating step per batch (``epoch.step``). `make_epoch_fn` builds its epoch this way, and
  `unlearn_jax.population` its vmapped one.
  """
  loop = loop or default_loop()
  if loop not in LOOPS:
    raise ValueError(f"loop={loop!r}: choose one of {LOOPS}")

  if loop == "scan":
    def epoch(params, state, opt_state, *data):
      shared, steps = prepare(*data)
      (params, state, opt_state), (losses, metrics) = jax.lax.scan(
          lambda carry, inp: body(carry, inp, shared), (params, state, opt_state), steps)
      return params, state, opt_state, losses, metrics

    return jax.jit(epoch, donate_argnums=(0, 1, 2))

  batches = jax.jit(prepare)
  step = jax.jit(lambda carry, shared, inp: body(carry, inp, shared), donate_argnums=(0,))

  def stepped_epoch(params, state, opt_state, *data):
    shared, steps = batches(*data)
    carry, outs = (params, state, opt_state), []
    for i in range(jax.tree.leaves(steps)[0].shape[0]):
      carry, out = step(carry, shared, take_step(steps, i))
      outs.append(out)
    losses, metrics = jax.tree.map(lambda *a: jnp.stack(a), *outs)
    return (*carry, losses, metrics)

  stepped_epoch.step = step  # the one compiled step (its cache size is checked in tests)
  return stepped_epoch


@jax.jit
def fresh_copy(tree):
  """New buffers holding ``tree``'s arrays (shardings kept), made by one jitted program per tree layout (a
  `jnp.copy` per leaf compiled a program per leaf shape): what a training loop donates, so that donation never
  invalidates the caller's arrays (``device_put`` may alias them)."""
  return jax.tree.map(jnp.copy, tree)


def check_finite(losses: np.ndarray, epoch: int, what: str = "loss") -> None:
  """Raises FloatingPointError naming the epoch and the first step whose loss is not finite."""
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    raise FloatingPointError(f"non-finite {what} {losses[bad[0]]} at epoch {epoch}, step {int(bad[0])}")


def fit(model: Model, params, state, split: split_lib.Split, cfg, *, rng: jax.Array, mesh=None,
        augment: Callable | None = None, log: Callable[[str], None] | None = None,
        loss_fn: LossFn | None = None, checkpoints=None, desc: str = "train", loop: str | None = None):
  """Trains ``params`` with cross-entropy on ``split`` for ``cfg.epochs`` epochs.

  Args:
    model: the network.
    params, state: initial parameters and non-trained state; not modified (copies are donated).
    split: training data, on device.
    cfg: ConfigDict with the optimiser fields (see `make_optimizer`), ``epochs`` and ``batch_size``.
    rng: PRNG key for shuffling, augmentation and dropout.
    mesh: optional mesh; the batch is sharded over its ``data`` axis and parameters replicated.
    augment: optional ``augment(rng, x) -> x`` run on device on each batch.
    log: optional callback receiving one line per epoch.
    desc: label of the epoch progress bar (`unlearn_jax.progress`; shown on a terminal only).
    loss_fn: optional training loss (default: `classification_loss`), e.g. one mixing in mnemonic codes.
    checkpoints: optional progress checkpointer (`unlearn_jax.checkpoint.EpochCheckpoints`): training resumes
      from its newest step and saves the ones it says are due; see `run_epochs`.
    loop: ``'scan'`` or ``'steps'`` (see `LOOPS`; None: `default_loop`).

  Returns:
    ``(params, state, history)`` with history a dict of per-epoch mean ``loss``/``accuracy`` lists and
    the total training ``seconds`` (of every session, when resumed); a resumed run adds
    ``resumed_from_epoch``.

  Raises:
    FloatingPointError: if a loss is not finite (names the epoch and step).
    ValueError: if the progress checkpoint does not match this run (names the directory and leaf).
  """
  batch_size = min(int(cfg.batch_size), split.size)
  tx = make_optimizer(cfg, split.num_batches(batch_size))
  epoch_fn = make_epoch_fn(loss_fn or classification_loss(model), tx, batch_size=batch_size, augment=augment, mesh=mesh,
                           loop=loop)
  return run_epochs(epoch_fn, tx, params, state, (split.x, split.y), int(cfg.epochs), rng=rng, mesh=mesh,
                    log=log, checkpoints=checkpoints, desc=desc)


def mean_summary(losses, metrics, epoch: int) -> dict[str, float]:
  """`run_epochs`' default per-epoch record: the mean loss and metrics over the epoch's steps (after
  `check_finite`)."""
  check_finite(np.asarray(losses), epoch)
  return {"loss": float(np.mean(losses)), **{k: float(np.mean(v)) for k, v in metrics.items()}}


def epoch_key(rng: jax.Array, epoch: int) -> jax.Array:
  """The key of epoch ``epoch``: ``jax.random.fold_in(rng, epoch)``, made when the epoch starts, so nothing is
  allocated in proportion to the number of epochs; for a ``(N,)`` array of per-model keys, ``(N,)`` keys whose
  entry ``i`` is ``fold_in(rng[i], epoch)``."""
  if jnp.ndim(rng) == 0 or not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return jax.random.fold_in(rng, epoch)
  return jax.vmap(lambda k: jax.random.fold_in(k, epoch))(rng)


def run_epochs(epoch_fn, tx, params, state, data: tuple, epochs: int, *, rng, mesh=None, log=None,
               checkpoints=None, desc: str = "train", summarize: Callable | None = None):
  """Runs ``epoch_fn`` for ``epochs`` epochs with one host sync per epoch; see `fit`.

  Epoch ``e`` always uses key ``jax.random.fold_in(rng, e)`` (`epoch_key`: nothing is allocated in proportion
  to ``epochs``; a ``(N,)`` array of per-model keys gives each model its own, as `unlearn_jax.population` does).
  ``summarize(losses, metrics, epoch) -> {name: float}`` turns an epoch's host-side outputs into its history entries
  (default `mean_summary`; it raises on a non-finite loss). With ``checkpoints`` (an object with
  ``latest(like, epochs) -> (epoch, tree, metadata) | None``, ``due(epoch, epochs) -> bool`` and
  ``save(epoch, tree, metadata)``, e.g. `unlearn_jax.checkpoint.EpochCheckpoints`; ``tree`` is
  ``{'params', 'state', 'opt_state'}``), the newest saved one replaces the initial one, restored onto the
  same shardings, and training continues with the next epoch's key, so the result equals that of an
  uninterrupted run. A non-finite loss after resuming names the checkpoint directory resumed from.
  """
  if mesh is not None:
    params = sharding_lib.place(params, mesh)  # FSDP-sharded where the mesh has an fsdp axis, else replicated
    state, data = sharding_lib.place(state, mesh, like=params), sharding_lib.replicate(data, mesh)
  params, state = fresh_copy((params, state))
  opt_state = sharding_lib.init_opt_state(tx, params, mesh)  # moments laid out like the parameters
  history: dict[str, list] = {"loss": []}
  first, seconds_before = 0, 0.0
  like = {"params": params, "state": state, "opt_state": opt_state}
  found = None if checkpoints is None else checkpoints.latest(like, epochs)
  if found is not None:
    first, tree, meta = found
    params, state, opt_state = tree["params"], tree["state"], tree["opt_state"]
    history, seconds_before = {k: list(v) for k, v in meta["history"].items()}, float(meta["seconds"])
    if log is not None:
      log(f"resumed after epoch {first}/{epochs}")
  start = time.perf_counter()
  with sharding_lib.use_mesh(mesh):
    bar = progress(range(first, epochs), desc=desc, total=epochs, initial=first, unit="epoch")
    for epoch in bar:
      params, state, opt_state, losses, metrics = epoch_fn(params, state, opt_state, *data,
                                                           epoch_key(rng, epoch))
      losses, metrics = jax.device_get((losses, metrics))  # the one host sync of the epoch
      try:
        summary = (summarize or mean_summary)(losses, metrics, epoch)
      except FloatingPointError as e:
        if found is None:
          raise
        raise FloatingPointError(f"{e} (training resumed after epoch {first} from "
                                 f"{getattr(checkpoints, 'directory', 'a progress checkpoint')})") from None
      for k, v in summary.items():
        history.setdefault(k, []).append(v)
      bar.set_postfix(loss=history["loss"][-1], refresh=False)
      if log is not None:
        log(f"epoch {epoch + 1}/{epochs} " + " ".join(f"{k}={v[-1]:.4f}" for k, v in history.items()))
      if checkpoints is not None and checkpoints.due(epoch + 1, epochs):
        checkpoints.save(epoch + 1, {"params": params, "state": state, "opt_state": opt_state},
                         {"epoch": epoch + 1, "epochs": epochs, "history": history,
                          "seconds": seconds_before + time.perf_counter() - start})
    jax.block_until_ready(params)
  history["seconds"] = seconds_before + time.perf_counter() - start
  if found is not None:
    history["resumed_from_epoch"] = first
  return params, state, history
