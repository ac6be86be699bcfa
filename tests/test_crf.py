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
    LinearChainCRF,
    _chain,
    _maxplus,
    _ops,
    _scan,
    _semiring,
    allowed_transitions,
    crf_log_likelihood,
    crf_log_partition,
    crf_marginals,
    crf_sequence_score,
    mask_transitions,
    norm_preservation_ratio,
    orthogonality_error,
    viterbi_decode,
    viterbi_nbest,
)
from tests.chain_reference import Brute

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
    """Paths of one right-padded row, best first, their scores, log Z and marginals."""
    ref = Brute(em, g, start, end, np.arange(len(em)) < length)
    return [tuple(ref.paths[i]) for i in ref.order], ref.sorted_scores, ref.log_z, ref.marg


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


# ------------------------------------------- the chain core and its specialisations


def _holey_inputs(seed=20, b=5, t=6, k=4, scale=2.0):
    em, g, start, end = _problem(seed, b=b, t=t, k=k, scale=scale)
    g[0, 1] = -np.inf
    mask = np.array(
        [[0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [0] * 6, [1, 1, 0, 1, 0, 1]],
        bool,
    )[:b, :t]
    return em, g, start, end, mask


def test_unrolled_viterbi_equals_the_generic_max_semiring():
    em, g, start, end, mask = _holey_inputs()
    em = np.round(em)  # integer scores: many ties, broken towards lower tags by both
    inputs, holes = _chain.validate("t", em, g, mask=mask, start=start, end=end)
    fast = _ops.argmax(inputs, holes=holes, unrolled=True)
    generic = _ops.argmax(inputs, holes=holes, unrolled=False)
    np.testing.assert_array_equal(fast[0], generic[0])
    np.testing.assert_array_equal(fast[1], generic[1])
    best = _ops.top_k(inputs, holes=holes, k=1)
    np.testing.assert_array_equal(best[0][:, 0], generic[0])
    np.testing.assert_array_equal(best[1][:, 0], generic[1])


@pytest.mark.parametrize("k", [7, 48])
def test_unrolled_viterbi_never_reads_padding_and_covers_every_pointer_width(k):
    """The tournament max-plus (odd K: unpaired players; K = UNROLL_MAX_TAGS: the widest
    int8 back-pointers) on a right-padded batch whose padding holds NaN and 1e30, which
    the unrolled loop reads unmasked, equals the generic max semiring (which sees zeros
    there), ties and a forbidden transition included."""
    assert k <= _maxplus.UNROLL_MAX_TAGS
    rng = np.random.default_rng(31 + k)
    b, t = 4, 9
    em = np.round(2 * rng.normal(size=(b, t, k))).astype(np.float32)  # integers: ties
    g = np.round(rng.normal(size=(k, k))).astype(np.float32)
    g[0, 1] = -np.inf
    lengths = np.array([9, 5, 1, 0])
    mask = np.arange(t) < lengths[:, None]
    padded = np.where(mask[..., None], em, np.nan).astype(np.float32)
    padded[1, 6, 0] = 1e30
    inputs, holes = _chain.validate("t", padded, g, mask=mask)
    assert not holes
    fast = _ops.argmax(inputs, holes=False, unrolled=True)
    generic = _ops.argmax(inputs, holes=False, unrolled=False)
    np.testing.assert_array_equal(fast[0], generic[0])
    np.testing.assert_array_equal(fast[1], generic[1])
    assert np.all(np.isfinite(np.asarray(fast[1])))


def test_concrete_mask_stays_concrete_under_jit():
    """A numpy mask closed over by a jitted function is still checked on the host (a
    right-padded one takes the path without the compaction gather, tags are range-checked)
    and gives the eager results; a mask passed as a jit argument is traced."""
    em, g, start, end = _problem(32)
    mask = np.arange(T) < LENGTHS[:, None]
    holey = mask.copy()
    holey[0, 1] = False
    tags = np.random.default_rng(33).integers(0, K, (B, T))

    def holes_in_jit(m, as_argument=False):
        seen = []

        def f(e, m):
            seen.append(_chain.validate("t", e, g, mask=m)[1])
            return e

        if as_argument:
            jax.jit(f)(em, m)
        else:
            jax.jit(lambda e: f(e, m))(em)
        return seen[0]

    assert holes_in_jit(mask) is False
    assert holes_in_jit(holey) is True
    assert holes_in_jit(mask, as_argument=True) is True
    for m in (mask, holey):
        jitted = jax.jit(lambda e, m=m: crf_log_likelihood(e, tags, g, m, start, end))(em)
        eager = crf_log_likelihood(em, tags, g, jnp.asarray(m), start, end)
        np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="tags at valid positions"):
        jax.jit(lambda e: crf_log_likelihood(e, np.full((B, T), K), g, mask))(em)


@pytest.mark.parametrize("semiring", [_semiring.Log(), _semiring.Max(), _semiring.KBest(3)])
def test_associative_scan_equals_sequential_scan(semiring):
    em, g, start, end, mask = _holey_inputs(21)
    c = _chain.compact(_chain.validate("t", em, g, mask=mask, start=start, end=end)[0], True)
    args = (c.x, c.g, c.start, c.end, c.lengths)
    sequential = _scan.sequential_scan(semiring, *args).total
    parallel = _scan.associative_scan(semiring, *args)
    np.testing.assert_allclose(parallel, sequential, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("algorithm", ["rescaled", "parallel"])
def test_probability_space_paths_equal_the_log_space_scan(algorithm):
    """Values and gradients of the specialisations against the generic log-space scan."""
    em, g, start, end, mask = _holey_inputs(22, scale=4.0)

    def value_and_grads(algorithm):
        def f(em, g, start, end):
            return jnp.sum(
                crf_log_partition(em, g, mask, start, end, algorithm=algorithm) * np.arange(5)
            )

        return jax.value_and_grad(f, argnums=(0, 1, 2, 3))(em, g, start, end)

    ref_value, ref_grads = value_and_grads("sequential")
    value, grads = value_and_grads(algorithm)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_extreme_scores_are_exact_for_every_algorithm_and_operation(algorithm):
    """Two disconnected paths, each 150 nats ahead over half the sequence: probability-space
    passes lose one of them in float32 and must fall back to the exact log-space scan."""
    em = np.zeros((1, 20, 2), np.float32)
    em[0, :10, 0] = 15.0
    em[0, 10:, 1] = 15.0
    g = np.array([[0.0, -np.inf], [-np.inf, 0.0]], np.float32)
    log_z, grad = jax.value_and_grad(lambda e: crf_log_partition(e, g, algorithm=algorithm)[0])(em)
    np.testing.assert_allclose(log_z, 150 + np.log(2), rtol=1e-6)
    np.testing.assert_allclose(grad[0], 0.5, atol=1e-5)  # each path has probability 1/2
    dist = LinearChainCRF(em, g)
    np.testing.assert_allclose(dist.entropy(), np.log(2), atol=1e-4)
    np.testing.assert_allclose(dist.transition_marginals()[0, 1:].sum((1, 2)), 1.0, atol=1e-5)
    samples = np.asarray(dist.sample(jax.random.key(0), (400,)))[:, 0]
    assert set(map(tuple, samples)) == {(0,) * 20, (1,) * 20}  # only the two feasible paths
    assert 150 < (samples[:, 0] == 0).sum() < 250


def test_non_finite_inputs_give_honest_results():
    em, g, start, end = _problem(23)
    lengths = np.array([5, 3, 1, 0])
    tags = np.zeros((B, T), int)
    bad = em.copy()
    bad[0, 2, 1] = np.nan  # a valid position of row 0
    bad[2, 3, 0] = np.nan  # a padded position of row 2: no effect
    for algorithm in ALGORITHMS:
        ll = crf_log_likelihood(
            bad, tags, g, None, start, end, lengths=lengths, algorithm=algorithm
        )
        log_z = crf_log_partition(bad, g, None, start, end, lengths=lengths, algorithm=algorithm)
        for out in (ll, log_z):
            assert np.isnan(out[0]) and np.all(np.isfinite(np.asarray(out)[1:]))
    _, score = viterbi_decode(bad, g, None, start, end, lengths=lengths)
    assert np.isnan(score[0]) and np.all(np.isfinite(np.asarray(score)[1:]))
    assert np.all(np.isnan(crf_marginals(bad, g, None, start, end, lengths=lengths)[0]))
    nan_g = g.copy()
    nan_g[1, 1] = np.nan  # enters every row with two or more valid positions
    log_z = np.asarray(crf_log_partition(em, nan_g, None, start, end, lengths=lengths))
    assert np.all(np.isnan(log_z[:2])) and np.all(np.isfinite(log_z[2:]))
    nan_start = start.copy()
    nan_start[0] = np.nan  # enters every row with a valid position
    _, score = viterbi_decode(em, g, None, nan_start, end, lengths=lengths)
    assert np.all(np.isnan(np.asarray(score)[:3])) and score[3] == 0
    # No feasible path: -inf everywhere, zero gradients, in every algorithm.
    forbidden = np.full((K, K), -np.inf, np.float32)
    for algorithm in ALGORITHMS:

        def loss(em, g, algorithm=algorithm):
            ll = crf_log_likelihood(em, tags, g, lengths=lengths, algorithm=algorithm)
            return jnp.sum(jnp.where(lengths >= 2, ll, 0.0)), ll

        (_, ll), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(em, forbidden)
        assert np.all(np.isneginf(np.asarray(ll)[:2])) and np.all(np.isfinite(ll[2:]))
        assert all(np.all(np.asarray(d) == 0) for d in grads)
    tags_v, score = viterbi_decode(em, forbidden, lengths=lengths)
    assert np.all(np.isneginf(np.asarray(score)[:2])) and np.all(np.asarray(tags_v)[:2] == -1)


def test_checkpointed_scan_is_exact_and_stores_less():
    em, g, start, end = _problem(24, b=2, t=1200, k=4)
    tags = np.random.default_rng(25).integers(0, 4, (2, 1200))

    def loss(checkpoint):
        def f(em, g):
            ll = crf_log_likelihood(
                em, tags, g, None, start, end, algorithm="sequential", checkpoint=checkpoint
            )
            return -jnp.sum(ll)

        return f

    args = (jnp.asarray(em), jnp.asarray(g))
    ref = jax.value_and_grad(loss(False), argnums=(0, 1))(*args)
    got = jax.value_and_grad(loss(True), argnums=(0, 1))(*args)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)  # sums over 1,200 steps
    temp = [
        jax.jit(jax.grad(loss(c), argnums=(0, 1))).lower(*args).compile().memory_analysis()
        for c in (False, True)
    ]
    assert temp[1].temp_size_in_bytes < temp[0].temp_size_in_bytes / 2
    with pytest.raises(ValueError, match="checkpoint=True"):
        crf_log_partition(em, g, checkpoint=True)


def _dot_precisions(jaxpr) -> list:
    """Precision of every dot_general in a (closed) jaxpr, sub-jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _dot_precisions(inner)
    return found


def test_every_matrix_product_requests_full_float32():
    """On TPUs and recent GPUs the default float32 matmul uses bf16 passes or TF32."""
    em, g, start, end, mask = _holey_inputs(26)
    other = LinearChainCRF(em[::-1].copy(), g, mask=mask, start=start, end=end)
    tags = np.zeros(mask.shape, int)

    def dist(em, algorithm="rescaled"):
        return LinearChainCRF(em, g, mask=mask, start=start, end=end, algorithm=algorithm)

    operations = [
        lambda e: dist(e).marginals(),
        lambda e: dist(e).transition_marginals(),
        lambda e: dist(e).entropy(),
        lambda e: dist(e).kl_divergence(other),
        lambda e: dist(e).sample(jax.random.key(0)),
        lambda e: dist(e).mbr_decode(),
        lambda e: orthogonality_error(e[0]),
        lambda e: norm_preservation_ratio(e[0, :, :3], e[:, :, 0]),
    ]
    for algorithm in ("rescaled", "parallel"):  # "sequential" has no matrix products
        operations.append(jax.grad(lambda e, a=algorithm: jnp.sum(dist(e, a).log_prob(tags))))
    for op in operations:
        precisions = _dot_precisions(jax.make_jaxpr(op)(em).jaxpr)
        assert precisions, "no matrix product found: the check would be vacuous"
        highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
        assert all(p == highest for p in precisions), precisions
