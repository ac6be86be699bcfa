"""Tests of flax_layers.crf and the CRF NNX module.

References: brute-force enumeration of all K**L paths (numpy), pytorch-crf, finite
differences (float64), and the independent log-space / associative-scan algorithms.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from flax_layers import (
    CRF,
    allowed_transitions,
    crf_log_likelihood,
    crf_log_partition,
    crf_marginals,
    crf_sequence_score,
    mask_transitions,
    viterbi_decode,
    viterbi_nbest,
)

ALGORITHMS = ("rescaled", "sequential", "parallel")
B, T, K = 4, 5, 3
LENGTHS = np.array([5, 3, 1, 0])  # full, padded, length-1, fully padded


def _problem(seed=0, b=B, t=T, k=K, scale=1.0):
    rng = np.random.default_rng(seed)
    em = (scale * rng.normal(size=(b, t, k))).astype(np.float32)
    g = rng.normal(size=(k, k)).astype(np.float32)
    start = rng.normal(size=k).astype(np.float32)
    end = rng.normal(size=k).astype(np.float32)
    return em, g, start, end


def _brute_force(em, g, start, end, length):
    """Scores of all K**L paths of one sequence, best first, with log Z and marginals."""
    num_steps, k = em.shape
    if length == 0:
        return [], np.zeros(0), 0.0, np.zeros((num_steps, k))
    paths = list(itertools.product(range(k), repeat=length))
    scores = np.array(
        [
            start[p[0]]
            + sum(em[t, p[t]] for t in range(length))
            + sum(g[p[t - 1], p[t]] for t in range(1, length))
            + end[p[-1]]
            for p in paths
        ],
        dtype=np.float64,
    )
    log_z = np.logaddexp.reduce(scores)
    marg = np.zeros((num_steps, k))
    for p, w in zip(paths, np.exp(scores - log_z)):
        marg[np.arange(length), p] += w
    order = np.argsort(-scores, kind="stable")
    return [paths[i] for i in order], scores[order], log_z, marg


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_partition_and_marginals_match_brute_force(algorithm):
    em, g, start, end = _problem()
    g[0, 2] = -np.inf  # a disallowed transition
    log_z = crf_log_partition(em, g, None, start, end, lengths=LENGTHS, algorithm=algorithm)
    marg = crf_marginals(em, g, None, start, end, lengths=LENGTHS, algorithm=algorithm)
    for b in range(B):
        _, _, ref_z, ref_m = _brute_force(em[b], g, start, end, LENGTHS[b])
        np.testing.assert_allclose(log_z[b], ref_z, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(marg[b], ref_m, atol=1e-5)


def test_log_likelihood_is_normalised_and_matches_score_minus_log_z():
    em, g, start, end = _problem(1)
    length = 4
    paths = np.array(list(itertools.product(range(K), repeat=length)))  # all K**4 paths
    tags = np.concatenate([paths, np.zeros((len(paths), T - length), int)], axis=1)
    batch = np.broadcast_to(em[0], (len(paths), T, K))
    lengths = np.full(len(paths), length)
    ll = crf_log_likelihood(batch, tags, g, None, start, end, lengths=lengths)
    np.testing.assert_allclose(float(jnp.sum(jnp.exp(ll))), 1.0, rtol=1e-5)
    _, _, ref_z, _ = _brute_force(em[0], g, start, end, length)
    p = paths[7]
    ref_score = (
        start[p[0]] + em[0, np.arange(length), p].sum() + g[p[:-1], p[1:]].sum() + end[p[-1]]
    )
    np.testing.assert_allclose(ll[7], ref_score - ref_z, rtol=1e-5, atol=1e-5)
    score = crf_sequence_score(batch[7], tags[7], g, None, start, end, lengths=length)
    np.testing.assert_allclose(score, ref_score, rtol=1e-6)


def test_viterbi_and_nbest_match_brute_force():
    em, g, start, end = _problem(2)
    tags, score = viterbi_decode(em, g, None, start, end, lengths=LENGTHS)
    n = 4
    ntags, nscores = viterbi_nbest(em, g, n, None, start, end, lengths=LENGTHS)
    assert tags.shape == (B, T) and ntags.shape == (B, n, T) and nscores.shape == (B, n)
    for b in range(B):
        length = LENGTHS[b]
        paths, scores, _, _ = _brute_force(em[b], g, start, end, length)
        assert np.all(np.asarray(tags[b, length:]) == -1)
        if length == 0:
            assert float(score[b]) == 0.0 and np.all(np.asarray(ntags[b]) == -1)
            continue
        assert tuple(np.asarray(tags[b, :length])) == paths[0]
        np.testing.assert_allclose(score[b], scores[0], rtol=1e-5)
        for r in range(n):
            if r < len(paths):
                assert tuple(np.asarray(ntags[b, r, :length])) == paths[r]
                np.testing.assert_allclose(nscores[b, r], scores[r], rtol=1e-5, atol=1e-5)
            else:  # fewer feasible paths than n (length 1: K = 3 paths)
                assert nscores[b, r] == -np.inf and np.all(np.asarray(ntags[b, r]) == -1)


def test_parity_with_pytorch_crf():
    torch = pytest.importorskip("torch")
    torchcrf = pytest.importorskip("torchcrf")
    b, t, k = B, T, K
    em, g, start, end = _problem(3)
    lengths = np.array([5, 4, 1, 2])  # pytorch-crf needs the first step of every row on
    mask = np.arange(t) < lengths[:, None]
    tags = np.random.default_rng(4).integers(0, k, (b, t))
    ref = torchcrf.CRF(k, batch_first=True)
    with torch.no_grad():
        ref.transitions.copy_(torch.from_numpy(g))
        ref.start_transitions.copy_(torch.from_numpy(start))
        ref.end_transitions.copy_(torch.from_numpy(end))
    em_t, mask_t = torch.from_numpy(em), torch.from_numpy(mask)
    ref_ll = ref(em_t, torch.from_numpy(tags), mask_t, reduction="none").detach().numpy()
    ref_paths = ref.decode(em_t, mask_t)
    ll = crf_log_likelihood(em, tags, g, mask, start, end)
    np.testing.assert_allclose(ll, ref_ll, rtol=1e-5, atol=1e-4)
    decoded, _ = viterbi_decode(em, g, mask, start, end)
    for row, path in zip(np.asarray(decoded), ref_paths):
        assert row[: len(path)].tolist() == path and np.all(row[len(path) :] == -1)


def test_gradients_match_finite_differences_float64():
    """The rescaled algorithm's custom_vjp against finite differences."""
    em, g, start, end = _problem(5)
    tags = np.random.default_rng(6).integers(0, K, (B, T))
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a, jnp.float64) for a in (em, g, start, end))

        def f(em, g, start, end):
            ll = crf_log_likelihood(em, tags, g, None, start, end, lengths=LENGTHS)
            return jnp.sum(ll * jnp.array([1.0, -0.5, 2.0, 3.0]))

        assert f(*args).dtype == jnp.float64
        check_grads(f, args, order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_algorithms_agree_on_values_and_gradients():
    em, g, start, end = _problem(7, scale=3.0)
    g[1, :] = -np.inf  # a tag that can never be followed: only allowed as last tag
    lengths = LENGTHS

    def value_and_grads(algorithm):
        f = lambda *a: jnp.sum(
            crf_log_partition(*a[:2], None, *a[2:], lengths=lengths, algorithm=algorithm)
        )
        return jax.value_and_grad(f, argnums=(0, 1, 2, 3))(em, g, start, end)

    ref_value, ref_grads = value_and_grads("sequential")
    for algorithm in ("rescaled", "parallel"):
        value, grads = value_and_grads(algorithm)
        np.testing.assert_allclose(value, ref_value, rtol=1e-5)
        for got, want in zip(grads, ref_grads):
            assert np.all(np.isfinite(got))
            np.testing.assert_allclose(got, want, atol=2e-5)


def test_extreme_scores_fall_back_to_exact_log_space():
    # Two disconnected tags; each path wins 150 nats over half of the sequence, so the
    # second path's mass underflows in a probability-space forward pass (float32).
    em = np.zeros((1, 20, 2), np.float32)
    em[0, :10, 0] = 15.0
    em[0, 10:, 1] = 15.0
    g = np.array([[0.0, -np.inf], [-np.inf, 0.0]], np.float32)
    log_z, grad = jax.value_and_grad(lambda e: crf_log_partition(e, g)[0])(em)
    np.testing.assert_allclose(log_z, 150 + np.log(2), rtol=1e-6)
    np.testing.assert_allclose(grad[0], 0.5, atol=1e-5)  # each path has probability 1/2


def test_bf16_emissions_compute_in_float32():
    em, g, start, end = _problem(8, scale=4.0)
    em16 = jnp.asarray(em, jnp.bfloat16)
    tags = np.zeros((B, T), int)
    f = lambda e: jnp.sum(crf_log_likelihood(e, tags, g, None, start, end))
    value, grad = jax.value_and_grad(f)(em16)
    ref = f(em16.astype(jnp.float32))  # same values, float32 throughout
    assert value.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(value, ref, rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_constraints_are_honoured_and_give_no_nan():
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    allowed, first, last = allowed_transitions("BIO", labels)
    rng = np.random.default_rng(9)
    k = len(labels)
    em = rng.normal(size=(8, 6, k)).astype(np.float32)
    em[:, :, 2] += 4.0  # emissions push towards I-PER everywhere (invalid after O/LOC)
    em[:, 0, 4] += 6.0  # and towards a sequence that starts with I-LOC
    lengths = np.array([6, 5, 4, 3, 2, 1, 0, 6])
    g = mask_transitions(jnp.asarray(rng.normal(size=(k, k)), jnp.float32), allowed)
    start = mask_transitions(jnp.zeros(k), first)
    tags, _ = viterbi_decode(em, g, None, start, lengths=lengths)
    for row, length in zip(np.asarray(tags), lengths):
        path = row[:length]
        assert length == 0 or first[path[0]]
        assert all(allowed[i, j] for i, j in zip(path[:-1], path[1:]))
    # Training with -inf transitions and a fully padded row: finite loss and gradients.
    gold = np.zeros((8, 6), int)  # all "O": an allowed path
    raw = jnp.asarray(rng.normal(size=(k, k)), jnp.float32)

    def loss(em, raw):
        g = mask_transitions(raw, allowed)
        return -jnp.sum(crf_log_likelihood(em, gold, g, None, start, lengths=lengths))

    value, (d_em, d_raw) = jax.value_and_grad(loss, argnums=(0, 1))(em, raw)
    assert np.isfinite(value) and np.all(np.isfinite(d_em)) and np.all(np.isfinite(d_raw))
    assert np.all(np.asarray(d_raw)[~allowed] == 0)
    assert np.all(np.asarray(d_em)[6] == 0)  # the fully padded row
    # log Z over allowed paths only, against brute force with -inf scores.
    _, _, ref_z, _ = _brute_force(em[1], np.asarray(g), np.asarray(start), np.zeros(k), 5)
    got = crf_log_partition(em[1], g, None, start, lengths=5)
    np.testing.assert_allclose(got, ref_z, rtol=1e-5)


def test_masks_lengths_and_batch_shapes():
    em, g, start, end = _problem(10)
    mask = np.arange(T) < LENGTHS[:, None]
    by_mask = crf_log_partition(em, g, mask, start, end)
    by_len = crf_log_partition(em, g, None, start, end, lengths=LENGTHS)
    np.testing.assert_array_equal(by_mask, by_len)
    assert float(by_mask[3]) == 0.0  # fully padded row
    # Traced masks under jit (not checkable, read as lengths = mask.sum(-1)).
    jitted = jax.jit(lambda e, m: crf_log_partition(e, g, m, start, end))(em, mask)
    np.testing.assert_allclose(jitted, by_mask, rtol=1e-6)
    # Extra leading batch dims and an unbatched [T, K] input.
    grid = crf_log_partition(em.reshape(2, 2, T, K), g, mask.reshape(2, 2, T), start, end)
    np.testing.assert_allclose(grid.reshape(-1), by_mask, rtol=1e-6)
    single = crf_log_partition(em[0], g, None, start, end)
    np.testing.assert_allclose(single, by_mask[0], rtol=1e-6)
    tags, _ = viterbi_decode(em.reshape(2, 2, T, K), g, mask.reshape(2, 2, T), start, end)
    assert tags.shape == (2, 2, T)


def test_bad_inputs_raise_clear_errors():
    em, g, start, end = _problem(11)
    with pytest.raises(ValueError, match="only 0/1"):
        crf_log_partition(em, g, np.full((B, T), 2))
    with pytest.raises(ValueError, match="either mask or lengths"):
        crf_log_partition(em, g, np.ones((B, T)), lengths=LENGTHS)
    with pytest.raises(ValueError, match=r"transitions must have shape \[K, K\]"):
        crf_log_partition(em, g[:2])
    with pytest.raises(ValueError, match="mask must have shape"):
        crf_log_partition(em, g, np.ones((B, T + 1), bool))
    with pytest.raises(ValueError, match="lengths must lie"):
        crf_log_partition(em, g, lengths=np.array([6, 1, 1, 1]))
    with pytest.raises(TypeError, match="tags must be integers"):
        crf_log_likelihood(em, np.zeros((B, T)), g)
    with pytest.raises(ValueError, match=r"tags at valid positions must lie in \[0, K=3\)"):
        crf_log_likelihood(em, np.full((B, T), 3), g)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        crf_log_partition(em, g, algorithm="fast")
    with pytest.raises(TypeError, match="emissions must be a floating array"):
        crf_log_partition(em.astype(int), g)
    with pytest.raises(ValueError, match="n must be a Python int"):
        viterbi_nbest(em, g, 0)


@settings(max_examples=20, deadline=None)
@given(
    lengths=st.lists(st.integers(0, T), min_size=B, max_size=B),
    scale=st.floats(0.1, 30.0),
    seed=st.integers(0, 2**16),
)
def test_invariants(lengths, scale, seed):
    """Viterbi score <= log Z <= Viterbi score + L log K; marginals sum to 1."""
    em, g, start, end = _problem(seed, scale=scale)
    lengths = np.array(lengths)
    log_z = np.asarray(crf_log_partition(em, g, None, start, end, lengths=lengths))
    _, best = viterbi_decode(em, g, None, start, end, lengths=lengths)
    marg = np.asarray(crf_marginals(em, g, None, start, end, lengths=lengths))
    best = np.asarray(best)
    tol = 1e-5 * np.maximum(1.0, np.abs(best))
    assert np.all(best <= log_z + tol)
    assert np.all(log_z <= best + lengths * np.log(K) + tol)
    valid = np.arange(T) < lengths[:, None]
    np.testing.assert_allclose(marg.sum(-1), valid.astype(float), atol=1e-5)


# ---------------------------------------------------------------------- NNX module


def test_crf_module_uses_functions_and_constraints():
    labels = ["O", "B-X", "I-X"]
    constraints = allowed_transitions("BIO", labels)
    crf = CRF(3, rngs=nnx.Rngs(0), allowed=constraints, lr_multiplier=10.0)
    g, start, end = crf.scores()
    assert np.isneginf(g[0, 2]) and np.isneginf(start[2]) and np.isfinite(end).all()
    np.testing.assert_allclose(g[0, 0], 10.0 * crf.transitions[...][0, 0], rtol=1e-6)
    em, _, _, _ = _problem(12)
    tags = np.zeros((B, T), int)
    ll = crf.log_likelihood(em, tags, lengths=LENGTHS)
    np.testing.assert_allclose(
        ll, crf_log_likelihood(em, tags, g, None, start, end, lengths=LENGTHS)
    )
    np.testing.assert_allclose(crf.loss(em, tags, lengths=LENGTHS), -jnp.mean(ll), rtol=1e-6)
    decoded, _ = crf.decode(em, lengths=LENGTHS)
    assert not np.any((np.asarray(decoded)[:, 1:] == 2) & (np.asarray(decoded)[:, :-1] == 0))


@pytest.mark.parametrize("opt_name, power", [("sgd", 2), ("adam", 1)])
def test_lr_multiplier_scales_the_transition_step(opt_name, power):
    """SGD: Δg grows like m²; scale-invariant Adam: like m (see the module docstring)."""
    em, _, _, _ = _problem(13)
    tags = np.random.default_rng(14).integers(0, K, (B, T))

    def first_step(m):
        crf = CRF(K, rngs=nnx.Rngs(0), lr_multiplier=m, start_end=False)
        tx = optax.sgd(1e-3) if opt_name == "sgd" else optax.adam(1e-3, eps=1e-12)
        opt = nnx.Optimizer(crf, tx, wrt=nnx.Param)
        before = crf.scores()[0]
        grads = nnx.grad(lambda model: model.loss(em, tags, lengths=LENGTHS))(crf)
        opt.update(crf, grads)
        return crf.scores()[0] - before

    step1, step4 = first_step(1.0), first_step(4.0)
    np.testing.assert_allclose(step4, 4.0**power * step1, rtol=1e-3, atol=1e-7)
