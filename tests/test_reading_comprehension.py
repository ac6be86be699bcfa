"""Tests for flax_layers.reading_comprehension: builders, the constrained decoder, aggregation."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flax_layers.reading_comprehension import (
    aggregate_answer_scores,
    build_mlm_reading_batch,
    build_mlm_reading_inputs,
    build_mlm_reading_targets,
    passage_constrained_decode,
)

CLS, SEP, MASK, PAD = 1, 2, 3, 0
SETTINGS = settings(max_examples=30, deadline=None)

# Fixed decoder shapes for the property tests: one jit compile for all examples.
B, L, V, P = 4, 5, 9, 7


# --------------------------------------------------------------------------- builders


def test_inputs_builder_hand_example():
    x = build_mlm_reading_inputs(
        [10, 11],
        [20, 21, 22, 23],
        answer_len=3,
        seq_len=14,
        cls_token_id=CLS,
        sep_token_id=SEP,
        mask_token_id=MASK,
    )
    assert x.input_ids.tolist() == [1, 3, 3, 3, 2, 10, 11, 2, 20, 21, 22, 23, 2, 0]
    assert x.segment_ids.tolist() == [0] * 14  # bert4keras: segment 0 everywhere
    assert x.answer_positions.tolist() == [1, 2, 3]
    assert x.passage_ids.tolist() == [20, 21, 22, 23, 0, 0, 0]  # P = 14 - 3 - 4
    assert int(x.passage_length) == 4 and int(x.passage_offset) == 8
    assert x.input_ids.dtype == np.int32


def test_inputs_builder_truncation_and_segments():
    # Room for the passage: 12 - 2 - 4 - 2 = 4 tokens; the head of the passage is kept.
    x = build_mlm_reading_inputs(
        [10, 11, 12],
        [20, 21, 22, 23, 24, 25],
        answer_len=2,
        seq_len=12,
        cls_token_id=CLS,
        sep_token_id=SEP,
        mask_token_id=MASK,
        pad_token_id=99,
        max_question_len=2,
        passage_segment_id=1,
    )
    assert x.input_ids.tolist() == [1, 3, 3, 2, 10, 11, 2, 20, 21, 22, 23, 2]
    assert x.segment_ids.tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert x.passage_ids.tolist() == [20, 21, 22, 23, 99, 99]
    assert int(x.passage_length) == 4
    with pytest.raises(ValueError, match="no room"):
        build_mlm_reading_inputs(
            [10] * 5,
            [20],
            answer_len=2,
            seq_len=10,
            cls_token_id=CLS,
            sep_token_id=SEP,
            mask_token_id=MASK,
        )
    with pytest.raises(ValueError, match="passage_segment_id"):
        build_mlm_reading_inputs(
            [],
            [],
            answer_len=1,
            seq_len=8,
            cls_token_id=1,
            sep_token_id=2,
            mask_token_id=3,
            passage_segment_id=2,
        )
    with pytest.raises(ValueError, match="question_ids"):
        build_mlm_reading_inputs(
            [[1, 2]], [], answer_len=1, seq_len=8, cls_token_id=1, sep_token_id=2, mask_token_id=3
        )


def test_batch_builder_and_targets():
    b = build_mlm_reading_batch(
        [[10], [10, 11]],
        [[20, 21, 22], []],
        answer_len=2,
        seq_len=10,
        cls_token_id=CLS,
        sep_token_id=SEP,
        mask_token_id=MASK,
    )
    assert b.input_ids.tolist() == [
        [1, 3, 3, 2, 10, 2, 20, 21, 22, 2],
        [1, 3, 3, 2, 10, 11, 2, 2, 0, 0],
    ]
    assert b.passage_length.tolist() == [3, 0] and b.passage_offset.tolist() == [6, 7]
    assert b.passage_ids.shape == (2, 4)
    with pytest.raises(ValueError, match="same length"):
        build_mlm_reading_batch(
            [[1]], [], answer_len=1, seq_len=8, cls_token_id=1, sep_token_id=2, mask_token_id=3
        )
    assert build_mlm_reading_targets([20, 21], answer_len=4, sep_token_id=SEP).tolist() == [
        20,
        21,
        2,
        0,
    ]
    assert build_mlm_reading_targets([], answer_len=3, sep_token_id=SEP).tolist() == [2, 0, 0]
    # Answers are cut to L - 1 tokens so that [SEP] always fits.
    assert build_mlm_reading_targets(
        [5, 6, 7, 8], answer_len=3, sep_token_id=SEP, pad_token_id=9
    ).tolist() == [
        5,
        6,
        2,
    ]


# --------------------------------------------------------------------------- decoder


def _reference_decode(probs, passage, sep):
    """Brute force: enumerate every allowed token per step (bert4keras ``gen_answer``)."""
    answer, chosen = [], []
    for i in range(probs.shape[0]):
        allowed = {sep}
        for s in range(len(passage)):
            if s + i < len(passage) and list(passage[s : s + i]) == answer:
                allowed.add(int(passage[s + i]))
        best = max(sorted(allowed), key=lambda t: probs[i, t])  # ties: smallest id
        chosen.append(float(probs[i, best]))
        if best == sep:
            break
        answer.append(best)
    return answer, float(np.mean(chosen))


def _starts(passage, answer):
    n = len(answer)
    return [s for s in range(len(passage) - n + 1) if n and list(passage[s : s + n]) == answer]


@st.composite
def _decode_case(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    # Small token alphabet (4..7 plus SEP sometimes) to force repeats in the passage.
    lengths = [draw(st.integers(0, P)) for _ in range(B)]
    passages = rng.integers(4, 8, size=(B, P))
    probs = rng.dirichlet(np.full(V, 0.3), size=(B, L)).astype(np.float32)
    return passages, np.array(lengths), probs


@SETTINGS
@given(_decode_case())
def test_decoder_matches_brute_force(case):
    passages, lengths, probs = case
    out = passage_constrained_decode(
        jnp.asarray(probs), jnp.asarray(passages), jnp.asarray(lengths), sep_token_id=SEP
    )
    out_log = passage_constrained_decode(
        jnp.log(jnp.asarray(probs)),
        jnp.asarray(passages),
        jnp.asarray(lengths),
        sep_token_id=SEP,
        log_probs=True,
    )
    for b in range(B):
        passage = passages[b, : lengths[b]]
        answer, score = _reference_decode(probs[b], passage, SEP)
        n = int(out.lengths[b])
        assert np.asarray(out.tokens[b, :n]).tolist() == answer
        assert (np.asarray(out.tokens[b, n:]) == PAD).all()
        np.testing.assert_allclose(float(out.scores[b]), score, rtol=1e-6)
        np.testing.assert_allclose(float(out_log.scores[b]), score, rtol=1e-5)
        assert np.asarray(out_log.tokens[b]).tolist() == np.asarray(out.tokens[b]).tolist()
        # Every answer is a contiguous span of the (used part of the) passage, or empty.
        starts = _starts(passage, answer)
        assert np.flatnonzero(np.asarray(out.start_mask[b])).tolist() == starts
        if answer:
            assert starts, "decoded answer is not a passage span"
            s = int(out.start[b])
            assert s == starts[0] and passage[s : s + n].tolist() == answer
        else:
            assert int(out.start[b]) == -1


def test_decoder_repeated_tokens_hand_example():
    # passage a b a c (ids 4 5 4 6); after "a" both b and c are allowed, after "a c" only SEP.
    passage = jnp.array([[4, 5, 4, 6]])
    p = np.full((1, 4, 8), 0.01, np.float32)
    p[0, 0, 4] = 0.7  # a
    p[0, 1, 6] = 0.6  # c (via the second a)
    p[0, 1, 5] = 0.3
    p[0, 2, 4] = 0.9  # "a c a" is not in the passage -> not allowed
    p[0, 2, SEP] = 0.05
    out = passage_constrained_decode(jnp.asarray(p), passage, sep_token_id=SEP)
    assert out.tokens.tolist() == [[4, 6, 0, 0]] and out.lengths.tolist() == [2]
    assert out.start.tolist() == [2] and out.start_mask.tolist() == [[False, False, True, False]]
    np.testing.assert_allclose(float(out.scores[0]), (0.7 + 0.6 + 0.05) / 3, rtol=1e-6)


def test_decoder_short_and_empty_passages():
    p = np.full((3, 4, 8), 0.01, np.float32)
    p[:, :, 7] = 0.9  # 7 is the favourite everywhere
    p[:, :, 5] = 0.5
    passages = jnp.array([[7, 7, 0, 0], [5, 0, 0, 0], [0, 0, 0, 0]])
    out = passage_constrained_decode(
        jnp.asarray(p), passages, jnp.array([2, 1, 0]), sep_token_id=SEP
    )
    # Row 0: "7 7" then the passage ends: only SEP (0.01) is allowed.
    assert out.tokens.tolist()[0] == [7, 7, 0, 0] and int(out.lengths[0]) == 2
    np.testing.assert_allclose(float(out.scores[0]), (0.9 + 0.9 + 0.01) / 3, rtol=1e-6)
    # Row 1: one-token passage, the pad after it is not usable.
    assert out.tokens.tolist()[1] == [5, 0, 0, 0] and int(out.start[1]) == 0
    # Row 2: empty passage -> empty answer, score of the SEP step.
    assert int(out.lengths[2]) == 0 and int(out.start[2]) == -1
    np.testing.assert_allclose(float(out.scores[2]), 0.01, rtol=1e-6)


def test_decoder_without_sep_uses_all_steps_and_is_jittable():
    passage = jnp.array([[4, 5, 6, 4, 5]])
    p = np.full((1, 3, 7), 0.0, np.float32)
    p[0, 0, 4], p[0, 1, 5], p[0, 2, 6] = 0.5, 0.6, 0.7
    f = jax.jit(lambda pr, ps: passage_constrained_decode(pr, ps, sep_token_id=SEP))
    out = f(jnp.asarray(p), passage)
    assert out.tokens.tolist() == [[4, 5, 6]] and out.lengths.tolist() == [3]
    np.testing.assert_allclose(float(out.scores[0]), 0.6, rtol=1e-6)
    assert out.start_mask.tolist() == [[True, False, False, False, False]]


def test_decoder_neg_inf_log_probs_and_bf16():
    # Every allowed token (SEP included) is -inf, only a disallowed one is finite: the
    # decoder must still pick an allowed token (the smallest allowed id, SEP) and give 0.
    passage = jnp.array([[4, 5]])
    logp = jnp.full((1, 2, 8), -jnp.inf).at[0, :, 7].set(0.0)
    out = passage_constrained_decode(logp, passage, sep_token_id=SEP, log_probs=True)
    assert out.lengths.tolist() == [0] and out.tokens.tolist() == [[PAD, PAD]]
    assert out.scores.tolist() == [0.0]
    p = jnp.full((1, 2, 8), 0.05).at[0, 0, 5].set(0.8).at[0, 1, SEP].set(0.6)
    out = passage_constrained_decode(p.astype(jnp.bfloat16), passage, sep_token_id=SEP)
    assert out.tokens.tolist() == [[5, 0]] and out.scores.dtype == jnp.float32


def test_decoder_errors():
    probs = jnp.ones((2, 3, 5)) / 5
    passage = jnp.zeros((2, 4), jnp.int32)
    with pytest.raises(ValueError, match="probs must have shape"):
        passage_constrained_decode(probs[0], passage, sep_token_id=2)
    with pytest.raises(ValueError, match="passage_ids must have shape"):
        passage_constrained_decode(probs, passage[0], sep_token_id=2)
    with pytest.raises(ValueError, match="batch"):
        passage_constrained_decode(probs, passage[:1], sep_token_id=2)
    with pytest.raises(ValueError, match="sep_token_id"):
        passage_constrained_decode(probs, passage, sep_token_id=5)
    with pytest.raises(ValueError, match="passage_length"):
        passage_constrained_decode(probs, passage, jnp.array([1, 2, 3]), sep_token_id=2)
    with pytest.raises(TypeError, match="passage_ids must be integer"):
        passage_constrained_decode(probs, passage.astype(jnp.float32), sep_token_id=2)


# --------------------------------------------------------------------------- aggregation


def test_aggregation_formula_hand_examples():
    tokens = np.array([[5, 6, 0], [5, 6, 0], [9, 0, 0], [0, 0, 0], [5, 6, 7]])
    lengths = np.array([2, 2, 1, 0, 3])
    scores = np.array([0.8, 0.6, 0.9, 0.99, 0.3])
    agg = aggregate_answer_scores(tokens, lengths, scores)
    expected = {
        (5, 6): (0.8**2 + 0.6**2) / (0.8 + 0.6 + 1),
        (9,): 0.9**2 / (0.9 + 1),
        (5, 6, 7): 0.3**2 / 1.3,
    }
    assert agg.keys() == expected.keys()  # the empty answer is dropped
    for k, v in expected.items():
        assert agg[k] == pytest.approx(v)
    assert list(agg) == [(9,), (5, 6), (5, 6, 7)]  # best first
    assert aggregate_answer_scores(tokens[3:4], lengths[3:4], scores[3:4]) == {}
    with pytest.raises(ValueError, match="expected tokens"):
        aggregate_answer_scores(tokens[0], lengths, scores)


def test_end_to_end_with_bert_if_available():
    """Builder -> tiny random BERT MLM -> slot softmax -> decoder -> aggregation."""
    bert = pytest.importorskip("flax_layers.bert")
    if not hasattr(bert, "BertModel") or not hasattr(bert, "BertConfig"):
        pytest.skip("flax_layers.bert has no BertModel/BertConfig")
    from flax import nnx

    cfg = bert.BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        with_mlm_head=True,
    )
    model = bert.BertModel(cfg, rngs=nnx.Rngs(0))
    model.eval()
    passages = [[10, 11, 12, 11, 13], [11, 12, 14], [20, 21, 22, 23, 24, 25]]
    x = build_mlm_reading_batch(
        [[7, 8]] * 3,
        passages,
        answer_len=4,
        seq_len=16,
        cls_token_id=CLS,
        sep_token_id=SEP,
        mask_token_id=MASK,
    )
    ids = jnp.asarray(x.input_ids)
    hidden = model(ids, jnp.asarray(x.segment_ids), ids != PAD)
    probs = jax.nn.softmax(model.mlm_logits(hidden)[:, 1 : 4 + 1].astype(jnp.float32), axis=-1)
    out = passage_constrained_decode(
        probs, jnp.asarray(x.passage_ids), jnp.asarray(x.passage_length), sep_token_id=SEP
    )
    for b, passage in enumerate(passages):
        answer, score = _reference_decode(
            np.asarray(probs[b]), passage[: int(x.passage_length[b])], SEP
        )
        assert np.asarray(out.tokens[b, : int(out.lengths[b])]).tolist() == answer
        np.testing.assert_allclose(float(out.scores[b]), score, rtol=1e-5)
    agg = aggregate_answer_scores(out.tokens, out.lengths, out.scores)
    assert all(0.0 <= v < 1.0 for v in agg.values())


def test_decoder_out_of_range_passage_ids_and_lengths():
    probs = jnp.full((2, 3, 6), 1 / 6)
    passage = np.array([[3, 4, 5, 3], [4, 5, 3, 0]])
    lengths = np.array([4, 3])
    for value in (6, -2):
        bad = passage.copy()
        bad[1, 2] = value
        with pytest.raises(
            ValueError, match=rf"`passage_ids` must lie in \[0, vocab=6\), got {value} at index"
        ):
            passage_constrained_decode(probs, bad, lengths, sep_token_id=2)
    with pytest.raises(ValueError, match=r"`passage_length` must lie in \[0, P \+ 1=5\), got 5"):
        passage_constrained_decode(probs, passage, np.array([5, 3]), sep_token_id=2)
    with pytest.raises(TypeError, match="passage_length must be integer"):
        passage_constrained_decode(probs, passage, np.array([4.0, 3.0]), sep_token_id=2)
    # traced: that example gets score NaN and the empty answer; the other is unchanged
    ref = passage_constrained_decode(probs, passage, lengths, sep_token_id=2)
    decode = jax.jit(passage_constrained_decode, static_argnames="sep_token_id")
    bad = passage.copy()
    bad[1, 0] = -1
    for args in ((bad, lengths), (passage, np.array([4, -1]))):
        out = decode(probs, *args, sep_token_id=2)
        assert np.isnan(float(out.scores[1])) and int(out.lengths[1]) == 0
        assert int(out.start[1]) == -1 and not np.asarray(out.start_mask[1]).any()
        assert (np.asarray(out.tokens[1]) == 0).all()
        for a, r in zip(out, ref):
            np.testing.assert_allclose(np.asarray(a)[0], np.asarray(r)[0])


def test_decoder_nan_probabilities_are_honest():
    passage = jnp.array([[4, 5, 6]])
    p = jnp.full((1, 2, 8), 0.01).at[0, 0, 5].set(0.9).at[0, 1, 2].set(0.8)
    out = passage_constrained_decode(p.at[0, 0, 5].set(jnp.nan), passage, sep_token_id=2)
    assert np.isnan(float(out.scores[0]))  # NaN at the token it may choose
    clean = passage_constrained_decode(p, passage, sep_token_id=2)
    forbidden = passage_constrained_decode(p.at[0, :, 7].set(jnp.nan), passage, sep_token_id=2)
    for a, r in zip(forbidden, clean):  # NaN at a token outside the passage: ignored
        np.testing.assert_array_equal(a, r)


def test_builders_reject_negative_token_ids():
    kw = dict(answer_len=2, seq_len=12, cls_token_id=1, sep_token_id=2, mask_token_id=3)
    with pytest.raises(
        ValueError, match=r"passage_ids must hold token ids >= 0, got -1 at index 1"
    ):
        build_mlm_reading_inputs([7], [20, -1], **kw)
    with pytest.raises(ValueError, match="mask_token_id must be a token id"):
        build_mlm_reading_inputs([7], [20], **{**kw, "mask_token_id": -3})
    with pytest.raises(ValueError, match="sep_token_id must be a token id"):
        build_mlm_reading_targets([20], answer_len=2, sep_token_id=-1)
    with pytest.raises(ValueError, match="answer_ids must hold token ids >= 0"):
        build_mlm_reading_targets([-5], answer_len=2, sep_token_id=2)


def test_aggregation_keeps_nan_scores_and_sorts_them_last():
    toks = np.array([[5, 6], [9, 0], [5, 6], [4, 0]])
    agg = aggregate_answer_scores(toks, np.array([2, 1, 2, 1]), np.array([0.8, 0.3, np.nan, 0.5]))
    assert list(agg)[-1] == (5, 6) and np.isnan(agg[(5, 6)])
    np.testing.assert_allclose([agg[(4,)], agg[(9,)]], [0.25 / 1.5, 0.09 / 1.3])
    assert list(agg)[:2] == [(4,), (9,)]


def test_deprecated_keyword_names_warn_and_agree():
    """The pre-rename keywords still work, warn, and give identical results."""
    new = dict(answer_len=2, seq_len=12, cls_token_id=1, sep_token_id=2, mask_token_id=3)
    old = dict(answer_len=2, max_len=12, cls_id=1, sep_id=2, mask_id=3, pad_id=0)
    ref = build_mlm_reading_batch([[7], [8, 9]], [[20, 21], [22]], **new)
    for fn in (build_mlm_reading_inputs, build_mlm_reading_batch):
        args = (
            ([7], [20, 21]) if fn is build_mlm_reading_inputs else ([[7], [8, 9]], [[20, 21], [22]])
        )
        with pytest.warns(DeprecationWarning, match=rf"{fn.__name__}: `max_len` is deprecated"):
            got = fn(*args, **old)
        want = fn(*args, **new)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(TypeError, match="both `sep_token_id` and its deprecated alias"):
            fn(*args, **new, sep_id=2)
    with pytest.warns(DeprecationWarning, match="`sep_id` is deprecated, use `sep_token_id`"):
        t = build_mlm_reading_targets([20], answer_len=3, sep_id=2, pad_id=9)
    assert (
        t.tolist()
        == build_mlm_reading_targets([20], answer_len=3, sep_token_id=2, pad_token_id=9).tolist()
    )
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (2, 3, 30)))
    passages, lengths = jnp.asarray(ref.passage_ids), jnp.asarray(ref.passage_length)
    want = passage_constrained_decode(probs, passages, lengths, sep_token_id=2, pad_token_id=5)
    with pytest.warns(DeprecationWarning, match="`passage_lengths` is deprecated"):
        got = passage_constrained_decode(
            probs, passages, passage_lengths=lengths, sep_id=2, pad_id=5
        )
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="both `pad_token_id` and its deprecated alias `pad_id`"):
        passage_constrained_decode(probs, passages, sep_token_id=2, pad_token_id=0, pad_id=0)
    # jax.jit's static_argnames accepts the old and the new name
    for static in ("sep_id", "sep_token_id"):
        decode = jax.jit(passage_constrained_decode, static_argnames=static)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = decode(probs, passages, lengths, **{static: 2})
        assert any(w.category is DeprecationWarning for w in caught) == (static == "sep_id")
        ref = passage_constrained_decode(probs, passages, lengths, sep_token_id=2)
        np.testing.assert_array_equal(out.tokens, ref.tokens)
