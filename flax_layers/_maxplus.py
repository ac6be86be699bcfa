"""Viterbi specialised for small tag sets: the max-plus product unrolled over the tags.

Package-internal. Equal to the max semiring's :func:`flax_layers._scan.sequential_scan`
with back-pointers (ties to the lower tag index), and faster on CPU: the chain runs in
``[T, K, N]`` layout, batch in the vector lanes, and for up to ``UNROLL_MAX_TAGS`` tags
the product ``max_i δ(i) + g(i, j)`` with its argmax is ``K`` fused compare-and-selects
instead of a broadcast ``[K, K, N]`` reduction.

Reference: Viterbi, "Error bounds for convolutional codes" (IEEE Trans. IT 1967).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# Up to this many tags the unrolled loop is used; above it the generic max semiring.
UNROLL_MAX_TAGS = 48


def viterbi(x, g, start, end, lengths) -> tuple[jax.Array, jax.Array]:
    """Best path of ``x`` ``[N, T, K]`` (compact, zero past lengths).

    Returns tags ``[N, T]`` (anything past each length) and scores ``[N]`` (0 for rows of
    length 0).
    """
    xt = jnp.transpose(x, (1, 2, 0))
    num_steps, num_tags, batch = xt.shape
    valid = jnp.arange(num_steps)[:, None] < lengths

    def max_plus(delta):  # [K, N] -> (max_i delta[i] + g[i, j], first argmax i)
        best = delta[0][None, :] + g[0][:, None]
        arg = jnp.zeros(best.shape, jnp.int32)
        for i in range(1, num_tags):  # one fused loop, batch in the vector lanes
            cand = delta[i][None, :] + g[i][:, None]
            better = cand > best
            best = jnp.where(better, cand, best)
            arg = jnp.where(better, i, arg)
        return best, arg

    def forward(delta, inputs):
        f, v = inputs
        best, arg = max_plus(delta)
        return jnp.where(v, best + f, delta), arg

    delta_last, pointers = lax.scan(forward, xt[0] + start[:, None], (xt[1:], valid[1:]))
    final = delta_last + end[:, None]
    last_tag = jnp.argmax(final, axis=0).astype(jnp.int32)
    score = jnp.where(lengths > 0, jnp.max(final, axis=0), 0)
    cols = jnp.arange(batch)

    def backtrack(y, inputs):  # y_{t-1} = pointer_t[y_t]; held past each sequence's end
        pointer, v = inputs
        y = jnp.where(v, pointer[y, cols], y)
        return y, y

    _, ys = lax.scan(backtrack, last_tag, (pointers, valid[1:]), reverse=True)
    return jnp.concatenate([ys, last_tag[None]]).T, score
