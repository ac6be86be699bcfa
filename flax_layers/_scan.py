"""The generic chain dynamic programs: one sequential scan and one associative scan.

Package-internal. Both run over a right-padded, compacted chain (see
:mod:`flax_layers._chain`) in any semiring of :mod:`flax_layers._semiring`:

* :func:`sequential_scan`: ``α_1 = start ⊗ f_1``,
  ``α_t(j) = ⊕_i α_{t-1}(i) ⊗ g(i, j) ⊗ f_t(j)`` for the valid positions (an identity step
  elsewhere), ``total = ⊕_j α_L(j) ⊗ end(j)``. Optionally keeps the back-pointers (max
  and k-best semirings; :func:`backtrack` follows them) and every ``α_t``, and can
  rematerialise its steps in ``√T`` blocks (:func:`jax.checkpoint`) so that its gradient
  stores ``O(√T)`` forward vectors instead of ``O(T)`` step residuals.
* :func:`associative_scan`: the same total as a balanced tree of semiring matrix products
  of the transfer matrices ``M_t(i, j) = g(i, j) ⊗ f_t(j)``: ``O(log T)`` depth,
  ``O(T K³)`` work. Only the total product is needed (its gradient is the downward
  sweep), so the tree is the up-sweep of the associative scan.

:func:`log_space_marginals` derives unary and pairwise marginals as gradients of the
log-space total; it is the exact reference that the fast paths fall back to.

References: Rabiner (1989); Särkkä & García-Fernández, "Temporal Parallelization of
Bayesian Smoothers" (IEEE TAC 2021); Griewank, "Achieving logarithmic growth of temporal
and spatial complexity in reverse automatic differentiation" (1992) for checkpointing.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from flax_layers._semiring import Log, lift, one, times


class ScanResult(NamedTuple):
    """``total`` ``[N, k]``; ``final_arg`` ``[N, k]``, ``pointers`` ``[T-1, N, K, k]`` (flat
    ``(tag, rank)`` indices) for semirings with back-pointers; ``alphas`` ``[T, N, K, k]``
    when asked for."""

    total: jax.Array
    final_arg: jax.Array | None
    pointers: jax.Array | None
    alphas: jax.Array | None


def blocked_scan(step, carry, xs, checkpoint: bool):
    """:func:`jax.lax.scan`, optionally rematerialised in blocks of about ``√T`` steps.

    Padding steps are all-zero inputs, so ``step`` must treat a zero (False) validity
    flag as the identity.
    """
    n = jax.tree_util.tree_leaves(xs)[0].shape[0]
    if not checkpoint or n < 4:
        return lax.scan(step, carry, xs)
    size = math.isqrt(n - 1) + 1
    blocks = -(-n // size)

    def split(a):
        a = jnp.concatenate([a, jnp.zeros((blocks * size - n, *a.shape[1:]), a.dtype)])
        return a.reshape(blocks, size, *a.shape[1:])

    @jax.checkpoint
    def block(carry, xb):
        return lax.scan(step, carry, xb)

    carry, ys = lax.scan(block, carry, jax.tree_util.tree_map(split, xs))
    ys = jax.tree_util.tree_map(lambda a: a.reshape(blocks * size, *a.shape[2:])[:n], ys)
    return carry, ys


def sequential_scan(
    semiring,
    x: jax.Array,
    g: jax.Array,
    start: jax.Array,
    end: jax.Array,
    lengths: jax.Array,
    *,
    keep_pointers: bool = False,
    keep_alphas: bool = False,
    checkpoint: bool = False,
) -> ScanResult:
    """Forward recursion in ``semiring`` over ``x`` ``[N, T, K]`` (compact, right-padded).

    ``g`` is ``[K, K]``, per row ``[N, K, K]`` or per step ``[T, N, K, K]`` (entry ``t``
    links ``t-1 -> t``; entry 0 unused); the per-row and per-step forms exist so that
    autodiff yields expected transition counts and pairwise marginals per row. Rows of
    length 0 total the semiring's one.
    """
    batch, num_steps, num_tags = x.shape
    xt = jnp.swapaxes(x, 0, 1)
    valid = jnp.arange(num_steps)[:, None] < lengths
    per_step = g.ndim == 4
    alpha0 = lift(semiring, start + xt[0])

    def step(alpha, inputs):
        f, v, g_t = inputs
        edge = (g_t if per_step else g)[..., None]
        keep = v[:, None, None]
        # Rows past their length pass alpha through; cutting the gradient of their step
        # keeps a NaN transition (which their result does not use) out of their gradients.
        cand = alpha[:, :, None, :] + edge
        cand = jnp.where(keep[..., None], cand, lax.stop_gradient(cand))
        new, arg = semiring.sum(cand, axis=1)
        alpha = jnp.where(keep, new + f[..., None], alpha)
        return alpha, (arg if keep_pointers else None, alpha if keep_alphas else None)

    xs = (xt[1:], valid[1:], g[1:] if per_step else None)
    alpha, (pointers, alphas) = blocked_scan(step, alpha0, xs, checkpoint)
    final = alpha + end[None, :, None]
    nonempty = (lengths > 0)[:, None]
    final = jnp.where(nonempty[..., None], final, lax.stop_gradient(final))
    total, final_arg = semiring.sum(final, axis=1)
    total = jnp.where(nonempty, total, one(semiring, (batch,), total.dtype))
    if keep_alphas:
        alphas = jnp.concatenate([alpha0[None], alphas])
    return ScanResult(total, final_arg if keep_pointers else None, pointers, alphas)


def backtrack(pointers: jax.Array, final_arg: jax.Array, lengths: jax.Array) -> jax.Array:
    """Tags ``[N, k, T]`` of the ``k`` best paths from back-pointers (garbage past lengths)."""
    k = final_arg.shape[-1]
    valid = jnp.arange(pointers.shape[0] + 1)[:, None] < lengths
    cols = jnp.arange(final_arg.shape[0])[:, None]

    def step(carry, inputs):
        tag, rank = carry
        pointer, v = inputs
        prev = pointer[cols, tag, rank]
        tag = jnp.where(v[:, None], prev // k, tag)
        rank = jnp.where(v[:, None], prev % k, rank)
        return (tag, rank), tag

    last = final_arg // k
    _, tags = lax.scan(step, (last, final_arg % k), (pointers, valid[1:]), reverse=True)
    return jnp.transpose(jnp.concatenate([tags, last[None]]), (1, 2, 0))


def tree_reduce(combine, elems):
    """``elems[0] ∘ elems[1] ∘ ... ∘ elems[T-1]`` for an associative ``combine``, in
    ``⌈log₂ T⌉`` levels of batched combines (leading axis ``T``)."""
    leaves = jax.tree_util.tree_leaves(elems)
    n = leaves[0].shape[0]
    while n > 1:
        half = n // 2
        left = jax.tree_util.tree_map(lambda e, h=half: e[: 2 * h : 2], elems)
        right = jax.tree_util.tree_map(lambda e, h=half: e[1 : 2 * h : 2], elems)
        merged = combine(left, right)
        if n % 2:
            merged = jax.tree_util.tree_map(
                lambda m, e: jnp.concatenate([m, e[-1:]]), merged, elems
            )
        elems, n = merged, half + n % 2
    return jax.tree_util.tree_map(lambda e: e[0], elems)


def associative_scan(semiring, x, g, start, end, lengths) -> jax.Array:
    """The total of :func:`sequential_scan` (``[N, k]``) as a tree of matrix products."""
    batch, num_steps, num_tags = x.shape
    alpha = lift(semiring, start + x[:, 0])
    if num_steps > 1:
        valid = jnp.arange(1, num_steps)[:, None] < lengths
        mats = lift(semiring, g + jnp.swapaxes(x[:, 1:], 0, 1)[:, :, None, :])  # [T-1,N,K,K,k]
        eye = jnp.eye(num_tags, dtype=bool)[..., None]
        identity = jnp.where(eye, one(semiring, (), x.dtype), -jnp.inf)
        mats = jnp.where(valid[:, :, None, None, None], mats, identity)

        def combine(a, b):  # (a ⊗ b)(i, j) = ⊕_m a(i, m) ⊗ b(m, j)
            return semiring.sum(times(a[..., :, :, None, :], b[..., None, :, :, :]), axis=-3)[0]

        prod = tree_reduce(combine, mats)
        alpha = semiring.sum(times(alpha[:, :, None, :], prod), axis=1)[0]
    total = semiring.sum(alpha + end[None, :, None], axis=1)[0]
    return jnp.where((lengths > 0)[:, None], total, one(semiring, (batch,), total.dtype))


def log_space_marginals(x, g, start, end, lengths, *, pairs: str = "none", checkpoint=False):
    """Exact ``(log Z [N], unary [N, T, K], pairwise)`` by autodiff of the log-space scan.

    ``pairs``: ``"none"`` (None), ``"steps"`` (``[N, T, K, K]``, entry ``t`` the joint of
    positions ``t-1`` and ``t``, zero at ``t = 0`` and past each length) or ``"counts"``
    (``[N, K, K]``, summed over steps). Rows without a feasible path get zero marginals,
    rows with a NaN input NaN.
    """
    batch, num_steps, num_tags = x.shape
    shape = {"steps": (num_steps, batch, num_tags, num_tags), "counts": (batch, num_tags, num_tags)}
    g_rows = jnp.broadcast_to(g, shape[pairs]) if pairs in shape else g

    def total(x, g_rows):
        log_z = sequential_scan(Log(), x, g_rows, start, end, lengths, checkpoint=checkpoint)
        log_z = log_z.total[:, 0]
        return jnp.sum(jnp.where(log_z == -jnp.inf, 0, log_z)), log_z

    (_, log_z), (unary, d_g) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(x, g_rows)
    pair = {"steps": lambda: jnp.swapaxes(d_g, 0, 1), "counts": lambda: d_g}
    return log_z, unary, pair[pairs]() if pairs in pair else None
