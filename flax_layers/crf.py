"""Linear-chain CRF, functional API: likelihood, partition, marginals, Viterbi, n-best.

A path ``y`` through ``K`` tags over the valid positions ``v_1 < ... < v_L`` scores

    score(y) = start(y_{v_1}) + Σ_i f_{v_i}(y_{v_i})
               + Σ_{i>1} g(y_{v_{i-1}}, y_{v_i}) + end(y_{v_L})

with emissions ``f`` ``[..., T, K]``, transitions ``g`` ``[K, K]`` (``g[i, j]`` scores
``i -> j``) and optional start/end scores ``[K]``. ``log P(y|x) = score(y) - log Z`` where
``log Z = logsumexp_y score(y)`` comes from the forward recursion
``α_{t+1}(j) = logsumexp_i(α_t(i) + g(i, j)) + f_{t+1}(j)``.

These functions are thin wrappers over the operations of
:class:`flax_layers.LinearChainCRF` (which adds entropy, KL, sampling, k-best and MBR
decoding); both run the same jitted dynamic programs. Three algorithms compute
``log Z`` (all give the same values and gradients):

* ``"rescaled"`` (default, fastest on CPU): the forward and backward recursions as matrix
  products in probability space, renormalised every step, in one loop; the gradient
  (tag marginals, expected transition counts) is a ``custom_vjp`` that costs no second
  scan. A local identity of the two recursions certifies that no probability mass was
  lost to under/overflow; if it fails anywhere in the batch (extreme scores, a NaN, a row
  without a feasible path) the batch is recomputed exactly in log space.
* ``"sequential"``: the log-space scan, differentiated by autodiff. With
  ``checkpoint=True`` its steps are rematerialised in ``√T`` blocks, so the backward pass
  of very long sequences stores ``O(√T)`` forward vectors.
* ``"parallel"``: a balanced tree of rescaled matrix products (``O(log T)`` depth, meant
  for accelerators and long sequences), with an exact log-space fallback.

Masks may have holes: a masked position is skipped, the chain links the neighbouring
valid positions, and start/end apply to the first/last valid position. Pass a
boolean/0-1 ``mask`` ``[..., T]`` or integer ``lengths`` ``[...]`` (right padding). Rows
without a valid position have ``log Z = 0``, log-likelihood 0, marginals 0, Viterbi tags
-1 and score 0. Forbidden transitions are ``-inf`` scores (see
:mod:`flax_layers.tag_schemes`); a row without a feasible path has log-partition,
log-likelihood and Viterbi score ``-inf`` and zero gradients. A NaN in an input that
enters a row's result makes that result NaN.

Computation is in float32 (or float64 with x64) whatever the emission dtype (bf16/fp16
emissions are upcast; their gradient comes back in their own dtype).

References: Lafferty, McCallum, Pereira, "Conditional Random Fields: Probabilistic Models
for Segmenting and Labeling Sequence Data" (ICML 2001); Rabiner, "A Tutorial on Hidden
Markov Models" (Proc. IEEE 1989; scaled forward-backward); Särkkä & García-Fernández,
"Temporal Parallelization of Bayesian Smoothers" (2021; associative scans); Su Jianlin,
"简明条件随机场CRF介绍" (2018), https://kexue.fm/archives/5542.
"""

from __future__ import annotations

from typing import Literal

import jax
import numpy as np

from flax_layers import _ops
from flax_layers._chain import check_algorithm, check_tags, validate

__all__ = [
    "crf_log_likelihood",
    "crf_log_partition",
    "crf_marginals",
    "crf_sequence_score",
    "viterbi_decode",
    "viterbi_nbest",
]

Algorithm = Literal["rescaled", "sequential", "parallel"]


def crf_log_partition(
    emissions: jax.Array,
    transitions: jax.Array,
    mask: jax.Array | None = None,
    start: jax.Array | None = None,
    end: jax.Array | None = None,
    *,
    lengths: jax.Array | None = None,
    algorithm: Algorithm = "rescaled",
    checkpoint: bool = False,
) -> jax.Array:
    """Log partition function ``log Z = logsumexp_y score(y)`` of a linear-chain CRF.

    Math: ``α_1 = start + f_1``, ``α_{t+1}(j) = logsumexp_i(α_t(i) + g(i, j)) + f_{t+1}(j)``,
    ``log Z = logsumexp_j(α_L(j) + end(j))``; its gradient with respect to the emissions
    is the tag marginals, with respect to ``g`` the expected transition counts.

    Args:
      emissions: ``[..., T, K]`` scores ``f_t(k)`` (any float dtype; computed in float32).
      transitions: ``[K, K]`` scores ``g(i, j)`` of ``i -> j``; ``-inf`` disallows.
      mask: optional ``[..., T]`` boolean/0-1 valid positions (holes allowed: a masked
        position is skipped).
      start: optional ``[K]`` scores of the first tag.
      end: optional ``[K]`` scores of the last tag.
      lengths: optional ``[...]`` integer lengths (instead of ``mask``).
      algorithm: ``"rescaled"`` (default), ``"sequential"`` or ``"parallel"`` (see module
        docstring); all agree to rounding.
      checkpoint: rematerialise the scan in ``√T`` blocks for the backward pass (with
        ``algorithm="sequential"``; for very long sequences).

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
    check_algorithm(fn, algorithm, checkpoint)
    inputs, holes = validate(
        fn, emissions, transitions, mask=mask, lengths=lengths, start=start, end=end
    )
    return _ops.log_partition(inputs, holes=holes, algorithm=algorithm, checkpoint=checkpoint)


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
      tags: ``[..., T]`` integer tags (values at masked positions are ignored).
      transitions: ``[K, K]`` transition scores.
      mask: optional ``[..., T]`` valid positions (holes allowed).
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
    inputs, holes = validate(
        fn, emissions, transitions, mask=mask, lengths=lengths, start=start, end=end
    )
    tags = check_tags(fn, tags, inputs.mask, inputs.emissions.shape[-1])
    return _ops.sequence_score(inputs, tags, holes=holes)


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
    checkpoint: bool = False,
) -> jax.Array:
    """Per-sequence CRF log-likelihood ``log P(y|x) = score(y) - log Z`` (pytorch-crf's sign).

    The training loss is its negation (pytorch-crf's ``-crf(emissions, tags, mask,
    reduction="none")``). Gradients: ``∂/∂f_t(k) = 1[y_t = k] - P(y_t = k)`` and
    ``∂/∂g(i, j) = #(i -> j in y) - E[#(i -> j)]``.

    Args:
      emissions: ``[..., T, K]`` emission scores (bf16/fp16 are computed in float32).
      tags: ``[..., T]`` gold integer tags in ``[0, K)`` (anything at masked positions).
      transitions: ``[K, K]`` transition scores (``-inf`` = disallowed).
      mask: optional ``[..., T]`` valid positions (holes allowed).
      start: optional ``[K]`` start scores.
      end: optional ``[K]`` end scores.
      lengths: optional ``[...]`` lengths (instead of ``mask``).
      algorithm: partition-function algorithm, see :func:`crf_log_partition`.
      checkpoint: see :func:`crf_log_partition`.

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
    check_algorithm(fn, algorithm, checkpoint)
    inputs, holes = validate(
        fn, emissions, transitions, mask=mask, lengths=lengths, start=start, end=end
    )
    tags = check_tags(fn, tags, inputs.mask, inputs.emissions.shape[-1])
    return _ops.log_prob(inputs, tags, holes=holes, algorithm=algorithm, checkpoint=checkpoint)


def crf_marginals(
    emissions: jax.Array,
    transitions: jax.Array,
    mask: jax.Array | None = None,
    start: jax.Array | None = None,
    end: jax.Array | None = None,
    *,
    lengths: jax.Array | None = None,
    algorithm: Algorithm = "rescaled",
    checkpoint: bool = False,
) -> jax.Array:
    """Per-position tag marginals ``P(y_t = k | x)`` (forward-backward).

    Math: ``P(y_t = k) = ∂ log Z / ∂ f_t(k) = α_t(k) β_t(k) / Z``; with the default
    algorithm this is the scaled forward-backward pass of the ``custom_vjp``.

    Args:
      emissions: ``[..., T, K]`` emission scores.
      transitions: ``[K, K]`` transition scores.
      mask: optional ``[..., T]`` valid positions (holes allowed).
      start: optional ``[K]`` start scores.
      end: optional ``[K]`` end scores.
      lengths: optional ``[...]`` lengths (instead of ``mask``).
      algorithm: see :func:`crf_log_partition`.
      checkpoint: see :func:`crf_log_partition`.

    Returns:
      ``[..., T, K]`` marginals in the compute dtype: rows sum to 1 at valid positions and
      are 0 at masked ones.

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
    check_algorithm(fn, algorithm, checkpoint)
    inputs, holes = validate(
        fn, emissions, transitions, mask=mask, lengths=lengths, start=start, end=end
    )
    return _ops.marginals(inputs, holes=holes, algorithm=algorithm, checkpoint=checkpoint)


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
      mask: optional ``[..., T]`` valid positions (holes allowed).
      start: optional ``[K]`` start scores.
      end: optional ``[K]`` end scores.
      lengths: optional ``[...]`` lengths (instead of ``mask``).

    Returns:
      ``(tags, score)``: ``[..., T]`` int32 tags with -1 at masked positions, and the
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
    inputs, holes = validate(
        "viterbi_decode", emissions, transitions, mask=mask, lengths=lengths, start=start, end=end
    )
    return _ops.argmax(inputs, holes=holes)


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
      mask: optional ``[..., T]`` valid positions (holes allowed).
      start: optional ``[K]`` start scores.
      end: optional ``[K]`` end scores.
      lengths: optional ``[...]`` lengths (instead of ``mask``).

    Returns:
      ``(tags, scores)``: ``[..., n, T]`` int32 tags (-1 at masked positions and for
      slots beyond the number of feasible paths, whose score is ``-inf``) and ``[..., n]``
      scores in decreasing order (a row without valid positions has one empty path:
      scores ``[0, -inf, ...]``).

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
    inputs, holes = validate(
        fn, emissions, transitions, mask=mask, lengths=lengths, start=start, end=end
    )
    return _ops.top_k(inputs, holes=holes, k=int(n))
