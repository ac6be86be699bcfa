"""Viterbi specialised for small tag sets: the max-plus product unrolled over the tags.

Package-internal. Equal to the max semiring's :func:`flax_layers._scan.sequential_scan`
with back-pointers (ties to the lower tag index), and faster on CPU: the chain runs in
``[T, K, N]`` layout, batch in the vector lanes, and for up to ``UNROLL_MAX_TAGS`` tags
the product ``max_i δ(i) + g(i, j)`` with its argmax is a tournament of fused
compare-and-selects (depth ``⌈log₂ K⌉``) instead of a broadcast ``[K, K, N]`` reduction
(XLA:CPU's variadic argmax reduction is far slower). The back-pointers are int8 (``K ≤
127``) and the loop writes them into one preallocated buffer.

Reference: Viterbi, "Error bounds for convolutional codes" (IEEE Trans. IT 1967).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# Up to this many tags the unrolled loop is used; above it the generic max semiring.
UNROLL_MAX_TAGS = 48
POINTER_DTYPE = jnp.int8  # holds every tag index up to UNROLL_MAX_TAGS


def max_plus(delta: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(max_i δ(i) + g(i, j), first argmax i)`` for ``δ`` ``[K, N]``: ``[K, N]`` each.

    A tournament over ``i``: each match keeps the left (lower) candidate unless the right
    one is strictly greater, so ties go to the lower index as in a sequential scan, and
    the maximum is exact (no arithmetic beyond the one addition per candidate).
    """
    players = [
        (delta[i][None, :] + g[i][:, None], jnp.full((), i, POINTER_DTYPE))
        for i in range(delta.shape[0])
    ]
    while len(players) > 1:
        rounds = []
        for (lv, li), (rv, ri) in zip(players[0::2], players[1::2]):
            better = rv > lv
            rounds.append((jnp.where(better, rv, lv), jnp.where(better, ri, li)))
        players = rounds + players[len(rounds) * 2 :]
    best, arg = players[0]
    return best, jnp.broadcast_to(arg, best.shape)


def viterbi(x, g, start, end, lengths) -> tuple[jax.Array, jax.Array]:
    """Best path of ``x`` ``[N, T, K]`` (right-padded; positions past each length are
    never used, so they need not be zeroed).

    Returns tags ``[N, T]`` (anything past each length) and scores ``[N]`` (0 for rows of
    length 0).
    """
    xt = jnp.transpose(x, (1, 2, 0))
    num_steps, num_tags, batch = xt.shape
    valid = jnp.arange(num_steps)[:, None] < lengths

    def forward(t, carry):  # δ_t from δ_{t-1}; the pointers of step t go to row t - 1
        delta, pointers = carry
        best, arg = max_plus(delta, g)
        f = lax.dynamic_index_in_dim(xt, t, keepdims=False)
        v = lax.dynamic_index_in_dim(valid, t, keepdims=False)
        pointers = lax.dynamic_update_index_in_dim(pointers, arg, t - 1, 0)
        return jnp.where(v, best + f, delta), pointers

    pointers = jnp.zeros((max(num_steps - 1, 0), num_tags, batch), POINTER_DTYPE)
    delta_last, pointers = lax.fori_loop(1, num_steps, forward, (xt[0] + start[:, None], pointers))
    final = delta_last + end[:, None]
    last_tag = jnp.argmax(final, axis=0).astype(jnp.int32)
    score = jnp.where(lengths > 0, jnp.max(final, axis=0), 0)
    cols = jnp.arange(batch)

    def backtrack(y, inputs):  # y_{t-1} = pointer_t[y_t]; held past each sequence's end
        pointer, v = inputs
        y = jnp.where(v, pointer[y, cols].astype(jnp.int32), y)
        return y, y

    _, ys = lax.scan(backtrack, last_tag, (pointers, valid[1:]), reverse=True)
    return jnp.concatenate([ys, last_tag[None]]).T, score
