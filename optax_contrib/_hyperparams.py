"""Trace-time checks of numeric hyperparameters shared by the optax transforms.

Concrete values are checked when a transform is built; traced values (injected by
``optax.inject_hyperparams`` inside ``jit``) and schedules cannot be and pass through.
"""

from __future__ import annotations

import math
from typing import Any

import jax


def as_float(value: Any) -> float | None:
    """Returns ``float(value)`` for concrete scalars, ``None`` for tracers/schedules."""
    if value is None or callable(value) or isinstance(value, jax.core.Tracer):
        return None
    try:
        return float(value)
    except TypeError:  # includes jax.errors.ConcretizationTypeError
        return None


def check_range(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raises ``ValueError`` if a concrete scalar ``value`` is outside the interval.

    Traced values (e.g. hyperparameters injected by ``optax.inject_hyperparams``
    inside ``jit``) and schedules cannot be checked and are let through.
    """
    v = as_float(value)
    if v is None:
        return
    bad = math.isnan(v)
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        left = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
        right = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        interval = f"{left}, {right}"
        raise ValueError(f"`{name}` must be a number in {interval}, got {value!r}.")
