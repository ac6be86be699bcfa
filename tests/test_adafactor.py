"""Tests of optax_contrib.adafactor against optax.adafactor, a numpy transcription of
Shazeer & Stern (ICML 2018), Algorithms 4-5, in float64 and closed forms; plus the
AdaFactor-specific contracts (structural arguments under inject_hyperparams, int leaves,
non-finite gradients, clear errors). The integrations shared by every transform are in
tests/test_transform_matrix.py."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from optax_contrib.adafactor import (
    adafactor,
    clip_by_update_rms,
    factored_axes_for,
    momentum_ema,
    relative_step_size,
    scale_by_factored_rms,
    scale_by_param_rms,
)

# Factored matrix (second largest dim >= 128), rank-3 tensor, non-factored matrix/vector.
SHAPES = {"w": (256, 128), "t": (3, 160, 130), "small": (64, 32), "b": (48,)}


def _tree(key, shapes=SHAPES, scale=1.0, dtype=jnp.float32):
    keys = jax.random.split(key, len(shapes))
    return {
        name: (scale * jax.random.normal(k, shape)).astype(dtype)
        for k, (name, shape) in zip(keys, sorted(shapes.items()))
    }


def _grads_seq(n, shapes=SHAPES, dtype=jnp.float32):
    return [_tree(jax.random.key(100 + i), shapes, scale=1.0 + i, dtype=dtype) for i in range(n)]


def _run(tx, params, grads_seq, jit=True):
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    traj = []
    for g in grads_seq:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
        traj.append(params)
    return traj, state


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(
            np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol
        ),
        a,
        b,
    )


# --------------------------------------------------------------------------- references


def _np_factored_axes(shape, min_dim):
    """Two largest axes, lower index first (independent transcription of Shazeer & Stern 2018)."""
    if len(shape) < 2:
        return None
    idx = np.argsort(np.asarray(shape), kind="stable")[-2:]
    row, col = sorted(int(i) for i in idx)
    if min(shape[row], shape[col]) < min_dim:
        return None
    return row, col


def _np_adafactor(
    params,
    grads_seq,
    *,
    lr=None,
    c=0.8,
    offset=0,
    d=1.0,
    b1=None,
    eps1=1e-30,
    eps2=1e-3,
    param_scale=True,
    min_dim=128,
    axes_fn=None,
):
    """Shazeer & Stern (2018), Algorithms 4-5, in float64 numpy, one tensor at a time."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    stats, mom, out = {}, {}, []
    for t, grads in enumerate(grads_seq, start=1):
        off = offset(t) if callable(offset) else offset
        beta = 1.0 - max(t + off, 1.0) ** (-c)
        for k in sorted(p):
            g = np.asarray(grads[k], np.float64)
            axes = (axes_fn or _np_factored_axes)(g.shape, min_dim)
            g2 = g**2 + eps1
            if axes is None:
                v = stats.get(k, np.zeros_like(g))
                v = beta * v + (1 - beta) * g2
                stats[k] = v
                vhat = v
            else:
                row, col = axes
                r, cc = stats.get(k, (0.0, 0.0))
                r = beta * r + (1 - beta) * g2.mean(axis=col, keepdims=True)
                cc = beta * cc + (1 - beta) * g2.mean(axis=row, keepdims=True)
                stats[k] = (r, cc)
                vhat = r * cc / r.mean(axis=row, keepdims=True)
            u = g / np.sqrt(vhat)
            u = u / max(1.0, np.sqrt(np.mean(u**2)) / d)
            if b1 is not None:
                mom[k] = b1 * mom.get(k, 0.0) + (1 - b1) * u
                u = mom[k]
            if param_scale:
                u = u * max(eps2, np.sqrt(np.mean(p[k] ** 2)))
            alpha = lr(t) if callable(lr) else lr
            alpha = min(1e-2, 1 / math.sqrt(t)) if lr is None else alpha
            if lr is None and not param_scale:
                alpha *= 0.05
            p[k] = p[k] - alpha * u
        out.append(dict(p))
    return out


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=0.01),
        dict(
            learning_rate=optax.linear_schedule(0.02, 0.005, 4),
            weight_decay_rate=1e-3,
            clipping_threshold=None,
            multiply_by_parameter_scale=False,
            decay_rate=0.6,
        ),
    ],
    ids=["defaults", "schedule-wd-noclip-noscale"],
)
def test_matches_optax_adafactor(kwargs):
    params = _tree(jax.random.key(0))
    grads = _grads_seq(5)
    ours, ours_state = _run(adafactor(**kwargs), params, grads)
    peer, peer_state = _run(optax.adafactor(**kwargs), params, grads)
    for a, b in zip(ours, peer):
        _assert_trees_close(a, b)
    # Same statistics, stored with kept (size-1) axes instead of removed ones. optax calls
    # the mean over the largest axis "v_row"; ours averages over the higher-index axis.
    ours_rms, peer_rms = ours_state[0], peer_state[0]
    for name, axes in (("w", (1, 0)), ("t", (2, 1))):
        np.testing.assert_allclose(
            ours_rms.v_row[name].squeeze(axes[0]), peer_rms.v_col[name], rtol=1e-6
        )
        np.testing.assert_allclose(
            ours_rms.v_col[name].squeeze(axes[1]), peer_rms.v_row[name], rtol=1e-6
        )
    for name in ("small", "b"):
        np.testing.assert_allclose(ours_rms.v[name], peer_rms.v[name], rtol=1e-6)
        assert ours_rms.v_row[name].shape == ()


@pytest.mark.parametrize(
    "kwargs,ref",
    [
        (dict(), dict()),
        (
            dict(momentum=0.9, decay_offset=100, learning_rate=0.02),
            dict(b1=0.9, offset=100, lr=0.02),
        ),
        (
            dict(
                multiply_by_parameter_scale=False,
                decay_offset=-3,
                clipping_threshold=2.0,
                eps_scale=0.5,
                min_dim_size_to_factor=32,
            ),
            dict(param_scale=False, offset=-3, d=2.0, eps2=0.5, min_dim=32),
        ),
    ],
    ids=["paper-defaults", "momentum-offset", "noscale-negoffset-clip2-mindim32"],
)
def test_matches_numpy_spec(kwargs, ref):
    params = _tree(jax.random.key(1), scale=0.1)
    grads = _grads_seq(4)
    ours, _ = _run(adafactor(**kwargs), params, grads)
    expected = _np_adafactor(params, grads, **ref)
    for a, b in zip(ours, expected):
        _assert_trees_close(a, b, rtol=2e-5, atol=1e-7)


def test_named_axes_rank4_numpy():
    shapes = {"conv": (3, 3, 160, 144), "b": (144,)}
    params = _tree(jax.random.key(2), shapes)
    grads = _grads_seq(3, shapes)
    tx = adafactor(0.01, factored_axes=lambda shape: (-2, -1) if len(shape) == 4 else None)
    ours, state = _run(tx, params, grads)
    assert state[0].v_row["conv"].shape == (3, 3, 160, 1)
    assert state[0].v_col["conv"].shape == (3, 3, 1, 144)
    expected = _np_adafactor(
        params, grads, lr=0.01, axes_fn=lambda s, m: (2, 3) if len(s) == 4 else None
    )
    for a, b in zip(ours, expected):
        _assert_trees_close(a, b, rtol=2e-5, atol=1e-7)


# --------------------------------------------------------------------------- fused update
# adafactor() computes what the chain of its building blocks computes, as one fused update
# with the chain's state. On CPU, tensors of more than 2**18 entries are reduced in blocks
# of rows (one pass over the gradient): BIG's first two leaves take that path (with a
# partial last block), the others the whole-tensor reductions.

BIG = {"big": (520, 510), "t": (2, 400, 330), "w": (256, 128), "b": (48,)}


def _chain(
    learning_rate,
    *,
    clipping_threshold=1.0,
    momentum=None,
    multiply_by_parameter_scale=True,
    weight_decay_rate=None,
):
    """adafactor() spelled out as an optax.chain of the public building blocks."""
    tx = [scale_by_factored_rms()]
    if clipping_threshold is not None:
        tx.append(clip_by_update_rms(clipping_threshold))
    if momentum is not None:
        tx.append(momentum_ema(momentum))
    if multiply_by_parameter_scale:
        tx.append(scale_by_param_rms())
    tx.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
    if weight_decay_rate is not None:
        tx.append(optax.add_decayed_weights(weight_decay_rate))
    tx.append(optax.scale(-1.0))
    return optax.chain(*tx)


def _assert_close_to_scale(a, b):
    """Within a few ulps of the dtype, relative to the largest entry (terms such as the
    momentum or the weight decay may cancel in single entries)."""
    rtol = 2.0**-7 if b.dtype == jnp.bfloat16 else 1e-6
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max(initial=0.0))


def test_row_blocked_statistics_match_optax():
    params = _tree(jax.random.key(11), BIG, scale=0.1)
    grads = _grads_seq(3, BIG)
    ours, ours_state = _run(adafactor(0.01), params, grads)
    peer, peer_state = _run(optax.adafactor(0.01), params, grads)
    for a, b in zip(ours, peer):
        _assert_trees_close(a, b)
    ours_rms, peer_rms = ours_state[0], peer_state[0]
    for name, axes in (("big", (1, 0)), ("t", (2, 1))):
        np.testing.assert_allclose(
            ours_rms.v_row[name].squeeze(axes[0]), peer_rms.v_col[name], rtol=1e-6
        )
        np.testing.assert_allclose(
            ours_rms.v_col[name].squeeze(axes[1]), peer_rms.v_row[name], rtol=1e-6
        )


def test_row_blocked_reversed_axes_numpy():
    """Row axis after the column axis (factored_axes=(1, 0)), against the float64 spec."""
    shapes = {"m": (500, 640)}
    params = _tree(jax.random.key(12), shapes, scale=0.1)
    grads = _grads_seq(3, shapes)
    ours, state = _run(adafactor(0.01, factored_axes=(1, 0)), params, grads)
    assert state[0].v_row["m"].shape == (1, 640) and state[0].v_col["m"].shape == (500, 1)
    expected = _np_adafactor(params, grads, lr=0.01, axes_fn=lambda s, m: (1, 0))
    for a, b in zip(ours, expected):
        _assert_trees_close(a, b, rtol=2e-5, atol=1e-7)


def test_fused_update_matches_the_chain_of_building_blocks():
    """Every stage (clipping, momentum, parameter scale, relative step, weight decay):
    same state structure; from the same state, the same statistics (bit for bit) and
    updates and momentum within a few ulps (the update RMS of the clipping is summed in
    another order), float32 and bf16 leaves alike."""
    shapes = dict(BIG, half=(520, 510))
    params = _tree(jax.random.key(13), shapes, scale=0.1)
    params["half"] = params["half"].astype(jnp.bfloat16)
    grads = _grads_seq(3, shapes)
    for g in grads:
        g["half"] = g["half"].astype(jnp.bfloat16)
    fused = adafactor(momentum=0.9, weight_decay_rate=1e-3)
    chain = _chain(relative_step_size(), momentum=0.9, weight_decay_rate=1e-3)
    state = chain.init(params)
    assert jax.tree.structure(fused.init(params)) == jax.tree.structure(state)
    fused_update, chain_update = jax.jit(fused.update), jax.jit(chain.update)
    for g in grads:
        u_fused, s_fused = fused_update(g, state, params)
        u_chain, state = chain_update(g, state, params)
        assert jax.tree.structure(s_fused) == jax.tree.structure(state)
        for a, b in zip(jax.tree.leaves(s_fused[0]), jax.tree.leaves(state[0])):
            np.testing.assert_array_equal(a, b)
        jax.tree.map(_assert_close_to_scale, s_fused, state)  # momentum
        jax.tree.map(_assert_close_to_scale, u_fused, u_chain)
        params = optax.apply_updates(params, u_chain)


def test_fused_step_has_no_full_size_temporaries():
    """A jitted step with donated parameters and state allocates no temporary of a
    parameter's size: each reduction and the final update read the gradient in their own
    fused pass (the chain of building blocks materialises u = g / sqrt(v̂) for its RMS)."""
    shapes = {"embed": (2048, 512), "w": (512, 256), "b": (512,)}
    params = _tree(jax.random.key(14), shapes)
    grads = _tree(jax.random.key(15), shapes)

    def temp_bytes(tx):
        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), grads)
        analysis = lowered.compile().memory_analysis()
        if analysis is None:
            pytest.skip("no memory analysis on this backend")
        return analysis.temp_size_in_bytes

    embed_bytes = params["embed"].nbytes
    assert temp_bytes(_chain(0.01)) >= embed_bytes
    assert temp_bytes(adafactor(0.01)) < embed_bytes // 2


@settings(max_examples=20, deadline=None)
@given(
    shape=st.lists(st.sampled_from([1, 2, 3, 5]), min_size=1, max_size=3),
    axes_choice=st.sampled_from(["auto", "last-two", "first-last"]),
    offset=st.integers(-5, 50),
    seed=st.integers(0, 2**16),
)
def test_factored_rms_random_shapes(shape, axes_choice, offset, seed):
    shape = tuple(shape)
    named = {"auto": None, "last-two": (-2, -1), "first-last": (0, -1)}[axes_choice]
    axes_fn = None
    if named is not None:

        def axes_fn(s, m):
            if len(s) < 2:
                return None
            a, b = (x % len(s) for x in named)
            return (a, b) if min(s[a], s[b]) >= m else None

    tx = scale_by_factored_rms(min_dim_size_to_factor=2, decay_offset=offset, factored_axes=named)
    rng = np.random.default_rng(seed)
    g1, g2 = (rng.normal(size=shape).astype(np.float32) for _ in range(2))

    @jax.jit
    def two_steps(g1, g2):
        state = tx.init(jnp.zeros(shape))
        _, state = tx.update(g1, state)
        return tx.update(g2, state)[0]

    u = two_steps(g1, g2)
    # numpy: the factored-RMS stage alone (no clipping/scale/lr) after two steps
    stats = None
    for t, g in enumerate((g1, g2), start=1):
        beta = 1.0 - max(t + offset, 1.0) ** (-0.8)
        g = g.astype(np.float64)
        axes = (axes_fn or _np_factored_axes)(shape, 2)
        gg = g**2 + 1e-30
        if axes is None:
            stats = beta * (0.0 if stats is None else stats) + (1 - beta) * gg
            vhat = stats
        else:
            row, col = axes
            r0, c0 = (0.0, 0.0) if stats is None else stats
            r = beta * r0 + (1 - beta) * gg.mean(axis=col, keepdims=True)
            c = beta * c0 + (1 - beta) * gg.mean(axis=row, keepdims=True)
            stats = (r, c)
            vhat = r * c / r.mean(axis=row, keepdims=True)
    np.testing.assert_allclose(np.asarray(u), g / np.sqrt(vhat), rtol=2e-5, atol=1e-6)


# --------------------------------------------------------------------------- properties


def test_decay_offset_closed_form_and_no_nan():
    """One step from zero state: v = (1 − β̂_1) g² = (1 + offset)^(−c) (g² + ε1)."""
    g = jnp.array([2.0, -3.0])
    for offset, expected_weight in [(0, 1.0), (9, 10.0**-0.8), (1000, 1001.0**-0.8), (-7, 1.0)]:
        tx = scale_by_factored_rms(decay_offset=offset)
        _, state = tx.update(g, tx.init(g))
        np.testing.assert_allclose(state.v, expected_weight * np.array([4.0, 9.0]), rtol=1e-5)
    params = _tree(jax.random.key(3))
    traj, _ = _run(adafactor(decay_offset=5000), params, _grads_seq(3))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(traj))


def test_zero_gradients_and_zero_params_are_finite():
    params = {"w": jnp.zeros((256, 128)), "b": jnp.zeros((8,))}
    grads = jax.tree.map(jnp.zeros_like, params)
    tx = optax.inject_hyperparams(adafactor, static_args=("min_dim_size_to_factor",))(
        learning_rate=0.1, eps=0.0
    )
    traj, _ = _run(tx, params, [grads, grads])
    for x in jax.tree.leaves(traj):
        assert bool(jnp.all(x == 0.0))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params_float32_statistics(dtype):
    shapes = {"w": (256, 128), "b": (48,)}
    params = _tree(jax.random.key(4), shapes, scale=0.1, dtype=dtype)
    grads = _grads_seq(3, shapes, dtype=dtype)
    traj, state = _run(adafactor(0.01, momentum=0.9), params, grads)
    for leaf in jax.tree.leaves((state[0].v_row, state[0].v_col, state[0].v, state[2].m)):
        assert leaf.dtype == jnp.float32
    assert all(x.dtype == dtype for x in jax.tree.leaves(traj[-1]))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(traj))
    # the float32 statistics equal the float64 reference fed with the same low-precision grads
    g = [np.asarray(x["b"], np.float64) for x in grads]
    beta2, beta3 = 1 - 2.0**-0.8, 1 - 3.0**-0.8
    v = beta3 * (beta2 * g[0] ** 2 + (1 - beta2) * g[1] ** 2) + (1 - beta3) * g[2] ** 2
    np.testing.assert_allclose(state[0].v["b"], v, rtol=1e-5)


def test_state_bytes_sublinear():
    params = {"w": jnp.zeros((1024, 512)), "b": jnp.zeros((512,))}
    nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))
    ours = nbytes(adafactor().init(params))
    adam = nbytes(optax.adam(1e-3).init(params))
    n = 1024 * 512 + 512
    # rows + columns of w, full v of b, a count and placeholders
    assert ours <= 4 * (1024 + 512 + 512) + 64
    assert adam >= 8 * n
    assert ours / n < 0.02


def test_building_blocks_closed_forms():
    u, _ = clip_by_update_rms(2.0).update({"a": jnp.full((4,), 6.0)}, optax.EmptyState())
    np.testing.assert_allclose(u["a"], 2.0)
    p = {"a": jnp.array([3.0, -4.0])}
    u, _ = scale_by_param_rms(1e-3).update({"a": jnp.ones(2)}, optax.EmptyState(), p)
    np.testing.assert_allclose(u["a"], math.sqrt(12.5))
    tx = momentum_ema(0.5)
    s = tx.init(jnp.zeros(1))
    for x in (4.0, 2.0):
        u, s = tx.update(jnp.array([x]), s)
    np.testing.assert_allclose(u, [0.5 * 2.0 + 0.25 * 4.0])
    sched = relative_step_size()
    np.testing.assert_allclose([sched(c) for c in (0, 9999, 39999)], [1e-2, 1e-2, 5e-3], rtol=1e-6)
    assert factored_axes_for((256, 128), min_dim_size_to_factor=128) == (0, 1)
    assert factored_axes_for((256, 127)) is None
    assert factored_axes_for((256, 128), factored=False) is None


# --------------------------------------------------------------------------- integrations
# jit, chain, MultiSteps, nnx.Optimizer, TrainState, sharding, checkpoints, bf16 and int
# leaves are covered for every transform by tests/test_transform_matrix.py; what follows
# is specific to AdaFactor.

STATIC = ("min_dim_size_to_factor",)


def test_inject_hyperparams_numeric_args_take_effect():
    """learning_rate and decay_offset changed through the state take effect at the next
    step (numpy reference with the same per-step values)."""
    params = _tree(jax.random.key(6))
    grads = _grads_seq(3)
    tx = optax.inject_hyperparams(adafactor, static_args=STATIC)(
        learning_rate=0.01, decay_rate=0.8, momentum=0.5
    )
    state = tx.init(params)
    assert set(state.hyperparams) >= {"learning_rate", "decay_rate", "decay_offset", "momentum"}
    assert "min_dim_size_to_factor" not in state.hyperparams
    update = jax.jit(tx.update)
    p = params
    for g, lr, offset in zip(grads, (0.01, 0.003, 0.003), (0, 0, 10)):
        state.hyperparams["learning_rate"] = jnp.asarray(lr)
        state.hyperparams["decay_offset"] = jnp.asarray(offset)
        updates, state = update(g, state, p)
        p = optax.apply_updates(p, updates)
    # momentum is on, so optax.adafactor (momentum last) is a different algorithm: compare
    # with the numpy transcription, learning rate 0.01 then 0.003, offset 10 at step 3.
    expected = _np_adafactor(
        params,
        grads,
        lr=lambda t: 0.01 if t == 1 else 0.003,
        b1=0.5,
        offset=lambda t: 10 if t == 3 else 0,
    )
    _assert_trees_close(p, expected[-1], rtol=2e-5, atol=1e-7)
    # the offset did change the result
    unchanged = _np_adafactor(params, grads, lr=lambda t: 0.01 if t == 1 else 0.003, b1=0.5)
    assert not np.allclose(unchanged[-1]["w"], expected[-1]["w"], rtol=1e-6, atol=0)


def test_structural_args_cannot_be_injected():
    """min_dim_size_to_factor fixes the state shapes at init: unlisted in static_args it
    raises (eager or jitted init) instead of being injectable and silently ignored."""
    params = {"w": jnp.zeros((256, 128))}
    tx = optax.inject_hyperparams(adafactor)(learning_rate=0.01)
    with pytest.raises(TypeError, match=r"min_dim_size_to_factor.*static_args"):
        tx.init(params)
    with pytest.raises(TypeError, match=r"min_dim_size_to_factor.*static_args"):
        jax.jit(tx.init)(params)
    with pytest.raises(TypeError, match="min_dim_size_to_factor"):
        scale_by_factored_rms(min_dim_size_to_factor=jnp.asarray(128))
    # listed: static, not in the state, so it cannot be changed later; the value is used
    tx = optax.inject_hyperparams(adafactor, static_args=STATIC)(
        learning_rate=0.01, min_dim_size_to_factor=512
    )
    state = jax.jit(tx.init)(params)
    assert "min_dim_size_to_factor" not in state.hyperparams
    assert state.inner_state[0].v["w"].shape == (256, 128)  # not factored with 512
    # factored / factored_axes are not numbers: inject_hyperparams keeps them static
    state = optax.inject_hyperparams(adafactor, static_args=STATIC)(
        factored=False, factored_axes=(0, 1)
    ).init(params)
    assert not {"factored", "factored_axes"} & set(state.hyperparams)


@pytest.mark.parametrize(
    "shape,expected",
    [((4, 4, 4), (1, 2)), ((3, 4, 4), (1, 2)), ((4, 3, 4), (0, 2)), ((4, 4, 3), (0, 1))],
)
def test_factored_axes_ties_go_to_higher_indices_like_optax(shape, expected):
    assert factored_axes_for(shape, min_dim_size_to_factor=2) == expected
    params = {"t": jnp.ones(shape)}
    grads = _grads_seq(2, {"t": shape})
    ours, state = _run(adafactor(0.01, min_dim_size_to_factor=2), params, grads)
    peer, _ = _run(optax.adafactor(0.01, min_dim_size_to_factor=2), params, grads)
    for a, b in zip(ours, peer):
        _assert_trees_close(a, b)
    row, col = expected
    assert state[0].v_row["t"].shape[col] == 1 and state[0].v_col["t"].shape[row] == 1


def test_int_leaves_are_not_trained():
    """Integer leaves: zero update, no weight decay (optax.adafactor 0.2.8 gives NaN)."""
    shapes = {"w": (256, 128), "b": (48,)}
    params = _tree(jax.random.key(10), shapes)
    counter = jnp.array([[3, -7], [1, 2]], jnp.int32)
    grads = _grads_seq(2, shapes)
    tx = adafactor(0.01, momentum=0.9, weight_decay_rate=0.1, min_dim_size_to_factor=2)
    with_int, state = _run(
        tx, dict(params, counter=counter), [dict(g, counter=0 * counter) for g in grads]
    )
    without, _ = _run(tx, params, grads)
    for a, b in zip(with_int, without):
        assert a["counter"].dtype == jnp.int32
        np.testing.assert_array_equal(a["counter"], counter)
        _assert_trees_close({k: a[k] for k in shapes}, b, rtol=0, atol=0)
    assert state[0].v["counter"].shape == (2, 2)  # not factored, statistics unused


def test_sharded_statistics_drop_the_reduced_axis():
    """Factored statistics keep the parameter's mesh axes except the averaged one."""
    mesh = jax.make_mesh((8,), ("x",))
    specs = {"w": P("x", None), "v": P(None, "x")}
    shapes = {"w": (256, 128), "v": (128, 256)}
    host = _tree(jax.random.key(8), shapes)
    with jax.set_mesh(mesh):
        params = {k: jax.device_put(host[k], NamedSharding(mesh, specs[k])) for k in host}
        grads = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in host.items()}
        tx = scale_by_factored_rms()
        init_state = tx.init(params)
        _, state = jax.jit(tx.update)(grads, init_state)
    expected = {
        "v_row": {"w": P("x", None), "v": P(None, None)},
        "v_col": {"w": P(None, None), "v": P(None, "x")},
    }
    for rms_state in (init_state, state):
        for field, per_leaf in expected.items():
            for name, spec in per_leaf.items():
                leaf = getattr(rms_state, field)[name]
                assert leaf.sharding.is_equivalent_to(NamedSharding(mesh, spec), leaf.ndim), (
                    field,
                    name,
                    leaf.sharding,
                )


# --------------------------------------------------------------------------- non-finite input

_NONFINITE_TX = {}


def _nonfinite_step(min_dim):
    if min_dim not in _NONFINITE_TX:
        tx = adafactor(0.01, momentum=0.5, min_dim_size_to_factor=min_dim)

        @jax.jit
        def step(params, grads):
            return tx.update(grads, tx.init(params), params)[0]

        _NONFINITE_TX[min_dim] = step
    return _NONFINITE_TX[min_dim]


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.sampled_from([2, 3]), min_size=1, max_size=3),
    value=st.sampled_from([np.nan, np.inf, -np.inf]),
    min_dim=st.sampled_from([2, 128]),
    data=st.data(),
)
def test_nonfinite_gradients_give_nonfinite_updates(shape, value, min_dim, data):
    """Each NaN/±inf gradient entry gives a non-finite update entry (factored or not);
    another tensor's update stays finite."""
    shape = tuple(shape)
    size = int(np.prod(shape))
    positions = data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=3, unique=True))
    rng = np.random.default_rng(size)
    g = rng.normal(size=size).astype(np.float32)
    g[positions] = value
    params = {"a": jnp.ones(shape), "clean": jnp.ones((3,))}
    grads = {"a": jnp.asarray(g.reshape(shape)), "clean": jnp.ones((3,))}
    updates = _nonfinite_step(min_dim)(params, grads)
    assert not np.any(np.isfinite(np.asarray(updates["a"]).reshape(-1)[positions]))
    assert np.all(np.isfinite(np.asarray(updates["clean"])))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(clipping_threshold=0.5), "clipping_threshold"),
        (dict(decay_rate=-0.8), "decay_rate"),
        (dict(momentum=1.0), "momentum"),
        (dict(momentum=-0.1), "momentum"),
        (dict(eps=-1e-30), "eps"),
        (dict(eps_scale=-1.0), "eps_scale"),
        (dict(learning_rate=-0.1), "learning_rate"),
        (dict(weight_decay_rate=-0.1), "weight_decay_rate"),
        (dict(min_dim_size_to_factor=0), "min_dim_size_to_factor"),
        (dict(min_dim_size_to_factor=2.5), "min_dim_size_to_factor"),
        (dict(learning_rate=float("nan")), "learning_rate"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        adafactor(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(learning_rate="0.01"), r"`learning_rate` must be a real number.*got str '0.01'"),
        (dict(decay_rate="0.8"), r"`decay_rate` must be a real number.*got str"),
        (dict(decay_offset="5"), "`decay_offset` must be a real number"),
        (dict(momentum="0.9"), "`momentum` must be a real number"),
        (dict(clipping_threshold=[1.0]), "`clipping_threshold` must be a real number"),
        (dict(eps=None), "`eps` must be a real number"),
        (dict(eps_scale=True), "`eps_scale` must be a real number.*got bool"),
        (dict(weight_decay_rate="1e-4"), "`weight_decay_rate` must be a real number"),
        (dict(min_dim_size_to_factor="128"), "`min_dim_size_to_factor` must be an integer"),
        (dict(min_dim_size_to_factor=jnp.asarray(128)), "static_args"),
        (dict(factored=1), "`factored` must be a Python bool"),
        (dict(multiply_by_parameter_scale="yes"), "`multiply_by_parameter_scale` must be"),
    ],
)
def test_bad_argument_types_raise_at_construction(kwargs, match):
    with pytest.raises(TypeError, match=match):
        adafactor(**kwargs)


NOT_NUMBERS = st.one_of(
    st.text(max_size=4),
    st.none(),
    st.booleans(),
    st.lists(st.floats(allow_nan=False), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.just(np.ones(2)),
    st.just(1 + 2j),
)
OPTIONAL = {"learning_rate", "clipping_threshold", "momentum", "weight_decay_rate"}


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(
        [
            "learning_rate",
            "min_dim_size_to_factor",
            "decay_rate",
            "decay_offset",
            "clipping_threshold",
            "momentum",
            "weight_decay_rate",
            "eps",
            "eps_scale",
        ]
    ),
    value=NOT_NUMBERS,
)
def test_non_numbers_raise_type_error_naming_the_argument(name, value):
    if value is None and name in OPTIONAL:
        return
    with pytest.raises(TypeError, match=f"`{name}`"):
        adafactor(**{name: value})


def test_bad_axes_and_dtypes_raise():
    w = jnp.zeros((256, 128))
    with pytest.raises(ValueError, match="factored_axes"):
        adafactor(factored_axes=(1, 1)).init(w)
    with pytest.raises(ValueError, match="factored_axes"):
        adafactor(factored_axes=(0, 5)).init(w)
    with pytest.raises(TypeError, match="floating"):
        adafactor().init(jnp.zeros((4,), jnp.complex64))
    tx = adafactor(0.01)
    with pytest.raises(ValueError, match="params"):
        tx.update(w, tx.init(w))


def test_mismatched_gradients_raise_clear_errors():
    """Gradients must have the structure and shapes of the parameters given to init
    (a wrong shape of a factored leaf used to fail with IndexError)."""
    params = {"w": jnp.zeros((256, 128)), "b": jnp.zeros((48,))}
    tx = adafactor(0.01)
    state = tx.init(params)
    bad = [
        (
            {"w": jnp.zeros((256,)), "b": jnp.zeros((48,))},
            r"\['w'\].*expected \(256, 128\), got \(256,\)",
        ),
        (
            {"w": jnp.zeros((128, 256)), "b": jnp.zeros((48,))},
            r"\['w'\].*expected \(256, 128\), got \(128, 256\)",
        ),
        (
            {"w": jnp.zeros((256, 128)), "b": jnp.zeros((47,))},
            r"\['b'\].*expected \(48,\), got \(47,\)",
        ),
        (
            {"w": jnp.zeros((256, 128))},
            r"`updates` must have the tree structure.*missing leaves \[\"\['b'\]\"\]",
        ),
        (dict(params, c=jnp.zeros(3)), r"unexpected leaves \[\"\['c'\]\"\]"),
    ]
    for grads, match in bad:
        with pytest.raises(ValueError, match=match):
            tx.update(grads, state, params)
        with pytest.raises(ValueError, match=match):
            jax.jit(tx.update)(grads, state, params)
    # the parameters given to update are checked too (parameter scale)
    with pytest.raises(ValueError, match=r"`params` leaf \['b'\].*expected \(48,\), got \(4,\)"):
        tx.update(params, state, dict(params, b=jnp.zeros(4)))
    with pytest.raises(ValueError, match=r"`updates` leaf"):
        momentum_ema(0.9).update(jnp.zeros(3), momentum_ema(0.9).init(jnp.zeros(4)))


@settings(max_examples=20, deadline=None)
@given(
    shape=st.lists(st.integers(1, 300), min_size=1, max_size=3),
    axis=st.integers(0, 2),
    delta=st.sampled_from([-1, 1]),
)
def test_wrong_gradient_shape_always_names_both_shapes(shape, axis, delta):
    shape = tuple(shape)
    axis = axis % len(shape)
    wrong = tuple(d + delta if i == axis else d for i, d in enumerate(shape))
    if min(wrong) < 1:
        return
    tx = scale_by_factored_rms()
    state = jax.eval_shape(tx.init, jax.ShapeDtypeStruct(shape, jnp.float32))
    with pytest.raises(ValueError) as info:
        jax.eval_shape(tx.update, jax.ShapeDtypeStruct(wrong, jnp.float32), state)
    assert f"expected {shape}, got {wrong}" in str(info.value)
