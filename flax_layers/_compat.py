"""Deprecated keyword aliases, shared by every function whose arguments were renamed.

Package-internal. The transformer API uses one vocabulary (Hugging Face names where
they exist): ``pad_token_id``, ``sep_token_id``, ``cls_token_id``, ``mask_token_id``,
``end_token_id`` (generation's stop token), ``seq_len`` (a static sequence length) and
``<what>_length`` for a per-example length array (``KVCache.source_length``,
``MLMReadingInputs.passage_length``). :func:`renamed_arguments` keeps the older names
working: an old keyword is mapped to its new name with a ``DeprecationWarning``, and
passing both raises a ``TypeError``.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import TypeVar

__all__ = ["DEPRECATED", "renamed_arguments"]

F = TypeVar("F", bound=Callable)


class _Deprecated:
    """Default of a deprecated keyword alias in a signature: "not given"."""

    def __repr__(self) -> str:
        return "<deprecated alias>"


DEPRECATED = _Deprecated()


def renamed_arguments(**renames: str) -> Callable[[F], F]:
    """Decorator accepting the deprecated keyword ``old`` for the argument ``new``.

    Args:
      **renames: ``old="new"`` pairs.

    Returns:
      A decorator. The wrapped function warns (``DeprecationWarning``, naming the
      function, the old and the new name) when called with an old keyword, passes its
      value under the new name, and raises ``TypeError`` when both names are given.
      The wrapper's signature lists the old names too, as keyword-only arguments
      defaulting to :data:`DEPRECATED`, so ``jax.jit(fn, static_argnames=...)`` accepts
      either name.

    Example:
      >>> @renamed_arguments(pad_id="pad_token_id")
      ... def f(x, pad_token_id=0):
      ...     return x + pad_token_id
      >>> import warnings
      >>> with warnings.catch_warnings(record=True) as w:
      ...     warnings.simplefilter("always")
      ...     f(1, pad_id=2), str(w[0].message)
      (3, 'f: `pad_id` is deprecated, use `pad_token_id`.')
    """

    def decorate(fn: F) -> F:
        name = fn.__name__
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        at = next(
            (i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD),
            len(params),
        )
        aliases = [
            inspect.Parameter(old, inspect.Parameter.KEYWORD_ONLY, default=DEPRECATED)
            for old in renames
        ]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in renames.items():
                if kwargs.get(old, DEPRECATED) is DEPRECATED:
                    kwargs.pop(old, None)
                else:
                    if new in kwargs:
                        raise TypeError(
                            f"{name}: got both `{new}` and its deprecated alias `{old}`; "
                            f"pass `{new}` only."
                        )
                    warnings.warn(
                        f"{name}: `{old}` is deprecated, use `{new}`.",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params[:at] + aliases + params[at:])
        return wrapper  # type: ignore[return-value]

    return decorate
