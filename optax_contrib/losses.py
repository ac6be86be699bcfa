"""Multi-label "softmax + cross-entropy" (ZLPR) losses.

The ZLPR loss (zero-bounded log-sum-exp & pairwise rank-based) treats multi-label
classification as "every target score above every non-target score, with 0 as
the threshold between them". For raw scores ``s`` (no sigmoid, no softmax),
positives ``pos`` and negatives ``neg``::

    L = log(1 + Σ_{i∈neg} exp(s_i)) + log(1 + Σ_{j∈pos} exp(-s_j))

and class ``i`` is predicted when ``s_i > 0``. All functions here follow the
optax loss conventions: they are pure, take the class axis last, return one
loss per example (shape ``logits.shape[:-1]``) and do no reduction.

Non-finite inputs, for every loss here (dense, soft, thresholded, sparse):

* a ``-inf`` logit marks an absent class: it is dropped from both sums whatever its
  label, with a zero gradient (masking classes by their logits);
* a ``+inf`` logit on a class with a negative weight (label ``t < 1``) gives the true
  loss ``+inf``, with a finite gradient (the limit of the softmax weights: 1 on that
  logit, shared equally if several are ``+inf``); on a positive class (``t = 1``) its
  term vanishes;
* a NaN logit or a NaN (traced) soft label in an included class makes that example's
  loss and gradient NaN; classes excluded by ``where`` are ignored whatever they hold;
* float16 / bfloat16 are computed in float32 and rounded back to the input dtype, so
  a loss that rounds beyond the dtype's largest value (float16: 65504, reachable only
  with logits of that size) overflows to ``+inf``; its gradient stays finite.

References:
  Su Jianlin, "Generalising softmax + cross-entropy to multi-label
  classification" (2020), https://kexue.fm/archives/7359 ;
  Su et al., "ZLPR: A Novel Loss for Multi-label Classification" (2022),
  https://arxiv.org/abs/2208.02955 (soft-label and sparse variants).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "multilabel_categorical_crossentropy",
    "multilabel_predict",
    "multilabel_probabilities",
    "sparse_multilabel_categorical_crossentropy",
]


# --------------------------------------------------------------------------- validation


def _is_concrete(x: ArrayLike) -> bool:
    """True when the value of ``x`` is known at trace time (not a JAX tracer)."""
    return not isinstance(x, jax.core.Tracer)


def _as_logits(logits: ArrayLike, fn: str) -> jax.Array:
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"{fn}: `logits` must be a real floating array, got dtype {logits.dtype}.")
    if logits.ndim < 1:
        raise ValueError(
            f"{fn}: `logits` must have at least one axis (classes last), got a scalar."
        )
    return logits


def _check_threshold(threshold: ArrayLike, shape: tuple[int, ...], fn: str) -> None:
    tshape = jnp.shape(threshold)
    try:
        out = np.broadcast_shapes(tshape, shape)
    except ValueError:
        out = None
    if out != shape:
        raise ValueError(
            f"{fn}: `threshold` of shape {tshape} must broadcast to the logits shape {shape}."
        )


def _check_where(where: ArrayLike | None, shape: tuple[int, ...], fn: str) -> jax.Array | None:
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"{fn}: `where` must be a boolean array, got dtype {where.dtype}.")
    try:
        out = np.broadcast_shapes(where.shape, shape)
    except ValueError:
        out = None
    if out != shape:
        raise ValueError(
            f"{fn}: `where` of shape {where.shape} must broadcast to the logits shape {shape}."
        )
    return where


def _compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """float16 / bfloat16 are computed in float32; float32 and float64 as they are."""
    return jnp.promote_types(dtype, jnp.float32)


# --------------------------------------------------------------------------- numerics


def _log1p_sum_exp_parts(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``log(1 + Σ_i e^{y_i})`` over the last axis and its gradient ``p = ∂/∂y``.

    ``-inf`` entries contribute nothing (``p_i = 0``); any ``+inf`` entry makes the value
    ``+inf`` with the gradient shared among the ``+inf`` entries (the limit of the
    softmax weights, so finite); any NaN entry makes value and gradient NaN.
    """
    finite = jnp.isfinite(y)
    yf = jnp.where(finite, y, 0)
    # max(0, max_finite y) -- the "1" of log(1 + ...) is exp(0).
    m = jnp.max(yf, axis=-1, where=finite, initial=0.0, keepdims=True)
    e = jnp.where(finite, jnp.exp(yf - m), 0)
    s = jnp.sum(e, axis=-1)
    m0 = m[..., 0]
    # m == 0: log1p keeps full precision for a small sum; m > 0: exp(-m) + s >= 1.
    value = jnp.where(m0 > 0, m0 + jnp.log(jnp.exp(-m0) + s), jnp.log1p(s))
    p = e / (jnp.exp(-m0) + s)[..., None]
    pinf = y == jnp.inf
    n_inf = jnp.sum(pinf, axis=-1)
    value = jnp.where(n_inf > 0, jnp.inf, value)
    p = jnp.where((n_inf > 0)[..., None], pinf / jnp.maximum(n_inf, 1)[..., None], p)
    nan = jnp.any(jnp.isnan(y), axis=-1)
    return jnp.where(nan, jnp.nan, value), jnp.where(nan[..., None], jnp.nan, p)


@jax.custom_jvp
def _log1p_sum_exp(y: jax.Array) -> jax.Array:
    """``log(1 + Σ_i e^{y_i})`` over the last axis; see :func:`_log1p_sum_exp_parts`."""
    return _log1p_sum_exp_parts(y)[0]


@_log1p_sum_exp.defjvp
def _log1p_sum_exp_jvp(primals, tangents):
    value, p = _log1p_sum_exp_parts(primals[0])
    dy = tangents[0]
    return value, jnp.sum(jnp.where(p != 0, p * dy, 0), axis=-1)


def _weighted(x: jax.Array, w: jax.Array) -> jax.Array:
    """Exponents ``x_i + log w_i`` of ``Σ_i w_i e^{x_i}`` (weights ``w_i >= 0``).

    Entries with ``w_i == 0`` become ``-inf`` and are excluded exactly (they never reach
    an ``exp``, whatever ``x_i`` holds); a NaN weight gives a NaN exponent. Folding the
    weight into the exponent before the max-shift keeps tiny soft weights with huge
    scores from underflowing or overflowing.
    """
    keep = (w > 0) | jnp.isnan(w)
    return jnp.where(keep, x + jnp.log(jnp.where(keep, w, 1)), -jnp.inf)


def _zlpr(z: jax.Array, t: jax.Array, valid: jax.Array) -> jax.Array:
    """Soft ZLPR on shifted scores ``z = s - s0``; ``valid`` marks included classes."""
    z = jnp.where(valid, z, 0)  # excluded classes (-inf or where=False): no NaN gradients
    pos = _log1p_sum_exp(_weighted(-z, jnp.where(valid, t, 0)))
    neg = _log1p_sum_exp(_weighted(z, jnp.where(valid, 1 - t, 0)))
    return pos + neg


def _dense_core(
    logits: jax.Array,
    labels: jax.Array,
    threshold: ArrayLike,
    where: jax.Array | None,
) -> jax.Array:
    cdtype = _compute_dtype(logits.dtype)
    s = logits.astype(cdtype)
    valid = s != -jnp.inf  # -inf logits mark absent classes (NaN stays: NaN loss)
    if where is not None:
        valid = valid & where
    t = jnp.clip(labels.astype(cdtype), 0, 1)
    z = s - jnp.asarray(threshold, cdtype)
    return _zlpr(z, t, valid).astype(logits.dtype)


# --------------------------------------------------------------------------- public API


def multilabel_categorical_crossentropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    threshold: ArrayLike = 0.0,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Multi-label "softmax + cross-entropy" (ZLPR) loss, hard or soft labels.

    With scores ``s = logits``, threshold ``s0`` and labels ``t ∈ [0, 1]``::

        L = log(e^{s0} + Σ_i (1 - t_i) e^{s_i}) + log(e^{-s0} + Σ_i t_i e^{-s_i})
          = log(1 + Σ_i (1 - t_i) e^{s_i - s0}) + log(1 + Σ_i t_i e^{-(s_i - s0)})

    One formula covers both label kinds: for multi-hot ``t ∈ {0, 1}`` it is exactly
    the hard ZLPR loss ``log(e^{s0} + Σ_neg e^{s_i}) + log(e^{-s0} + Σ_pos e^{-s_j})``,
    because classes with ``t == 0`` are excluded from the positive sum and classes
    with ``t == 1`` from the negative sum *exactly* (zero weights never reach an
    ``exp``; no ``log(eps)`` or ``1e12`` constant). For soft labels the minimiser
    of a class's terms is ``sigmoid(2 (s_i - s0)) = t_i`` (see
    :func:`multilabel_probabilities`). With one class and hard labels the loss is
    binary cross-entropy on logits, ``softplus(-s)`` / ``softplus(s)``.

    Args:
      logits: ``[..., num_classes]`` raw scores (no sigmoid / softmax), any float
        dtype. Entries equal to ``-inf`` are treated as absent classes (dropped from
        both sums whatever their label) with finite, zero gradients; ``+inf`` and NaN
        follow the module docstring (``+inf`` loss with a finite gradient / NaN).
      labels: same shape as ``logits``; multi-hot (0/1, bool, int or float) or soft
        targets in ``[0, 1]``. Concrete labels outside ``[0, 1]`` (or NaN) raise;
        traced labels are clipped to ``[0, 1]``, and a traced NaN label gives NaN.
      threshold: the decision threshold ``s0`` (default 0), a scalar or an array
        broadcastable to ``logits`` (per-class thresholds use the shifted form).
      where: optional boolean mask broadcastable to ``logits``; classes where it is
        ``False`` are excluded entirely (as in optax losses' ``where``).

    Returns:
      Loss of shape ``logits.shape[:-1]`` in ``logits.dtype``. float16 / bfloat16
      inputs are computed in float32 and rounded back: finite for finite logits
      whenever the loss fits the dtype, ``+inf`` beyond (float16: past 65504).

    Raises:
      TypeError: non-float ``logits`` or non-bool ``where``.
      ValueError: scalar ``logits``, ``labels`` shape different from ``logits``,
        concrete labels outside ``[0, 1]``, non-broadcastable ``threshold``/``where``.

    References:
      Su Jianlin, https://kexue.fm/archives/7359 (2020); Su et al., "ZLPR: A Novel
      Loss for Multi-label Classification", https://arxiv.org/abs/2208.02955.

    Example:
      >>> import jax.numpy as jnp
      >>> logits = jnp.array([[2.0, -1.0, 0.5], [-3.0, 1.0, -jnp.inf]])
      >>> labels = jnp.array([[1, 0, 1], [0, 1, 1]])
      >>> print(jnp.round(multilabel_categorical_crossentropy(logits, labels), 4))
      [0.8682 0.3618]
    """
    fn = "multilabel_categorical_crossentropy"
    if _is_concrete(labels):
        labels_np = np.asarray(labels)
        if labels_np.size and not (
            np.all(labels_np >= 0) and np.all(labels_np <= 1)
        ):  # NaN fails too
            raise ValueError(f"{fn}: `labels` must lie in [0, 1] (multi-hot or soft targets).")
    logits = _as_logits(logits, fn)
    labels = jnp.asarray(labels)
    if labels.shape != logits.shape:
        raise ValueError(
            f"{fn}: `labels` must have the shape of `logits` {logits.shape}, got {labels.shape}."
        )
    if not (jnp.issubdtype(labels.dtype, jnp.number) or labels.dtype == jnp.bool_):
        raise TypeError(f"{fn}: `labels` must be numeric or bool, got dtype {labels.dtype}.")
    _check_threshold(threshold, logits.shape, fn)
    where = _check_where(where, logits.shape, fn)
    return _dense_core(logits, labels, threshold, where)


def sparse_multilabel_categorical_crossentropy(
    logits: ArrayLike,
    label_ids: ArrayLike,
    *,
    threshold: ArrayLike = 0.0,
    mask_zero: bool = False,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Sparse ZLPR loss: positives given as class ids, for many classes.

    For ``logits [..., C]`` and positive ids ``label_ids [..., P]`` (``P << C``) this
    is the hard ZLPR loss of :func:`multilabel_categorical_crossentropy` on the
    multi-hot labels the ids describe. The article's / bert4keras formulation is, with
    ``a = logsumexp(s ∪ {0})`` and ``b = logsumexp(s_pos)``::

        pos = logsumexp(-s_pos ∪ {0}),   neg = a + log(1 - e^{b - a}),   L = pos + neg

    ``neg`` equals ``log(1 + Σ_{i∉pos} e^{s_i})``. Computing it as ``a + log(1 -
    e^{b-a})`` cancels catastrophically once the positives dominate (float32: when
    the negatives carry less than about 1e-7 of ``e^a``, i.e. for confident
    predictions), which is why bert4keras clips ``1 - e^{b-a}`` at ``1e-7``; the
    clipped value is wrong and its gradient pushes the positives *down*. Here the
    ids are instead scattered into a boolean ``[..., C]`` mask (the same O(C) work
    and memory as ``a`` itself), and both sums are taken over the mask, so the
    value is exact in every regime and equal to the dense form. Only the labels are
    sparse: they cost ``P`` integers per example instead of ``C``.

    Args:
      logits: ``[..., C]`` raw scores, any float dtype; ``-inf`` entries are absent
        classes (excluded, NaN-free gradients); ``+inf`` and NaN as in the dense form.
      label_ids: ``[..., P]`` integer ids of the positive classes, leading shape
        equal to ``logits.shape[:-1]``. Duplicate ids count once (the positives are
        a set: the result equals the dense loss on the multi-hot labels). Concrete
        ids must lie in ``[0, C)``; traced ids cannot be checked, and out-of-range
        ids (negative or ``>= C``) are then *ignored* like padding (never wrapped
        or clipped onto a real class): under ``jit`` an id such as ``-1`` pads a
        row with fewer positives.
      threshold: decision threshold ``s0`` as in the dense form.
      mask_zero: if ``True``, id ``0`` is padding and class 0 is removed from the
        problem entirely (it is then not a valid label nor a negative), as in
        bert4keras.
      where: optional boolean mask broadcastable to ``logits``; ``False`` excludes a
        class entirely.

    Returns:
      Loss of shape ``logits.shape[:-1]`` in ``logits.dtype`` (float16 / bfloat16
      computed in float32 and rounded back, ``+inf`` beyond the dtype's range).

    Raises:
      TypeError: non-float ``logits``, non-integer ``label_ids`` or non-bool ``where``.
      ValueError: mismatched leading shapes, scalar inputs, concrete ids out of range.

    References:
      Su et al., "ZLPR: A Novel Loss for Multi-label Classification",
      https://arxiv.org/abs/2208.02955; bert4keras
      ``sparse_multilabel_categorical_crossentropy``.

    Example:
      >>> import jax.numpy as jnp
      >>> logits = jnp.array([[2.0, -1.0, 0.5], [-3.0, 1.0, 0.0]])
      >>> ids = jnp.array([[0, 2], [1, 1]])  # the duplicate 1 counts once
      >>> print(jnp.round(sparse_multilabel_categorical_crossentropy(logits, ids), 4))
      [0.8682 1.031 ]
    """
    fn = "sparse_multilabel_categorical_crossentropy"
    logits = _as_logits(logits, fn)
    num_classes = logits.shape[-1]
    ids_dtype = jnp.result_type(label_ids)
    if not jnp.issubdtype(ids_dtype, jnp.integer) or ids_dtype == jnp.bool_:
        raise TypeError(f"{fn}: `label_ids` must be an integer array, got dtype {ids_dtype}.")
    if _is_concrete(label_ids):
        ids_np = np.asarray(label_ids)
        if ids_np.size and (ids_np.min() < 0 or ids_np.max() >= num_classes):
            raise ValueError(
                f"{fn}: `label_ids` must lie in [0, {num_classes}) for {num_classes} classes, "
                f"got values in [{ids_np.min()}, {ids_np.max()}]."
            )
    ids = jnp.asarray(label_ids)
    if ids.ndim < 1 or ids.shape[:-1] != logits.shape[:-1]:
        raise ValueError(
            f"{fn}: `label_ids` must have shape {logits.shape[:-1]} + (num_positives,), "
            f"got {ids.shape}."
        )
    _check_threshold(threshold, logits.shape, fn)
    where = _check_where(where, logits.shape, fn)

    ok = (ids >= 0) & (ids < num_classes)
    if mask_zero:
        ok = ok & (ids != 0)
        not_zero = jnp.arange(num_classes) != 0
        where = not_zero if where is None else where & not_zero
    # Scatter the ids into a multi-hot mask; invalid ids go to index C and are dropped.
    lead = ids.shape[:-1]
    rows = int(np.prod(lead, dtype=np.int64))
    safe = jnp.where(ok, ids, num_classes).reshape(rows, ids.shape[-1])
    hot = jnp.zeros((rows, num_classes), jnp.bool_)
    hot = hot.at[jnp.arange(rows)[:, None], safe].set(True, mode="drop")
    return _dense_core(logits, hot.reshape(logits.shape), threshold, where)


def multilabel_predict(logits: ArrayLike, threshold: ArrayLike = 0.0) -> jax.Array:
    """Predicted label set of a ZLPR-trained model: ``logits > threshold``.

    The ZLPR loss puts the decision boundary at the threshold ``s0`` (default 0), so
    no calibration or per-class tuning is needed to decode.

    Args:
      logits: ``[..., num_classes]`` raw scores.
      threshold: ``s0`` used in training (scalar or broadcastable array).

    Returns:
      Boolean array of the shape of ``logits``: ``+inf`` is predicted, ``-inf`` is
      not. A NaN score is *not* predicted (an IEEE comparison with NaN is false and a
      boolean cannot carry NaN); :func:`multilabel_probabilities` gives NaN for it, so
      use that (or ``jnp.isnan``) where scores may be NaN.

    References:
      Su Jianlin, https://kexue.fm/archives/7359 (2020).

    Example:
      >>> import jax.numpy as jnp
      >>> print(multilabel_predict(jnp.array([2.0, -1.0, 0.0, -jnp.inf])))
      [ True False False False]
    """
    logits = _as_logits(logits, "multilabel_predict")
    _check_threshold(threshold, logits.shape, "multilabel_predict")
    return logits > threshold


def multilabel_probabilities(logits: ArrayLike, *, threshold: ArrayLike = 0.0) -> jax.Array:
    r"""Per-class probabilities ``sigmoid(2 (s - s0))`` of ZLPR scores.

    Why the factor 2: for one class the soft loss is ``log(1 + t e^{-s}) +
    log(1 + (1 - t) e^{s})`` whose derivative vanishes where ``t e^{-s} = (1 - t)
    e^{s}``, i.e. ``e^{2s} = t / (1 - t)``, i.e. ``sigmoid(2 s) = t``. So a model
    trained with soft targets ``t`` is calibrated in this sense (and
    ``sigmoid(2 s) > 1/2`` exactly when ``s > 0``, matching
    :func:`multilabel_predict`). With hard labels the scores are only trained to
    rank and to cross the threshold, so treat these as scores, not frequencies.

    Args:
      logits: ``[..., num_classes]`` raw scores (``-inf`` gives probability 0,
        ``+inf`` probability 1, NaN gives NaN).
      threshold: ``s0`` used in training.

    Returns:
      Array of the shape and dtype of ``logits`` (computed in at least float32).

    References:
      Su et al., "ZLPR: A Novel Loss for Multi-label Classification",
      https://arxiv.org/abs/2208.02955 (soft-label ZLPR).

    Example:
      >>> import jax.numpy as jnp
      >>> print(jnp.round(multilabel_probabilities(jnp.array([0.0, 1.0, -jnp.inf])), 4))
      [0.5    0.8808 0.    ]
    """
    logits = _as_logits(logits, "multilabel_probabilities")
    _check_threshold(threshold, logits.shape, "multilabel_probabilities")
    cdtype = _compute_dtype(logits.dtype)
    z = logits.astype(cdtype) - jnp.asarray(threshold, cdtype)
    return jax.nn.sigmoid(2 * z).astype(logits.dtype)
