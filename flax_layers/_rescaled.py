"""Probability-space (rescaled) specialisations of the log-semiring chain programs.

Package-internal. Both compute what :mod:`flax_layers._scan` computes in the log
semiring, with matrix products instead of log-sum-exps, and fall back to it (through
:func:`jax.lax.cond`) when a batch would lose probability mass to under/overflow:

* :func:`log_partition` (sequential): the forward recursion
  ``α_t = (Eᵀ α_{t-1}) ⊙ ψ_t`` with ``E = exp(g - rowmax g)`` computed once and
  ``ψ_t = exp(h_t - max h_t)`` for all steps in one vectorised call (``h_t`` = emissions
  with the row maxima of ``g``, the start and the end scores folded in), renormalised
  every step and the log-normaliser accumulated. The backward recursion ``β`` runs in the
  same loop, so the gradient (a ``custom_vjp``: tag marginals for the emissions, expected
  transition counts for ``g``) costs no second scan. The local identity
  ``Σ α_t β_t = c_{t+1} Σ α_{t+1} β_{t+1} / d_{t+1}`` (``c``, ``d`` the step normalisers)
  certifies that no mass was lost; if it fails anywhere in the batch (extreme scores,
  e.g. logit margins of ~90 nats against forbidden transitions), a NaN or a row without
  a feasible path, the batch is recomputed exactly in log space.
* :func:`log_partition_parallel`: a balanced tree of products of the rescaled transfer
  matrices ``exp(g(i, j) + f_t(j))`` (each stored as a matrix with maximum 1 and a log
  scale): ``O(log T)`` depth. A boolean product of the supports certifies that no entry
  underflowed to zero. Its gradient is autodiff through the tree.
* :func:`marginals`: unary marginals and pairwise marginals (per step, or summed per
  row) from the same forward-backward pass.

Every matrix product requests full float32 (``Precision.HIGHEST``): on TPUs and recent
GPUs the default would use bf16 passes or TF32 and lose about 1e-3 relative per step.

References: Rabiner, "A Tutorial on Hidden Markov Models" (Proc. IEEE 1989; scaled
forward-backward); Särkkä & García-Fernández (2021; associative scans).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from flax_layers._scan import (
    associative_scan,
    log_space_marginals,
    sequential_scan,
    tree_reduce,
)
from flax_layers._semiring import Log

HIGHEST = lax.Precision.HIGHEST


def _matmul(a, b):
    return jnp.matmul(a, b, precision=HIGHEST)


def _rescale(x, g, start, end, lengths):
    """Folds start/end/row maxima into the emissions and exponentiates everything once.

    ``x`` ``[T, K, N]`` (zero past lengths). Returns ``ψ`` ``[T, K, N]`` with
    ``max_k ψ_t = 1``, its log-offsets ``m`` ``[T, N]``, ``E = exp(g - r)`` with row
    maxima ``r`` (rows of ``E`` peak at 1; ``-inf -> 0``) and the valid-position mask.
    ``exp(g(i, j)) = exp(r_i) E(i, j)``: the ``exp(r_i)`` goes into ``ψ_t(i)`` for every
    position that has a successor, ``exp(end(i))`` into the last one.
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
        y = _matmul(mats, jnp.stack([a, q]))
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


def _forward_backward(x, g, start, end, lengths):
    """The rescaled pass on ``x`` ``[N, T, K]``: log Z, the mass certificate, the pieces."""
    xt = jnp.transpose(x, (1, 2, 0))
    psi, m, e_mat, valid = _rescale(xt, g, start, end, lengths)
    a, c, b, d = _forward_backward_scan(psi, e_mat, valid)
    s = jnp.sum(a * b, axis=1)  # Σ_k a_t b_t, the same for all t in exact arithmetic
    ratio = s[:-1] * d[1:] / (c[1:] * s[1:])
    tol = math.sqrt(float(jnp.finfo(x.dtype).eps))
    ok = jnp.all(jnp.where(valid[1:], jnp.abs(ratio - 1) <= tol, True)) & jnp.all(
        jnp.where(valid, (c > 0) & jnp.isfinite(s), True)
    )
    log_z = jnp.sum(jnp.where(valid, m + jnp.log(c), 0), axis=0)
    return log_z, ok, (psi, e_mat, valid, a, c, b, s)


def _unary_and_weights(pieces):
    """Tag marginals ``a_t b_t / s_t`` ``[T, K, N]`` and ``w_t = ψ_t b_t / (c_t s_t)``.

    The pairwise marginal of ``(t-1, t)`` is ``a_{t-1}(i) E(i, j) w_t(j)``.
    """
    psi, e_mat, valid, a, c, b, s = pieces
    p = jnp.where(valid[:, None, :], a * b / s[:, None, :], 0)
    w = psi[1:] * b[1:] / (c[1:] * s[1:])[:, None, :]
    return p, jnp.where(valid[1:, None, :], w, 0)


def _pair_sums(pieces, w, out: str):
    """Pairwise marginals ``a_{t-1}(i) E(i, j) w_t(j)``, summed as the einsum output
    ``out`` says (``"ij"``, ``"nij"`` or ``"ntij"``, from ``t``, ``i``, ``j`` and ``n``)."""
    a, e_mat = pieces[3], pieces[1]
    return e_mat * jnp.einsum(f"tin,tjn->{out}", a[:-1], w, precision=HIGHEST)


def _exact_log_z(x, g, start, end, lengths):
    return sequential_scan(Log(), x, g, start, end, lengths, checkpoint=True).total[:, 0]


@jax.custom_vjp
def log_partition(x, g, start, end, lengths):
    """``log Z`` ``[N]`` of ``x`` ``[N, T, K]`` (compact, zero past lengths)."""
    return _log_partition_fwd(x, g, start, end, lengths)[0]


def _log_partition_fwd(x, g, start, end, lengths):
    fast_log_z, ok, pieces = _forward_backward(x, g, start, end, lengths)
    # The fast results are computed outside lax.cond (work inside a branch runs slower on
    # XLA:CPU); the branch only passes them through or runs the exact fallback.
    log_z = lax.cond(ok, lambda: fast_log_z, lambda: _exact_log_z(x, g, start, end, lengths))
    return log_z, (x, g, start, end, lengths, pieces, ok, log_z)


def _log_partition_bwd(res, ct):
    x, g, start, end, lengths, pieces, ok, log_z = res
    # Rows without a feasible path have zero gradients; NaN rows keep their NaN.
    ct = jnp.where(log_z == -jnp.inf, 0, ct)
    p, w = _unary_and_weights(pieces)
    p, w = p * ct, w * ct
    d_g = _pair_sums(pieces, w, "ij")
    last = jnp.arange(x.shape[1])[:, None] == lengths - 1
    d_end = jnp.sum(jnp.where(last[:, None, :], p, 0), axis=(0, 2))
    fast = (jnp.transpose(p, (2, 0, 1)), d_g, jnp.sum(p[0], axis=1), d_end)

    def exact():
        def total(x, g, start, end):
            log_z = _exact_log_z(x, g, start, end, lengths)
            return jnp.sum(jnp.where(log_z == -jnp.inf, 0, log_z * ct))

        return jax.grad(total, argnums=(0, 1, 2, 3))(x, g, start, end)

    return (*lax.cond(ok, lambda: fast, exact), None)


log_partition.defvjp(_log_partition_fwd, _log_partition_bwd)


def marginals(x, g, start, end, lengths, *, pairs: str = "none"):
    """``(log Z [N], unary [N, T, K], pairwise)`` with ``pairs`` one of ``"none"`` (None),
    ``"steps"`` (``[N, T, K, K]``, entry ``t`` the joint of ``t-1`` and ``t``) or
    ``"counts"`` (``[N, K, K]`` expected transition counts). Rows with a NaN input get NaN,
    rows without a feasible path zeros."""
    fast_log_z, ok, pieces = _forward_backward(x, g, start, end, lengths)
    p, w = _unary_and_weights(pieces)
    unary = jnp.transpose(p, (2, 0, 1))
    if pairs == "steps":
        xi = _pair_sums(pieces, w, "ntij")
        pair = jnp.concatenate([jnp.zeros_like(xi[:, :1]), xi], axis=1)
    elif pairs == "counts":
        pair = _pair_sums(pieces, w, "nij")
    else:
        pair = None
    exact = lambda: log_space_marginals(x, g, start, end, lengths, pairs=pairs)
    return lax.cond(ok, lambda: (fast_log_z, unary, pair), exact)


def forward_log_weights(x, g, start, end, lengths):
    """``(log Z [N], la [T, N, K], lg [K, K], le [K])`` for backward sampling.

    ``exp(la_t(i) + lg(i, j))`` is proportional (for fixed ``j`` and ``t``) to
    ``exp(α_t(i) + g(i, j))`` and ``exp(la_{L-1}(i) + le(i))`` to ``exp(α_{L-1}(i) + end(i))``,
    with ``α`` the log forward scores: from the rescaled pass (``la = log a_t``, which holds
    the row maxima of ``g`` and the end scores, ``lg = g - rowmax g``, ``le = 0``), or from
    the exact log-space scan where the rescaled pass lost mass.
    """
    fast_log_z, ok, pieces = _forward_backward(x, g, start, end, lengths)
    a, e_mat = pieces[3], pieces[1]
    fast = (
        fast_log_z,
        jnp.log(jnp.transpose(a, (0, 2, 1))),
        jnp.log(e_mat),
        jnp.zeros_like(end),
    )

    def exact():
        res = sequential_scan(Log(), x, g, start, end, lengths, keep_alphas=True)
        return res.total[:, 0], res.alphas[..., 0], g, end

    return lax.cond(ok, lambda: fast, exact)


def _parallel_elements(x, g, lengths):
    """Rescaled transfer matrices ``[T-1, N, K, K]``, their log scales and supports."""
    num_tags = x.shape[-1]
    gmax = jnp.max(g)
    gmax = jnp.where(gmax > -jnp.inf, gmax, 0)
    e_mat = jnp.exp(g - gmax)
    f = jnp.swapaxes(x[:, 1:], 0, 1)  # [T-1, N, K]
    fmax = jnp.max(f, axis=-1)
    fmax = jnp.where(fmax > -jnp.inf, fmax, 0)
    mats = e_mat * jnp.exp(f - fmax[..., None])[:, :, None, :]
    support = (g > -jnp.inf) & (f > -jnp.inf)[:, :, None, :]
    valid = (jnp.arange(1, x.shape[1])[:, None] < lengths)[..., None, None]
    eye = jnp.eye(num_tags, dtype=bool)
    mats = jnp.where(valid, mats, eye.astype(x.dtype))
    support = jnp.where(valid, support, eye)
    scale = jnp.where(valid[..., 0, 0], gmax + fmax, 0)
    return mats, scale, support.astype(x.dtype), jnp.ones(scale.shape, bool)


def _combine(left, right):
    """``(A, a, S, ok) ∘ (B, b, R, ok')``: the normalised product, its scale, support."""
    a_mat, a_scale, a_supp, a_ok = left
    b_mat, b_scale, b_supp, b_ok = right
    prod = _matmul(a_mat, b_mat)
    peak = jnp.max(prod, axis=(-2, -1))
    peak = jnp.where(peak > 0, peak, 1)
    supp = (_matmul(a_supp, b_supp) > 0).astype(prod.dtype)
    ok = a_ok & b_ok & ~jnp.any((supp > 0) & (prod == 0), axis=(-2, -1))
    return prod / peak[..., None, None], a_scale + b_scale + jnp.log(peak), supp, ok


def _parallel_fast(x, g, start, end, lengths):
    """``(log Z [N], ok)`` from the tree of rescaled products; ``ok`` certifies no entry
    that the supports say is reachable underflowed to zero."""
    batch, num_steps, _ = x.shape
    h0 = start + x[:, 0]
    h0_max = jnp.max(h0, axis=-1, keepdims=True)
    h0_max = jnp.where(h0_max > -jnp.inf, h0_max, 0)
    alpha = jnp.exp(h0 - h0_max)
    end_max = jnp.max(end)
    end_max = jnp.where(end_max > -jnp.inf, end_max, 0)
    omega = jnp.exp(end - end_max)
    scale = h0_max[:, 0] + end_max
    ok = jnp.bool_(True)
    reach = jnp.ones((batch,), bool)
    if num_steps > 1:
        mats, scales, supports, oks = _parallel_elements(x, g, lengths)
        prod, prod_scale, prod_supp, prod_ok = tree_reduce(_combine, (mats, scales, supports, oks))
        alpha = _matmul(alpha[:, None, :], prod)[:, 0]
        scale = scale + prod_scale
        ok = jnp.all(prod_ok)
        start_supp = (h0 > -jnp.inf).astype(x.dtype)[:, None, :]
        reach = (_matmul(start_supp, prod_supp)[:, 0] > 0) & (end > -jnp.inf)
        reach = jnp.any(reach, axis=-1)
    z = jnp.sum(alpha * omega, axis=-1)
    ok = ok & jnp.all((z > 0) | ~reach)
    pos = z > 0
    log_z = jnp.where(pos, jnp.log(jnp.where(pos, z, 1)) + scale, -jnp.inf)
    return jnp.where(lengths > 0, log_z, 0), ok


def _parallel_exact(x, g, start, end, lengths):
    return associative_scan(Log(), x, g, start, end, lengths)[:, 0]


@jax.custom_vjp
def log_partition_parallel(x, g, start, end, lengths):
    """``log Z`` ``[N]`` by a tree of rescaled matrix products (exact log-space fallback).

    Its gradient differentiates the same tree (or, where the forward pass fell back, the
    exact one) inside a :func:`jax.lax.cond`, so no residual of the untaken branch is
    materialised.
    """
    return _parallel_fwd(x, g, start, end, lengths)[0]


def _parallel_fwd(x, g, start, end, lengths):
    fast, ok = _parallel_fast(x, g, start, end, lengths)
    log_z = lax.cond(ok, lambda: fast, lambda: _parallel_exact(x, g, start, end, lengths))
    return log_z, (x, g, start, end, lengths, ok, log_z)


def _parallel_bwd(res, ct):
    x, g, start, end, lengths, ok, log_z = res
    ct = jnp.where(log_z == -jnp.inf, 0, ct)

    def grads(fn):
        def run():
            _, vjp = jax.vjp(lambda *a: fn(*a, lengths), x, g, start, end)
            return vjp(ct)

        return run

    fast = lambda *a: _parallel_fast(*a)[0]
    return (*lax.cond(ok, grads(fast), grads(_parallel_exact)), None)


log_partition_parallel.defvjp(_parallel_fwd, _parallel_bwd)
