"""Non-autoregressive reading comprehension with a masked language model (MLM).

A BERT MLM reads ``[CLS] [MASK]×L [SEP] question [SEP] passage [SEP]`` and predicts all
``L`` answer slots at once (target: the answer tokens, then ``[SEP]``, then padding).
Decoding reads the ``L`` slot distributions left to right and only allows tokens that
keep the answer a contiguous span of the passage, plus ``[SEP]`` (stop); an answer's
score is the mean probability of its chosen tokens (the ``[SEP]`` step included). Over
several passages an answer scores ``Σ s² / (Σ s + 1)``.

Three parts, kept apart on purpose:

* host-side builders (:func:`build_mlm_reading_inputs`, :func:`build_mlm_reading_batch`,
  :func:`build_mlm_reading_targets`) that turn token-id lists into fixed-shape numpy
  arrays;
* the jitted, batched, fixed-shape decoder :func:`passage_constrained_decode`;
* host-side multi-passage aggregation :func:`aggregate_answer_scores`.

Reference: Su Jianlin, "基于MLM的阅读理解问答" (kexue.fm, 2019-2020),
https://kexue.fm/archives/7148, and bert4keras
``examples/task_reading_comprehension_by_mlm.py`` (SogouQA final score 0.774).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flax_layers._compat import renamed_arguments
from flax_layers._ids import any_rows, bad_rows, check_ids

__all__ = [
    "MLMReadingInputs",
    "PassageAnswer",
    "aggregate_answer_scores",
    "build_mlm_reading_batch",
    "build_mlm_reading_inputs",
    "build_mlm_reading_targets",
    "passage_constrained_decode",
]


class MLMReadingInputs(NamedTuple):
    """Fixed-shape model inputs for MLM reading comprehension (numpy ``int32``).

    Attributes:
      input_ids: ``[..., seq_len]`` ``[CLS] [MASK]×L [SEP] question [SEP] passage [SEP]``
        then ``pad_token_id``.
      segment_ids: ``[..., seq_len]`` segment ids (all 0 by default, see the builder).
      answer_positions: ``[..., L]`` indices of the ``L`` mask slots (``1..L``).
      passage_ids: ``[..., seq_len - L - 4]`` the (truncated) passage, ``pad_token_id`` after it;
        feed it to :func:`passage_constrained_decode`.
      passage_length: ``[...]`` number of passage tokens kept.
      passage_offset: ``[...]`` index of the first passage token in ``input_ids``.

    Reference: bert4keras ``examples/task_reading_comprehension_by_mlm.py``.

    Example:
      >>> x = build_mlm_reading_inputs([7], [20], answer_len=1, seq_len=7, cls_token_id=1,
      ...                              sep_token_id=2, mask_token_id=3)
      >>> x._fields[:3], x.input_ids.tolist()
      (('input_ids', 'segment_ids', 'answer_positions'), [1, 3, 2, 7, 2, 20, 2])
    """

    input_ids: np.ndarray
    segment_ids: np.ndarray
    answer_positions: np.ndarray
    passage_ids: np.ndarray
    passage_length: np.ndarray
    passage_offset: np.ndarray


def _check_ids(name: str, ids: Sequence[int]) -> list[int]:
    arr = np.asarray(ids)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a flat sequence of int token ids, got {ids!r}.")
    if arr.size and arr.min() < 0:
        raise ValueError(
            f"{name} must hold token ids >= 0, got {int(arr.min())} at index {int(np.argmin(arr))}."
        )
    return [int(t) for t in arr]


def _check_special(**ids: int) -> None:
    for name, value in ids.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a token id (an int >= 0), got {value!r}.")


_BUILDER_RENAMES = dict(
    max_len="seq_len",
    cls_id="cls_token_id",
    sep_id="sep_token_id",
    mask_id="mask_token_id",
    pad_id="pad_token_id",
)


@renamed_arguments(**_BUILDER_RENAMES)
def build_mlm_reading_inputs(
    question_ids: Sequence[int],
    passage_ids: Sequence[int],
    *,
    answer_len: int,
    seq_len: int,
    cls_token_id: int,
    sep_token_id: int,
    mask_token_id: int,
    pad_token_id: int = 0,
    max_question_len: int | None = None,
    passage_segment_id: int = 0,
) -> MLMReadingInputs:
    """Build ``[CLS] [MASK]×L [SEP] question [SEP] passage [SEP]`` as fixed-shape arrays.

    Truncation: the question is cut to its first ``max_question_len`` tokens (no limit by
    default); the passage keeps its *first* tokens, as many as fit in
    ``seq_len - L - 4 - len(question)`` (the tail is dropped, like bert4keras's
    ``tokenizer.encode(..., max_length)``). Segment ids: the article's code
    (bert4keras) uses segment 0 for every token, which is the default; set
    ``passage_segment_id=1`` to mark ``passage [SEP]`` as the second segment instead.
    Padding gets segment 0.

    Args:
      question_ids: question token ids, without special tokens.
      passage_ids: passage token ids, without special tokens.
      answer_len: ``L``, the number of ``[MASK]`` answer slots (answer length + 1 for the
        closing ``[SEP]``).
      seq_len: total fixed length ``T``.
      cls_token_id: ``[CLS]`` id.
      sep_token_id: ``[SEP]`` id.
      mask_token_id: ``[MASK]`` id.
      pad_token_id: padding id.
      max_question_len: optional cap on question tokens.
      passage_segment_id: segment id of the passage and its final ``[SEP]`` (0 or 1).

    Returns:
      :class:`MLMReadingInputs` with ``input_ids``/``segment_ids`` ``[T]``,
      ``answer_positions`` ``[L]``, ``passage_ids`` ``[T - L - 4]`` and scalar
      ``passage_length`` / ``passage_offset``.

    Raises:
      ValueError: non-positive lengths, negative token ids, or a question that leaves no
        room (``seq_len`` must be at least ``L + 4 + len(question)``).

    Reference: bert4keras ``examples/task_reading_comprehension_by_mlm.py``;
    https://kexue.fm/archives/7148.

    Example:
      >>> x = build_mlm_reading_inputs([7, 8], [20, 21, 22], answer_len=2, seq_len=12,
      ...                              cls_token_id=1, sep_token_id=2, mask_token_id=3)
      >>> x.input_ids.tolist()
      [1, 3, 3, 2, 7, 8, 2, 20, 21, 22, 2, 0]
      >>> x.answer_positions.tolist(), int(x.passage_length), int(x.passage_offset)
      ([1, 2], 3, 7)
    """
    question = _check_ids("question_ids", question_ids)
    passage = _check_ids("passage_ids", passage_ids)
    _check_special(
        cls_token_id=cls_token_id,
        sep_token_id=sep_token_id,
        mask_token_id=mask_token_id,
        pad_token_id=pad_token_id,
    )
    if answer_len < 1:
        raise ValueError(f"answer_len must be >= 1, got {answer_len}.")
    if passage_segment_id not in (0, 1):
        raise ValueError(f"passage_segment_id must be 0 or 1, got {passage_segment_id}.")
    if max_question_len is not None:
        if max_question_len < 0:
            raise ValueError(f"max_question_len must be >= 0, got {max_question_len}.")
        question = question[:max_question_len]
    room = seq_len - answer_len - 4 - len(question)
    if room < 0:
        raise ValueError(
            f"seq_len={seq_len} leaves no room: it must be >= answer_len + 4 + "
            f"len(question) = {answer_len + 4 + len(question)}; set max_question_len."
        )
    passage = passage[:room]
    head = (
        [cls_token_id] + [mask_token_id] * answer_len + [sep_token_id] + question + [sep_token_id]
    )
    tail = passage + [sep_token_id]
    ids = head + tail
    input_ids = np.full((seq_len,), pad_token_id, dtype=np.int32)
    input_ids[: len(ids)] = ids
    segment_ids = np.zeros((seq_len,), dtype=np.int32)
    segment_ids[len(head) : len(ids)] = passage_segment_id
    passage_out = np.full((seq_len - answer_len - 4,), pad_token_id, dtype=np.int32)
    passage_out[: len(passage)] = passage
    return MLMReadingInputs(
        input_ids=input_ids,
        segment_ids=segment_ids,
        answer_positions=np.arange(1, answer_len + 1, dtype=np.int32),
        passage_ids=passage_out,
        passage_length=np.asarray(len(passage), dtype=np.int32),
        passage_offset=np.asarray(len(head), dtype=np.int32),
    )


@renamed_arguments(**_BUILDER_RENAMES)
def build_mlm_reading_batch(
    question_ids: Sequence[Sequence[int]],
    passage_ids: Sequence[Sequence[int]],
    **kwargs,
) -> MLMReadingInputs:
    """Stack :func:`build_mlm_reading_inputs` over (question, passage) pairs.

    Use it for the several passages of one question (the same question repeated) or for
    a training batch; every field gains a leading batch axis ``B``.

    Args:
      question_ids: ``B`` question id lists.
      passage_ids: ``B`` passage id lists.
      **kwargs: keyword arguments of :func:`build_mlm_reading_inputs`.

    Returns:
      :class:`MLMReadingInputs` with arrays ``[B, ...]``.

    Reference: bert4keras ``examples/task_reading_comprehension_by_mlm.py``.

    Example:
      >>> b = build_mlm_reading_batch([[7], [7]], [[20, 21], [22]], answer_len=2,
      ...                             seq_len=10, cls_token_id=1, sep_token_id=2, mask_token_id=3)
      >>> b.input_ids.shape, b.passage_ids.shape, b.passage_length.tolist()
      ((2, 10), (2, 4), [2, 1])
    """
    if len(question_ids) != len(passage_ids):
        raise ValueError(
            f"question_ids and passage_ids must have the same length, got "
            f"{len(question_ids)} and {len(passage_ids)}."
        )
    if not passage_ids:
        raise ValueError("need at least one (question, passage) pair.")
    rows = [build_mlm_reading_inputs(q, p, **kwargs) for q, p in zip(question_ids, passage_ids)]
    return MLMReadingInputs(*(np.stack(field) for field in zip(*rows)))


@renamed_arguments(sep_id="sep_token_id", pad_id="pad_token_id")
def build_mlm_reading_targets(
    answer_ids: Sequence[int], *, answer_len: int, sep_token_id: int, pad_token_id: int = 0
) -> np.ndarray:
    """Slot targets: the answer tokens, then ``[SEP]``, then padding; length ``L``.

    The answer is cut to its first ``L - 1`` tokens so that the closing ``[SEP]`` always
    fits (as bert4keras encodes answers with ``max_length = L + 1`` and drops ``[CLS]``).
    An empty answer ("no answer in this passage") is ``[SEP]`` then padding. Train with
    cross-entropy on the slot logits ``logits[:, 1 : L + 1]`` ignoring ``pad_token_id`` targets.

    Args:
      answer_ids: answer token ids, without special tokens.
      answer_len: ``L``.
      sep_token_id: ``[SEP]`` id.
      pad_token_id: padding id.

    Returns:
      ``int32`` array ``[L]``.

    Raises:
      ValueError: ``answer_len < 1`` or negative token ids.

    Reference: bert4keras ``examples/task_reading_comprehension_by_mlm.py``.

    Example:
      >>> build_mlm_reading_targets([20, 21], answer_len=4, sep_token_id=2).tolist()
      [20, 21, 2, 0]
    """
    answer = _check_ids("answer_ids", answer_ids)
    _check_special(sep_token_id=sep_token_id, pad_token_id=pad_token_id)
    if answer_len < 1:
        raise ValueError(f"answer_len must be >= 1, got {answer_len}.")
    out = np.full((answer_len,), pad_token_id, dtype=np.int32)
    kept = answer[: answer_len - 1] + [sep_token_id]
    out[: len(kept)] = kept
    return out


class PassageAnswer(NamedTuple):
    """Result of :func:`passage_constrained_decode` (all arrays, batch ``B``).

    Attributes:
      tokens: ``[B, L]`` answer token ids, ``pad_token_id`` after the answer (no ``[SEP]``).
      lengths: ``[B]`` answer lengths (0 = empty answer, ``[SEP]`` chosen first).
      start: ``[B]`` first passage position of the answer span (``-1`` when empty); the
        span is ``passage[start : start + length]``.
      start_mask: ``[B, P]`` every passage position ``s`` with
        ``passage[s : s + length] == answer`` (all False when empty).
      scores: ``[B]`` mean probability of the chosen tokens, ``[SEP]`` step included.

    Reference: Su, https://kexue.fm/archives/7148.

    Example:
      >>> import jax.numpy as jnp
      >>> out = passage_constrained_decode(jnp.full((1, 2, 4), 0.25), jnp.array([[3]]),
      ...                                  sep_token_id=2)
      >>> out.tokens.tolist(), out.lengths.tolist(), out.start.tolist()  # ties: smallest id
      ([[0, 0]], [0], [-1])
    """

    tokens: jax.Array
    lengths: jax.Array
    start: jax.Array
    start_mask: jax.Array
    scores: jax.Array


@functools.partial(jax.jit, static_argnames=("sep_token_id", "pad_token_id", "log_probs"))
def _decode(probs, passage_ids, passage_length, *, sep_token_id, pad_token_id, log_probs):
    batch, num_slots, vocab = probs.shape
    plen = passage_ids.shape[1]
    positions = jnp.arange(plen)
    batch_idx = jnp.arange(batch)[:, None]
    valid = positions[None, :] < passage_length[:, None]  # [B, P]
    lowest = jnp.finfo(probs.dtype).min
    # traced ids or lengths out of range: the example is done from the start, score NaN
    bad = any_rows(bad_rows(passage_ids, vocab), bad_rows(passage_length, plen + 1))
    bad = jnp.zeros((batch,), bool) if bad is None else bad

    def step(carry, inputs):
        alive, done = carry  # alive[b, s]: passage[s : s + i] == prefix
        i, p_i = inputs  # p_i [B, V]
        pos = positions + i
        cand = alive & (pos[None, :] < passage_length[:, None]) & ~done[:, None]
        tok_at = jnp.take_along_axis(passage_ids, jnp.minimum(pos, plen - 1)[None, :], axis=1)
        tok_at = jnp.broadcast_to(tok_at, (batch, plen))
        allowed = jnp.zeros((batch, vocab), dtype=bool)
        allowed = allowed.at[batch_idx, jnp.where(cand, tok_at, vocab)].set(True, mode="drop")
        allowed = allowed.at[:, sep_token_id].set(True)
        key = jnp.where(allowed, jnp.maximum(p_i, lowest), -jnp.inf)
        choice = jnp.argmax(key, axis=-1)
        chosen = jnp.take_along_axis(p_i, choice[:, None], axis=-1)[:, 0].astype(jnp.float32)
        if log_probs:
            chosen = jnp.exp(chosen)
        active = ~done
        stop = choice == sep_token_id
        emits = active & ~stop
        new_alive = jnp.where(emits[:, None], cand & (tok_at == choice[:, None]), alive)
        return (new_alive, done | stop), (choice, chosen, active, emits)

    init = (valid, bad)
    xs = (jnp.arange(num_slots), jnp.swapaxes(probs, 0, 1))
    (alive, _), (choice, chosen, active, emits) = jax.lax.scan(step, init, xs)
    choice, chosen, active, emits = (jnp.swapaxes(a, 0, 1) for a in (choice, chosen, active, emits))
    lengths = emits.sum(axis=1).astype(jnp.int32)
    tokens = jnp.where(emits, choice, pad_token_id).astype(passage_ids.dtype)
    steps = active.sum(axis=1)
    scores = jnp.where(active, chosen, 0).sum(axis=1) / jnp.maximum(steps, 1)
    scores = jnp.where(bad, jnp.nan, scores)
    start_mask = alive & (lengths > 0)[:, None]
    start = jnp.where(lengths > 0, jnp.argmax(start_mask, axis=1), -1).astype(jnp.int32)
    return PassageAnswer(tokens, lengths, start, start_mask, scores)


@renamed_arguments(passage_lengths="passage_length", sep_id="sep_token_id", pad_id="pad_token_id")
def passage_constrained_decode(
    probs: jax.Array,
    passage_ids: jax.Array,
    passage_length: jax.Array | None = None,
    *,
    sep_token_id: int,
    pad_token_id: int = 0,
    log_probs: bool = False,
) -> PassageAnswer:
    """Decode the ``L`` answer slots into a contiguous passage span (or the empty answer).

    Left to right over the slots, keeping the boolean set ``S_i`` of passage starts ``s``
    with ``passage[s : s + i] == prefix`` (``S_0`` = every position). At slot ``i`` the
    allowed tokens are ``{passage[s + i] : s in S_i, s + i < len}`` plus ``[SEP]`` (a
    prefix that reaches the passage end, or a passage shorter than the prefix, leaves
    only ``[SEP]``). The best allowed token is taken (ties: smallest id); ``[SEP]`` stops.
    The score is ``mean_k p_k`` over the chosen tokens including the ``[SEP]`` step (over
    all ``L`` steps if no ``[SEP]`` was chosen). Fixed shapes, ``lax.scan`` over slots,
    one ``[B, V]`` scatter per slot; the result is always a contiguous span or empty.

    Args:
      probs: ``[B, L, V]`` slot probabilities (softmax of ``logits[:, 1 : L + 1]``), or
        log-probabilities with ``log_probs=True``.
      passage_ids: integer ``[B, P]`` passage ids in ``[0, V)`` (e.g.
        ``MLMReadingInputs.passage_ids``).
      passage_length: integer ``[B]`` tokens of each passage to use, in ``[0, P]``;
        default ``P``.
      sep_token_id: ``[SEP]`` id (stop token).
      pad_token_id: id written after the answer in ``tokens``.
      log_probs: whether ``probs`` holds log-probabilities.

    Returns:
      :class:`PassageAnswer`. NaN probabilities at a token the decoder may choose make
      that example's score NaN. Under ``jit``, an example whose ``passage_ids`` leave
      ``[0, V)`` or whose length leaves ``[0, P]`` gets score NaN and the empty answer
      (length 0, start ``-1``); concrete inputs raise instead.

    Raises:
      TypeError: non-floating ``probs`` or non-integer ids / lengths.
      ValueError: wrong ranks, mismatched batch sizes, ``sep_token_id`` outside the vocabulary,
        concrete ``passage_ids`` outside ``[0, V)`` or ``passage_length`` outside
        ``[0, P]`` (the message names the argument, the range and the offending value).

    Reference: Su, https://kexue.fm/archives/7148; bert4keras
    ``examples/task_reading_comprehension_by_mlm.py`` (``gen_answer``).

    Example:
      >>> import jax.numpy as jnp
      >>> passage = jnp.array([[4, 5, 6, 5]])
      >>> p = jnp.full((1, 3, 8), 0.01)
      >>> p = p.at[0, 0, 5].set(0.9).at[0, 1, 7].set(0.8).at[0, 1, 6].set(0.5)
      >>> p = p.at[0, 2, 2].set(0.6)  # [SEP] = 2
      >>> out = passage_constrained_decode(p, passage, sep_token_id=2)
      >>> out.tokens.tolist(), out.lengths.tolist(), out.start.tolist()
      ([[5, 6, 0]], [2], [1])
      >>> print(round(float(out.scores[0]), 4))  # (0.9 + 0.5 + 0.6) / 3
      0.6667
    """
    if jnp.ndim(probs) != 3:
        raise ValueError(f"probs must have shape [batch, L, vocab], got {jnp.shape(probs)}.")
    if not jnp.issubdtype(jnp.result_type(probs), jnp.floating):
        raise TypeError(f"probs must be floating, got dtype {jnp.result_type(probs)}.")
    if jnp.ndim(passage_ids) != 2:
        raise ValueError(f"passage_ids must have shape [batch, P], got {jnp.shape(passage_ids)}.")
    if not jnp.issubdtype(jnp.result_type(passage_ids), jnp.integer):
        raise TypeError(f"passage_ids must be integer, got {jnp.result_type(passage_ids)}.")
    batch, _, vocab = jnp.shape(probs)
    if jnp.shape(passage_ids)[0] != batch:
        raise ValueError(f"passage_ids batch {jnp.shape(passage_ids)[0]} != probs batch {batch}.")
    if not 0 <= sep_token_id < vocab:
        raise ValueError(f"sep_token_id must be in [0, {vocab}), got {sep_token_id}.")
    plen = jnp.shape(passage_ids)[1]
    if passage_length is None:
        passage_length = jnp.full((batch,), plen, dtype=jnp.int32)
    elif jnp.shape(passage_length) != (batch,):
        raise ValueError(
            f"passage_length must have shape ({batch},), got {jnp.shape(passage_length)}."
        )
    elif not jnp.issubdtype(jnp.result_type(passage_length), jnp.integer):
        raise TypeError(f"passage_length must be integer, got {jnp.result_type(passage_length)}.")
    fn = "passage_constrained_decode"
    check_ids(fn, "passage_ids", passage_ids, vocab, "vocab")
    check_ids(fn, "passage_length", passage_length, plen + 1, "P + 1")
    return _decode(
        jnp.asarray(probs),
        jnp.asarray(passage_ids),
        jnp.asarray(passage_length),
        sep_token_id=int(sep_token_id),
        pad_token_id=int(pad_token_id),
        log_probs=bool(log_probs),
    )


def aggregate_answer_scores(
    tokens: np.ndarray | jax.Array,
    lengths: np.ndarray | jax.Array,
    scores: np.ndarray | jax.Array,
) -> dict[tuple[int, ...], float]:
    """Merge the answers of several passages: ``score(a) = Σ s² / (Σ s + 1)``.

    The sums run over the passages whose decoded answer is ``a``; empty answers are
    dropped (as in bert4keras). The formula rewards answers that several passages agree
    on while the ``+ 1`` damps answers seen once with a low score. Host-side Python on
    the (small) decoder outputs, outside any jit.

    Args:
      tokens: ``[B, L]`` answer ids (:attr:`PassageAnswer.tokens`).
      lengths: ``[B]`` answer lengths.
      scores: ``[B]`` per-passage scores.

    Returns:
      ``{answer token tuple: aggregated score}`` ordered best first (empty dict when
      every passage gave the empty answer). An answer with a NaN score from any of its
      passages aggregates to NaN and comes last.

    Reference: Su, https://kexue.fm/archives/7148; bert4keras
    ``examples/task_reading_comprehension_by_mlm.py``.

    Example:
      >>> import numpy as np
      >>> toks = np.array([[5, 6], [5, 6], [9, 0]])
      >>> agg = aggregate_answer_scores(toks, np.array([2, 2, 1]), np.array([0.8, 0.6, 0.9]))
      >>> {k: round(v, 4) for k, v in agg.items()}  # (0.64+0.36)/2.4, 0.81/1.9
      {(9,): 0.4263, (5, 6): 0.4167}
    """
    tokens = np.asarray(tokens)
    lengths = np.asarray(lengths)
    scores = np.asarray(scores, dtype=np.float64)
    if tokens.ndim != 2 or lengths.shape != tokens.shape[:1] or scores.shape != lengths.shape:
        raise ValueError(
            "expected tokens [B, L], lengths [B], scores [B]; got "
            f"{tokens.shape}, {lengths.shape}, {scores.shape}."
        )
    groups: dict[tuple[int, ...], list[float]] = {}
    for row, n, s in zip(tokens, lengths, scores):
        if n > 0:
            groups.setdefault(tuple(int(t) for t in row[: int(n)]), []).append(float(s))
    merged = {a: sum(x * x for x in v) / (sum(v) + 1.0) for a, v in groups.items()}
    # best first; a NaN score (from a NaN decoder score) stays NaN and sorts last
    return dict(sorted(merged.items(), key=lambda kv: (np.isnan(kv[1]), -kv[1])))
