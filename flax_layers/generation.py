"""UniLM seq2seq generation (greedy, beam search, sampling) with a key/value cache.

A bidirectional BERT becomes a seq2seq model by changing only its attention
mask (Dong et al., 2019, "Unified Language Model Pre-training for Natural
Language Understanding and Generation", arXiv:1905.03197; Su, "从语言模型到
Seq2Seq：Transformer如戏，全靠Mask", kexue.fm/archives/6933). With the layout
``[CLS] src [SEP] tgt [SEP]``, segment ids 0 on the source and 1 on the target
and ``c = cumsum(segment_ids)``, ``mask[i, j] = c_j <= c_i``: source tokens see
only the source, target token ``t`` sees the source and targets ``<= t``.

Source keys/values therefore never depend on the target: the source is encoded
once, its per-layer keys/values are stored in a cache preallocated for
``max_new_tokens`` more positions, and each new target token only runs its own
column through the network, attending to the cache. The logits at the last
source token (the first ``[SEP]``) predict the first target token, as in the
UniLM loss ``CE(out[:, :-1], ids[:, 1:])`` weighted by the target segment.
Everything runs under ``jax.jit`` with fixed shapes and ``lax.while_loop``.

Sources are right-padded ``[CLS] src [SEP] [PAD]...``; target token ``t`` (0-based)
gets position ``source_length + t`` and segment 1, so results equal the
unpadded per-example computation.

Token ids must lie in ``[0, vocab_size)``. Concrete ids outside raise a
``ValueError`` naming the argument, the range and the offending value. Traced ids
(the functions called inside the caller's ``jit``) cannot be checked: an example
whose ids leave the vocabulary gets NaN logits, and from the generation functions
a NaN score with no tokens (length 0, all ``pad_token_id``), never a finite result.
"""

from __future__ import annotations

import functools
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_layers._ids import bad_rows, check_ids
from flax_layers.bert import BertModel

__all__ = [
    "GenerationOutput",
    "KVCache",
    "unilm_beam_search",
    "unilm_decode_step",
    "unilm_encode_source",
    "unilm_greedy_generate",
    "unilm_sample",
]


class KVCache(NamedTuple):
    """Per-layer keys/values of the source plus room for the generated target.

    Attributes:
      keys: one ``[batch, S + T, heads, head_dim]`` array per layer; slots
        ``S + t`` hold target token ``t`` once it has been fed.
      values: same shapes as ``keys``.
      source_mask: boolean ``[batch, S]``, True on real (non-pad) source tokens.
      source_length: int32 ``[batch]``, number of real source tokens.
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    source_mask: jax.Array
    source_length: jax.Array


class GenerationOutput(NamedTuple):
    """Result of :func:`unilm_greedy_generate` / :func:`unilm_beam_search`.

    Attributes:
      tokens: int32 ``[batch, max_new_tokens]``: generated ids, the end token
        included, ``pad_token_id`` afterwards.
      lengths: int32 ``[batch]``: number of generated tokens (end token included).
      scores: float32 ``[batch]``: sum of the log-probabilities of the tokens; NaN
        for an example whose (traced) source holds an id outside the vocabulary.
    """

    tokens: jax.Array
    lengths: jax.Array
    scores: jax.Array


def _check_model(model: BertModel) -> None:
    if not isinstance(model, BertModel):
        raise TypeError(f"model must be a flax_layers.bert.BertModel, got {type(model)}.")
    if model.mlm_transform is None:
        raise ValueError("UniLM generation needs the MLM head: build the model with_mlm_head=True.")


def _check_source(
    fn: str, model: BertModel, source_ids: jax.Array, max_new_tokens: int
) -> tuple[int, int]:
    source_ids = jnp.asarray(source_ids)
    if source_ids.ndim != 2 or not jnp.issubdtype(source_ids.dtype, jnp.integer):
        raise ValueError(
            f"{fn}: `source_ids` must be an integer [batch, source_length] array "
            f"('[CLS] src [SEP]' right-padded), got shape {source_ids.shape} "
            f"and dtype {source_ids.dtype}."
        )
    if (
        not isinstance(max_new_tokens, int)
        or isinstance(max_new_tokens, bool)
        or max_new_tokens < 1
    ):
        raise ValueError(f"{fn}: max_new_tokens must be a positive int, got {max_new_tokens!r}.")
    b, s = source_ids.shape
    limit = model.config.max_position_embeddings
    if s + max_new_tokens > limit:
        raise ValueError(
            f"{fn}: source length {s} + max_new_tokens {max_new_tokens} exceeds the model's "
            f"max_position_embeddings {limit}."
        )
    check_ids(fn, "source_ids", source_ids, model.config.vocab_size, "vocab_size")
    return b, s


def _check_token(name: str, token: int, vocab_size: int) -> int:
    try:
        value = operator.index(token)
    except TypeError:
        value = -1
    if not 0 <= value < vocab_size:
        raise ValueError(f"{name} must be an int in [0, vocab_size={vocab_size}), got {token!r}.")
    return value


def _source_mask(
    source_ids: jax.Array, source_mask: jax.Array | None, pad_token_id: int
) -> jax.Array:
    if source_mask is None:
        return source_ids != pad_token_id
    source_mask = jnp.asarray(source_mask)
    if source_mask.shape != source_ids.shape or source_mask.dtype != jnp.bool_:
        raise ValueError(
            f"source_mask must be boolean with the shape of source_ids {source_ids.shape}, "
            f"got {source_mask.shape} {source_mask.dtype}."
        )
    return source_mask


def unilm_encode_source(
    model: BertModel,
    source_ids: jax.Array,
    *,
    max_new_tokens: int,
    source_mask: jax.Array | None = None,
    pad_token_id: int | None = None,
) -> tuple[jax.Array, KVCache]:
    """Encodes the source once and returns the first-target-token logits and the cache.

    Source tokens attend bidirectionally to the real source tokens (the UniLM
    mask restricted to segment 0). The logits are the MLM head at the last real
    source token (``[SEP]``), which predicts the first target token.

    Args:
      model: a :class:`BertModel` with an MLM head (call it in eval mode).
      source_ids: int ``[batch, S]`` right-padded ``[CLS] src [SEP]`` ids.
      max_new_tokens: number of target slots ``T`` to preallocate.
      source_mask: boolean ``[batch, S]`` (default ``source_ids != pad_token_id``).
      pad_token_id: padding id (default ``model.config.pad_token_id``).

    Returns:
      ``(logits [batch, vocab], cache)``; under ``jit``, NaN logits (and cache rows)
      for an example whose source holds an id outside ``[0, vocab_size)``.

    Raises:
      ValueError: on bad shapes, ``S + T > max_position_embeddings`` or concrete
        ``source_ids`` outside ``[0, vocab_size)``.

    Reference: Dong et al., 2019 (arXiv:1905.03197), Section 2.

    Example:
      >>> from flax_layers.bert import BertConfig
      >>> cfg = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=2,
      ...                  num_attention_heads=2, intermediate_size=16)
      >>> model = nnx.view(BertModel(cfg, rngs=nnx.Rngs(0)), deterministic=True)
      >>> encode = nnx.jit(unilm_encode_source, static_argnames="max_new_tokens")
      >>> logits, cache = encode(model, jnp.array([[2, 5, 3, 0]]), max_new_tokens=3)
      >>> logits.shape, cache.keys[0].shape, cache.source_length.tolist()
      ((1, 20), (1, 7, 2, 4), [3])
    """
    _check_model(model)
    b, s = _check_source("unilm_encode_source", model, source_ids, max_new_tokens)
    if pad_token_id is None:
        pad_token_id = model.config.pad_token_id
    source_ids = jnp.asarray(source_ids)
    mask = _source_mask(source_ids, source_mask, pad_token_id)
    length = jnp.sum(mask, axis=1, dtype=jnp.int32)
    x = model.embed(source_ids, jnp.zeros_like(source_ids))
    attn_mask = mask[:, None, None, :]
    keys, values = [], []
    pad = ((0, 0), (0, max_new_tokens), (0, 0), (0, 0))
    for layer in model.layers:
        q, k, v = layer.qkv(x)
        keys.append(jnp.pad(k, pad))
        values.append(jnp.pad(v, pad))
        x = layer.attend(x, q, k, v, attn_mask)
    last = jnp.take_along_axis(x, jnp.maximum(length - 1, 0)[:, None, None], axis=1)[:, 0]
    logits = model.mlm_logits(last)
    return logits, KVCache(tuple(keys), tuple(values), mask, length)


def unilm_decode_step(
    model: BertModel, token_ids: jax.Array, step: jax.Array | int, cache: KVCache
) -> tuple[jax.Array, KVCache]:
    """Feeds target token ``step`` (0-based) and returns the next-token logits.

    The token gets segment 1 and position ``source_length + step``; its keys and
    values are written at cache slot ``S + step`` and its query attends to the
    real source tokens and target slots ``<= step`` (the UniLM mask row).

    Args:
      model: the model used for :func:`unilm_encode_source`.
      token_ids: int ``[batch]``, the token just generated.
      step: its target index (scalar, may be traced).
      cache: the cache from :func:`unilm_encode_source` / the previous step.

    Returns:
      ``(logits [batch, vocab], updated cache)``; under ``jit``, NaN logits for an
      example whose token lies outside ``[0, vocab_size)``.

    Raises:
      ValueError: if ``token_ids`` is not ``[batch]`` for the cache's batch, or
        (concrete) lies outside ``[0, vocab_size)``.

    Reference: Dong et al., 2019 (arXiv:1905.03197).

    Example:
      >>> from flax_layers.bert import BertConfig
      >>> cfg = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
      ...                  num_attention_heads=2, intermediate_size=16)
      >>> model = nnx.view(BertModel(cfg, rngs=nnx.Rngs(0)), deterministic=True)
      >>> encode = nnx.jit(unilm_encode_source, static_argnames="max_new_tokens")
      >>> logits, cache = encode(model, jnp.array([[2, 5, 3]]), max_new_tokens=2)
      >>> logits, cache = nnx.jit(unilm_decode_step)(model, jnp.argmax(logits, -1), 0, cache)
      >>> logits.shape
      (1, 20)
    """
    token_ids = jnp.asarray(token_ids)
    b, s = cache.source_mask.shape
    if token_ids.shape != (b,) or not jnp.issubdtype(token_ids.dtype, jnp.integer):
        raise ValueError(
            f"token_ids must be an integer [batch] = {(b,)} array, got {token_ids.shape} "
            f"{token_ids.dtype}."
        )
    check_ids("unilm_decode_step", "token_ids", token_ids, model.config.vocab_size, "vocab_size")
    t = cache.keys[0].shape[1] - s
    step = jnp.asarray(step, jnp.int32)
    positions = (cache.source_length + step)[:, None]
    x = model.embed(token_ids[:, None], jnp.ones_like(token_ids)[:, None], positions)
    key_mask = jnp.concatenate(
        [cache.source_mask, jnp.broadcast_to(jnp.arange(t) <= step, (b, t))], axis=1
    )[:, None, None, :]
    keys, values = [], []
    for layer, k_cache, v_cache in zip(model.layers, cache.keys, cache.values):
        q, k, v = layer.qkv(x)
        k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), s + step, 1)
        v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), s + step, 1)
        keys.append(k_cache)
        values.append(v_cache)
        x = layer.attend(x, q, k_cache, v_cache, key_mask)
    logits = model.mlm_logits(x[:, 0])
    return logits, cache._replace(keys=tuple(keys), values=tuple(values))


def _bad_sources(model: BertModel, source_ids: jax.Array) -> jax.Array:
    """Examples ``[batch]`` whose (traced) source holds an id outside the vocabulary."""
    bad = bad_rows(source_ids, model.config.vocab_size)
    return jnp.zeros(source_ids.shape[:1], bool) if bad is None else bad


class _LoopState(NamedTuple):
    """Carry of the greedy / sampling loop."""

    step: jax.Array  # int32 scalar: index of the token chosen next
    logits: jax.Array  # [batch, vocab]: next-token logits
    cache: KVCache
    tokens: jax.Array  # int32 [batch, T]
    done: jax.Array  # bool [batch]
    scores: jax.Array  # float32 [batch]
    lengths: jax.Array  # int32 [batch]
    keys: jax.Array | None  # [batch] PRNG keys (sampling only)


class _BeamState(NamedTuple):
    """Carry of the beam-search loop (``k`` beams per example, flattened as ``b * k``)."""

    step: jax.Array  # int32 scalar
    logits: jax.Array  # [batch * k, vocab]
    cache: KVCache  # rows [batch * k]
    tokens: jax.Array  # int32 [batch, k, T]: the beams
    scores: jax.Array  # float32 [batch, k]: beam scores, -inf for dead beams
    n_alive: jax.Array  # int32 [batch]: number of live beams
    done: jax.Array  # bool [batch]
    out_tokens: jax.Array  # int32 [batch, T]: the returned sequence
    out_scores: jax.Array  # float32 [batch]
    out_lengths: jax.Array  # int32 [batch]


class _Sampling(NamedTuple):
    """Traced sampling parameters; which filters apply is static (see :func:`_sampling_jit`)."""

    temperature: jax.Array  # float32 scalar > 0
    top_k: jax.Array  # int32 scalar
    top_p: jax.Array  # float32 scalar
    min_new_tokens: jax.Array  # int32 scalar


def _greedy_choice(logp, step, keys, end_token_id):
    del step, end_token_id
    return jnp.argmax(logp, axis=-1).astype(jnp.int32), keys


def _filtered_logprobs(logits, step, end_token_id, params: _Sampling, filters):
    """Log of the kept, renormalised sampling probabilities (bert4keras ``random_sample``).

    ``p = softmax(logits / T)`` with the end token's probability 0 before
    ``min_new_tokens`` tokens; top-k keeps the ``k`` largest; top-p keeps the shortest
    descending prefix whose cumulative (top-k renormalised) probability reaches ``p``.
    With ``filters[2]`` (the ``T -> 0`` limit) the temperature is skipped: only the
    argmax of the result matters.
    """
    use_top_k, use_top_p, zero_temperature = filters
    z = logits if zero_temperature else logits / params.temperature
    vocab = z.shape[-1]
    forbid_end = (jnp.arange(vocab) == end_token_id) & (step < params.min_new_tokens)
    z = jnp.where(forbid_end, -jnp.inf, z)
    logp = jax.nn.log_softmax(z, axis=-1)
    if not (use_top_k or use_top_p):
        return logp
    order = jnp.argsort(-logp, axis=-1, stable=True)  # descending, ties by smallest id
    sorted_logp = jnp.take_along_axis(logp, order, axis=-1)
    rank = jnp.arange(vocab)
    keep = jnp.ones(sorted_logp.shape, bool)
    if use_top_k:
        keep = keep & (rank < params.top_k)
    if use_top_p:
        p = jnp.where(keep, jnp.exp(sorted_logp), 0.0)
        p = p / jnp.sum(p, axis=-1, keepdims=True)
        before = jnp.cumsum(p, axis=-1) - p  # probability of the better-ranked tokens
        keep = keep & ((before < params.top_p) | (rank == 0))
    kept = jnp.zeros_like(keep).at[jnp.arange(keep.shape[0])[:, None], order].set(keep)
    return jax.nn.log_softmax(jnp.where(kept, logp, -jnp.inf), axis=-1)


def _sample_choice(params: _Sampling, filters):
    zero_temperature = filters[2]

    def choose(logp_model, step, keys, end_token_id):
        # the filters act on the raw logits; log_softmax only shifts each row
        logp = _filtered_logprobs(logp_model, step, end_token_id, params, filters)
        if zero_temperature:
            return jnp.argmax(logp, axis=-1).astype(jnp.int32), keys
        split = jax.vmap(jax.random.split)(keys)  # one split per example and step
        tok = jax.vmap(jax.random.categorical)(split[:, 1], logp)
        return tok.astype(jnp.int32), split[:, 0]

    return choose


def _decode(
    model, source_ids, source_mask, max_new_tokens, end_token_id, pad_token_id, choose, keys
):
    """Greedy or sampling loop: ``choose(logp, step, keys, end)`` picks each token.

    Scores are the model's log-probabilities ``log softmax(logits)`` of the chosen
    tokens (temperature 1, before any filtering).
    """
    logits, cache = unilm_encode_source(
        model,
        source_ids,
        max_new_tokens=max_new_tokens,
        source_mask=source_mask,
        pad_token_id=pad_token_id,
    )
    b = source_ids.shape[0]
    bad = _bad_sources(model, source_ids)
    init = _LoopState(
        step=jnp.int32(0),
        logits=logits,
        cache=cache,
        tokens=jnp.full((b, max_new_tokens), pad_token_id, jnp.int32),
        done=bad,  # an example with an out-of-range source id is done from the start
        scores=jnp.zeros((b,), jnp.float32),
        lengths=jnp.zeros((b,), jnp.int32),
        keys=keys,
    )

    def cond(state: _LoopState):
        return (state.step < max_new_tokens) & ~jnp.all(state.done)

    def body(state: _LoopState) -> _LoopState:
        t, done = state.step, state.done
        logp = jax.nn.log_softmax(state.logits.astype(jnp.float32), axis=-1)
        tok, keys = choose(logp, t, state.keys, end_token_id)
        lp = jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]
        tok = jnp.where(done, pad_token_id, tok)
        tokens = jax.lax.dynamic_update_slice_in_dim(state.tokens, tok[:, None], t, 1)
        logits, cache = unilm_decode_step(model, tok, t, state.cache)
        return _LoopState(
            step=t + 1,
            logits=logits,
            cache=cache,
            tokens=tokens,
            done=done | (tok == end_token_id),
            scores=state.scores + jnp.where(done, 0.0, lp),
            lengths=state.lengths + (~done).astype(jnp.int32),
            keys=keys,
        )

    final = jax.lax.while_loop(cond, body, init)
    return GenerationOutput(final.tokens, final.lengths, jnp.where(bad, jnp.nan, final.scores))


def _greedy(model, source_ids, source_mask, max_new_tokens, end_token_id, pad_token_id):
    return _decode(
        model,
        source_ids,
        source_mask,
        max_new_tokens,
        end_token_id,
        pad_token_id,
        _greedy_choice,
        None,
    )


def _beam(model, source_ids, source_mask, max_new_tokens, end_token_id, pad_token_id, k):
    logits, cache = unilm_encode_source(
        model,
        source_ids,
        max_new_tokens=max_new_tokens,
        source_mask=source_mask,
        pad_token_id=pad_token_id,
    )
    b, src_len = source_ids.shape
    vocab = logits.shape[-1]
    bad = _bad_sources(model, source_ids)
    neg_inf = jnp.float32(-jnp.inf)
    init = _BeamState(
        step=jnp.int32(0),
        logits=jnp.repeat(logits, k, axis=0),
        cache=jax.tree.map(lambda a: jnp.repeat(a, k, axis=0), cache),
        tokens=jnp.full((b, k, max_new_tokens), pad_token_id, jnp.int32),
        scores=jnp.broadcast_to(jnp.where(jnp.arange(k) == 0, 0.0, neg_inf), (b, k)),
        n_alive=jnp.full((b,), k, jnp.int32),
        done=bad,  # an example with an out-of-range source id is done from the start
        out_tokens=jnp.full((b, max_new_tokens), pad_token_id, jnp.int32),
        out_scores=jnp.where(bad, jnp.float32(jnp.nan), 0.0),
        out_lengths=jnp.zeros((b,), jnp.int32),
    )

    def cond(state: _BeamState):
        return (state.step < max_new_tokens) & ~jnp.all(state.done)

    def body(state: _BeamState) -> _BeamState:
        t, done = state.step, state.done
        logp = jax.nn.log_softmax(state.logits.astype(jnp.float32), axis=-1).reshape(b, k, vocab)
        cand = (state.scores[:, :, None] + logp).reshape(b, k * vocab)
        # Take the values with a gather rather than from top_k itself: using top_k's
        # values below makes XLA:CPU fall back from its TopK kernel to a full sort of
        # [b, k * vocab] every step (about 14x slower beam search on CPU).
        _, idx = jax.lax.top_k(cand, k)  # sorted, best first
        top = jnp.take_along_axis(cand, idx, axis=1)
        beam = idx // vocab
        tok = (idx % vocab).astype(jnp.int32)
        tokens = jnp.take_along_axis(state.tokens, beam[:, :, None], axis=1)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, tok[:, :, None], t, 2)
        # bert4keras: keep the n_alive best candidates; stop when the best one ended.
        slot_alive = jnp.arange(k)[None, :] < state.n_alive[:, None]
        is_end = tok == end_token_id
        finish = ~done & (is_end[:, 0] | (t == max_new_tokens - 1))
        alive = slot_alive & ~is_end
        # reorder the cache rows by parent beam; the source part is the same for all the
        # beams of an example, so only the target slots need moving
        flat = (jnp.arange(b)[:, None] * k + beam).reshape(-1)
        cache = state.cache._replace(
            keys=tuple(a.at[:, src_len:].set(a[flat, src_len:]) for a in state.cache.keys),
            values=tuple(a.at[:, src_len:].set(a[flat, src_len:]) for a in state.cache.values),
        )
        logits, cache = unilm_decode_step(model, tok.reshape(-1), t, cache)
        return _BeamState(
            step=t + 1,
            logits=logits,
            cache=cache,
            tokens=tokens,
            scores=jnp.where(alive, top, neg_inf),
            n_alive=jnp.sum(alive, axis=1, dtype=jnp.int32),
            done=done | finish,
            out_tokens=jnp.where(finish[:, None], tokens[:, 0], state.out_tokens),
            out_scores=jnp.where(finish, top[:, 0], state.out_scores),
            out_lengths=jnp.where(finish, t + 1, state.out_lengths),
        )

    final = jax.lax.while_loop(cond, body, init)
    return GenerationOutput(final.out_tokens, final.out_lengths, final.out_scores)


@functools.partial(jax.jit, static_argnums=(0, 4, 7))
def _generate_jit(graphdef, state, source_ids, source_mask, t, end_id, pad_id, beam_size):
    model = nnx.view(nnx.merge(graphdef, state), deterministic=True)  # no dropout
    if beam_size == 0:
        return _greedy(model, source_ids, source_mask, t, end_id, pad_id)
    return _beam(model, source_ids, source_mask, t, end_id, pad_id, beam_size)


@functools.partial(jax.jit, static_argnums=(0, 4, 9))
def _sampling_jit(
    graphdef, state, source_ids, source_mask, t, end_id, pad_id, keys, params, filters
):
    model = nnx.view(nnx.merge(graphdef, state), deterministic=True)  # no dropout
    choose = _sample_choice(params, filters)
    return _decode(model, source_ids, source_mask, t, end_id, pad_id, choose, keys)


def _prepare(fn, model, source_ids, source_mask, max_new_tokens, end_token_id, pad_token_id):
    _check_model(model)
    _check_source(fn, model, source_ids, max_new_tokens)
    vocab = model.config.vocab_size
    if pad_token_id is None:
        pad_token_id = model.config.pad_token_id
    end_token_id = _check_token("end_token_id", end_token_id, vocab)
    pad_token_id = _check_token("pad_token_id", pad_token_id, vocab)
    source_ids = jnp.asarray(source_ids)
    source_mask = _source_mask(source_ids, source_mask, pad_token_id)
    graphdef, state = nnx.split(model)
    return (
        graphdef,
        state,
        source_ids,
        source_mask,
        jnp.int32(end_token_id),
        jnp.int32(pad_token_id),
    )


def _run(fn, model, source_ids, source_mask, max_new_tokens, end_token_id, pad_token_id, beam):
    graphdef, state, source_ids, source_mask, end_id, pad_id = _prepare(
        fn, model, source_ids, source_mask, max_new_tokens, end_token_id, pad_token_id
    )
    return _generate_jit(
        graphdef, state, source_ids, source_mask, max_new_tokens, end_id, pad_id, beam
    )


def unilm_greedy_generate(
    model: BertModel,
    source_ids: jax.Array,
    *,
    max_new_tokens: int,
    end_token_id: int,
    source_mask: jax.Array | None = None,
    pad_token_id: int | None = None,
) -> GenerationOutput:
    """Greedy UniLM decoding with a KV cache, jitted with fixed shapes.

    ``y_t = argmax_v log p(v | src, y_<t)``, stopping at ``end_token_id`` (kept in
    the output) or after ``max_new_tokens``. Dropout is disabled.

    Args:
      model: a :class:`BertModel` with an MLM head.
      source_ids: int ``[batch, S]`` right-padded ``[CLS] src [SEP]`` ids.
      max_new_tokens: maximum number of generated tokens ``T``.
      end_token_id: the stop token (``[SEP]``).
      source_mask: boolean ``[batch, S]`` (default ``source_ids != pad_token_id``).
      pad_token_id: id written after the end (default ``model.config.pad_token_id``).

    Returns:
      :class:`GenerationOutput` with ``tokens [batch, T]``, ``lengths`` and ``scores``.
      Called inside ``jit`` with a source id outside ``[0, vocab_size)``, that
      example gets score NaN, length 0 and only ``pad_token_id``.

    Raises:
      ValueError: on bad shapes, a too long ``S + T``, or ids out of range
        (``end_token_id``, ``pad_token_id``, concrete ``source_ids``; the message names
        the argument, the range and the offending value).

    Reference: Dong et al., 2019 (arXiv:1905.03197); bert4keras
    ``AutoRegressiveDecoder.random_sample/beam_search``.

    Example:
      >>> from flax_layers.bert import BertConfig
      >>> cfg = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
      ...                  num_attention_heads=2, intermediate_size=16)
      >>> model = BertModel(cfg, rngs=nnx.Rngs(0))
      >>> out = unilm_greedy_generate(model, jnp.array([[2, 5, 6, 3], [2, 7, 3, 0]]),
      ...                             max_new_tokens=4, end_token_id=3)
      >>> out.tokens.shape, out.lengths.shape
      ((2, 4), (2,))
    """
    return _run(
        "unilm_greedy_generate",
        model,
        source_ids,
        source_mask,
        max_new_tokens,
        end_token_id,
        pad_token_id,
        0,
    )


def unilm_beam_search(
    model: BertModel,
    source_ids: jax.Array,
    *,
    beam_size: int,
    max_new_tokens: int,
    end_token_id: int,
    source_mask: jax.Array | None = None,
    pad_token_id: int | None = None,
) -> GenerationOutput:
    """Beam search for UniLM seq2seq with a KV cache (bert4keras semantics), jitted.

    Scores are summed log-probabilities. Each step takes the ``n`` best
    one-token extensions of the ``n`` live beams (``n = beam_size`` at first).
    If the best of them ends with ``end_token_id`` it is returned; otherwise the
    ended candidates are dropped and ``n`` shrinks by their number. After
    ``max_new_tokens`` steps the best live beam is returned. Fixed shapes: dead
    beams are kept with score ``-inf``.

    Args:
      model: a :class:`BertModel` with an MLM head.
      source_ids: int ``[batch, S]`` right-padded ``[CLS] src [SEP]`` ids.
      beam_size: number of beams ``K`` (``1 <= K <= vocab_size``).
      max_new_tokens: maximum number of generated tokens ``T``.
      end_token_id: the stop token (``[SEP]``).
      source_mask: boolean ``[batch, S]`` (default ``source_ids != pad_token_id``).
      pad_token_id: id written after the end (default ``model.config.pad_token_id``).

    Returns:
      :class:`GenerationOutput` with the best sequence per example (score NaN, length
      0 for an example whose source holds an out-of-range id under ``jit``).

    Raises:
      ValueError: on bad shapes, ids out of range (as for
        :func:`unilm_greedy_generate`) or an invalid ``beam_size``.

    Reference: bert4keras ``AutoRegressiveDecoder.beam_search`` (Su,
    kexue.fm/archives/7500); Dong et al., 2019 (arXiv:1905.03197).

    Example:
      >>> from flax_layers.bert import BertConfig
      >>> cfg = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
      ...                  num_attention_heads=2, intermediate_size=16)
      >>> model = BertModel(cfg, rngs=nnx.Rngs(0))
      >>> out = unilm_beam_search(model, jnp.array([[2, 5, 6, 3]]), beam_size=3,
      ...                         max_new_tokens=4, end_token_id=3)
      >>> out.tokens.shape, bool(out.scores[0] <= 0)
      ((1, 4), True)
    """
    _check_model(model)
    vocab = model.config.vocab_size
    try:
        size = operator.index(beam_size)
    except TypeError:
        size = 0
    if not 1 <= size <= vocab:
        raise ValueError(f"beam_size must be an int in [1, vocab_size={vocab}], got {beam_size!r}.")
    return _run(
        "unilm_beam_search",
        model,
        source_ids,
        source_mask,
        max_new_tokens,
        end_token_id,
        pad_token_id,
        size,
    )


def _sampling_keys(key, batch: int) -> jax.Array:
    """One typed PRNG key per example: ``key`` split ``batch`` ways, or ``batch`` keys."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32 or key.ndim not in (1, 2):
            raise TypeError(
                "unilm_sample: `key` must be a PRNG key (jax.random.key(seed)) or a batch of "
                f"[batch] keys, got shape {key.shape} and dtype {key.dtype}."
            )
        key = jax.random.wrap_key_data(key)  # legacy uint32 jax.random.PRNGKey data
    if key.shape == ():
        return jax.random.split(key, batch)
    if key.shape != (batch,):
        raise ValueError(
            f"unilm_sample: `key` must be one PRNG key or [batch] = {(batch,)} keys (one per "
            f"example), got shape {key.shape}."
        )
    return key


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def unilm_sample(
    model: BertModel,
    source_ids: jax.Array,
    key: jax.Array,
    *,
    max_new_tokens: int,
    end_token_id: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_new_tokens: int = 0,
    source_mask: jax.Array | None = None,
    pad_token_id: int | None = None,
) -> GenerationOutput:
    """Random sampling for UniLM seq2seq with top-k / top-p filtering and a KV cache, jitted.

    Per step (bert4keras ``random_sample``): ``p = softmax(logits / T)``, with the end
    token's probability set to 0 while fewer than ``min_new_tokens`` tokens have been
    generated; top-k keeps the ``k`` largest probabilities and renormalises; top-p sorts
    them in descending order and keeps the shortest prefix whose cumulative probability
    reaches ``p`` (the token that crosses ``p`` is kept), renormalised; with both, top-k
    comes first. The token is drawn with :func:`jax.random.categorical` on the log of the
    kept probabilities. Each example owns a key, split once per step, so an example's
    draw does not depend on the rest of the batch. Ties in the ranking go to the
    smallest id, so ``top_k=1`` (any ``T``) and ``temperature=0`` (the ``T -> 0`` limit:
    the argmax of the filtered distribution) are greedy decoding.

    Args:
      model: a :class:`BertModel` with an MLM head.
      source_ids: int ``[batch, S]`` right-padded ``[CLS] src [SEP]`` ids.
      key: a PRNG key (``jax.random.key(seed)``; split into one key per example) or
        ``[batch]`` keys, one per example. Legacy ``uint32`` keys are accepted.
      max_new_tokens: maximum number of generated tokens ``T``.
      end_token_id: the stop token (``[SEP]``).
      temperature: ``T >= 0`` (a Python number); 0 means greedy.
      top_k: keep the ``k`` most likely tokens, ``1 <= k <= vocab_size`` (None: all).
      top_p: nucleus threshold in ``(0, 1]`` (None: no nucleus filter).
      min_new_tokens: the end token cannot be drawn before this many tokens,
        ``0 <= min_new_tokens <= max_new_tokens``.
      source_mask: boolean ``[batch, S]`` (default ``source_ids != pad_token_id``).
      pad_token_id: id written after the end (default ``model.config.pad_token_id``).

    Returns:
      :class:`GenerationOutput`; ``scores`` are the model's log-probabilities
      ``log softmax(logits)`` of the drawn tokens (temperature 1, before filtering), as
      for :func:`unilm_greedy_generate`, so the three decoders' scores compare. Called
      inside ``jit`` with a source id outside ``[0, vocab_size)``, that example gets
      score NaN, length 0 and only ``pad_token_id``.

    Raises:
      ValueError: on bad shapes, ids out of range (as for
        :func:`unilm_greedy_generate`), ``temperature < 0``, ``top_k`` outside
        ``[1, vocab_size]``, ``top_p`` outside ``(0, 1]`` or ``min_new_tokens`` outside
        ``[0, max_new_tokens]``.
      TypeError: a non-numeric ``temperature`` / ``top_p``, a non-int ``top_k`` /
        ``min_new_tokens`` or a ``key`` that is not a PRNG key.

    Reference: bert4keras ``AutoRegressiveDecoder.random_sample`` (Su,
    kexue.fm/archives/7500); Holtzman et al., 2020, "The Curious Case of Neural Text
    Degeneration" (arXiv:1904.09751) for top-p; Dong et al., 2019 (arXiv:1905.03197).

    Example:
      >>> from flax_layers.bert import BertConfig
      >>> cfg = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
      ...                  num_attention_heads=2, intermediate_size=16)
      >>> model = BertModel(cfg, rngs=nnx.Rngs(0))
      >>> src = jnp.array([[2, 5, 6, 3], [2, 7, 3, 0]])
      >>> out = unilm_sample(model, src, jax.random.key(0), max_new_tokens=4,
      ...                    end_token_id=3, top_p=0.9, min_new_tokens=1)
      >>> out.tokens.shape, bool((out.tokens[:, 0] != 3).all())
      ((2, 4), True)
      >>> greedy = unilm_greedy_generate(model, src, max_new_tokens=4, end_token_id=3)
      >>> same = unilm_sample(model, src, jax.random.key(1), max_new_tokens=4,
      ...                     end_token_id=3, top_k=1)
      >>> bool((same.tokens == greedy.tokens).all())
      True
    """
    fn = "unilm_sample"
    _check_model(model)
    vocab = model.config.vocab_size
    if not _is_number(temperature):
        raise TypeError(f"{fn}: temperature must be a Python number, got {temperature!r}.")
    if not temperature >= 0 or temperature == float("inf"):
        raise ValueError(
            f"{fn}: temperature must be finite and >= 0 (0 = greedy), got {temperature!r}."
        )
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
            raise TypeError(f"{fn}: top_k must be an int or None, got {top_k!r}.")
        if not 1 <= top_k <= vocab:
            raise ValueError(f"{fn}: top_k must be in [1, vocab_size={vocab}], got {top_k!r}.")
    if top_p is not None:
        if not _is_number(top_p):
            raise TypeError(f"{fn}: top_p must be a number in (0, 1] or None, got {top_p!r}.")
        if not 0 < top_p <= 1:
            raise ValueError(f"{fn}: top_p must be in (0, 1], got {top_p!r}.")
    if isinstance(min_new_tokens, bool) or not isinstance(min_new_tokens, (int, np.integer)):
        raise TypeError(f"{fn}: min_new_tokens must be an int, got {min_new_tokens!r}.")
    graphdef, state, source_ids, source_mask, end_id, pad_id = _prepare(
        fn, model, source_ids, source_mask, max_new_tokens, end_token_id, pad_token_id
    )
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise ValueError(
            f"{fn}: min_new_tokens must be in [0, max_new_tokens={max_new_tokens}], "
            f"got {min_new_tokens!r}."
        )
    keys = _sampling_keys(key, source_ids.shape[0])
    params = _Sampling(
        temperature=jnp.float32(temperature if temperature > 0 else 1.0),
        top_k=jnp.int32(vocab if top_k is None else top_k),
        top_p=jnp.float32(1.0 if top_p is None else top_p),
        min_new_tokens=jnp.int32(min_new_tokens),
    )
    filters = (top_k is not None, top_p is not None, temperature == 0)
    return _sampling_jit(
        graphdef,
        state,
        source_ids,
        source_mask,
        max_new_tokens,
        end_id,
        pad_id,
        keys,
        params,
        filters,
    )
