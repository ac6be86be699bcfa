"""Tests for the multi-label ZLPR losses (Su Jianlin, https://kexue.fm/archives/7359).

References are plain float64 numpy written here with direct Python-loop sums:
the article's formulas (hard with threshold, soft, sparse a/b form), bert4keras's own
``1e12`` formulation, and optax's sigmoid binary cross-entropy for one class.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from optax_contrib import (
    multilabel_categorical_crossentropy,
    multilabel_predict,
    multilabel_probabilities,
    sparse_multilabel_categorical_crossentropy,
)

# Jitted once per shape: far fewer compilations than op-by-op eager dispatch. The
# eager (concrete) paths are exercised by the error tests and the doctests.
mcce = jax.jit(multilabel_categorical_crossentropy)
smcce = jax.jit(sparse_multilabel_categorical_crossentropy, static_argnames="mask_zero")
MCCE = multilabel_categorical_crossentropy
SMCCE = sparse_multilabel_categorical_crossentropy


# --------------------------------------------------------------------------- references


def ref_soft(s, t, s0=0.0, keep=None):
    """log(e^{s0} + Σ (1-t) e^{s}) + log(e^{-s0} + Σ t e^{-s}), float64 loops.

    Classes with keep == False or s == -inf are skipped; t == 0 / 1 terms are skipped
    in the positive / negative sum (so this is also the exact hard-label form).
    """
    s = np.asarray(s, np.float64)
    t = np.asarray(t, np.float64)
    s0 = np.broadcast_to(np.asarray(s0, np.float64), s.shape)
    out = np.zeros(s.shape[:-1])
    for idx in np.ndindex(*s.shape[:-1]):
        neg = pos = 0.0
        lneg, lpos = [], []
        for i in range(s.shape[-1]):
            j = (*idx, i)
            if (keep is not None and not keep[j]) or s[j] == -np.inf:
                continue
            z = s[j] - s0[j]
            if t[j] < 1:
                lneg.append(math.log1p(-t[j]) + z)
            if t[j] > 0:
                lpos.append(math.log(t[j]) - z)
        # log(1 + Σ e^{l}) computed with a max shift (logits can be large)
        for terms, name in ((lneg, "neg"), (lpos, "pos")):
            m = max([0.0, *terms])
            val = m + math.log(math.exp(-m) + sum(math.exp(x - m) for x in terms))
            if name == "neg":
                neg = val
            else:
                pos = val
        out[idx] = neg + pos
    return out


def ref_bert4keras(s, y):
    """bert4keras ``multilabel_categorical_crossentropy`` transcribed to float64 numpy."""
    s = np.asarray(s, np.float64)
    y = np.asarray(y, np.float64)
    s = (1 - 2 * y) * s
    s_neg = s - y * 1e12
    s_pos = s - (1 - y) * 1e12
    zeros = np.zeros_like(s[..., :1])
    s_neg = np.concatenate([s_neg, zeros], axis=-1)
    s_pos = np.concatenate([s_pos, zeros], axis=-1)

    def lse(a):
        m = a.max(-1, keepdims=True)
        return (m + np.log(np.exp(a - m).sum(-1, keepdims=True)))[..., 0]

    return lse(s_neg) + lse(s_pos)


def ref_sparse_ab(s, ids, mask_zero=False, dtype=np.float64):
    """The article's sparse form: a = lse(s ∪ {0}), b = lse(s_pos), neg = a + log(1 - e^{b-a}).

    Positives are the distinct valid ids; with mask_zero id 0 is padding and class 0
    is dropped. 1 - e^{b-a} is clipped at 1e-7 as bert4keras does.
    """
    s = np.asarray(s, dtype)
    out = np.zeros(s.shape[:-1])
    for idx in np.ndindex(*s.shape[:-1]):
        row = s[idx]
        classes = [i for i in range(len(row)) if not (mask_zero and i == 0)]
        pos_set = sorted({int(i) for i in ids[idx] if not (mask_zero and i == 0)})
        a = dtype(np.logaddexp.reduce(np.array([0.0, *row[classes]], dtype)))
        b = dtype(np.logaddexp.reduce(row[pos_set])) if pos_set else dtype(-np.inf)
        aux = np.clip(1 - np.exp(b - a), dtype(1e-7), 1)
        neg = a + np.log(aux)
        pos = np.logaddexp.reduce(np.array([0.0, *(-row[pos_set])], dtype))
        out[idx] = neg + pos
    return out


RNG = np.random.default_rng(0)


def _data(shape, scale=4.0, p=0.3, seed=0):
    rng = np.random.default_rng(seed)
    s = (rng.standard_normal(shape) * scale).astype(np.float32)
    y = (rng.random(shape) < p).astype(np.int32)
    return s, y


# --------------------------------------------------------------------------- dense / soft


@pytest.mark.parametrize("threshold", [0.0, 0.7, "per_class"])
def test_dense_matches_reference(threshold):
    s, y = _data((3, 4, 7))
    s0 = np.linspace(-1, 1, 7).astype(np.float32) if threshold == "per_class" else threshold
    got = mcce(s, y, threshold=s0)
    assert got.shape == (3, 4) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref_soft(s, y, s0), rtol=1e-5, atol=1e-6)
    if threshold == 0.0:
        np.testing.assert_allclose(got, ref_bert4keras(s, y), rtol=1e-5, atol=1e-6)


def test_threshold_is_a_shift_and_matches_spec_form():
    s, y = _data((5, 6), seed=1)
    s0 = 1.3
    # The article: log(e^{s0} + Σ_neg e^{s}) + log(e^{-s0} + Σ_pos e^{-s}), direct sums
    spec = [
        math.log(math.exp(s0) + sum(math.exp(v) for v, lab in zip(r, lr) if lab == 0))
        + math.log(math.exp(-s0) + sum(math.exp(-v) for v, lab in zip(r, lr) if lab == 1))
        for r, lr in zip(s.astype(np.float64), y)
    ]
    np.testing.assert_allclose(mcce(s, y, threshold=s0), spec, rtol=1e-5)
    np.testing.assert_allclose(mcce(s, y, threshold=s0), mcce(s - s0, y), rtol=1e-6)


def test_soft_matches_reference_and_hard_limit():
    rng = np.random.default_rng(2)
    s = (rng.standard_normal((4, 9)) * 3).astype(np.float32)
    t = rng.random((4, 9)).astype(np.float32)
    t[:, :3] = 0.0
    t[:, 3:5] = 1.0
    np.testing.assert_allclose(mcce(s, t), ref_soft(s, t), rtol=1e-5, atol=1e-6)
    # the article's soft formula with every term present, on strictly interior labels
    ti = np.clip(t, 0.05, 0.95)
    full = np.log1p((ti * np.exp(-s.astype(np.float64))).sum(-1)) + np.log1p(
        ((1 - ti) * np.exp(s.astype(np.float64))).sum(-1)
    )
    np.testing.assert_allclose(mcce(s, ti), full, rtol=1e-5)
    # soft labels approaching 0/1 approach the hard loss continuously
    y = (t > 0.5).astype(np.float32)
    near = np.where(y == 1, 1 - 1e-6, 1e-6).astype(np.float32)
    np.testing.assert_allclose(mcce(s, near), mcce(s, y), rtol=1e-4, atol=1e-4)


def test_label_dtypes_agree():
    s, y = _data((3, 8), seed=3)
    want = ref_soft(s, y)
    for labels in (y, y.astype(bool), y.astype(np.float32), jnp.asarray(y, jnp.bfloat16)):
        np.testing.assert_allclose(mcce(s, labels), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("s", [-100.0, -30.0, -3.0, -0.5, 0.0, 0.5, 3.0, 30.0, 100.0])
def test_one_class_is_sigmoid_bce(s):
    logits = jnp.array([[s], [s]], jnp.float32)
    labels = jnp.array([[1], [0]])
    want = optax.losses.sigmoid_binary_cross_entropy(logits, labels)[:, 0]
    np.testing.assert_allclose(mcce(logits, labels), want, rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(smcce(logits, jnp.array([[0], [0]]), mask_zero=False)[0], want[0])


def test_no_positives_no_classes():
    s = jnp.array([[1.0, -2.0], [-jnp.inf, -jnp.inf]])
    y = jnp.zeros((2, 2))
    np.testing.assert_allclose(mcce(s, y), [math.log1p(math.e + math.exp(-2)), 0.0], rtol=1e-6)
    g = jax.grad(lambda v: mcce(v, y).sum())(s)
    assert np.all(np.isfinite(g)) and np.all(g[1] == 0)


# --------------------------------------------------------------------------- masking


def test_neg_inf_logits_are_removed_with_finite_grads():
    s, y = _data((4, 6), seed=4)
    dead = np.zeros((4, 6), bool)
    dead[0, [1, 4]] = True
    dead[1, :] = True  # every class masked
    dead[2, 0] = True
    y[0, 1] = 1  # a masked class labelled positive is still excluded
    masked = np.where(dead, -np.inf, s).astype(np.float32)
    want = np.array([ref_soft(s[i][~dead[i]][None], y[i][~dead[i]][None])[0] for i in range(4)])
    np.testing.assert_allclose(mcce(masked, y), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mcce(s, y, where=~dead), want, rtol=1e-5, atol=1e-6)
    for fn in (
        lambda v: mcce(v, y).sum(),
        lambda v: mcce(v, y.astype(np.float32) * 0.7).sum(),
        lambda v: smcce(v, np.argsort(-y, axis=-1)[:, :2]).sum(),
    ):
        g = jax.grad(fn)(jnp.asarray(masked))
        assert np.all(np.isfinite(g))
        assert np.all(g[dead] == 0)
    # gradient of the remaining entries equals the gradient with the class removed
    g = jax.grad(lambda v: mcce(v, y).sum())(jnp.asarray(masked))
    g0 = jax.grad(lambda v: mcce(v, y[0][~dead[0]][None]).sum())(jnp.asarray(s[0][~dead[0]][None]))
    np.testing.assert_allclose(g[0][~dead[0]], g0[0], rtol=1e-5)


def test_where_broadcasts_and_equals_column_removal():
    s, y = _data((3, 5), seed=5)
    keep = np.array([True, False, True, True, False])
    want = ref_soft(s[:, keep], y[:, keep])
    np.testing.assert_allclose(mcce(s, y, where=keep), want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- sparse


def test_sparse_matches_spec_ab_formula_and_dense():
    rng = np.random.default_rng(6)
    s = (rng.standard_normal((2, 3, 40)) * 3).astype(np.float32)
    ids = np.stack([rng.permutation(40)[:4] for _ in range(6)]).reshape(2, 3, 4)
    got = smcce(s, ids)
    np.testing.assert_allclose(got, ref_sparse_ab(s, ids), rtol=1e-5, atol=1e-6)
    y = np.zeros(s.shape, np.int32)
    np.put_along_axis(y, ids, 1, axis=-1)
    np.testing.assert_allclose(got, mcce(s, y), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        smcce(s, ids, threshold=0.5), mcce(s, y, threshold=0.5), rtol=1e-6, atol=1e-6
    )


def test_sparse_mask_zero_and_duplicates():
    s, _ = _data((3, 7), seed=7)
    ids = np.array([[3, 5, 0, 0], [2, 2, 6, 0], [0, 0, 0, 0]])
    got = smcce(s, ids, mask_zero=True)
    np.testing.assert_allclose(got, ref_sparse_ab(s, ids, mask_zero=True), rtol=1e-5, atol=1e-6)
    # class 0 is removed entirely: same as dropping column 0
    y = np.zeros((3, 7), np.int32)
    y[0, [3, 5]] = y[1, [2, 6]] = 1
    np.testing.assert_allclose(got, ref_soft(s[:, 1:], y[:, 1:]), rtol=1e-5, atol=1e-6)
    # without mask_zero, duplicates count once and id 0 is an ordinary class
    dup = smcce(s, np.array([[1, 1, 1], [4, 0, 4], [6, 6, 6]]))
    y = np.zeros((3, 7), np.int32)
    y[0, 1] = y[1, [0, 4]] = y[2, 6] = 1
    np.testing.assert_allclose(dup, ref_soft(s, y), rtol=1e-5, atol=1e-6)


def test_sparse_exact_where_ab_formula_cancels():
    # Confident positives: 1 - e^{b-a} underflows in float32 and the a/b formula is
    # clipped (bert4keras); ours stays equal to the exact dense value.
    s = np.array([[30.0, 0.0, 0.5, -1.0, 28.0]], np.float32)
    ids = np.array([[0, 4]])
    exact = ref_soft(s, np.array([[1, 0, 0, 0, 1]]))
    ab32 = ref_sparse_ab(s, ids, dtype=np.float32)
    assert abs(ab32[0] - exact[0]) > 1.0  # the reference formula in float32 fails here
    np.testing.assert_allclose(smcce(s, ids), exact, rtol=1e-5)
    g = jax.grad(lambda v: smcce(v, ids).sum())(jnp.asarray(s))
    g_dense = jax.grad(lambda v: mcce(v, np.array([[1, 0, 0, 0, 1]])).sum())(jnp.asarray(s))
    np.testing.assert_allclose(g, g_dense, rtol=1e-5, atol=1e-12)


def test_sparse_traced_out_of_range_ids_are_ignored():
    s, _ = _data((2, 6), seed=8)
    f = jax.jit(lambda v, i: smcce(v, i))
    got = f(s, jnp.array([[-1, 2, 6], [100, -7, 3]]))
    y = np.zeros((2, 6))
    y[0, 2] = y[1, 3] = 1
    np.testing.assert_allclose(got, ref_soft(s, y), rtol=1e-5)
    # traced labels outside [0, 1] cannot be checked and are clipped (documented)
    y = np.array([[1.5, -0.5, 0, 1, 0, 0], [0, 0, 2, 0, 0, 0]], np.float32)
    np.testing.assert_allclose(mcce(s, y), ref_soft(s, np.clip(y, 0, 1)), rtol=1e-5)


_C = 6


@settings(max_examples=25, deadline=None)
@given(
    s=hnp.arrays(
        np.float32,
        (4, _C),
        elements=st.floats(-25, 25, width=32) | st.sampled_from([-np.inf]),
    ),
    y=hnp.arrays(np.bool_, (4, _C)),
    pad=st.sampled_from(["dup", "zero"]),
    s0=st.sampled_from([0.0, -0.5, 2.0]),
)
def test_dense_soft_sparse_agree(s, y, pad, s0):
    mask_zero = pad == "zero"
    if mask_zero:
        y[:, 0] = False
    # Pad the positive ids to a fixed width: with mask_zero by the padding id 0,
    # otherwise by repeating a positive (duplicates count once); rows without any
    # positive get -1, which traced (under jit) is out of range and ignored.
    ids = np.full((4, _C), -1, np.int32)
    for r in range(4):
        pos = [int(i) for i in np.flatnonzero(y[r])]
        if mask_zero:
            ids[r] = pos + [0] * (_C - len(pos))
        elif pos:
            ids[r] = pos + [pos[0]] * (_C - len(pos))
    keep = np.ones((4, _C), bool)
    if mask_zero:
        keep[:, 0] = False
    want = ref_soft(s, y, s0, keep=keep)
    dense = _jit_dense(s, y.astype(np.int32), s0, keep)
    soft = _jit_dense(s, y.astype(np.float32), s0, keep)
    np.testing.assert_allclose(dense, want, rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(dense, soft)
    sparse = _jit_sparse(s, ids, s0, mask_zero)
    np.testing.assert_allclose(sparse, want, rtol=2e-5, atol=2e-5)


def _jit_dense(s, y, s0, keep):
    return mcce(s, y, threshold=s0, where=keep)


def _jit_sparse(s, ids, s0, mask_zero):
    return smcce(s, ids, threshold=s0, mask_zero=mask_zero)


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_is_finite(dtype):
    s, y = _data((4, 50), scale=30.0, seed=9)  # |s| up to ~100: e^s overflows fp16
    s[0, :5] = -np.inf
    s_lp = jnp.asarray(s, dtype)
    ref = ref_soft(np.asarray(s_lp, np.float32), y)
    for out in (
        mcce(s_lp, y),
        mcce(s_lp, y * 0.6),
        smcce(s_lp, np.argsort(-y, axis=-1)[:, :3]),
        multilabel_probabilities(s_lp),
    ):
        assert out.dtype == dtype and np.all(np.isfinite(np.asarray(out, np.float32)))
    np.testing.assert_allclose(np.asarray(mcce(s_lp, y), np.float32), ref, rtol=1e-2)
    g = jax.grad(lambda v: mcce(v, y).sum().astype(jnp.float32))(s_lp)
    assert g.dtype == dtype and np.all(np.isfinite(np.asarray(g, np.float32)))


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(10)
    s = rng.standard_normal((2, 5)) * 2
    t = rng.random((2, 5))
    t[0, 0], t[1, 1] = 0.0, 1.0
    g = np.asarray(jax.grad(lambda v: mcce(v, t).sum())(jnp.asarray(s, jnp.float32)))
    eps = 1e-5
    fd = np.zeros_like(s)
    for j in np.ndindex(*s.shape):
        d = np.zeros_like(s)
        d[j] = eps
        fd[j] = (ref_soft(s + d, t).sum() - ref_soft(s - d, t).sum()) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-5)


def test_soft_optimum_is_sigmoid_2s():
    t = np.array([[0.05], [0.2], [0.5], [0.8], [0.97]])
    s_star = 0.5 * np.log(t / (1 - t))  # sigmoid(2 s*) = t
    grad = jax.jit(jax.grad(lambda v: mcce(v, t).sum()))
    assert np.all(np.abs(grad(jnp.asarray(s_star, jnp.float32))) < 1e-6)
    assert np.all(grad(jnp.asarray(s_star - 0.1, jnp.float32)) < 0)
    assert np.all(grad(jnp.asarray(s_star + 0.1, jnp.float32)) > 0)
    # minimising numerically (gradient descent from 0) recovers it too
    v = jax.lax.fori_loop(0, 300, lambda _, v: v - 2.0 * grad(v), jnp.zeros((5, 1)))
    np.testing.assert_allclose(multilabel_probabilities(v), t, atol=1e-4)
    np.testing.assert_allclose(multilabel_probabilities(jnp.asarray(s_star)), t, rtol=1e-5)


def test_jit_matches_eager():
    s, y = _data((3, 10), seed=11)
    ids = np.argsort(-y, axis=-1)[:, :3]
    eager_d = multilabel_categorical_crossentropy(s, y)
    eager_s = sparse_multilabel_categorical_crossentropy(s, ids)
    np.testing.assert_allclose(mcce(s, y), eager_d, rtol=1e-6)
    np.testing.assert_allclose(smcce(s, ids), eager_s, rtol=1e-6)
    np.testing.assert_allclose(eager_d, ref_soft(s, y), rtol=1e-5)


def test_predict_and_probabilities():
    s = np.array([[2.0, -1.0, 0.0, -np.inf, 0.3]], np.float32)
    np.testing.assert_array_equal(multilabel_predict(s), s > 0)
    np.testing.assert_array_equal(multilabel_predict(s, 0.25), s > 0.25)
    np.testing.assert_allclose(
        multilabel_probabilities(s), 1 / (1 + np.exp(-2 * s.astype(np.float64))), rtol=1e-6
    )
    np.testing.assert_allclose(
        multilabel_probabilities(s, threshold=0.3), 1 / (1 + np.exp(-2 * (s - 0.3))), rtol=1e-6
    )


# --------------------------------------------------------------------------- errors


def test_errors():
    s = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"`labels` must have the shape of `logits`"):
        MCCE(s, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 1\]"):
        MCCE(s, jnp.full((2, 3), 2.0))
    with pytest.raises(TypeError, match=r"`logits` must be a real floating array"):
        MCCE(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"`logits` must have at least one axis"):
        MCCE(jnp.float32(1.0), 1.0)
    with pytest.raises(TypeError, match=r"`where` must be a boolean array"):
        MCCE(s, jnp.zeros((2, 3)), where=jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"`where` of shape \(4,\) must broadcast"):
        MCCE(s, jnp.zeros((2, 3)), where=jnp.ones(4, bool))
    with pytest.raises(ValueError, match=r"`threshold` of shape \(2,\) must broadcast"):
        MCCE(s, jnp.zeros((2, 3)), threshold=jnp.zeros(2))
    with pytest.raises(TypeError, match=r"`label_ids` must be an integer array"):
        SMCCE(s, jnp.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"`label_ids` must lie in \[0, 3\)"):
        SMCCE(s, jnp.array([[0], [3]]))
    with pytest.raises(ValueError, match=r"`label_ids` must lie in \[0, 3\)"):
        SMCCE(s, np.array([[0], [-1]]))
    with pytest.raises(ValueError, match=r"`label_ids` must have shape \(2,\) \+ \(num_pos"):
        SMCCE(s, jnp.zeros((3, 1), jnp.int32))
    with pytest.raises(ValueError, match=r"`label_ids` must have shape"):
        SMCCE(s, jnp.int32(0))
    # the shape checks also fire at trace time under jit
    with pytest.raises(ValueError, match=r"`labels` must have the shape of `logits`"):
        jax.jit(MCCE)(s, jnp.zeros((3, 2)))


# --------------------------------------------------------------------------- non-finite


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize(
    "logits, labels, loss, grad",
    [
        # +inf on a negative class: the true loss +inf, gradient 1 on that logit
        ([np.inf, 2.0, -1.0], [0, 1, 0], np.inf, [1.0, -_sigmoid(-2.0), 0.0]),
        # two +inf negatives share the gradient (limit of the softmax weights)
        ([np.inf, np.inf, 0.0], [0, 0, 1], np.inf, [0.5, 0.5, -0.5]),
        # soft label < 1 on +inf: its negative weight 0.7 > 0 gives +inf as well
        ([np.inf, 0.0], [0.3, 1.0], np.inf, [1.0, -0.5]),
        # +inf on a positive class: its term log(1 + e^{-inf}) = 0 vanishes
        ([np.inf, -1.0], [1, 0], math.log1p(math.exp(-1.0)), [0.0, _sigmoid(-1.0)]),
        # -inf marks an absent class whatever its label (the masking convention)
        ([-np.inf, 1.0], [1, 1], math.log1p(math.exp(-1.0)), [0.0, -_sigmoid(-1.0)]),
    ],
)
def test_infinite_logits_closed_forms(logits, labels, loss, grad):
    s = jnp.asarray([logits], jnp.float32)
    t = jnp.asarray([labels], jnp.float32)
    value, g = jax.jit(jax.value_and_grad(lambda v: mcce(v, t)[0]))(s)
    np.testing.assert_allclose(float(value), loss, rtol=1e-6)
    np.testing.assert_allclose(g[0], grad, rtol=1e-6, atol=1e-7)
    hard = np.asarray(labels)
    if set(hard.tolist()) <= {0, 1} and hard.sum() == 1:  # the sparse form: one positive id
        ids = jnp.asarray([np.flatnonzero(hard)])
        value_s, g_s = jax.value_and_grad(lambda v: smcce(v, ids)[0])(s)
        np.testing.assert_allclose(float(value_s), loss, rtol=1e-6)
        np.testing.assert_allclose(g_s[0], grad, rtol=1e-6, atol=1e-7)


def test_nan_logits_and_traced_nan_labels_give_nan_for_that_example_only():
    s = np.array([[np.nan, 1.0, -0.5], [0.3, -2.0, 1.5], [1.0, 2.0, np.nan]], np.float32)
    y = np.array([[0, 1, 0], [1, 0, 0], [1, 0, 1]], np.float32)
    want = ref_soft(s[1:2], y[1:2])[0]
    for loss_fn in (
        lambda v: mcce(v, y),
        lambda v: mcce(v, y * 0.8),
        lambda v: smcce(v, jnp.array([[1], [0], [0]])),
        lambda v: mcce(v, y, threshold=0.4),
    ):
        got = np.asarray(loss_fn(jnp.asarray(s)))
        assert np.isnan(got[[0, 2]]).all() and np.isfinite(got[1])
    np.testing.assert_allclose(mcce(s, y)[1], want, rtol=1e-6)
    g = np.asarray(jax.grad(lambda v: mcce(v, y).sum())(jnp.asarray(s)))
    assert np.isnan(g[0]).any() and np.isnan(g[2]).any() and np.isfinite(g[1]).all()
    # a NaN logit in a class excluded by `where` is ignored
    keep = ~np.isnan(s)
    np.testing.assert_allclose(
        np.asarray(mcce(s, y, where=keep))[[0, 2]],
        [ref_soft(s[0:1, 1:], y[0:1, 1:])[0], ref_soft(s[2:, :2], y[2:, :2])[0]],
        rtol=1e-6,
    )
    # traced NaN soft labels: NaN (concrete ones raise, see test_errors)
    t = np.array([[0.5, np.nan, 0.0], [0.2, 0.1, 0.9]], np.float32)
    got = np.asarray(mcce(np.zeros((2, 3), np.float32), t))
    assert np.isnan(got[0]) and np.isfinite(got[1])
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 1\]"):
        MCCE(np.zeros((2, 3), np.float32), t)


def test_half_precision_overflow_is_inf_with_finite_gradient():
    s = np.array([[65504.0, -65504.0], [3.0, -2.0]])
    y = np.array([[0, 1], [0, 1]])
    value32 = mcce(jnp.asarray(s, jnp.float32), y)
    np.testing.assert_allclose(value32[0], 2 * 65504.0, rtol=1e-7)  # true value ~131008
    for dtype in (jnp.float16, jnp.bfloat16):
        value = mcce(jnp.asarray(s, dtype), y)
        assert value.dtype == dtype
        if dtype == jnp.float16:  # beyond the float16 range: +inf, not NaN
            assert np.isposinf(np.asarray(value[0], np.float32))
        np.testing.assert_allclose(
            np.asarray(value[1], np.float32), ref_soft(s[1:], y[1:])[0], rtol=1e-2
        )
        g = jax.grad(lambda v: mcce(v, y)[0].astype(jnp.float32))(jnp.asarray(s, dtype))
        np.testing.assert_array_equal(np.asarray(g[0], np.float32), [1.0, -1.0])


def test_predict_and_probabilities_of_non_finite_scores():
    s = np.array([np.nan, np.inf, -np.inf, 0.5], np.float32)
    np.testing.assert_array_equal(multilabel_predict(s), [False, True, False, True])
    p = np.asarray(multilabel_probabilities(s))
    assert np.isnan(p[0]) and p[1] == 1.0 and p[2] == 0.0
    np.testing.assert_allclose(p[3], _sigmoid(1.0), rtol=1e-6)
