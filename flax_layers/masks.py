"""Attention masks that turn one Transformer into an MLM, an LM or a seq2seq model.

Every mask here is a boolean array laid out for :class:`flax.nnx.MultiHeadAttention`
and :func:`jax.nn.dot_product_attention`: shape ``[batch, 1, q, k]`` (or a shape that
broadcasts to it, e.g. ``[1, 1, q, k]`` or ``[batch, 1, 1, k]``) where ``True`` means
*query i may attend key j*. Combine them with :func:`combine_masks`.

The point of the article: a pretrained bidirectional BERT becomes a left-to-right
language model or a UniLM seq2seq model by changing only the attention mask; the
seq2seq objective is then :func:`seq2seq_loss`.

Reference: Su Jianlin, "从语言模型到Seq2Seq：Transformer如戏，全靠Mask" (2019),
https://kexue.fm/archives/6933; Dong et al., "Unified Language Model Pre-training for
Natural Language Understanding and Generation" (UniLM, 2019), arXiv:1905.03197.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flax_layers._compat import renamed_arguments
from flax_layers._ids import (
    any_rows,
    bad_rows,
    check_ids,
    check_int,
    is_concrete,
    poison,
    safe_ids,
)

__all__ = [
    "bidirectional_mask",
    "combine_masks",
    "left_to_right_mask",
    "mask_to_bias",
    "packed_causal_mask",
    "packed_position_ids",
    "padding_mask",
    "padding_mask_from_lengths",
    "prefix_lm_mask",
    "random_order_mask",
    "right_to_left_mask",
    "seq2seq_loss",
    "unilm_mask",
]


def _check_rank(name: str, x, rank: int, layout: str) -> None:
    if jnp.ndim(x) != rank:
        raise ValueError(f"{name} must have rank {rank} ({layout}), got shape {jnp.shape(x)}.")


def _check_seq_len(seq_len: int) -> int:
    if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive Python int, got {seq_len!r}.")
    return int(seq_len)


@renamed_arguments(pad_id="pad_token_id")
def padding_mask(ids: jax.Array, pad_token_id: int = 0) -> jax.Array:
    """Key padding mask from token ids: keys equal to ``pad_token_id`` are hidden.

    Only keys are masked (``mask[b, 0, 0, j] = ids[b, j] != pad_token_id``); padded *query*
    rows still produce (ignored) outputs, which avoids fully masked softmax rows.

    Args:
      ids: integer token ids ``[batch, seq]``.
      pad_token_id: the padding token id (``pad_id`` is a deprecated alias).

    Returns:
      Boolean mask ``[batch, 1, 1, seq]`` that broadcasts against ``[batch, 1, q, k]``.

    Reference: Vaswani et al., "Attention Is All You Need" (2017).

    Example:
      >>> import jax.numpy as jnp
      >>> padding_mask(jnp.array([[5, 7, 0]])).astype(int)[0, 0]
      Array([[1, 1, 0]], dtype=int32)
    """
    _check_rank("ids", ids, 2, "[batch, seq]")
    check_int("padding_mask", "ids", ids)
    return (jnp.asarray(ids) != pad_token_id)[:, None, None, :]


@renamed_arguments(max_len="seq_len")
def padding_mask_from_lengths(lengths: jax.Array, seq_len: int) -> jax.Array:
    """Key padding mask from sequence lengths: ``mask[b, 0, 0, j] = j < lengths[b]``.

    Args:
      lengths: integer lengths ``[batch]``.
      seq_len: the padded sequence length (static Python int; ``max_len`` is a
        deprecated alias).

    Returns:
      Boolean mask ``[batch, 1, 1, seq_len]``.

    Reference: Vaswani et al., "Attention Is All You Need" (2017).

    Example:
      >>> import jax.numpy as jnp
      >>> padding_mask_from_lengths(jnp.array([2, 3]), 4).astype(int)[:, 0, 0]
      Array([[1, 1, 0, 0],
             [1, 1, 1, 0]], dtype=int32)
    """
    _check_rank("lengths", lengths, 1, "[batch]")
    check_int("padding_mask_from_lengths", "lengths", lengths)
    seq_len = _check_seq_len(seq_len)
    return (jnp.arange(seq_len)[None, :] < jnp.asarray(lengths)[:, None])[:, None, None, :]


def bidirectional_mask(seq_len: int) -> jax.Array:
    """Bidirectional (MLM / BERT) mask: every query sees every key.

    ``mask[i, j] = 1``. Combine with a padding mask to hide padded keys.

    Args:
      seq_len: sequence length (static Python int).

    Returns:
      Boolean mask ``[1, 1, seq_len, seq_len]`` of ones.

    Reference: Devlin et al., "BERT" (2018); Su, https://kexue.fm/archives/6933.

    Example:
      >>> bidirectional_mask(3).shape
      (1, 1, 3, 3)
    """
    seq_len = _check_seq_len(seq_len)
    return jnp.ones((1, 1, seq_len, seq_len), dtype=bool)


def left_to_right_mask(seq_len: int) -> jax.Array:
    """Left-to-right (causal) language-model mask: ``mask[i, j] = j <= i``.

    Args:
      seq_len: sequence length (static Python int).

    Returns:
      Boolean lower-triangular mask ``[1, 1, seq_len, seq_len]``.

    Reference: Radford et al., "GPT" (2018); Su, https://kexue.fm/archives/6933.

    Example:
      >>> left_to_right_mask(3).astype(int)[0, 0]
      Array([[1, 0, 0],
             [1, 1, 0],
             [1, 1, 1]], dtype=int32)
    """
    seq_len = _check_seq_len(seq_len)
    idx = jnp.arange(seq_len)
    return (idx[None, :] <= idx[:, None])[None, None]


def right_to_left_mask(seq_len: int) -> jax.Array:
    """Right-to-left language-model mask: ``mask[i, j] = j >= i``.

    Args:
      seq_len: sequence length (static Python int).

    Returns:
      Boolean upper-triangular mask ``[1, 1, seq_len, seq_len]``.

    Reference: Su, https://kexue.fm/archives/6933 (reverse-order LM).

    Example:
      >>> right_to_left_mask(3).astype(int)[0, 0]
      Array([[1, 1, 1],
             [0, 1, 1],
             [0, 0, 1]], dtype=int32)
    """
    seq_len = _check_seq_len(seq_len)
    idx = jnp.arange(seq_len)
    return (idx[None, :] >= idx[:, None])[None, None]


def _validate_segments(segment_ids) -> None:
    seg = np.asarray(segment_ids)
    if not np.isin(seg, (0, 1)).all():
        raise ValueError(f"segment_ids must contain only 0 and 1, got values {np.unique(seg)}.")
    # One contiguous block of ones per row: 0...0 1...1, optionally followed by zeros that
    # are padding. More than one 0 -> 1 transition means a malformed layout.
    starts = np.sum((seg[:, 1:] == 1) & (seg[:, :-1] == 0), axis=1) + (seg[:, 0] == 1)
    if (starts > 1).any():
        bad = int(np.argmax(starts > 1))
        raise ValueError(
            "segment_ids must have the form 0...0 1...1 (source, then target; trailing "
            f"zeros allowed as padding), row {bad} is {seg[bad].tolist()}."
        )


def unilm_mask(segment_ids: jax.Array) -> jax.Array:
    """UniLM seq2seq mask from segment ids (the cumsum rule).

    Layout ``[CLS] src [SEP] tgt [SEP]`` with segment 0 on the source (incl. ``[CLS]`` and
    the first ``[SEP]``) and 1 on the target. With ``c = cumsum(segment_ids)``::

        mask[i, j] = c[j] <= c[i]

    so source positions (``c = 0``) see the whole source and never the target, and target
    position ``i`` sees the source plus the target up to and including itself. Trailing
    zeros after the target (padding) get ``c`` of the last target token; hide them with
    :func:`padding_mask`.

    Args:
      segment_ids: integer ``[batch, seq]`` of 0/1. When concrete (not traced) it must be
        of the form ``0...0 1...1`` (optionally followed by zero padding).

    Returns:
      Boolean mask ``[batch, 1, seq, seq]``.

    Raises:
      ValueError: wrong rank, or (concrete input) values outside {0, 1} or a malformed
        layout.

    Reference: Dong et al., UniLM, arXiv:1905.03197; Su, https://kexue.fm/archives/6933;
    bert4keras ``UniLM_Mask``.

    Example:
      >>> import jax.numpy as jnp
      >>> unilm_mask(jnp.array([[0, 0, 1, 1]])).astype(int)[0, 0]
      Array([[1, 1, 0, 0],
             [1, 1, 0, 0],
             [1, 1, 1, 0],
             [1, 1, 1, 1]], dtype=int32)
    """
    _check_rank("segment_ids", segment_ids, 2, "[batch, seq]")
    check_int("unilm_mask", "segment_ids", segment_ids)
    if is_concrete(segment_ids):
        _validate_segments(segment_ids)
    c = jnp.cumsum(jnp.asarray(segment_ids), axis=1)
    return (c[:, None, :] <= c[:, :, None])[:, None]


@renamed_arguments(prefix_lengths="prefix_length")
def prefix_lm_mask(prefix_length: jax.Array, seq_len: int) -> jax.Array:
    """Prefix-LM mask: bidirectional inside the prefix, causal after it.

    ``mask[b, i, j] = (j < p_b) or (j <= i)`` with ``p_b = prefix_length[b]``. With
    ``p_b`` = length of ``[CLS] src [SEP]`` it equals :func:`unilm_mask` on the unpadded
    part.

    Args:
      prefix_length: integer ``[batch]`` prefix length of each example
        (``prefix_lengths`` is a deprecated alias).
      seq_len: sequence length (static Python int).

    Returns:
      Boolean mask ``[batch, 1, seq_len, seq_len]``.

    Reference: Raffel et al., "T5" (2019), prefix LM; Dong et al., UniLM, arXiv:1905.03197.

    Example:
      >>> import jax.numpy as jnp
      >>> prefix_lm_mask(jnp.array([2]), 4).astype(int)[0, 0]
      Array([[1, 1, 0, 0],
             [1, 1, 0, 0],
             [1, 1, 1, 0],
             [1, 1, 1, 1]], dtype=int32)
    """
    _check_rank("prefix_length", prefix_length, 1, "[batch]")
    check_int("prefix_lm_mask", "prefix_length", prefix_length)
    seq_len = _check_seq_len(seq_len)
    idx = jnp.arange(seq_len)
    in_prefix = idx[None, :] < jnp.asarray(prefix_length)[:, None]  # [B, K]
    causal = idx[None, :] <= idx[:, None]  # [Q, K]
    return (in_prefix[:, None, :] | causal[None])[:, None]


def random_order_mask(order: jax.Array) -> jax.Array:
    """Random-order language-model mask: ``mask[i, j] = r(j) <= r(i)``.

    ``order`` lists positions in generation order (``order[k]`` is the position generated
    at step ``k``); the rank is its inverse permutation, ``r(order[k]) = k``. The identity
    order gives :func:`left_to_right_mask`, the reversed order :func:`right_to_left_mask`.
    If you hold ranks instead, pass ``jnp.argsort(ranks)``.

    Args:
      order: integer permutation ``[seq]`` or ``[batch, seq]``. When concrete (not traced)
        each row must be a permutation of ``0..seq-1``.

    Returns:
      Boolean mask ``[batch, 1, seq, seq]`` (``batch = 1`` for a 1-D ``order``).

    Raises:
      ValueError: wrong rank, or (concrete input) a row that is not a permutation.

    Reference: Su, https://kexue.fm/archives/6933 (乱序语言模型); Yang et al., "XLNet"
    (2019), arXiv:1906.08237.

    Example:
      >>> import jax.numpy as jnp
      >>> random_order_mask(jnp.array([2, 0, 1])).astype(int)[0, 0]  # ranks r = (1, 2, 0)
      Array([[1, 0, 1],
             [1, 1, 1],
             [0, 0, 1]], dtype=int32)
    """
    if jnp.ndim(order) not in (1, 2):
        raise ValueError(
            f"order must have rank 1 or 2 ([seq] or [batch, seq]), got {jnp.shape(order)}."
        )
    check_int("random_order_mask", "order", order)
    if is_concrete(order):
        o = np.asarray(order).reshape(-1, np.shape(order)[-1])
        expected = np.arange(o.shape[-1])
        ok = (np.sort(o, axis=-1) == expected).all(axis=-1)
        if not ok.all():
            bad = int(np.argmin(ok))
            raise ValueError(
                f"order must be a permutation of 0..{o.shape[-1] - 1}, row {bad} is "
                f"{o[bad].tolist()}."
            )
    order = jnp.asarray(order).reshape(-1, jnp.shape(order)[-1])
    batch, seq = order.shape
    steps = jnp.broadcast_to(jnp.arange(seq), (batch, seq))
    rank = jnp.zeros((batch, seq), dtype=steps.dtype)
    rank = rank.at[jnp.arange(batch)[:, None], order].set(steps)
    return (rank[:, None, :] <= rank[:, :, None])[:, None]


def _check_example_ids(fn: str, example_ids) -> jax.Array:
    if jnp.ndim(example_ids) != 2:
        raise ValueError(
            f"{fn}: `example_ids` must have shape [batch, seq], got {jnp.shape(example_ids)}."
        )
    check_int(fn, "example_ids", example_ids)
    if is_concrete(example_ids):
        e = np.asarray(example_ids)
        if e.size and e.min() < 0:
            idx = tuple(int(i) for i in np.argwhere(e < 0)[0])
            raise ValueError(
                f"{fn}: `example_ids` must be >= 0 (0 = padding), got {e[idx].item()} at "
                f"index {idx}."
            )
    return jnp.asarray(example_ids)


def packed_causal_mask(example_ids: jax.Array, bidirectional: jax.Array | None = None) -> jax.Array:
    """Attention mask of rows that pack several examples: causal, or prefix-LM / UniLM.

    ``example_ids`` numbers the examples of a row (0 = padding) and ``bidirectional``
    marks the prefix positions that attend to each other both ways::

        mask[i, j] = e_i == e_j != 0  and  (j <= i  or  (b_i and b_j))

    so a token only sees tokens of its own example: causally, plus the whole prefix for
    a prefix token. Without ``bidirectional`` it is a causal LM mask per example; a
    packed UniLM batch (rows ``[CLS] src [SEP] tgt [SEP] [CLS] src ...``) uses
    ``bidirectional=segment_ids == 0``, which equals :func:`unilm_mask` combined with
    the padding mask on each example alone. Padding rows and columns are all False.
    Pair it with :func:`packed_position_ids` and ``seq2seq_loss(...,
    example_ids=...)``.

    Args:
      example_ids: integer ``[batch, seq]``, ``>= 0``; each example a contiguous run of
        one id (e.g. 1, 2, ... in each row), 0 on padding.
      bidirectional: optional boolean ``[batch, seq]``, True on prefix positions.

    Returns:
      Boolean mask ``[batch, 1, seq, seq]``.

    Raises:
      ValueError: wrong shapes, or (concrete input) negative example ids.
      TypeError: non-integer ``example_ids`` or non-boolean ``bidirectional``.

    Reference: t5x ``make_decoder_mask`` (``decoder_segment_ids``,
    ``decoder_causal_attention``); Raffel et al., "T5" (2019), arXiv:1910.10683, packing;
    Dong et al., UniLM, arXiv:1905.03197.

    Example:
      >>> import jax.numpy as jnp
      >>> e = jnp.array([[1, 1, 1, 2, 2, 0]])
      >>> seg = jnp.array([[0, 0, 1, 0, 1, 0]])
      >>> packed_causal_mask(e, bidirectional=seg == 0).astype(int)[0, 0]
      Array([[1, 1, 0, 0, 0, 0],
             [1, 1, 0, 0, 0, 0],
             [1, 1, 1, 0, 0, 0],
             [0, 0, 0, 1, 0, 0],
             [0, 0, 0, 1, 1, 0],
             [0, 0, 0, 0, 0, 0]], dtype=int32)
    """
    fn = "packed_causal_mask"
    e = _check_example_ids(fn, example_ids)
    seq = e.shape[1]
    same = (e[:, :, None] == e[:, None, :]) & (e != 0)[:, :, None]
    idx = jnp.arange(seq)
    allowed = jnp.broadcast_to(idx[None, :] <= idx[:, None], same.shape)
    if bidirectional is not None:
        if jnp.shape(bidirectional) != e.shape:
            raise ValueError(
                f"{fn}: `bidirectional` must have the shape of example_ids {e.shape}, got "
                f"{jnp.shape(bidirectional)}."
            )
        if jnp.result_type(bidirectional) != jnp.bool_:
            raise TypeError(
                f"{fn}: `bidirectional` must be boolean (True on prefix positions), got "
                f"dtype {jnp.result_type(bidirectional)}."
            )
        b = jnp.asarray(bidirectional)
        allowed = allowed | (b[:, :, None] & b[:, None, :])
    return (same & allowed)[:, None]


def packed_position_ids(example_ids: jax.Array) -> jax.Array:
    """Position ids that restart at 0 at the start of every packed example.

    ``pos[t] = t - start(t)`` where ``start(t)`` is the first position of the run of
    equal example ids that holds ``t``; padding (id 0) gets position 0. Feed it as
    ``position_ids`` to :class:`flax_layers.BertModel` so that each example gets the
    positions it would have alone in its row.

    Args:
      example_ids: integer ``[batch, seq]`` as for :func:`packed_causal_mask`.

    Returns:
      int32 ``[batch, seq]``.

    Raises:
      ValueError / TypeError: as for :func:`packed_causal_mask`.

    Reference: t5x / seqio packing (``*_positions`` features); Raffel et al., "T5"
    (2019), arXiv:1910.10683.

    Example:
      >>> import jax.numpy as jnp
      >>> packed_position_ids(jnp.array([[1, 1, 1, 2, 2, 0, 0]])).tolist()
      [[0, 1, 2, 0, 1, 0, 0]]
    """
    e = _check_example_ids("packed_position_ids", example_ids)
    seq = e.shape[1]
    idx = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), e.shape)
    starts = jnp.concatenate([jnp.ones_like(e[:, :1], bool), e[:, 1:] != e[:, :-1]], axis=1)
    first = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return jnp.where(e != 0, idx - first, 0).astype(jnp.int32)


def combine_masks(*masks: jax.Array | None, dtype: jnp.dtype = jnp.bool_) -> jax.Array | None:
    """Logical AND of attention masks with broadcasting; ``None`` entries are skipped.

    Like :func:`flax.nnx.combine_masks`, but broadcasts (e.g. ``[1, 1, q, k]`` with a key
    padding mask ``[b, 1, 1, k]``) and returns ``bool`` by default.

    Args:
      *masks: masks of equal rank and broadcast-compatible shapes, or ``None``.
      dtype: dtype of the result.

    Returns:
      The combined mask, or ``None`` when every input is ``None``.

    Raises:
      ValueError: masks of different ranks or shapes that do not broadcast.

    Reference: flax ``nnx.combine_masks``; Su, https://kexue.fm/archives/6933.

    Example:
      >>> import jax.numpy as jnp
      >>> pad = padding_mask(jnp.array([[3, 4, 0]]))
      >>> combine_masks(left_to_right_mask(3), None, pad).astype(int)[0, 0]
      Array([[1, 0, 0],
             [1, 1, 0],
             [1, 1, 0]], dtype=int32)
    """
    present = [m for m in masks if m is not None]
    if not present:
        return None
    ranks = {jnp.ndim(m) for m in present}
    if len(ranks) != 1:
        raise ValueError(
            f"masks must all have the same rank, got shapes {[jnp.shape(m) for m in present]}."
        )
    try:
        jnp.broadcast_shapes(*(jnp.shape(m) for m in present))
    except ValueError as err:
        raise ValueError(
            f"mask shapes do not broadcast: {[jnp.shape(m) for m in present]}."
        ) from err
    out = jnp.asarray(present[0], dtype=bool)
    for m in present[1:]:
        out = jnp.logical_and(out, jnp.asarray(m, dtype=bool))
    return out.astype(dtype)


def mask_to_bias(mask: jax.Array, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """Additive attention bias: 0 where the mask is True, a large finite negative elsewhere.

    The negative value is ``-0.7 * finfo(dtype).max`` (as in
    :func:`jax.nn.dot_product_attention`), so adding it to attention logits of ordinary
    size cannot overflow to ``-inf``, even in fp16/bf16, and a fully masked row stays
    finite (uniform weights, no NaN).

    Args:
      mask: boolean mask of any shape.
      dtype: floating compute dtype of the attention logits.

    Returns:
      Array of the mask's shape in ``dtype``.

    Reference: Vaswani et al. (2017); JAX ``jax.nn.dot_product_attention``.

    Example:
      >>> import jax.numpy as jnp
      >>> b = mask_to_bias(jnp.array([True, False]), jnp.float16)
      >>> b.dtype, bool(b[0] == 0), bool(jnp.isfinite(b[1] - 1000))
      (dtype('float16'), True, True)
    """
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}.")
    neg = jnp.asarray(-0.7 * float(jnp.finfo(dtype).max), dtype=dtype)
    return jnp.where(jnp.asarray(mask, dtype=bool), jnp.zeros((), dtype), neg)


def seq2seq_loss(
    logits: jax.Array,
    ids: jax.Array,
    segment_ids: jax.Array,
    mask: jax.Array | None = None,
    *,
    example_ids: jax.Array | None = None,
) -> jax.Array:
    """UniLM seq2seq cross-entropy: predict ``ids[:, 1:]`` from ``logits[:, :-1]`` on the target.

    With ``w[b, t] = segment_ids[b, t + 1] * mask[b, t + 1]`` (the *predicted* position must
    be a real target token) and ``ce[b, t] = -log_softmax(logits[b, t])[ids[b, t + 1]]``::

        loss[b] = sum_t w[b, t] ce[b, t] / max(sum_t w[b, t], 1)

    i.e. the mean over each example's target tokens (0 for an example without any).
    ``loss.mean()`` averages examples equally; bert4keras's token-level mean is
    ``(loss * n).sum() / n.sum()`` with ``n = w.sum(-1)``. The ``[SEP]`` ending the target
    is part of segment 1, so predicting it is trained. Computed in at least float32; masked
    positions are sanitised, so ``-inf`` (or NaN) logits there give no NaN values or
    gradients, while a NaN logit at a weighted position makes that example's loss NaN.

    Packed rows (several examples per row, numbered by ``example_ids``, see
    :func:`packed_causal_mask`): a position only predicts a token of its own example
    (``w[b, t]`` also needs ``e[b, t] == e[b, t + 1] != 0``) and each example is averaged
    over its own target tokens; the row's value is the *sum* of its examples' means::

        loss[b] = sum_k sum_{t: e[b, t+1] = k} w[b, t] ce[b, t] / max(n_k, 1),
        n_k = sum_{t: e[b, t+1] = k} w[b, t]

    With one example per row this is the formula above. The mean over examples that the
    unpacked ``loss.mean()`` gives is then ``loss.sum() / num_examples`` (for example
    ids ``1..n`` in each row, ``num_examples = example_ids.max(axis=1).sum()``).

    Args:
      logits: ``[batch, seq, vocab]`` model outputs.
      ids: integer ``[batch, seq]`` token ids in ``[0, vocab)``.
      segment_ids: ``[batch, seq]`` of 0 (source) / 1 (target), integer or bool.
      mask: optional ``[batch, seq]`` bool/0-1 padding mask (True = real token).
      example_ids: optional integer ``[batch, seq]`` example numbers of packed rows
        (0 = padding).

    Returns:
      Per-example loss ``[batch]`` (per row: the sum of its examples' losses when
      ``example_ids`` is given) (float32, or wider if ``logits`` is wider). Under
      ``jit`` an example whose ``ids`` leave ``[0, vocab)``, or whose ``segment_ids`` or
      ``mask`` leave ``{0, 1}``, gets a NaN loss (concrete inputs raise instead).

    Raises:
      TypeError: non-floating ``logits`` or non-integer ``ids``.
      ValueError: bad shapes; concrete ``ids`` outside ``[0, vocab)`` or
        ``segment_ids``/``mask`` values outside ``{0, 1}`` (the message names the
        argument, the range and the first offending value).

    Reference: Dong et al., UniLM, arXiv:1905.03197; Su, https://kexue.fm/archives/6933;
    bert4keras ``examples/task_seq2seq_autotitle.py``.

    Example:
      >>> import jax.numpy as jnp
      >>> logits = jnp.zeros((1, 4, 5))
      >>> loss = seq2seq_loss(logits, jnp.array([[1, 2, 3, 4]]), jnp.array([[0, 0, 1, 1]]))
      >>> print(round(float(loss[0]), 4))  # uniform over 5 classes: log(5)
      1.6094
    """
    fn = "seq2seq_loss"
    if jnp.ndim(logits) != 3:
        raise ValueError(f"logits must have shape [batch, seq, vocab], got {jnp.shape(logits)}.")
    if not jnp.issubdtype(jnp.result_type(logits), jnp.floating):
        raise TypeError(f"{fn}: `logits` must be floating, got dtype {jnp.result_type(logits)}.")
    _check_rank("ids", ids, 2, "[batch, seq]")
    _check_rank("segment_ids", segment_ids, 2, "[batch, seq]")
    check_int("seq2seq_loss", "ids", ids)
    if jnp.shape(ids) != jnp.shape(logits)[:2] or jnp.shape(segment_ids) != jnp.shape(ids):
        raise ValueError(
            "logits [batch, seq, vocab], ids and segment_ids [batch, seq] must agree, got "
            f"{jnp.shape(logits)}, {jnp.shape(ids)}, {jnp.shape(segment_ids)}."
        )
    if mask is not None and jnp.shape(mask) != jnp.shape(ids):
        raise ValueError(f"mask must have shape {jnp.shape(ids)}, got {jnp.shape(mask)}.")
    if example_ids is not None:
        example_ids = _check_example_ids(fn, example_ids)
        if example_ids.shape != jnp.shape(ids):
            raise ValueError(
                f"{fn}: `example_ids` must have shape {jnp.shape(ids)}, got {example_ids.shape}."
            )
    if jnp.shape(ids)[1] < 2:
        raise ValueError(f"seq must be at least 2 to shift targets, got {jnp.shape(ids)[1]}.")
    vocab = jnp.shape(logits)[2]
    check_ids(fn, "ids", ids, vocab, "vocab")
    bad = [bad_rows(ids, vocab)]
    for name, flags in (("segment_ids", segment_ids), ("mask", mask)):
        if flags is not None and jnp.result_type(flags) != jnp.bool_:  # 0/1 values
            check_ids(fn, name, flags, 2)
            bad.append(bad_rows(flags, 2))
    mask = None if mask is None else jnp.asarray(mask)
    compute = jnp.promote_types(jnp.result_type(logits), jnp.float32)
    weights = jnp.asarray(segment_ids)[:, 1:].astype(compute)
    if mask is not None:
        weights = weights * mask[:, 1:].astype(compute)
    if example_ids is not None:
        e = example_ids
        weights = weights * ((e[:, 1:] == e[:, :-1]) & (e[:, 1:] != 0)).astype(compute)
    active = weights > 0
    x = jnp.where(active[..., None], jnp.asarray(logits)[:, :-1].astype(compute), 0)
    logp = jax.nn.log_softmax(x, axis=-1)
    targets = safe_ids(jnp.asarray(ids)[:, 1:], vocab)  # out-of-range rows: NaN below
    ce = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    ce = jnp.where(active, ce, 0)
    if example_ids is None:
        count = weights.sum(axis=-1)
        loss = (ce * weights).sum(axis=-1) / jnp.maximum(count, 1)
    else:  # n_k of each predicted position's example, [batch, seq - 1]
        target_example = example_ids[:, 1:]
        same = target_example[:, :, None] == target_example[:, None, :]
        count = jnp.einsum("bts,bs->bt", same.astype(compute), weights)
        loss = (ce * weights / jnp.maximum(count, 1)).sum(axis=-1)
    return poison(loss, any_rows(*bad))
