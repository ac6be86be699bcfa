"""Linear-chain conditional random field: likelihood, partition, marginals, Viterbi, n-best.

A path ``y = (y_1, ..., y_L)`` through ``K`` tags scores

    score(y) = start(y_1) + Σ_t f_t(y_t) + Σ_{t>1} g(y_{t-1}, y_t) + end(y_L)

with emissions ``f`` ``[..., T, K]``, transitions ``g`` ``[K, K]`` (``g[i, j]`` scores
``i -> j``) and optional start/end scores ``[K]``. ``log P(y|x) = score(y) - log Z`` where
``log Z = logsumexp_y score(y)`` comes from the forward recursion
``α_{t+1}(j) = logsumexp_i(α_t(i) + g(i, j)) + f_{t+1}(j)``.

Three algorithms compute ``log Z`` (all give the same values and gradients):

* ``"rescaled"`` (default, fastest on CPU): the forward recursion as matrix products in
  probability space, ``α_t = (α_{t-1} E) ⊙ ψ_t`` with ``E = exp(g - rowmax g)`` computed
  once and ``ψ_t = exp(h_t - max h_t)`` for all steps in one vectorised call
  (``h_t`` = emissions with the row maxima of ``g``, the start and the end scores folded
  in), renormalised every step and the log-normaliser accumulated. The backward
  recursion ``β`` runs in the same loop, so the gradient (a ``custom_vjp``: tag marginals
  for the emissions, expected transition counts for ``g``) costs no second scan. The
  local identity ``Σ α_t β_t = c_{t+1} Σ α_{t+1} β_{t+1} / d_{t+1}`` (``c``, ``d`` the
  step normalisers) certifies that no probability mass was lost to under/overflow; if it
  fails anywhere in the batch (extreme scores, e.g. logit margins of ~90 nats against
  disallowed transitions) the whole batch is recomputed exactly in log space (value and a
  hand-written log-space forward-backward gradient) through :func:`jax.lax.cond`. Under
  ``vmap`` that ``cond`` runs both branches; batch dimensions ``[...]`` are supported
  directly, so ``vmap`` is not needed.
* ``"sequential"``: the log-space scan above, differentiated by autodiff.
* ``"parallel"``: exact log-semiring matrix products combined by
  :func:`jax.lax.associative_scan`: ``O(log T)`` depth but ``O(T K³)`` exponentials, so on
  CPU it is far slower than the others; it is meant for accelerators and long sequences.

Masks are right-padded: sequence ``b`` occupies positions ``0 .. len_b - 1``. Pass either a
boolean/0-1 ``mask`` ``[..., T]`` or integer ``lengths`` ``[...]``. A concrete mask that is
not right-padded raises ``ValueError``; a *traced* mask cannot be checked and is read as
``lengths = mask.sum(-1)``. Fully padded rows (length 0) have ``log Z = 0``, log-likelihood
0, marginals 0, Viterbi tags -1 and score 0, and never produce NaN. Disallowed transitions
are ``-inf`` scores (see :mod:`flax_layers.tag_schemes`); they give zero gradients.

Computation is in float32 (or float64 with x64) whatever the emission dtype (bf16/fp16
emissions are upcast; their gradient comes back in their own dtype).

References: Lafferty, McCallum, Pereira, "Conditional Random Fields: Probabilistic Models
for Segmenting and Labeling Sequence Data" (ICML 2001); Rabiner, "A Tutorial on Hidden
Markov Models" (Proc. IEEE 1989; scaled forward-backward); Särkkä & García-Fernández,
"Temporal Parallelization of Bayesian Smoothers" (2021; associative scans); Su Jianlin,
"简明条件随机场CRF介绍" (2018), https://kexue.fm/archives/5542.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "crf_log_likelihood",
    "crf_log_partition",
    "crf_marginals",
    "crf_sequence_score",
    "viterbi_decode",
    "viterbi_nbest",
]

Algorithm = Literal["rescaled", "sequential", "parallel"]
_ALGORITHMS = ("rescaled", "sequential", "parallel")
# Up to this many tags the Viterbi max-plus product (with its argmax) is unrolled into K
# fused comparisons, batch in the vector lanes; above it a broadcast-and-reduce keeps the
# graph small.
_UNROLL_MAX_TAGS = 48


# --------------------------------------------------------------------------- validation


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_emissions(fn: str, emissions) -> jax.Array:
    emissions = jnp.asarray(emissions)
    if emissions.ndim < 2 or emissions.shape[-1] < 1 or emissions.shape[-2] < 1:
        raise ValueError(
            f"{fn}: emissions must have shape [..., T, K] with T, K >= 1, got {emissions.shape}."
        )
    if not jnp.issubdtype(emissions.dtype, jnp.floating):
        raise TypeError(f"{fn}: emissions must be a floating array, got dtype {emissions.dtype}.")
    return emissions


def _check_square(fn: str, transitions, num_tags: int) -> jax.Array:
    transitions = jnp.asarray(transitions)
    if transitions.shape != (num_tags, num_tags):
        raise ValueError(
            f"{fn}: transitions must have shape [K, K] = ({num_tags}, {num_tags}), "
            f"got {transitions.shape}."
        )
    if not jnp.issubdtype(transitions.dtype, jnp.floating):
        raise TypeError(f"{fn}: transitions must be floating, got dtype {transitions.dtype}.")
    return transitions


def _check_vector(fn: str, name: str, v, num_tags: int, dtype) -> jax.Array:
    if v is None:
        return jnp.zeros((num_tags,), dtype)
    v = jnp.asarray(v)
    if v.shape != (num_tags,):
        raise ValueError(f"{fn}: {name} must have shape [K] = ({num_tags},), got {v.shape}.")
    if not jnp.issubdtype(v.dtype, jnp.floating):
        raise TypeError(f"{fn}: {name} must be floating, got dtype {v.dtype}.")
    return v.astype(dtype)


def _sequence_lengths(
    fn: str, mask, lengths, batch_shape: tuple[int, ...], num_steps: int
) -> jax.Array:
    """Per-sequence lengths ``[...]`` (int32) from a right-padded mask or from lengths."""
    if mask is not None and lengths is not None:
        raise ValueError(f"{fn}: pass either mask or lengths, not both.")
    if mask is None and lengths is None:
        return jnp.full(batch_shape, num_steps, jnp.int32)
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != (*batch_shape, num_steps):
            raise ValueError(
                f"{fn}: mask must have shape [..., T] = {(*batch_shape, num_steps)}, "
                f"got {mask.shape}."
            )
        if not (mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype, jnp.integer)):
            raise TypeError(f"{fn}: mask must be boolean or 0/1 integers, got {mask.dtype}.")
        if _is_concrete(mask):
            m = np.asarray(mask)
            if not np.isin(m, (0, 1)).all():
                raise ValueError(f"{fn}: mask must contain only 0/1 (or booleans).")
            bad = np.argwhere(m[..., 1:].astype(bool) & ~m[..., :-1].astype(bool))
            if bad.size:
                raise ValueError(
                    f"{fn}: mask must be right-padded (ones then zeros in each row); row "
                    f"{tuple(int(i) for i in bad[0][:-1])} has a valid position after a "
                    f"padded one at t={int(bad[0][-1]) + 1}."
                )
        return jnp.sum(mask.astype(bool), axis=-1, dtype=jnp.int32)
    lengths = jnp.asarray(lengths)
    if lengths.shape != batch_shape:
        raise ValueError(
            f"{fn}: lengths must have the batch shape {batch_shape}, got {lengths.shape}."
        )
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"{fn}: lengths must be integers, got dtype {lengths.dtype}.")
    if _is_concrete(lengths):
        l_np = np.asarray(lengths)
        if ((l_np < 0) | (l_np > num_steps)).any():
            raise ValueError(f"{fn}: lengths must lie in [0, T={num_steps}], got {l_np}.")
    return lengths.astype(jnp.int32)


def _check_tags(fn: str, tags, emissions_shape: tuple[int, ...], lengths: jax.Array) -> jax.Array:
    tags = jnp.asarray(tags)
    if tags.shape != emissions_shape[:-1]:
        raise ValueError(
            f"{fn}: tags must have shape [..., T] = {emissions_shape[:-1]}, got {tags.shape}."
        )
    if not jnp.issubdtype(tags.dtype, jnp.integer):
        raise TypeError(f"{fn}: tags must be integers, got dtype {tags.dtype}.")
    num_tags = emissions_shape[-1]
    if _is_concrete(tags) and _is_concrete(lengths):
        valid = np.arange(tags.shape[-1]) < np.asarray(lengths)[..., None]
        t_np = np.asarray(tags)
        if ((t_np < 0) | (t_np >= num_tags))[valid].any():
            raise ValueError(f"{fn}: tags at valid positions must lie in [0, K={num_tags}).")
    return tags.astype(jnp.int32)


def _compute_dtype(*arrays) -> jnp.dtype:
    """float32, or wider if an input is wider (float64 under x64)."""
    return jnp.result_type(jnp.float32, *(a.dtype for a in arrays))


def _prepare(fn: str, emissions, transitions, mask, lengths, start, end):
    """Validates inputs; returns emissions ``[N, T, K]`` in compute dtype and the rest."""
    emissions = _check_emissions(fn, emissions)
    *batch_shape, num_steps, num_tags = emissions.shape
    batch_shape = tuple(batch_shape)
    transitions = _check_square(fn, transitions, num_tags)
    dtype = _compute_dtype(emissions, transitions)
    start = _check_vector(fn, "start", start, num_tags, dtype)
    end = _check_vector(fn, "end", end, num_tags, dtype)
    lengths = _sequence_lengths(fn, mask, lengths, batch_shape, num_steps)
    x = emissions.astype(dtype).reshape(-1, num_steps, num_tags)
    return x, transitions.astype(dtype), start, end, lengths, batch_shape


def _time_major(x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``[N, T, K]`` -> ``[T, K, N]`` (batch in the vector lanes), zeroed past each length."""
    x = jnp.transpose(x, (1, 2, 0))
    valid = jnp.arange(x.shape[0])[:, None] < lengths.reshape(-1)
    return jnp.where(valid[:, None, :], x, 0), valid


def _check_algorithm(fn: str, algorithm: str) -> None:
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"{fn}: algorithm must be one of {_ALGORITHMS}, got {algorithm!r}.")


# ------------------------------------------------------------------- log-space helpers


def _logsumexp(x: jax.Array, axis: int) -> jax.Array:
    """logsumexp that returns -inf (with zero, not NaN, gradients) for all -inf slices."""
    m = lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0)
    s = jnp.sum(jnp.exp(x - m), axis=axis)
    pos = s > 0
    return jnp.where(pos, jnp.log(jnp.where(pos, s, 1)) + jnp.squeeze(m, axis), -jnp.inf)


def _log_partition_sequential(x, g, start, end, lengths):
    """Log-space forward scan. ``x`` ``[T, K, N]`` (zero past lengths) -> ``[N]``."""
    valid = jnp.arange(x.shape[0])[:, None] < lengths

    def step(alpha, inputs):
        f, v = inputs
        new = _logsumexp(alpha[:, None, :] + g[:, :, None], axis=0) + f
        return jnp.where(v, new, alpha), None

    alpha, _ = lax.scan(step, x[0] + start[:, None], (x[1:], valid[1:]))
    log_z = _logsumexp(alpha + end[:, None], axis=0)
    return jnp.where(lengths > 0, log_z, 0)


def _log_partition_parallel(x, g, start, end, lengths):
    """Associative scan over log-semiring transfer matrices ``[T-1, N, K, K]``."""
    num_steps, num_tags, _ = x.shape
    valid = jnp.arange(num_steps)[:, None] < lengths
    eye = jnp.where(jnp.eye(num_tags, dtype=bool), 0, -jnp.inf).astype(x.dtype)
    alpha = jnp.transpose(x[0] + start[:, None])  # [N, K]
    if num_steps > 1:
        mats = g + jnp.transpose(x[1:], (0, 2, 1))[:, :, None, :]  # M_t[n, i, j]
        mats = jnp.where(valid[1:, :, None, None], mats, eye)

        def combine(p, q):  # log-semiring matrix product p ⊗ q
            return _logsumexp(p[..., :, :, None] + q[..., None, :, :], axis=-2)

        prod = lax.associative_scan(combine, mats)[-1]  # [N, K, K]
        alpha = _logsumexp(alpha[:, :, None] + prod, axis=1)
    log_z = _logsumexp(alpha + end, axis=-1)
    return jnp.where(lengths > 0, log_z, 0)


def _log_space_gradients(x, g, start, end, lengths, ct):
    """Exact gradients of ``Σ_n ct_n log Z_n`` by a log-space forward-backward pass.

    The fallback of the rescaled algorithm. Unlike autodiff of the log-space scan it keeps
    no ``[T, K, K, N]`` residual: the expected transition counts are accumulated inside the
    backward loop. (A large residual in an untaken ``lax.cond`` branch still slows XLA:CPU.)
    """
    num_steps = x.shape[0]
    t = jnp.arange(num_steps)[:, None]
    valid = t < lengths

    def forward(alpha, inputs):
        f, v = inputs
        alpha = jnp.where(v, _logsumexp(alpha[:, None, :] + g[:, :, None], axis=0) + f, alpha)
        return alpha, alpha

    alpha0 = x[0] + start[:, None]
    alpha_last, alphas = lax.scan(forward, alpha0, (x[1:], valid[1:]))
    alphas = jnp.concatenate([alpha0[None], alphas])
    log_z = _logsumexp(alpha_last + end[:, None], axis=0)
    finite = jnp.isfinite(log_z) & (lengths > 0)
    log_z = jnp.where(finite, log_z, 0)
    weight = jnp.where(finite, ct, 0)

    def backward(carry, inputs):  # beta_{t-1} from beta_t; counts for the pair (t-1, t)
        beta, counts = carry
        alpha_prev, f, v = inputs
        score = g[:, :, None] + (f + beta)[None]  # [K_prev, K, N]
        pair = jnp.exp(alpha_prev[:, None, :] + score - log_z)
        counts += jnp.sum(jnp.where(v, pair * weight, 0), axis=2)
        beta = jnp.where(v, _logsumexp(score, axis=1), end[:, None])
        return (beta, counts), beta

    beta_last = jnp.broadcast_to(end[:, None], alpha0.shape)
    (_, d_g), betas = lax.scan(
        backward,
        (beta_last, jnp.zeros_like(g)),
        (alphas[:-1], x[1:], valid[1:]),
        reverse=True,
    )
    betas = jnp.concatenate([betas, beta_last[None]])
    p = jnp.exp(alphas + betas - log_z)
    p = jnp.where(valid[:, None, :], p, 0) * weight
    last = t == lengths - 1
    d_end = jnp.sum(jnp.where(last[:, None, :], p, 0), axis=(0, 2))
    return p, d_g, jnp.sum(p[0], axis=1), d_end


# ------------------------------------------------------------ rescaled forward-backward


def _rescale(x, g, start, end, lengths):
    """Folds start/end/row maxima into the emissions and exponentiates everything once.

    Returns ``ψ`` ``[T, K, N]`` with ``max_k ψ_t = 1``, its log-offsets ``m`` ``[T, N]``,
    ``E = exp(g - r)`` with row maxima ``r`` (rows of ``E`` peak at 1; ``-inf -> 0``) and the
    valid-position mask. ``exp(g(i, j)) = exp(r_i) E(i, j)``: the ``exp(r_i)`` goes into
    ``ψ_t(i)`` for every position that has a successor, ``exp(end(i))`` into the last one.
    """
    num_steps = x.shape[0]
    t = jnp.arange(num_steps)[:, None]
    valid = t < lengths
    last = t == lengths - 1
    r = jnp.max(g, axis=1)
    r = jnp.where(r > -jnp.inf, r, 0)
    e_mat = jnp.exp(g - r[:, None])
    h = x + jnp.where(last[:, None, :], end[None, :, None], r[None, :, None])
    h = h.at[0].add(start[:, None])
    h = jnp.where(valid[:, None, :], h, 0)
    m = jnp.max(h, axis=1)
    m = jnp.where(m > -jnp.inf, m, 0)
    psi = jnp.exp(h - m[:, None, :])
    return psi, m, e_mat, valid


def _forward_backward_scan(psi, e_mat, valid):
    """One loop for both recursions (forward from t=0, backward from t=T-1).

    ``a_t = (Eᵀ a_{t-1}) ⊙ ψ_t / c_t`` and ``b_t = E (ψ_{t+1} ⊙ b_{t+1}) / d_{t+1}`` (ones
    from each sequence's last position on), each normalised to sum 1 (``c``, ``d``). The
    two matrix products of a step are one batched product.
    """
    c0 = jnp.sum(psi[0], axis=0)
    a0 = psi[0] / c0
    ones = jnp.ones_like(psi[0])
    mats = jnp.stack([e_mat.T, e_mat])

    def step(carry, inputs):
        a, q = carry  # q = ψ_{t+1} ⊙ b_{t+1} for the backward half
        psi_next, psi_prev, v_next = inputs
        y = mats @ jnp.stack([a, q])
        u = y[0] * psi_next
        c = jnp.sum(u, axis=0)
        a = u / c
        d = jnp.where(v_next, jnp.sum(y[1], axis=0), 1)
        b = jnp.where(v_next, y[1] / d, 1)
        return (a, psi_prev * b), (a, c, b, d)

    _, (a_s, c_s, b_s, d_s) = lax.scan(step, (a0, psi[-1]), (psi[1:], psi[:-1][::-1], valid[:0:-1]))
    a = jnp.concatenate([a0[None], a_s])
    c = jnp.concatenate([c0[None], c_s])
    b = jnp.concatenate([b_s[::-1], ones[None]])
    d = jnp.concatenate([jnp.ones_like(c0)[None], d_s[::-1]])
    return a, c, b, d


@jax.custom_vjp
def _log_partition_rescaled(x, g, start, end, lengths):
    return _rescaled_fwd(x, g, start, end, lengths)[0]


def _rescaled_fwd(x, g, start, end, lengths):
    psi, m, e_mat, valid = _rescale(x, g, start, end, lengths)
    a, c, b, d = _forward_backward_scan(psi, e_mat, valid)
    s = jnp.sum(a * b, axis=1)  # Σ_k a_t b_t, the same for all t in exact arithmetic
    ratio = s[:-1] * d[1:] / (c[1:] * s[1:])
    tol = math.sqrt(float(jnp.finfo(x.dtype).eps))
    ok = jnp.all(jnp.where(valid[1:], jnp.abs(ratio - 1) <= tol, True)) & jnp.all(
        jnp.where(valid, (c > 0) & jnp.isfinite(s), True)
    )
    # The fast results are computed outside lax.cond (work inside a branch runs slower on
    # XLA:CPU); the branch only passes them through or runs the exact fallback.
    fast_log_z = jnp.sum(jnp.where(valid, m + jnp.log(c), 0), axis=0)
    log_z = lax.cond(
        ok, lambda: fast_log_z, lambda: _log_partition_sequential(x, g, start, end, lengths)
    )
    return log_z, (x, g, start, end, lengths, psi, e_mat, valid, a, c, b, s, ok)


def _rescaled_bwd(res, ct):
    x, g, start, end, lengths, psi, e_mat, valid, a, c, b, s, ok = res
    # Tag marginals P(y_t = k) = a_t b_t / s_t; pair marginals a_{t-1} E ψ_t b_t / (c_t s_t).
    p = jnp.where(valid[:, None, :], a * b / s[:, None, :], 0) * ct
    w = psi[1:] * b[1:] / (c[1:] * s[1:])[:, None, :]
    w = jnp.where(valid[1:, None, :], w, 0) * ct
    d_g = e_mat * jnp.sum(jnp.einsum("tin,tjn->tij", a[:-1], w), axis=0)  # batched: fast
    last = jnp.arange(x.shape[0])[:, None] == lengths - 1
    d_end = jnp.sum(jnp.where(last[:, None, :], p, 0), axis=(0, 2))
    fast = (p, d_g, jnp.sum(p[0], axis=1), d_end)
    exact = lambda: _log_space_gradients(x, g, start, end, lengths, ct)
    return (*lax.cond(ok, lambda: fast, exact), None)


_log_partition_rescaled.defvjp(_rescaled_fwd, _rescaled_bwd)

_PARTITION = {
    "rescaled": _log_partition_rescaled,
    "sequential": _log_partition_sequential,
    "parallel": _log_partition_parallel,
}

# The public functions validate (concretely, when they can) and then call these jitted
# cores, so that eager calls compile once per shape instead of re-tracing every scan.


@functools.partial(jax.jit, static_argnames="algorithm")
def _log_partition_core(x, g, start, end, lengths, algorithm):
    """``x`` ``[N, T, K]``, ``lengths`` ``[N]`` -> ``log Z`` ``[N]``."""
    xt, _ = _time_major(x, lengths)
    return _PARTITION[algorithm](xt, g, start, end, lengths)


@functools.partial(jax.jit, static_argnames="algorithm")
def _log_likelihood_core(x, tags, g, start, end, lengths, algorithm):
    score = _sequence_score(x, tags, g, start, end, lengths)
    return score - _log_partition_core(x, g, start, end, lengths, algorithm)


@functools.partial(jax.jit, static_argnames="algorithm")
def _marginals_core(x, g, start, end, lengths, algorithm):
    total = lambda x: jnp.sum(_log_partition_core(x, g, start, end, lengths, algorithm))
    return jax.grad(total)(x)


# ------------------------------------------------------------------------- public API


def crf_log_partition(
    emissions: jax.Array,
    transitions: jax.Array,
    mask: jax.Array | None = None,
    start: jax.Array | None = None,
    end: jax.Array | None = None,
    *,
    lengths: jax.Array | None = None,
    algorithm: Algorithm = "rescaled",
) -> jax.Array:
    """Log partition function ``log Z = logsumexp_y score(y)`` of a linear-chain CRF.

    Math: ``α_1 = start + f_1``, ``α_{t+1}(j) = logsumexp_i(α_t(i) + g(i, j)) + f_{t+1}(j)``,
    ``log Z = logsumexp_j(α_L(j) + end(j))``; its gradient with respect to the emissions
    is the tag marginals, with respect to ``g`` the expected transition counts.

    Args:
      emissions: ``[..., T, K]`` scores ``f_t(k)`` (any float dtype; computed in float32).
      transitions: ``[K, K]`` scores ``g(i, j)`` of ``i -> j``; ``-inf`` disallows.
      mask: optional right-padded ``[..., T]`` boolean/0-1 mask.
      start: optional ``[K]`` scores of the first tag.
      end: optional ``[K]`` scores of the last tag.
      lengths: optional ``[...]`` integer lengths (instead of ``mask``).
      algorithm: ``"rescaled"`` (default), ``"sequential"`` or ``"parallel"`` (see module
        docstring); all agree to rounding.

    Returns:
      ``[...]`` log partition per sequence (0 for fully padded rows).

    Reference: Lafferty et al. (2001); Rabiner (1989) for the scaled recursion.

    Example:
      >>> import jax.numpy as jnp
      >>> emissions = jnp.zeros((2, 3, 4))  # 3 steps, 4 tags, all scores 0
      >>> crf_log_partition(emissions, jnp.zeros((4, 4)), lengths=jnp.array([3, 1])).round(4)
      Array([4.1589, 1.3863], dtype=float32)
    """
    fn = "crf_log_partition"
    _check_algorithm(fn, algorithm)
    x, g, start, end, lengths, batch_shape = _prepare(
        fn, emissions, transitions, mask, lengths, start, end
    )
    log_z = _log_partition_core(x, g, start, end, lengths.reshape(-1), algorithm)
    return log_z.reshape(batch_shape)


@jax.jit
def _sequence_score(x, tags, g, start, end, lengths):
    """Path scores for ``x`` ``[N, T, K]``, ``tags`` ``[N, T]`` (gathers, no one-hot sums)."""
    num_tags = x.shape[-1]
    t = jnp.arange(x.shape[1])
    valid = t < lengths[:, None]
    tags = jnp.clip(jnp.where(valid, tags, 0), 0, num_tags - 1)
    emit = jnp.take_along_axis(x, tags[..., None], axis=-1)[..., 0]
    score = jnp.sum(jnp.where(valid, emit, 0), axis=1)
    trans = g[tags[:, :-1], tags[:, 1:]]
    score += jnp.sum(jnp.where(valid[:, 1:], trans, 0), axis=1)
    last = jnp.take_along_axis(tags, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
    score += jnp.where(lengths > 0, start[tags[:, 0]] + end[last], 0)
    return score


def crf_sequence_score(
    emissions: jax.Array,
    tags: jax.Array,
    transitions: jax.Array,
    mask: jax.Array | None = None,
    start: jax.Array | None = None,
    end: jax.Array | None = None,
    *,
    lengths: jax.Array | None = None,
) -> jax.Array:
    """Unnormalised score of given tag paths.

    Math: ``score(y) = start(y_1) + Σ_t f_t(y_t) + Σ_{t>1} g(y_{t-1}, y_t) + end(y_L)``.

    Args:
      emissions: ``[..., T, K]`` emission scores.
      tags: ``[..., T]`` integer tags (values at padded positions are ignored).
      transitions: ``[K, K]`` transition scores.
      mask: optional right-padded ``[..., T]`` mask.
      start: optional ``[K]`` start scores.
      end: optional ``[K]`` end scores.
      lengths: optional ``[...]`` lengths (instead of ``mask``).

    Returns:
      ``[...]`` path scores (0 for fully padded rows, ``-inf`` for a disallowed path).

    Reference: Lafferty et al. (2001).

    Example:
      >>> import jax.numpy as jnp
      >>> emissions = jnp.array([[1.0, 0.0], [0.0, 2.0]])
      >>> transitions = jnp.array([[0.0, 0.5], [0.0, 0.0]])
      >>> crf_sequence_score(emissions, jnp.array([0, 1]), transitions)
      Array(3.5, dtype=float32)
    """
    fn = "crf_sequence_score"
    x, g, start, end, lengths, batch_shape = _prepare(
        fn, emissions, transitions, mask, lengths, start, end
    )
    tags = _check_tags(fn, tags, jnp.shape(emissions), lengths)
    flat = lengths.reshape(-1)
    score = _sequence_score(x, tags.reshape(x.shape[:2]), g, start, end, flat)
    return score.reshape(batch_shape)


def crf_log_likelihood(
    emissions: jax.Array,
    tags: jax.Array,
    transitions: jax.Array,
    mask: jax.Array | None = None,
    start: jax.Array | None = None,
    end: jax.Array | None = None,
    *,
    lengths: jax.Array | None = None,
    algorithm: Algorithm = "rescaled",
) -> jax.Array:
    """Per-sequence CRF log-likelihood ``log P(y|x) = score(y) - log Z`` (pytorch-crf's sign).

    The training loss is its negation (pytorch-crf's ``-crf(emissions, tags, mask,
    reduction="none")``). Gradients: ``∂/∂f_t(k) = 1[y_t = k] - P(y_t = k)`` and
    ``∂/∂g(i, j) = #(i -> j in y) - E[#(i -> j)]``.

    Args:
      emissions: ``[..., T, K]`` emission scores (bf16/fp16 are computed in float32).
      tags: ``[..., T]`` gold integer tags in ``[0, K)`` (anything at padded positions).
      transitions: ``[K, K]`` transition scores (``-inf`` = disallowed).
      mask: optional right-padded ``[..., T]`` mask.
      start: optional ``[K]`` start scores.
      end: optional ``[K]`` end scores.
      lengths: optional ``[...]`` lengths (instead of ``mask``).
      algorithm: partition-function algorithm, see :func:`crf_log_partition`.

    Returns:
      ``[...]`` log-likelihoods (0 for fully padded rows).

    Reference: Lafferty et al. (2001); pytorch-crf ``CRF.forward``.

    Example:
      >>> import jax.numpy as jnp
      >>> emissions = jnp.zeros((3, 4))  # uniform: every one of 4**3 paths equally likely
      >>> float(jnp.exp(crf_log_likelihood(emissions, jnp.array([0, 1, 2]), jnp.zeros((4, 4)))))
      0.015625
    """
    fn = "crf_log_likelihood"
    _check_algorithm(fn, algorithm)
    x, g, start, end, lengths, batch_shape = _prepare(
        fn, emissions, transitions, mask, lengths, start, end
    )
    tags = _check_tags(fn, tags, jnp.shape(emissions), lengths)
    ll = _log_likelihood_core(
        x, tags.reshape(x.shape[:2]), g, start, end, lengths.reshape(-1), algorithm
    )
    return ll.reshape(batch_shape)


def crf_marginals(
    emissions: jax.Array,
    transitions: jax.Array,
    mask: jax.Array | None = None,
    start: jax.Array | None = None,
    end: jax.Array | None = None,
    *,
    lengths: jax.Array | None = None,
    algorithm: Algorithm = "rescaled",
) -> jax.Array:
    """Per-position tag marginals ``P(y_t = k | x)`` (forward-backward).

    Math: ``P(y_t = k) = ∂ log Z / ∂ f_t(k) = α_t(k) β_t(k) / Z``; with the default
    algorithm this is the scaled forward-backward pass of the ``custom_vjp``.

    Args:
      emissions: ``[..., T, K]`` emission scores.
      transitions: ``[K, K]`` transition scores.
      mask: optional right-padded ``[..., T]`` mask.
      start: optional ``[K]`` start scores.
      end: optional ``[K]`` end scores.
      lengths: optional ``[...]`` lengths (instead of ``mask``).
      algorithm: see :func:`crf_log_partition`.

    Returns:
      ``[..., T, K]`` marginals in the compute dtype: rows sum to 1 at valid positions and
      are 0 at padded ones.

    Reference: Rabiner (1989), forward-backward; Lafferty et al. (2001).

    Example:
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> p = crf_marginals(jnp.array([[2.0, 0.0], [0.0, 0.0]]), jnp.zeros((2, 2)))
      >>> np.asarray(p).round(3)
      array([[0.881, 0.119],
             [0.5  , 0.5  ]], dtype=float32)
    """
    fn = "crf_marginals"
    _check_algorithm(fn, algorithm)
    x, g, start, end, lengths, batch_shape = _prepare(
        fn, emissions, transitions, mask, lengths, start, end
    )
    marginals = _marginals_core(x, g, start, end, lengths.reshape(-1), algorithm)
    return marginals.reshape(jnp.shape(emissions))


@jax.jit
def _viterbi(x, g, start, end, lengths):
    """Max-plus forward scan in ``[T, K, N]`` storing back-pointers, then backtracking."""
    x, valid = _time_major(x, lengths)
    num_steps, num_tags, batch = x.shape

    def max_plus(delta):  # [K, N] -> (max_i delta[i] + g[i, j], first argmax i)
        if num_tags > _UNROLL_MAX_TAGS:
            scores = delta[:, None, :] + g[:, :, None]
            return jnp.max(scores, axis=0), jnp.argmax(scores, axis=0).astype(jnp.int32)
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

    delta_last, pointers = lax.scan(forward, x[0] + start[:, None], (x[1:], valid[1:]))
    final = delta_last + end[:, None]
    last_tag = jnp.argmax(final, axis=0).astype(jnp.int32)
    score = jnp.where(lengths > 0, jnp.max(final, axis=0), 0)
    cols = jnp.arange(batch)

    def backtrack(y, inputs):  # y_{t-1} = pointer_t[y_t]; held past each sequence's end
        pointer, v = inputs
        y = jnp.where(v, pointer[y, cols], y)
        return y, y

    _, ys = lax.scan(backtrack, last_tag, (pointers, valid[1:]), reverse=True)
    tags = jnp.concatenate([ys, last_tag[None]])
    return jnp.where(valid, tags, -1).T, score


def viterbi_decode(
    emissions: jax.Array,
    transitions: jax.Array,
    mask: jax.Array | None = None,
    start: jax.Array | None = None,
    end: jax.Array | None = None,
    *,
    lengths: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Highest-scoring tag path (Viterbi), as fixed-shape arrays.

    Math: ``δ_1 = start + f_1``, ``δ_{t+1}(j) = max_i(δ_t(i) + g(i, j)) + f_{t+1}(j)``,
    ``y_L = argmax_j δ_L(j) + end(j)``, ``y_{t-1} = argmax_i δ_{t-1}(i) + g(i, y_t)``.

    Args:
      emissions: ``[..., T, K]`` emission scores.
      transitions: ``[K, K]`` transition scores (``-inf`` transitions are never taken
        while an allowed path exists).
      mask: optional right-padded ``[..., T]`` mask.
      start: optional ``[K]`` start scores.
      end: optional ``[K]`` end scores.
      lengths: optional ``[...]`` lengths (instead of ``mask``).

    Returns:
      ``(tags, score)``: ``[..., T]`` int32 tags with -1 at padded positions, and the
      ``[...]`` best path score (0 for fully padded rows).

    Reference: Viterbi, "Error bounds for convolutional codes" (IEEE Trans. IT 1967);
    pytorch-crf ``CRF.decode``.

    Example:
      >>> import jax.numpy as jnp
      >>> emissions = jnp.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
      >>> tags, score = viterbi_decode(emissions, jnp.zeros((2, 2)), lengths=jnp.array([2]))
      >>> tags, score
      (Array([[ 0,  1, -1]], dtype=int32), Array([2.], dtype=float32))
    """
    fn = "viterbi_decode"
    x, g, start, end, lengths, batch_shape = _prepare(
        fn, emissions, transitions, mask, lengths, start, end
    )
    tags, score = _viterbi(x, g, start, end, lengths.reshape(-1))
    return tags.reshape(jnp.shape(emissions)[:-1]), score.reshape(batch_shape)


@functools.partial(jax.jit, static_argnames="n")
def _viterbi_nbest(x, g, start, end, lengths, n):
    """List-Viterbi: keeps the ``n`` best partial paths per tag (``x`` ``[N, T, K]``)."""
    batch, num_steps, num_tags = x.shape
    valid = jnp.arange(num_steps)[:, None] < lengths
    x = jnp.where(valid.T[..., None], x, 0)
    x = jnp.swapaxes(x, 0, 1)
    delta0 = jnp.full((batch, num_tags, n), -jnp.inf, x.dtype)
    delta0 = delta0.at[:, :, 0].set(x[0] + start)
    identity = jnp.arange(num_tags)[:, None] * n + jnp.arange(n)  # (tag, rank) -> itself

    def forward(delta, inputs):
        f, v = inputs
        cand = delta[:, :, :, None] + g[:, None, :]  # [N, K_prev, n, K_next]
        cand = jnp.swapaxes(cand.reshape(batch, num_tags * n, num_tags), 1, 2)
        vals, idx = lax.top_k(cand, n)  # [N, K_next, n], flat (prev tag, prev rank)
        delta = jnp.where(v[:, None, None], vals + f[:, :, None], delta)
        idx = jnp.where(v[:, None, None], idx, identity)
        return delta, idx.astype(jnp.int32)

    delta_last, pointers = lax.scan(forward, delta0, (x[1:], valid[1:]))
    final = (delta_last + end[:, None]).reshape(batch, num_tags * n)
    scores, flat = lax.top_k(final, n)  # [N, n]
    rows = jnp.arange(batch)[:, None]

    def backtrack(carry, ptr):
        tag, rank = carry
        prev = ptr[rows, tag, rank]
        carry = (prev // n, prev % n)
        return carry, carry[0]

    carry0 = (flat // n, flat % n)
    _, ys = lax.scan(backtrack, carry0, pointers, reverse=True)
    tags = jnp.concatenate([ys, carry0[0][None]]).astype(jnp.int32)  # [T, N, n]
    keep = valid[:, :, None] & (scores > -jnp.inf)[None]
    tags = jnp.transpose(jnp.where(keep, tags, -1), (1, 2, 0))
    scores = jnp.where((lengths > 0)[:, None], scores, 0)
    return tags, scores


def viterbi_nbest(
    emissions: jax.Array,
    transitions: jax.Array,
    n: int,
    mask: jax.Array | None = None,
    start: jax.Array | None = None,
    end: jax.Array | None = None,
    *,
    lengths: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The ``n`` highest-scoring tag paths (list Viterbi), best first.

    Math: each state keeps its ``n`` best partial paths ``δ_t(j, r)``;
    ``δ_{t+1}(j, ·) = top-n_{(i, r)}(δ_t(i, r) + g(i, j)) + f_{t+1}(j)``; back-pointers
    store the ``(i, r)`` chosen.

    Args:
      emissions: ``[..., T, K]`` emission scores.
      transitions: ``[K, K]`` transition scores.
      n: number of paths (a Python int >= 1).
      mask: optional right-padded ``[..., T]`` mask.
      start: optional ``[K]`` start scores.
      end: optional ``[K]`` end scores.
      lengths: optional ``[...]`` lengths (instead of ``mask``).

    Returns:
      ``(tags, scores)``: ``[..., n, T]`` int32 tags (-1 at padded positions and for
      slots beyond the number of feasible paths, whose score is ``-inf``) and ``[..., n]``
      scores in decreasing order (0 for fully padded rows).

    Reference: Seshadri & Sundberg, "List Viterbi decoding algorithms with applications"
    (IEEE Trans. Comm. 1994).

    Example:
      >>> import jax.numpy as jnp
      >>> emissions = jnp.array([[1.0, 0.0], [0.0, 0.5]])
      >>> tags, scores = viterbi_nbest(emissions, jnp.zeros((2, 2)), 3)
      >>> tags, scores
      (Array([[0, 1], [0, 0], [1, 1]], dtype=int32), Array([1.5, 1. , 0.5], dtype=float32))
    """
    fn = "viterbi_nbest"
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{fn}: n must be a Python int >= 1, got {n!r}.")
    x, g, start, end, lengths, batch_shape = _prepare(
        fn, emissions, transitions, mask, lengths, start, end
    )
    tags, scores = _viterbi_nbest(x, g, start, end, lengths.reshape(-1), int(n))
    return tags.reshape(*batch_shape, n, x.shape[1]), scores.reshape(*batch_shape, n)
