"""Tests of optax_contrib.lookahead against optax.lookahead (with LookaheadParams) and a
numpy transcription of Algorithm 1 of Zhang et al. 2019; plus the compatibility matrix
(jit, chain, inject_hyperparams, MultiSteps, nnx.Optimizer, TrainState, sharding,
checkpoints)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from optax_contrib.lookahead import LookaheadState, lookahead, lookahead_slow_params
from tests.checkpoint_roundtrip import checkpoint_roundtrip

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


# --------------------------------------------------------------------------- compatibility


def test_chain_with_clipping_and_schedule():
    schedule = optax.linear_schedule(0.1, 0.01, 8)
    inner = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(schedule))
    ours = optax.chain(optax.clip_by_global_norm(0.5), lookahead(optax.adam(schedule), 3, 0.5))
    fast, slow, state = _ours(ours, 8)
    peer_fast, peer_slow = _peer(inner, 8, 3, 0.5)
    _close(fast, peer_fast)
    _close(slow, peer_slow)


def test_inject_hyperparams():
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


def test_multisteps_nested_state():
    tx = optax.MultiSteps(lookahead(optax.adam(0.05), 2, 0.5), every_k_schedule=2)
    params = _init_params()
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(8):  # the gradient does not depend on the mini-batch: 4 real steps
        updates, state = step(jax.grad(_loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    peer_fast, peer_slow = _peer(optax.adam(0.05), 4, 2, 0.5)
    _close(params, peer_fast[-1])
    _close(lookahead_slow_params(state, params), peer_slow[-1])


def test_nnx_optimizer():
    nnx = pytest.importorskip("flax.nnx")

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(4, 16, rngs=rngs)
            self.l2 = nnx.Linear(16, 1, rngs=rngs)

        def __call__(self, x):
            return self.l2(jax.nn.tanh(self.l1(x)))

    x = jax.random.normal(jax.random.key(0), (64, 4))
    y = jnp.sin(x[:, :1]) + x[:, 1:2]
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, lookahead(optax.adam(0.02), 5, 0.5), wrt=nnx.Param)
    loss_fn = lambda m: jnp.mean((m(x) - y) ** 2)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0]
    # step 40 was a sync: the model holds the slow weights
    with pytest.raises(ValueError, match="pass them"):
        lookahead_slow_params(optimizer.opt_state)
    slow = lookahead_slow_params(optimizer.opt_state, nnx.state(model, nnx.Param))
    eval_model = nnx.clone(model)
    nnx.update(eval_model, slow)
    _close(nnx.state(eval_model, nnx.Param), nnx.state(model, nnx.Param), atol=1e-7)
    synced_loss = float(loss_fn(model))
    for _ in range(2):
        step(model, optimizer)
    slow = lookahead_slow_params(optimizer.opt_state, nnx.state(model, nnx.Param))
    eval_model = nnx.clone(model)
    nnx.update(eval_model, slow)
    assert float(loss_fn(eval_model)) != float(loss_fn(model))
    np.testing.assert_allclose(float(loss_fn(eval_model)), synced_loss, rtol=1e-6)


def test_flax_train_state():
    train_state = pytest.importorskip("flax.training.train_state")
    state = train_state.TrainState.create(
        apply_fn=None, params=_init_params(), tx=lookahead(optax.adam(0.05), 3, 0.5)
    )
    apply = jax.jit(lambda s: s.apply_gradients(grads=jax.grad(_loss)(s.params)))
    for _ in range(7):
        state = apply(state)
    peer_fast, peer_slow = _peer(optax.adam(0.05), 7, 3, 0.5)
    _close(state.params, peer_fast[-1])
    _close(lookahead_slow_params(state.opt_state, state.params), peer_slow[-1])


def test_sharded_state_follows_params():
    mesh = jax.make_mesh((8,), ("x",))
    specs = {"w": P("x", None), "b": P("x")}
    host = {"w": jnp.ones((16, 4)), "b": jnp.zeros((8,))}
    target = {"w": jnp.full((16, 4), 0.5), "b": jnp.full((8,), -1.0)}
    loss = lambda p: sum(jnp.sum((p[k] - target[k]) ** 2) for k in p)
    tx = lookahead(optax.adam(0.1), 2, 0.5)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    with jax.set_mesh(mesh):
        params = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in host.items()}
        state = tx.init(params)
        for _ in range(3):
            params, state = step(params, state)
    for name, spec in specs.items():
        sharding = NamedSharding(mesh, spec)
        ndim = host[name].ndim
        for leaf in (
            params[name],
            state.slow_params[name],
            state.inner_state[0].mu[name],
            state.inner_state[0].nu[name],
        ):
            assert leaf.sharding.is_equivalent_to(sharding, ndim), (name, leaf.sharding)
    # same numbers as the unsharded run
    ref_params, ref_state = host, tx.init(host)
    for _ in range(3):
        ref_params, ref_state = step(ref_params, ref_state)
    _close(jax.device_get(params), ref_params)
    _close(jax.device_get(state.slow_params), ref_state.slow_params)


def test_donated_params_and_state():
    tx = lookahead(optax.adam(0.05), 2, 0.5)
    params = _init_params()
    state = tx.init(params)
    step = jax.jit(
        lambda p, s: (lambda u, s: (optax.apply_updates(p, u), s))(
            *tx.update(jax.grad(_loss)(p), s, p)
        ),
        donate_argnums=(0, 1),
    )
    for _ in range(4):
        params, state = step(params, state)
    peer_fast, peer_slow = _peer(optax.adam(0.05), 4, 2, 0.5)
    _close(params, peer_fast[-1])


def test_checkpoint_roundtrip(tmp_path):
    tx = lookahead(optax.adam(0.05), 3, 0.5)
    fast, _, state = _ours(tx, 4)
    restored = checkpoint_roundtrip(state, tmp_path)
    assert isinstance(restored, LookaheadState)
    _close(
        lookahead_slow_params(restored, fast[-1]),
        lookahead_slow_params(state, fast[-1]),
        rtol=0,
        atol=0,
    )
    a, _, _ = _ours_from(tx, fast[-1], state, 3)
    b, _, _ = _ours_from(tx, fast[-1], restored, 3)
    _close(a, b, rtol=0, atol=0)
    peer_fast, _ = _peer(optax.adam(0.05), 7, 3, 0.5)
    _close(b, peer_fast[-1])


def _ours_from(tx, params, state, n):
    step = jax.jit(
        lambda p, s: (lambda u, s: (optax.apply_updates(p, u), s))(
            *tx.update(jax.grad(_loss)(p), s, p)
        )
    )
    for _ in range(n):
        params, state = step(params, state)
    return params, lookahead_slow_params(state, params), state


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
