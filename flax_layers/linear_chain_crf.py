"""The linear-chain CRF as a distribution over tag paths: a pure, jit-able pytree.

A path ``y`` through ``K`` tags over the valid positions ``v_1 < ... < v_L`` of a row
scores

    score(y) = start(y_{v_1}) + Σ_i f_{v_i}(y_{v_i})
               + Σ_{i>1} g(y_{v_{i-1}}, y_{v_i}) + end(y_{v_L})

and ``p(y) = exp(score(y) - log Z)``. Any position may be masked: a masked position is
skipped, so the chain links neighbouring valid positions (a masked ``[CLS]``, sub-word
continuation pieces, gaps) and every operation equals the same operation on the
compacted sequence. A row without valid positions has one (empty) path: ``log Z = 0``.
Tags are ``-1`` at masked positions in every output. ``-inf`` scores forbid (see
:mod:`flax_layers.tag_schemes`); a row without a feasible path has ``log Z = -inf`` and
zero gradients. A NaN in an input that enters a row's result makes that result NaN.

Derived quantities use the unary marginals ``μ_t`` and the pairwise marginals ``ξ_t`` of
the previous valid position and ``t`` (both gradients of ``log Z``):

    E_p[score_q] = Σ_t ⟨μ_t, f^q_t⟩ + Σ_t ⟨ξ_t, g^q⟩ + ⟨μ_first, s^q⟩ + ⟨μ_last, e^q⟩
    H(p) = log Z_p - E_p[score_p],   H(p, q) = log Z_q - E_p[score_q],
    KL(p‖q) = H(p, q) - H(p)

(``0 · (-inf)`` counts as 0; if ``p`` gives mass to a path that ``q`` forbids,
``H(p, q) = KL = +inf``).

References: Lafferty, McCallum, Pereira (ICML 2001); Li & Eisner, "First- and
Second-Order Expectation Semirings" (EMNLP 2009); Rush, "Torch-Struct" (ACL 2020 demo);
Stanojević & Sartran, "SynJax" (2023).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flax_layers import _ops
from flax_layers._chain import ChainInputs, check_algorithm, check_tags, is_concrete, validate

__all__ = ["LinearChainCRF"]


@jax.tree_util.register_pytree_node_class
class LinearChainCRF:
    """A linear-chain CRF over tag paths, with exact inference by dynamic programming.

    Args:
      emissions: ``[..., T, K]`` scores ``f_t(k)`` (any float dtype; computed in float32
        or wider).
      transitions: ``[K, K]`` scores ``g(i, j)`` of ``i -> j``; ``-inf`` forbids.
      mask: optional ``[..., T]`` boolean/0-1 valid positions, any pattern (holes allowed).
      lengths: optional ``[...]`` integer lengths (right padding) instead of ``mask``.
      start: optional ``[K]`` scores of the first valid tag.
      end: optional ``[K]`` scores of the last valid tag.
      algorithm: algorithm of ``log_partition``, ``log_prob`` and ``marginals``:
        ``"rescaled"`` (default; probability-space forward-backward), ``"sequential"``
        (log-space scan) or ``"parallel"`` (tree of matrix products, ``O(log T)`` depth);
        all agree to rounding. The other operations use the rescaled pass, with its exact
        log-space fallback, or the max / k-best semirings.
      checkpoint: rematerialise the log-space scan in ``√T`` blocks so that gradients
        store ``O(√T)`` forward vectors (long sequences; needs ``algorithm="sequential"``).

    Reference: Lafferty et al. (2001); Rush (2020); Stanojević & Sartran (2023).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> emissions = jnp.array([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
      >>> crf = LinearChainCRF(emissions, jnp.zeros((2, 2)), mask=jnp.array([1, 0, 1]))
      >>> crf.argmax()  # the masked middle position is skipped
      (Array([ 0, -1,  1], dtype=int32), Array(3., dtype=float32))
      >>> crf.marginals()[1]
      Array([0., 0.], dtype=float32)
      >>> float(crf.kl_divergence(crf))
      0.0
      >>> jax.jit(lambda d: d.log_partition())(crf).round(4)
      Array(3.4402, dtype=float32)
    """

    def __init__(
        self,
        emissions,
        transitions,
        *,
        mask=None,
        lengths=None,
        start=None,
        end=None,
        algorithm: str = "rescaled",
        checkpoint: bool = False,
    ):
        self._setup(
            "LinearChainCRF",
            emissions,
            transitions,
            mask,
            lengths,
            start,
            end,
            algorithm,
            checkpoint,
        )

    def _setup(self, fn, emissions, transitions, mask, lengths, start, end, algorithm, ckpt):
        check_algorithm(fn, algorithm, ckpt)
        self.inputs, self.holes = validate(
            fn, emissions, transitions, mask=mask, lengths=lengths, start=start, end=end
        )
        self.algorithm = algorithm
        self.checkpoint = bool(ckpt)

    # ---------------------------------------------------------------- pytree protocol

    def tree_flatten(self):
        return tuple(self.inputs), (self.holes, self.algorithm, self.checkpoint)

    @classmethod
    def tree_unflatten(cls, aux, children):
        self = object.__new__(cls)
        self.inputs = ChainInputs(*children)
        self.holes, self.algorithm, self.checkpoint = aux
        return self

    # -------------------------------------------------------------------- attributes

    @property
    def emissions(self) -> jax.Array:
        return self.inputs.emissions

    @property
    def transitions(self) -> jax.Array:
        return self.inputs.transitions

    @property
    def start(self) -> jax.Array:
        return self.inputs.start

    @property
    def end(self) -> jax.Array:
        return self.inputs.end

    @property
    def mask(self) -> jax.Array:
        """``[..., T]`` boolean valid positions."""
        return self.inputs.mask

    @property
    def lengths(self) -> jax.Array:
        """``[...]`` number of valid positions per row."""
        return jnp.sum(self.inputs.mask, axis=-1, dtype=jnp.int32)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return self.inputs.mask.shape[:-1]

    @property
    def num_tags(self) -> int:
        return self.inputs.emissions.shape[-1]

    def _flags(self) -> dict:
        return dict(holes=self.holes, algorithm=self.algorithm, checkpoint=self.checkpoint)

    # -------------------------------------------------------------------- inference

    def log_partition(self) -> jax.Array:
        """``log Z = logsumexp_y score(y)`` ``[...]`` (forward algorithm).

        Math: ``α_1 = start + f_1``, ``α_t(j) = logsumexp_i(α_{t-1}(i) + g(i, j)) + f_t(j)``
        over valid positions, ``log Z = logsumexp_j(α_L(j) + end(j))``.
        """
        return _ops.log_partition(self.inputs, **self._flags())

    def log_prob(self, tags) -> jax.Array:
        """``log p(tags) = score(tags) - log Z`` ``[...]`` (tags at masked positions ignored).

        Args:
          tags: ``[..., T]`` integer tags in ``[0, K)`` at valid positions.
        """
        tags = check_tags("LinearChainCRF.log_prob", tags, self.inputs.mask, self.num_tags)
        return _ops.log_prob(self.inputs, tags, **self._flags())

    def score(self, tags) -> jax.Array:
        """Unnormalised ``score(tags)`` ``[...]`` (``-inf`` for a forbidden path)."""
        tags = check_tags("LinearChainCRF.score", tags, self.inputs.mask, self.num_tags)
        return _ops.sequence_score(self.inputs, tags, holes=self.holes)

    def marginals(self) -> jax.Array:
        """Unary marginals ``P(y_t = k)`` ``[..., T, K]`` (0 at masked positions).

        Math: ``μ_t = ∂ log Z / ∂ f_t`` (forward-backward).
        """
        return _ops.marginals(self.inputs, **self._flags())

    def transition_marginals(self) -> jax.Array:
        """Pairwise marginals ``[..., T, K, K]``: entry ``t`` is
        ``P(y_prev = i, y_t = j)`` for the previous valid position ``prev`` (zero at masked
        positions and at the first valid one). Summed over ``t``: expected transition
        counts ``∂ log Z / ∂ g``."""
        return _ops.transition_marginals(self.inputs, holes=self.holes)

    def argmax(self) -> tuple[jax.Array, jax.Array]:
        """The best path (Viterbi): ``(tags [..., T], score [...])``, ties to lower tags.

        Math: ``δ_t(j) = max_i(δ_{t-1}(i) + g(i, j)) + f_t(j)``, then back-pointers.
        Rows without a feasible path: score ``-inf``, tags ``-1``.
        """
        return _ops.argmax(self.inputs, holes=self.holes)

    def top_k(self, k: int) -> tuple[jax.Array, jax.Array]:
        """The ``k`` best paths, best first: ``(tags [..., k, T], scores [..., k])``.

        Math: the k-best (max-plus over ``k``-lists) semiring with back-pointers; slots
        beyond the number of feasible paths have score ``-inf`` and tags ``-1``.

        Args:
          k: number of paths (a Python int >= 1).
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"LinearChainCRF.top_k: k must be a Python int >= 1, got {k!r}.")
        return _ops.top_k(self.inputs, holes=self.holes, k=int(k))

    def sample(self, key, sample_shape=()) -> jax.Array:
        """Exact samples ``sample_shape + [..., T]`` (int32, ``-1`` at masked positions).

        Math: forward filtering, backward sampling: ``y_L ∝ exp(α_L + end)``, then
        ``y_t ∝ exp(α_t(·) + g(·, y_{t+1}))``, each drawn with one uniform by inverse CDF
        (forbidden moves, weight ``-inf``, add no width to the CDF and are never drawn).

        Args:
          key: a :func:`jax.random.key`.
          sample_shape: leading shape of the samples (a tuple of Python ints).
        """
        if isinstance(sample_shape, (int, np.integer)):
            sample_shape = (sample_shape,)
        sample_shape = tuple(int(s) for s in sample_shape)
        return _ops.sample(self.inputs, key, holes=self.holes, sample_shape=sample_shape)

    def entropy(self) -> jax.Array:
        """Entropy ``H(p) = log Z - E_p[score(y)]`` ``[...]`` (exact)."""
        return _ops.entropy(self.inputs, holes=self.holes)

    def _check_other(self, fn: str, other) -> bool:
        if not isinstance(other, LinearChainCRF):
            raise TypeError(f"{fn}: other must be a LinearChainCRF, got {type(other).__name__}.")
        if other.inputs.emissions.shape != self.inputs.emissions.shape:
            raise ValueError(
                f"{fn}: other must have emissions of shape {self.inputs.emissions.shape}, "
                f"got {other.inputs.emissions.shape}."
            )
        a, b = self.inputs.mask, other.inputs.mask
        if is_concrete(a) and is_concrete(b) and not np.array_equal(np.asarray(a), np.asarray(b)):
            raise ValueError(f"{fn}: other must have the same mask as this distribution.")
        return self.holes or other.holes

    def cross_entropy(self, other: LinearChainCRF) -> jax.Array:
        """Cross-entropy ``H(p, q) = log Z_q - E_p[score_q(y)]`` ``[...]`` (exact).

        Args:
          other: ``q``, a ``LinearChainCRF`` with the same shapes and mask.
        """
        holes = self._check_other("LinearChainCRF.cross_entropy", other)
        return _ops.cross_entropy(self.inputs, other.inputs, holes=holes, kl=False)

    def kl_divergence(self, other: LinearChainCRF) -> jax.Array:
        """``KL(p‖q) = H(p, q) - H(p)`` ``[...]`` (exact, not sampled).

        Args:
          other: ``q``, a ``LinearChainCRF`` with the same shapes and mask.
        """
        holes = self._check_other("LinearChainCRF.kl_divergence", other)
        return _ops.cross_entropy(self.inputs, other.inputs, holes=holes, kl=True)

    def mbr_decode(self) -> tuple[jax.Array, jax.Array]:
        """Minimum-Bayes-risk path: the best path under the summed log unary marginals.

        Returns ``(tags [..., T], score [...])`` with ``score = Σ_t log μ_t(y_t)``; moves
        that score ``-inf`` (forbidden transitions, start or end tags) stay forbidden.
        """
        return _ops.mbr_decode(self.inputs, holes=self.holes)

    def __repr__(self) -> str:
        return (
            f"LinearChainCRF(batch_shape={self.batch_shape}, T={self.inputs.mask.shape[-1]}, "
            f"K={self.num_tags}, algorithm={self.algorithm!r})"
        )
