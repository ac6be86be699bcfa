"""Flax NNX sequence-labelling heads: :class:`CRF` and :class:`MEMM` (Bi-MEMM).

Both modules only hold the transition parameters and call the pure functions of
:mod:`flax_layers.crf` and :mod:`flax_layers.memm`; an encoder produces the emissions.

Learning-rate multiplier: with ``lr_multiplier=m`` the parameter stores ``g / m`` and the
module uses ``g = m · stored`` (the Keras reference does this for its CRF on top of BERT,
with ``m`` = 100-1000). The gradient reaching ``stored`` is ``m ∂L/∂g`` and a step on
``stored`` moves ``g`` ``m`` times as far, so (checked in the tests):

* plain SGD / momentum: ``Δg = -lr · m² · ∂L/∂g``: the learning rate of ``g`` is
  ``m²`` times larger, not ``m`` (pass ``sqrt(m)`` for an ``m``-fold rate);
* Adam, RMSProp, Adafactor and other optimizers invariant to the gradient's scale: the
  step on ``stored`` is the same whatever ``m`` (the ``m`` in the gradient cancels), so
  ``Δg ≈ m ·`` (the step Adam would take on ``g`` directly): an ``m``-fold learning rate,
  as long as ``eps`` is small against ``m |∂L/∂g|``. Simply multiplying the *gradient*
  by ``m`` would do nothing under Adam (it would only act through ``eps``); the
  reparameterisation works because it also multiplies the step.

References: Su Jianlin, "“让Keras更酷一些！”：分层的学习率和自由的梯度" (2019),
https://kexue.fm/archives/6418; bert4keras ``ConditionalRandomField`` and
``MaximumEntropyMarkovModel``.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from flax_layers._chain import check_algorithm
from flax_layers.crf import (
    Algorithm,
    crf_log_likelihood,
    crf_marginals,
    viterbi_decode,
)
from flax_layers.linear_chain_crf import LinearChainCRF
from flax_layers.memm import memm_log_likelihood
from flax_layers.tag_schemes import mask_transitions

__all__ = ["CRF", "MEMM"]

Reduction = Literal["mean", "sum", "token_mean", "none"]


def _check_common(num_tags: int, lr_multiplier: float) -> float:
    if not isinstance(num_tags, int) or num_tags < 1:
        raise ValueError(f"num_tags must be a positive int, got {num_tags!r}.")
    if not (isinstance(lr_multiplier, (int, float)) and lr_multiplier > 0):
        raise ValueError(f"lr_multiplier must be a positive number, got {lr_multiplier!r}.")
    return float(lr_multiplier)


def _reduce(log_likelihood: jax.Array, tokens: jax.Array, reduction: str) -> jax.Array:
    """Negated, reduced log-likelihood: the loss."""
    if reduction == "none":
        return -log_likelihood
    if reduction == "sum":
        return -jnp.sum(log_likelihood)
    if reduction == "mean":
        return -jnp.mean(log_likelihood)
    if reduction == "token_mean":
        return -jnp.sum(log_likelihood) / jnp.maximum(jnp.sum(tokens), 1)
    raise ValueError(f"reduction must be 'mean', 'sum', 'token_mean' or 'none', got {reduction!r}.")


def _num_tokens(emissions: jax.Array, mask, lengths) -> jax.Array:
    if lengths is not None:
        return jnp.sum(lengths)
    if mask is not None:
        return jnp.sum(jnp.asarray(mask).astype(jnp.int32))
    return jnp.asarray(math.prod(jnp.shape(emissions)[:-1]))


class CRF(nnx.Module):
    """Linear-chain CRF head: transitions (and start/end scores), loss and Viterbi decoding.

    Math: ``log P(y|x) = score(y) - log Z`` with
    ``score = start(y_1) + Σ f_t(y_t) + Σ g(y_{t-1}, y_t) + end(y_L)``; see
    :func:`flax_layers.crf.crf_log_likelihood`. Parameters start uniform in
    ``[-0.1, 0.1]`` like pytorch-crf.

    Args:
      num_tags: number of tags ``K``.
      rngs: ``nnx.Rngs`` (uses the ``params`` stream).
      start_end: learn start and end scores (``[K]`` each).
      allowed: optional constraints: a ``[K, K]`` boolean matrix, or the
        ``(allowed, allowed_start, allowed_end)`` triple of
        :func:`flax_layers.tag_schemes.allowed_transitions`. Disallowed moves score
        ``-inf`` in training and decoding.
      lr_multiplier: ``m``; parameters store ``value / m`` (see the module docstring for
        the effect under SGD vs Adam).
      algorithm: partition-function algorithm (``"rescaled"``, ``"sequential"``,
        ``"parallel"``).

    Reference: Lafferty et al. (2001); pytorch-crf; bert4keras ``ConditionalRandomField``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> crf = CRF(3, rngs=nnx.Rngs(0))
      >>> emissions = jnp.zeros((2, 4, 3))
      >>> crf.loss(emissions, jnp.zeros((2, 4), jnp.int32)).shape
      ()
      >>> tags, score = crf.decode(emissions, lengths=jnp.array([4, 2]))
      >>> tags.shape, int(tags[1, 3])
      ((2, 4), -1)
    """

    def __init__(
        self,
        num_tags: int,
        *,
        rngs: nnx.Rngs,
        start_end: bool = True,
        allowed=None,
        lr_multiplier: float = 1.0,
        algorithm: Algorithm = "rescaled",
    ):
        m = _check_common(num_tags, lr_multiplier)
        check_algorithm("CRF", algorithm)
        self.num_tags = num_tags
        self.lr_multiplier = m
        self.algorithm = algorithm
        init = jax.nn.initializers.uniform(0.2)
        key_t, key_s, key_e = jax.random.split(rngs.params(), 3)
        self.transitions = nnx.Param((init(key_t, (num_tags, num_tags)) - 0.1) / m)
        self.start = nnx.Param((init(key_s, (num_tags,)) - 0.1) / m) if start_end else None
        self.end = nnx.Param((init(key_e, (num_tags,)) - 0.1) / m) if start_end else None
        allowed_start = allowed_end = None
        if isinstance(allowed, (tuple, list)):
            if len(allowed) != 3:
                raise ValueError("allowed must be [K, K] or (allowed, start, end).")
            allowed, allowed_start, allowed_end = (jnp.asarray(a, bool) for a in allowed)
            for name, v in (("start", allowed_start), ("end", allowed_end)):
                if v.shape != (num_tags,):
                    raise ValueError(f"allowed {name} must have shape ({num_tags},).")
        if allowed is not None:
            allowed = jnp.asarray(allowed, bool)
            if allowed.shape != (num_tags, num_tags):
                raise ValueError(
                    f"allowed must have shape ({num_tags}, {num_tags}), got {allowed.shape}."
                )
        # Constant masks: pytree data (not nnx.Param), so optimizers leave them alone.
        self.allowed = nnx.data(allowed)
        self.allowed_start = nnx.data(allowed_start)
        self.allowed_end = nnx.data(allowed_end)

    def scores(self) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """Effective ``(transitions, start, end)``: ``m · stored``, constraints applied."""
        m = self.lr_multiplier
        g = m * self.transitions[...]
        start = None if self.start is None else m * self.start[...]
        end = None if self.end is None else m * self.end[...]
        if self.allowed is not None:
            g = mask_transitions(g, self.allowed)
        if self.allowed_start is not None:
            zeros = jnp.zeros((self.num_tags,), g.dtype)
            start = mask_transitions(zeros if start is None else start, self.allowed_start)
            end = mask_transitions(zeros if end is None else end, self.allowed_end)
        return g, start, end

    def log_likelihood(self, emissions, tags, mask=None, *, lengths=None) -> jax.Array:
        """Per-sequence ``log P(tags | emissions)`` ``[...]``."""
        g, start, end = self.scores()
        return crf_log_likelihood(
            emissions, tags, g, mask, start, end, lengths=lengths, algorithm=self.algorithm
        )

    def loss(
        self, emissions, tags, mask=None, *, lengths=None, reduction: Reduction = "mean"
    ) -> jax.Array:
        """Negative log-likelihood, reduced by ``"mean"`` (over sequences), ``"sum"``,
        ``"token_mean"`` or ``"none"``."""
        ll = self.log_likelihood(emissions, tags, mask, lengths=lengths)
        return _reduce(ll, _num_tokens(emissions, mask, lengths), reduction)

    __call__ = loss

    def marginals(self, emissions, mask=None, *, lengths=None) -> jax.Array:
        """Tag marginals ``[..., T, K]`` (0 at masked positions)."""
        g, start, end = self.scores()
        return crf_marginals(
            emissions, g, mask, start, end, lengths=lengths, algorithm=self.algorithm
        )

    def decode(self, emissions, mask=None, *, lengths=None) -> tuple[jax.Array, jax.Array]:
        """Viterbi ``(tags [..., T] with -1 at masked positions, best score [...])``."""
        g, start, end = self.scores()
        return viterbi_decode(emissions, g, mask, start, end, lengths=lengths)

    def distribution(self, emissions, mask=None, *, lengths=None) -> LinearChainCRF:
        """The :class:`flax_layers.LinearChainCRF` of these emissions under this head's
        (constrained) transitions, start and end scores: marginals, entropy, sampling,
        k-best, KL, MBR decoding."""
        g, start, end = self.scores()
        return LinearChainCRF(
            emissions,
            g,
            mask=mask,
            lengths=lengths,
            start=start,
            end=end,
            algorithm=self.algorithm,
        )


class MEMM(nnx.Module):
    """MEMM / Bi-MEMM head: shared transitions (optionally low-rank), loss and decoding.

    Math: per-step softmaxes ``P(y_t | y_{t-1}) = softmax_j(g(y_{t-1}, j) + f_t(j))``;
    with ``bidirectional=True`` the loss is the mean of the left-to-right and the
    right-to-left (``gᵀ``) negative log-likelihoods. ``rank=d`` parameterises
    ``g = L Rᵀ`` with ``L, R ∈ R^{K×d}``. Decoding runs Viterbi with ``g``. See
    :func:`flax_layers.memm.memm_log_likelihood`.

    Args:
      num_tags: number of tags ``K``.
      rngs: ``nnx.Rngs`` (``params`` stream).
      bidirectional: Bi-MEMM (mean of both directions) instead of a left-to-right MEMM.
      rank: ``None`` for a full ``[K, K]`` matrix, else the rank ``d`` of ``g = L Rᵀ``.
      lr_multiplier: ``m``; parameters (``g``, or ``L`` and ``R`` each) store
        ``value / m``.

    Reference: McCallum et al. (2000); Su Jianlin (2020), https://kexue.fm/archives/7213;
    bert4keras ``MaximumEntropyMarkovModel``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> memm = MEMM(5, rngs=nnx.Rngs(0), rank=2)
      >>> emissions = jnp.zeros((2, 4, 5))
      >>> float(memm.loss(emissions, jnp.zeros((2, 4), jnp.int32))) > 0
      True
      >>> memm.decode(emissions)[0].shape
      (2, 4)
    """

    def __init__(
        self,
        num_tags: int,
        *,
        rngs: nnx.Rngs,
        bidirectional: bool = True,
        rank: int | None = None,
        lr_multiplier: float = 1.0,
    ):
        m = _check_common(num_tags, lr_multiplier)
        self.num_tags = num_tags
        self.lr_multiplier = m
        self.bidirectional = bool(bidirectional)
        self.rank = rank
        key_l, key_r = jax.random.split(rngs.params())
        if rank is None:
            init = jax.nn.initializers.uniform(0.2)
            self.transitions = nnx.Param((init(key_l, (num_tags, num_tags)) - 0.1) / m)
            self.left = self.right = None
        else:
            if not isinstance(rank, int) or rank < 1:
                raise ValueError(f"rank must be None or a positive int, got {rank!r}.")
            # g = L Rᵀ gets the standard deviation of U(-0.1, 0.1): d σ⁴ = 0.1² / 3.
            sigma = (0.01 / 3 / rank) ** 0.25
            self.transitions = None
            self.left = nnx.Param(sigma * jax.random.normal(key_l, (num_tags, rank)) / m)
            self.right = nnx.Param(sigma * jax.random.normal(key_r, (num_tags, rank)) / m)

    def _transitions(self):
        m = self.lr_multiplier
        if self.transitions is not None:
            return m * self.transitions[...]
        return m * self.left[...], m * self.right[...]

    def transition_matrix(self) -> jax.Array:
        """Effective ``[K, K]`` transition scores ``g`` (``m · stored``, or ``L Rᵀ``)."""
        t = self._transitions()
        return t if not isinstance(t, tuple) else t[0] @ t[1].T

    def log_likelihood(self, emissions, tags, mask=None, *, lengths=None) -> jax.Array:
        """Per-sequence log-likelihood ``[...]`` (mean of both directions if bidirectional)."""
        return memm_log_likelihood(
            emissions,
            tags,
            self._transitions(),
            mask,
            lengths=lengths,
            direction="both" if self.bidirectional else "forward",
        )

    def loss(
        self, emissions, tags, mask=None, *, lengths=None, reduction: Reduction = "mean"
    ) -> jax.Array:
        """Negative log-likelihood, reduced by ``"mean"`` (over sequences), ``"sum"``,
        ``"token_mean"`` or ``"none"``."""
        ll = self.log_likelihood(emissions, tags, mask, lengths=lengths)
        return _reduce(ll, _num_tokens(emissions, mask, lengths), reduction)

    __call__ = loss

    def decode(self, emissions, mask=None, *, lengths=None) -> tuple[jax.Array, jax.Array]:
        """Viterbi with ``g``: ``(tags [..., T] with -1 at padding, best score [...])``."""
        return viterbi_decode(emissions, self.transition_matrix(), mask, lengths=lengths)
