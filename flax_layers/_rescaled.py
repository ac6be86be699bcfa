"""Probability-space (rescaled) specialisations of the log-semiring chain programs.

Package-internal. Both compute what :mod:`flax_layers._scan` computes in the log
semiring, with matrix products instead of log-sum-exps, and fall back to it (through
:func:`jax.lax.cond`) when a batch would lose probability mass to under/overflow:

* :func:`log_partition` (sequential): the forward recursion
  ``α_t = (Eᵀ α_{t-1}) ⊙ ψ_t`` with ``E = exp(g - rowmax g)`` computed once and
  ``ψ_t = exp(h_t - max h_t)`` for all steps in one vectorised call (``h_t`` = emissions
  with the row maxima of ``g``, the start and the end scores folded in), renormalised
  every step and the log-normaliser accumulated. The backward recursion ``β`` runs in the
  same loop: a step is one product of the stacked ``[a, ψ ⊙ b]`` with a ``[2K, 2K + 2]``
  matrix that also yields both normalisers (no reductions in the loop), and one stored
  row. Its gradient (a ``custom_vjp``: tag marginals for the emissions, expected
  transition counts for ``g``) comes from the marginals, which the forward rule computes
  from the same rows, so the backward rule is elementwise. The local identity
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

On XLA:CPU a loop step costs its kernel launches more than its arithmetic (a ``[32, 40]``
by ``[40, 42]`` product is ~50k multiply-adds), so the loop has three kernels a step
(row update, product, store); everything else runs before or after it, vectorised over
all steps, in the batch-major ``[N, T, K]`` layout of the emissions (no transposes).

References: Rabiner, "A Tutorial on Hidden Markov Models" (Proc. IEEE 1989; scaled
forward-backward); Särkkä & García-Fernández (2021; associative scans).
"""

from __future__ import annotations

import math
from typing import NamedTuple

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

    ``x`` ``[N, T, K]`` (zero past lengths). Returns ``ψ`` ``[N, T, K]`` with
    ``max_k ψ_t = 1``, its log-offsets ``m`` ``[N, T]``, ``E = exp(g - r)`` with row
    maxima ``r`` (rows of ``E`` peak at 1; ``-inf -> 0``) and the valid positions
    ``[N, T]``. ``exp(g(i, j)) = exp(r_i) E(i, j)``: the ``exp(r_i)`` goes into ``ψ_t(i)``
    for every position that has a successor, ``exp(end(i))`` into the last one.
    """
    t = jnp.arange(x.shape[1])
    valid = t < lengths[:, None]
    last = (t == lengths[:, None] - 1)[..., None]
    r = jnp.max(g, axis=1)
    r = jnp.where(r > -jnp.inf, r, 0)
    e_mat = jnp.exp(g - r[:, None])
    h = x + jnp.where(last, end, r) + jnp.where(t == 0, 1, 0)[:, None] * start
    h = jnp.where(valid[..., None], h, 0)
    m = jnp.max(h, axis=-1)
    m = jnp.where(m > -jnp.inf, m, 0)
    psi = jnp.exp(h - m[..., None])
    return psi, m, e_mat, valid


def _step_matrix(e_mat):
    """``[2K, 2K + 2]``: ``[[E, 0, E 1, 0], [0, Eᵀ, 0, Eᵀ 1]]``.

    ``[a, q]`` (a row per sequence) times it gives ``Eᵀ a``, ``E q`` and their sums (the
    two normalisers), so a step needs no reduction of its own.
    """
    zero = jnp.zeros_like(e_mat)
    col = lambda v: v[:, None]  # noqa: E731
    zeros = col(jnp.zeros_like(e_mat[0]))
    return jnp.concatenate(
        [
            jnp.concatenate([e_mat, zero, col(jnp.sum(e_mat, axis=1)), zeros], axis=1),
            jnp.concatenate([zero, e_mat.T, zeros, col(jnp.sum(e_mat, axis=0))], axis=1),
        ]
    )


class Chain(NamedTuple):
    """The rescaled forward-backward pass of :func:`_forward_backward`, ``[N, T, ...]``.

    ``psi``, ``m``, ``e_mat``, ``valid`` from :func:`_rescale`; ``rows`` ``[N, T, 2K + 2]``
    from :func:`_scan`: row ``r`` holds the unnormalised ``Eᵀ a_{r-1}``,
    ``E (ψ_{T-r} ⊙ b_{T-r})`` and their sums ``c_r``, ``d_{T-r}`` (row 0: ones, ones,
    ``c_0 = Σ ψ_0``, 1). The normalised vectors are elementwise functions of the rows, the
    same in the loop and here, so XLA fuses them into their consumers.
    """

    psi: jax.Array
    m: jax.Array
    e_mat: jax.Array
    valid: jax.Array
    rows: jax.Array
    s: jax.Array | None = None  # s_t = Σ_k a_t(k) b_t(k) [N, T] (α_t · β_t over the scales)

    @property
    def num_tags(self) -> int:
        return self.psi.shape[-1]

    def c(self):
        """Forward normalisers ``[N, T]``: ``c_0 = Σ ψ_0``, ``c_t = Σ_j (Eᵀ a_{t-1})(j)``."""
        return self.rows[..., 2 * self.num_tags]

    def a(self):
        """Forward vectors ``[N, T, K]``: ``a_t = ψ_t ⊙ (Eᵀ a_{t-1}) / c_t``,
        ``a_0 = ψ_0 / c_0`` (sums at most 1: ``ψ ≤ 1``)."""
        return _forward(self.psi, self.rows, self.num_tags)

    def d(self):
        """Backward normalisers ``[N, T]``: ``d_t = Σ_i (E ψ_t b_t)(i)`` (1 at ``t = 0`` and
        wherever position ``t`` is past the length)."""
        d = jnp.where(self.valid[:, 1:], self.rows[:, :0:-1, 2 * self.num_tags + 1], 1)
        return jnp.concatenate([jnp.ones_like(d[:, :1]), d], axis=1)

    def b(self):
        """Backward vectors ``[N, T, K]``: ``b_{t-1} = E (ψ_t ⊙ b_t) / d_t``, ones from each
        sequence's last position on."""
        return _backward(self.rows[:, ::-1], _next_valid(self.valid), self.num_tags)


def _next_valid(valid):
    """Whether position ``t + 1`` is valid, ``[N, T]``."""
    return jnp.concatenate([valid[:, 1:], jnp.zeros_like(valid[:, :1])], axis=1)


def _forward(psi, rows, k):
    """``a = ψ ⊙ (Eᵀ a_prev) / c`` from (stacks of) rows of :func:`_scan`."""
    return psi * (rows[..., :k] / rows[..., 2 * k : 2 * k + 1])


def _backward(rows, after, k):
    """``b = E (ψ b_next) / d``, or 1 where the next position (``after``) is not valid."""
    return jnp.where(after[..., None], rows[..., k : 2 * k] / rows[..., 2 * k + 1 :], 1)


def _scan(psi, e_mat, valid):
    """The loop of the forward and backward recursions: one product and one row a step.

    Step ``r`` normalises row ``r - 1`` into ``a_{r-1}`` and ``b_{T-r}``, multiplies
    ``[a_{r-1}, ψ_{T-r} ⊙ b_{T-r}]`` by :func:`_step_matrix` (which also gives the sums
    ``c_r`` and ``d_{T-r}``) and stores the product as row ``r``. The loop carries only
    the rows and each step is one chain of kernels (row update, product, store): on
    XLA:CPU a step costs its kernel launches, so it has as few as the recursion allows.
    """
    batch, num_steps, k = psi.shape
    mat = _step_matrix(e_mat)
    ones = jnp.ones((batch, k), psi.dtype)
    first = jnp.concatenate([ones, ones, jnp.sum(psi[:, 0], axis=-1)[:, None], ones[:, :1]], 1)
    rows = jnp.zeros((batch, num_steps, 2 * k + 2), psi.dtype).at[:, 0].set(first)
    after = _next_valid(valid)

    def step(r, rows):
        at = lambda a, i: lax.dynamic_index_in_dim(a, i, axis=1, keepdims=False)  # noqa: E731
        row = at(rows, r - 1)
        a = _forward(at(psi, r - 1), row, k)
        q = at(psi, num_steps - r) * _backward(row, at(after, num_steps - r), k)
        y = _matmul(jnp.concatenate([a, q], axis=1), mat)
        return lax.dynamic_update_index_in_dim(rows, y, r, axis=1)

    return lax.fori_loop(1, num_steps, step, rows)


def _forward_backward(x, g, start, end, lengths):
    """The rescaled pass on ``x`` ``[N, T, K]``: log Z, the mass certificate, the chain.

    ``log Z = Σ_t (m_t + log c_t) + log s_{L-1}`` (``b_{L-1} = 1``, so ``s_{L-1}`` is the
    forward mass left at the last position). The identity
    ``s_{t-1} d_t = c_t s_t`` (for any normalisers) certifies that no mass was lost.
    """
    psi, m, e_mat, valid = _rescale(x, g, start, end, lengths)
    chain = Chain(psi, m, e_mat, valid, _scan(psi, e_mat, valid))
    s = jnp.sum(chain.a() * chain.b(), axis=-1)
    chain, c = chain._replace(s=s), chain.c()
    ratio = s[:, :-1] * chain.d()[:, 1:] / (c[:, 1:] * s[:, 1:])
    tol = math.sqrt(float(jnp.finfo(x.dtype).eps))
    ok = jnp.all(jnp.where(valid[:, 1:], jnp.abs(ratio - 1) <= tol, True)) & jnp.all(
        jnp.where(valid, (c > 0) & (s > 0) & jnp.isfinite(s), True)
    )
    last = jnp.arange(x.shape[1]) == lengths[:, None] - 1
    log_s = jnp.log(jnp.where(last, s, 1))
    log_z = jnp.sum(jnp.where(valid, m + jnp.log(c), 0) + log_s, axis=1)
    return log_z, ok, chain


def _unary_and_weights(chain: Chain):
    """Tag marginals ``p_t = a_t b_t / s_t`` and ``w_t = ψ_t b_t / (c_t s_t)`` (0 at
    ``t = 0``), ``[N, T, K]`` each, and ``a_{t-1}`` (0 at ``t = 0``).

    The pairwise marginal of ``(t-1, t)`` is ``a_{t-1}(i) E(i, j) w_t(j)``.
    """
    a, b, c, s, valid = chain.a(), chain.b(), chain.c(), chain.s, chain.valid
    p = jnp.where(valid[..., None], a * b / s[..., None], 0)
    w = chain.psi * b / (c * s)[..., None]
    w = jnp.where((valid & (jnp.arange(valid.shape[1]) > 0))[..., None], w, 0)
    a_prev = jnp.concatenate([jnp.zeros_like(a[:, :1]), a[:, :-1]], axis=1)
    return p, w, a_prev


def _pair_sums(chain: Chain, a_prev, w, out: str):
    """Pairwise marginals ``a_{t-1}(i) E(i, j) w_t(j)``, summed as the einsum output
    ``out`` says (``"ij"``, ``"nij"`` or ``"ntij"``, from ``n``, ``t``, ``i`` and ``j``)."""
    return chain.e_mat * jnp.einsum(f"nti,ntj->{out}", a_prev, w, precision=HIGHEST)


def _exact_log_z(x, g, start, end, lengths):
    return sequential_scan(Log(), x, g, start, end, lengths, checkpoint=True).total[:, 0]


@jax.custom_vjp
def log_partition(x, g, start, end, lengths):
    """``log Z`` ``[N]`` of ``x`` ``[N, T, K]`` (compact, zero past lengths).

    Its gradient (tag marginals for ``x``, expected transition counts for ``g``) comes
    from the marginals of :func:`marginals`, computed by the forward rule, so the
    backward rule is elementwise and fuses with what the caller adds to the gradient.
    """
    fast_log_z, ok, _ = _forward_backward(x, g, start, end, lengths)
    # The fast value is computed outside lax.cond; the branch only passes it through or
    # runs the exact fallback.
    return lax.cond(ok, lambda: fast_log_z, lambda: _exact_log_z(x, g, start, end, lengths))


def _log_partition_fwd(x, g, start, end, lengths):
    log_z, unary, counts = marginals(x, g, start, end, lengths, pairs="counts", checkpoint=True)
    return log_z, (lengths, log_z, unary, counts)


def _log_partition_bwd(res, ct):
    lengths, log_z, unary, counts = res
    # Rows without a feasible path have zero gradients; NaN rows keep their NaN.
    ct = jnp.where(log_z == -jnp.inf, 0, ct)
    last = jnp.arange(unary.shape[1]) == lengths[:, None] - 1
    weighted = unary * ct[:, None, None]
    d_end = jnp.sum(jnp.where(last[..., None], weighted, 0), axis=(0, 1))
    d_g = jnp.einsum("n,nij->ij", ct, counts, precision=HIGHEST)
    return weighted, d_g, jnp.sum(weighted[:, 0], axis=0), d_end, None


log_partition.defvjp(_log_partition_fwd, _log_partition_bwd)


def marginals(x, g, start, end, lengths, *, pairs: str = "none", checkpoint: bool = False):
    """``(log Z [N], unary [N, T, K], pairwise)`` with ``pairs`` one of ``"none"`` (None),
    ``"steps"`` (``[N, T, K, K]``, entry ``t`` the joint of ``t-1`` and ``t``) or
    ``"counts"`` (``[N, K, K]`` expected transition counts). Rows with a NaN input get NaN,
    rows without a feasible path zeros. ``checkpoint``: the exact fallback
    rematerialises its scan (for long sequences)."""
    fast_log_z, ok, chain = _forward_backward(x, g, start, end, lengths)

    def fast():  # computed inside the branch: it writes the branch's outputs directly
        p, w, a_prev = _unary_and_weights(chain)
        pair = (
            None
            if pairs == "none"
            else _pair_sums(chain, a_prev, w, {"steps": "ntij"}.get(pairs, "nij"))
        )
        return fast_log_z, p.reshape(-1), pair

    def exact():
        log_z, p, pair = log_space_marginals(
            x, g, start, end, lengths, pairs=pairs, checkpoint=checkpoint
        )
        return log_z, p.reshape(-1), pair

    # The marginals leave the branches flat: the log-space scan of the exact branch
    # computes them in a [T, N, K] layout, and XLA would otherwise give the conditional's
    # output that layout and make the fast branch transpose into it.
    log_z, p, pair = lax.cond(ok, fast, exact)
    return log_z, p.reshape(x.shape), pair


def forward_log_weights(x, g, start, end, lengths):
    """``(log Z [N], la [T, N, K], lg [K, K], le [K])`` for backward sampling.

    ``exp(la_t(i) + lg(i, j))`` is proportional (for fixed ``j`` and ``t``) to
    ``exp(α_t(i) + g(i, j))`` and ``exp(la_{L-1}(i) + le(i))`` to ``exp(α_{L-1}(i) + end(i))``,
    with ``α`` the log forward scores: from the rescaled pass (``la = log a_t``, which holds
    the row maxima of ``g`` and the end scores, ``lg = g - rowmax g``, ``le = 0``), or from
    the exact log-space scan where the rescaled pass lost mass.
    """
    fast_log_z, ok, chain = _forward_backward(x, g, start, end, lengths)
    fast = (
        fast_log_z,
        jnp.log(jnp.swapaxes(chain.a(), 0, 1)),
        jnp.log(chain.e_mat),
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
