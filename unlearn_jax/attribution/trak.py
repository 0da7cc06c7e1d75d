"""TRAK: data attribution from projected per-example gradients, ensembled over models.

For a model with parameters θ (P numbers), a training set of n rows and an output function f (the margin
``log p_y / (1 - p_y)`` for classification), TRAK scores how much each training row z_i drives the output on a
target z:

    τ(z) = φ(z)ᵀ (ΦᵀΦ)⁻¹ Φᵀ Q,       φ(z) = Rᵀ ∇_θ f(z; θ) / √P,       Q = diag(1 − p(z_i)),

where Φ ∈ ℝ^{n×k} stacks the training rows' φ, R ∈ ℝ^{P×k} is a random projection (Rademacher or Gaussian
entries; ``projection='identity'`` keeps R = I, k = P) and p(z_i) is the softmax probability of the true label
(the derivative of the cross-entropy with respect to the margin). Over an ensemble of M models (e.g. trained on
random α-subsets) the reference code averages the two factors separately:

    τ(z) = (1/M Σ_m φ_m(z)ᵀ (Φ_mᵀΦ_m)⁻¹ Φ_mᵀ) ⊙ (1/M Σ_m Q_m),

and so does `trak_scores` (``Q`` is the mean over models, per training row).

How the work is bounded (`featurize` is one jitted program per model and row count):

* per-example gradients are ``jax.vmap(jax.grad(f))`` over chunks of rows (`jax.lax.map`; by default as many rows
  as fit in 128 MiB of float32 gradients, `chunk_rows`), never a Python loop over rows;
* the projection matrix is drawn ``block_size`` columns at a time from the key (``jax.random.fold_in(key,
  block)``, as the reference ``BasicProjector`` draws blocks), each block once per call, as
  ``jax.random.rademacher`` / ``normal`` draw it but by an unrolled Threefry (one fused kernel, no temporaries:
  `unlearn_jax.threefry`); as many blocks as fit in ``projection_mib`` (1 GiB by default: all of R for k = 2048 and up to 131k
  parameters) are held together, and each chunk's gradients are computed once per such pass and multiplied by the
  held blocks, so memory is a chunk's gradients plus at most ``projection_mib`` of R (one block at least) plus the
  ``n × k`` output;
* scores are computed for ``target_chunk_size`` targets at a time.

A model's features ``(Φ, Q)`` (and a target set's ``φ``) can be cached in a directory (``cache_dir``) through
`unlearn_jax.checkpoint` (Orbax), keyed by a digest of the parameters, the data and the projection settings.

Defaults follow MadryLab's ``trak`` code: margin output function, Q = 1 − p (softmax temperature 1), a Rademacher
projection to k = 2048 with a different matrix per model (seed + model id), gradients divided by √P, no ridge
term on ΦᵀΦ, and — as its ``BasicScoreComputer`` — (ΦᵀΦ)⁻¹ divided by the mean of its absolute entries
(``kernel_normalization='mean_abs'``; the code does this to keep float16 features in range). That rescales each
model's scores by a positive constant: rankings and LDS of one model are unchanged, an ensemble weights its
members differently. ``kernel_normalization='none'`` gives the paper's estimator exactly. Unlike the reference
(float16 by default), everything here is float32.

References:
  Park, Georgiev, Ilyas, Leclerc and Madry, "TRAK: Attributing Model Behavior at Scale", ICML 2023
  (github.com/MadryLab/trak: ``ImageClassificationModelOutput``, ``BasicProjector``, ``BasicScoreComputer``,
  ``TRAKer.finalize_scores``).

Example:
    >>> scores = trak_scores(model, [(params, state)], train=(x_train, y_train), targets=(x_test, y_test),
    ...                      proj_dim=2048)          # [n_targets, n_train]
"""
from __future__ import annotations

import functools
import hashlib
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from unlearn_jax import checkpoint
from unlearn_jax import threefry
from unlearn_jax.model import Model
from unlearn_jax.progress import progress

Pytree = Any
PROJECTIONS = ("rademacher", "normal", "identity")
KERNEL_NORMALIZATIONS = ("mean_abs", "none")


def margin(logits: jax.Array, y: jax.Array) -> jax.Array:
  """``z_y − logsumexp_{c≠y} z_c`` (= ``log p_y/(1−p_y)``) per row, in float32: TRAK's classification output."""
  logits = logits.astype(jnp.float32)
  correct = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
  others = jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return correct - jax.nn.logsumexp(others, axis=-1)


def out_to_loss(logits: jax.Array, y: jax.Array, temperature: float = 1.0) -> jax.Array:
  """TRAK's Q per row: ``1 − softmax(z/T)_y``, the derivative of the cross-entropy with respect to the margin."""
  p = jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  return 1.0 - jnp.take_along_axis(p, y[..., None], axis=-1)[..., 0]


class Features(NamedTuple):
  """A model's TRAK features of a set of rows: ``phi`` [n, k] (projected output gradients / √P), ``q`` [n]."""
  phi: jax.Array
  q: jax.Array


def check_projection(projection: str, proj_dim: int | None, num_params: int | None = None) -> None:
  """ValueError naming ``projection`` or ``proj_dim`` if they are not a valid pair (before any work)."""
  if projection not in PROJECTIONS:
    raise ValueError(f"projection={projection!r}: unknown; choose one of {PROJECTIONS}")
  if projection == "identity":
    if proj_dim is not None and num_params is not None and proj_dim != num_params:
      raise ValueError(f"proj_dim={proj_dim}: the identity projection keeps all {num_params} parameters "
                       "(give proj_dim=None)")
    return
  if proj_dim is None or int(proj_dim) < 1:
    raise ValueError(f"proj_dim={proj_dim}: must be an integer k >= 1")


def _rademacher(key: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """``jax.random.rademacher(key, shape, float32)`` bit for bit, from `unlearn_jax.threefry.bits` (one fused
  kernel where jax's own draw is a rolled loop on CPU): −1 where bit 31 is set (its uniform draw is not below
  0.5)."""
  bits = threefry.bits(key, shape)
  if bits is None:
    return jax.random.rademacher(key, shape, dtype=jnp.float32)
  return 1.0 - 2.0 * (bits >> jnp.uint32(31)).astype(jnp.float32)


def _normal(key: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """``jax.random.normal(key, shape, float32)`` from `unlearn_jax.threefry.bits` as jax draws it (to float rounding): ``√2 ·
  erfinv(u)`` for u uniform in [nextafter(−1, 0), 1) made from the top 23 bits."""
  bits = threefry.bits(key, shape)
  if bits is None:
    return jax.random.normal(key, shape, dtype=jnp.float32)
  unit = threefry.uniform(bits)
  lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
  u = jnp.maximum(lo, unit * (np.float32(1.0) - lo) + lo)
  return np.float32(np.sqrt(2)) * jax.lax.erf_inv(u)


def _draw(projection: str):
  return _rademacher if projection == "rademacher" else _normal


def _blocks(proj_dim: int, block_size: int) -> tuple[int, int]:
  bs = max(1, min(int(block_size), int(proj_dim)))
  return bs, -(-int(proj_dim) // bs)


def project(grads: jax.Array, key: jax.Array, *, proj_dim: int, projection: str = "rademacher",
            block_size: int = 512) -> jax.Array:
  """``grads @ R`` for the random matrix R ∈ ℝ^{P×k} of ``key``, built ``block_size`` columns at a time.

  Entries of R are ±1 (``'rademacher'``) or N(0, 1) (``'normal'``), unscaled as in the reference projectors;
  column block ``b`` is drawn from ``jax.random.fold_in(key, b)``, so the same key gives the same R whatever
  the rows (and `featurize` uses the same R). Johnson–Lindenstrauss: for fixed u, v, ``⟨Rᵀu, Rᵀv⟩ / k`` is an
  unbiased estimate of ``⟨u, v⟩`` whose standard deviation is at most ``√(2/k) ‖u‖ ‖v‖`` (exactly
  ``√((‖u‖²‖v‖² + ⟨u,v⟩²)/k)`` for Gaussian R, no more than that for Rademacher R).

  Args:
    grads: [rows, P].
    key: PRNG key of the matrix.
    proj_dim: k.
    projection: ``'rademacher'`` or ``'normal'``.
    block_size: columns of R generated at once (memory ``P × block_size``).

  Returns:
    [rows, k] float32.
  """
  check_projection(projection, proj_dim)
  if projection == "identity":
    raise ValueError("project: projection='identity' needs no projection")
  rows, p = grads.shape
  bs, nblocks = _blocks(proj_dim, block_size)
  draw = _draw(projection)

  def block(carry, b):
    return carry, grads.astype(jnp.float32) @ draw(jax.random.fold_in(key, b), (p, bs))

  _, out = jax.lax.scan(block, None, jnp.arange(nblocks))  # [nblocks, rows, bs]
  return jnp.moveaxis(out, 0, 1).reshape(rows, nblocks * bs)[:, :proj_dim]


def _output_grads_fn(model: Model, params, state, output: Callable):
  """``grads(flat, x, y) -> [rows, P]``: vmapped gradients of ``output(logits, y)`` per row, and ``flat``."""
  flat, unravel = ravel_pytree(params)

  def one(flat, x, y):
    logits, _ = model.apply(unravel(flat), state, x[None], train=False)
    return output(logits, y[None])[0]

  return flat, jax.vmap(jax.grad(one), in_axes=(None, 0, 0))


def _passes(num_params: int, proj_dim: int, block_size: int, projection_mib: float) -> list[range]:
  """The column blocks of R held together in each pass: as many ``num_params × block_size`` float32 blocks as fit
  in ``projection_mib`` MiB (at least one), so gradients are computed once per pass."""
  bs, nblocks = _blocks(proj_dim, block_size)
  per_pass = max(1, min(nblocks, int(projection_mib * 2 ** 20) // (4 * num_params * bs)))
  return [range(s, min(s + per_pass, nblocks)) for s in range(0, nblocks, per_pass)]


@functools.partial(jax.jit, static_argnames=("model", "output", "proj_dim", "projection", "block_size", "chunk",
                                             "projection_mib"))
def _featurize(model, params, state, x, y, key, *, output, proj_dim, projection, block_size, chunk, projection_mib):
  """φ and Q of all rows in one program: the rows in chunks of ``chunk`` (`jax.lax.map`), and for a random
  projection the column blocks of R drawn once each, as many at a time as fit in ``projection_mib`` (a pass);
  per pass, each chunk's per-example gradients are computed once and multiplied by every held block. Memory:
  ``chunk × P`` gradients plus the blocks of one pass plus the ``n × k`` output; with R held whole (the
  default budget for a model whose ``P × k`` float32 fit in it) the gradients are computed once in all."""
  flat, grads_fn = _output_grads_fn(model, params, state, output)
  n = y.shape[0]
  nc = -(-n // chunk)
  pad = nc * chunk - n
  padded = lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, 0)]) if pad else a
  xb = jax.tree.map(lambda a: padded(a).reshape((nc, chunk) + a.shape[1:]), x)
  yb = padded(y).reshape(nc, chunk)
  scale = 1.0 / jnp.sqrt(jnp.float32(flat.size))
  grads = lambda c: grads_fn(flat, *c) * scale
  if projection == "identity":
    phi = jax.lax.map(grads, (xb, yb)).reshape(nc * chunk, flat.size)
  else:
    bs, _ = _blocks(proj_dim, block_size)
    draw = _draw(projection)
    parts = []
    for blocks in _passes(flat.size, proj_dim, block_size, projection_mib):
      held = [draw(jax.random.fold_in(key, b), (flat.size, bs)) for b in blocks]

      def project_chunk(c, held=held):
        g = grads(c)
        return jnp.concatenate([g @ r for r in held], axis=-1)

      parts.append(jax.lax.map(project_chunk, (xb, yb)))  # [nc, chunk, len(blocks) * bs]
    phi = jnp.concatenate(parts, axis=-1).reshape(nc * chunk, -1)[:, :proj_dim]
  q = jax.lax.map(lambda c: out_to_loss(model.apply(params, state, c[0], train=False)[0], c[1]), (xb, yb))
  return phi[:n], q.reshape(-1)[:n]


GRADIENT_CHUNK_MIB = 128


def chunk_rows(n: int, num_params: int, chunk_size: int | None = None) -> int:
  """Rows per chunk of `featurize`: at most ``chunk_size`` (None: as many float32 gradients of ``num_params`` as
  fit in `GRADIENT_CHUNK_MIB`, at least one row), spread evenly over the ``⌈n / that⌉`` chunks so the last one is
  not mostly padding."""
  most = int(chunk_size) if chunk_size is not None else max(1, (GRADIENT_CHUNK_MIB << 20) // (4 * int(num_params)))
  chunks = -(-int(n) // min(most, int(n)))
  return -(-int(n) // chunks)


def _check_rows(x, y, name: str) -> None:
  n = jax.tree.leaves(x)[0].shape[0]
  if y.ndim != 1 or y.shape[0] != n:
    raise ValueError(f"{name}: x has {n} rows but y has shape {tuple(y.shape)} (one integer label per row)")
  if n == 0:
    raise ValueError(f"{name}: no rows")


def featurize(model: Model, params, state, x, y, *, proj_dim: int | None = 2048, projection: str = "rademacher",
              seed: int = 0, model_id: int = 0, output: Callable = margin, chunk_size: int | None = None,
              block_size: int = 512, projection_mib: float = 1024) -> Features:
  """TRAK features of rows ``(x, y)`` under one model: ``φ = Rᵀ∇f/√P`` and ``Q = 1 − p``, in one jitted program.

  Args:
    model, params, state: the network (evaluated in eval mode).
    x, y: inputs and integer labels, one row each.
    proj_dim: k (None with ``projection='identity'``).
    projection: ``'rademacher'`` (default, as the reference), ``'normal'`` or ``'identity'`` (no projection).
    seed, model_id: the matrix is drawn from ``fold_in(key(seed), model_id)``, a different one per model as the
      reference (``seed + 10⁴·model_id``) does; targets and training rows of a model must use the same pair.
    output: ``output(logits [1, C], y [1]) -> [1]``, the model output function (default `margin`).
    chunk_size: at most this many rows' per-example gradients held at once (``chunk_size × P`` floats); None:
      as many as fit in 128 MiB (`chunk_rows`: 425 rows of a 78,858-parameter MLP). The rows are spread evenly
      over the chunks; the result does not depend on the chunking.
    block_size: projection columns drawn from one key (see `project`; part of R's definition).
    projection_mib: MiB of R held at once (at least one block): the blocks that fit are drawn together and
      every chunk's gradients are computed once per such pass, i.e. once in all when ``P × k`` float32 fit.

  Returns:
    `Features` with ``phi`` [n, k] and ``q`` [n].
  """
  _check_rows(x, y, "featurize")
  num_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
  check_projection(projection, proj_dim, num_params)
  if chunk_size is not None and int(chunk_size) < 1:
    raise ValueError(f"chunk_size={chunk_size}: must be >= 1 (or None)")
  if not projection_mib > 0:
    raise ValueError(f"projection_mib={projection_mib}: must be > 0")
  key = jax.random.fold_in(jax.random.key(seed), model_id)
  phi, q = _featurize(model, params, state, x, jnp.asarray(y), key, output=output,
                      proj_dim=None if projection == "identity" else int(proj_dim), projection=projection,
                      block_size=int(block_size), chunk=chunk_rows(int(y.shape[0]), num_params, chunk_size),
                      projection_mib=float(projection_mib))
  return Features(phi, q)


def kernel_features(phi: jax.Array, *, ridge: float = 0.0, normalization: str = "mean_abs") -> jax.Array:
  """``Φ (ΦᵀΦ + λI)⁻¹`` [n, k]; with ``normalization='mean_abs'`` the inverse is first divided by the mean of
  its absolute entries (the reference ``BasicScoreComputer``), with ``'none'`` it is used as is (the paper)."""
  if normalization not in KERNEL_NORMALIZATIONS:
    raise ValueError(f"kernel_normalization={normalization!r}: unknown; choose one of {KERNEL_NORMALIZATIONS}")
  if ridge < 0:
    raise ValueError(f"ridge={ridge}: must be >= 0")
  phi = phi.astype(jnp.float32)
  xtx = phi.T @ phi + ridge * jnp.eye(phi.shape[1], dtype=phi.dtype)
  inv = jnp.linalg.inv(xtx)
  if normalization == "mean_abs":
    inv = inv / jnp.mean(jnp.abs(inv))
  return phi @ inv


def _digest(*trees) -> str:
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(trees):
    a = np.asarray(leaf)
    h.update(str((a.shape, a.dtype)).encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:16]


def cached_features(cache_dir: str | os.PathLike | None, model: Model, params, state, x, y, **options) -> Features:
  """`featurize` with the result cached (Orbax, through `unlearn_jax.checkpoint`) in a subdirectory of
  ``cache_dir`` keyed by a digest of ``params``, ``state``, the rows and the options; no cache when None."""
  if cache_dir is None:
    return featurize(model, params, state, x, y, **options)
  opts = {k: v for k, v in options.items() if k not in ("desc", "chunk_size", "projection_mib")}
  if opts.get("block_size") == 512:  # R depends on block_size; the default stays out of the key (older caches)
    del opts["block_size"]
  opts["output"] = getattr(opts.get("output", margin), "__qualname__", "custom")
  key = checkpoint.config_hash(_digest(params, state), _digest(x, y), opts)
  n = y.shape[0]
  k = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params)) if options.get("projection") == "identity" \
      else int(options.get("proj_dim", 2048))
  like = ({"phi": jax.ShapeDtypeStruct((n, k), jnp.float32), "q": jax.ShapeDtypeStruct((n,), jnp.float32)}, {})

  def build():
    f = featurize(model, params, state, x, y, **options)
    return {"phi": f.phi, "q": f.q}, {}, {}

  tree, _, _, _ = checkpoint.cached(os.path.join(os.fspath(cache_dir), f"trak-{key}"), build, like=like)
  return Features(tree["phi"], tree["q"])


def _split_xy(data, name: str):
  x, y = (data.x, data.y) if hasattr(data, "x") else data
  _check_rows(x, y, name)
  return x, jnp.asarray(y)


def trak_scores(model: Model, models: Sequence[tuple[Pytree, Pytree]], train, targets, *, proj_dim: int | None = 2048,
                projection: str = "rademacher", seed: int = 0, ridge: float = 0.0,
                kernel_normalization: str = "mean_abs", output: Callable = margin, chunk_size: int | None = None,
                block_size: int = 512, projection_mib: float = 1024, target_chunk_size: int = 1024,
                cache_dir: str | os.PathLike | None = None, desc: str | None = None) -> jax.Array:
  """TRAK scores ``[n_targets, n_train]`` of an ensemble: entry ``[j, i]`` is training row i's attributed effect
  on target j's output (higher: row i raises it).

  Args:
    model: the network.
    models: ``[(params, state), ...]``, one per ensemble member (e.g. models trained on α-subsets); member ``m``
      uses projection ``fold_in(key(seed), m)``.
    train, targets: `unlearn_jax.data.Split`s or ``(x, y)`` pairs.
    proj_dim, projection, seed, output, chunk_size, block_size, projection_mib: see `featurize`.
    ridge, kernel_normalization: see `kernel_features`.
    target_chunk_size: targets scored at once.
    cache_dir: where each member's features are cached (`cached_features`); None: no cache.
    desc: label of a progress bar over the members.

  Returns:
    float32 [n_targets, n_train].

  Raises:
    ValueError: before any work, for an empty ``models``, k < 1, an unknown projection or normalization, or rows
      whose x and y disagree.
  """
  x_tr, y_tr = _split_xy(train, "train")
  x_t, y_t = _split_xy(targets, "targets")
  models = list(models)
  if not models:
    raise ValueError("models: empty; give at least one (params, state)")
  num_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(models[0][0]))
  check_projection(projection, proj_dim, num_params)
  if kernel_normalization not in KERNEL_NORMALIZATIONS:
    raise ValueError(f"kernel_normalization={kernel_normalization!r}: unknown; choose one of {KERNEL_NORMALIZATIONS}")
  if int(target_chunk_size) < 1:
    raise ValueError(f"target_chunk_size={target_chunk_size}: must be >= 1")
  opts = dict(proj_dim=proj_dim, projection=projection, seed=seed, output=output, chunk_size=chunk_size,
              block_size=block_size, projection_mib=projection_mib)
  total = jnp.zeros((y_t.shape[0], y_tr.shape[0]), jnp.float32)
  q_sum = jnp.zeros((y_tr.shape[0],), jnp.float32)
  members = enumerate(models)
  for m, (params, state) in (progress(members, desc=desc, total=len(models), unit="model") if desc else members):
    tr = cached_features(cache_dir, model, params, state, x_tr, y_tr, model_id=m, **opts)
    tg = cached_features(cache_dir, model, params, state, x_t, y_t, model_id=m, **opts)
    feats = kernel_features(tr.phi, ridge=ridge, normalization=kernel_normalization)
    total = total + _chunked_scores(tg.phi, feats, int(target_chunk_size))
    q_sum = q_sum + tr.q
  m = len(models)
  return (total / m) * (q_sum / m)[None, :]


def _chunked_scores(target_phi: jax.Array, feats: jax.Array, chunk: int) -> jax.Array:
  """``target_phi @ featsᵀ`` computed ``chunk`` targets at a time."""
  parts = [target_phi[s:s + chunk] @ feats.T for s in range(0, target_phi.shape[0], chunk)]
  return jnp.concatenate(parts)


def predicted_outputs(scores: jax.Array, masks: jax.Array) -> jax.Array:
  """The attribution's prediction of each subset model's outputs, up to a per-target constant:
  ``[M, n_targets] = masks [M, n_train] @ scoresᵀ`` (TRAK's ``Σ_{i∈S} τ(z)_i``), for `lds`."""
  masks = jnp.asarray(masks, jnp.float32)
  if masks.ndim != 2 or masks.shape[1] != scores.shape[1]:
    raise ValueError(f"masks: shape {tuple(masks.shape)} does not fit scores of shape {tuple(scores.shape)} "
                     f"(need [num_models, {scores.shape[1]}])")
  return masks @ scores.T


def unstack(params: Pytree, state: Pytree) -> list[tuple[Pytree, Pytree]]:
  """``[(params_m, state_m)]`` from pytrees with a leading model axis (a population)."""
  m = jax.tree.leaves(params)[0].shape[0]
  return [jax.tree.map(lambda a: a[i], (params, state)) for i in range(m)]

