"""Tests for ``optax_contrib.lazy`` (Su Jianlin's lazy optimizer, kexue.fm 2019).

References: dense ``optax`` optimizers run side by side (article policy), a
hand-written numpy LazyAdam with TF-Addons semantics (frozen policy), and the
dense masked path (for the sparse path).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optax_contrib import LazyState, lazy
from tests.checkpoint_roundtrip import checkpoint_roundtrip

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


# --- compatibility -----------------------------------------------------------------------


def test_jit_and_eager_agree():
    rng = np.random.default_rng(7)
    p0 = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    grads = [_sparse_grads(rng, [1, 2]), _sparse_grads(rng, [2, 3])]
    ids_seq = [jnp.array([1, 2, 1]), jnp.array([3, 2, -1])]
    tx = lazy(optax.adam(LR), policy="frozen", elementwise=True)
    pj, _ = _run(tx, p0, grads, ids_seq, jit=True)
    pe, _ = _run(tx, p0, grads, ids_seq, jit=False)
    np.testing.assert_allclose(pj, pe, rtol=1e-6, atol=1e-7)


def test_chain_with_clipping_and_schedule():
    rng = np.random.default_rng(8)
    p0 = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    batches = [[0, 4], [4, 6, 6], [1, 0], [6, 11]]
    grads = [_sparse_grads(rng, b) * 3.0 for b in batches]
    schedule = optax.linear_schedule(0.1, 0.01, transition_steps=4)
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        lazy(optax.adam(schedule), policy="frozen", elementwise=True),
    )
    p, _ = _run(tx, p0, grads, [jnp.array(b + [-1]) for b in batches])
    clipped = [np.asarray(g) * min(1.0, 1.0 / np.linalg.norm(np.asarray(g))) for g in grads]
    lrs = [float(schedule(t)) for t in range(4)]
    p_ref, _, _ = np_lazy_adam(p0, clipped, [_rows(b, N) for b in batches], lrs)
    np.testing.assert_allclose(p, p_ref, rtol=1e-5, atol=1e-6)


def test_inject_hyperparams_inner():
    rng = np.random.default_rng(9)
    p0 = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    batches = [[1, 2], [2, 3], [3, 1]]
    grads = [_sparse_grads(rng, b) for b in batches]
    tx = lazy(
        optax.inject_hyperparams(optax.adam)(learning_rate=LR), policy="frozen", elementwise=True
    )
    step = jax.jit(tx.update)
    p, s = p0, tx.init(p0)
    for i, (g, b) in enumerate(zip(grads, batches)):
        if i == 2:
            s.inner_state.hyperparams["learning_rate"] = jnp.asarray(0.01)
        u, s = step(g, s, p, row_ids=jnp.array(b))
        p = optax.apply_updates(p, u)
    assert float(s.inner_state.hyperparams["learning_rate"]) == pytest.approx(0.01)
    p_ref, _, _ = np_lazy_adam(p0, grads, batches, [LR, LR, 0.01])
    np.testing.assert_allclose(p, p_ref, rtol=1e-5, atol=1e-6)


def test_multisteps():
    """Accumulated gradients: rows touched in any micro-batch are updated every k steps."""
    rng = np.random.default_rng(10)
    p0 = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    batches = [[1], [4], [4, 7], [2]]
    grads = [_sparse_grads(rng, b) for b in batches]
    tx = optax.MultiSteps(lazy(optax.adam(LR), policy="frozen"), every_k_schedule=2)
    p, _ = _run(tx, p0, grads)
    mean_grads = [(grads[0] + grads[1]) / 2, (grads[2] + grads[3]) / 2]
    p_ref, _, _ = np_lazy_adam(p0, mean_grads, [[1, 4], [2, 4, 7]], [LR, LR])
    np.testing.assert_allclose(p, p_ref, rtol=1e-5, atol=1e-6)
    never = np.setdiff1d(np.arange(N), [1, 2, 4, 7])
    np.testing.assert_array_equal(np.asarray(p)[never], np.asarray(p0)[never])


def test_flax_nnx_optimizer_with_embed():
    nnx = pytest.importorskip("flax.nnx")

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(N, D, rngs=rngs)
            self.out = nnx.Linear(D, 2, rngs=rngs)

        def __call__(self, tokens):
            return self.out(self.embed(tokens)).sum(axis=1)

    model = Model(nnx.Rngs(0))
    tx = lazy(optax.adam(LR), "embed", policy="frozen", elementwise=True)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    table0 = np.asarray(model.embed.embedding[...])
    kernel0 = model.out.kernel[...]
    ref_out = optax.adam(LR)
    ref_state = ref_out.init(kernel0)
    kernel_ref = kernel0

    @nnx.jit
    def train_step(model, optimizer, tokens):
        loss = lambda m: jnp.mean(m(tokens) ** 2)
        grads = nnx.grad(loss)(model)
        optimizer.update(model, grads, row_ids=tokens.reshape(-1))
        return grads

    token_batches = [jnp.array([[1, 3, 3], [5, 1, 0]]), jnp.array([[3, 7, 7], [7, 7, 0]])]
    table_grads = []
    for tokens in token_batches:
        grads = train_step(model, optimizer, tokens)
        table_grads.append(np.asarray(grads["embed"]["embedding"][...]))
        u, ref_state = ref_out.update(grads["out"]["kernel"][...], ref_state)
        kernel_ref = kernel_ref + u
    rows = [_rows(np.asarray(t).ravel(), N) for t in token_batches]
    p_ref, _, _ = np_lazy_adam(table0, table_grads, rows, [LR, LR])
    table = np.asarray(model.embed.embedding[...])
    np.testing.assert_allclose(table, p_ref, rtol=1e-5, atol=1e-6)
    never = np.setdiff1d(np.arange(N), [0, 1, 3, 5, 7])
    np.testing.assert_array_equal(table[never], table0[never])
    np.testing.assert_allclose(model.out.kernel[...], kernel_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
def test_sharded_params_and_state(axis_type):
    """Table rows sharded over 8 host devices; the state stays sharded like the params."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 host devices (conftest sets XLA_FLAGS)")
    kind = {"explicit": jax.sharding.AxisType.Explicit, "auto": jax.sharding.AxisType.Auto}
    mesh = jax.make_mesh((8,), ("x",), axis_types=(kind[axis_type],))
    rows_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    rng = np.random.default_rng(11)
    params = {
        "table": jnp.asarray(rng.normal(size=(16, D)), jnp.float32),
        "w": jnp.asarray(rng.normal(size=(D, D)), jnp.float32),
    }
    grads = {"table": _sparse_grads(rng, [0, 9, 15], (16, D)), "w": jnp.ones((D, D))}
    ids = jnp.array([9, 0, 9, -1])
    tx = lazy(optax.adam(LR), "table", policy="frozen", elementwise=True)

    def train_step(p, s, g, ids):
        u, s = tx.update(g, s, p, row_ids=ids)
        return optax.apply_updates(p, u), s

    p_ref, s_ref = jax.jit(train_step)(params, tx.init(params), grads, ids)
    with jax.set_mesh(mesh):
        shardings = {"table": rows_sharding, "w": replicated}
        sharded_params = jax.device_put(params, shardings)
        sharded_grads = jax.device_put(grads, shardings)
        # Under Auto sharding a jitted init has no data dependence: init eagerly there.
        init = jax.jit(tx.init) if axis_type == "explicit" else tx.init
        state = init(sharded_params)
        assert state.inner_state[0].mu["table"].sharding.is_equivalent_to(rows_sharding, 2)
        new_p, new_state = jax.jit(train_step)(sharded_params, state, sharded_grads, ids)
    for a, b in zip(jax.tree.leaves((new_p, new_state)), jax.tree.leaves((p_ref, s_ref))):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert new_p["table"].sharding.is_equivalent_to(rows_sharding, 2)
    for leaf in (new_state.inner_state[0].mu["table"], new_state.inner_state[0].nu["table"]):
        assert leaf.sharding.is_equivalent_to(rows_sharding, 2)
    np.testing.assert_array_equal(np.asarray(new_p["table"])[15], params["table"][15])  # unlisted


def test_checkpoint_round_trip(tmp_path):
    rng = np.random.default_rng(12)
    p0 = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    tx = lazy(optax.adam(LR), policy="frozen", elementwise=True)
    step = jax.jit(tx.update)
    g1, g2 = _sparse_grads(rng, [1, 2]), _sparse_grads(rng, [2, 5])
    u, state = step(g1, tx.init(p0), p0, row_ids=jnp.array([1, 2]))
    p1 = p0 + u
    restored = checkpoint_roundtrip(state, tmp_path)
    assert isinstance(restored, LazyState)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)
    ua, sa = step(g2, state, p1, row_ids=jnp.array([2, 5]))
    ub, sb = step(g2, restored, p1, row_ids=jnp.array([2, 5]))
    np.testing.assert_array_equal(ua, ub)
    for a, b in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
        np.testing.assert_array_equal(a, b)


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


def test_empty_row_ids_update_nothing():
    p0 = jnp.ones((N, D))
    tx = lazy(optax.adam(LR), policy="frozen", elementwise=True)
    u, s = tx.update(jnp.ones((N, D)), tx.init(p0), p0, row_ids=jnp.zeros((0,), jnp.int32))
    np.testing.assert_array_equal(u, 0.0)
    np.testing.assert_array_equal(s.inner_state[0].mu, 0.0)
