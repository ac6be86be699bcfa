"""Every linear-chain CRF operation, jitted, on a validated :class:`ChainInputs` record.

Package-internal: :mod:`flax_layers.crf` (the functional API) and
:class:`flax_layers.LinearChainCRF` (the distribution) are thin layers over these. Each
operation compacts the chain (:func:`flax_layers._chain.compact`), runs one of the
dynamic programs and scatters per-position results back. ``holes``, ``algorithm`` and
``checkpoint`` are static; the rest are arrays, so eager calls compile once per shape.

Algorithms for the log-partition function: ``"rescaled"`` (probability-space forward-
backward with a ``custom_vjp``; fastest on CPU), ``"sequential"`` (the log-semiring scan
differentiated by autodiff; with ``checkpoint=True`` rematerialised in ``√T`` blocks),
``"parallel"`` (a tree of rescaled matrix products, ``O(log T)`` depth). All fall back to,
or are, exact log-space computations.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from flax_layers import _maxplus, _rescaled
from flax_layers._chain import ChainInputs, Compact, compact, compact_tags, expand, poison
from flax_layers._scan import backtrack, log_space_marginals, sequential_scan
from flax_layers._semiring import KBest, Log, Max


def _batch_shape(inputs: ChainInputs) -> tuple[int, ...]:
    return inputs.mask.shape[:-1]


def _log_z(c: Compact, algorithm: str, checkpoint: bool) -> jax.Array:
    args = (c.x, c.g, c.start, c.end, c.lengths)
    if algorithm == "rescaled":
        return _rescaled.log_partition(*args)
    if algorithm == "parallel":
        return _rescaled.log_partition_parallel(*args)
    return sequential_scan(Log(), *args, checkpoint=checkpoint).total[:, 0]


def _path_score(c: Compact, tags: jax.Array) -> jax.Array:
    """Scores ``[N]`` of compact tag paths ``[N, T]``.

    The emission term is a sum over a one-hot selection rather than a gather: its
    gradient is then an elementwise select that fuses with the rest of the emission
    gradient, where a gather's is a scatter into a fresh zero array.
    """
    num_tags = c.x.shape[-1]
    valid = jnp.arange(c.x.shape[1]) < c.lengths[:, None]
    tags = jnp.clip(jnp.where(valid, tags, 0), 0, num_tags - 1)
    gold = (jnp.arange(num_tags) == tags[..., None]) & valid[..., None]
    score = jnp.sum(jnp.where(gold, c.x, 0), axis=(1, 2))
    score += jnp.sum(jnp.where(valid[:, 1:], c.g[tags[:, :-1], tags[:, 1:]], 0), axis=1)
    last = jnp.take_along_axis(tags, jnp.maximum(c.lengths - 1, 0)[:, None], axis=1)[:, 0]
    return score + jnp.where(c.lengths > 0, c.start[tags[:, 0]] + c.end[last], 0)


_STATIC = ("holes", "algorithm", "checkpoint")


@functools.partial(jax.jit, static_argnames=_STATIC)
def log_partition(inputs, *, holes, algorithm="rescaled", checkpoint=False):
    c = compact(inputs, holes)
    return poison(_log_z(c, algorithm, checkpoint), c.nan_rows).reshape(_batch_shape(inputs))


@functools.partial(jax.jit, static_argnames="holes")
def sequence_score(inputs, tags, *, holes):
    c = compact(inputs, holes)
    score = _path_score(c, compact_tags(c, tags))
    return poison(score, c.nan_rows).reshape(_batch_shape(inputs))


@functools.partial(jax.jit, static_argnames=_STATIC)
def log_prob(inputs, tags, *, holes, algorithm="rescaled", checkpoint=False):
    c = compact(inputs, holes)
    score = _path_score(c, compact_tags(c, tags))
    log_z = _log_z(c, algorithm, checkpoint)
    feasible = log_z > -jnp.inf
    ll = jnp.where(feasible, score - jnp.where(feasible, log_z, 0), -jnp.inf)
    return poison(ll, c.nan_rows).reshape(_batch_shape(inputs))


def _compact_marginals(c: Compact, algorithm: str, checkpoint: bool, pairs: str):
    args = (c.x, c.g, c.start, c.end, c.lengths)
    if algorithm == "rescaled" and not checkpoint:
        return _rescaled.marginals(*args, pairs=pairs)
    if pairs != "none":
        return log_space_marginals(*args, pairs=pairs, checkpoint=checkpoint)

    def total(x):
        log_z = _log_z(c._replace(x=x), algorithm, checkpoint)
        return jnp.sum(jnp.where(log_z == -jnp.inf, 0, log_z)), log_z

    (_, log_z), unary = jax.value_and_grad(total, has_aux=True)(c.x)
    return log_z, unary, None


@functools.partial(jax.jit, static_argnames=_STATIC)
def marginals(inputs, *, holes, algorithm="rescaled", checkpoint=False):
    c = compact(inputs, holes)
    _, unary, _ = _compact_marginals(c, algorithm, checkpoint, "none")
    return poison(expand(c, unary, 0), c.nan_rows).reshape(inputs.emissions.shape)


@functools.partial(jax.jit, static_argnames="holes")
def transition_marginals(inputs, *, holes):
    c = compact(inputs, holes)
    _, _, pairs = _compact_marginals(c, "rescaled", False, "steps")
    num_tags = c.x.shape[-1]
    out = poison(expand(c, pairs, 0), c.nan_rows)
    return out.reshape(*inputs.emissions.shape, num_tags)


def _compact_argmax(c: Compact, unrolled: bool, unmasked=None):
    """Viterbi on the compact chain. ``unmasked``: the same emissions without the zeros
    past each length (a right-padded batch), which the unrolled loop may read instead
    (it never reads past a length), saving the masked copy."""
    args = (c.x, c.g, c.start, c.end, c.lengths)
    if unrolled and c.x.shape[-1] <= _maxplus.UNROLL_MAX_TAGS:
        x = c.x if unmasked is None else unmasked
        tags, score = _maxplus.viterbi(x, *args[1:])
    else:
        res = sequential_scan(Max(), *args, keep_pointers=True)
        tags, score = backtrack(res.pointers, res.final_arg, c.lengths)[:, 0], res.total[:, 0]
    return jnp.where((score > -jnp.inf)[:, None], tags, -1), score


@functools.partial(jax.jit, static_argnames=("holes", "unrolled"))
def argmax(inputs, *, holes, unrolled=True):
    c = compact(inputs, holes)
    unmasked = None if holes else inputs.emissions.astype(c.x.dtype).reshape(c.x.shape)
    tags, score = _compact_argmax(c, unrolled, unmasked)
    batch_shape = _batch_shape(inputs)
    tags = expand(c, tags, -1).reshape(inputs.mask.shape)
    return tags, poison(score, c.nan_rows).reshape(batch_shape)


@functools.partial(jax.jit, static_argnames=("holes", "k"))
def top_k(inputs, *, holes, k):
    c = compact(inputs, holes)
    res = sequential_scan(KBest(k), c.x, c.g, c.start, c.end, c.lengths, keep_pointers=True)
    scores = res.total
    tags = jnp.swapaxes(backtrack(res.pointers, res.final_arg, c.lengths), 1, 2)  # [N, T, k]
    tags = expand(c, jnp.where((scores > -jnp.inf)[:, None, :], tags, -1), -1)
    batch_shape = _batch_shape(inputs)
    tags = jnp.swapaxes(tags, 1, 2).reshape(*batch_shape, k, c.x.shape[1])
    return tags, poison(scores, c.nan_rows).reshape(*batch_shape, k)


@functools.partial(jax.jit, static_argnames=("holes", "sample_shape"))
def sample(inputs, key, *, holes, sample_shape):
    """Forward filtering, backward sampling; one uniform per draw (inverse CDF)."""
    c = compact(inputs, holes)
    log_z, la, lg, le = _rescaled.forward_log_weights(c.x, c.g, c.start, c.end, c.lengths)
    num_samples = math.prod(sample_shape)
    num_steps = c.x.shape[1]
    lengths = c.lengths
    uniforms = jax.random.uniform(key, (num_steps, num_samples, c.x.shape[0]), la.dtype)
    upper = jnp.triu(jnp.ones((c.x.shape[-1],) * 2, la.dtype))

    def step(y_next, inputs):  # draws y_t given y_{t+1} (or the end scores at t = L - 1)
        la_t, t, u = inputs
        last = (t == lengths - 1)[:, None]
        logits = la_t + jnp.where(last, le, jnp.take(lg.T, y_next, axis=0))  # [S, N, K]
        peak = jnp.max(logits, axis=-1, keepdims=True)
        weights = jnp.exp(logits - jnp.where(peak > -jnp.inf, peak, 0))
        cdf = jnp.matmul(weights, upper, precision=lax.Precision.HIGHEST)  # cumulative sums
        # The first tag whose CDF exceeds u·total: a tag of weight 0 (score -inf) adds no
        # width to the CDF and can never be drawn.
        y = jnp.sum(cdf <= (u * cdf[..., -1])[..., None], axis=-1, dtype=jnp.int32)
        y = jnp.minimum(y, c.x.shape[-1] - 1)
        valid = t < lengths
        return jnp.where(valid, y, y_next), jnp.where(valid, y, -1)

    init = jnp.zeros((num_samples, c.x.shape[0]), jnp.int32)
    _, ys = lax.scan(step, init, (la, jnp.arange(num_steps), uniforms), reverse=True)
    ys = jnp.where((log_z > -jnp.inf)[None, None, :], ys, -1)  # [T, S, N]
    tags = expand(c, jnp.transpose(ys, (2, 0, 1)), -1)  # [N, T, S]
    tags = jnp.transpose(tags, (2, 0, 1))
    return tags.reshape(*sample_shape, *inputs.mask.shape)


def _expected_score(unary, counts, q: Compact) -> jax.Array:
    """``E_p[score_q(y)]`` ``[N]`` from p's marginals; ``0 · (-inf)`` counts as 0, a NaN
    marginal stays NaN."""

    def dot(p, s, axes):
        return jnp.sum(jnp.where(p != 0, p * s, 0), axis=axes)

    last = jnp.take_along_axis(unary, jnp.maximum(q.lengths - 1, 0)[:, None, None], axis=1)
    return (
        dot(unary, q.x, (1, 2))
        + dot(counts, q.g, (1, 2))
        + dot(unary[:, 0], q.start, 1)
        + dot(last[:, 0], q.end, 1)
    )


@functools.partial(jax.jit, static_argnames="holes")
def entropy(inputs, *, holes):
    c = compact(inputs, holes)
    log_z, unary, counts = _compact_marginals(c, "rescaled", False, "counts")
    out = log_z - _expected_score(unary, counts, c)
    return poison(out, c.nan_rows).reshape(_batch_shape(inputs))


@functools.partial(jax.jit, static_argnames=("holes", "kl"))
def cross_entropy(p_inputs, q_inputs, *, holes, kl):
    """``H(p, q) = log Z_q - E_p[score_q]``; with ``kl``, ``KL(p‖q) = H(p, q) - H(p)``."""
    p = compact(p_inputs, holes)
    q = compact(q_inputs, holes)
    log_zp, unary, counts = _compact_marginals(p, "rescaled", False, "counts")
    out = _log_z(q, "rescaled", False) - _expected_score(unary, counts, q)
    if kl:
        out = out - (log_zp - _expected_score(unary, counts, p))
    return poison(out, p.nan_rows | q.nan_rows).reshape(_batch_shape(p_inputs))


@functools.partial(jax.jit, static_argnames="holes")
def mbr_decode(inputs, *, holes):
    """Viterbi under the log unary marginals; forbidden moves stay forbidden."""
    c = compact(inputs, holes)
    _, unary, _ = _compact_marginals(c, "rescaled", False, "none")
    valid = jnp.arange(c.x.shape[1]) < c.lengths[:, None]
    log_mu = jnp.where(unary > 0, jnp.log(jnp.where(unary > 0, unary, 1)), -jnp.inf)
    log_mu = jnp.where(valid[..., None], log_mu, 0)

    def allowed(s):
        return jnp.where(s > -jnp.inf, 0, -jnp.inf).astype(s.dtype)

    decoded = c._replace(x=log_mu, g=allowed(c.g), start=allowed(c.start), end=allowed(c.end))
    tags, score = _compact_argmax(decoded, unrolled=True)
    tags = expand(c, tags, -1).reshape(inputs.mask.shape)
    return tags, poison(score, c.nan_rows).reshape(_batch_shape(inputs))
