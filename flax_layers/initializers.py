"""Weight initialisers from a geometric view, and diagnostics for them.

High-dimensional random vectors are nearly orthogonal. A matrix ``W ∈ R^{m×n}``
(``n`` inputs, ``m`` outputs, ``y = W x``) with i.i.d. zero-mean entries of
variance ``σ²`` has ``E[WᵀW] = m σ² I``, so ``σ² = 1/m`` gives ``WᵀW ≈ I`` and
``‖W x‖ ≈ ‖x‖`` when ``m ≥ n``. LeCun uses ``1/n``, Xavier/Glorot ``2/(n+m)``;
ReLU halves the energy, hence He's factor 2. Any zero-mean distribution of the
right variance works: normal, uniform ``±sqrt(3 σ²)``, or a truncated normal
rescaled to the exact variance.

Layout: Flax kernels are stored ``[in, out]`` and applied as ``x @ K``, so
``K = Wᵀ`` and the article's ``WᵀW ≈ I`` reads ``K Kᵀ ≈ I`` (an ``[in, in]``
Gram matrix, rows of ``K`` nearly orthonormal).

All initialisers have the ``jax.nn.initializers`` signature
``init(key, shape, dtype=None, out_sharding=None) -> Array`` and compute the fans
exactly like :func:`jax.nn.initializers.variance_scaling` (``in_axis``,
``out_axis``, ``batch_axis``; every other axis is a convolution's receptive
field), so they can be passed as ``kernel_init`` to ``nnx.Linear``,
``nnx.LinearGeneral``, ``nnx.Conv`` or ``nnx.Einsum``.

Reference:
  Su Jianlin, "Understanding parameter initialisation from a geometric view"
  (2020), https://kexue.fm/archives/7180 .
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

__all__ = [
    "compute_fans",
    "geometric_init",
    "glorot",
    "he",
    "lecun",
    "norm_preservation_ratio",
    "norm_preserving",
    "orthogonality_error",
    "xavier",
]

Initializer = Callable[..., jax.Array]
Axes = int | Sequence[int]
Mode = Literal["fan_in", "fan_out", "fan_avg", "fan_geo_avg"]
Distribution = Literal["normal", "uniform", "truncated_normal"]

_MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
_DISTRIBUTIONS = ("normal", "uniform", "truncated_normal")


def _truncated_std(bound: float = 2.0) -> float:
    """Standard deviation of a standard normal truncated to ``[-bound, bound]``."""
    mass = math.erf(bound / math.sqrt(2.0))
    pdf = math.exp(-0.5 * bound * bound) / math.sqrt(2.0 * math.pi)
    return math.sqrt(1.0 - 2.0 * bound * pdf / mass)


_TRUNCATED_STD = _truncated_std(2.0)  # 0.8796256610342398


def _axes_tuple(axes: Axes, ndim: int, name: str) -> tuple[int, ...]:
    raw = (axes,) if isinstance(axes, int) else tuple(axes)
    out = []
    for a in raw:
        if not isinstance(a, int) or not -ndim <= a < ndim:
            raise ValueError(f"`{name}`={axes!r} is out of range for a {ndim}-d weight shape.")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"`{name}`={axes!r} repeats an axis.")
    return tuple(out)


def _resolve_axes(
    shape: Sequence[int], in_axis: Axes, out_axis: Axes, batch_axis: Axes
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Normalised (in, out, batch, receptive-field) axes of a weight shape."""
    ndim = len(shape)
    if isinstance(in_axis, int) and in_axis == -2 and ndim <= 1:
        raise ValueError(
            f"Can't compute fans of a {ndim}-d weight shape {tuple(shape)} with the default "
            "`in_axis`=-2; the shape must be at least 2-d, or pass `in_axis` explicitly."
        )
    ins = _axes_tuple(in_axis, ndim, "in_axis")
    outs = _axes_tuple(out_axis, ndim, "out_axis")
    batch = _axes_tuple(batch_axis, ndim, "batch_axis")
    if set(ins) & set(outs) or set(ins) & set(batch) or set(outs) & set(batch):
        raise ValueError(
            f"`in_axis`={in_axis!r}, `out_axis`={out_axis!r} and `batch_axis`={batch_axis!r} "
            "must be disjoint."
        )
    field = tuple(a for a in range(ndim) if a not in set(ins) | set(outs) | set(batch))
    return ins, outs, batch, field


def compute_fans(
    shape: Sequence[int],
    in_axis: Axes = -2,
    out_axis: Axes = -1,
    batch_axis: Axes = (),
) -> tuple[float, float]:
    """Effective ``(fan_in, fan_out)`` of a weight shape, as ``variance_scaling`` does.

    ``fan_in = in_size · receptive_field`` and ``fan_out = out_size · receptive_field``
    where ``in_size`` / ``out_size`` are the products of the sizes of ``in_axis`` /
    ``out_axis`` and the receptive field is the product of all axes that are in none
    of ``in_axis``, ``out_axis``, ``batch_axis`` (a convolution's spatial axes).

    For a stride-1 convolution ``fan_out`` is also the right normaliser of the
    *norm-preserving* view: each output position sees ``W_patch x_patch`` with
    ``‖y_pos‖² ≈ out σ² ‖x_patch‖²``, and every input pixel lies in ``receptive_field``
    patches, so ``‖y‖² ≈ fan_out σ² ‖x‖²``.

    Args:
      shape: the weight shape.
      in_axis: axis or axes of the input dimension (default ``-2``).
      out_axis: axis or axes of the output dimension (default ``-1``).
      batch_axis: axes ignored by the fan computation (default none).

    Returns:
      ``(fan_in, fan_out)`` as Python floats.

    Raises:
      ValueError: axes out of range, repeated or overlapping, or a 0/1-d shape with
        the default ``in_axis``.

    Reference:
      ``jax.nn.initializers.variance_scaling``; He et al., "Delving deep into
      rectifiers" (2015), https://arxiv.org/abs/1502.01852 .

    Example:
      >>> compute_fans((3, 3, 16, 32))  # a 3x3 convolution kernel, HWIO
      (144.0, 288.0)
      >>> compute_fans((4, 8, 5, 6), in_axis=(0, 1), out_axis=(2, 3))  # LinearGeneral
      (32.0, 30.0)
    """
    shape = tuple(int(d) for d in shape)
    ins, outs, _, field = _resolve_axes(shape, in_axis, out_axis, batch_axis)
    receptive_field = math.prod(shape[a] for a in field)
    fan_in = math.prod(shape[a] for a in ins) * receptive_field
    fan_out = math.prod(shape[a] for a in outs) * receptive_field
    return float(fan_in), float(fan_out)


def geometric_init(
    scale: float = 1.0,
    mode: Mode = "fan_out",
    distribution: Distribution = "normal",
    *,
    in_axis: Axes = -2,
    out_axis: Axes = -1,
    batch_axis: Axes = (),
    dtype: DTypeLike | None = None,
) -> Initializer:
    r"""Zero-mean i.i.d. initialiser of variance ``scale / fan`` (variance scaling).

    The variance is ``σ² = scale / n`` with ``n = fan_out`` (the default: the
    norm-preserving ``WᵀW ≈ I`` of the geometric view), ``fan_in``,
    ``(fan_in + fan_out) / 2`` or ``sqrt(fan_in · fan_out)``. Distributions, all of
    variance exactly ``σ²``:

    * ``"normal"``: ``N(0, σ²)``;
    * ``"uniform"``: ``U(-sqrt(3 σ²), sqrt(3 σ²))``;
    * ``"truncated_normal"``: a normal truncated at two standard deviations and
      divided by the truncated standard deviation (0.87962566...), so that the
      variance is ``σ²`` after truncation.

    Fans are computed as in :func:`compute_fans` (identical to
    ``jax.nn.initializers.variance_scaling``). ``geometric_init(s, m, d)`` draws
    the same samples as ``variance_scaling(s, m, d)`` for the same key.

    Args:
      scale: positive variance multiplier (2 for ReLU).
      mode: ``"fan_out"``, ``"fan_in"``, ``"fan_avg"`` or ``"fan_geo_avg"``.
      distribution: ``"normal"``, ``"uniform"`` or ``"truncated_normal"``.
      in_axis: input axis or axes of the weight (default ``-2``).
      out_axis: output axis or axes (default ``-1``).
      batch_axis: axes ignored by the fans.
      dtype: default dtype of the samples (real floating); ``None`` means JAX's
        default float dtype.

    Returns:
      ``init(key, shape, dtype=dtype, out_sharding=None) -> Array``; ``out_sharding``
      is forwarded to ``jax.random`` (explicit-sharding meshes), as in
      ``variance_scaling``.

    Raises:
      ValueError: bad ``scale``, ``mode`` or ``distribution`` (at construction), bad
        axes for the shape (at call time).
      TypeError: a non-real-floating ``dtype`` (at call time).

    Reference:
      Su Jianlin, https://kexue.fm/archives/7180 (2020); LeCun et al., "Efficient
      BackProp" (1998); Glorot & Bengio (2010); He et al. (2015).

    Example:
      >>> import jax
      >>> init = geometric_init(1.0, "fan_out", "uniform")
      >>> w = init(jax.random.key(0), (256, 512))
      >>> print(w.shape, w.dtype, bool(abs(w).max() <= (3 / 512) ** 0.5))
      (256, 512) float32 True
    """
    if (
        isinstance(scale, bool)
        or not isinstance(scale, numbers.Real)
        or not (scale > 0 and math.isfinite(scale))
    ):
        raise ValueError(f"`scale` must be a positive finite number, got {scale!r}.")
    if mode not in _MODES:
        raise ValueError(f"`mode` must be one of {_MODES}, got {mode!r}.")
    if distribution not in _DISTRIBUTIONS:
        raise ValueError(f"`distribution` must be one of {_DISTRIBUTIONS}, got {distribution!r}.")

    def init(
        key: jax.Array,
        shape: Sequence[int],
        dtype: DTypeLike | None = dtype,
        out_sharding=None,
    ) -> jax.Array:
        shape = tuple(int(d) for d in shape)
        dtype = jax.dtypes.canonicalize_dtype(jnp.float_ if dtype is None else dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"geometric_init: `dtype` must be a real floating dtype, got {dtype}.")
        fan_in, fan_out = compute_fans(shape, in_axis, out_axis, batch_axis)
        if math.prod(shape) == 0:
            return jnp.zeros(shape, dtype)
        fan = {
            "fan_in": fan_in,
            "fan_out": fan_out,
            "fan_avg": (fan_in + fan_out) / 2,
            "fan_geo_avg": math.sqrt(fan_in * fan_out),
        }[mode]
        std = math.sqrt(scale / fan)
        if distribution == "normal":
            sample = jax.random.normal(key, shape, dtype, out_sharding=out_sharding)
            return sample * jnp.asarray(std, dtype)
        if distribution == "uniform":
            sample = jax.random.uniform(key, shape, dtype, -1, 1, out_sharding=out_sharding)
            return sample * jnp.asarray(math.sqrt(3.0) * std, dtype)
        sample = jax.random.truncated_normal(key, -2, 2, shape, dtype, out_sharding=out_sharding)
        return sample * jnp.asarray(std / _TRUNCATED_STD, dtype)

    return init


def norm_preserving(
    distribution: Distribution = "normal",
    *,
    in_axis: Axes = -2,
    out_axis: Axes = -1,
    batch_axis: Axes = (),
    dtype: DTypeLike | None = None,
) -> Initializer:
    """Norm-preserving initialiser: variance ``1 / fan_out``.

    For ``W ∈ R^{m×n}`` (m outputs) with variance ``1/m``, ``E[WᵀW] = I`` and, for
    ``m ≥ n``, ``WᵀW ≈ I``: the layer is nearly an isometry. With a Flax kernel
    ``K = Wᵀ`` of shape ``[n_in, m_out]`` this is ``K Kᵀ ≈ I`` (see
    :func:`orthogonality_error`).

    Args:
      distribution: ``"normal"``, ``"uniform"`` or ``"truncated_normal"``.
      in_axis: input axis or axes; out_axis: output axis or axes;
      batch_axis: axes ignored by the fans; dtype: default sample dtype.

    Returns:
      An initialiser, see :func:`geometric_init`.

    Reference:
      Su Jianlin, https://kexue.fm/archives/7180 (2020).

    Example:
      >>> import jax
      >>> n, m = 64, 4096
      >>> k = norm_preserving()(jax.random.key(0), (n, m))  # flax layout [in, out]
      >>> err = float(orthogonality_error(k))  # mean((K Kᵀ - I)²), expected (n+1)/(n m)
      >>> print(round(err * n * m / (n + 1), 2))
      1.0
    """
    return geometric_init(
        1.0,
        "fan_out",
        distribution,
        in_axis=in_axis,
        out_axis=out_axis,
        batch_axis=batch_axis,
        dtype=dtype,
    )


def lecun(
    distribution: Distribution = "normal",
    *,
    in_axis: Axes = -2,
    out_axis: Axes = -1,
    batch_axis: Axes = (),
    dtype: DTypeLike | None = None,
) -> Initializer:
    """LeCun initialiser: variance ``1 / fan_in``.

    Keeps the second moment of each *output unit* equal to that of an input unit
    (``Var y_i = n σ² E[x²]``); it coincides with :func:`norm_preserving` for square
    layers. ``lecun("truncated_normal")`` matches ``jax.nn.initializers.lecun_normal``.

    Args:
      distribution: ``"normal"``, ``"uniform"`` or ``"truncated_normal"``.
      in_axis: input axis or axes; out_axis: output axis or axes;
      batch_axis: axes ignored by the fans; dtype: default sample dtype.

    Returns:
      An initialiser, see :func:`geometric_init`.

    Reference:
      LeCun et al., "Efficient BackProp" (1998).

    Example:
      >>> import jax
      >>> w = lecun("uniform")(jax.random.key(0), (300, 10))
      >>> print(bool(abs(w).max() <= (3 / 300) ** 0.5))
      True
    """
    return geometric_init(
        1.0,
        "fan_in",
        distribution,
        in_axis=in_axis,
        out_axis=out_axis,
        batch_axis=batch_axis,
        dtype=dtype,
    )


def xavier(
    distribution: Distribution = "normal",
    *,
    in_axis: Axes = -2,
    out_axis: Axes = -1,
    batch_axis: Axes = (),
    dtype: DTypeLike | None = None,
) -> Initializer:
    """Xavier / Glorot initialiser: variance ``2 / (fan_in + fan_out)``.

    The compromise between the forward (``1/fan_in``) and backward / norm-preserving
    (``1/fan_out``) conditions. ``xavier("uniform")`` matches
    ``jax.nn.initializers.glorot_uniform``.

    Args:
      distribution: ``"normal"``, ``"uniform"`` or ``"truncated_normal"``.
      in_axis: input axis or axes; out_axis: output axis or axes;
      batch_axis: axes ignored by the fans; dtype: default sample dtype.

    Returns:
      An initialiser, see :func:`geometric_init`.

    Reference:
      Glorot & Bengio, "Understanding the difficulty of training deep feedforward
      neural networks" (2010).

    Example:
      >>> import jax
      >>> w = xavier()(jax.random.key(0), (100, 300))
      >>> print(w.shape)
      (100, 300)
    """
    return geometric_init(
        1.0,
        "fan_avg",
        distribution,
        in_axis=in_axis,
        out_axis=out_axis,
        batch_axis=batch_axis,
        dtype=dtype,
    )


glorot = xavier


def he(
    distribution: Distribution = "normal",
    *,
    mode: Literal["fan_out", "fan_in"] = "fan_out",
    in_axis: Axes = -2,
    out_axis: Axes = -1,
    batch_axis: Axes = (),
    dtype: DTypeLike | None = None,
) -> Initializer:
    """He (Kaiming) initialiser for ReLU layers: variance ``2 / fan``.

    ReLU zeroes half of a symmetric pre-activation, halving its energy, so the
    variance gets a gain of 2. Which fan:

    * ``mode="fan_out"`` (default): ``2 / fan_out`` -- the geometric,
      norm-preserving view of the article (``‖relu(W x)‖ ≈ ‖x‖`` for the whole
      output vector) and He et al.'s *backward* condition (gradient norms kept).
    * ``mode="fan_in"``: ``2 / fan_in`` -- He et al.'s *forward* condition (each
      unit's second moment kept); this is ``jax.nn.initializers.he_normal`` /
      PyTorch's default ``kaiming_normal_``.

    They agree for square layers.

    Args:
      distribution: ``"normal"``, ``"uniform"`` or ``"truncated_normal"``.
      mode: ``"fan_out"`` or ``"fan_in"`` as above.
      in_axis: input axis or axes; out_axis: output axis or axes;
      batch_axis: axes ignored by the fans; dtype: default sample dtype.

    Returns:
      An initialiser, see :func:`geometric_init`.

    Raises:
      ValueError: ``mode`` not ``"fan_out"`` / ``"fan_in"``.

    Reference:
      He et al., "Delving deep into rectifiers" (2015),
      https://arxiv.org/abs/1502.01852 ; Su Jianlin, https://kexue.fm/archives/7180 .

    Example:
      >>> import jax
      >>> w = he(mode="fan_in")(jax.random.key(0), (512, 64))
      >>> print(round(float(w.var() * 512), 1))
      2.0
    """
    if mode not in ("fan_out", "fan_in"):
        raise ValueError(f"he: `mode` must be 'fan_out' or 'fan_in', got {mode!r}.")
    return geometric_init(
        2.0,
        mode,
        distribution,
        in_axis=in_axis,
        out_axis=out_axis,
        batch_axis=batch_axis,
        dtype=dtype,
    )


# --------------------------------------------------------------------------- diagnostics


def _input_gram(kernel: jax.Array, in_axis: Axes) -> tuple[jax.Array, tuple[int, ...]]:
    """Gram matrix over the input dimension: contract every non-input axis."""
    ins = _axes_tuple(in_axis, kernel.ndim, "in_axis")
    rest = tuple(a for a in range(kernel.ndim) if a not in ins)
    n = math.prod(kernel.shape[a] for a in ins)
    k = jnp.transpose(kernel, ins + rest).reshape(n, -1)
    # Full float32 products: the default on TPUs/recent GPUs (bf16 passes, TF32) would
    # swamp the 1/n-sized deviations these diagnostics measure.
    return jnp.matmul(k, k.T, precision=jax.lax.Precision.HIGHEST), ins


def orthogonality_error(
    kernel: ArrayLike,
    *,
    in_axis: Axes = -2,
    out_axis: Axes = -1,
    variance: float | None = None,
) -> jax.Array:
    r"""Mean squared error of the input Gram matrix from the identity.

    For a Flax kernel ``K`` (``[n_in, m_out]``, ``x @ K``; ``K = Wᵀ`` in the
    article's ``W ∈ R^{m×n}``) this is ``mean((K Kᵀ - I)²) = mean((WᵀW - I)²)``
    over the ``n × n`` entries. For general kernels the Gram matrix contracts every
    axis except ``in_axis`` (outputs and a convolution's receptive field), so
    ``E[G] = fan_out σ² I`` for i.i.d. entries of variance ``σ²``. If ``variance``
    is given, ``G`` is first divided by ``fan_out · variance`` so that its
    expectation is ``I`` for any such initialiser; by default it is used as is
    (expectation ``I`` for :func:`norm_preserving`).

    For an ``n × n`` Gaussian with variance ``1/n`` the expected error is
    ``(n + 1) / n²`` (diagonal entries have variance ``2/n``, off-diagonal ``1/n``).

    Args:
      kernel: a weight array, at least 2-d.
      in_axis: input axis or axes.
      out_axis: output axis or axes (used for ``fan_out`` when ``variance`` is set).
      variance: optional per-entry variance of the initialiser.

    Returns:
      Scalar float32 (or wider) array.

    Raises:
      ValueError: kernel of fewer than 2 axes, bad axes, non-positive ``variance``.

    Reference:
      Su Jianlin, https://kexue.fm/archives/7180 (2020).

    Example:
      >>> import jax
      >>> n = 256
      >>> w = jax.random.normal(jax.random.key(0), (n, n)) / n ** 0.5
      >>> print(round(float(orthogonality_error(w)) * n * n / (n + 1), 1))
      1.0
    """
    kernel = jnp.asarray(kernel)
    if kernel.ndim < 2:
        raise ValueError(
            f"orthogonality_error: `kernel` must be at least 2-d, got shape {kernel.shape}."
        )
    if variance is not None and not variance > 0:
        raise ValueError(f"orthogonality_error: `variance` must be positive, got {variance!r}.")
    _, fan_out = compute_fans(kernel.shape, in_axis, out_axis)
    kernel = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))
    gram, _ = _input_gram(kernel, in_axis)
    if variance is not None:
        gram = gram / (fan_out * variance)
    return jnp.mean((gram - jnp.eye(gram.shape[0], dtype=gram.dtype)) ** 2)


def norm_preservation_ratio(kernel: ArrayLike, x: ArrayLike, *, in_axis: Axes = -2) -> jax.Array:
    """Average of ``‖x K‖ / ‖x‖`` over the rows of ``x`` for a dense kernel.

    The kernel maps its ``in_axis`` dims to all its other dims (``nnx.Linear``,
    ``nnx.LinearGeneral``). For i.i.d. entries of variance ``σ²`` the squared ratio
    has expectation ``fan_out σ²`` for every ``x``, i.e. 1 for
    :func:`norm_preserving`; when ``m_out ≥ n_in`` it is also close to 1 for
    *every* ``x`` (``WᵀW ≈ I``), not just on average.

    Args:
      kernel: the weight array.
      x: inputs ``[..., *in_shape]`` whose trailing dims equal the kernel's
        ``in_axis`` dims (flattened order). Rows of zero norm are skipped.
      in_axis: input axis or axes of the kernel.

    Returns:
      Scalar mean ratio (float32 or wider).

    Raises:
      ValueError: trailing dims of ``x`` do not match the kernel's input dims.

    Reference:
      Su Jianlin, https://kexue.fm/archives/7180 (2020).

    Example:
      >>> import jax
      >>> k = norm_preserving()(jax.random.key(0), (32, 2048))
      >>> x = jax.random.normal(jax.random.key(1), (100, 32))
      >>> print(round(float(norm_preservation_ratio(k, x)), 2))
      1.0
    """
    kernel = jnp.asarray(kernel)
    x = jnp.asarray(x)
    ins = _axes_tuple(in_axis, kernel.ndim, "in_axis")
    in_shape = tuple(kernel.shape[a] for a in ins)
    if x.ndim < len(in_shape) or x.shape[x.ndim - len(in_shape) :] != in_shape:
        raise ValueError(
            f"norm_preservation_ratio: `x` must end with the kernel's input dims {in_shape}, "
            f"got shape {x.shape}."
        )
    dtype = jnp.promote_types(jnp.result_type(kernel, x), jnp.float32)
    n = math.prod(in_shape)
    rest = tuple(a for a in range(kernel.ndim) if a not in ins)
    k = jnp.transpose(kernel, ins + rest).reshape(n, -1).astype(dtype)
    x = x.reshape(-1, n).astype(dtype)
    nx = jnp.linalg.norm(x, axis=-1)
    ny = jnp.linalg.norm(jnp.matmul(x, k, precision=jax.lax.Precision.HIGHEST), axis=-1)
    ok = nx > 0
    return jnp.mean(jnp.where(ok, ny / jnp.where(ok, nx, 1), 0), where=ok)
