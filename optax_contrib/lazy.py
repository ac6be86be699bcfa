"""Lazy optimizer wrapper for embedding tables: only the rows in the batch move.

Momentum optimizers keep moving embedding rows that were not in the batch: the
moments of an untouched row are non-zero, so its update is non-zero too.
:func:`lazy` wraps any optax optimizer so that the rows of the chosen ("lazy")
parameters that were not touched by the batch get a zero update, with one of two
state policies:

- ``policy="article"``: the inner optimizer updates all of its state as usual;
  only the parameter update of untouched rows is zeroed (the bert4keras /
  kexue.fm "lazy optimizer").
- ``policy="frozen"``: untouched rows also keep their optimizer state (moments)
  unchanged, as in TF-Addons ``LazyAdam``; the step counter stays global, so the
  bias correction uses the global step.

A row of a lazy parameter (a slice along axis 0, e.g. one token's embedding) is
touched when any entry of its gradient is non-zero, or, exactly, when its id is
passed in the ``row_ids`` extra argument of ``update``. With row ids, the frozen
policy and an inner optimizer declared elementwise (``elementwise=True``), the
inner optimizer runs on the gathered rows only, so one step costs O(touched
rows) instead of O(table).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_contrib._checks import check_same_structure, shape_error

__all__ = ["LazyState", "lazy"]

_POLICIES = ("article", "frozen")
_INDEX_DTYPE = jnp.int32
_INDEX_LIMIT = int(np.iinfo(np.int32).max)

MaskSpec = Any  # None | str | bool pytree | Callable[[params], bool pytree]


class LazyState(NamedTuple):
    """State of :func:`lazy`: the state of the wrapped (inner) optimizer.

    The per-parameter leaves of ``inner_state`` (moments, ...) have the shape of
    their parameter; under ``policy="frozen"`` their untouched rows are never
    written. Scalar leaves such as Adam's ``count`` are global.
    """

    inner_state: optax.OptState


class _Plan(NamedTuple):
    """How one parameter leaf is handled in a step (built at trace time by :func:`_plan_leaf`)."""

    kind: str  # "plain" (not lazy) | "dense" (masked) | "sparse" (gathered rows)
    grad: Any  # the gradient given to the inner optimizer
    param: Any  # the parameter given to the inner optimizer (None without params)
    table_shape: tuple[int, ...] | None = None
    touched: jax.Array | None = None  # dense: bool (num_rows,)
    uids: jax.Array | None = None  # sparse: sorted distinct row ids (n,), padding >= num_rows


def _broadcast_prefix(
    prefix: Any, full: Any, what: str, is_leaf: Callable[[Any], bool] | None = None
) -> list[Any]:
    """Leaves of ``prefix`` repeated over the leaves of the matching ``full`` subtree."""
    out: list[Any] = []

    def collect(x: Any, sub: Any) -> None:
        out.extend([x] * len(jax.tree.leaves(sub)))

    try:
        jax.tree.map(collect, prefix, full, is_leaf=is_leaf)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"{what} must be a pytree with the structure of the parameters (or a prefix of "
            f"it); got structure {jax.tree.structure(prefix, is_leaf=is_leaf)} for parameters "
            f"of structure {jax.tree.structure(full)}"
        ) from err
    return out


def _lazy_flags(mask: MaskSpec, tree: Any) -> list[bool]:
    """One Python bool per leaf of ``tree``: whether that leaf is lazy."""
    leaves_with_path, _ = jax.tree_util.tree_flatten_with_path(tree)
    if mask is None:
        return [True] * len(leaves_with_path)
    if isinstance(mask, str | re.Pattern):
        pattern = re.compile(mask)
        flags = [bool(pattern.search(jax.tree_util.keystr(p))) for p, _ in leaves_with_path]
        if not any(flags):
            names = [jax.tree_util.keystr(p) for p, _ in leaves_with_path]
            raise ValueError(
                f"mask pattern {pattern.pattern!r} matched no parameter path; the paths "
                f"(jax.tree_util.keystr) are {names}"
            )
        return flags
    if callable(mask):
        mask = mask(tree)
    flags = _broadcast_prefix(mask, tree, "mask")
    for f in flags:
        if not isinstance(f, bool | np.bool_):
            raise TypeError(
                f"mask leaves must be Python bools (static, one per parameter leaf); got "
                f"{type(f).__name__}"
            )
    return [bool(f) for f in flags]


def _check_lazy_leaves(tree: Any, flags: list[bool]) -> None:
    for (path, leaf), flag in zip(jax.tree_util.tree_flatten_with_path(tree)[0], flags):
        if flag and np.ndim(leaf) < 1:
            raise ValueError(
                f"lazy parameter {jax.tree_util.keystr(path)} must have at least 1 dimension "
                f"(rows along axis 0); got shape {np.shape(leaf)}"
            )


def _row_ids_per_leaf(row_ids: Any, tree: Any, flags: list[bool]) -> list[jax.Array | None]:
    """Validated 1-D integer row ids (or None) for each leaf of ``tree``."""
    n = len(flags)
    if row_ids is None:
        return [None] * n
    if isinstance(row_ids, jax.Array | np.ndarray):
        num_lazy = sum(flags)
        if num_lazy != 1:
            raise ValueError(
                f"row_ids given as a single array needs exactly one lazy parameter, but there "
                f"are {num_lazy}; pass a pytree of row ids with the parameters' structure "
                f"(None for leaves without ids) or narrow the mask"
            )
        per_leaf: list[Any] = [row_ids if f else None for f in flags]
    else:
        per_leaf = _broadcast_prefix(row_ids, tree, "row_ids", is_leaf=lambda x: x is None)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    out: list[jax.Array | None] = []
    for ids, flag, path in zip(per_leaf, flags, paths):
        if ids is None:
            out.append(None)
            continue
        if not flag:
            raise ValueError(f"row_ids given for {path}, which is not a lazy parameter (mask)")
        ids = jnp.asarray(ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"row_ids for {path} must be an integer array; got dtype {ids.dtype}")
        if ids.ndim != 1:
            raise ValueError(
                f"row_ids for {path} must be 1-D (n_ids,) (ravel token ids first); got shape "
                f"{ids.shape}"
            )
        out.append(ids)
    return out


def _row_shape(mask: jax.Array, ndim: int) -> jax.Array:
    return mask.reshape(mask.shape + (1,) * (ndim - 1))


def _unique_rows(
    ids: jax.Array, num_rows: int, with_inverse: bool = True
) -> tuple[jax.Array, jax.Array | None]:
    """Sorted distinct valid ids padded to ``len(ids)``, and the inverse index (or None).

    Ids outside ``[0, num_rows)`` (e.g. ``-1`` padding) are dropped; the padding is
    ``num_rows + k`` at position ``k`` (distinct, so the result stays sorted and unique),
    ids that gathers read as zeros and scatters drop. ``inverse[j]`` is the position of
    ``ids[j]`` in the result, or ``len(ids)`` (out of range) for a dropped id.

    One sort of the ids alone (a sort carrying the positions along, as ``jnp.unique``'s
    inverse needs, costs several times more on CPU); the inverse is a binary search.
    """
    n = ids.shape[0]
    if num_rows + n > _INDEX_LIMIT:
        raise ValueError(f"table with {num_rows} rows is too large for int32 row ids")
    if ids.dtype.itemsize < 4:
        ids = ids.astype(_INDEX_DTYPE)
    if _explicit_spec(ids) is not None:
        # Ids straight from a batch sharded over explicit mesh axes: the sort needs the
        # whole id list on every device (a few KB).
        ids = jax.sharding.reshard(ids, jax.sharding.PartitionSpec())
    valid = (ids >= 0) & (ids < num_rows)
    ids = jnp.where(valid, ids, num_rows).astype(_INDEX_DTYPE)
    sorted_ids = jnp.sort(ids)
    first = jnp.concatenate([jnp.ones((1,), bool), sorted_ids[1:] != sorted_ids[:-1]])
    head = first & (sorted_ids < num_rows)  # the first of each run of a valid id
    rank = jnp.cumsum(head, dtype=_INDEX_DTYPE) - 1
    padding = num_rows + jnp.arange(n, dtype=_INDEX_DTYPE)
    uids = padding.at[jnp.where(head, rank, n)].set(sorted_ids, mode="drop")
    if not with_inverse:
        return uids, None
    inverse = jnp.where(valid, rank[jnp.searchsorted(sorted_ids, ids)], n)
    return uids, inverse


def _explicit_spec(x: jax.Array) -> jax.sharding.PartitionSpec | None:
    """Partition spec of ``x`` when it is sharded over explicit mesh axes, else None.

    Under explicit sharding (``jax.set_mesh`` with ``AxisType.Explicit``) gathers
    and scatters on a sharded table need their output sharding spelled out.
    """
    spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
    if spec is None or all(axis is None for axis in spec):
        return None
    return spec


def _gather(x: jax.Array, uids: jax.Array) -> jax.Array:
    spec = _explicit_spec(x)
    out_sharding = None if spec is None else jax.sharding.PartitionSpec(None, *spec[1:])
    return x.at[uids].get(
        mode="fill",
        fill_value=0,
        indices_are_sorted=True,
        unique_indices=True,
        out_sharding=out_sharding,
    )


def _scatter(x: jax.Array, rows: jax.Array, uids: jax.Array, add: bool = False) -> jax.Array:
    ref = x.at[uids]
    method = ref.add if add else ref.set
    return method(
        rows.astype(x.dtype),
        mode="drop",
        indices_are_sorted=True,
        unique_indices=True,
        out_sharding=_explicit_spec(x),
    )


def _plan_leaf(g: Any, p: Any, is_lazy: bool, ids: jax.Array | None, sparse_ok: bool) -> _Plan:
    """The plan of one parameter leaf: which path it takes and what the inner optimizer sees.

    Args:
      g: the gradient leaf (the table gradient, or pre-gathered rows ``(n_ids,) + row``).
      p: the parameter leaf, or None (``update`` called without params; then no row ids).
      is_lazy: whether the mask selects this leaf.
      ids: validated 1-D row ids for this leaf, or None (non-zero-gradient rule).
      sparse_ok: frozen policy and an elementwise inner optimizer.
    """
    if not is_lazy:
        return _Plan("plain", g, p)
    table_shape = tuple(p.shape) if p is not None else tuple(g.shape)
    gathered = tuple(g.shape) != table_shape
    if gathered and (ids is None or tuple(g.shape) != ids.shape + table_shape[1:]):
        raise ValueError(
            f"gradient of a lazy parameter of shape {table_shape} must have that shape, "
            f"or be pre-gathered rows of shape (n_ids,) + {table_shape[1:]} with row_ids "
            f"of shape (n_ids,); got gradient shape {tuple(g.shape)} and row_ids "
            f"{None if ids is None else ids.shape}"
        )
    num_rows = table_shape[0]
    if ids is None:
        touched = jnp.any(g != 0, axis=tuple(range(1, g.ndim)))
        return _Plan("dense", g, p, table_shape, touched=touched)
    if ids.shape[0] == 0:
        touched = jnp.zeros((num_rows,), bool)
        grad = jnp.zeros_like(p, g.dtype) if gathered else jnp.zeros_like(g)
        return _Plan("dense", grad, p, table_shape, touched=touched)
    uids, inverse = _unique_rows(ids, num_rows, with_inverse=gathered)
    if gathered:
        g_rows = jax.ops.segment_sum(g, inverse, num_segments=ids.shape[0])
    else:
        g_rows = _gather(g, uids)
    if sparse_ok:
        p_rows = None if p is None else _gather(p, uids)
        return _Plan("sparse", g_rows, p_rows, table_shape, uids=uids)
    touched = jnp.zeros((num_rows,), bool).at[uids].set(True, mode="drop")
    grad = _scatter(jnp.zeros_like(p, g.dtype), g_rows, uids, add=True) if gathered else g
    return _Plan("dense", grad, p, table_shape, touched=touched)


def _emit(u: jax.Array, plan: _Plan, ref_leaf: jax.Array) -> jax.Array:
    """The update returned for one leaf from the inner update ``u`` and the leaf's plan."""
    if plan.kind == "plain":
        return u
    if plan.kind == "dense":
        return jnp.where(_row_shape(plan.touched, u.ndim), u, jnp.zeros_like(u))
    # Scatter-add into zeros: XLA folds `params + updates` into one in-place scatter when
    # the step is jitted with donated params. `ref_leaf` gives the table's shape (and,
    # under explicit sharding, its sharding).
    return _scatter(jnp.zeros_like(ref_leaf, u.dtype), u, plan.uids, add=True)


def _non_elementwise_error(path: str, leaf: Any, table_shape: tuple[int, ...]) -> ValueError:
    return ValueError(
        f"elementwise=True, but the inner state holds a leaf of shape {np.shape(leaf)} for "
        f"the lazy parameter {path or '(root)'} of shape {tuple(table_shape)}: the inner "
        f"optimizer is not elementwise (e.g. factored statistics such as AdaFactor's); use "
        f"elementwise=False"
    )


def _is_row_stat_mismatch(leaf: Any, table_shape: tuple[int, ...]) -> bool:
    """A floating state leaf of a parameter copy that is not shaped like its parameter.

    Scalars are global (counts, injected hyperparameters) and integer leaves are not
    per-entry statistics (e.g. PRNG keys), so neither counts.
    """
    return (
        np.ndim(leaf) >= 1
        and jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
        and np.shape(leaf) != tuple(table_shape)
    )


def _map_param_copies(fn: Callable[..., Any], state: Any, *others: Any, treedef: Any) -> Any:
    """Apply ``fn(plan_index, leaf, *other_leaves)`` on every parameter copy in ``state``.

    A parameter copy is a subtree with the parameters' tree structure (e.g. Adam's
    ``mu`` and ``nu``); leaves outside such copies (e.g. ``count``) are returned from
    the last tree of ``(state, *others)`` unchanged.
    """

    def is_copy(node: Any) -> bool:
        return jax.tree.structure(node) == treedef

    def on_node(node: Any, *other_nodes: Any) -> Any:
        if not is_copy(node):
            return other_nodes[-1] if other_nodes else node
        leaves = treedef.flatten_up_to(node)
        other_leaves = [treedef.flatten_up_to(o) for o in other_nodes]
        new = [fn(i, leaf, *(o[i] for o in other_leaves)) for i, leaf in enumerate(leaves)]
        return jax.tree.unflatten(treedef, new)

    return jax.tree.map(on_node, state, *others, is_leaf=is_copy)


def lazy(
    inner: optax.GradientTransformation,
    mask: MaskSpec = None,
    *,
    policy: str = "article",
    elementwise: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Wrap ``inner`` so that only the rows touched by the batch are updated.

    For a lazy parameter :math:`\theta` with rows :math:`\theta_r` (slices along
    axis 0) and touched set :math:`T_t` at step :math:`t`, with inner update
    :math:`u_t, s_t = \mathrm{inner}(g_t, s_{t-1}, \theta_{t-1})`:

    .. math::

        \Delta\theta_{t,r} = [r \in T_t]\, u_{t,r}, \qquad
        s_{t,r} = \begin{cases} s_{t,r} & \text{article, or } r \in T_t \\
                                s_{t-1,r} & \text{frozen and } r \notin T_t \end{cases}

    A row is touched when any entry of its gradient is non-zero, or, when
    ``row_ids`` are passed to ``update``, exactly when its id is listed (a row can
    be in the batch and still get an exactly zero gradient). Scalar state leaves
    (Adam's ``count``, injected hyperparameters) are global; under ``"frozen"``
    the bias correction therefore uses the global step (TF-Addons ``LazyAdam``).
    State leaves of a lazy parameter whose shape differs from the parameter's
    (e.g. factored statistics) cannot be frozen per row and are updated as usual.
    Non-lazy parameters get the plain inner update.

    ``update(updates, state, params=None, *, row_ids=None, **extra_args)``; the
    other extra arguments go to ``inner``. ``row_ids`` is either one integer array
    of shape ``(n_ids,)`` (when exactly one parameter is lazy, the common one-table
    case) or a pytree with the parameters' structure (or a prefix of it) holding a
    ``(n_ids,)`` integer array at lazy leaves and ``None`` elsewhere; lazy leaves
    with ``None`` use the non-zero-gradient rule. Ids may repeat (counted once);
    ids outside ``[0, num_rows)`` such as ``-1`` padding are ignored. ``n_ids`` is
    static under ``jax.jit``.

    Sparse path: with ``row_ids``, ``policy="frozen"`` and ``elementwise=True``,
    the rows are de-duplicated (one sort of the ids, static size), the gradient,
    parameter and per-parameter state rows are gathered, ``inner.update`` runs on
    those rows only (scalar state leaves stay global) and the results are
    scattered back; the update is zero elsewhere. ``elementwise=True`` declares
    that ``inner`` treats every entry independently (Adam/AdamW/Adamax/Lion,
    SGD with or without momentum, RMSProp, per-entry clipping, schedules); do not
    set it for transformations that look at a whole tensor (global-norm clipping,
    AdaFactor, LAMB/LARS trust ratios, Shampoo, ...). Where the inner state shows it
    (a floating state leaf of a lazy parameter's copy, such as AdaFactor's factored
    row statistics, shaped unlike the parameter) ``elementwise=True`` raises a
    ``ValueError`` at ``init`` whatever the policy (and in the sparse path of
    ``update``); a whole-tensor transformation whose state does not show it (e.g.
    global-norm clipping) cannot be detected. Otherwise (``"article"``, which must
    update every row's state, or a non-elementwise ``inner``) the ids
    define the touched mask of the dense masked path, which is correct for any
    inner optimizer.

    ``row_ids`` need ``params`` (the tables' shapes; without them ``update`` raises a
    ``ValueError``). The gradient of a lazy leaf is the dense table gradient. With
    ``row_ids`` (and ``params``), it may instead be the pre-gathered row gradient of shape
    ``(n_ids,) + table.shape[1:]`` (``n_ids != num_rows``; rows of repeated ids are
    summed), which avoids building the dense gradient; the returned update always
    has the table's shape. Pre-gathered gradients cannot pass through
    transformations that need the table shape (``optax.MultiSteps``).

    Under ``optax.MultiSteps`` the inner update sees the accumulated gradient but
    only the last micro-batch's extra arguments: use the non-zero rule there, or
    pass the ids of all micro-batches. ``lazy`` has no numeric hyperparameters:
    wrap the inner optimizer in ``optax.inject_hyperparams`` to change its learning
    rate through ``state.inner_state.hyperparams``.

    Any inner state optax's transformations accept works, Python scalar leaves
    included. Non-finite gradients: a row with a NaN or infinite entry is touched
    under the non-zero rule, so its update is non-finite (NaN in, NaN out); with
    ``row_ids`` the gradients of unlisted rows are ignored whatever their values
    (under ``"article"`` the inner state still sees them). Gradients whose tree
    structure differs from ``params``, or non-lazy leaves of another shape, raise a
    ``ValueError`` naming the leaf.

    Sharding: the state is built by ``inner.init``, so an eager ``init`` (or a
    jitted one under explicit sharding) keeps the per-parameter leaves sharded like
    the parameters; the scatters keep the table's sharding and gathered rows are
    replicated along the row axis.

    Reference: Su Jianlin, "Lazy optimizer for embeddings" (kexue.fm, 2019) and the
    bert4keras ``extend_with_lazy_optimization``; TF-Addons ``LazyAdam``.

    Args:
      inner: the optimizer to wrap.
      mask: which parameters are lazy: ``None`` (all), a bool pytree with the
        parameters' structure (or a prefix), a callable ``params -> bool pytree``
        (optax convention; a path predicate is
        ``lambda p: jax.tree_util.tree_map_with_path(lambda k, _: pred(k), p)``),
        or a regex ``str`` searched in ``jax.tree_util.keystr(path)``.
      policy: ``"article"`` (state updated as usual, only the parameter update
        masked) or ``"frozen"`` (untouched rows keep their state too).
      elementwise: declare that ``inner`` is elementwise, enabling the sparse path.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`LazyState`.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from optax_contrib import lazy
      >>> table = jnp.ones((5, 2))
      >>> tx = lazy(optax.adam(0.1), policy="frozen", elementwise=True)
      >>> state = tx.init(table)
      >>> grads = jnp.zeros((5, 2)).at[1].set(1.0)
      >>> updates, state = tx.update(grads, state, table, row_ids=jnp.array([1, 3, 1, -1]))
      >>> print(updates.round(3))
      [[ 0.   0. ]
       [-0.1 -0.1]
       [ 0.   0. ]
       [ 0.   0. ]
       [ 0.   0. ]]
    """
    if policy not in _POLICIES:
        raise ValueError(f"policy must be one of {_POLICIES}; got {policy!r}")
    if not isinstance(elementwise, bool):
        raise TypeError(f"elementwise must be a bool; got {type(elementwise).__name__}")
    inner = optax.with_extra_args_support(inner)
    sparse_ok = policy == "frozen" and elementwise

    def check_elementwise(inner_state: Any, params: optax.Params, flags: list[bool]) -> None:
        """Raises if a lazy parameter's copy in the inner state is shaped unlike it."""
        leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)

        def check(i: int, leaf: Any) -> Any:
            path, p = leaves_with_path[i]
            if flags[i] and _is_row_stat_mismatch(leaf, np.shape(p)):
                raise _non_elementwise_error(jax.tree_util.keystr(path), leaf, np.shape(p))
            return leaf

        _map_param_copies(check, inner_state, treedef=treedef)

    def init_fn(params: optax.Params) -> LazyState:
        flags = _lazy_flags(mask, params)
        _check_lazy_leaves(params, flags)
        inner_state = inner.init(params)
        if elementwise:
            check_elementwise(inner_state, params, flags)
        return LazyState(inner_state=inner_state)

    def update_fn(
        updates: optax.Updates,
        state: LazyState,
        params: optax.Params | None = None,
        *,
        row_ids: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, LazyState]:
        ref = params if params is not None else updates
        flags = _lazy_flags(mask, ref)
        _check_lazy_leaves(ref, flags)
        g_leaves, treedef = jax.tree.flatten(updates)
        if params is not None:
            check_same_structure("updates", updates, params, "the parameters")
        p_leaves = treedef.flatten_up_to(params) if params is not None else [None] * len(flags)
        ids_leaves = _row_ids_per_leaf(row_ids, ref, flags)
        if params is None and any(ids is not None for ids in ids_leaves):
            raise ValueError(
                "row_ids need the parameters (the tables' shapes tell a table gradient from "
                "pre-gathered rows): call update(updates, state, params, row_ids=...)"
            )
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(ref)[0]]
        for path, g, p, flag in zip(paths, g_leaves, p_leaves, flags):
            if not flag and p is not None and np.shape(g) != np.shape(p):
                raise shape_error("updates", path, np.shape(p), np.shape(g), "the parameter")

        # Plan every leaf, then run the inner optimizer once on the planned gradients.
        plans = [
            _plan_leaf(g, p, flag, ids, sparse_ok)
            for g, p, flag, ids in zip(g_leaves, p_leaves, flags, ids_leaves)
        ]

        def row_view(i: int, leaf: Any) -> Any:
            plan = plans[i]
            if plan.kind != "sparse":
                return leaf
            if np.shape(leaf) == plan.table_shape:
                return _gather(leaf, plan.uids)
            if _is_row_stat_mismatch(leaf, plan.table_shape):
                raise _non_elementwise_error(paths[i], leaf, plan.table_shape)
            return leaf

        inner_state = state.inner_state
        if any(plan.kind == "sparse" for plan in plans):
            inner_state = _map_param_copies(row_view, inner_state, treedef=treedef)

        new_updates, new_inner_state = inner.update(
            jax.tree.unflatten(treedef, [plan.grad for plan in plans]),
            inner_state,
            None if params is None else jax.tree.unflatten(treedef, [plan.param for plan in plans]),
            **extra_args,
        )

        def merge(i: int, old: Any, new: Any) -> Any:
            plan = plans[i]
            if plan.kind == "plain" or np.shape(old) != plan.table_shape:
                return new
            if plan.kind == "sparse":
                return _scatter(old, new, plan.uids)
            if policy == "frozen":
                return jnp.where(_row_shape(plan.touched, old.ndim), new, old).astype(old.dtype)
            return new

        if policy == "frozen" and any(plan.kind != "plain" for plan in plans):
            new_inner_state = _map_param_copies(
                merge, state.inner_state, new_inner_state, treedef=treedef
            )

        # Zeros shaped (and, under explicit sharding, sharded) like the table.
        ref_leaves = [g if p is None else p for g, p in zip(g_leaves, p_leaves)]
        u_leaves = treedef.flatten_up_to(new_updates)
        out = [_emit(u, plan, r) for u, plan, r in zip(u_leaves, plans, ref_leaves)]
        return jax.tree.unflatten(treedef, out), LazyState(inner_state=new_inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
