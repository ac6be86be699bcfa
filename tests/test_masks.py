"""Tests for flax_layers.masks: exact small layouts, invariants, causality through models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from flax_layers.masks import (
    bidirectional_mask,
    combine_masks,
    left_to_right_mask,
    mask_to_bias,
    packed_causal_mask,
    packed_position_ids,
    padding_mask,
    padding_mask_from_lengths,
    prefix_lm_mask,
    random_order_mask,
    right_to_left_mask,
    seq2seq_loss,
    unilm_mask,
)

SETTINGS = settings(max_examples=25, deadline=None)


def _np(mask) -> np.ndarray:
    return np.asarray(mask).astype(int)


# --------------------------------------------------------------------------- exact matrices


def test_padding_masks_exact():
    ids = jnp.array([[4, 5, 0, 0], [4, 5, 6, 0]])
    expected = np.array([[1, 1, 0, 0], [1, 1, 1, 0]])
    got = padding_mask(ids)
    assert got.shape == (2, 1, 1, 4) and got.dtype == jnp.bool_
    np.testing.assert_array_equal(_np(got)[:, 0, 0], expected)
    np.testing.assert_array_equal(
        _np(padding_mask(ids, pad_token_id=5))[:, 0, 0], [[1, 0, 1, 1]] * 2
    )
    from_len = padding_mask_from_lengths(jnp.array([2, 3]), 4)
    np.testing.assert_array_equal(_np(from_len)[:, 0, 0], expected)


def test_simple_masks_exact():
    np.testing.assert_array_equal(_np(bidirectional_mask(3)), np.ones((1, 1, 3, 3)))
    ltr = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    rtl = [[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]
    np.testing.assert_array_equal(_np(left_to_right_mask(4))[0, 0], ltr)
    np.testing.assert_array_equal(_np(right_to_left_mask(4))[0, 0], rtl)


def test_unilm_mask_exact_with_padding():
    # [CLS] s1 [SEP] t1 t2 [SEP] PAD, segments 0 0 0 1 1 1 0 (padding segment 0).
    seg = jnp.array([[0, 0, 0, 1, 1, 1, 0]])
    expected = np.array(
        [
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 1, 1],  # the pad key shares c with the last target token ...
            [1, 1, 1, 1, 1, 1, 1],
        ]
    )
    got = unilm_mask(seg)
    assert got.shape == (1, 1, 7, 7)
    np.testing.assert_array_equal(_np(got)[0, 0], expected)
    # ... which the key padding mask removes.
    ids = jnp.array([[101, 7, 102, 8, 9, 102, 0]])
    combined = combine_masks(got, padding_mask(ids))
    expected_padded = expected.copy()
    expected_padded[:, 6] = 0
    np.testing.assert_array_equal(_np(combined)[0, 0], expected_padded)


def test_prefix_lm_and_random_order_exact():
    expected_prefix = np.array(
        [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    )
    got = prefix_lm_mask(jnp.array([3, 0]), 5)
    np.testing.assert_array_equal(_np(got)[0, 0], expected_prefix)
    np.testing.assert_array_equal(_np(got)[1, 0], np.tril(np.ones((5, 5))))
    # Generation order 1, 3, 0, 2: ranks r = (2, 0, 3, 1).
    expected_order = np.array([[1, 1, 0, 1], [0, 1, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]])
    np.testing.assert_array_equal(
        _np(random_order_mask(jnp.array([1, 3, 0, 2])))[0, 0], expected_order
    )


def test_combine_masks_behaviour():
    assert combine_masks(None, None) is None
    a = jnp.array([[[[True, False]]]])
    b = jnp.array([[[[True], [False]]]])
    np.testing.assert_array_equal(_np(combine_masks(a, None, b))[0, 0], [[1, 0], [0, 0]])
    assert combine_masks(a, dtype=jnp.float32).dtype == jnp.float32
    with pytest.raises(ValueError, match="same rank"):
        combine_masks(a, a[0])
    with pytest.raises(ValueError, match="broadcast"):
        combine_masks(jnp.ones((1, 1, 2, 3), bool), jnp.ones((1, 1, 2, 4), bool))


def test_mask_to_bias_finite_in_low_precision():
    mask = left_to_right_mask(4)
    for dtype in (jnp.float16, jnp.bfloat16, jnp.float32):
        bias = mask_to_bias(mask, dtype)
        assert bias.dtype == dtype
        logits = jnp.full((1, 1, 4, 4), -200.0, dtype) + bias
        assert bool(jnp.isfinite(logits).all())
        w = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        np.testing.assert_allclose(
            np.asarray(w)[0, 0], np.tril(np.ones((4, 4))) / np.arange(1, 5)[:, None], atol=1e-6
        )
    with pytest.raises(TypeError, match="floating"):
        mask_to_bias(mask, jnp.int32)


# --------------------------------------------------------------------------- errors


def test_errors():
    with pytest.raises(ValueError, match=r"ids must have rank 2"):
        padding_mask(jnp.array([1, 2, 0]))
    with pytest.raises(TypeError, match="integer"):
        padding_mask(jnp.ones((1, 3)))
    with pytest.raises(ValueError, match="lengths must have rank 1"):
        padding_mask_from_lengths(jnp.array([[1]]), 3)
    with pytest.raises(ValueError, match="seq_len"):
        left_to_right_mask(0)
    with pytest.raises(ValueError, match="segment_ids must have rank 2"):
        unilm_mask(jnp.array([0, 1]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        unilm_mask(jnp.array([[0, 2, 1]]))
    with pytest.raises(ValueError, match=r"0\.\.\.0 1\.\.\.1"):
        unilm_mask(jnp.array([[0, 1, 0, 1]]))
    with pytest.raises(ValueError, match="permutation"):
        random_order_mask(jnp.array([0, 0, 1]))
    with pytest.raises(ValueError, match="permutation"):
        random_order_mask(jnp.array([[0, 1, 2], [0, 1, 3]]))
    with pytest.raises(ValueError, match="order must have rank"):
        random_order_mask(jnp.zeros((1, 1, 3), jnp.int32))
    with pytest.raises(ValueError, match="prefix_length"):
        prefix_lm_mask(jnp.array(2), 4)
    logits = jnp.zeros((2, 4, 5))
    ids = jnp.zeros((2, 4), jnp.int32)
    with pytest.raises(ValueError, match="logits must have shape"):
        seq2seq_loss(logits[0], ids, ids)
    with pytest.raises(ValueError, match="must agree"):
        seq2seq_loss(logits, ids[:, :3], ids[:, :3])
    with pytest.raises(ValueError, match="mask must have shape"):
        seq2seq_loss(logits, ids, ids, mask=ids[:, :2])


def test_traced_inputs_skip_value_checks_and_match():
    seg = jnp.array([[0, 0, 1, 1, 0]])
    order = jnp.array([[2, 0, 1, 4, 3]])
    np.testing.assert_array_equal(jax.jit(unilm_mask)(seg), unilm_mask(seg))
    np.testing.assert_array_equal(jax.jit(random_order_mask)(order), random_order_mask(order))
    jitted = jax.jit(prefix_lm_mask, static_argnums=1)
    np.testing.assert_array_equal(jitted(jnp.array([2]), 5), prefix_lm_mask(jnp.array([2]), 5))


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(st.integers(1, 12))
def test_ltr_is_lower_triangular_rtl_is_transpose(n):
    ltr = _np(left_to_right_mask(n))[0, 0]
    np.testing.assert_array_equal(ltr, np.tril(np.ones((n, n), int)))
    np.testing.assert_array_equal(_np(right_to_left_mask(n))[0, 0], ltr.T)


@st.composite
def _layouts(draw):
    n_src = draw(st.integers(1, 6))
    n_tgt = draw(st.integers(0, 6))
    n_pad = draw(st.integers(0, 3))
    return n_src, n_tgt, n_pad


@SETTINGS
@given(_layouts())
def test_unilm_properties(layout):
    n_src, n_tgt, n_pad = layout
    seg = np.array([0] * n_src + [1] * n_tgt + [0] * n_pad)
    m = _np(unilm_mask(jnp.asarray(seg)[None]))[0, 0]
    src, tgt = slice(0, n_src), slice(n_src, n_src + n_tgt)
    assert m[src, src].all()  # source sees source
    assert not m[src, tgt].any()  # source rows never see the target
    assert m[tgt, src].all()  # target sees the whole source
    np.testing.assert_array_equal(m[tgt, tgt], np.tril(np.ones((n_tgt, n_tgt), int)))
    # On the unpadded part UniLM equals a prefix LM whose prefix is the source.
    n = n_src + n_tgt
    pre = _np(prefix_lm_mask(jnp.array([n_src]), n))[0, 0]
    np.testing.assert_array_equal(m[:n, :n], pre)


@SETTINGS
@given(st.integers(1, 8), st.randoms(use_true_random=False))
def test_random_order_properties(n, rnd):
    np.testing.assert_array_equal(_np(random_order_mask(jnp.arange(n))), _np(left_to_right_mask(n)))
    np.testing.assert_array_equal(
        _np(random_order_mask(jnp.arange(n)[::-1])), _np(right_to_left_mask(n))
    )
    order = list(range(n))
    rnd.shuffle(order)
    m = _np(random_order_mask(jnp.array(order)))[0, 0]
    # Brute force: position order[a] may see order[b] iff b <= a.
    ref = np.zeros((n, n), int)
    for a in range(n):
        for b in range(a + 1):
            ref[order[a], order[b]] = 1
    np.testing.assert_array_equal(m, ref)


@SETTINGS
@given(st.lists(st.integers(0, 6), min_size=1, max_size=4), st.integers(1, 6))
def test_combine_with_padding_matches_numpy(lengths, n):
    lengths = np.minimum(np.array(lengths), n)
    pad = padding_mask_from_lengths(jnp.asarray(lengths), n)
    got = _np(combine_masks(left_to_right_mask(n), pad))
    ref = np.tril(np.ones((n, n), int))[None] * (
        np.arange(n)[None, None, :] < lengths[:, None, None]
    )
    assert got.shape == (len(lengths), 1, n, n)
    np.testing.assert_array_equal(got[:, 0], ref)


# --------------------------------------------------------------------------- seq2seq loss


def _np_seq2seq_loss(logits, ids, seg, mask):
    logits = np.asarray(logits, np.float64)
    b, t, _ = logits.shape
    out = np.zeros(b)
    for i in range(b):
        total, count = 0.0, 0.0
        for j in range(t - 1):
            w = seg[i, j + 1] * (1 if mask is None else mask[i, j + 1])
            if w:
                x = logits[i, j]
                lse = x.max() + np.log(np.exp(x - x.max()).sum())
                total += w * (lse - x[ids[i, j + 1]])
                count += w
        out[i] = total / max(count, 1)
    return out


@SETTINGS
@given(st.lists(_layouts(), min_size=3, max_size=3), st.integers(0, 2**31 - 1))
def test_seq2seq_loss_matches_numpy(layouts, seed):
    t = 15  # fixed shapes (layouts fit in 6 + 6 + 3): one compile for all examples
    rng = np.random.default_rng(seed)
    seg = np.zeros((len(layouts), t), int)
    mask = np.zeros((len(layouts), t), int)
    for i, (n_src, n_tgt, _) in enumerate(layouts):
        seg[i, n_src : n_src + n_tgt] = 1
        mask[i, : n_src + n_tgt] = 1
    ids = rng.integers(0, 7, size=seg.shape)
    logits = rng.normal(size=(*seg.shape, 7)) * 3
    got = seq2seq_loss(
        jnp.asarray(logits, jnp.float32), jnp.asarray(ids), jnp.asarray(seg), jnp.asarray(mask)
    )
    np.testing.assert_allclose(
        np.asarray(got), _np_seq2seq_loss(logits, ids, seg, mask), rtol=1e-5, atol=1e-6
    )
    # Without a padding mask the pads after the target have segment 0, so nothing changes.
    got_nomask = seq2seq_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(ids), jnp.asarray(seg))
    np.testing.assert_allclose(np.asarray(got_nomask), np.asarray(got), rtol=1e-6)


def test_seq2seq_loss_padding_mask_matters_and_optax_agrees():
    optax = pytest.importorskip("optax")
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 6, 5)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, 5, size=(2, 6)))
    seg = jnp.array([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]])  # padding in segment 1
    mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    got = seq2seq_loss(logits, ids, seg, mask)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:])
    w = (seg * mask)[:, 1:]
    ref = (ce * w).sum(-1) / w.sum(-1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6)
    assert not np.allclose(np.asarray(seq2seq_loss(logits, ids, seg))[0], np.asarray(got)[0])


def test_seq2seq_loss_safe_with_neg_inf_and_low_precision():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(2, 5, 6)), jnp.float32)
    ids = jnp.array([[1, 2, 3, 4, 0], [1, 2, 3, 0, 0]])
    seg = jnp.array([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]])
    mask = ids != 0
    # -inf on non-target vocabulary entries everywhere, and whole rows of -inf at positions
    # whose prediction is masked out (t = 3, 4 of row 1 and t = 4 of row 0).
    neg = logits.at[:, :, 5].set(-jnp.inf)
    neg = neg.at[1, 3:].set(-jnp.inf).at[0, 4].set(-jnp.inf)
    val, grad = jax.value_and_grad(lambda x: seq2seq_loss(x, ids, seg, mask).sum())(neg)
    assert np.isfinite(np.asarray(val)) and np.isfinite(np.asarray(grad)).all()
    finite = logits.at[:, :, 5].set(-1e4)
    np.testing.assert_allclose(val, seq2seq_loss(finite, ids, seg, mask).sum(), rtol=1e-5)
    for dtype in (jnp.bfloat16, jnp.float16):
        low = seq2seq_loss(neg.astype(dtype), ids, seg, mask)
        assert low.dtype == jnp.float32 and np.isfinite(np.asarray(low)).all()
        np.testing.assert_allclose(low, seq2seq_loss(finite, ids, seg, mask), rtol=2e-2)


# --------------------------------------------------------------------------- causality in models


class _TinyAttentionStack(nnx.Module):
    """Embedding + 2 masked nnx.MultiHeadAttention layers with residuals."""

    def __init__(self, vocab: int, width: int, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, width, rngs=rngs)
        self.pos = nnx.Embed(32, width, rngs=rngs)
        self.layers = nnx.List(
            [
                nnx.MultiHeadAttention(2, width, decode=False, rngs=rngs, deterministic=True)
                for _ in range(2)
            ]
        )

    def __call__(self, ids, mask):
        x = self.embed(ids) + self.pos(jnp.arange(ids.shape[1]))[None]
        for layer in self.layers:
            x = x + layer(x, mask=mask)
        return x


def _einsum_attention(x, mask):
    """Two rounds of parameter-free attention through jax.nn.dot_product_attention."""
    for _ in range(2):
        q = x[:, :, None, :]  # [B, T, N=1, H]
        x = x + jax.nn.dot_product_attention(q, q, q, mask=mask)[:, :, 0, :]
    return x


def _models():
    model = _TinyAttentionStack(11, 8, nnx.Rngs(0))
    emb = jax.random.normal(jax.random.key(1), (11, 8))
    return {
        "nnx_mha": lambda ids, mask: model(ids, mask),
        "dot_product_attention": lambda ids, mask: _einsum_attention(emb[ids], mask),
    }


@pytest.mark.parametrize("name", ["nnx_mha", "dot_product_attention"])
def test_unilm_causality_through_attention(name):
    f = _models()[name]
    # [CLS] s s [SEP] t t t [SEP] PAD PAD
    ids = jnp.array([[1, 5, 6, 2, 7, 8, 9, 2, 0, 0]])
    seg = jnp.array([[0, 0, 0, 0, 1, 1, 1, 1, 0, 0]])
    mask = combine_masks(unilm_mask(seg), padding_mask(ids))
    base = np.asarray(f(ids, mask))
    n_src, k = 4, 6  # perturb the target token at position 6
    changed = np.asarray(f(ids.at[0, k].set(10), mask))
    np.testing.assert_allclose(changed[0, :k], base[0, :k], atol=1e-6)
    assert not np.allclose(changed[0, k], base[0, k])  # the perturbation is visible
    # Source outputs do not depend on any target token.
    scrambled = ids.at[0, n_src:8].set(jnp.array([3, 3, 3, 3]))
    np.testing.assert_allclose(
        np.asarray(f(scrambled, mask))[0, :n_src], base[0, :n_src], atol=1e-6
    )
    # Padding keys are invisible: changing a pad id leaves every real position unchanged.
    np.testing.assert_allclose(
        np.asarray(f(ids.at[0, 9].set(4), mask))[0, :8], base[0, :8], atol=1e-6
    )
    # And the bidirectional mask does leak the target into the source (the test can fail).
    bi = combine_masks(bidirectional_mask(10), padding_mask(ids))
    assert not np.allclose(
        np.asarray(f(scrambled, bi))[0, :n_src], np.asarray(f(ids, bi))[0, :n_src]
    )


@pytest.mark.parametrize("name", ["nnx_mha", "dot_product_attention"])
def test_random_order_causality_through_attention(name):
    f = _models()[name]
    ids = jnp.array([[3, 4, 5, 6, 7]])
    order = [3, 0, 4, 1, 2]
    mask = random_order_mask(jnp.array(order))
    base = np.asarray(f(ids, mask))
    for step, pos in enumerate(order):
        out = np.asarray(f(ids.at[0, pos].set(9), mask))
        earlier = order[:step]
        np.testing.assert_allclose(out[0, earlier], base[0, earlier], atol=1e-6)
        assert not np.allclose(out[0, pos], base[0, pos])


def test_unilm_causality_through_bert_if_available():
    bert = pytest.importorskip("flax_layers.bert")
    if not hasattr(bert, "BertModel") or not hasattr(bert, "BertConfig"):
        pytest.skip("flax_layers.bert has no BertModel/BertConfig")
    cfg = bert.BertConfig(
        vocab_size=12,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    )
    model = bert.BertModel(cfg, rngs=nnx.Rngs(0))
    model.eval()
    ids = jnp.array([[1, 5, 6, 2, 7, 8, 9, 2, 0, 0]])
    seg = jnp.array([[0, 0, 0, 0, 1, 1, 1, 1, 0, 0]])
    mask = combine_masks(unilm_mask(seg), padding_mask(ids))
    base = np.asarray(model(ids, seg, mask))
    changed = np.asarray(model(ids.at[0, 6].set(11), seg, mask))
    np.testing.assert_allclose(changed[0, :6], base[0, :6], atol=1e-5)
    assert not np.allclose(changed[0, 6], base[0, 6])
    scrambled = ids.at[0, 4:8].set(jnp.array([3, 3, 3, 3]))
    np.testing.assert_allclose(
        np.asarray(model(scrambled, seg, mask))[0, :4], base[0, :4], atol=1e-5
    )


def test_seq2seq_loss_out_of_range_ids_and_flags():
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.normal(size=(3, 5, 6)), jnp.float32)
    ids = np.array([[1, 2, 3, 4, 5], [1, 2, 3, 0, 0], [2, 2, 2, 2, 2]])
    seg = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0], [0, 0, 0, 1, 1]])
    mask = ids != 0
    want = np.asarray(seq2seq_loss(logits, ids, seg, mask))
    # concrete (numpy or jax) values out of range: errors naming argument, range and value
    for bad in (6, -1):
        wrong = ids.copy()
        wrong[1, 2] = bad
        for arr in (wrong, jnp.asarray(wrong)):
            with pytest.raises(
                ValueError, match=rf"`ids` must lie in \[0, vocab=6\), got {bad} at index \(1, 2\)"
            ):
                seq2seq_loss(logits, arr, seg, mask)
    with pytest.raises(ValueError, match=r"`segment_ids` must lie in \[0, 2\), got 2"):
        seq2seq_loss(logits, ids, seg + (seg == 1), mask)
    with pytest.raises(ValueError, match=r"`mask` must lie in \[0, 2\), got 0.5"):
        seq2seq_loss(logits, ids, seg, np.where(mask, 1.0, 0.5))
    with pytest.raises(TypeError, match="`logits` must be floating"):
        seq2seq_loss(jnp.zeros((3, 5, 6), jnp.int32), ids, seg, mask)

    # traced: NaN loss for exactly the examples holding a bad value, no wrap-around
    def put(a, col, value):
        a = np.array(a, dtype=int)
        a[1, col] = value
        return a

    jitted = jax.jit(seq2seq_loss)
    cases = [
        (put(ids, 2, 6), seg, mask),
        (put(ids, 3, -1), seg, mask),
        (ids, put(seg, 0, 3), mask),
        (ids, seg, put(mask, 4, 2)),
    ]
    for arrays in cases:
        got = np.asarray(jitted(logits, *arrays))
        assert np.isnan(got[1]) and not np.isnan(got[[0, 2]]).any()
        np.testing.assert_allclose(got[[0, 2]], want[[0, 2]], rtol=1e-6)
    # the other examples' gradients stay finite and equal to the clean ones
    g_bad = jax.grad(lambda x: jnp.nansum(jitted(x, *cases[0])))(logits)
    g_clean = jax.grad(lambda x: jnp.sum(jitted(x, ids, seg, mask)[jnp.array([0, 2])]))(logits)
    np.testing.assert_allclose(g_bad[jnp.array([0, 2])], g_clean[jnp.array([0, 2])], rtol=1e-6)


def test_seq2seq_loss_nan_logits_count_only_where_weighted():
    logits = np.zeros((2, 4, 3), np.float32)
    ids = np.array([[1, 2, 0, 1], [1, 2, 0, 1]])
    seg = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    logits[0, 2, 1] = np.nan  # predicts ids[0, 3]: a weighted position
    logits[1, 3, 0] = np.nan  # the last position predicts nothing
    logits[1, 0, 2] = np.nan  # predicts ids[1, 1], a source token
    got = np.asarray(seq2seq_loss(logits, ids, seg))
    assert np.isnan(got[0])
    np.testing.assert_allclose(got[1], np.log(3.0), rtol=1e-6)


# --------------------------------------------------------------------------- packed rows


def _brute_packed_mask(e, b):
    """``mask[i, j] = e_i == e_j != 0 and (j <= i or (b_i and b_j))`` by loops."""
    batch, n = e.shape
    out = np.zeros((batch, 1, n, n), bool)
    for r in range(batch):
        for i in range(n):
            for j in range(n):
                same = e[r, i] == e[r, j] != 0
                out[r, 0, i, j] = same and (j <= i or (b[r, i] and b[r, j]))
    return out


def _random_packing(rng, batch, n):
    """Example ids 1, 2, ... in contiguous runs, then zero padding; random prefix flags."""
    e = np.zeros((batch, n), np.int32)
    for r in range(batch):
        t, k = 0, 1
        while t < n - 1 and rng.random() < 0.8:
            length = int(rng.integers(1, n - t + 1))
            e[r, t : t + length] = k
            t, k = t + length, k + 1
    return e, rng.random((batch, n)) < 0.5


@SETTINGS
@given(seed=st.integers(0, 2**16), n=st.integers(1, 9))
def test_packed_causal_mask_matches_brute_force(seed, n):
    rng = np.random.default_rng(seed)
    e, b = _random_packing(rng, 3, n)
    np.testing.assert_array_equal(packed_causal_mask(e, b), _brute_packed_mask(e, b))
    causal = packed_causal_mask(jnp.asarray(e))
    np.testing.assert_array_equal(causal, _brute_packed_mask(e, np.zeros_like(b)))
    # position ids restart per example: brute force by counting
    pos = np.zeros_like(e)
    for r in range(e.shape[0]):
        for t in range(1, n):
            pos[r, t] = pos[r, t - 1] + 1 if e[r, t] == e[r, t - 1] else 0
    np.testing.assert_array_equal(packed_position_ids(e), np.where(e != 0, pos, 0))


# Examples "[CLS] src [SEP] tgt [SEP]" as (ids, segment ids); packed two rows of 12.
_EXAMPLES = [
    ([1, 5, 6, 2, 7, 8, 2], [0, 0, 0, 0, 1, 1, 1]),
    ([1, 9, 2, 4, 2], [0, 0, 0, 1, 1]),
    ([1, 3, 4, 10, 2, 11, 2], [0, 0, 0, 0, 0, 1, 1]),
    ([1, 6, 2, 5, 5, 9, 2], [0, 0, 0, 1, 1, 1, 1]),
]
_ROWS = [[0, 1], [2], [3]]  # example indices packed in each row
_PACKED_LEN = 12


def _pack_examples():
    ids, seg, e = (np.zeros((len(_ROWS), _PACKED_LEN), np.int32) for _ in range(3))
    spans = {}
    for r, members in enumerate(_ROWS):
        t = 0
        for k, x in enumerate(members, start=1):
            tok, sg = _EXAMPLES[x]
            ids[r, t : t + len(tok)], seg[r, t : t + len(tok)], e[r, t : t + len(tok)] = tok, sg, k
            spans[x] = (r, t, t + len(tok))
            t += len(tok)
    return ids, seg, e, spans


def test_packed_unilm_rows_equal_each_example_alone_through_bert():
    """Packed mask + restarting positions + packed loss == every example in its own row."""
    from flax_layers.bert import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=12,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    model = BertModel(cfg, rngs=nnx.Rngs(0))
    model.eval()
    ids, seg, e, spans = _pack_examples()
    mask = packed_causal_mask(e, bidirectional=seg == 0)
    hidden = model(ids, seg, mask, packed_position_ids(e))
    logits = model.mlm_logits(hidden)
    alone_losses = []
    for x, (tok, sg) in enumerate(_EXAMPLES):
        tok, sg = jnp.array([tok]), jnp.array([sg])
        h = model(tok, sg, unilm_mask(sg))
        r, a, b = spans[x]
        np.testing.assert_allclose(hidden[r, a:b], h[0], atol=1e-5, rtol=1e-5)
        alone_losses.append(float(seq2seq_loss(model.mlm_logits(h), tok, sg)[0]))
    # the packed block of the mask is exactly the unpacked UniLM mask
    r, a, b = spans[1]
    np.testing.assert_array_equal(
        mask[r, 0, a:b, a:b], unilm_mask(jnp.array([_EXAMPLES[1][1]]))[0, 0]
    )
    packed = seq2seq_loss(logits, ids, seg, ids != 0, example_ids=e)
    num_examples = int(e.max(axis=1).sum())
    np.testing.assert_allclose(packed.sum() / num_examples, np.mean(alone_losses), rtol=1e-5)
    np.testing.assert_allclose(packed[0], sum(alone_losses[:2]), rtol=1e-5)
    # one example id per row gives the plain formula (the row's token mean)
    one = jnp.where(e != 0, 1, 0)
    plain = seq2seq_loss(logits, ids, seg, ids != 0)
    np.testing.assert_allclose(
        seq2seq_loss(logits, ids, seg, ids != 0, example_ids=one), plain, rtol=1e-6
    )
    assert abs(float(plain[0]) - float(packed[0]) / 2) > 1e-3  # the two averages differ


def test_packed_errors_and_traced_inputs():
    e = jnp.array([[1, 1, 2, 0]])
    with pytest.raises(ValueError, match=r"packed_causal_mask: `example_ids` must have shape"):
        packed_causal_mask(e[0])
    with pytest.raises(TypeError, match=r"`example_ids` must be an integer array"):
        packed_causal_mask(e.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"`example_ids` must be >= 0 .* got -1 at index \(0, 2\)"):
        packed_causal_mask(e.at[0, 2].set(-1))
    with pytest.raises(ValueError, match="`bidirectional` must have the shape"):
        packed_causal_mask(e, jnp.ones((1, 3), bool))
    with pytest.raises(TypeError, match="`bidirectional` must be boolean"):
        packed_causal_mask(e, jnp.ones((1, 4), jnp.int32))
    with pytest.raises(ValueError, match="packed_position_ids: `example_ids` must have shape"):
        packed_position_ids(jnp.ones((1, 2, 3), jnp.int32))
    with pytest.raises(ValueError, match="seq2seq_loss: `example_ids` must have shape"):
        seq2seq_loss(jnp.zeros((1, 4, 3)), e, e, example_ids=e[:, :3])
    got = jax.jit(packed_causal_mask)(e, e == 1)
    np.testing.assert_array_equal(got, packed_causal_mask(e, e == 1))
    np.testing.assert_array_equal(jax.jit(packed_position_ids)(e), [[0, 1, 0, 0]])


def test_deprecated_keyword_names_warn_and_agree():
    ids = jnp.array([[4, 5, 9, 9]])
    with pytest.warns(DeprecationWarning, match="padding_mask: `pad_id` is deprecated"):
        old = padding_mask(ids, pad_id=9)
    np.testing.assert_array_equal(old, padding_mask(ids, pad_token_id=9))
    with pytest.warns(DeprecationWarning, match="`max_len` is deprecated, use `seq_len`"):
        old = padding_mask_from_lengths(jnp.array([2]), max_len=5)
    np.testing.assert_array_equal(old, padding_mask_from_lengths(jnp.array([2]), seq_len=5))
    with pytest.warns(DeprecationWarning, match="`prefix_lengths` is deprecated"):
        old = prefix_lm_mask(prefix_lengths=jnp.array([2]), seq_len=4)
    np.testing.assert_array_equal(old, prefix_lm_mask(jnp.array([2]), 4))
    with pytest.raises(TypeError, match="both `pad_token_id` and its deprecated alias `pad_id`"):
        padding_mask(ids, pad_token_id=9, pad_id=9)
    with pytest.raises(TypeError, match="both `seq_len` and its deprecated alias `max_len`"):
        padding_mask_from_lengths(jnp.array([2]), seq_len=5, max_len=5)
