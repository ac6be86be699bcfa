"""Maximum-entropy Markov model (MEMM) and bidirectional MEMM losses.

The MEMM scores paths like a CRF (emissions ``f_t`` plus transitions ``g``) but normalises
every step locally instead of over whole paths:

    P(y_1) = softmax(f_1),    P(y_t | y_{t-1}) = softmax_j(g(y_{t-1}, j) + f_t(j)).

The log-likelihood is a sum of per-step log-softmaxes, so no scan over time is needed
(one gather of the previous tag's transition row and one vectorised logsumexp). The
right-to-left factorisation reads the same matrix transposed,
``P(y_L) = softmax(f_L)``, ``P(y_t | y_{t+1}) = softmax_j(g(j, y_{t+1}) + f_t(j))``,
inside each sequence's own length. Bi-MEMM trains on the mean of both directions'
log-likelihoods. Transitions may be low-rank, ``g = L Rᵀ`` with ``L, R ∈ R^{K×d}``,
passed as the pair ``(L, R)``.

Masks may have holes, with the CRF's rule: a masked position is skipped and the
neighbouring valid positions are linked (the model of the compacted sequence). A row
without a feasible path has log-likelihood ``-inf`` (with zero gradients), as in the
CRF; a NaN in an input that enters a row makes the row NaN.

Decoding uses Viterbi with ``g`` (:func:`flax_layers.crf.viterbi_decode`), as in the
article. (The Keras reference additionally halves the logits, ``(f_t + g)/2``; the article
and this module do not.)

References: McCallum, Freitag, Pereira, "Maximum Entropy Markov Models for Information
Extraction and Segmentation" (ICML 2000); Su Jianlin, "CRF用过了，不妨再了解下更快的MEMM？"
(2020), https://kexue.fm/archives/7213.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp

from flax_layers._chain import (
    check_emissions,
    check_mask,
    check_square,
    check_tags,
    compact_rows,
    compute_dtype,
    nan_rows,
    poison,
    reorder,
)
from flax_layers._semiring import logsumexp

__all__ = ["memm_log_likelihood", "memm_transition_matrix"]

Direction = Literal["forward", "backward", "both"]
Transitions = jax.Array | tuple[jax.Array, jax.Array]


def _check_transitions(fn: str, transitions, num_tags: int):
    """Returns ``("full", g)`` or ``("low_rank", (L, R))`` after checking shapes/dtypes."""
    if isinstance(transitions, (tuple, list)):
        if len(transitions) != 2:
            raise ValueError(f"{fn}: low-rank transitions must be a pair (L, R).")
        left, right = (jnp.asarray(m) for m in transitions)
        if left.ndim != 2 or left.shape[0] != num_tags or left.shape != right.shape:
            raise ValueError(
                f"{fn}: low-rank transitions (L, R) must both have shape [K, d] with "
                f"K={num_tags}, got {left.shape} and {right.shape}."
            )
        for name, m in (("L", left), ("R", right)):
            if not jnp.issubdtype(m.dtype, jnp.floating):
                raise TypeError(f"{fn}: transitions {name} must be floating, got {m.dtype}.")
        return "low_rank", (left, right)
    return "full", check_square(fn, transitions, num_tags, " or be a low-rank pair (L, R)")


def memm_transition_matrix(transitions: Transitions) -> jax.Array:
    """The ``[K, K]`` transition matrix ``g`` from a full matrix or a low-rank pair.

    Math: ``g = L Rᵀ`` for ``(L, R)``; a full matrix is returned unchanged.

    Args:
      transitions: ``[K, K]`` array or a pair ``(L, R)`` of ``[K, d]`` arrays.

    Returns:
      ``[K, K]`` transition scores (e.g. for :func:`flax_layers.crf.viterbi_decode`).

    Reference: Su Jianlin (2020), https://kexue.fm/archives/7213 (low-rank MEMM).

    Example:
      >>> import jax.numpy as jnp
      >>> memm_transition_matrix((jnp.ones((3, 2)), jnp.ones((3, 2)))).shape
      (3, 3)
    """
    if isinstance(transitions, (tuple, list)):
        num_tags = jnp.shape(transitions[0])[0] if len(transitions) else 0
        _, (left, right) = _check_transitions("memm_transition_matrix", transitions, num_tags)
        return left @ right.T
    return jnp.asarray(transitions)


@functools.partial(jax.jit, static_argnames="direction")
def _memm_core(x, tags, mats, lengths, direction):
    """``x`` ``[N, T, K]``; ``mats`` is ``(g,)`` or ``(L, R)``; returns ``[N]``.

    ``log P = Σ_t (logit_t[y_t] - logsumexp_j logit_t(j))``. The gold logits of both
    directions sum to the same path score ``Σ f_t(y_t) + Σ g(y_{t-1}, y_t)``, so it is
    computed once; the normalisers of both directions go through one stacked logsumexp.
    """
    num_steps, num_tags = x.shape[1:]
    valid = jnp.arange(num_steps) < lengths[:, None]
    tags = jnp.clip(jnp.where(valid, tags, 0), 0, num_tags - 1)
    x = jnp.where(valid[..., None], x, 0)
    pad = jnp.zeros_like(x[:, :1])
    low_rank = len(mats) == 2
    # Forward context: row g[y_{t-1}, :] (= L[y_{t-1}] Rᵀ) for 1 <= t < length.
    rows = jnp.take(mats[0], tags[:, :-1], axis=0)
    rows = rows @ mats[1].T if low_rank else rows
    has_prev = jnp.concatenate([jnp.zeros_like(valid[:, :1]), valid[:, 1:]], axis=1)
    forward = jnp.where(has_prev[..., None], x + jnp.concatenate([pad, rows], axis=1), x)
    one_hot = tags[..., None] == jnp.arange(num_tags)
    gold = jnp.sum(jnp.where(valid[..., None] & one_hot, forward, 0), axis=(1, 2))
    logits = [forward]
    if direction != "forward":
        # Backward context: column g[:, y_{t+1}] (= L R[y_{t+1}]ᵀ) for t + 1 < length.
        if low_rank:
            cols = jnp.take(mats[1], tags[:, 1:], axis=0) @ mats[0].T
        else:
            cols = jnp.take(mats[0].T, tags[:, 1:], axis=0)
        has_next = jnp.concatenate([valid[:, 1:], jnp.zeros_like(valid[:, :1])], axis=1)
        backward = jnp.where(has_next[..., None], x + jnp.concatenate([cols, pad], axis=1), x)
        logits = [backward] if direction == "backward" else [forward, backward]
    norm = logsumexp(jnp.stack(logits), axis=-1)  # [directions, N, T]
    norm = jnp.sum(jnp.where(valid, norm, 0), axis=-1)
    feasible = norm != -jnp.inf  # else the gold path is impossible too: -inf, no NaN
    ll = jnp.where(feasible, gold - jnp.where(feasible, norm, 0), -jnp.inf)
    return jnp.mean(ll, axis=0)


@functools.partial(jax.jit, static_argnames=("direction", "holes"))
def _memm(emissions, tags, mats, mask, direction, holes):
    dtype = compute_dtype(emissions, *mats)
    x, lengths, _, order, _ = compact_rows(emissions, mask, holes, dtype)
    tags = reorder(tags.reshape(x.shape[:2]), order)
    mats = tuple(m.astype(dtype) for m in mats)
    ll = _memm_core(x, tags, mats, lengths, direction)
    return poison(ll, nan_rows(x, lengths, links=mats))


def memm_log_likelihood(
    emissions: jax.Array,
    tags: jax.Array,
    transitions: Transitions,
    mask: jax.Array | None = None,
    *,
    lengths: jax.Array | None = None,
    direction: Direction = "forward",
) -> jax.Array:
    """Per-sequence MEMM / Bi-MEMM log-likelihood (the loss is its negation).

    Math: forward ``Σ_t log softmax_j(g(y_{t-1}, j) + f_t(j))[y_t]`` (no transition at
    ``t = 1``); backward ``Σ_t log softmax_j(g(j, y_{t+1}) + f_t(j))[y_t]`` (no transition
    at a sequence's last position); ``"both"`` returns their mean, so its negation is the
    Bi-MEMM loss (mean of both directions' negative log-likelihoods).

    Args:
      emissions: ``[..., T, K]`` emission scores (computed in float32 at least).
      tags: ``[..., T]`` gold integer tags in ``[0, K)`` (anything at padded positions).
      transitions: ``[K, K]`` scores ``g(i, j)`` of ``i -> j`` (``-inf`` disallows) or a
        low-rank pair ``(L, R)`` of ``[K, d]`` arrays with ``g = L Rᵀ``.
      mask: optional ``[..., T]`` valid positions (holes allowed: a masked position is
        skipped).
      lengths: optional ``[...]`` lengths (instead of ``mask``).
      direction: ``"forward"``, ``"backward"`` or ``"both"``.

    Returns:
      ``[...]`` log-likelihoods (0 for rows without valid positions, ``-inf`` for rows
      without a feasible path).

    Reference: McCallum et al. (2000); Su Jianlin (2020), https://kexue.fm/archives/7213.

    Example:
      >>> import jax.numpy as jnp
      >>> emissions = jnp.zeros((3, 4))  # uniform: each step is 1/4
      >>> ll = memm_log_likelihood(emissions, jnp.array([0, 1, 2]), jnp.zeros((4, 4)))
      >>> float(jnp.exp(ll))
      0.015625
    """
    fn = "memm_log_likelihood"
    if direction not in ("forward", "backward", "both"):
        raise ValueError(
            f"{fn}: direction must be 'forward', 'backward' or 'both', got {direction!r}."
        )
    emissions = check_emissions(fn, emissions)
    *batch_shape, num_steps, num_tags = emissions.shape
    batch_shape = tuple(batch_shape)
    kind, trans = _check_transitions(fn, transitions, num_tags)
    mats = tuple(trans) if kind == "low_rank" else (trans,)
    mask, holes = check_mask(fn, mask, lengths, batch_shape, num_steps)
    tags = check_tags(fn, tags, mask, num_tags)
    return _memm(emissions, tags, mats, mask, direction, holes).reshape(batch_shape)
