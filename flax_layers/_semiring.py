"""Semirings for chain dynamic programs: log (sum-product), max (Viterbi), k-best lists.

Package-internal. A semiring value carries a trailing *list* axis: size 1 for the log and
max semirings, ``k`` for the k-best semiring (the ``k`` best scores, best first, padded
with ``-inf``). Multiplication is ``+`` of scores (of lists: all pairwise sums);
:meth:`sum` reduces one axis together with the list axis and, for the max and k-best
semirings, also returns which flattened ``(index, rank)`` each result came from (the
back-pointers of Viterbi and list Viterbi).

References: Goodman, "Semiring Parsing" (Computational Linguistics 1999); Rush,
"Torch-Struct" (ACL 2020 demo); Stanojević & Sartran, "SynJax" (2023).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax


def logsumexp(x: jax.Array, axis: int) -> jax.Array:
    """Log-sum-exp along ``axis``: ``-inf`` (zero gradient) for an all ``-inf`` slice.

    NaN anywhere in a slice gives NaN, ``+inf`` gives ``+inf``, as in
    :func:`jax.nn.logsumexp`.
    """
    m = lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0)
    s = jnp.sum(jnp.exp(x - m), axis=axis)
    empty = s == 0
    return jnp.where(empty, -jnp.inf, jnp.log(jnp.where(empty, 1, s)) + jnp.squeeze(m, axis))


def times(a: jax.Array, b: jax.Array) -> jax.Array:
    """Semiring product of list values (trailing axes ``ka``, ``kb``) -> ``ka * kb`` sums."""
    out = a[..., :, None] + b[..., None, :]
    return out.reshape(*out.shape[:-2], a.shape[-1] * b.shape[-1])


@dataclasses.dataclass(frozen=True)
class Log:
    """Sum-product in log space: partition functions; marginals are its gradients."""

    k: int = 1
    has_arg = False

    def sum(self, x: jax.Array, axis: int) -> tuple[jax.Array, None]:
        axis = axis % x.ndim
        return logsumexp(x[..., 0], axis)[..., None], None


@dataclasses.dataclass(frozen=True)
class Max:
    """Max-plus (Viterbi): the best score, ties to the lower index."""

    k: int = 1
    has_arg = True

    def sum(self, x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
        axis = axis % x.ndim
        x = x[..., 0]
        return jnp.max(x, axis)[..., None], jnp.argmax(x, axis).astype(jnp.int32)[..., None]


@dataclasses.dataclass(frozen=True)
class KBest:
    """Max-plus over ``k``-lists (list Viterbi): the ``k`` best scores, best first."""

    k: int
    has_arg = True

    def sum(self, x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
        axis = axis % x.ndim
        x = jnp.moveaxis(x, axis, -2)
        x = x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])
        if x.shape[-1] < self.k:
            pad = jnp.full((*x.shape[:-1], self.k - x.shape[-1]), -jnp.inf, x.dtype)
            x = jnp.concatenate([x, pad], axis=-1)
        values, index = lax.top_k(x, self.k)
        return values, index.astype(jnp.int32)


def one(semiring, shape: tuple[int, ...], dtype) -> jax.Array:
    """The multiplicative identity (score 0 first, ``-inf`` for the other list slots)."""
    first = jnp.arange(semiring.k) == 0
    return jnp.broadcast_to(jnp.where(first, 0, -jnp.inf).astype(dtype), (*shape, semiring.k))


def lift(semiring, scores: jax.Array) -> jax.Array:
    """Plain scores ``[...]`` as semiring values ``[..., k]`` (one path each)."""
    return scores[..., None] + one(semiring, (), scores.dtype)
