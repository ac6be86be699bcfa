"""UniLM generation with a KV cache vs. uncached full-recompute references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flax_layers.bert import BertConfig, BertModel
from flax_layers.generation import (
    unilm_beam_search,
    unilm_decode_step,
    unilm_encode_source,
    unilm_greedy_generate,
    unilm_sample,
)

VOCAB = 23
END = 3
PAD = 0
T_MAX = 6


def _config(**kw) -> BertConfig:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=24,
        initializer_range=0.5,  # peaky distributions: no near-ties between tokens
    )
    base.update(kw)
    return BertConfig(**base)


@pytest.fixture(scope="module")
def model() -> BertModel:
    m = BertModel(_config(), rngs=nnx.Rngs(3))
    m.mlm_bias[...] = jax.random.normal(jax.random.key(1), (VOCAB,))
    m.eval()
    return m


# Right-padded sources "[CLS] src [SEP]" of different lengths (CLS=2, SEP=END=3).
SOURCES = [[2, 5, 9, 11, 7, 3], [2, 13, 3], [2, 6, 17, 3]]


def _padded(sources):
    width = max(map(len, sources))
    return jnp.array([s + [PAD] * (width - len(s)) for s in sources], jnp.int32)


REF_LEN = 16  # every reference sequence is padded to this length: one jit compile


@nnx.jit
def _unilm_forward(model: BertModel, ids, seg, length):
    """Full forward of ``[1, REF_LEN]`` ids under the UniLM mask; log-probs at ``length - 1``."""
    c = jnp.cumsum(seg, axis=-1)
    mask = c[:, None, :] <= c[:, :, None]  # mask[i, j] = c_j <= c_i
    mask = mask & (jnp.arange(REF_LEN) < length)[None, None, :]  # hide the padding keys
    h = model(ids, seg, mask[:, None])
    logits = model.mlm_logits(h[0, length - 1]).astype(jnp.float32)
    return jax.nn.log_softmax(logits, axis=-1)


def _full_logprobs(model: BertModel, source: list[int], target: list[int]) -> np.ndarray:
    """Next-token log-probs by recomputing the whole sequence under the UniLM mask."""
    n = len(source) + len(target)
    ids = np.full((1, REF_LEN), PAD, np.int32)
    seg = np.ones((1, REF_LEN), np.int32)
    ids[0, :n] = source + target
    seg[0, : len(source)] = 0
    return np.asarray(_unilm_forward(model, jnp.asarray(ids), jnp.asarray(seg), n))


def _reference_greedy(model, source, end, t_max):
    out, score = [], 0.0
    for _ in range(t_max):
        logp = _full_logprobs(model, source, out)
        tok = int(np.argmax(logp))
        out.append(tok)
        score += float(logp[tok])
        if tok == end:
            break
    return out, score


def _reference_beam(model, source, topk, end, t_max, events=None):
    """bert4keras AutoRegressiveDecoder.beam_search (min_ends=1), without any cache."""
    events = [] if events is None else events
    output_ids = np.zeros((1, 0), np.int64)
    output_scores = np.zeros(1)
    for _ in range(t_max):
        scores = np.stack([_full_logprobs(model, source, list(o)) for o in output_ids])
        scores = output_scores.reshape((-1, 1)) + scores
        indices = np.argsort(-scores, axis=None, kind="stable")[:topk]
        indices_1 = indices // scores.shape[1]
        indices_2 = (indices % scores.shape[1]).reshape((-1, 1))
        output_ids = np.concatenate([output_ids[indices_1], indices_2], 1)
        output_scores = np.take_along_axis(scores, indices, axis=None)
        is_end = output_ids[:, -1] == end
        best = output_scores.argmax()
        if is_end[best]:
            return list(output_ids[best]), float(output_scores[best])
        flag = ~is_end
        if not flag.all():
            events.append("shrink")  # a non-best beam ended and is dropped
            output_ids, output_scores = output_ids[flag], output_scores[flag]
            topk = int(flag.sum())
    best = output_scores.argmax()
    return list(output_ids[best]), float(output_scores[best])


def _pick_end(model, source) -> int:
    """An end id that the greedy reference emits at step 3 (so generation stops early)."""
    toks, _ = _reference_greedy(model, source, end=-1, t_max=3)
    return toks[2]


def _check(out, refs):
    tokens, lengths, scores = (np.asarray(a) for a in out)
    for b, (ref_tokens, ref_score) in enumerate(refs):
        n = len(ref_tokens)
        assert lengths[b] == n
        np.testing.assert_array_equal(tokens[b, :n], ref_tokens)
        assert (tokens[b, n:] == PAD).all()
        np.testing.assert_allclose(scores[b], ref_score, rtol=1e-4, atol=1e-4)


def test_encode_source_matches_full_forward(model):
    """The first-target-token logits equal those of the UniLM forward of the source."""
    encode = nnx.jit(unilm_encode_source, static_argnames="max_new_tokens")
    logits, cache = encode(model, _padded(SOURCES), max_new_tokens=T_MAX)
    for b, src in enumerate(SOURCES):
        ref = _full_logprobs(model, src, [])
        got = np.asarray(jax.nn.log_softmax(logits[b]))
        np.testing.assert_allclose(got, ref, atol=1e-5)
    assert cache.source_length.tolist() == [len(s) for s in SOURCES]
    # one decode step == recomputing the sequence with one target token
    tok = jnp.argmax(logits, -1).astype(jnp.int32)
    logits2, _ = nnx.jit(unilm_decode_step)(model, tok, 0, cache)
    for b, src in enumerate(SOURCES):
        ref = _full_logprobs(model, src, [int(tok[b])])
        np.testing.assert_allclose(np.asarray(jax.nn.log_softmax(logits2[b])), ref, atol=1e-5)


def test_greedy_cached_equals_full_recompute(model):
    end = _pick_end(model, SOURCES[1])
    refs = [_reference_greedy(model, s, end, T_MAX) for s in SOURCES]
    assert any(len(r[0]) < T_MAX for r in refs)  # the end token is exercised
    out = unilm_greedy_generate(model, _padded(SOURCES), max_new_tokens=T_MAX, end_token_id=end)
    _check(out, refs)


def test_beam_search_equals_uncached_bert4keras_reference(model):
    # an end id for which some non-best beam ends (the beam shrinks) and some
    # sequence stops early, so every branch of the algorithm is exercised
    candidates = [t for s in SOURCES for t in _reference_greedy(model, s, -1, 3)[0]]
    for end in dict.fromkeys(candidates):
        events = []
        refs = [_reference_beam(model, s, 3, end, T_MAX, events) for s in SOURCES]
        if events and any(len(r[0]) < T_MAX for r in refs):
            break
    else:
        pytest.fail("no end id exercises the shrinking beam; change the model seed")
    out = unilm_beam_search(
        model, _padded(SOURCES), beam_size=3, max_new_tokens=T_MAX, end_token_id=end
    )
    _check(out, refs)
    # beam search never scores below greedy (it explores a superset)
    greedy = unilm_greedy_generate(model, _padded(SOURCES), max_new_tokens=T_MAX, end_token_id=end)
    finished = np.asarray(out.tokens)[np.arange(len(SOURCES)), np.asarray(out.lengths) - 1] == end
    greedy_finished = (
        np.asarray(greedy.tokens)[np.arange(len(SOURCES)), np.asarray(greedy.lengths) - 1] == end
    )
    both = finished & greedy_finished
    assert (np.asarray(out.scores)[both] >= np.asarray(greedy.scores)[both] - 1e-5).all()


def test_beam_size_one_is_greedy(model):
    end = _pick_end(model, SOURCES[2])
    g = unilm_greedy_generate(model, _padded(SOURCES), max_new_tokens=T_MAX, end_token_id=end)
    b = unilm_beam_search(
        model, _padded(SOURCES), beam_size=1, max_new_tokens=T_MAX, end_token_id=end
    )
    np.testing.assert_array_equal(b.tokens, g.tokens)
    np.testing.assert_array_equal(b.lengths, g.lengths)
    np.testing.assert_allclose(b.scores, g.scores, atol=1e-5)


def test_generation_ignores_train_mode_dropout(model):
    ref = unilm_greedy_generate(model, _padded(SOURCES), max_new_tokens=T_MAX, end_token_id=END)
    model.train()
    try:
        got = unilm_greedy_generate(model, _padded(SOURCES), max_new_tokens=T_MAX, end_token_id=END)
        assert model.embeddings.dropout.deterministic is False  # caller's model untouched
    finally:
        model.eval()
    np.testing.assert_array_equal(got.tokens, ref.tokens)
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-6)


def test_bf16_generation_is_finite():
    m = BertModel(_config(dtype=jnp.bfloat16), rngs=nnx.Rngs(3))
    out = unilm_beam_search(
        m, _padded(SOURCES), beam_size=2, max_new_tokens=T_MAX, end_token_id=END
    )
    assert np.isfinite(np.asarray(out.scores)).all()
    assert ((np.asarray(out.tokens) >= 0) & (np.asarray(out.tokens) < VOCAB)).all()


def test_bad_arguments(model):
    src = _padded(SOURCES)
    with pytest.raises(ValueError, match="beam_size"):
        unilm_beam_search(model, src, beam_size=VOCAB + 1, max_new_tokens=2, end_token_id=END)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        unilm_greedy_generate(model, src, max_new_tokens=100, end_token_id=END)
    with pytest.raises(ValueError, match="end_token_id"):
        unilm_greedy_generate(model, src, max_new_tokens=2, end_token_id=VOCAB)
    with pytest.raises(ValueError, match="source_ids"):
        unilm_greedy_generate(model, src[0], max_new_tokens=2, end_token_id=END)
    with pytest.raises(ValueError, match="max_new_tokens"):
        unilm_greedy_generate(model, src, max_new_tokens=0, end_token_id=END)
    headless = BertModel(_config(with_mlm_head=False), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="MLM head"):
        unilm_greedy_generate(headless, src, max_new_tokens=2, end_token_id=END)


def test_out_of_range_ids_raise_when_concrete(model):
    src = np.array(_padded(SOURCES))
    for value in (VOCAB, -1):
        bad = src.copy()
        bad[2, 1] = value
        pattern = (
            rf"`source_ids` must lie in \[0, vocab_size={VOCAB}\), got {value} at index \(2, 1\)"
        )
        with pytest.raises(ValueError, match="unilm_greedy_generate: " + pattern):
            unilm_greedy_generate(model, bad, max_new_tokens=2, end_token_id=END)
        with pytest.raises(ValueError, match="unilm_beam_search: " + pattern):
            unilm_beam_search(model, bad, beam_size=2, max_new_tokens=2, end_token_id=END)
        with pytest.raises(ValueError, match="unilm_encode_source: " + pattern):
            unilm_encode_source(model, jnp.asarray(bad), max_new_tokens=2)
    _, cache = unilm_encode_source(model, src, max_new_tokens=2)
    with pytest.raises(ValueError, match=rf"`token_ids` must lie in \[0, vocab_size={VOCAB}\)"):
        unilm_decode_step(model, jnp.array([1, VOCAB, 2]), 0, cache)


def test_traced_out_of_range_source_gives_nan_logits_for_that_example(model):
    src = np.array(_padded(SOURCES))
    bad = src.copy()
    bad[1, 1] = VOCAB + 3
    encode = nnx.jit(unilm_encode_source, static_argnames="max_new_tokens")
    clean, _ = encode(model, src, max_new_tokens=2)
    logits, cache = encode(model, bad, max_new_tokens=2)
    assert np.isnan(np.asarray(logits[1])).all()
    np.testing.assert_array_equal(np.asarray(logits)[[0, 2]], np.asarray(clean)[[0, 2]])
    step = nnx.jit(unilm_decode_step)
    out, _ = step(model, jnp.array([4, 5, VOCAB]), 0, cache)
    assert np.isnan(np.asarray(out[1:])).all() and np.isfinite(np.asarray(out[0])).all()


# --------------------------------------------------------------------------- sampling


def _reference_sampling_probs(logits, temperature, top_k=None, top_p=None, forbid=None):
    """bert4keras ``random_sample`` filtering, transcribed in float64 numpy."""
    z = np.asarray(logits, np.float64) / temperature
    if forbid is not None:
        z[forbid] = -np.inf
    probas = np.exp(z - z.max())
    probas /= probas.sum()
    order = np.argsort(-probas, kind="stable")
    if top_k is not None:
        probas[order[top_k:]] = 0
        probas /= probas.sum()
    if top_p is not None:
        order = np.argsort(-probas, kind="stable")
        cum = np.cumsum(probas[order])
        assert np.min(np.abs(cum - top_p)) > 1e-4, "top_p too close to a cumulative sum"
        flag = np.roll(cum >= top_p, 1)
        flag[0] = False
        probas[order[flag]] = 0
        probas /= probas.sum()
    return probas


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.5, 6, None), (2.0, None, 0.75), (4.0, 8, 0.7), (1.0, None, None)],
)
def test_first_sampled_token_follows_the_filtered_distribution(model, temperature, top_k, top_p):
    """Chi-square test of 2000 first-step draws (one key per row) at a fixed seed."""
    scipy_stats = pytest.importorskip("scipy.stats")
    n = 2000
    src = jnp.tile(jnp.array([SOURCES[0]], jnp.int32), (n, 1))
    logits, _ = unilm_encode_source(model, src[:1], max_new_tokens=1)
    probs = _reference_sampling_probs(logits[0], temperature, top_k, top_p)
    out = unilm_sample(
        model,
        src,
        jax.random.key(7),
        max_new_tokens=1,
        end_token_id=END,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
    )
    counts = np.bincount(np.asarray(out.tokens[:, 0]), minlength=VOCAB)
    kept = probs > 0
    assert counts[~kept].sum() == 0  # filtered-out tokens are never drawn
    assert kept.sum() >= 3  # the test has something to test
    _, p_value = scipy_stats.chisquare(counts[kept], n * probs[kept])
    assert p_value > 1e-3
    # the test can fail: the unfiltered softmax(logits / T) is rejected when filtering
    if top_k is not None or top_p is not None:
        raw = _reference_sampling_probs(logits[0], temperature)
        _, p_raw = scipy_stats.chisquare(counts, n * raw / raw.sum())
        assert p_raw < 1e-6


def test_top_k_one_and_zero_temperature_are_greedy(model):
    src = _padded(SOURCES)
    kw = dict(max_new_tokens=T_MAX, end_token_id=_pick_end(model, SOURCES[1]))
    greedy = unilm_greedy_generate(model, src, **kw)
    for extra in (
        dict(top_k=1, temperature=3.0),
        dict(temperature=0.0, top_p=0.5),
        dict(temperature=1e-3),  # the T -> 0 limit, reached by sampling
    ):
        out = unilm_sample(model, src, jax.random.key(3), **kw, **extra)
        np.testing.assert_array_equal(out.tokens, greedy.tokens, err_msg=str(extra))
        np.testing.assert_array_equal(out.lengths, greedy.lengths)
        np.testing.assert_allclose(out.scores, greedy.scores, atol=1e-5)


def test_batched_equals_one_at_a_time(model):
    """Right-padded batches give each example's own result (same keys for sampling).

    Each example alone is padded to the batch width (one compile per decoder); its
    padding differs from the batch's, the other examples are gone.
    """
    end = _pick_end(model, SOURCES[1])
    kw = dict(max_new_tokens=T_MAX, end_token_id=end)
    keys = jax.random.split(jax.random.key(11), len(SOURCES))
    decoders = {
        "greedy": lambda src, k: unilm_greedy_generate(model, src, **kw),
        "beam": lambda src, k: unilm_beam_search(model, src, beam_size=3, **kw),
        "sample": lambda src, k: unilm_sample(model, src, k, temperature=2.0, top_p=0.9, **kw),
    }
    for name, decode in decoders.items():
        batched = decode(_padded(SOURCES), keys)
        for b in range(len(SOURCES)):
            alone = decode(_padded(SOURCES)[b : b + 1], keys[b : b + 1])
            np.testing.assert_array_equal(batched.tokens[b], alone.tokens[0], err_msg=name)
            assert int(batched.lengths[b]) == int(alone.lengths[0])
            np.testing.assert_allclose(batched.scores[b], alone.scores[0], atol=1e-5)
    # unpadded, for the shortest source: the same draw
    alone = decoders["sample"](jnp.array([SOURCES[1]], jnp.int32), keys[1:2])
    np.testing.assert_array_equal(
        alone.tokens[0], decoders["sample"](_padded(SOURCES), keys).tokens[1]
    )
    # sampling does draw different sequences for different keys
    draws = {
        tuple(np.asarray(decoders["sample"](_padded(SOURCES), k).tokens[0]).tolist())
        for k in jax.random.split(jax.random.key(0), 8)
    }
    assert len(draws) > 1


def test_min_new_tokens_forbids_the_end_token(model):
    source = SOURCES[2]
    end = _reference_greedy(model, source, -1, 1)[0][0]  # greedy would end at once
    t_min = 3
    out = unilm_sample(
        model,
        jnp.array([source], jnp.int32),
        jax.random.key(0),
        max_new_tokens=T_MAX,
        end_token_id=end,
        top_k=1,
        min_new_tokens=t_min,
    )
    # reference: argmax with the end token removed for the first t_min steps
    ref, score = [], 0.0
    for t in range(T_MAX):
        logp = _full_logprobs(model, source, ref)
        masked = logp.copy()
        if t < t_min:
            masked[end] = -np.inf
        tok = int(np.argmax(masked))
        ref.append(tok)
        score += float(logp[tok])
        if tok == end:
            break
    assert len(ref) > t_min or ref[-1] != end
    _check(out, [(ref, score)])
    sampled = unilm_sample(
        model,
        jnp.tile(jnp.array([source], jnp.int32), (64, 1)),
        jax.random.key(1),
        max_new_tokens=T_MAX,
        end_token_id=end,
        temperature=3.0,
        min_new_tokens=t_min,
    )
    assert (np.asarray(sampled.tokens[:, :t_min]) != end).all()
    assert (np.asarray(sampled.lengths) > t_min).all()


def test_sample_bad_arguments(model):
    src = _padded(SOURCES)
    key = jax.random.key(0)
    kw = dict(max_new_tokens=3, end_token_id=END)
    cases = [
        (ValueError, "temperature must be finite and >= 0", dict(temperature=-1.0)),
        (ValueError, "temperature", dict(temperature=float("nan"))),
        (TypeError, "temperature must be a Python number", dict(temperature=jnp.float32(1))),
        (ValueError, rf"top_k must be in \[1, vocab_size={VOCAB}\]", dict(top_k=0)),
        (ValueError, "top_k", dict(top_k=VOCAB + 1)),
        (TypeError, "top_k must be an int", dict(top_k=2.0)),
        (ValueError, r"top_p must be in \(0, 1\]", dict(top_p=0.0)),
        (ValueError, "top_p", dict(top_p=1.5)),
        (ValueError, r"min_new_tokens must be in \[0, max_new_tokens=3\]", dict(min_new_tokens=4)),
        (ValueError, "min_new_tokens", dict(min_new_tokens=-1)),
        (TypeError, "min_new_tokens must be an int", dict(min_new_tokens=1.0)),
    ]
    for error, pattern, extra in cases:
        with pytest.raises(error, match="unilm_sample: " + pattern):
            unilm_sample(model, src, key, **kw, **extra)
    with pytest.raises(ValueError, match=r"`key` must be one PRNG key or \[batch\]"):
        unilm_sample(model, src, jax.random.split(key, 2), **kw)
    with pytest.raises(TypeError, match="`key` must be a PRNG key"):
        unilm_sample(model, src, jnp.zeros(2, jnp.float32), **kw)
    with pytest.raises(ValueError, match="end_token_id"):
        unilm_sample(model, src, key, max_new_tokens=3, end_token_id=VOCAB)
    bad = np.array(src)
    bad[2, 1] = VOCAB
    with pytest.raises(ValueError, match=r"unilm_sample: `source_ids` must lie in \[0, vocab_size"):
        unilm_sample(model, bad, key, **kw)
    # legacy uint32 keys work and equal the wrapped typed key
    legacy = unilm_sample(model, src, jax.random.PRNGKey(5), **kw)
    typed = unilm_sample(model, src, jax.random.wrap_key_data(jax.random.PRNGKey(5)), **kw)
    np.testing.assert_array_equal(legacy.tokens, typed.tokens)


def test_traced_out_of_range_source_is_nan_for_every_decoder(model):
    """Under jit, the example with a bad id gets NaN score, length 0, only padding."""
    src = np.array(_padded(SOURCES))
    bad = src.copy()
    bad[1, 1] = VOCAB + 3
    kw = dict(max_new_tokens=T_MAX, end_token_id=END)
    decoders = {
        "greedy": lambda m, s, k: unilm_greedy_generate(m, s, **kw),
        "beam": lambda m, s, k: unilm_beam_search(m, s, beam_size=2, **kw),
        "sample": lambda m, s, k: unilm_sample(m, s, k, top_p=0.9, **kw),
    }
    keys = jax.random.split(jax.random.key(2), len(SOURCES))
    for name, decode in decoders.items():
        out = nnx.jit(decode)(model, jnp.asarray(bad), keys)
        clean = decode(model, src, keys)
        assert np.isnan(float(out.scores[1])) and int(out.lengths[1]) == 0, name
        assert (np.asarray(out.tokens[1]) == PAD).all()
        for b in (0, 2):
            np.testing.assert_array_equal(out.tokens[b], clean.tokens[b])
            np.testing.assert_allclose(out.scores[b], clean.scores[b], atol=1e-5)
