"""The validated input record of every linear-chain model, and mask compaction.

Package-internal. :func:`validate` checks the arguments of a chain model (emissions
``[..., T, K]``, transitions ``[K, K]``, optional start/end ``[K]``, a mask or lengths,
optional tags) at trace time and returns a :class:`ChainInputs` record plus a static
flag telling whether the mask may have holes. :func:`compact` turns the record into the
right-padded, flattened form every algorithm works on (:class:`Compact`), and
:func:`expand` scatters per-position results back to the original positions.

Masks with holes. A row whose valid positions are ``v_1 < ... < v_L`` is the chain of
the compacted sequence ``(f_{v_1}, ..., f_{v_L})``: the transition links neighbouring
*valid* positions, start/end apply to the first/last valid position. Compaction is one
gather per row (valid positions first, in order), so every algorithm only ever sees
right-padded rows and equals the compacted sequence by construction. A right-padded
mask (or ``lengths``) skips the gather.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def host_value(x) -> np.ndarray | None:
    """``x`` as a numpy array when its value is known at trace time, else None.

    Taken from the argument itself: under :func:`jax.jit`, ``jnp.asarray`` of a numpy
    constant is already a tracer.
    """
    return np.asarray(x) if is_concrete(x) else None


def compute_dtype(*arrays) -> jnp.dtype:
    """float32, or wider if an input is wider (float64 under x64)."""
    return jnp.result_type(jnp.float32, *(a.dtype for a in arrays))


def check_emissions(fn: str, emissions) -> jax.Array:
    emissions = jnp.asarray(emissions)
    if emissions.ndim < 2 or emissions.shape[-1] < 1 or emissions.shape[-2] < 1:
        raise ValueError(
            f"{fn}: emissions must have shape [..., T, K] with T, K >= 1, got {emissions.shape}."
        )
    if not jnp.issubdtype(emissions.dtype, jnp.floating):
        raise TypeError(f"{fn}: emissions must be a floating array, got dtype {emissions.dtype}.")
    return emissions


def check_square(fn: str, transitions, num_tags: int, alternative: str = "") -> jax.Array:
    """``[K, K]`` floating transitions (``alternative`` names another accepted form)."""
    transitions = jnp.asarray(transitions)
    if transitions.shape != (num_tags, num_tags):
        raise ValueError(
            f"{fn}: transitions must have shape [K, K] = ({num_tags}, {num_tags}){alternative}, "
            f"got {transitions.shape}."
        )
    if not jnp.issubdtype(transitions.dtype, jnp.floating):
        raise TypeError(f"{fn}: transitions must be floating, got dtype {transitions.dtype}.")
    return transitions


def check_vector(fn: str, name: str, v, num_tags: int) -> jax.Array | None:
    if v is None:
        return None
    v = jnp.asarray(v)
    if v.shape != (num_tags,):
        raise ValueError(f"{fn}: {name} must have shape [K] = ({num_tags},), got {v.shape}.")
    if not jnp.issubdtype(v.dtype, jnp.floating):
        raise TypeError(f"{fn}: {name} must be floating, got dtype {v.dtype}.")
    return v


def check_mask(
    fn: str, mask, lengths, batch_shape: tuple[int, ...], num_steps: int
) -> tuple[jax.Array, bool]:
    """Boolean mask ``[..., T]`` from a mask or lengths, and whether it may have holes.

    ``holes`` is a static bool: False for ``lengths``, no mask, or a concrete mask that is
    right-padded; True for a concrete mask with holes and for any traced mask. A concrete
    mask (or concrete lengths) comes back as a numpy array, so that it stays concrete
    under :func:`jax.jit`.
    """
    if mask is not None and lengths is not None:
        raise ValueError(f"{fn}: pass either mask or lengths, not both.")
    if mask is None and lengths is None:
        return np.ones((*batch_shape, num_steps), bool), False
    if mask is not None:
        host = host_value(mask)
        mask = jnp.asarray(mask) if host is None else host
        if mask.shape != (*batch_shape, num_steps):
            raise ValueError(
                f"{fn}: mask must have shape [..., T] = {(*batch_shape, num_steps)}, "
                f"got {mask.shape}."
            )
        if not (mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype, jnp.integer)):
            raise TypeError(f"{fn}: mask must be boolean or 0/1 integers, got {mask.dtype}.")
        if host is None:
            return mask.astype(bool), True
        if not np.isin(host, (0, 1)).all():
            raise ValueError(f"{fn}: mask must contain only 0/1 (or booleans).")
        m = host.astype(bool)
        holes = bool((m[..., 1:] & ~m[..., :-1]).any())
        return m, holes
    host = host_value(lengths)
    lengths = jnp.asarray(lengths) if host is None else host
    if lengths.shape != batch_shape:
        raise ValueError(
            f"{fn}: lengths must have the batch shape {batch_shape}, got {lengths.shape}."
        )
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"{fn}: lengths must be integers, got dtype {lengths.dtype}.")
    if host is None:
        return jnp.arange(num_steps) < lengths[..., None], False
    if ((host < 0) | (host > num_steps)).any():
        raise ValueError(f"{fn}: lengths must lie in [0, T={num_steps}], got {host}.")
    return np.arange(num_steps) < host[..., None], False


ALGORITHMS = ("rescaled", "sequential", "parallel")


def check_algorithm(fn: str, algorithm: str, checkpoint: bool = False) -> None:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{fn}: algorithm must be one of {ALGORITHMS}, got {algorithm!r}.")
    if checkpoint and algorithm != "sequential":
        raise ValueError(
            f"{fn}: checkpoint=True rematerialises the log-space scan; pass "
            f"algorithm='sequential' with it, got algorithm={algorithm!r}."
        )


def check_tags(fn: str, tags, mask: jax.Array, num_tags: int) -> jax.Array:
    """Integer tags ``[..., T]``, in ``[0, K)`` at valid positions (checked when concrete)."""
    host, host_mask = host_value(tags), host_value(mask)
    tags = jnp.asarray(tags)
    if tags.shape != mask.shape:
        raise ValueError(f"{fn}: tags must have shape [..., T] = {mask.shape}, got {tags.shape}.")
    if not jnp.issubdtype(tags.dtype, jnp.integer):
        raise TypeError(f"{fn}: tags must be integers, got dtype {tags.dtype}.")
    if host is not None and host_mask is not None:
        if ((host < 0) | (host >= num_tags))[host_mask.astype(bool)].any():
            raise ValueError(f"{fn}: tags at valid positions must lie in [0, K={num_tags}).")
    return tags.astype(jnp.int32)


class ChainInputs(NamedTuple):
    """Validated chain-model inputs (original layout and dtypes; a pytree of arrays).

    Attributes:
      emissions: ``[..., T, K]`` floating scores.
      transitions: ``[K, K]`` scores of ``i -> j``.
      start: ``[K]`` first-tag scores (zeros when not given).
      end: ``[K]`` last-tag scores (zeros when not given).
      mask: ``[..., T]`` boolean valid positions.
    """

    emissions: jax.Array
    transitions: jax.Array
    start: jax.Array
    end: jax.Array
    mask: jax.Array


def validate(
    fn: str, emissions, transitions, *, mask=None, lengths=None, start=None, end=None
) -> tuple[ChainInputs, bool]:
    """Checks a chain model's arguments; returns the record and the static ``holes`` flag."""
    emissions = check_emissions(fn, emissions)
    *batch_shape, num_steps, num_tags = emissions.shape
    transitions = check_square(fn, transitions, num_tags)
    start = check_vector(fn, "start", start, num_tags)
    end = check_vector(fn, "end", end, num_tags)
    dtype = compute_dtype(emissions, transitions, *(v for v in (start, end) if v is not None))
    zeros = jnp.zeros((num_tags,), dtype)
    mask, holes = check_mask(fn, mask, lengths, tuple(batch_shape), num_steps)
    inputs = ChainInputs(
        emissions,
        transitions,
        zeros if start is None else start,
        zeros if end is None else end,
        mask,
    )
    return inputs, holes


class Compact(NamedTuple):
    """Right-padded, flattened, compute-dtype form of :class:`ChainInputs`.

    Attributes:
      x: ``[N, T, K]`` emissions, valid positions first in each row, zero elsewhere.
      g: ``[K, K]`` transitions.
      start: ``[K]``.
      end: ``[K]``.
      lengths: ``[N]`` int32 number of valid positions.
      position: ``[N, T]`` int32 compact index of every original position (None for a
        mask known to be right-padded; the identity for a traced mask without holes).
      order: ``[N, T]`` int32 original position of every compact index (its inverse).
      mask: ``[N, T]`` original valid positions.
      nan_rows: ``[N]`` bool, a NaN in an input that enters the row's results: an
        emission at a valid position, start or end (one or more valid positions) or the
        transitions (two or more).
    """

    x: jax.Array
    g: jax.Array
    start: jax.Array
    end: jax.Array
    lengths: jax.Array
    position: jax.Array | None
    order: jax.Array | None
    mask: jax.Array
    nan_rows: jax.Array


def _gather_rows(y: jax.Array, index: jax.Array) -> jax.Array:
    """``y[n, index[n, t], ...]`` for ``y`` ``[N, T, ...]`` and ``index`` ``[N, T]``."""
    index = index.reshape(index.shape + (1,) * (y.ndim - 2))
    return jnp.take_along_axis(y, index, axis=1)


@jax.custom_vjp
def permute_rows(y: jax.Array, order: jax.Array, position: jax.Array, active) -> jax.Array:
    """``y[n, order[n, t]]`` where ``position`` is the inverse permutation of ``order``;
    ``y`` itself where ``active`` (a scalar bool) is false.

    The condition sits inside the forward and the backward pass (a gather by ``position``,
    not a scatter-add, slow on CPU), so autodiff never differentiates a ``lax.cond``.
    """
    return lax.cond(active, _gather_rows, lambda y, _: y, y, order)


def _permute_rows_fwd(y, order, position, active):
    return permute_rows(y, order, position, active), (position, active)


def _permute_rows_bwd(res, ct):
    position, active = res
    return lax.cond(active, _gather_rows, lambda c, _: c, ct, position), None, None, None


permute_rows.defvjp(_permute_rows_fwd, _permute_rows_bwd)


def compact_rows(emissions, mask, holes: bool, dtype):
    """``(x [N, T, K], lengths [N], position, order, mask [N, T])``, see :class:`Compact`.

    With ``holes`` (a mask that may have holes), the gather runs only when some row has a
    hole: a traced mask that is right-padded at run time costs what ``lengths`` costs
    (``position`` and ``order`` are then the identity).
    """
    num_steps, num_tags = emissions.shape[-2:]
    x = emissions.astype(dtype).reshape(-1, num_steps, num_tags)
    mask = mask.reshape(-1, num_steps)
    lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)
    valid = (jnp.arange(num_steps) < lengths[:, None])[..., None]
    if not holes:
        return jnp.where(valid, x, 0), lengths, None, None, mask
    t = jnp.arange(num_steps, dtype=jnp.int32)

    def permutation():
        # Valid positions up to t (an associative scan: XLA:CPU constant-folds the
        # reduce-window of a cumsum over a constant mask very slowly).
        before = lax.associative_scan(jnp.add, mask.astype(jnp.int32), axis=1)
        position = jnp.where(mask, before - 1, lengths[:, None] + t - before)
        rows = jnp.arange(x.shape[0])[:, None]
        return position, jnp.zeros_like(position).at[rows, position].set(t)

    def identity():
        return (jnp.broadcast_to(t, mask.shape),) * 2

    any_hole = jnp.any(mask[:, 1:] & ~mask[:, :-1])
    position, order = lax.cond(any_hole, permutation, identity)
    x = jnp.where(valid, permute_rows(x, order, position, any_hole), 0)
    return x, lengths, position, order, mask


def nan_rows(x, lengths, ends=(), links=()) -> jax.Array:
    """Rows ``[N]`` whose results a NaN input enters: an emission of ``x`` (compact, zero
    past each length), a score in ``ends`` (rows with a valid position) or in ``links``
    (rows with two or more).

    Tested by sums (one fused reduction each): a sum is NaN when a term is NaN (or when
    ``+inf`` meets ``-inf``, an indeterminate row either way); ``-inf`` scores stay
    ``-inf``.
    """
    total = lambda arrays: jnp.isnan(sum((jnp.sum(a) for a in arrays), jnp.zeros(())))
    return (
        jnp.isnan(jnp.sum(x, axis=(1, 2)))
        | ((lengths > 0) & total(ends))
        | ((lengths > 1) & total(links))
    )


def reorder(tags: jax.Array, order: jax.Array | None) -> jax.Array:
    """Tags ``[N, T]`` in compact order (unchanged when ``order`` is None)."""
    return tags if order is None else jnp.take_along_axis(tags, order, axis=1)


def compact(inputs: ChainInputs, holes: bool) -> Compact:
    """Flattens the batch, compacts holes away and casts to the compute dtype."""
    em, g, start, end, mask = inputs
    dtype = compute_dtype(em, g, start, end)
    x, lengths, position, order, mask = compact_rows(em, mask, holes, dtype)
    g, start, end = (a.astype(dtype) for a in (g, start, end))
    nan = nan_rows(x, lengths, ends=(start, end), links=(g,))
    return Compact(x, g, start, end, lengths, position, order, mask, nan)


def compact_tags(c: Compact, tags: jax.Array) -> jax.Array:
    """Tags ``[..., T]`` in compact order ``[N, T]`` (anything past each length)."""
    return reorder(tags.reshape(c.mask.shape), c.order)


def expand(c: Compact, y: jax.Array, fill) -> jax.Array:
    """Per-position results ``[N, T, ...]`` in compact order back at the original positions.

    Masked positions get ``fill``.
    """
    if c.position is not None:
        y = _gather_rows(y, c.position)
    keep = c.mask.reshape(c.mask.shape + (1,) * (y.ndim - 2))
    return jnp.where(keep, y, jnp.asarray(fill, y.dtype))


def poison(value: jax.Array, nan_rows: jax.Array) -> jax.Array:
    """``value`` with its rows ``nan_rows`` (leading axis) set to NaN.

    Adds ``where(nan, NaN, 0)``, so gradients reach ``value`` unchanged.
    """
    nan_rows = nan_rows.reshape(nan_rows.shape + (1,) * (value.ndim - nan_rows.ndim))
    return value + jnp.where(nan_rows, jnp.nan, 0).astype(value.dtype)
