"""One compatibility matrix for every optimizer transform of ``optax_contrib``.

Every cell runs a transform through one integration (``jax.jit``, ``optax.chain``,
``optax.inject_hyperparams``, ``optax.MultiSteps``, ``flax.nnx.Optimizer``, a Flax
``TrainState``, sharding over 8 host devices with Auto and Explicit meshes, an orbax
checkpoint, donated buffers, bf16 parameters, int leaves in the parameter tree, Python
scalars in an inner optimizer's state) and compares the parameter trajectory with a
reference: the plain jitted run of the same transform (itself compared with optax's
equivalent where there is one, and with its eager run), or a run that is equivalent by
construction (pre-clipped gradients, the mean gradient of a ``MultiSteps`` window, the
learning rate switched between two steps). A new transform gets the whole matrix by
adding one line to ``CASES`` (the pattern of optax's ``optax/contrib/_common_test.py``).

The loss is a weighted quadratic ``½ Σ x ⊙ (θ − T)²`` whose embedding weights ``x`` are
zero outside each step's rows, so the lazy wrapper sees sparse gradients.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from optax_contrib import adafactor, lazy, lookahead
from tests.checkpoint_roundtrip import checkpoint_roundtrip

SHAPES = {"embed": (8, 4), "w": (4, 3), "b": (8,)}
ROWS = ((0, 3), (3, 5), (1, 6), (0, 5))  # embedding rows of each step; 2, 4, 7 never
N_IDS = 4  # row ids are padded with -1 to this static length
LR, LR2 = 0.05, 0.02
SCHEDULE = optax.linear_schedule(LR, LR / 5, len(ROWS))
CLIP = 1.0
SPECS = {"embed": P("x", None), "w": P(), "b": P("x")}

_RNG = np.random.default_rng(0)
P0 = {k: jnp.asarray(_RNG.normal(size=s), jnp.float32) for k, s in sorted(SHAPES.items())}
# At least 1 away from the start: no gradient entry comes near 0 in the few steps taken
# (where Adam's sign-like steps would make low-precision runs flip direction).
TARGET = {
    k: P0[k] + 1.0 + jnp.asarray(np.abs(_RNG.normal(size=s)), jnp.float32)
    for k, s in SHAPES.items()
}


def _batch(rows: tuple[int, ...], t: int) -> dict[str, jax.Array]:
    """Loss weights of one step: the embedding rows of the batch, scalars elsewhere."""
    embed = np.zeros((SHAPES["embed"][0], 1), np.float32)
    embed[list(rows)] = 1.0 + 0.5 * np.arange(len(rows))[:, None]
    return {
        "embed": jnp.asarray(embed),
        "w": jnp.asarray(1.0 + 0.25 * t, jnp.float32),
        "b": jnp.asarray(2.0 - 0.25 * t, jnp.float32),
    }


XS = [_batch(rows, t) for t, rows in enumerate(ROWS)]


def _ids(rows: tuple[int, ...]) -> jax.Array:
    rows = tuple(sorted(set(rows)))
    return jnp.array(rows + (-1,) * (N_IDS - len(rows)), jnp.int32)


IDS = [_ids(rows) for rows in ROWS]


def _loss(params: dict[str, Any], x: dict[str, jax.Array]) -> jax.Array:
    return sum(0.5 * jnp.sum(x[k] * (params[k] - TARGET[k]) ** 2) for k in x)


def _grads(params: dict[str, Any], x: dict[str, jax.Array]) -> dict[str, Any]:
    """Gradients of the float leaves; integer leaves get integer zeros."""
    floats = {k: v for k, v in params.items() if jnp.issubdtype(v.dtype, jnp.floating)}
    g = jax.grad(_loss)(floats, x)
    return {k: g[k] if k in g else jnp.zeros_like(v) for k, v in params.items()}


def _clipped_grads(params, x):
    """Global-norm clipping written out (the reference for optax.clip_by_global_norm)."""
    g = _grads(params, x)
    norm = jnp.sqrt(sum(jnp.sum(v.astype(jnp.float32) ** 2) for v in jax.tree.leaves(g)))
    return jax.tree.map(lambda v: v * jnp.minimum(1.0, CLIP / norm), g)


# --------------------------------------------------------------------------- peers


def _optax_adafactor_peer(learning_rate, params, xs):
    tx = optax.adafactor(learning_rate, min_dim_size_to_factor=3)
    return _run(tx, params, xs)[0]


def _optax_lookahead_peer(learning_rate, params, xs):
    """optax.lookahead (which needs LookaheadParams), same inner optimizer and settings."""
    tx = optax.lookahead(optax.adam(learning_rate), 2, 0.5, reset_state=True)
    lp = optax.LookaheadParams.init_synced(params)
    state = tx.init(lp)

    @jax.jit
    def step(lp, state, x):
        updates, state = tx.update(_grads(lp.fast, x), state, lp)
        return optax.apply_updates(lp, updates), state

    traj = []
    for x in xs:
        lp, state = step(lp, state, x)
        traj.append(lp.fast)
    return traj


def _lazy_peer(frozen: bool):
    """Dense optax.adam; the embedding rows with a zero gradient get a zero update and,
    when ``frozen``, keep their moments (TF-Addons LazyAdam, written out)."""

    def run(learning_rate, params, xs):
        tx = optax.adam(learning_rate)

        @jax.jit
        def step(params, state, x):
            g = _grads(params, x)
            new_updates, new_state = tx.update(g, state, params)
            touched = jnp.any(g["embed"] != 0, axis=1, keepdims=True)
            new_updates["embed"] = jnp.where(touched, new_updates["embed"], 0.0)
            if frozen:
                mu, nu = new_state[0].mu, new_state[0].nu
                mu["embed"] = jnp.where(touched, mu["embed"], state[0].mu["embed"])
                nu["embed"] = jnp.where(touched, nu["embed"], state[0].nu["embed"])
            return optax.apply_updates(params, new_updates), new_state

        state, traj = tx.init(params), []
        for x in xs:
            params, state = step(params, state, x)
            traj.append(params)
        return traj

    return run


# --------------------------------------------------------------------------- cases


class Case(NamedTuple):
    """One transform of the matrix.

    Attributes:
      name: test id.
      make: ``learning_rate -> GradientTransformation`` (a constant or a schedule).
      wrap: for wrappers, ``inner -> GradientTransformation`` (``make`` wraps Adam).
      peer: ``(learning_rate, params, xs) -> trajectory`` of an independent equivalent.
      row_ids: pass each step's row ids (``row_ids=``) where the integration allows.
    """

    name: str
    make: Callable[..., optax.GradientTransformation]
    wrap: Callable[[optax.GradientTransformation], optax.GradientTransformation] | None = None
    peer: Callable[..., list[Any]] | None = None
    row_ids: bool = False


def _wrapper(name, wrap, **kwargs) -> Case:
    def make(learning_rate):
        return wrap(optax.adam(learning_rate))

    return Case(name, make, wrap=wrap, **kwargs)


CASES = [
    Case(
        "adafactor",
        lambda learning_rate: adafactor(learning_rate, min_dim_size_to_factor=3),
        peer=_optax_adafactor_peer,
    ),
    _wrapper(
        "lookahead_reset",
        lambda inner: lookahead(inner, 2, 0.5, reset_state=True),
        peer=_optax_lookahead_peer,
    ),
    _wrapper(
        "lazy_frozen_sparse",
        lambda inner: lazy(inner, "embed", policy="frozen", elementwise=True),
        peer=_lazy_peer(frozen=True),
        row_ids=True,
    ),
    _wrapper("lazy_article", lambda inner: lazy(inner, "embed"), peer=_lazy_peer(frozen=False)),
]
WRAPPERS = [case for case in CASES if case.wrap is not None]


CASE_BY_NAME = {case.name: case for case in CASES}


def _ids_for(case: Case, t: int | None) -> dict[str, jax.Array]:
    return {"row_ids": IDS[t]} if case.row_ids and t is not None else {}


# --------------------------------------------------------------------------- harness


@functools.cache
def _tx(name: str, learning_rate: Any = LR, inner: str = "adam") -> optax.GradientTransformation:
    """One transformation object per setting, so that its compiled steps are reused."""
    case = CASE_BY_NAME[name]
    if inner == "sgd":
        return case.wrap(optax.sgd(learning_rate))
    return case.make(learning_rate)


@functools.cache
def _step_fn(tx, grads_fn=_grads, donate=False):
    """The jitted step of ``tx`` (cached per transformation object)."""

    def step(params, state, x, extra):
        updates, state = tx.update(grads_fn(params, x), state, params, **extra)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1) if donate else ())


def _run(tx, params, xs, *, case=None, jit=True, grads_fn=_grads, state=None, start=0):
    """Parameters after each step (and the final state) of ``tx`` on the loss."""
    state = tx.init(params) if state is None else state
    if jit:
        step = _step_fn(tx, grads_fn)
    else:

        def step(params, state, x, extra):
            updates, state = tx.update(grads_fn(params, x), state, params, **extra)
            return optax.apply_updates(params, updates), state

    traj = []
    for t, x in enumerate(xs, start=start):
        extra = {} if case is None else _ids_for(case, t)
        params, state = step(params, state, x, extra)
        traj.append(params)
    return traj, state


@functools.cache
def _reference(name: str) -> list[dict[str, np.ndarray]]:
    """The plain jitted run of a case (float32 host arrays)."""
    case = CASE_BY_NAME[name]
    traj, _ = _run(_tx(name), P0, XS, case=case)
    return [_host(p) for p in traj]


def _host(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), tree)


def _assert_close(traj, ref, rtol=1e-5, atol=1e-6):
    assert len(traj) == len(ref)
    for t, (a, b) in enumerate(zip(traj, ref)):
        a = _host(a)
        assert set(a) == set(b), (t, set(a), set(b))
        for k in b:
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=f"step {t}, {k}")


def _moved(ref):
    """Sanity: the reference moves the touched parameters (so a cell can fail)."""
    assert not np.allclose(ref[-1]["w"], np.asarray(P0["w"]))


parametrize_cases = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
parametrize_wrappers = pytest.mark.parametrize("case", WRAPPERS, ids=[c.name for c in WRAPPERS])


# --------------------------------------------------------------------------- cells


@parametrize_cases
def test_plain_run_matches_peer(case):
    ref = _reference(case.name)
    _moved(ref)
    _assert_close(case.peer(LR, P0, XS), ref)
    untouched = [r for r in range(SHAPES["embed"][0]) if all(r not in rows for rows in ROWS)]
    if case.name.startswith("lazy"):
        np.testing.assert_array_equal(
            ref[-1]["embed"][untouched], np.asarray(P0["embed"])[untouched]
        )


@parametrize_cases
def test_jit_matches_eager(case):
    traj, _ = _run(_tx(case.name), P0, XS[:2], case=case, jit=False)
    _assert_close(traj, _reference(case.name)[:2])


@parametrize_cases
def test_chain_with_clipping_and_schedule(case):
    tx = optax.chain(optax.clip_by_global_norm(CLIP), case.make(SCHEDULE))
    traj, _ = _run(tx, P0, XS, case=case)
    ref, _ = _run(case.make(SCHEDULE), P0, XS, case=case, grads_fn=_clipped_grads)
    _assert_close(traj, [_host(p) for p in ref])


def _set_learning_rate(state, value):
    """Sets ``learning_rate`` in every ``inject_hyperparams`` state inside ``state``."""
    kinds = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)
    nodes = jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, kinds))
    found = [n for n in nodes if isinstance(n, kinds)]
    assert found
    for node in found:
        node.hyperparams["learning_rate"] = jnp.asarray(value)


def _inject_check(tx, case):
    """The learning rate changed through the state after two steps; reference: the plain
    transform with LR, then the one with LR2 on the same state."""
    first, state = _run(tx, P0, XS[:2], case=case)
    _set_learning_rate(state, LR2)
    second, _ = _run(tx, first[-1], XS[2:], case=case, state=state, start=2)
    ref1, ref_state = _run(_tx(case.name), P0, XS[:2], case=case)
    ref2, _ = _run(_tx(case.name, LR2), ref1[-1], XS[2:], case=case, state=ref_state, start=2)
    _assert_close(first + second, [_host(p) for p in ref1 + ref2])
    assert not np.allclose(_host(ref2[-1])["w"], _reference(case.name)[-1]["w"])


@parametrize_cases
def test_inject_hyperparams(case):
    _inject_check(optax.inject_hyperparams(case.make)(learning_rate=LR), case)


@parametrize_wrappers
def test_inject_hyperparams_into_inner(case):
    _inject_check(case.wrap(optax.inject_hyperparams(optax.adam)(learning_rate=LR)), case)


def _multisteps_check(tx, ref_tx, case):
    """MultiSteps(k=2) around ``tx`` emits every second step the update of ``ref_tx`` for
    the mean gradient."""
    tx = optax.MultiSteps(tx, every_k_schedule=2)
    state = tx.init(P0)
    step = _step_fn(tx)
    params, traj = P0, []
    for t, x in enumerate(XS):
        window = ROWS[t - t % 2] + ROWS[t - t % 2 + 1]
        extra = {"row_ids": _ids(window)} if case.row_ids else {}
        params, state = step(params, state, x, extra)
        traj.append(params)
    means = [jax.tree.map(lambda a, b: (a + b) / 2, XS[i], XS[i + 1]) for i in (0, 2)]
    mean_ids = [_ids(ROWS[0] + ROWS[1]), _ids(ROWS[2] + ROWS[3])]
    ref_state, ref_params, ref = ref_tx.init(P0), P0, []
    ref_step = _step_fn(ref_tx)
    for x, ids in zip(means, mean_ids):
        extra = {"row_ids": ids} if case.row_ids else {}
        ref_params, ref_state = ref_step(ref_params, ref_state, x, extra)
        ref.append(ref_params)
    expected = [_host(P0), _host(ref[0]), _host(ref[0]), _host(ref[1])]
    _assert_close(traj, expected)


@parametrize_cases
def test_multisteps(case):
    _multisteps_check(case.make(LR), _tx(case.name), case)


@parametrize_cases
def test_nnx_optimizer(case):
    nnx = pytest.importorskip("flax.nnx")

    class Model(nnx.Module):
        def __init__(self, params):
            for k, v in params.items():
                setattr(self, k, nnx.Param(v))

    model = Model(P0)
    optimizer = nnx.Optimizer(model, case.make(LR), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, extra):
        loss = lambda m: _loss({k: getattr(m, k)[...] for k in SHAPES}, x)
        optimizer.update(model, nnx.grad(loss)(model), **extra)

    traj = []
    for t, x in enumerate(XS):
        step(model, optimizer, x, _ids_for(case, t))
        traj.append({k: getattr(model, k)[...] for k in SHAPES})
    _assert_close(traj, _reference(case.name))


@parametrize_cases
def test_flax_train_state(case):
    train_state = pytest.importorskip("flax.training.train_state")
    state = train_state.TrainState.create(apply_fn=None, params=P0, tx=case.make(LR))
    apply = jax.jit(lambda s, x: s.apply_gradients(grads=_grads(s.params, x)))
    traj = []
    for x in XS:  # TrainState passes no extra arguments: lazy uses the non-zero rule
        state = apply(state, x)
        traj.append(state.params)
    _assert_close(traj, _reference(case.name))


def _param_copies(state, params):
    """Subtrees of ``state`` with the parameters' tree structure (e.g. Adam's mu, nu)."""
    treedef = jax.tree.structure(params)
    is_copy = lambda n: jax.tree.structure(n) == treedef
    return [n for n in jax.tree.leaves(state, is_leaf=is_copy) if is_copy(n)]


@parametrize_cases
@pytest.mark.parametrize("axis_type", ["auto", "explicit"])
def test_sharded_over_8_devices(case, axis_type):
    if jax.device_count() < 8:
        pytest.skip("needs 8 host devices (conftest sets XLA_FLAGS)")
    kind = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}[axis_type]
    mesh = jax.make_mesh((8,), ("x",), axis_types=(kind,))
    shardings = {k: NamedSharding(mesh, SPECS[k]) for k in SHAPES}
    tx = _tx(case.name)
    with jax.set_mesh(mesh):
        params = jax.device_put(P0, shardings)
        # Under Auto sharding a jitted init has no data dependence: init eagerly there.
        state = jax.jit(tx.init)(params) if axis_type == "explicit" else tx.init(params)
        traj, state = _run(tx, params, XS, case=case, state=state)
    _assert_close(traj, _reference(case.name))
    for k, sharding in shardings.items():
        assert traj[-1][k].sharding.is_equivalent_to(sharding, len(SHAPES[k])), k
    copies = _param_copies(state, P0)
    assert copies
    for copy in copies:
        for k, sharding in shardings.items():
            leaf = copy[k]
            if leaf.shape == SHAPES[k]:  # per-entry state follows its parameter
                assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (k, leaf.sharding)


@parametrize_cases
def test_orbax_checkpoint_roundtrip(case, tmp_path):
    tx = _tx(case.name)
    first, state = _run(tx, P0, XS[:2], case=case)
    restored = checkpoint_roundtrip(state, tmp_path)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    a, _ = _run(tx, first[-1], XS[2:], case=case, state=state, start=2)
    b, _ = _run(tx, first[-1], XS[2:], case=case, state=restored, start=2)
    _assert_close(b, [_host(p) for p in a], rtol=0, atol=0)
    _assert_close(first + b, _reference(case.name))


@parametrize_cases
def test_donated_params_and_state(case):
    tx = _tx(case.name)
    step = _step_fn(tx, donate=True)
    params, state = jax.tree.map(jnp.copy, P0), tx.init(P0)
    traj = []
    for t, x in enumerate(XS):
        params, state = step(params, state, x, _ids_for(case, t))
        traj.append(_host(params))
    _assert_close(traj, _reference(case.name))


@parametrize_cases
def test_bf16_params(case):
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), P0)
    traj, state = _run(_tx(case.name), params, XS, case=case)
    for p in traj:
        assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(p))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state) if x.dtype != bool)
    # bf16 rounds to 8 bits: within a few bf16 ulps of the float32 run, step by step
    _assert_close(traj, _reference(case.name), rtol=0, atol=3e-2)


@parametrize_cases
def test_int_leaves_in_params(case):
    """An integer leaf (e.g. a counter kept in the tree) is left as it is, dtype included;
    the float leaves follow the run without it."""
    counter = jnp.array([3, 7], jnp.int32)
    traj, _ = _run(_tx(case.name), dict(P0, counter=counter), XS, case=case)
    for p in traj:
        assert p["counter"].dtype == jnp.int32
        np.testing.assert_array_equal(p["counter"], counter)
    _assert_close([{k: p[k] for k in SHAPES} for p in traj], _reference(case.name))


# --------------------------------------------------------------------------- inner state


class ScalarLeavesState(NamedTuple):
    """A state with Python-scalar leaves, as optax's own lookahead test optimizer has."""

    aggregate: Any
    is_reset: bool
    calls: int
    scale: float


def scalar_state_sgd(learning_rate: float) -> optax.GradientTransformation:
    """SGD whose state holds Python scalars (``True``, ``0``, ``1.0``) after ``init``."""

    def init(params):
        return ScalarLeavesState(jax.tree.map(jnp.zeros_like, params), True, 0, 1.0)

    def update(updates, state, params=None):
        del params
        aggregate = jax.tree.map(lambda a, g: a + g, state.aggregate, updates)
        new_state = ScalarLeavesState(aggregate, False, state.calls + 1, state.scale)
        return jax.tree.map(lambda g: -learning_rate * g, updates), new_state

    return optax.GradientTransformation(init, update)


@parametrize_wrappers
@pytest.mark.parametrize("mode", ["eager", "jit", "inject_hyperparams", "multisteps"])
def test_python_scalar_inner_state(case, mode):
    """Same trajectory as the wrapper around optax.sgd (whose state has no Python scalars)."""
    make = lambda learning_rate: case.wrap(scalar_state_sgd(learning_rate))
    ref_tx = _tx(case.name, LR, inner="sgd")
    if mode == "multisteps":
        _multisteps_check(make(LR), ref_tx, case)
        return
    if mode == "inject_hyperparams":
        tx = optax.inject_hyperparams(make)(learning_rate=LR)
    else:
        tx = make(LR)
    assert any(isinstance(x, bool) for x in jax.tree.leaves(tx.init(P0)))
    steps = 2 if mode == "eager" else len(XS)
    traj, _ = _run(tx, P0, XS[:steps], case=case, jit=mode != "eager")
    ref, _ = _run(ref_tx, P0, XS, case=case)
    _assert_close(traj, [_host(p) for p in ref[:steps]])
