"""Range checks of integer id arguments, shared by every function that takes ids.

Package-internal. Token, segment (token type) and position ids index embedding tables
or vocabularies; an id outside ``[0, num)`` has no meaning. One rule everywhere
(:class:`flax_layers.BertModel`, :func:`flax_layers.seq2seq_loss`, the UniLM generation
functions, :func:`flax_layers.passage_constrained_decode`):

* concrete ids (numpy arrays, lists, jax arrays outside ``jit``) are checked at call
  time: an id outside ``[0, num)`` raises a ``ValueError`` naming the function, the
  argument, the valid range and the first offending value with its index;
* traced ids (under ``jit``/``vmap``) cannot be checked at trace time: every example
  (row of the leading batch axes) that holds an out-of-range id gets NaN in its
  floating outputs. Ids are never wrapped (negative indices), clipped or dropped into
  a finite result.

:func:`bad_rows` returns those rows (``None`` for concrete ids, which
:func:`check_ids` has already checked), :func:`safe_ids` replaces the bad ids by 0 for
the computation and :func:`poison` sets the rows of the result to NaN. Poisoning the
result rather than the inputs keeps the NaN out of the computation in between, so an
example that the loss masks out leaves the gradients of the others finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flax_layers._chain import is_concrete
from flax_layers._chain import poison as _poison_rows

__all__ = [
    "any_rows",
    "bad_rows",
    "check_ids",
    "check_int",
    "is_concrete",
    "poison",
    "safe_ids",
]


def check_int(fn: str, name: str, ids) -> jax.Array:
    """``ids`` as a jax array; ``TypeError`` naming ``name`` unless its dtype is integer."""
    dtype = jnp.result_type(ids)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{fn}: `{name}` must be an integer array, got dtype {dtype}.")
    return jnp.asarray(ids)


def _outside(ids, num: int, xp):
    """Entries that are not an integer in ``[0, num)`` (NaN included, for float flags)."""
    if xp.issubdtype(ids.dtype, xp.integer):
        return (ids < 0) | (ids >= num)
    return ~((ids >= 0) & (ids < num) & (ids == xp.round(ids)))


def check_ids(fn: str, name: str, ids, num: int, what: str | None = None) -> None:
    """Raises a ``ValueError`` if concrete ``ids`` hold a value outside ``[0, num)``.

    Args:
      fn: the public function or class, for the message.
      name: the argument name.
      ids: integer ids, or floats that must be integer-valued (0/1 flags); traced ids
        are not checked (see :func:`bad_rows`).
      num: the number of valid ids.
      what: what ``num`` is (e.g. ``"vocab_size"``), for the message.
    """
    if not is_concrete(ids):
        return
    arr = np.asarray(ids)
    bad = _outside(arr, num, np)
    if arr.size and bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        bound = f"{what}={num}" if what else str(num)
        raise ValueError(
            f"{fn}: `{name}` must lie in [0, {bound}), got {arr[idx].item()!r} at index {idx}."
        )


def bad_rows(ids, num: int, batch_ndim: int = 1) -> jax.Array | None:
    """Rows (the leading ``batch_ndim`` axes) of traced ``ids`` holding an id outside
    ``[0, num)``, as a boolean array; ``None`` for concrete ids (see :func:`check_ids`).
    """
    if is_concrete(ids):
        return None
    ids = jnp.asarray(ids)
    bad = _outside(ids, num, jnp)
    return jnp.any(bad.reshape(*ids.shape[:batch_ndim], -1), axis=-1)


def safe_ids(ids, num: int):
    """Traced ``ids`` with out-of-range entries replaced by 0 (their rows are poisoned
    with :func:`poison` afterwards, so the computation in between stays finite and its
    gradients NaN-free); concrete ids unchanged."""
    if is_concrete(ids):
        return ids
    ids = jnp.asarray(ids)
    return jnp.where(_outside(ids, num, jnp), jnp.zeros((), ids.dtype), ids)


def any_rows(*rows: jax.Array | None) -> jax.Array | None:
    """Logical OR of :func:`bad_rows` results, skipping ``None``."""
    present = [r for r in rows if r is not None]
    if not present:
        return None
    out = present[0]
    for r in present[1:]:
        out = out | r
    return out


def poison(value: jax.Array, rows: jax.Array | None) -> jax.Array:
    """``value`` with the rows ``rows`` (leading axes) set to NaN; unchanged for ``None``."""
    if rows is None:
        return value
    return _poison_rows(value, rows)
