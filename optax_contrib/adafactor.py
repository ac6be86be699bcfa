"""AdaFactor: factored second-moment scaling and the full optimizer as an optax chain.

The optimizer is :func:`adafactor`: the ``optax.chain`` of small building blocks that
can also be used on their own, run as one fused update with the chain's state:

1. :func:`scale_by_factored_rms` -- ``u = g / sqrt(v̂)`` with the factored (rows +
   columns) or full second-moment estimate ``v̂``, statistics always in float32;
2. :func:`clip_by_update_rms` -- update clipping ``u / max(1, RMS(u) / d)``;
3. :func:`momentum_ema` -- optional first moment of the clipped updates;
4. :func:`scale_by_param_rms` -- relative step ``u · max(ε2, RMS(θ))``;
5. the learning rate (a constant, a schedule, or :func:`relative_step_size`);
6. optional decoupled weight decay, and the sign flip of gradient descent.

Differences from ``optax.adafactor`` 0.2.8 (documented, deliberate):

* ``decay_offset`` enters the decay schedule as ``1 − max(t + offset, 1)^(−c)``,
  so every offset is well defined (optax computes ``(t − offset)^(−c)`` with the
  optimizer's own fresh step counter and returns NaN for any offset > 0);
* ``learning_rate=None`` gives the paper's relative step size
  ``min(1e−2, 1/sqrt(t))`` (× 0.05 without parameter scaling) instead of no
  scaling at all;
* momentum is applied right after clipping, before the parameter scale and the
  learning rate (the paper's order; optax applies it last);
* all statistics (factored rows/columns, full second moment, momentum) are
  float32 whatever the parameter dtype, and every RMS is computed in float32.

With ``momentum=None`` and an explicit learning rate the two agree to float
tolerance (tested).

Reference: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear
Memory Cost", ICML 2018, https://arxiv.org/abs/1804.04235.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from optax_contrib._checks import (
    check_number,
    check_real_scalar,
    check_same_shapes,
    check_same_structure,
    describe,
    shape_error,
)

__all__ = [
    "FactoredAxes",
    "MomentumEmaState",
    "ScaleByFactoredRmsState",
    "adafactor",
    "clip_by_update_rms",
    "factored_axes_for",
    "momentum_ema",
    "relative_step_size",
    "scale_by_factored_rms",
    "scale_by_param_rms",
]

FactoredAxes = tuple[int, int] | Callable[[tuple[int, ...]], "tuple[int, int] | None"] | None
"""Which two axes a tensor is factored over: ``None`` (its two largest axes), a
``(row_axis, col_axis)`` pair used for every tensor of rank ≥ 2, or a callable
mapping a parameter shape to such a pair (or ``None`` for "do not factor")."""

_F32 = jnp.float32


# --------------------------------------------------------------------------- checks


def _check_min_dim(value: Any) -> int:
    """Validates ``min_dim_size_to_factor``: a static Python (or numpy) int ``>= 1``.

    It fixes the factoring, hence the state shapes, at ``init``; a JAX array (which is
    what ``optax.inject_hyperparams`` turns an int argument into, making it look
    injectable) is refused so that changing it later is impossible rather than ignored.
    """
    name = "min_dim_size_to_factor"
    if isinstance(value, jax.Array | np.ndarray):
        raise TypeError(
            f"`{name}` fixes the factoring (the state shapes) at init and must be a static "
            f"Python int, got {describe(value)}; with optax.inject_hyperparams keep it "
            f"static: optax.inject_hyperparams(adafactor, static_args=('{name}',))."
        )
    check_real_scalar(name, value, integer=True)
    if isinstance(value, float | np.floating) and not float(value).is_integer():
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    if value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    return int(value)


# --------------------------------------------------------------------------- factoring


def factored_axes_for(
    shape: tuple[int, ...],
    *,
    factored: bool = True,
    min_dim_size_to_factor: int = 128,
    factored_axes: FactoredAxes = None,
) -> tuple[int, int] | None:
    """Returns the ``(row_axis, col_axis)`` a tensor is factored over, or ``None``.

    By default a tensor of rank ≥ 2 is factored over its two largest axes (the lower
    index is the row axis; among axes of equal size the higher indices win, as in
    ``optax.adafactor``, so ``(128, 128, 128)`` is factored over axes ``(1, 2)``) when the
    smaller of them has at least ``min_dim_size_to_factor`` entries; the remaining axes
    are batch axes. With ``factored_axes`` the user names the pair (or a callable
    returns it per shape); both named axes must then have at least
    ``min_dim_size_to_factor`` entries.
    The row statistics ``R`` average over ``col_axis`` and the column statistics ``C``
    over ``row_axis``.

    Args:
      shape: the parameter shape.
      factored: ``False`` disables factoring for every tensor.
      min_dim_size_to_factor: smallest size of both factored axes.
      factored_axes: see :data:`FactoredAxes`.

    Returns:
      ``(row_axis, col_axis)`` as non-negative ints, or ``None`` for a full estimate.

    Example:
      >>> factored_axes_for((512, 256))
      (0, 1)
      >>> factored_axes_for((8, 512, 256))
      (1, 2)
      >>> print(factored_axes_for((512, 64)), factored_axes_for((512,)))
      None None
      >>> factored_axes_for((3, 3, 256, 128), factored_axes=(-2, -1))
      (2, 3)
      >>> factored_axes_for((128, 128, 128))
      (1, 2)
    """
    ndim = len(shape)
    if not factored or ndim < 2:
        return None
    if factored_axes is None:
        order = sorted(range(ndim), key=lambda i: (shape[i], i))
        axes = tuple(sorted(order[-2:]))
    else:
        axes = factored_axes(tuple(shape)) if callable(factored_axes) else factored_axes
        if axes is None:
            return None
        if len(axes) != 2 or not all(isinstance(a, int) for a in axes):
            raise ValueError(
                f"`factored_axes` must give two int axes (row_axis, col_axis), got {axes!r}."
            )
        if not all(-ndim <= a < ndim for a in axes):
            raise ValueError(
                f"`factored_axes` {axes!r} out of range for a parameter of shape {tuple(shape)}."
            )
        axes = (axes[0] % ndim, axes[1] % ndim)
        if axes[0] == axes[1]:
            raise ValueError(f"`factored_axes` must name two distinct axes, got {axes!r}.")
    if min(shape[axes[0]], shape[axes[1]]) < min_dim_size_to_factor:
        return None
    return int(axes[0]), int(axes[1])


def _zeros_reduced(param: jax.Array, axis: int | None) -> jax.Array:
    """float32 zeros shaped like ``param`` (``axis`` kept with size 1), sharded like it."""

    def reduced(x):
        return (
            jnp.zeros_like(x, dtype=_F32)
            if axis is None
            else jnp.sum(x, axis=axis, keepdims=True, dtype=_F32)
        )

    target = jax.eval_shape(reduced, param)
    if isinstance(param, jax.core.Tracer):
        return jnp.zeros_like(target)  # inside jit: carries the sharding in explicit mode
    param_sharding = getattr(param, "sharding", None)
    if not isinstance(param_sharding, NamedSharding):
        return jnp.zeros(target.shape, _F32)
    # A concrete array on a mesh: same mesh, the param's spec with `axis` unsharded.
    spec = getattr(getattr(target, "sharding", None), "spec", None)
    if spec is None:
        spec = list(param_sharding.spec) + [None] * (param.ndim - len(param_sharding.spec))
        if axis is not None:
            spec[axis] = None
        spec = PartitionSpec(*spec)
    return jnp.zeros(target.shape, _F32, device=NamedSharding(param_sharding.mesh, spec))


# --------------------------------------------------------------------------- stage 1


class ScaleByFactoredRmsState(NamedTuple):
    """State of :func:`scale_by_factored_rms`.

    Attributes:
      count: int32 number of updates taken so far.
      v_row: per leaf, the row statistics ``R`` (float32, the parameter shape with the
        column axis of size 1) for factored tensors, else a float32 scalar placeholder.
      v_col: per leaf, the column statistics ``C`` (the row axis of size 1), or a
        scalar placeholder.
      v: per leaf, the full float32 second moment for tensors that are not factored,
        or a scalar placeholder.
    """

    count: jax.Array
    v_row: optax.Updates
    v_col: optax.Updates
    v: optax.Updates


def _on_cpu() -> bool:
    """Whether the computation is being built for CPU (the default backend)."""
    return jax.default_backend() == "cpu"


def _separate(*trees: Any) -> tuple[Any, ...]:
    """The trees behind one ``optimization_barrier`` on CPU: distinct values for XLA.

    A full-size expression (``g²``, ``g · rsqrt(R) · rsqrt(C)``) that feeds two
    reductions, or a reduction and the final update, is one shared value to XLA:CPU,
    which then materialises it in a fresh full-size buffer (as costly as another pass
    over the tensor). Reading the inputs of each reduction through a barrier makes every
    consumer recompute the expression inside its own fused loop instead. On other
    backends (not measured) the trees are returned unchanged.
    """
    return jax.lax.optimization_barrier(trees) if _on_cpu() else trees


class _Scaling(NamedTuple):
    """How one leaf's gradient is scaled: ``u = g · rsqrt(row) [· rsqrt(col)]``.

    Factored leaves: ``row`` is the row ratio ``R / mean(R)`` and ``col`` the column
    statistics ``C`` (both small). Unfactored leaves: ``row`` is the full second moment
    ``v`` and ``col`` is None.
    """

    row: jax.Array
    col: jax.Array | None
    update_sq_sum: jax.Array | None = None  # Σ u², when the statistics pass computed it


def _rms_scaled(g: jax.Array, scaling: _Scaling | None) -> jax.Array:
    """``u = g / sqrt(v̂)`` in the dtype of ``g``; zeros for untrained (integer) leaves."""
    if scaling is None:
        return jnp.zeros_like(g)
    u = g.astype(_F32) * jax.lax.rsqrt(scaling.row)
    if scaling.col is not None:
        u = u * jax.lax.rsqrt(scaling.col)
    return u.astype(g.dtype)


# Row blocks of about this many float32 entries (1 MiB) stay in the caches between the
# reductions that read them.
_BLOCK_ENTRIES = 1 << 18


def _use_row_blocks(g: jax.Array, row_axes: tuple[int, ...], col_axes: tuple[int, ...]) -> bool:
    """Whether :func:`_factored_sums` reads ``g`` in row blocks (one pass) or whole.

    Row blocks pay off for large tensors on CPU, where each whole-tensor reduction is a
    separate pass over memory. They are not used on other backends (where they were not
    measured), on a mesh (a loop over a tensor sharded across devices would gather it),
    or when one row alone exceeds a block.
    """
    return (
        len(row_axes) == 1
        and len(col_axes) == 1
        and g.size > _BLOCK_ENTRIES
        and g.size // g.shape[row_axes[0]] <= _BLOCK_ENTRIES  # a block holds a row
        and _on_cpu()
        and jax.sharding.get_abstract_mesh().empty
    )


def _factored_sums(
    g: jax.Array,
    r: jax.Array,
    beta: jax.Array,
    eps: jax.Array,
    row_axes: tuple[int, ...],
    col_axes: tuple[int, ...],
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """The new row statistics ``R``, the column means of ``g² + ε1`` and, when ``g`` is
    read in row blocks, the column sums of ``g² / R`` (else None).

    ``R ← max(β̂ R + (1 − β̂) · mean_over_cols(g² + ε1), tiny)`` (shape of ``r``); the
    column means have the shape of the column statistics; so do the weighted column
    sums ``Σ_rows g² / R``, from which the update RMS follows without another pass
    (``Σ u² = Σ_cols mean(R) · Σ_rows(g² / R) / C``).

    Small tensors: two reductions over ``g``, each recomputing ``g²``. Large ones on CPU
    (:func:`_use_row_blocks`): one pass over ``g`` in blocks of rows; each block's ``g²``
    stays in the caches for its row sums and, as one matrix product, its column sums
    (plain and weighted).
    """
    tiny = jnp.finfo(_F32).tiny

    def new_rows(r_old, row_sums):
        return jnp.maximum(beta * r_old + (1.0 - beta) * row_sums, tiny)

    if not _use_row_blocks(g, row_axes, col_axes):
        (g_r, eps_r), (g_c, eps_c) = _separate((g, eps), (g, eps))
        r = new_rows(
            r, jnp.mean(jnp.square(g_r.astype(_F32)) + eps_r, axis=col_axes, keepdims=True)
        )
        col_means = jnp.mean(jnp.square(g_c.astype(_F32)) + eps_c, axis=row_axes, keepdims=True)
        return r, col_means, None

    (row_axis,), (col_axis,) = row_axes, col_axes
    num_rows, num_cols = g.shape[row_axis], g.shape[col_axis]
    block = max(1, min(num_rows, _BLOCK_ENTRIES * num_rows // g.size))
    # einsum subscripts: K the stacked weights, the block's axes, the weights' axes (the
    # block's without the column axis) and the sums' (without the row axis).
    k, axes = g.ndim, list(range(g.ndim))
    w_axes = [k] + [a for a in axes if a != col_axis]
    out_axes = [k] + [a for a in axes if a != row_axis]

    def block_sums(start, size, r_new, acc):
        # The old statistics are only read and the new ones only written (no copies).
        g2 = jnp.square(jax.lax.dynamic_slice_in_dim(g, start, size, row_axis).astype(_F32))
        r_b = new_rows(
            jax.lax.dynamic_slice_in_dim(r, start, size, row_axis),
            jnp.sum(g2, axis=col_axis, keepdims=True) / num_cols + eps,
        )
        w = jnp.stack([jnp.ones_like(r_b), 1.0 / r_b])
        sums = jnp.einsum(jnp.squeeze(w, col_axis + 1), w_axes, g2, axes, out_axes)
        return jax.lax.dynamic_update_slice_in_dim(r_new, r_b, start, row_axis), acc + sums

    carry = (jnp.zeros_like(r), jnp.zeros((2,) + _without(g.shape, row_axis), _F32))
    num_blocks, tail = divmod(num_rows, block)
    carry = jax.lax.fori_loop(
        0, num_blocks, lambda i, carry: block_sums(i * block, block, *carry), carry
    )
    if tail:
        carry = block_sums(num_blocks * block, tail, *carry)
    r, acc = carry
    acc = jnp.expand_dims(acc, row_axis + 1)  # the row axis back, of size 1
    return r, acc[0] / num_rows + eps, acc[1]


def _without(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return tuple(n for i, n in enumerate(shape) if i != axis)


def _update_rms(g: jax.Array, scaling: _Scaling | None) -> jax.Array:
    """RMS of ``u = g / sqrt(v̂)`` (:func:`_rms_scaled`) without materialising ``u``.

    From ``Σ u²`` when the statistics pass gave it, else by a reduction that recomputes
    ``u`` from ``g`` (through its own barrier, see :func:`_separate`).
    """
    if scaling is not None and scaling.update_sq_sum is not None:
        return jnp.sqrt(scaling.update_sq_sum / g.size)
    return _rms32(_rms_scaled(*_separate(g, scaling)))


def _second_moments(
    updates: optax.Updates,
    state: ScaleByFactoredRmsState,
    *,
    decay_rate: Any,
    decay_offset: Any,
    eps: Any,
    with_update_sq: bool = False,
) -> tuple[list[_Scaling | None], Any, ScaleByFactoredRmsState]:
    """One step of the second-moment statistics of :func:`scale_by_factored_rms`.

    Returns the per-leaf :class:`_Scaling` (None for integer/boolean leaves), the tree
    structure of ``updates`` and the new state. With ``with_update_sq``, large float32
    factored leaves also get ``Σ u²`` from the same pass over the gradient where
    :func:`_factored_sums` reads it in row blocks. Raises ``ValueError`` for gradients
    whose structure or leaf shapes differ from the parameters given to ``init``.
    """
    check_same_structure("updates", updates, state.v, "the parameters given to init")
    count = optax.safe_increment(state.count)
    t = count.astype(_F32) + jnp.asarray(decay_offset, _F32)
    beta = 1.0 - jnp.maximum(t, 1.0) ** (-jnp.asarray(decay_rate, _F32))
    eps32 = jnp.asarray(eps, _F32)
    # Statistics and the row ratio are kept >= tiny: with a zero (or float16-underflowed)
    # eps, or an all-zero row next to huge ones, rsqrt must not see 0 (0 · inf = NaN).
    tiny = jnp.finfo(_F32).tiny

    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(updates)
    rows = treedef.flatten_up_to(state.v_row)
    cols = treedef.flatten_up_to(state.v_col)
    full = treedef.flatten_up_to(state.v)
    scalings: list[_Scaling | None] = []
    out_r, out_c, out_v = [], [], []
    for (path, g), r, c, v in zip(leaves_with_path, rows, cols, full):
        factored_leaf = np.ndim(r) > 0  # unfactored leaves have scalar placeholders
        # A factored leaf's shape is recovered from its statistics (R has the column
        # axis of size 1, C the row axis).
        expected = tuple(map(max, r.shape, c.shape)) if factored_leaf else v.shape
        if np.shape(g) != expected:
            raise shape_error("updates", path, expected, np.shape(g), "the parameter")
        if not jnp.issubdtype(g.dtype, jnp.inexact):  # integer/boolean leaf: not trained
            scalings.append(None)
        elif not factored_leaf:  # full second moment
            g32 = g.astype(_F32)
            v = jnp.maximum(beta * v + (1.0 - beta) * (jnp.square(g32) + eps32), tiny)
            scalings.append(_Scaling(v, None))
        else:  # factored: the reduced axes are those of size 1 in the statistics
            col_axes = tuple(i for i in range(g.ndim) if r.shape[i] != g.shape[i])
            row_axes = tuple(i for i in range(g.ndim) if c.shape[i] != g.shape[i])
            r, col_means, weighted_sums = _factored_sums(g, r, beta, eps32, row_axes, col_axes)
            c = jnp.maximum(beta * c + (1.0 - beta) * col_means, tiny)
            r_mean = jnp.mean(r, axis=row_axes, keepdims=True)
            r_ratio = jnp.maximum(r / r_mean, tiny)
            # u² = g² · mean(R) / (R C): Σ u² = Σ_cols mean(R) / C · Σ_rows g² / R; taken
            # only for float32 updates (others are rounded to their dtype before their RMS).
            update_sq = None
            if with_update_sq and weighted_sums is not None and g.dtype == _F32:
                update_sq = jnp.sum(r_mean / c * weighted_sums)
            scalings.append(_Scaling(r_ratio, c, update_sq))
        out_r.append(r)
        out_c.append(c)
        out_v.append(v)
    new_state = ScaleByFactoredRmsState(
        count=count,
        v_row=treedef.unflatten(out_r),
        v_col=treedef.unflatten(out_c),
        v=treedef.unflatten(out_v),
    )
    return scalings, treedef, new_state


def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    min_dim_size_to_factor: int = 128,
    eps: float = 1e-30,
    factored_axes: FactoredAxes = None,
) -> optax.GradientTransformation:
    r"""Scales updates by a factored estimate of the gradient's root mean square.

    With ``β̂_t = 1 − max(t + decay_offset, 1)^(−c)`` (``c = decay_rate``, ``t ≥ 1``
    the step number, so ``β̂_1 = 0``), for a factored tensor (see
    :func:`factored_axes_for`) with rows ``r`` and columns ``c``::

        R ← β̂ R + (1 − β̂) · mean_over_cols(g² + ε1)
        C ← β̂ C + (1 − β̂) · mean_over_rows(g² + ε1)
        v̂ = R ⊗ C / mean_over_rows(R)

    and otherwise ``v̂ = v ← β̂ v + (1 − β̂)(g² + ε1)``; the output is
    ``u = g / sqrt(v̂)`` (computed as ``g · rsqrt(R / mean(R)) · rsqrt(C)`` so that
    tiny statistics do not underflow). Other axes of a rank ≥ 3 tensor are batch
    axes (one ``R``/``C`` pair per batch entry). The state holds ``rows + columns``
    floats per factored matrix instead of ``rows × columns``.

    All statistics are float32 whatever the parameter dtype; the output has the
    dtype of the incoming updates. The factoring layout is fixed at ``init`` and read
    off the state shapes by ``update``, so ``min_dim_size_to_factor``, ``factored`` and
    ``factored_axes`` are structural: they must be static (a Python int, not a JAX
    array; under ``optax.inject_hyperparams`` list ``min_dim_size_to_factor`` in
    ``static_args``). ``decay_rate``, ``decay_offset`` and ``eps`` are read at every
    step and may be injected.

    Integer and boolean leaves (e.g. counters kept in the parameter tree) are not
    trained: their (integer) gradients give a zero update and their statistics stay
    zero. Complex parameters are refused.

    A gradient entry that is NaN or ±inf makes the statistics of its row and column
    (or its own entry, unfactored) non-finite, so the update of that entry is
    non-finite too (never a finite number made from a non-finite input).

    Args:
      factored: ``False`` keeps a full second moment for every tensor.
      decay_rate: the exponent ``c ≥ 0`` of the decay schedule.
      decay_offset: added to the step number in the decay schedule, e.g. to resume
        the schedule of a pre-trained run with a fresh optimizer state
        (``decay_offset=pretrain_steps``). Negative offsets (the T5X/optax
        convention ``t − start_step`` when the step counter continues) are clamped
        so that the schedule restarts at ``β̂ = 0`` instead of producing NaN.
      min_dim_size_to_factor: only factor when both factored axes have at least this
        many entries (a static int).
      eps: ``ε1``, added to the squared gradient.
      factored_axes: name the two factored axes (see :data:`FactoredAxes`).

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByFactoredRmsState`.

    Raises:
      TypeError: for a hyperparameter of the wrong type (e.g. a string), a JAX-array
        ``min_dim_size_to_factor``, or complex parameters.
      ValueError: for a hyperparameter out of range, or, in ``update``, gradients whose
        tree structure or leaf shapes differ from the parameters given to ``init``.

    Reference:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory
      Cost", ICML 2018, Algorithms 4-5, https://arxiv.org/abs/1804.04235.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_factored_rms()
      >>> params = {"w": jnp.ones((256, 128)), "b": jnp.ones((128,))}
      >>> state = tx.init(params)
      >>> print(state.v_row["w"].shape, state.v_col["w"].shape, state.v["b"].shape)
      (256, 1) (1, 128) (128,)
      >>> grads = {"w": jnp.full((256, 128), 3.0), "b": jnp.full((128,), -2.0)}
      >>> updates, state = tx.update(grads, state)
      >>> print(updates["w"][0, 0].round(4), updates["b"][0].round(4))
      1.0 -1.0
    """
    check_number("decay_rate", decay_rate, low=0.0)
    check_number("eps", eps, low=0.0)
    check_number("decay_offset", decay_offset)
    min_dim = _check_min_dim(min_dim_size_to_factor)
    if not isinstance(factored, bool):
        raise TypeError(f"`factored` must be a Python bool, got {describe(factored)}.")

    def init_fn(params: optax.Params) -> ScaleByFactoredRmsState:
        leaves, treedef = jax.tree.flatten(params)
        rows, cols, full = [], [], []
        for p in leaves:
            dtype = jnp.result_type(p)
            if jnp.issubdtype(dtype, jnp.complexfloating):
                raise TypeError(
                    "scale_by_factored_rms expects real floating parameters (integer and "
                    f"boolean leaves are left untrained), got dtype {dtype}."
                )
            axes = None
            if jnp.issubdtype(dtype, jnp.floating):
                axes = factored_axes_for(
                    np.shape(p),
                    factored=factored,
                    min_dim_size_to_factor=min_dim,
                    factored_axes=factored_axes,
                )
            # Distinct placeholder arrays, so that the state can be donated to a jitted step.
            if axes is None:
                rows.append(jnp.zeros((), _F32))
                cols.append(jnp.zeros((), _F32))
                full.append(_zeros_reduced(p, None))
            else:
                row_axis, col_axis = axes
                rows.append(_zeros_reduced(p, col_axis))
                cols.append(_zeros_reduced(p, row_axis))
                full.append(jnp.zeros((), _F32))
        return ScaleByFactoredRmsState(
            count=jnp.zeros([], jnp.int32),
            v_row=treedef.unflatten(rows),
            v_col=treedef.unflatten(cols),
            v=treedef.unflatten(full),
        )

    def update_fn(
        updates: optax.Updates,
        state: ScaleByFactoredRmsState,
        params: optax.Params | None = None,
    ) -> tuple[optax.Updates, ScaleByFactoredRmsState]:
        del params
        scalings, treedef, new_state = _second_moments(
            updates, state, decay_rate=decay_rate, decay_offset=decay_offset, eps=eps
        )
        leaves = treedef.flatten_up_to(updates)
        return treedef.unflatten(list(map(_rms_scaled, leaves, scalings))), new_state

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- stages 2-5


def _rms32(x: jax.Array) -> jax.Array:
    """Root mean square of a whole tensor, computed in float32."""
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(_F32))))


def _clipped(u: jax.Array, rms: jax.Array, threshold: jax.Array) -> jax.Array:
    """``u / max(1, rms / d)`` in the dtype of ``u``."""
    return (u.astype(_F32) / jnp.maximum(1.0, rms / threshold)).astype(u.dtype)


def _param_scaled(u: jax.Array, param_rms: jax.Array, floor: jax.Array) -> jax.Array:
    """``u · max(ε2, RMS(θ))`` in the dtype of ``u``."""
    return (u.astype(_F32) * jnp.maximum(floor, param_rms)).astype(u.dtype)


def _require_params(params: optax.Params | None) -> optax.Params:
    if params is None:
        raise ValueError(
            "scale_by_param_rms needs the current parameters: call update(updates, state, params)."
        )
    return params


def clip_by_update_rms(clipping_threshold: float = 1.0) -> optax.GradientTransformation:
    r"""AdaFactor update clipping: ``u ← u / max(1, RMS(u) / d)`` per tensor.

    ``RMS(x) = sqrt(mean(x²))`` over the whole tensor, computed in float32; the
    output keeps the dtype of the updates. Same math as ``optax.clip_by_block_rms``.

    Args:
      clipping_threshold: ``d ≥ 1``.

    Returns:
      A stateless ``optax.GradientTransformation``.

    Reference:
      Shazeer & Stern 2018, Section 6, https://arxiv.org/abs/1804.04235.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = clip_by_update_rms(1.0)
      >>> u, _ = tx.update({"a": jnp.full((4,), 3.0), "b": jnp.full((4,), 0.5)}, tx.init(None))
      >>> print(u["a"].round(3), u["b"].round(3))
      [1. 1. 1. 1.] [0.5 0.5 0.5 0.5]
    """
    check_number("clipping_threshold", clipping_threshold, low=1.0)

    def update_fn(updates, state, params=None):
        del params
        d = jnp.asarray(clipping_threshold, _F32)

        return jax.tree.map(lambda u: _clipped(u, _rms32(u), d), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class MomentumEmaState(NamedTuple):
    """State of :func:`momentum_ema`: the float32 first moment ``m`` of the updates."""

    m: optax.Updates


def momentum_ema(momentum: float) -> optax.GradientTransformation:
    r"""AdaFactor's optional first moment: ``m ← β1 m + (1 − β1) u``, ``u ← m``.

    No bias correction (as in the paper and in optax's ``ema(debias=False)``). The
    accumulator is float32 whatever the parameter dtype; the output keeps the dtype
    of the updates. In :func:`adafactor` it sits after clipping, before the
    parameter scale and the learning rate.

    Args:
      momentum: ``β1`` in ``[0, 1)``.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`MomentumEmaState`.

    Reference:
      Shazeer & Stern 2018, Section 7, https://arxiv.org/abs/1804.04235.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = momentum_ema(0.9)
      >>> state = tx.init(jnp.zeros(2))
      >>> u, state = tx.update(jnp.ones(2), state)
      >>> u, state = tx.update(jnp.ones(2), state)
      >>> print(u.round(4))
      [0.19 0.19]
    """
    check_number("momentum", momentum, low=0.0, high=1.0, high_open=True)

    def init_fn(params):
        return MomentumEmaState(m=jax.tree.map(lambda p: _zeros_reduced(p, None), params))

    def update_fn(updates, state, params=None):
        del params
        check_same_shapes("updates", updates, state.m, "the parameters given to init")
        b1 = jnp.asarray(momentum, _F32)
        m = jax.tree.map(lambda u, m: b1 * m + (1.0 - b1) * u.astype(_F32), updates, state.m)
        out = jax.tree.map(lambda m, u: m.astype(u.dtype), m, updates)
        return out, MomentumEmaState(m=m)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_param_rms(eps_scale: float = 1e-3) -> optax.GradientTransformation:
    r"""AdaFactor's relative step: ``u ← u · max(ε2, RMS(θ_{t−1}))`` per tensor.

    The RMS of the parameters before the update is computed in float32 over the
    whole tensor; the output keeps the dtype of the updates. Same math as
    ``optax.scale_by_param_block_rms(min_scale=ε2)``.

    Args:
      eps_scale: the floor ``ε2 ≥ 0`` (so that zero-initialised tensors still move).

    Returns:
      A stateless ``optax.GradientTransformation``; ``update`` needs ``params``.

    Reference:
      Shazeer & Stern 2018, Section 8 ("relative step size"),
      https://arxiv.org/abs/1804.04235.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_param_rms()
      >>> params = {"w": jnp.full((3,), -2.0), "z": jnp.zeros((3,))}
      >>> u, _ = tx.update({"w": jnp.ones(3), "z": jnp.ones(3)}, tx.init(params), params)
      >>> print(u["w"], u["z"])
      [2. 2. 2.] [0.001 0.001 0.001]
    """
    check_number("eps_scale", eps_scale, low=0.0)

    def update_fn(updates, state, params=None):
        params = _require_params(params)
        check_same_shapes("params", params, updates, "the updates")
        floor = jnp.asarray(eps_scale, _F32)
        return jax.tree.map(lambda u, p: _param_scaled(u, _rms32(p), floor), updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def relative_step_size(
    multiply_by_parameter_scale: bool = True,
) -> Callable[[jax.Array], jax.Array]:
    r"""The paper's default step size schedule ``α_t = min(1e−2, 1/sqrt(t))``.

    ``t = count + 1`` (optax schedules receive the 0-based count). Without the
    parameter scale the step is multiplied by 0.05, as in the Mesh-TensorFlow
    reference (otherwise the absolute step would be far too large).

    Args:
      multiply_by_parameter_scale: whether :func:`scale_by_param_rms` follows.

    Returns:
      A schedule ``count -> α`` (float32).

    Reference:
      Shazeer & Stern 2018, Section 8, https://arxiv.org/abs/1804.04235.

    Example:
      >>> schedule = relative_step_size()
      >>> print(schedule(0), schedule(9999), relative_step_size(False)(9999))
      0.01 0.01 0.0005
      >>> print(schedule(39999).round(6))
      0.005
    """
    factor = 1.0 if multiply_by_parameter_scale else 0.05

    def schedule(count):
        t = jnp.asarray(count, _F32) + 1.0
        return factor * jnp.minimum(jnp.asarray(1e-2, _F32), jax.lax.rsqrt(t))

    return schedule


# --------------------------------------------------------------------------- optimizer


def _descend_float_leaves() -> optax.GradientTransformation:
    """The sign flip of gradient descent, and zero updates for integer/boolean parameters.

    Stateless like ``optax.scale(-1.0)`` (same state); without ``params`` every leaf is
    negated.
    """

    def update_fn(updates, state, params=None):
        if params is None:
            return jax.tree.map(lambda u: -u, updates), state

        def descend(u, p):
            if jnp.issubdtype(jnp.result_type(p), jnp.inexact):
                return -u
            return jnp.zeros_like(u)

        return jax.tree.map(descend, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def adafactor(
    learning_rate: optax.ScalarOrSchedule | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    weight_decay_rate: optax.ScalarOrSchedule | None = None,
    eps: float = 1e-30,
    factored: bool = True,
    weight_decay_mask: Any = None,
    eps_scale: float = 1e-3,
    factored_axes: FactoredAxes = None,
) -> optax.GradientTransformationExtraArgs:
    r"""The AdaFactor optimizer as a chain of small building blocks.

    For each tensor, with ``t ≥ 1`` the step number::

        u = g / sqrt(v̂)                   scale_by_factored_rms (float32 statistics)
        u ← u / max(1, RMS(u) / d)        clip_by_update_rms (d = clipping_threshold)
        m ← β1 m + (1 − β1) u; u ← m      momentum_ema (if momentum is set)
        u ← u · max(ε2, RMS(θ_{t−1}))     scale_by_param_rms (if multiply_by_parameter_scale)
        θ ← θ − α_t u − λ θ               learning rate; weight decay λ is decoupled (not × α)

    Defaults are the paper's: ``c = 0.8``, ``ε1 = 1e−30``, ``ε2 = 1e−3``, ``d = 1``,
    no momentum, parameter scaling on, and with ``learning_rate=None`` the relative
    step ``α_t = min(1e−2, 1/sqrt(t))`` (× 0.05 when parameter scaling is off, as in
    Mesh-TensorFlow). Where peers differ: HF ``transformers.Adafactor`` has the same
    ``c, ε1, ε2, d`` and relative step but factors every tensor of rank ≥ 2 over its
    last two axes (here ``min_dim_size_to_factor=1, factored_axes=(-2, -1)``) and
    applies momentum after the learning rate; ``optax.adafactor`` and T5X factor only
    when both axes are ≥ 128 (the default here too), apply momentum last, and with
    ``learning_rate=None`` optax applies no step size at all.

    Under ``optax.inject_hyperparams``, list the structural arguments in
    ``static_args``::

        optax.inject_hyperparams(adafactor, static_args=("min_dim_size_to_factor",))

    ``min_dim_size_to_factor`` (like ``factored`` and ``factored_axes``) fixes the
    factoring, i.e. the state shapes, at ``init``: it must be a static Python int, and
    the JAX array that ``inject_hyperparams`` makes of an unlisted int raises a
    ``TypeError`` naming ``static_args`` (so it can never be changed later and silently
    ignored). Callable ``weight_decay_mask``/``factored_axes`` must be listed too
    (otherwise they are taken for schedules). The other numeric arguments
    (``learning_rate``, ``decay_rate``, ``decay_offset``, ``clipping_threshold``,
    ``momentum``, ``weight_decay_rate``, ``eps``, ``eps_scale``) are read at every step,
    so injecting or changing them takes effect at the next update; ``decay_offset``
    shifts the decay schedule from that step on.

    Integer and boolean leaves of the parameter tree are left untrained (zero update,
    no weight decay); see :func:`scale_by_factored_rms` for non-finite gradients.

    The state is that of the ``optax.chain`` of the stages above, and ``update`` computes
    the same values as the chain (the statistics bit for bit; the clipped updates of
    large float32 tensors to a few ulps, their RMS being summed in another order),
    arranged for XLA:CPU so that a jitted step reads the gradient and parameters in a
    few fused passes and allocates no parameter-sized temporary (a large factored
    tensor's statistics and update RMS take one pass over the gradient, in blocks of
    rows); other backends get the chain's computation as it is.

    Args:
      learning_rate: constant or schedule ``α``; ``None`` for :func:`relative_step_size`.
      min_dim_size_to_factor: factor only tensors whose two factored axes both have
        at least this many entries.
      decay_rate: exponent ``c`` of ``β̂_t = 1 − max(t + decay_offset, 1)^(−c)``.
      decay_offset: offset of the decay schedule (see :func:`scale_by_factored_rms`).
      multiply_by_parameter_scale: scale updates by ``max(ε2, RMS(θ))``.
      clipping_threshold: ``d ≥ 1``, or ``None`` to disable update clipping.
      momentum: ``β1 ∈ [0, 1)`` or ``None`` (no first moment, the default).
      weight_decay_rate: decoupled weight decay ``λ`` (constant or schedule), as in
        optax/T5X: not multiplied by the learning rate.
      eps: ``ε1``, added to the squared gradients.
      factored: ``False`` keeps full second moments everywhere.
      weight_decay_mask: mask (pytree or callable) of the leaves weight decay
        applies to, as in ``optax.add_decayed_weights`` (integer and boolean leaves
        are never decayed).
      eps_scale: ``ε2``, the floor of the parameter scale.
      factored_axes: which axes to factor (see :data:`FactoredAxes`); by default the
        two largest axes.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` (``update`` needs ``params``).

    Raises:
      TypeError: for an argument of the wrong type (a string for a number, a JAX
        array for ``min_dim_size_to_factor``, a non-bool flag).
      ValueError: for an argument out of range; in ``update``, for gradients or
        parameters whose tree structure or shapes differ from those given to ``init``.

    Reference:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory
      Cost", ICML 2018, https://arxiv.org/abs/1804.04235.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> params = {"w": jnp.ones((256, 128)), "b": jnp.zeros((128,))}
      >>> loss = lambda p: jnp.sum((p["w"] @ jnp.ones(128) - 1.0) ** 2) + jnp.sum(p["b"] ** 2)
      >>> tx = adafactor()
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> print(round(float(params["w"][0, 0]), 4))
      0.97
    """
    check_number("learning_rate", learning_rate, allow_none=True, allow_schedule=True, low=0.0)
    check_number(
        "weight_decay_rate", weight_decay_rate, allow_none=True, allow_schedule=True, low=0.0
    )
    check_number("clipping_threshold", clipping_threshold, allow_none=True, low=1.0)
    check_number("momentum", momentum, allow_none=True, low=0.0, high=1.0, high_open=True)
    for name, flag in (
        ("factored", factored),
        ("multiply_by_parameter_scale", multiply_by_parameter_scale),
    ):
        if not isinstance(flag, bool):
            raise TypeError(f"`{name}` must be a Python bool, got {describe(flag)}.")
    if learning_rate is None:
        learning_rate = relative_step_size(multiply_by_parameter_scale)
    stages: list[tuple[str, optax.GradientTransformation]] = [
        (
            "rms",
            scale_by_factored_rms(
                factored=factored,
                decay_rate=decay_rate,
                decay_offset=decay_offset,
                min_dim_size_to_factor=min_dim_size_to_factor,
                eps=eps,
                factored_axes=factored_axes,
            ),
        )
    ]
    if clipping_threshold is not None:
        stages.append(("clip", clip_by_update_rms(clipping_threshold)))
    if momentum is not None:
        stages.append(("momentum", momentum_ema(momentum)))
    if multiply_by_parameter_scale:
        stages.append(("param_scale", scale_by_param_rms(eps_scale)))
    else:
        check_number("eps_scale", eps_scale, low=0.0)
    stages.append(("lr", optax.scale_by_learning_rate(learning_rate, flip_sign=False)))
    if weight_decay_rate is not None:
        stages.append(
            ("weight_decay", optax.add_decayed_weights(weight_decay_rate, mask=weight_decay_mask))
        )
    stages.append(("descend", _descend_float_leaves()))
    # The state is the chain's, and `update` computes what the chain computes, stage by
    # stage, except for the whole-tensor reductions: on CPU the statistics and the update
    # RMS of a large tensor come from one pass over the gradient in row blocks, and every
    # other reduction reads its inputs through its own barrier (_separate). The
    # reductions and the final update are then single fused passes over the gradient and
    # parameters, with no full-size temporary in between.
    chain = optax.chain(*(tx for _, tx in stages))

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.OptState]:
        del extra_args  # accepted like optax.chain does; no stage uses them
        grads, scalings, treedef = None, None, None
        new_states = []
        for (kind, tx), stage_state in zip(stages, state):
            if kind == "rms":
                scalings, treedef, stage_state = _second_moments(
                    updates,
                    stage_state,
                    decay_rate=decay_rate,
                    decay_offset=decay_offset,
                    eps=eps,
                    with_update_sq=clipping_threshold is not None,
                )
                grads = treedef.flatten_up_to(updates)
                updates = treedef.unflatten(list(map(_rms_scaled, grads, scalings)))
            elif kind == "clip":  # RMS(u) recomputed from g inside its reduction
                d = jnp.asarray(clipping_threshold, _F32)
                rms = [_update_rms(g, s) for g, s in zip(grads, scalings)]
                u_leaves = treedef.flatten_up_to(updates)
                updates = treedef.unflatten(list(map(_clipped, u_leaves, rms, [d] * len(rms))))
            elif kind == "param_scale":
                params = _require_params(params)
                check_same_shapes("params", params, updates, "the updates")
                floor = jnp.asarray(eps_scale, _F32)
                p_rms = [_rms32(*_separate(p)) for p in treedef.flatten_up_to(params)]
                u_leaves = treedef.flatten_up_to(updates)
                scaled = [_param_scaled(u, r, floor) for u, r in zip(u_leaves, p_rms)]
                updates = treedef.unflatten(scaled)
            else:
                updates, stage_state = tx.update(updates, stage_state, params)
            new_states.append(stage_state)
        return updates, tuple(new_states)

    return optax.GradientTransformationExtraArgs(chain.init, update_fn)
