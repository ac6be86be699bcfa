"""Lookahead with the slow weights in the optimizer state.

``lookahead(inner)`` runs ``inner`` on the ordinary (fast) parameters and keeps the
slow weights in its own state, so it takes plain parameter trees and works
unchanged in ``optax.chain``, ``optax.MultiSteps``, ``optax.inject_hyperparams``,
``flax.nnx.Optimizer`` and a Flax ``TrainState`` (``optax.lookahead`` needs a
``LookaheadParams`` wrapper around the parameters instead). The slow weights, which
are the ones to evaluate, are read back with :func:`lookahead_slow_params`.

Cost per step: the emitted update is one elementwise expression of the inner
update, the parameters and the slow weights, so XLA fuses it with the inner
optimizer and ``optax.apply_updates`` (no temporary buffer for the inner update).
The one thing such a fused step cannot do is write the slow weights while the
parameters are being overwritten in place; so at a synchronisation step the new
slow weights go into the parameters only, a flag records that, and the next update
copies them into the state (a ``lax.cond``, so only then). Until that next update,
the slow weights *are* the parameters -- :func:`lookahead_slow_params` takes the
parameters for that reason.

Alternatives measured on XLA:CPU (29M parameters, Adam, ``k = 5``) and dropped:
writing the new slow weights at the synchronisation step itself, in a pass of their
own, makes the inner update a temporary buffer every step (2.4× Adam); a select
instead of the ``lax.cond`` for the copy costs the same as the cond; copying with
``dynamic_update_slice`` or ``+ 0`` costs the same as a plain copy. The copy plus the
one extra read of the slow weights at the synchronisation step is what keeping the
slow weights costs (1.08–1.11× Adam's step time on a memory-bound CPU).

Reference: Zhang, Lucas, Hinton & Ba, "Lookahead Optimizer: k steps forward, 1 step
back", NeurIPS 2019, https://arxiv.org/abs/1907.08610.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_contrib._checks import check_number, check_same_shapes, describe
from optax_contrib._hyperparams import as_float

__all__ = ["LookaheadState", "lookahead", "lookahead_slow_params"]


class LookaheadState(NamedTuple):
    """State of :func:`lookahead`.

    Attributes:
      inner_state: state of the inner (fast) optimizer.
      slow_params: the slow weights ``φ`` (same structure and dtypes as the params),
        except right after a synchronisation step (``params_are_slow``).
      steps_since_sync: int32 number of inner steps since the last synchronisation.
      params_are_slow: bool, the last update was a synchronisation step: the slow
        weights are the current parameters (copied into ``slow_params`` at the start
        of the next update).
    """

    inner_state: optax.OptState
    slow_params: optax.Params
    steps_since_sync: jax.Array
    params_are_slow: jax.Array


def lookahead(
    inner: optax.GradientTransformation,
    sync_period: int = 5,
    slow_step_size: float = 0.5,
    reset_state: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Lookahead around an inner optimizer, slow weights kept in the state.

    With fast weights ``θ`` (the ordinary parameters) and slow weights ``φ``
    (initialised to the parameters at ``init``, not to zeros), each step runs the
    inner optimizer on ``θ``; after every ``k`` inner steps::

        φ ← φ + α (θ − φ);   θ ← φ

    The emitted updates satisfy ``params + updates = new fast weights``: the inner
    update ``u`` on ordinary steps and ``φ + α (θ + u − φ) − θ`` on synchronisation
    steps, so after a sync the parameters are the new slow weights. The updates
    must be applied unchanged (put ``lookahead`` last in a chain).

    Under ``optax.inject_hyperparams`` the numeric ``sync_period`` and
    ``slow_step_size`` become injectable: both are read at every step, so a change
    takes effect at the next update (a new ``sync_period`` is compared with the inner
    steps taken since the last synchronisation). ``inner`` (not a number) and
    ``reset_state`` (a bool) stay static automatically.

    The inner state may hold any leaves optax's own transforms accept, including
    Python scalars (``reset_state`` selects between arrays made of them). A non-finite
    inner update entry gives a non-finite emitted update entry, and at the next
    synchronisation a non-finite slow weight (NaN in, NaN out).

    Args:
      inner: the fast optimizer (an ``optax.GradientTransformation``; extra args
        given to ``update`` are passed on to it).
      sync_period: ``k ≥ 1``, inner steps between synchronisations.
      slow_step_size: ``α ∈ (0, 1]``.
      reset_state: at each synchronisation step, replace the inner state by
        ``inner.init(params)`` (as ``optax.lookahead`` does, with the parameters
        given to that step).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``init`` and ``update`` take the
      plain parameter tree.

    Raises:
      TypeError: at construction, for an ``inner`` that is not a transformation, a
        ``sync_period``/``slow_step_size`` that is not a real number (e.g. the string
        ``"5"``), or a non-bool ``reset_state``; at ``init``, for
        ``optax.LookaheadParams``.
      ValueError: at construction, for values out of range; in ``update``, without
        ``params``, or when the inner updates do not have the parameters' structure and
        shapes.

    Reference:
      Zhang, Lucas, Hinton & Ba, "Lookahead Optimizer: k steps forward, 1 step
      back", NeurIPS 2019, Algorithm 1, https://arxiv.org/abs/1907.08610.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> tx = lookahead(optax.sgd(0.1), sync_period=2, slow_step_size=0.5)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     grads = jax.grad(lambda p: 0.5 * jnp.sum(p**2))(params)
      ...     updates, state = tx.update(grads, state, params)
      ...     params = optax.apply_updates(params, updates)
      ...     print(params, lookahead_slow_params(state, params))
      [ 0.9 -1.8] [ 1. -2.]
      [ 0.905 -1.81 ] [ 0.905 -1.81 ]
      [ 0.8145 -1.629 ] [ 0.905 -1.81 ]
    """
    if not (callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None))):
        raise TypeError(
            f"`inner` must be an optax.GradientTransformation, got {type(inner).__name__}."
        )
    check_number("sync_period", sync_period, integer=True)
    k = as_float(sync_period)
    if k is not None and not (k >= 1 and k.is_integer()):
        raise ValueError(f"`sync_period` must be an integer >= 1, got {sync_period!r}.")
    check_number("slow_step_size", slow_step_size, low=0.0, low_open=True, high=1.0)
    if not isinstance(reset_state, bool):
        raise TypeError(f"`reset_state` must be a Python bool, got {describe(reset_state)}.")
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: optax.Params) -> LookaheadState:
        if isinstance(params, optax.LookaheadParams):
            raise TypeError(
                "optax_contrib.lookahead takes the plain parameter tree, not "
                "optax.LookaheadParams (the slow weights live in its state)."
            )
        return LookaheadState(
            inner_state=inner.init(params),
            # A copy, so that params and state can both be donated to a jitted step.
            slow_params=jax.tree.map(lambda p: jnp.array(p, copy=True), params),
            steps_since_sync=jnp.zeros([], jnp.int32),
            params_are_slow=jnp.zeros([], jnp.bool_),
        )

    def update_fn(
        updates: optax.Updates,
        state: LookaheadState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, LookaheadState]:
        if params is None:
            raise ValueError(
                "lookahead needs the current (fast) parameters: call update(grads, state, params)."
            )
        # Finish the previous synchronisation: the parameters are the slow weights.
        slow = jax.lax.cond(
            state.params_are_slow,
            lambda ops: jax.tree.map(lambda p, s: p.astype(s.dtype), *ops),
            lambda ops: ops[1],
            (params, state.slow_params),
        )
        if not extra_args:
            # Without extra arguments (e.g. a lazy inner's pre-gathered rows with row_ids) the
            # gradients are shaped like the parameters: say so before the inner optimizer
            # fails with its own broadcast error.
            check_same_shapes("updates", updates, params, "the parameter")
        inner_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        # The emitted update is applied to the parameters: a differently shaped inner update
        # would broadcast silently.
        check_same_shapes(
            "updates", inner_updates, params, "the parameters (after the inner optimizer)"
        )
        steps = state.steps_since_sync + 1
        sync = steps >= sync_period

        def emitted(u, p, s):
            p32, s32 = p.astype(jnp.float32), s.astype(jnp.float32)
            phi = s32 + slow_step_size * (p32 + u.astype(jnp.float32) - s32)
            return jnp.where(sync, (phi - p32).astype(u.dtype), u)

        leaves, treedef = jax.tree.flatten(inner_updates)
        out = treedef.unflatten(
            [
                emitted(u, p, s)
                for u, p, s in zip(
                    leaves, treedef.flatten_up_to(params), treedef.flatten_up_to(slow)
                )
            ]
        )
        if reset_state:
            # A select (not a cond): it fuses with the inner state update, and the fresh
            # state of the usual optimizers is a constant (zeros).
            inner_state = jax.tree.map(
                lambda fresh, cur: _select(sync, fresh, cur), inner.init(params), inner_state
            )
        new_state = LookaheadState(
            inner_state=inner_state,
            slow_params=slow,
            steps_since_sync=jnp.where(sync, 0, steps).astype(jnp.int32),
            params_are_slow=jnp.asarray(sync, jnp.bool_),
        )
        return out, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _select(pred: jax.Array, on_true: Any, on_false: Any) -> jax.Array:
    """``on_true if pred else on_false`` for one state leaf, with ``on_false``'s dtype.

    Leaves may be Python scalars (optax's transformations accept them in states) or
    typed PRNG keys, which ``jnp.where`` does not take directly.
    """
    on_false = jnp.asarray(on_false)
    if jax.dtypes.issubdtype(on_false.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(on_false)
        data = jnp.where(pred, jax.random.key_data(on_true), jax.random.key_data(on_false))
        return jax.random.wrap_key_data(data, impl=impl)
    return jnp.where(pred, jnp.asarray(on_true, on_false.dtype), on_false)


def _find_lookahead_states(opt_state: Any) -> list[LookaheadState]:
    nodes = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, LookaheadState))
    return [n for n in nodes if isinstance(n, LookaheadState)]


def _unwrap(x: Any) -> Any:
    """The array inside an NNX optimizer variable (``nnx.Optimizer`` wraps state leaves)."""
    return x.get_value() if hasattr(x, "get_value") else x


def lookahead_slow_params(opt_state: Any, params: optax.Params | None = None) -> optax.Params:
    """Returns the slow weights kept by :func:`lookahead` in an optimizer state.

    The lookahead state may be nested anywhere in the state tree (``optax.chain``,
    ``optax.inject_hyperparams``, ``optax.MultiSteps``, ``flax.nnx.Optimizer``'s
    ``opt_state``). The slow weights are the ones to evaluate (the paper reports
    them). Right after a synchronisation step they are the current parameters, which
    the state does not duplicate, so pass ``params`` (the current parameters); without
    them, that case raises. Works under ``jit``.

    With ``flax.nnx.Optimizer`` the result comes back wrapped in NNX optimizer
    variables; ``nnx.update`` writes it into a model (a copy, to keep training the
    fast weights)::

        slow = lookahead_slow_params(optimizer.opt_state, nnx.state(model, nnx.Param))
        eval_model = nnx.clone(model)
        nnx.update(eval_model, slow)          # evaluate eval_model

    With a Flax ``TrainState``: ``lookahead_slow_params(state.opt_state, state.params)``.

    Args:
      opt_state: an optimizer state containing exactly one :class:`LookaheadState`.
      params: the current parameters (same leaves as the slow weights).

    Returns:
      The slow weights, a tree with the structure of the state's ``slow_params``.

    Raises:
      ValueError: if the state holds no lookahead state or more than one, or if
        ``params`` is needed (after a synchronisation step, or under ``jit``) and
        missing or of another size.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(optax.clip_by_global_norm(1.0), lookahead(optax.adam(1e-2)))
      >>> params = {"w": jnp.ones(3)}
      >>> state = tx.init(params)
      >>> print(lookahead_slow_params(state, params)["w"])
      [1. 1. 1.]
    """
    found = _find_lookahead_states(opt_state)
    if len(found) != 1:
        raise ValueError(
            f"expected exactly one lookahead state in `opt_state`, found {len(found)}."
        )
    state = found[0]
    flag = _unwrap(state.params_are_slow)
    if params is None:
        if isinstance(flag, jax.core.Tracer) or bool(flag):
            raise ValueError(
                "the slow weights are the current parameters right after a "
                "synchronisation step (or may be, under jit): pass them, "
                "lookahead_slow_params(opt_state, params)."
            )
        return state.slow_params
    slow_leaves, treedef = jax.tree.flatten(state.slow_params)
    param_leaves = jax.tree.leaves(params)
    if len(param_leaves) != len(slow_leaves) or any(
        jnp.shape(p) != jnp.shape(s) for p, s in zip(param_leaves, slow_leaves)
    ):
        raise ValueError(
            "`params` must have the leaves (and shapes) of the parameters the lookahead "
            f"state was built for: got {len(param_leaves)} leaves, expected {len(slow_leaves)}."
        )
    merged = [
        jnp.where(flag, jnp.asarray(p, s.dtype), s) for p, s in zip(param_leaves, slow_leaves)
    ]
    return treedef.unflatten(merged)
