"""Tests of optax_contrib.lookahead against optax.lookahead (with LookaheadParams) and a
numpy transcription of Algorithm 1 of Zhang et al. 2019; plus the lookahead-specific
contracts (Python-scalar inner states with reset_state, injected hyperparameters,
non-finite gradients, clear errors). The integrations shared by every transform are in
tests/test_transform_matrix.py."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optax_contrib.lookahead import lookahead, lookahead_slow_params

TARGET = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.array([0.5, -0.25])}


def _loss(params):
    return sum(jnp.sum((params[k] - TARGET[k]) ** 2 * (1.0 + jnp.abs(TARGET[k]))) for k in params)


def _init_params():
    return {"w": jnp.ones((3, 4)), "b": jnp.zeros(2)}


def _close(a, b, rtol=1e-6, atol=1e-6):
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol),
        a,
        b,
    )


def _ours(tx, n, params=None):
    """n steps of `tx` on _loss; returns lists of fast params and slow params."""
    params = _init_params() if params is None else params
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(_loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    fast, slow = [], []
    for _ in range(n):
        params, state = step(params, state)
        fast.append(params)
        slow.append(lookahead_slow_params(state, params))
    return fast, slow, state


def _peer(inner, n, sync_period, slow_step_size, reset_state=False):
    """The same run with optax.lookahead and optax.LookaheadParams."""
    tx = optax.lookahead(inner, sync_period, slow_step_size, reset_state=reset_state)
    params = optax.LookaheadParams.init_synced(_init_params())
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(_loss)(params.fast), state, params)
        return optax.apply_updates(params, updates), state

    fast, slow = [], []
    for _ in range(n):
        params, state = step(params, state)
        fast.append(params.fast)
        slow.append(params.slow)
    return fast, slow


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("reset_state", [False, True])
@pytest.mark.parametrize("sync_period,slow_step_size", [(3, 0.5), (1, 0.8)])
def test_matches_optax_lookahead(sync_period, slow_step_size, reset_state):
    inner = optax.adam(0.05)
    n = 3 * sync_period + 2
    fast, slow, _ = _ours(lookahead(inner, sync_period, slow_step_size, reset_state), n)
    peer_fast, peer_slow = _peer(inner, n, sync_period, slow_step_size, reset_state)
    for i in range(n):
        _close(fast[i], peer_fast[i])
        _close(slow[i], peer_slow[i])
        if (i + 1) % sync_period == 0:  # after a sync the parameters are the slow weights
            _close(fast[i], slow[i], atol=1e-7)


@settings(max_examples=20, deadline=None)
@given(
    k=st.integers(1, 5),
    alpha=st.floats(0.05, 1.0),
    lr=st.floats(0.01, 0.4),
    x0=st.lists(st.floats(-3, 3), min_size=3, max_size=3),
)
def test_numpy_algorithm_1(k, alpha, lr, x0):
    """SGD on 0.5·|x|² as inner loop: fast θ ← (1 − lr) θ; every k steps φ ← φ + α(θ − φ)."""
    tx = lookahead(optax.sgd(lr), sync_period=k, slow_step_size=alpha)
    params = jnp.asarray(x0, jnp.float32)
    state = tx.init(params)
    theta = phi = np.asarray(x0, np.float64)
    for t in range(1, 2 * k + 2):
        updates, state = tx.update(params, state, params)
        params = optax.apply_updates(params, updates)
        theta = (1 - lr) * theta
        if t % k == 0:
            phi = phi + alpha * (theta - phi)
            theta = phi
        np.testing.assert_allclose(params, theta, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(lookahead_slow_params(state, params), phi, rtol=1e-5, atol=1e-6)


def test_slow_params_getter_after_sync_and_under_jit():
    tx = lookahead(optax.sgd(0.1), sync_period=2, slow_step_size=0.5)
    params = jnp.array([1.0, -2.0])
    state = tx.init(params)
    getter = jax.jit(lookahead_slow_params)
    expected = [np.array([1.0, -2.0]), 0.905 * np.array([1.0, -2.0])]
    for i in range(2):
        updates, state = tx.update(params, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(getter(state, params), expected[i], rtol=1e-6)
    # after the sync the slow weights are the params, which the state alone does not hold
    with pytest.raises(ValueError, match="pass them"):
        lookahead_slow_params(state)
    with pytest.raises(ValueError, match="leaves"):
        lookahead_slow_params(state, {"a": params, "b": params})
    with pytest.raises(ValueError, match="pass them"):
        jax.jit(lookahead_slow_params)(state)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params(dtype):
    # optax.adam's default eps=1e-8 is 0 in float16 (0/0 = NaN on a zero gradient, with or
    # without lookahead), hence eps=1e-4 here.
    inner = optax.adam(0.05, eps=1e-4)
    params = jax.tree.map(lambda x: x.astype(dtype), _init_params())
    fast, slow, state = _ours(lookahead(inner, 3, 0.5), 7, params)
    assert all(x.dtype == dtype for x in jax.tree.leaves((fast, state.slow_params)))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((fast, slow)))
    peer_fast, peer_slow = _peer(inner, 7, 3, 0.5)
    _close(
        jax.tree.map(lambda x: x.astype(jnp.float32), slow[-1]), peer_slow[-1], rtol=0, atol=3e-2
    )
    _close(
        jax.tree.map(lambda x: x.astype(jnp.float32), fast[-1]), peer_fast[-1], rtol=0, atol=3e-2
    )


def test_slow_weights_start_at_params_not_zeros():
    params = {"w": jnp.full((2,), 3.0)}
    state = lookahead(optax.sgd(0.0), sync_period=1, slow_step_size=0.5).init(params)
    _close(lookahead_slow_params(state), params)
    # zero inner steps then a sync: the weights must not shrink (the Keras defect)
    updates, state = lookahead(optax.sgd(0.0), 1, 0.5).update({"w": jnp.ones(2)}, state, params)
    _close(optax.apply_updates(params, updates), params)


# --------------------------------------------------------------------------- integrations
# jit, chain, MultiSteps, nnx.Optimizer, TrainState, sharding, donation, checkpoints, bf16,
# int leaves and Python-scalar inner states are covered for every transform by
# tests/test_transform_matrix.py; what follows is specific to lookahead.


class OptimizerTestState(NamedTuple):
    """optax's lookahead test optimizer state: ``is_reset`` is a Python bool leaf."""

    aggregate_grads: Any
    is_reset: Any


def _test_optimizer(step_size):
    """optax's lookahead test optimizer (optax/_src/lookahead_test.py): SGD plus a state
    with a Python-scalar leaf, so that resetting the state is observable."""

    def init_fn(params):
        return OptimizerTestState(jax.tree.map(jnp.zeros_like, params), is_reset=True)

    def update_fn(updates, state, params):
        aggregate = jax.tree.map(lambda a, u: a + u, state.aggregate_grads, updates)
        updates = jax.tree.map(lambda u: step_size * u, updates)
        return updates, OptimizerTestState(aggregate, is_reset=False)

    return optax.GradientTransformation(init_fn, update_fn)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("reset_state", [False, True])
def test_python_scalar_inner_state_matches_optax(reset_state, jit):
    """reset_state=True used to fail with "'bool' object has no attribute 'dtype'"."""
    inner = _test_optimizer(-0.5)
    grads = {"x": jnp.array(2.0), "y": jnp.array(-2.0)}
    params = {"x": jnp.array(3.0), "y": jnp.array(-3.0)}
    ours = lookahead(inner, sync_period=3, slow_step_size=0.5, reset_state=reset_state)
    peer = optax.lookahead(inner, sync_period=3, slow_step_size=0.5, reset_state=reset_state)
    state, peer_params = ours.init(params), optax.LookaheadParams.init_synced(params)
    peer_state = peer.init(peer_params)
    update = jax.jit(ours.update) if jit else ours.update
    for t in range(1, 5):
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        peer_updates, peer_state = peer.update(grads, peer_state, peer_params)
        peer_params = optax.apply_updates(peer_params, peer_updates)
        _close(params, peer_params.fast)
        _close(lookahead_slow_params(state, params), peer_params.slow)
        expected = inner.init(params) if reset_state and t == 3 else peer_state.fast_state
        _close(state.inner_state, expected)
        assert bool(state.inner_state.is_reset) == (reset_state and t == 3)


def test_reset_state_with_typed_prng_key_in_inner_state():
    """A typed PRNG key in the inner state is reset to its initial value at a sync."""

    class KeyState(NamedTuple):
        key: jax.Array

    def init_fn(params):
        del params
        return KeyState(jax.random.key(0))

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: -0.1 * u, updates), KeyState(jax.random.split(state.key)[0])

    tx = lookahead(optax.GradientTransformation(init_fn, update_fn), 2, 0.5, reset_state=True)
    params = jnp.ones(3)
    state = tx.init(params)
    step = jax.jit(tx.update)
    _, state = step(params, state, params)
    assert not np.array_equal(
        jax.random.key_data(state.inner_state.key), jax.random.key_data(jax.random.key(0))
    )
    _, state = step(params, state, params)  # sync: reset
    np.testing.assert_array_equal(
        jax.random.key_data(state.inner_state.key), jax.random.key_data(jax.random.key(0))
    )


def test_inject_hyperparams_lookahead_args_take_effect():
    """sync_period and slow_step_size are read at every step: changing them through the
    state takes effect at the next update (compared with optax.lookahead runs)."""
    tx = optax.inject_hyperparams(lookahead)(optax.sgd(0.1), sync_period=3, slow_step_size=0.5)
    params = _init_params()
    state = tx.init(params)
    assert set(state.hyperparams) == {"sync_period", "slow_step_size"}
    state.hyperparams["slow_step_size"] = jnp.asarray(0.25)
    step = jax.jit(tx.update)
    for _ in range(6):
        updates, state = step(jax.grad(_loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    peer_fast, peer_slow = _peer(optax.sgd(0.1), 6, 3, 0.25)
    _close(params, peer_fast[-1])
    _close(lookahead_slow_params(state, params), peer_slow[-1])
    # a sync period of 2 from here on: the next sync is after 2 more inner steps
    state.hyperparams["sync_period"] = jnp.asarray(2)
    fast = []
    for _ in range(2):
        updates, state = step(jax.grad(_loss)(params), state, params)
        params = optax.apply_updates(params, updates)
        fast.append(params)
    _close(lookahead_slow_params(state, params), params, atol=1e-7)
    assert not np.allclose(fast[0]["w"], lookahead_slow_params(state, params)["w"])


def test_nnx_optimizer_slow_weights_for_evaluation():
    nnx = pytest.importorskip("flax.nnx")

    class Linear(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x):
            return self.l1(x)

    x = jax.random.normal(jax.random.key(0), (16, 4))
    y = jnp.sin(x[:, :2])
    model = Linear(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, lookahead(optax.adam(0.05), 2, 0.5), wrt=nnx.Param)
    loss_fn = lambda m: jnp.mean((m(x) - y) ** 2)

    @nnx.jit
    def step(model, optimizer):
        optimizer.update(model, nnx.grad(loss_fn)(model))

    for _ in range(2):
        step(model, optimizer)
    # step 2 was a sync: the model holds the slow weights
    with pytest.raises(ValueError, match="pass them"):
        lookahead_slow_params(optimizer.opt_state)
    slow = lookahead_slow_params(optimizer.opt_state, nnx.state(model, nnx.Param))
    eval_model = nnx.clone(model)
    nnx.update(eval_model, slow)
    _close(nnx.state(eval_model, nnx.Param), nnx.state(model, nnx.Param), atol=1e-7)
    synced_loss = float(loss_fn(model))
    step(model, optimizer)
    slow = lookahead_slow_params(optimizer.opt_state, nnx.state(model, nnx.Param))
    eval_model = nnx.clone(model)
    nnx.update(eval_model, slow)
    assert float(loss_fn(eval_model)) != float(loss_fn(model))
    np.testing.assert_allclose(float(loss_fn(eval_model)), synced_loss, rtol=1e-6)


# --------------------------------------------------------------------------- non-finite input

_NONFINITE_TX = lookahead(optax.adam(0.1), sync_period=2, slow_step_size=0.5)
_NONFINITE_STEP = jax.jit(_NONFINITE_TX.update)


@settings(max_examples=25, deadline=None)
@given(
    positions=st.lists(st.integers(0, 11), min_size=1, max_size=3, unique=True),
    value=st.sampled_from([np.nan, np.inf, -np.inf]),
    at_step=st.sampled_from([1, 2]),
)
def test_nonfinite_gradients_give_nonfinite_updates(positions, value, at_step):
    """With an elementwise inner optimizer, exactly the NaN/±inf gradient entries get a
    non-finite update, on an ordinary step (1) and on a synchronisation step (2)."""
    params = _init_params()
    state = _NONFINITE_TX.init(params)
    for t in (1, 2):
        grads = jax.grad(_loss)(params)
        if t == at_step:
            w = np.array(grads["w"]).reshape(-1)
            w[positions] = value
            grads = dict(grads, w=jnp.asarray(w.reshape(3, 4)))
        updates, state = _NONFINITE_STEP(grads, state, params)
        if t == at_step:
            finite = np.isfinite(np.asarray(updates["w"]).reshape(-1))
            assert not finite[positions].any()
            assert finite.sum() == 12 - len(positions)
            assert np.all(np.isfinite(np.asarray(updates["b"])))
            return
        params = optax.apply_updates(params, updates)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(sync_period=0), ValueError, "sync_period"),
        (dict(sync_period=2.5), ValueError, "sync_period"),
        (dict(sync_period=float("nan")), ValueError, "sync_period"),
        (dict(slow_step_size=0.0), ValueError, "slow_step_size"),
        (dict(slow_step_size=1.5), ValueError, "slow_step_size"),
        (dict(slow_step_size=float("nan")), ValueError, "slow_step_size"),
        (dict(reset_state=1), TypeError, "reset_state"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        lookahead(optax.sgd(0.1), **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sync_period="5"), r"`sync_period` must be an integer.*got str '5'"),
        (dict(sync_period=None), r"`sync_period` must be an integer.*got NoneType"),
        (dict(sync_period=True), r"`sync_period` must be an integer.*got bool"),
        (dict(sync_period=jnp.ones(2, jnp.int32)), r"`sync_period`.*shape \(2,\)"),
        (dict(slow_step_size="0.5"), r"`slow_step_size` must be a real number.*got str"),
        (dict(slow_step_size=[0.5]), r"`slow_step_size` must be a real number.*got list"),
        (dict(reset_state="yes"), r"`reset_state` must be a Python bool.*got str"),
    ],
)
def test_bad_argument_types_raise_at_construction(kwargs, match):
    """Wrong types fail when the optimizer is built, not with a TypeError inside update."""
    with pytest.raises(TypeError, match=match):
        lookahead(optax.sgd(0.1), **kwargs)


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(["sync_period", "slow_step_size"]),
    value=st.one_of(
        st.text(max_size=4),
        st.none(),
        st.booleans(),
        st.lists(st.integers(1, 5), max_size=2),
        st.just(np.ones(2)),
        st.just(2 + 0j),
    ),
)
def test_non_numbers_raise_type_error_naming_the_argument(name, value):
    with pytest.raises(TypeError, match=f"`{name}` must be"):
        lookahead(optax.sgd(0.1), **{name: value})


def test_mismatched_gradients_raise_clear_errors():
    tx = lookahead(optax.sgd(0.1))
    params = _init_params()
    state = tx.init(params)
    # optax.sgd would broadcast a (1, 4) gradient; the emitted update must not
    wrong = dict(params, w=jnp.ones((1, 4)))
    with pytest.raises(
        ValueError, match=r"`updates` leaf \['w'\].*expected \(3, 4\), got \(1, 4\)"
    ):
        tx.update(wrong, state, params)
    with pytest.raises(ValueError, match=r"`updates` leaf \['w'\]"):
        jax.jit(tx.update)(wrong, state, params)


def test_bad_usage_raises():
    with pytest.raises(TypeError, match="inner"):
        lookahead(0.1)
    tx = lookahead(optax.sgd(0.1))
    params = _init_params()
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))
    with pytest.raises(TypeError, match="LookaheadParams"):
        tx.init(optax.LookaheadParams.init_synced(params))
    with pytest.raises(ValueError, match="found 0"):
        lookahead_slow_params(optax.adam(0.1).init(params))
    two = optax.chain(lookahead(optax.sgd(0.1)), lookahead(optax.sgd(0.1)))
    with pytest.raises(ValueError, match="found 2"):
        lookahead_slow_params(two.init(params))
