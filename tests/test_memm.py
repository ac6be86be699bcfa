"""Tests of flax_layers.memm and the MEMM NNX module.

References: per-path probabilities computed with numpy for all K**L paths (and their sum
being 1), the reversal identity backward(x, y, g) = forward(rev x, rev y, gᵀ), finite
differences in float64, and CRF Viterbi for decoding.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from flax_layers import MEMM, memm_log_likelihood, memm_transition_matrix, viterbi_decode

B, T, K = 4, 5, 3
LENGTHS = np.array([5, 3, 1, 0])


def _problem(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    em = (scale * rng.normal(size=(B, T, K))).astype(np.float32)
    g = rng.normal(size=(K, K)).astype(np.float32)
    return em, g


def _log_softmax(v):
    return v - np.logaddexp.reduce(v)


def _reference_log_prob(em, g, path, direction):
    """log P(path) of one sequence under the left-to-right or right-to-left MEMM."""
    n = len(path)
    total = 0.0
    for t in range(n):
        if direction == "forward":
            logits = em[t] + (g[path[t - 1]] if t > 0 else 0.0)
        else:
            logits = em[t] + (g[:, path[t + 1]] if t < n - 1 else 0.0)
        total += _log_softmax(logits.astype(np.float64))[path[t]]
    return total


def _all_paths_batch(em):
    """Every (row, path) pair of the batch as one big batch."""
    rows, tags, lengths = [], [], []
    for b, length in enumerate(LENGTHS):
        for path in itertools.product(range(K), repeat=int(length)):
            rows.append(b)
            tags.append(list(path) + [0] * (T - length))
            lengths.append(length)
    return np.array(rows), em[np.array(rows)], np.array(tags), np.array(lengths)


def test_probabilities_match_brute_force_in_both_directions():
    em, g = _problem()
    g[2, 0] = -np.inf  # a disallowed transition: those paths get probability 0
    rows, batch, tags, lengths = _all_paths_batch(em)
    results = {
        d: np.asarray(memm_log_likelihood(batch, tags, g, lengths=lengths, direction=d))
        for d in ("forward", "backward", "both")
    }
    for d in ("forward", "backward"):
        ref = [_reference_log_prob(em[r], g, tags[i, : lengths[i]], d) for i, r in enumerate(rows)]
        np.testing.assert_allclose(np.exp(results[d]), np.exp(ref), atol=1e-6)
        for b in range(B):  # each direction is a distribution over the K**L paths
            np.testing.assert_allclose(np.exp(results[d][rows == b]).sum(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        results["both"], 0.5 * (results["forward"] + results["backward"]), rtol=1e-6
    )
    assert np.all(results["both"][lengths == 0] == 0.0)


def test_backward_is_forward_on_reversed_sequences_with_transposed_transitions():
    """The right-to-left MEMM reverses each sequence inside its own length."""
    em, g = _problem(1)
    tags = np.random.default_rng(2).integers(0, K, (B, T))
    em_rev, tags_rev = em.copy(), tags.copy()
    for b, length in enumerate(LENGTHS):
        em_rev[b, :length] = em[b, :length][::-1]
        tags_rev[b, :length] = tags[b, :length][::-1]
    backward = memm_log_likelihood(em, tags, g, lengths=LENGTHS, direction="backward")
    forward = memm_log_likelihood(em_rev, tags_rev, g.T, lengths=LENGTHS, direction="forward")
    np.testing.assert_allclose(backward, forward, rtol=1e-6)


def test_low_rank_pair_equals_full_matrix():
    em, _ = _problem(3)
    rng = np.random.default_rng(4)
    left, right = rng.normal(size=(2, K, 2)).astype(np.float32)
    tags = rng.integers(0, K, (B, T))
    full = left @ right.T
    np.testing.assert_allclose(memm_transition_matrix((left, right)), full, rtol=1e-6)
    for d in ("forward", "backward"):
        got = memm_log_likelihood(em, tags, (left, right), lengths=LENGTHS, direction=d)
        want = memm_log_likelihood(em, tags, full, lengths=LENGTHS, direction=d)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("low_rank", [False, True])
def test_gradients_match_finite_differences_float64(low_rank):
    em, g = _problem(5)
    rng = np.random.default_rng(6)
    tags = rng.integers(0, K, (B, T))
    with jax.enable_x64(True):
        em64 = jnp.asarray(em, jnp.float64)
        if low_rank:
            trans = tuple(jnp.asarray(rng.normal(size=(K, 2)), jnp.float64) for _ in range(2))
        else:
            trans = jnp.asarray(g, jnp.float64)

        def f(em, trans):
            ll = memm_log_likelihood(em, tags, trans, lengths=LENGTHS, direction="both")
            return jnp.sum(ll * jnp.array([1.0, -2.0, 0.5, 3.0]))

        assert f(em64, trans).dtype == jnp.float64
        check_grads(f, (em64, trans), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_disallowed_transitions_and_padded_rows_give_finite_gradients():
    em, g = _problem(7, scale=3.0)
    allowed = np.ones((K, K), bool)
    allowed[0, 1] = allowed[2, 2] = False
    tags = np.zeros((B, T), int)  # 0 -> 0 only: an allowed path

    def loss(em, raw):
        g = jnp.where(allowed, raw, -jnp.inf)
        return -jnp.sum(memm_log_likelihood(em, tags, g, lengths=LENGTHS, direction="both"))

    value, (d_em, d_g) = jax.value_and_grad(loss, argnums=(0, 1))(em, g)
    assert np.isfinite(value) and np.all(np.isfinite(d_em)) and np.all(np.isfinite(d_g))
    assert np.all(np.asarray(d_g)[~allowed] == 0) and np.all(np.asarray(d_em)[3] == 0)


def test_bf16_emissions_compute_in_float32():
    em, g = _problem(8, scale=4.0)
    em16 = jnp.asarray(em, jnp.bfloat16)
    tags = np.ones((B, T), int)
    f = lambda e: jnp.sum(memm_log_likelihood(e, tags, g, lengths=LENGTHS, direction="both"))
    value, grad = jax.value_and_grad(f)(em16)
    assert value.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(value, f(em16.astype(jnp.float32)), rtol=1e-6)


def test_bad_inputs_raise_clear_errors():
    em, g = _problem(9)
    tags = np.zeros((B, T), int)
    with pytest.raises(ValueError, match="direction must be"):
        memm_log_likelihood(em, tags, g, direction="left")
    with pytest.raises(ValueError, match=r"low-rank transitions \(L, R\)"):
        memm_log_likelihood(em, tags, (np.ones((K, 2)), np.ones((K, 3))))
    with pytest.raises(ValueError, match="transitions must have shape"):
        memm_log_likelihood(em, tags, np.ones((K, K + 1), np.float32))
    with pytest.raises(ValueError, match="only 0/1"):
        memm_log_likelihood(em, tags, g, np.full((B, T), 3))


@pytest.mark.parametrize("direction", ["forward", "backward", "both"])
def test_masks_with_holes_equal_the_compacted_sequence(direction):
    """A masked position is skipped: the MEMM of the compacted sequence."""
    em, g = _problem(12)
    tags = np.random.default_rng(13).integers(0, K, (B, T))
    mask = np.array([[0, 1, 1, 0, 1], [1, 0, 0, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], bool)
    got = memm_log_likelihood(em, tags, g, mask, direction=direction)
    for b in range(B):
        keep = mask[b]
        if not keep.any():
            ref = 0.0
        else:
            ref = memm_log_likelihood(em[b, keep], tags[b, keep], g, direction=direction)
        np.testing.assert_allclose(got[b], ref, rtol=1e-6, atol=1e-6)
    jitted = jax.jit(lambda m: memm_log_likelihood(em, tags, g, m, direction=direction))
    np.testing.assert_allclose(jitted(mask), got, rtol=1e-6, atol=1e-6)
    # A traced mask without holes takes the uncompacted branch at run time.
    padded = np.arange(T) < LENGTHS[:, None]
    by_lengths = memm_log_likelihood(em, tags, g, lengths=LENGTHS, direction=direction)
    np.testing.assert_allclose(jitted(padded), by_lengths, rtol=1e-6, atol=1e-6)


def test_infeasible_rows_are_minus_inf_with_zero_gradients_and_nan_is_nan():
    em, g = _problem(14)
    tags = np.zeros((B, T), int)
    forbidden = np.full((K, K), -np.inf, np.float32)  # no path of length >= 2 is feasible
    ll = memm_log_likelihood(em, tags, forbidden, lengths=LENGTHS)
    assert np.all(np.isneginf(np.asarray(ll)[LENGTHS >= 2]))
    assert np.all(np.isfinite(np.asarray(ll)[LENGTHS < 2]))
    for direction in ("forward", "both"):
        row0 = lambda e, g, d=direction: memm_log_likelihood(
            e, tags, g, lengths=LENGTHS, direction=d
        )[0]
        d_em, d_g = jax.grad(row0, argnums=(0, 1))(em, forbidden)
        assert np.all(np.asarray(d_em) == 0) and np.all(np.asarray(d_g) == 0)
    bad = em.copy()
    bad[1, 0, 2] = np.nan  # a valid position of row 1
    bad[2, 3, 0] = np.nan  # a padded position of row 2 (length 1)
    ll = np.asarray(memm_log_likelihood(bad, tags, g, lengths=LENGTHS, direction="both"))
    assert np.isnan(ll[1]) and np.all(np.isfinite(ll[[0, 2, 3]]))


@pytest.mark.parametrize("rank", [None, 2])
def test_memm_module(rank):
    em, _ = _problem(10)
    tags = np.random.default_rng(11).integers(0, K, (B, T))
    memm = MEMM(K, rngs=nnx.Rngs(0), rank=rank, lr_multiplier=5.0)
    g = memm.transition_matrix()
    stored = memm.transitions if rank is None else memm.left
    assert np.abs(np.asarray(stored[...])).max() < 0.1  # stores value / m
    if rank is None:
        np.testing.assert_allclose(g, 5.0 * memm.transitions[...], rtol=1e-6)
    ll = memm_log_likelihood(em, tags, g, lengths=LENGTHS, direction="both")
    np.testing.assert_allclose(memm.log_likelihood(em, tags, lengths=LENGTHS), ll, rtol=1e-5)
    loss = memm.loss(em, tags, lengths=LENGTHS, reduction="token_mean")
    np.testing.assert_allclose(loss, -ll.sum() / LENGTHS.sum(), rtol=1e-5)
    decoded, score = memm.decode(em, lengths=LENGTHS)
    ref_tags, ref_score = viterbi_decode(em, g, lengths=LENGTHS)
    np.testing.assert_array_equal(decoded, ref_tags)
    np.testing.assert_allclose(score, ref_score, rtol=1e-6)
    one_way = MEMM(K, rngs=nnx.Rngs(0), rank=rank, bidirectional=False)
    fwd = memm_log_likelihood(em, tags, one_way._transitions(), lengths=LENGTHS)
    np.testing.assert_allclose(one_way.log_likelihood(em, tags, lengths=LENGTHS), fwd)
