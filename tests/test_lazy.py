"""Tests for ``optax_contrib.lazy`` (Su Jianlin's lazy optimizer, kexue.fm 2019).

References: dense ``optax`` optimizers run side by side (article policy), a
hand-written numpy LazyAdam with TF-Addons semantics (frozen policy), and the
dense masked path (for the sparse path). The integrations shared by every transform
are in tests/test_transform_matrix.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optax_contrib import adafactor, lazy

N, D = 12, 3  # table rows, embedding width
LR, B1, B2, EPS = 0.1, 0.9, 0.999, 1e-8


def _rows(ids, num_rows):
    """Distinct valid row ids of ``ids`` (numpy)."""
    ids = np.asarray(ids)
    return np.unique(ids[(ids >= 0) & (ids < num_rows)])


def np_lazy_adam(p0, grads, rows_seq, lrs, b1=B1, b2=B2, eps=EPS, tf_eps=False):
    """TF-Addons LazyAdam in float64 numpy: m, v and p change on touched rows only.

    The bias correction uses the global step ``t``. ``tf_eps=True`` uses TF's
    ``lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``; otherwise optax's
    ``lr * m_hat / (sqrt(v_hat) + eps)``.
    """
    p = np.array(p0, np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, (g, rows, lr) in enumerate(zip(grads, rows_seq, lrs), start=1):
        g = np.asarray(g, np.float64)
        m[rows] = b1 * m[rows] + (1 - b1) * g[rows]
        v[rows] = b2 * v[rows] + (1 - b2) * g[rows] ** 2
        if tf_eps:
            lr_t = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
            p[rows] -= lr_t * m[rows] / (np.sqrt(v[rows]) + eps)
        else:
            m_hat, v_hat = m[rows] / (1 - b1**t), v[rows] / (1 - b2**t)
            p[rows] -= lr * m_hat / (np.sqrt(v_hat) + eps)
    return p, m, v


def _sparse_grads(rng, rows, shape=(N, D)):
    g = np.zeros(shape, np.float32)
    g[rows] = rng.normal(size=(len(rows),) + shape[1:])
    return jnp.asarray(g)


def _run(tx, params, grads_seq, ids_seq=None, jit=True):
    state = tx.init(params)
    step = jax.jit(tx.update) if jit else tx.update
    for i, g in enumerate(grads_seq):
        kw = {} if ids_seq is None or ids_seq[i] is None else {"row_ids": ids_seq[i]}
        updates, state = step(g, state, params, **kw)
        params = optax.apply_updates(params, updates)
    return params, state


# --- article policy --------------------------------------------------------------------


@pytest.mark.parametrize("use_ids", [False, True])
def test_article_matches_dense_adam_side_by_side(use_ids):
    rng = np.random.default_rng(0)
    p0 = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    batches = [[1, 4, 4], [4, 7], [1, 2], [7, 9]]
    grads = [_sparse_grads(rng, b) for b in batches]
    # With ids: row 0 is listed with a zero gradient; row 11 has a gradient but is not listed.
    ids_seq = [jnp.array(b + [0, -1]) for b in batches] if use_ids else None
    if use_ids:
        grads = [g.at[11].set(0.5) for g in grads]
    p, s = _run(lazy(optax.adam(LR)), p0, grads, ids_seq)

    dense = optax.adam(LR)
    ds, p_ref, ever = dense.init(p0), np.asarray(p0), np.zeros(N, bool)
    for i, g in enumerate(grads):
        u, ds = dense.update(g, ds)
        touched = np.zeros(N, bool)
        if use_ids:
            touched[_rows(ids_seq[i], N)] = True
        else:
            touched = np.any(np.asarray(g) != 0, axis=1)
        ever |= touched
        p_ref = p_ref + np.where(touched[:, None], np.asarray(u), 0)
    np.testing.assert_allclose(p, p_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(p)[~ever], np.asarray(p0)[~ever])
    # Article policy: the inner state evolves exactly as the dense optimizer's.
    chex_leaves = jax.tree.leaves(s.inner_state), jax.tree.leaves(ds)
    for a, b in zip(*chex_leaves):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_article_with_factored_adafactor():
    """A non-elementwise inner (factored AdaFactor) runs dense; untouched rows stay."""
    rng = np.random.default_rng(1)
    p0 = jnp.asarray(rng.normal(size=(N, 4)), jnp.float32)
    inner = optax.adafactor(0.1, min_dim_size_to_factor=2)
    grads = [_sparse_grads(rng, b, (N, 4)) for b in ([2, 3], [3, 5])]
    p, _ = _run(lazy(inner), p0, grads)
    ds, p_ref = inner.init(p0), np.asarray(p0)
    for g in grads:
        u, ds = inner.update(g, ds, jnp.asarray(p_ref))  # parameter scale sees lazy params
        p_ref = p_ref + np.where(np.any(np.asarray(g) != 0, 1)[:, None], np.asarray(u), 0)
    np.testing.assert_allclose(p, p_ref, rtol=1e-5, atol=1e-7)
    untouched = np.setdiff1d(np.arange(N), [2, 3, 5])
    np.testing.assert_array_equal(np.asarray(p)[untouched], np.asarray(p0)[untouched])
    _, fs = _run(lazy(inner, policy="frozen"), p0, grads)  # factored leaves stay global
    assert jax.tree.structure(fs.inner_state) == jax.tree.structure(ds)


# --- frozen policy ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["sparse", "dense_ids", "nonzero"])
def test_frozen_matches_numpy_lazy_adam(path):
    rng = np.random.default_rng(2)
    p0 = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    batches = [[3, 1, 3, -1, 100], [1, 5, 5, 8, -1], [0, 3, 11, 11, 11], [5, 2, -7, 2, 2]]
    grads = [_sparse_grads(rng, _rows(b, N)) for b in batches]
    if path == "nonzero":
        ids_seq, rows = None, [_rows(b, N) for b in batches]
    else:
        # Row 6 has a gradient but is never listed; row 9 is listed with a zero gradient.
        grads = [g.at[6].set(1.0) for g in grads]
        batches[1] = batches[1][:-1] + [9]
        ids_seq = [jnp.array(b) for b in batches]
        rows = [_rows(b, N) for b in batches]
    tx = lazy(optax.adam(LR, eps=EPS), policy="frozen", elementwise=path == "sparse")
    p, s = _run(tx, p0, grads, ids_seq)
    p_ref, m_ref, v_ref = np_lazy_adam(p0, grads, rows, [LR] * 4)
    np.testing.assert_allclose(p, p_ref, rtol=1e-5, atol=1e-6)
    adam_state = s.inner_state[0]
    np.testing.assert_allclose(adam_state.mu, m_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(adam_state.nu, v_ref, rtol=1e-5, atol=1e-9)
    assert int(adam_state.count) == 4  # the step counter stays global
    never = np.setdiff1d(np.arange(N), np.concatenate(rows))
    assert never.size > 0
    np.testing.assert_array_equal(np.asarray(p)[never], np.asarray(p0)[never])
    np.testing.assert_array_equal(np.asarray(adam_state.mu)[never], 0.0)
    np.testing.assert_array_equal(np.asarray(adam_state.nu)[never], 0.0)
    # TF-Addons places epsilon after the bias correction: same result up to eps-sized terms.
    p_tf, _, _ = np_lazy_adam(p0, grads, rows, [LR] * 4, tf_eps=True)
    np.testing.assert_allclose(p, p_tf, rtol=1e-4, atol=1e-5)


def _sparse_vs_dense_setup(inner):
    sparse_tx = lazy(inner, policy="frozen", elementwise=True)
    dense_tx = lazy(inner, policy="frozen", elementwise=False)

    def two_steps(tx):
        @jax.jit
        def run(p, g1, g2, ids1, ids2):
            s = tx.init(p)
            for g, ids in ((g1, ids1), (g2, ids2)):
                u, s = tx.update(g, s, p, row_ids=ids)
                p = optax.apply_updates(p, u)
            return p, s

        return run

    return two_steps(sparse_tx), two_steps(dense_tx)


_ADAM_RUNS = _sparse_vs_dense_setup(optax.adam(LR))


@settings(max_examples=25, deadline=None)
@given(
    ids1=st.lists(st.integers(-2, N + 1), min_size=6, max_size=6),
    ids2=st.lists(st.integers(-2, N + 1), min_size=6, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_sparse_path_equals_dense_masked_path(ids1, ids2, seed):
    """Random ids with duplicates, -1 padding and out-of-range ids; Adam, frozen policy."""
    rng = np.random.default_rng(seed)
    p0 = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    g1, g2 = (jnp.asarray(rng.normal(size=(N, D)), jnp.float32) for _ in range(2))
    a1, a2 = jnp.array(ids1), jnp.array(ids2)
    run_sparse, run_dense = _ADAM_RUNS
    ps, ss = run_sparse(p0, g1, g2, a1, a2)
    pd, sd = run_dense(p0, g1, g2, a1, a2)
    np.testing.assert_allclose(ps, pd, rtol=1e-6, atol=1e-7)
    for a, b in zip(jax.tree.leaves(ss), jax.tree.leaves(sd)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    never = np.setdiff1d(np.arange(N), np.concatenate([_rows(ids1, N), _rows(ids2, N)]))
    np.testing.assert_array_equal(np.asarray(ps)[never], np.asarray(p0)[never])
    np.testing.assert_array_equal(np.asarray(ss.inner_state[0].mu)[never], 0.0)


@pytest.mark.parametrize(
    "inner",
    [optax.sgd(LR, momentum=0.9), optax.rmsprop(LR, momentum=0.5), optax.adamw(LR)],
    ids=["sgd_momentum", "rmsprop", "adamw"],
)
def test_sparse_equals_dense_other_elementwise(inner):
    rng = np.random.default_rng(3)
    p0 = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    g1, g2 = (jnp.asarray(rng.normal(size=(N, D)), jnp.float32) for _ in range(2))
    ids1, ids2 = jnp.array([4, 0, 4, -1, 13, 7]), jnp.array([7, 7, 2, 10, 0, 0])
    run_sparse, run_dense = _sparse_vs_dense_setup(inner)
    ps, ss = run_sparse(p0, g1, g2, ids1, ids2)
    pd, sd = run_dense(p0, g1, g2, ids1, ids2)
    np.testing.assert_allclose(ps, pd, rtol=1e-6, atol=1e-7)
    for a, b in zip(jax.tree.leaves(ss), jax.tree.leaves(sd)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    never = np.setdiff1d(np.arange(N), [0, 2, 4, 7, 10])
    np.testing.assert_array_equal(np.asarray(ps)[never], np.asarray(p0)[never])
    assert not np.allclose(np.asarray(ps)[[0, 2, 4, 7, 10]], np.asarray(p0)[[0, 2, 4, 7, 10]])


@pytest.mark.parametrize("policy", ["frozen", "article"])
def test_pregathered_row_gradients(policy):
    """A (n_ids, D) row gradient (duplicates summed) == the dense table gradient."""
    rng = np.random.default_rng(4)
    p0 = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    ids = jnp.array([5, 1, 5, -1, 20, 3])
    row_g = jnp.asarray(rng.normal(size=(6, D)), jnp.float32)
    dense_g = np.zeros((N, D), np.float32)
    np.add.at(dense_g, np.array([5, 1, 5, 3]), np.asarray(row_g)[[0, 1, 2, 5]])
    tx = lazy(optax.adam(LR), policy=policy, elementwise=True)
    pr, sr = _run(tx, p0, [row_g, row_g], [ids, ids])
    pd, sd = _run(tx, p0, [jnp.asarray(dense_g)] * 2, [ids, ids])
    np.testing.assert_allclose(pr, pd, rtol=1e-6, atol=1e-7)
    for a, b in zip(jax.tree.leaves(sr), jax.tree.leaves(sd)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    if policy == "frozen":
        p_ref, _, _ = np_lazy_adam(p0, [dense_g] * 2, [np.array([1, 3, 5])] * 2, [LR] * 2)
        np.testing.assert_allclose(pr, p_ref, rtol=1e-5, atol=1e-5)


_PREGATHERED_TX = lazy(optax.adam(LR), policy="frozen", elementwise=True)
_PREGATHERED_STEP = jax.jit(
    lambda p, g, ids: _PREGATHERED_TX.update(g, _PREGATHERED_TX.init(p), p, row_ids=ids)
)


@settings(max_examples=20, deadline=None)
@given(
    ids=st.lists(st.integers(-2, N + 1), min_size=7, max_size=7),
    seed=st.integers(0, 2**16),
)
def test_pregathered_random_ids_numpy(ids, seed):
    """Pre-gathered rows with random duplicates, -1 padding and out-of-range ids: one
    frozen LazyAdam step equals the numpy reference on the summed table gradient."""
    rng = np.random.default_rng(seed)
    p0 = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    row_g = rng.normal(size=(len(ids), D)).astype(np.float32)
    valid = [(i, r) for i, r in enumerate(ids) if 0 <= r < N]
    dense_g = np.zeros((N, D), np.float32)
    if valid:
        np.add.at(dense_g, [r for _, r in valid], row_g[[i for i, _ in valid]])
    u, s = _PREGATHERED_STEP(p0, jnp.asarray(row_g), jnp.array(ids))
    p_ref, m_ref, v_ref = np_lazy_adam(p0, [dense_g], [_rows(ids, N)], [LR])
    np.testing.assert_allclose(np.asarray(p0) + np.asarray(u), p_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.inner_state[0].mu, m_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(s.inner_state[0].nu, v_ref, rtol=1e-5, atol=1e-9)


def test_non_elementwise_inner_takes_dense_path():
    """Global-norm clipping inside ``inner`` sees the whole gradient (dense path)."""
    rng = np.random.default_rng(5)
    p0 = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    g = _sparse_grads(rng, [1, 2, 6, 8])
    ids = jnp.array([1, 2, 2, -1])  # rows 6 and 8 carry gradient but are not listed
    inner = optax.chain(optax.clip_by_global_norm(0.5), optax.sgd(LR, momentum=0.9))
    p, _ = _run(lazy(inner, policy="frozen"), p0, [g], [ids])
    g_np = np.asarray(g, np.float64)
    p_ref = np.array(p0, np.float64)
    p_ref[[1, 2]] -= LR * g_np[[1, 2]] * min(1.0, 0.5 / np.linalg.norm(g_np))
    np.testing.assert_allclose(p, p_ref, rtol=1e-6, atol=1e-7)
    # Declaring it elementwise (wrong here) clips the gathered rows only: a different result.
    p_wrong, _ = _run(lazy(inner, policy="frozen", elementwise=True), p0, [g], [ids])
    assert not np.allclose(p_wrong, p_ref, rtol=1e-4)


# --- selection of lazy leaves, row_ids structures ----------------------------------------


def _model_params(rng):
    return {
        "embed": {"table": jnp.asarray(rng.normal(size=(N, D)), jnp.float32)},
        "dense": {
            "w": jnp.asarray(rng.normal(size=(D, 2)), jnp.float32),
            "b": jnp.zeros((2,), jnp.float32),
        },
    }


@pytest.mark.parametrize(
    ("mask", "ids_as"),
    [
        ({"embed": {"table": True}, "dense": {"w": False, "b": False}}, "pytree"),
        ({"embed": True, "dense": False}, "prefix"),
        (lambda p: jax.tree.map(lambda x: x.shape == (N, D), p), "array"),
        (r"\['embed'\]", "prefix"),
        (
            lambda p: jax.tree_util.tree_map_with_path(lambda k, _: k[0].key == "embed", p),
            "pytree",
        ),
    ],
    ids=["pytree", "prefix", "callable", "regex", "path_predicate"],
)
def test_mask_and_row_ids_structures(mask, ids_as):
    rng = np.random.default_rng(6)
    params = _model_params(rng)
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    ids = jnp.array([2, 9, 2, -1])
    row_ids = {
        "array": ids,
        "pytree": {"embed": {"table": ids}, "dense": {"w": None, "b": None}},
        "prefix": {"embed": ids, "dense": None},
    }[ids_as]
    tx = lazy(optax.adam(LR), mask, policy="frozen", elementwise=True)
    updates, _ = tx.update(grads, tx.init(params), params, row_ids=row_ids)
    dense_u, _ = optax.adam(LR).update(grads, optax.adam(LR).init(params), params)
    for k in ("w", "b"):
        np.testing.assert_allclose(updates["dense"][k], dense_u["dense"][k], rtol=1e-6)
    new_table = params["embed"]["table"] + updates["embed"]["table"]
    p_ref, _, _ = np_lazy_adam(params["embed"]["table"], [grads["embed"]["table"]], [[2, 9]], [LR])
    np.testing.assert_allclose(new_table, p_ref, rtol=1e-5, atol=1e-6)


# --- integrations --------------------------------------------------------------------------
# jit, chain, inject_hyperparams (outer and inner), MultiSteps, nnx.Optimizer, TrainState,
# sharding (Auto and Explicit meshes, sparse path included), donation, checkpoints, bf16,
# int leaves and Python-scalar inner states are covered for every transform by
# tests/test_transform_matrix.py.


# --- non-finite input ------------------------------------------------------------------------

_NONFINITE = {
    name: jax.jit(
        lambda g, p, ids, tx=tx: (
            tx.update(g, tx.init(p), p, row_ids=ids)[0]
            if ids is not None
            else tx.update(g, tx.init(p), p)[0]
        )
    )
    for name, tx in {
        "article": lazy(optax.adam(LR)),
        "frozen_sparse": lazy(optax.adam(LR), policy="frozen", elementwise=True),
    }.items()
}


@settings(max_examples=25, deadline=None)
@given(
    positions=st.lists(st.integers(0, N * D - 1), min_size=1, max_size=3, unique=True),
    value=st.sampled_from([np.nan, np.inf, -np.inf]),
    variant=st.sampled_from(["article", "frozen_sparse"]),
    with_ids=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_nonfinite_gradients_give_nonfinite_updates(positions, value, variant, with_ids, seed):
    """A NaN/±inf gradient entry gives a non-finite update entry (its row is touched under
    the non-zero rule, and listed here when ids are given); the other entries are finite.
    Rows not listed in row_ids are ignored, whatever their gradient (documented)."""
    rng = np.random.default_rng(seed)
    p0 = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    g = np.array(_sparse_grads(rng, [1, 4, 7])).reshape(-1)
    g[positions] = value
    g = jnp.asarray(g.reshape(N, D))
    bad_rows = sorted({pos // D for pos in positions})
    ids = jnp.array([1, 4, 7] + bad_rows) if with_ids else None
    u = np.asarray(_NONFINITE[variant](g, p0, ids)).reshape(-1)
    finite = np.isfinite(u)
    assert not finite[positions].any()
    assert finite.sum() == N * D - len(positions)
    if with_ids:  # an unlisted row with a NaN gradient is ignored: zero update
        unlisted = [r for r in range(N) if r not in (1, 4, 7, *bad_rows)][0]
        g_unlisted = np.asarray(g).copy()
        g_unlisted[unlisted] = np.nan
        u2 = np.asarray(_NONFINITE[variant](jnp.asarray(g_unlisted), p0, ids))
        np.testing.assert_array_equal(u2[unlisted], 0.0)


# --- bad arguments -------------------------------------------------------------------------


def test_bad_arguments_raise_clear_errors():
    rng = np.random.default_rng(13)
    params = _model_params(rng)
    grads = jax.tree.map(jnp.ones_like, params)
    with pytest.raises(ValueError, match="policy"):
        lazy(optax.adam(LR), policy="lazy")
    with pytest.raises(TypeError, match="elementwise"):
        lazy(optax.adam(LR), elementwise="yes")
    with pytest.raises(ValueError, match="mask"):
        lazy(optax.adam(LR), {"embed": True, "other": False}).init(params)
    with pytest.raises(TypeError, match="mask leaves"):
        lazy(optax.adam(LR), {"embed": jnp.array(True), "dense": False}).init(params)
    with pytest.raises(ValueError, match="matched no parameter"):
        lazy(optax.adam(LR), "embedding_table").init(params)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        lazy(optax.adam(LR)).init({"s": jnp.zeros(())})

    tx = lazy(optax.adam(LR), {"embed": True, "dense": False})
    state = tx.init(params)
    with pytest.raises(TypeError, match="integer"):
        tx.update(grads, state, params, row_ids=jnp.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="1-D"):
        tx.update(grads, state, params, row_ids=jnp.array([[1, 2]]))
    with pytest.raises(ValueError, match="row_ids"):
        tx.update(grads, state, params, row_ids={"embed": jnp.array([1]), "nope": None})
    with pytest.raises(ValueError, match="not a lazy parameter"):
        tx.update(grads, state, params, row_ids={"embed": None, "dense": jnp.array([0])})
    all_lazy = lazy(optax.adam(LR))
    with pytest.raises(ValueError, match="exactly one lazy parameter"):
        all_lazy.update(grads, all_lazy.init(params), params, row_ids=jnp.array([1]))
    bad_rows = dict(grads, embed={"table": jnp.ones((3, D))})
    with pytest.raises(ValueError, match="pre-gathered"):
        tx.update(bad_rows, state, params, row_ids={"embed": jnp.array([1, 2]), "dense": None})
    with pytest.raises(ValueError, match="pre-gathered"):
        tx.update(bad_rows, state, params)


def test_row_ids_without_params_raise():
    """Pre-gathered rows without params used to give a row-shaped update (SGD) or a
    broadcast error (Adam): row_ids now need the parameters."""
    rows = jnp.ones((3, D))
    ids = jnp.array([1, 5, 5])
    for inner in (optax.sgd(LR), optax.adam(LR)):
        for policy, elementwise in (("frozen", True), ("article", False)):
            tx = lazy(inner, policy=policy, elementwise=elementwise)
            state = tx.init(jnp.zeros((N, D)))
            with pytest.raises(ValueError, match=r"row_ids need the parameters"):
                tx.update(rows, state, row_ids=ids)
            with pytest.raises(ValueError, match=r"row_ids need the parameters"):
                jax.jit(lambda g, s, tx=tx: tx.update(g, s, row_ids=ids))(jnp.ones((N, D)), state)
    # without row_ids (non-zero rule) params stay optional
    tx = lazy(optax.sgd(LR))
    u, _ = tx.update(jnp.ones((N, D)).at[0].set(0.0), tx.init(jnp.zeros((N, D))))
    np.testing.assert_array_equal(u[0], 0.0)
    np.testing.assert_allclose(u[1:], -LR)


@pytest.mark.parametrize(
    "inner",
    [
        optax.adafactor(LR, min_dim_size_to_factor=2),
        adafactor(LR, min_dim_size_to_factor=2),
        optax.chain(optax.clip(1.0), optax.adafactor(LR, min_dim_size_to_factor=2)),
    ],
    ids=["optax_adafactor", "optax_contrib_adafactor", "chained"],
)
def test_elementwise_declared_for_factored_inner_raises(inner):
    """elementwise=True around an optimizer whose state shows it is not elementwise (a
    factored statistic shaped unlike its parameter) raises instead of a wrong update."""
    params = _model_params(np.random.default_rng(14))
    tx = lazy(inner, "embed", policy="frozen", elementwise=True)
    with pytest.raises(
        ValueError,
        match=r"lazy parameter \['embed'\]\['table'\] of shape \(12, 3\).*not elementwise",
    ):
        tx.init(params)
    with pytest.raises(ValueError, match="not elementwise"):
        lazy(inner, policy="frozen", elementwise=True).init(params["embed"]["table"])
    # a state built without the declaration is refused by the sparse path at update
    state = lazy(inner, "embed", policy="frozen").init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    ids = jnp.array([1, 2])
    with pytest.raises(ValueError, match="not elementwise"):
        tx.update(grads, state, params, row_ids=ids)
    # undeclared, the dense path is used and is correct for any inner optimizer
    lazy(inner, "embed", policy="frozen").update(grads, state, params, row_ids=ids)


@pytest.mark.parametrize(
    "inner",
    [
        optax.adam(LR),
        optax.adamw(LR),
        optax.lion(LR),
        optax.sgd(LR, momentum=0.9),
        optax.rmsprop(LR),
        optax.inject_hyperparams(optax.adam)(learning_rate=LR),
        optax.chain(optax.clip(1.0), optax.adam(LR)),
    ],
    ids=["adam", "adamw", "lion", "sgd_momentum", "rmsprop", "inject_adam", "clip_adam"],
)
def test_elementwise_inner_optimizers_are_accepted(inner):
    """No false alarm for elementwise optimizers, with a tree and with a single table."""
    params = _model_params(np.random.default_rng(15))
    lazy(inner, "embed", policy="frozen", elementwise=True).init(params)
    table = params["embed"]["table"]
    tx = lazy(inner, policy="frozen", elementwise=True)
    tx.update(jnp.ones_like(table), tx.init(table), table, row_ids=jnp.array([0, 3]))


def test_mismatched_gradients_raise_clear_errors():
    params = _model_params(np.random.default_rng(16))
    grads = jax.tree.map(jnp.ones_like, params)
    tx = lazy(optax.adam(LR), "embed")
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"`updates` must have the tree structure.*missing"):
        tx.update({"embed": grads["embed"]}, state, params)
    wrong = dict(grads, dense=dict(grads["dense"], w=jnp.ones((1, 2))))
    with pytest.raises(
        ValueError, match=r"`updates` leaf \['dense'\]\['w'\].*expected \(3, 2\), got \(1, 2\)"
    ):
        tx.update(wrong, state, params)


def test_empty_row_ids_update_nothing():
    p0 = jnp.ones((N, D))
    tx = lazy(optax.adam(LR), policy="frozen", elementwise=True)
    u, s = tx.update(jnp.ones((N, D)), tx.init(p0), p0, row_ids=jnp.zeros((0,), jnp.int32))
    np.testing.assert_array_equal(u, 0.0)
    np.testing.assert_array_equal(s.inner_state[0].mu, 0.0)
