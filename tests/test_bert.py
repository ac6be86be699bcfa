"""BERT encoder: attention numerics, mask semantics, dtype/dropout behaviour, errors."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from flax_layers.bert import (
    _ACTIVATIONS,
    BertConfig,
    BertModel,
    _batch_chunk,
    attention_weights,
    masked_softmax,
)

CFG = BertConfig(
    vocab_size=31,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=32,
    max_position_embeddings=16,
    initializer_range=0.3,
)


@pytest.fixture(scope="module")
def model() -> BertModel:
    m = BertModel(CFG, rngs=nnx.Rngs(0))
    m.eval()
    return m


@nnx.jit
def _forward(model, ids, seg, mask):
    return model(ids, seg, mask)


# ---------------------------------------------------------------- masked softmax


_jit_masked_softmax = jax.jit(masked_softmax)


def test_gelu_is_the_exact_erf_gelu():
    """``hidden_act="gelu"`` is x Φ(x) (closed form in float64), with finite gradients."""
    gelu = jax.jit(_ACTIVATIONS["gelu"])
    x = np.linspace(-40.0, 40.0, 80_001).astype(np.float32)  # exact at the same inputs
    exact = np.array([v * 0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x.astype(np.float64)])
    got = np.asarray(gelu(jnp.asarray(x)), np.float64)
    np.testing.assert_allclose(got, exact, rtol=1e-6, atol=2e-6)
    grads = jax.grad(lambda v: jnp.sum(gelu(v)))(jnp.asarray(x))
    assert np.isfinite(np.asarray(grads)).all()
    for dtype in (jnp.bfloat16, jnp.float16):
        assert gelu(jnp.ones(3, dtype)).dtype == dtype


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16]),
)
def test_masked_softmax_is_softmax_over_the_allowed_subset(seed, dtype):
    rng = np.random.default_rng(seed)
    n = 6
    z = rng.normal(size=(4, n)) * 5
    mask = rng.random((4, n)) < rng.uniform(0.2, 0.9)
    mask[0] = False  # always one fully masked row
    got = np.asarray(_jit_masked_softmax(jnp.asarray(z, dtype), jnp.asarray(mask)), np.float64)
    for row in range(4):
        allowed = mask[row]
        expected = np.zeros(n)
        if allowed.any():
            zz = np.asarray(jnp.asarray(z[row], dtype), np.float64)[allowed]
            e = np.exp(zz - zz.max())
            expected[allowed] = e / e.sum()
        tol = 1e-6 if dtype == jnp.float32 else 1e-2
        np.testing.assert_allclose(got[row], expected, atol=tol)


def test_masked_softmax_gradients_are_finite_with_masked_rows():
    z = jnp.array([[1.0, 50.0, -3.0], [2.0, 1.0, 0.5]], jnp.bfloat16)
    mask = jnp.array([[True, False, True], [False, False, False]])

    def f(z):
        return jnp.sum(masked_softmax(z, mask) * jnp.arange(3.0))

    g = jax.grad(f)(z)
    assert np.isfinite(np.asarray(g, np.float32)).all()
    assert float(jnp.abs(g[1]).max()) == 0.0  # fully masked row: no gradient
    assert float(g[0, 1]) == 0.0  # masked entry: no gradient


def test_attention_weights_match_jax_dot_product_attention():
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (2, 5, 3, 8))
    k = jax.random.normal(kk, (2, 7, 3, 8))
    v = jax.random.normal(kv, (2, 7, 3, 8))
    mask = jax.random.bernoulli(jax.random.key(1), 0.7, (2, 1, 5, 7)).at[..., 0].set(True)

    @jax.jit
    def both(q, k, v, mask):
        ours = jnp.einsum("bhqk,bkhd->bqhd", attention_weights(q, k, mask), v)
        return ours, jax.nn.dot_product_attention(q, k, v, mask=mask)

    ours, ref = both(q, k, v, mask)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    fully = jax.jit(attention_weights)(q, k, jnp.zeros((1, 1, 5, 7), bool))
    assert float(jnp.abs(fully).max()) == 0.0


# --------------------------------------------------------------- mask semantics


def _ids(batch=2, length=10, seed=0):
    return jax.random.randint(jax.random.key(seed), (batch, length), 1, CFG.vocab_size)


def test_padding_mask_makes_output_independent_of_padding(model):
    ids = _ids()
    seg = jnp.zeros_like(ids)
    n = 6
    pad_mask = (jnp.arange(10) < n)[None, None, None, :]
    a = _forward(model, ids, seg, jnp.broadcast_to(pad_mask, (2, 1, 10, 10)))
    ids2 = ids.at[:, n:].set(_ids(seed=1)[:, n:])  # change only the padded tokens
    b = _forward(model, ids2, seg, jnp.broadcast_to(pad_mask, (2, 1, 10, 10)))
    np.testing.assert_allclose(a[:, :n], b[:, :n], atol=1e-6)
    # same as running the unpadded prefix alone
    c = _forward(model, ids[:, :n], seg[:, :n], jnp.ones((2, 1, n, n), bool))
    np.testing.assert_allclose(a[:, :n], c, atol=1e-5)
    # the 2-D [batch, length] padding-mask shortcut is equivalent
    d = _forward(model, ids, seg, jnp.broadcast_to(jnp.arange(10) < n, (2, 10)))
    np.testing.assert_allclose(a, d, atol=1e-6)


def test_causal_mask_outputs_do_not_see_the_future(model):
    ids = _ids()
    seg = jnp.zeros_like(ids)
    causal = jnp.tril(jnp.ones((10, 10), bool))[None, None]
    a = _forward(model, ids, seg, jnp.broadcast_to(causal, (2, 1, 10, 10)))
    b = _forward(model, ids.at[:, 7:].set(5), seg, jnp.broadcast_to(causal, (2, 1, 10, 10)))
    np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert float(jnp.abs(a[:, 7:] - b[:, 7:]).max()) > 1e-3  # the future does change


def test_unilm_mask_source_ignores_target(model):
    ids = _ids()
    seg = jnp.array([[0] * 4 + [1] * 6] * 2)
    c = jnp.cumsum(seg, axis=1)
    mask = (c[:, None, :] <= c[:, :, None])[:, None]
    a = _forward(model, ids, seg, mask)
    b = _forward(model, ids.at[:, 6:].set(7), seg, mask)
    np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6)  # source + earlier target
    # the source part equals a bidirectional encoding of the source alone
    src = _forward(model, ids[:, :4], seg[:, :4], jnp.ones((2, 1, 4, 4), bool))
    np.testing.assert_allclose(a[:, :4], src, atol=1e-5)


def test_fully_masked_rows_give_finite_outputs_and_gradients(model):
    ids = _ids()
    mask = jnp.ones((2, 1, 10, 10), bool).at[:, :, 3, :].set(False)  # query 3 sees nothing

    def loss(m):
        return jnp.sum(m.mlm_logits(m(ids, None, mask)) ** 2)

    value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
    assert np.isfinite(float(value))
    leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)


def test_batch_chunks_match_the_whole_batch_at_once():
    """Chunked encoding (2 + 2 + a remainder of 1 examples) equals the unchunked pass."""
    cfg = dataclasses.replace(CFG, num_hidden_layers=1, encoder_chunk_bytes=3200)
    assert _batch_chunk(cfg, 5, 10) == 2  # 4 * 10 * max(4 * 10, 32) bytes per example
    assert _batch_chunk(CFG, 5, 10) == 5  # the whole batch fits the default budget
    assert _batch_chunk(dataclasses.replace(cfg, encoder_chunk_bytes=0), 5, 10) == 5
    chunked = BertModel(cfg, rngs=nnx.Rngs(0))
    whole = BertModel(dataclasses.replace(cfg, encoder_chunk_bytes=0), rngs=nnx.Rngs(0))
    chunked.eval()
    whole.eval()
    ids = _ids(batch=5)
    pad = jnp.arange(10)[None, :] < jnp.array([10, 3, 7, 5, 9])[:, None]  # per example
    causal = jnp.tril(jnp.ones((10, 10), bool))[None, None]  # shared by all examples
    graphdef, state = nnx.split(chunked)
    jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(ids, None, pad))(state)
    assert "scan" in str(jaxpr)  # the chunked path is taken

    @nnx.jit
    def outputs(model):
        return model(ids, None, pad), model(ids, None, causal)

    np.testing.assert_allclose(outputs(chunked), outputs(whole), atol=1e-5)


# ------------------------------------------------------------ dtype and dropout


def test_bf16_compute_is_close_to_float32(model):
    ids = _ids()
    m16 = BertModel(dataclasses.replace(CFG, dtype=jnp.bfloat16), rngs=nnx.Rngs(0))
    nnx.update(m16, nnx.state(model, nnx.Param))  # same float32 parameters
    m16.eval()
    h32 = _forward(model, ids, None, None)
    h16 = _forward(m16, ids, None, None)
    assert h16.dtype == jnp.bfloat16
    assert m16.embeddings.word_embeddings.embedding[...].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(h16, np.float32), h32, atol=0.15)
    assert np.isfinite(np.asarray(nnx.jit(BertModel.mlm_logits)(m16, h16), np.float32)).all()


def test_dropout_active_in_train_mode_only():
    m = BertModel(CFG, rngs=nnx.Rngs(0, dropout=1))
    ids = _ids()
    m.train()
    a, b = _forward(m, ids, None, None), _forward(m, ids, None, None)
    assert float(jnp.abs(a - b).max()) > 1e-3  # the dropout key advances between calls
    m.eval()
    np.testing.assert_array_equal(_forward(m, ids, None, None), _forward(m, ids, None, None))


def test_mlm_head_is_tied_to_word_embeddings(model):
    @nnx.jit
    def both(model, ids):
        h = model(ids)
        t = model.mlm_norm(jax.nn.gelu(model.mlm_transform(h), approximate=False))
        expected = t @ model.embeddings.word_embeddings.embedding[...].T + model.mlm_bias[...]
        return model.mlm_logits(h), expected

    logits, expected = both(model, _ids())
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    assert logits.shape == (2, 10, CFG.vocab_size)


# ------------------------------------------------------------------------ errors


def test_bad_inputs_raise(model):
    ids = _ids()
    with pytest.raises(TypeError, match="input_ids"):
        model(ids.astype(jnp.float32))
    with pytest.raises(ValueError, match="input_ids"):
        model(ids[0])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(jnp.ones((1, 17), jnp.int32))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, None, jnp.ones((2, 1, 10, 9), bool))
    with pytest.raises(TypeError, match="boolean"):
        model(ids, None, jnp.ones((2, 1, 10, 10), jnp.float32))
    q = jnp.ones((2, 3, 4, 8))
    with pytest.raises(ValueError, match="attention_weights: mask of shape .* does not broadcast"):
        attention_weights(q, q, jnp.ones((2, 5, 3, 3), bool))
    with pytest.raises(ValueError, match=r"`token_type_ids` must have shape \(2, 10\)"):
        model(ids, jnp.zeros((2, 9), jnp.int32))
    with pytest.raises(ValueError, match="divisible"):
        BertConfig(hidden_size=10, num_attention_heads=3)
    with pytest.raises(ValueError, match="hidden_act"):
        BertConfig(hidden_act="nope")
    with pytest.raises(ValueError, match="dropout"):
        BertConfig(hidden_dropout_prob=1.0)
    with pytest.raises(ValueError, match="encoder_chunk_bytes"):
        BertConfig(encoder_chunk_bytes=-1)
    with pytest.raises(ValueError, match="relative"):
        BertConfig.from_dict({"position_embedding_type": "relative_key"})


# ------------------------------------------------------------ ids and HF keywords


def test_hf_keywords_and_segment_ids_alias_agree(model):
    ids = _ids()
    seg = jnp.zeros_like(ids).at[:, 5:].set(1)
    pad = (jnp.arange(10) < 8)[None, :].repeat(2, axis=0).astype(jnp.int32)  # HF 0/1 mask

    @nnx.jit
    def both(model, ids, seg, pad):
        positions = jnp.broadcast_to(jnp.arange(10), (2, 10))
        return (
            model(ids, seg, pad),
            model(input_ids=ids, token_type_ids=seg, attention_mask=pad, position_ids=positions),
        )

    positional, keywords = both(model, ids, seg, pad)
    np.testing.assert_array_equal(keywords, positional)
    # the alias reaches the same embeddings; the token types do matter
    np.testing.assert_array_equal(model.embed(ids, segment_ids=seg), model.embed(ids, seg))
    assert float(jnp.abs(model.embed(ids, seg) - model.embed(ids)).max()) > 1e-3
    with pytest.raises(ValueError, match="`token_type_ids` or its alias `segment_ids`, not both"):
        model(ids, seg, segment_ids=seg)


@pytest.mark.parametrize(
    "name, bad, bound",
    [
        ("input_ids", CFG.vocab_size, "vocab_size=31"),
        ("input_ids", -1, "vocab_size=31"),
        ("token_type_ids", 2, "type_vocab_size=2"),
        ("token_type_ids", -2, "type_vocab_size=2"),
        ("position_ids", 16, "max_position_embeddings=16"),
    ],
)
def test_concrete_out_of_range_ids_raise(model, name, bad, bound):
    args = {
        "input_ids": np.asarray(_ids()),
        "token_type_ids": np.zeros((2, 10), np.int32),
        "position_ids": np.tile(np.arange(10), (2, 1)),
    }
    args[name] = args[name].copy()
    args[name][1, 7] = bad
    pattern = rf"`{name}` must lie in \[0, {bound}\), got {bad} at index \(1, 7\)"
    with pytest.raises(ValueError, match=pattern):
        model(**args)  # numpy ids
    with pytest.raises(ValueError, match=pattern):
        model(**{k: jnp.asarray(v) for k, v in args.items()})  # committed jax arrays
    with pytest.raises(ValueError, match=pattern.replace("`", "`")):
        model.embeddings(args["input_ids"], args["token_type_ids"], args["position_ids"])


def test_traced_out_of_range_ids_give_nan_for_that_example_only(model):
    ids = np.asarray(_ids(batch=3))
    seg = np.zeros_like(ids)
    clean_h = _forward(model, ids, seg, None)
    for name, value in (("ids", CFG.vocab_size + 5), ("ids", -1), ("seg", 2), ("seg", -1)):
        i, s = ids.copy(), seg.copy()
        (i if name == "ids" else s)[1, 4] = value
        h = np.asarray(_forward(model, i, s, None))
        assert np.isnan(h[1]).all()
        np.testing.assert_array_equal(h[[0, 2]], np.asarray(clean_h)[[0, 2]])
    # The NaN reaches the heads; a loss that leaves the example out (before any shared
    # weight touches it) keeps every gradient finite: the layers never see the NaN.
    i = ids.copy()
    i[0, 0] = -3

    def loss(m, i):
        h = m(i)
        return jnp.sum(m.mlm_logits(h[1:]) ** 2), m.pool(h)

    (value, pooled), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model, i)
    assert np.isfinite(float(value))
    assert np.isnan(np.asarray(pooled[0])).all() and np.isfinite(np.asarray(pooled[1:])).all()
    leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)


def test_masked_softmax_non_finite_allowed_logits_give_nan_rows():
    z = jnp.array([[1.0, jnp.nan, 0.0], [1.0, jnp.inf, 0.0], [1.0, jnp.nan, jnp.inf]])
    mask = jnp.array([[True, True, False], [True, True, True], [True, False, False]])
    got = np.asarray(_jit_masked_softmax(z, mask))
    assert np.isnan(got[0]).all() and np.isnan(got[1]).all()
    e = np.exp([0.0])  # row 2: the NaN and +inf are masked out
    np.testing.assert_allclose(got[2], [e[0] / e[0], 0.0, 0.0])
