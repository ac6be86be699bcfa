"""Trace-time checks of argument types and of tree structures/shapes for the optax transforms.

Each error names the argument and gives the expected and the actual type, structure or
shape. Only static information is inspected (Python types, dtypes, shapes, tree
structures), so the checks run unchanged under ``jax.jit``; the value ranges of concrete
scalars are checked with :mod:`optax_contrib._hyperparams`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from optax_contrib._hyperparams import check_range

_MAX_LISTED = 3


def describe(value: Any) -> str:
    """A short description of a value for error messages: its type and, if small, its repr."""
    if isinstance(value, jax.core.Tracer):
        return f"a traced {jax.typeof(value).str_short()}"
    if isinstance(value, jax.Array | np.ndarray):
        return f"an array of dtype {value.dtype} and shape {tuple(value.shape)}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def check_real_scalar(
    name: str,
    value: Any,
    *,
    integer: bool = False,
    allow_none: bool = False,
    allow_schedule: bool = False,
) -> None:
    """Raises ``TypeError`` unless ``value`` is a real scalar number (or an allowed alternative).

    Accepted numbers: Python ``int``/``float`` (not ``bool``), numpy integer/floating
    scalars, and 0-d numpy or JAX arrays (concrete or traced, as injected by
    ``optax.inject_hyperparams``) of an integer or floating dtype. Ranges and
    integrality of concrete values are checked separately.

    Args:
      name: the argument name, used in the message.
      value: the value to check.
      integer: the argument is an integer (only changes the message).
      allow_none: accept ``None``.
      allow_schedule: accept a callable (an optax schedule ``count -> value``).
    """
    if value is None and allow_none:
        return
    if allow_schedule and callable(value) and not isinstance(value, jax.Array | np.ndarray):
        return
    ok = False
    if isinstance(value, bool | np.bool_):
        ok = False
    elif isinstance(value, int | float | np.integer | np.floating):
        ok = True
    elif isinstance(value, jax.Array | np.ndarray):
        dtype = value.dtype
        ok = np.ndim(value) == 0 and (
            np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
        )
    if ok:
        return
    expected = "an integer" if integer else "a real number"
    expected += " (Python scalar or 0-d array)"
    if allow_schedule:
        expected += " or a schedule (callable)"
    if allow_none:
        expected += " or None"
    raise TypeError(f"`{name}` must be {expected}, got {describe(value)}.")


def check_number(
    name: str,
    value: Any,
    *,
    integer: bool = False,
    allow_none: bool = False,
    allow_schedule: bool = False,
    **interval: Any,
) -> None:
    """:func:`check_real_scalar` (``TypeError``), then the range of a concrete value.

    ``interval`` holds ``low``/``high``/``low_open``/``high_open`` as in
    :func:`optax_contrib._hyperparams.check_range` (``ValueError``); traced values and
    schedules pass the range check.
    """
    check_real_scalar(
        name, value, integer=integer, allow_none=allow_none, allow_schedule=allow_schedule
    )
    if value is not None:
        check_range(name, value, **interval)


def _paths(tree: Any) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def check_same_structure(name: str, tree: Any, expected: Any, expected_name: str) -> None:
    """Raises ``ValueError`` unless ``tree`` has the tree structure of ``expected``.

    The message lists (up to three) leaf paths missing from ``tree`` and unexpected in it.
    """
    got, want = jax.tree.structure(tree), jax.tree.structure(expected)
    if got == want:
        return
    got_paths, want_paths = _paths(tree), _paths(expected)
    missing = [p for p in want_paths if p not in set(got_paths)][:_MAX_LISTED]
    extra = [p for p in got_paths if p not in set(want_paths)][:_MAX_LISTED]
    if missing or extra:
        detail = f"missing leaves {missing}, unexpected leaves {extra}"
    else:
        detail = f"expected structure {want}, got {got}"
    raise ValueError(
        f"`{name}` must have the tree structure of {expected_name} "
        f"({len(want_paths)} leaves); got {len(got_paths)} leaves: {detail}."
    )


def shape_error(name: str, path: Any, expected: tuple[int, ...], got: tuple[int, ...], what: str):
    """The ``ValueError`` for a leaf of ``name`` at ``path`` whose shape is not ``expected``."""
    where = jax.tree_util.keystr(path) if isinstance(path, tuple) else str(path)
    return ValueError(
        f"`{name}` leaf {where or '(root)'} must have the shape of {what}: expected "
        f"{tuple(expected)}, got {tuple(got)}."
    )


def check_same_shapes(name: str, tree: Any, expected: Any, expected_name: str) -> None:
    """Raises ``ValueError`` unless ``tree`` has the structure and leaf shapes of ``expected``."""
    check_same_structure(name, tree, expected, expected_name)
    leaves_with_path = jax.tree_util.tree_flatten_with_path(tree)[0]
    for (path, leaf), ref in zip(leaves_with_path, jax.tree.leaves(expected)):
        if np.shape(leaf) != np.shape(ref):
            raise shape_error(name, path, np.shape(ref), np.shape(leaf), expected_name)
