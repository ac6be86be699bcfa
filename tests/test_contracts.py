"""Reliability contracts of the layers and losses: one row per contract.

A contract says what a public function does with one class of awkward input (non-finite
values, out-of-range ids, wrong shapes): the documented result or a clear error, never a
finite number made from a non-finite or invalid input. Each row holds the input class,
the promised behaviour and a check; most checks are hypothesis property tests against
float64 brute-force references or closed forms (random shapes, masks, NaN / inf at
random positions, out-of-range ids).

:func:`render_table` renders the rows as the markdown table ``| input | behaviour |`` of
the README section between ``<!-- reliability:begin -->`` and ``<!-- reliability:end
-->``; :func:`test_readme_table_matches_contracts` keeps the two equal, and
``python -m tests.test_contracts --readme`` rewrites the section in place.

Adding contracts (the optimizers', say): write a check (a function without arguments,
usually a hypothesis test) and register it with ``@contract(input, behaviour)``; it runs
as ``test_contract[<name>]`` and appears as a README row, in registration order.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import re
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from colabs import sync
from flax_layers import (
    BertConfig,
    BertModel,
    allowed_transitions,
    combine_masks,
    crf_log_likelihood,
    mask_transitions,
    masked_softmax,
    passage_constrained_decode,
    seq2seq_loss,
    unilm_beam_search,
    unilm_greedy_generate,
    unilm_mask,
)
from optax_contrib import (
    multilabel_categorical_crossentropy,
    multilabel_predict,
    multilabel_probabilities,
    sparse_multilabel_categorical_crossentropy,
)
from tests import test_adafactor as adafactor_tests
from tests import test_lazy as lazy_tests
from tests import test_lookahead as lookahead_tests
from tests import test_transform_matrix as matrix_tests
from tests.chain_reference import Brute

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"

NAN, INF = float("nan"), float("inf")
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(SETTINGS, max_examples=10)  # checks that run a model or a decoder


# --------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class Contract:
    """One row: ``input`` and ``behaviour`` are markdown; ``check`` raises on a breach."""

    name: str
    input: str
    behaviour: str
    check: Callable[[], None]


CONTRACTS: list[Contract] = []


def contract(input: str, behaviour: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Registers the decorated check as a contract row named after the function."""

    def register(check: Callable[[], None]) -> Callable[[], None]:
        CONTRACTS.append(Contract(check.__name__, input, behaviour, check))
        return check

    return register


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_table(rows: list[Contract] | None = None) -> str:
    """The markdown table ``| input | behaviour |``, one line per contract."""
    rows = CONTRACTS if rows is None else rows
    lines = ["| input | behaviour |", "| --- | --- |"]
    lines += [f"| {_cell(r.input)} | {_cell(r.behaviour)} |" for r in rows]
    return "\n".join(lines)


def rewrite_readme(path: pathlib.Path = README) -> bool:
    """Replaces the README section between the markers by :func:`render_table`.

    Returns whether the file changed; raises ``ValueError`` without the markers.
    """
    text = path.read_text(encoding="utf-8")
    new = sync.replace_section(text, BEGIN, END, render_table(), "Reliability table")
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


# --------------------------------------------------------------------------- ZLPR


def _ref_zlpr(s, t, s0=0.0, keep=None):
    """Documented ZLPR loss and gradient ``d loss / d s`` per row, float64 loops.

    ``log(1 + Σ_{t<1} (1 - t) e^{z}) + log(1 + Σ_{t>0} t e^{-z})`` with ``z = s - s0``
    over the included classes (``keep`` and ``s != -inf``). A ``+inf`` term makes its
    sum ``+inf`` with the gradient shared equally by the ``+inf`` terms (the limit of
    the softmax weights). Rows with a NaN logit or label in an included class: NaN.
    """
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
    z = s - np.broadcast_to(np.asarray(s0, np.float64), s.shape)
    loss, grad = np.zeros(s.shape[0]), np.zeros(s.shape)
    for b in range(s.shape[0]):
        inc = [i for i in range(s.shape[1]) if (keep is None or keep[b, i]) and s[b, i] != -INF]
        if any(np.isnan(z[b, i]) or np.isnan(t[b, i]) for i in inc):
            loss[b], grad[b] = NAN, NAN
            continue
        for sign, weights in ((1.0, 1 - t[b]), (-1.0, t[b])):  # negatives, positives
            terms = [(i, sign * z[b, i] + math.log(weights[i])) for i in inc if weights[i] > 0]
            terms = [(i, x) for i, x in terms if x > -INF]
            inf = [i for i, x in terms if x == INF]
            if inf:
                loss[b] = INF
                for i in inf:
                    grad[b, i] += sign / len(inf)
                continue
            m = max([0.0] + [x for _, x in terms])
            den = math.exp(-m) + sum(math.exp(x - m) for _, x in terms)
            loss[b] += m + math.log(den)
            for i, x in terms:
                grad[b, i] += sign * math.exp(x - m) / den
    return loss, grad


@jax.jit
def _zlpr_value_and_grad(s, t, s0, keep):
    def total(s):
        loss = multilabel_categorical_crossentropy(s, t, threshold=s0, where=keep)
        return loss.sum(), loss

    (_, loss), grad = jax.value_and_grad(total, has_aux=True)(s)
    return loss, grad


def _inject(rng, x, rate, values=(NAN, INF, -INF)):
    """``x`` with entries replaced, at random positions, by random non-finite values."""
    hit = rng.random(x.shape) < rate
    return np.where(hit, rng.choice(np.array(values), size=x.shape), x)


def _assert_rows_match(got, want, rtol=1e-5, atol=1e-5):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)  # inf == inf, NaN == NaN


@contract(
    "ZLPR loss (`multilabel_categorical_crossentropy`: hard or soft labels, `threshold`, "
    "`where`): NaN, `+inf` or `-inf` logits at random positions",
    "`-inf`: the class is dropped (zero gradient). `+inf` on a class with label < 1: loss "
    "`+inf` with a finite gradient. NaN logit or traced NaN soft label in an included "
    "class: NaN loss and gradient for that example. Other examples unchanged.",
)
@SETTINGS
@given(
    shape=st.sampled_from([(1, 1), (3, 6)]),
    seed=st.integers(0, 2**32 - 1),
    soft=st.booleans(),
    s0=st.sampled_from([0.0, 0.7]),
)
def zlpr_non_finite_logits(shape, seed, soft, s0):
    rng = np.random.default_rng(seed)
    s = _inject(rng, rng.normal(size=shape) * 3, 0.3).astype(np.float32)
    t = rng.random(shape) if soft else (rng.random(shape) < 0.4).astype(float)
    t[rng.random(shape) < 0.25] = 1.0
    if soft:
        t = _inject(rng, t, 0.1, (NAN,))  # a traced NaN label
    keep = rng.random(shape) < 0.8
    loss, grad = _zlpr_value_and_grad(s, t.astype(np.float32), s0, keep)
    want, want_grad = _ref_zlpr(s, t.astype(np.float32), s0, keep)
    _assert_rows_match(loss, want)
    finite_rows = ~np.isnan(want)
    np.testing.assert_allclose(grad[finite_rows], want_grad[finite_rows], rtol=1e-4, atol=1e-5)
    assert np.isnan(np.asarray(grad)[~finite_rows]).any(axis=-1).all()


_rowwise_value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(multilabel_categorical_crossentropy)))


@contract(
    "ZLPR loss in float16 or bfloat16 whose value exceeds the dtype's range (float16: past 65504)",
    "Computed in float32 and rounded back: `+inf` (honest overflow), with a finite "
    "gradient; never NaN. Losses within the range are the float32 value rounded.",
)
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([jnp.float16, jnp.bfloat16]))
def zlpr_half_precision_overflow(seed, dtype):
    rng = np.random.default_rng(seed)
    big = float(jnp.finfo(dtype).max)
    with np.errstate(over="ignore"):  # rounding to the dtype near its maximum
        s = np.array(jnp.asarray(rng.uniform(-1, 1, size=(4, 3)) * big, dtype))
    t = (rng.random((4, 3)) < 0.5).astype(np.float32)
    s[0], t[0] = [big, -big, 0.0], [0.0, 1.0, 0.0]  # true loss ~ 2 * max: overflows
    loss, grad = _rowwise_value_and_grad(jnp.asarray(s, dtype), jnp.asarray(t))
    want, want_grad = _ref_zlpr(np.asarray(s, np.float64), t)
    assert loss.dtype == dtype and grad.dtype == dtype
    with np.errstate(over="ignore"):  # the overflow to +inf is the point
        expected = np.asarray(jnp.asarray(want.astype(np.float32), dtype), np.float64)
    assert np.isinf(np.asarray(loss, np.float64)[0])
    np.testing.assert_array_equal(np.isinf(np.asarray(loss, np.float64)), np.isinf(expected))
    np.testing.assert_allclose(np.asarray(loss, np.float64), expected, rtol=1e-2)
    assert np.isfinite(np.asarray(grad, np.float64)).all()
    np.testing.assert_allclose(np.asarray(grad, np.float64), want_grad, atol=1e-2)


@jax.jit
def _sparse_and_dense(s, ids, hot):
    sparse = sparse_multilabel_categorical_crossentropy(s, ids)
    return sparse, multilabel_categorical_crossentropy(s, hot)


@contract(
    "Sparse ZLPR loss (`sparse_multilabel_categorical_crossentropy`): non-finite logits; "
    "label ids outside `[0, C)`",
    "Equals the dense loss on the multi-hot labels (same NaN / `+inf` rules). Concrete "
    "ids out of range: `ValueError` naming `label_ids`, the range and the values. Traced "
    "ids out of range: ignored like padding (documented: pads rows with fewer positives).",
)
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def zlpr_sparse_non_finite_and_ids(seed):
    rng = np.random.default_rng(seed)
    c = 6
    s = _inject(rng, rng.normal(size=(3, c)) * 3, 0.3).astype(np.float32)
    ids = rng.integers(-2, c + 2, size=(3, 3))
    valid = (ids >= 0) & (ids < c)
    hot = np.zeros((3, c), np.float32)
    for b, row in enumerate(ids):
        hot[b, row[(row >= 0) & (row < c)]] = 1.0
    sparse, dense = _sparse_and_dense(s, ids, hot)
    _assert_rows_match(sparse, dense, rtol=1e-6, atol=1e-6)
    _assert_rows_match(dense, _ref_zlpr(s, hot)[0])
    if not valid.all():
        bad = ids[~valid]
        with pytest.raises(ValueError, match=rf"`label_ids` must lie in \[0, {c}\).*{bad.min()}"):
            sparse_multilabel_categorical_crossentropy(s, ids)


@contract(
    "`multilabel_probabilities` / `multilabel_predict`: NaN and `±inf` scores",
    "Probabilities: NaN gives NaN, `+inf` gives 1, `-inf` gives 0, otherwise "
    "`sigmoid(2 (s - s0))`. Predict: `s > s0`, so NaN is not predicted (a boolean cannot "
    "carry NaN; documented), `+inf` is, `-inf` is not.",
)
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), s0=st.sampled_from([0.0, -0.5, 1.0]))
def zlpr_probabilities_and_predict(seed, s0):
    rng = np.random.default_rng(seed)
    s = _inject(rng, rng.normal(size=(3, 5)) * 4, 0.4).astype(np.float32)
    probs = np.asarray(jax.jit(multilabel_probabilities)(s, threshold=s0), np.float64)
    z = s.astype(np.float64) - s0
    with np.errstate(over="ignore"):
        want = 1 / (1 + np.exp(-2 * z))
    _assert_rows_match(probs, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(multilabel_predict(s, s0), s > s0)


# --------------------------------------------------------------------------- attention


_masked_softmax = jax.jit(masked_softmax)


@contract(
    "`masked_softmax` (BERT attention): NaN or `±inf` logits at random positions, random "
    "masks with fully masked rows",
    "Masked entries are ignored whatever they hold. A NaN or `+inf` at an allowed entry "
    "makes its row NaN. A fully masked row is all zeros. Other rows are the softmax over "
    "the allowed entries.",
)
@SETTINGS
@given(shape=st.sampled_from([(1, 1), (3, 4), (2, 7)]), seed=st.integers(0, 2**32 - 1))
def masked_softmax_non_finite(shape, seed):
    rng = np.random.default_rng(seed)
    z = _inject(rng, rng.normal(size=shape) * 3, 0.2).astype(np.float32)
    mask = rng.random(shape) < 0.7
    mask[0] = False
    got = np.asarray(_masked_softmax(z, mask), np.float64)
    for r in range(shape[0]):
        allowed = z[r][mask[r]].astype(np.float64)
        want = np.zeros(shape[1])
        if np.isnan(allowed).any() or (allowed == INF).any():
            want[:] = NAN
        elif allowed.size and allowed.max() > -INF:
            e = np.exp(allowed - allowed.max())
            want[mask[r]] = e / e.sum()
        _assert_rows_match(got[r], want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- BERT ids

_BERT_CFG = BertConfig(
    vocab_size=11,
    hidden_size=8,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=16,
    max_position_embeddings=8,
    type_vocab_size=2,
)
_BERT: list[BertModel] = []


def _bert() -> BertModel:
    if not _BERT:
        model = BertModel(_BERT_CFG, rngs=nnx.Rngs(0))
        model.eval()
        _BERT.append(model)
    return _BERT[0]


@nnx.jit
def _bert_forward(model, ids, types, positions):
    h = model(input_ids=ids, token_type_ids=types, position_ids=positions)
    return h, model.mlm_logits(h)


@contract(
    "`BertModel`: `input_ids`, `token_type_ids` or `position_ids` outside their tables "
    "(negative or too large)",
    "Concrete ids: `ValueError` naming the argument, the range and the first offending "
    "value. Under `jit`: NaN hidden states and MLM logits for that example only, never a "
    "wrapped or clipped lookup.",
)
@FEW
@given(seed=st.integers(0, 2**32 - 1))
def bert_out_of_range_ids(seed):
    rng = np.random.default_rng(seed)
    cfg, model = _BERT_CFG, _bert()
    b, t = 3, 5
    tables = {
        "input_ids": (rng.integers(0, cfg.vocab_size, (b, t)), cfg.vocab_size),
        "token_type_ids": (rng.integers(0, cfg.type_vocab_size, (b, t)), cfg.type_vocab_size),
        "position_ids": (np.tile(np.arange(t), (b, 1)), cfg.max_position_embeddings),
    }
    clean = {k: v.copy() for k, (v, _) in tables.items()}
    bad_rows = np.zeros(b, bool)
    for ids, num in tables.values():
        hit = rng.random((b, t)) < 0.08
        ids[hit] = rng.choice([-3, -1, num, num + 2], size=hit.sum())
        bad_rows |= hit.any(axis=1)
    h, logits = _bert_forward(model, *(tables[k][0] for k in tables))
    h_clean, logits_clean = _bert_forward(model, *clean.values())
    for out, ref in ((h, h_clean), (logits, logits_clean)):
        out = np.asarray(out)
        assert np.isnan(out[bad_rows]).all()
        np.testing.assert_array_equal(out[~bad_rows], np.asarray(ref)[~bad_rows])
    for name, (ids, num) in tables.items():
        bad = (ids < 0) | (ids >= num)
        if bad.any():
            args = {k: (v if k == name else clean[k]) for k, (v, _) in tables.items()}
            first = ids[tuple(np.argwhere(bad)[0])]
            with pytest.raises(
                ValueError, match=rf"`{name}` must lie in \[0, .*{num}\), got {first}"
            ):
                model(**args)


# --------------------------------------------------------------------------- seq2seq loss


def _ref_seq2seq(logits, ids, seg, mask):
    """Mean target cross-entropy per row (float64); NaN logits propagate where weighted."""
    logits = np.asarray(logits, np.float64)
    out = np.zeros(logits.shape[0])
    for b in range(logits.shape[0]):
        total, count = 0.0, 0.0
        for j in range(logits.shape[1] - 1):
            w = seg[b, j + 1] * mask[b, j + 1]
            if w:
                x = logits[b, j]
                m = np.max(x)
                lse = m + np.log(np.sum(np.exp(x - m)))
                total += w * (lse - x[ids[b, j + 1]])
                count += w
        out[b] = total / max(count, 1)
    return out


_seq2seq_loss = jax.jit(seq2seq_loss)


@contract(
    "`seq2seq_loss`: `ids` outside `[0, vocab)`, `segment_ids` or `mask` outside {0, 1}, "
    "NaN logits at random positions",
    "Concrete: `ValueError` naming the argument, the range and the value. Under `jit`: NaN "
    "loss for that example. A NaN logit at a weighted (target) position gives a NaN loss; "
    "at an unweighted position it is ignored. Other examples equal the reference.",
)
@FEW
@given(
    shape=st.sampled_from([(1, 2, 3), (3, 5, 4)]),
    seed=st.integers(0, 2**32 - 1),
)
def seq2seq_loss_ids_and_nan(shape, seed):
    rng = np.random.default_rng(seed)
    b, t, v = shape
    logits = _inject(rng, rng.normal(size=shape) * 2, 0.05, (NAN,)).astype(np.float32)
    ids = rng.integers(0, v, (b, t))
    seg = (np.arange(t)[None] >= rng.integers(1, t, (b, 1))).astype(np.int32)
    mask = (rng.random((b, t)) < 0.9).astype(np.int32)
    clean_ids, clean_seg, clean_mask = ids.copy(), seg.copy(), mask.copy()
    ids[rng.random((b, t)) < 0.05] = rng.choice([-1, v])
    seg[rng.random((b, t)) < 0.05] = 2
    mask[rng.random((b, t)) < 0.05] = -1
    bad = ((ids < 0) | (ids >= v) | (seg > 1) | (mask < 0)).any(axis=1)
    got = np.asarray(_seq2seq_loss(logits, ids, seg, mask))
    want = _ref_seq2seq(logits, clean_ids, clean_seg, clean_mask)
    assert np.isnan(got[bad]).all()
    _assert_rows_match(got[~bad], want[~bad])
    for name, arr, clean, pattern in (
        ("ids", ids, clean_ids, rf"\[0, vocab={v}\)"),
        ("segment_ids", seg, clean_seg, r"\[0, 2\), got 2"),
        ("mask", mask, clean_mask, r"\[0, 2\), got -1"),
    ):
        if not np.array_equal(arr, clean):
            args = {"ids": clean_ids, "segment_ids": clean_seg, "mask": clean_mask, name: arr}
            with pytest.raises(ValueError, match=rf"`{name}` must lie in {pattern}"):
                seq2seq_loss(logits, **args)
    _assert_rows_match(seq2seq_loss(logits, clean_ids, clean_seg, clean_mask), want)


# --------------------------------------------------------------------------- generation


@contract(
    "UniLM generation (`unilm_greedy_generate`, `unilm_beam_search`): `source_ids` outside "
    "`[0, vocab_size)`",
    "Concrete: `ValueError` naming `source_ids`, the range and the value. Inside the "
    "caller's `jit`: that example gets score NaN, length 0 and only `pad_token_id`; the "
    "other examples are unchanged.",
)
def generation_out_of_range_source():
    model = _bert()
    src = np.array([[2, 5, 6, 3], [2, 7, 3, 0], [2, 4, 9, 3]], np.int32)
    bad = src.copy()
    bad[1, 2] = _BERT_CFG.vocab_size
    kw = dict(max_new_tokens=3, end_token_id=3)
    for fn, extra in ((unilm_greedy_generate, {}), (unilm_beam_search, {"beam_size": 2})):
        with pytest.raises(ValueError, match=r"`source_ids` must lie in \[0, vocab_size=11\)"):
            fn(model, bad, **kw, **extra)
        generate = nnx.jit(lambda m, s, fn=fn, extra=extra: fn(m, s, **kw, **extra))
        ref, out = generate(model, src), generate(model, bad)
        assert math.isnan(float(out.scores[1])) and int(out.lengths[1]) == 0
        assert (np.asarray(out.tokens[1]) == _BERT_CFG.pad_token_id).all()
        for a, r in zip(out, ref):
            np.testing.assert_allclose(np.asarray(a)[[0, 2]], np.asarray(r)[[0, 2]], rtol=1e-6)


# --------------------------------------------------------------------------- reading comprehension


@contract(
    "`passage_constrained_decode`: `passage_ids` outside `[0, V)`, `passage_length` "
    "outside `[0, P]`, NaN probabilities",
    "Concrete: `ValueError` naming the argument, the range and the value. Under `jit`: "
    "score NaN and the empty answer (length 0, start -1) for that example. A NaN "
    "probability at a token the decoder may choose gives a NaN score; at a forbidden "
    "token it is ignored.",
)
@FEW
@given(seed=st.integers(0, 2**32 - 1))
def reading_comprehension_ids_and_nan(seed):
    rng = np.random.default_rng(seed)
    b, slots, v, p = 3, 3, 7, 5
    probs = rng.dirichlet(np.ones(v), size=(b, slots)).astype(np.float32)
    passage = rng.integers(3, v, (b, p))
    lengths = rng.integers(0, p + 1, b)
    ref = passage_constrained_decode(probs, passage, lengths, sep_token_id=2)
    bad_passage, bad_lengths = passage.copy(), lengths.copy()
    hit = rng.random((b, p)) < 0.1
    bad_passage[hit] = rng.choice([-1, v], size=hit.sum())
    bad_lengths[rng.random(b) < 0.2] = p + 1
    bad = hit.any(axis=1) | (bad_lengths != lengths)
    decode = jax.jit(passage_constrained_decode, static_argnames=("sep_token_id",))
    out = decode(probs, bad_passage, bad_lengths, sep_token_id=2)
    assert np.isnan(np.asarray(out.scores)[bad]).all()
    assert (np.asarray(out.lengths)[bad] == 0).all() and (np.asarray(out.start)[bad] == -1).all()
    for a, r in zip(out, ref):
        np.testing.assert_allclose(np.asarray(a)[~bad], np.asarray(r)[~bad], rtol=1e-6)
    if hit.any():
        with pytest.raises(ValueError, match=r"`passage_ids` must lie in \[0, vocab=7\)"):
            passage_constrained_decode(probs, bad_passage, lengths, sep_token_id=2)
    if (bad_lengths != lengths).any():
        with pytest.raises(ValueError, match=r"`passage_length` must lie in \[0, P \+ 1=6\)"):
            passage_constrained_decode(probs, passage, bad_lengths, sep_token_id=2)
    # NaN at the token the decoder takes first (the best allowed one) vs at a forbidden one
    row = 0
    if int(ref.lengths[row]) > 0:
        first = int(ref.tokens[row, 0])
        nan_chosen = probs.copy()
        nan_chosen[row, 0, first] = NAN
        got = passage_constrained_decode(nan_chosen, passage, lengths, sep_token_id=2)
        assert math.isnan(float(got.scores[row]))
    forbidden = [tok for tok in range(v) if tok != 2 and tok not in passage[row][: lengths[row]]]
    if forbidden:
        nan_forbidden = probs.copy()
        nan_forbidden[row, :, forbidden[0]] = NAN
        got = passage_constrained_decode(nan_forbidden, passage, lengths, sep_token_id=2)
        for a, r in zip(got, ref):
            np.testing.assert_array_equal(np.asarray(a)[row], np.asarray(r)[row])


# --------------------------------------------------------------------------- CRF


@contract(
    "`crf_log_likelihood`: NaN emissions at random positions, random masks",
    "NaN exactly for the examples with a NaN at a valid (unmasked) position; every other "
    "example equals the brute-force log-likelihood over all tag paths.",
)
@FEW
@given(
    shape=st.sampled_from([(1, 1, 2), (3, 4, 3)]),
    seed=st.integers(0, 2**32 - 1),
)
def crf_nan_emissions(shape, seed):
    rng = np.random.default_rng(seed)
    b, t, k = shape
    em = _inject(rng, rng.normal(size=shape), 0.1, (NAN,)).astype(np.float32)
    g = rng.normal(size=(k, k)).astype(np.float32)
    mask = rng.random((b, t)) < 0.7
    tags = rng.integers(0, k, (b, t))
    got = np.asarray(crf_log_likelihood(em, tags, g, mask))
    for r in range(b):
        if np.isnan(em[r][mask[r]]).any():
            assert math.isnan(got[r])
        else:
            clean = np.where(np.isnan(em[r]), 0.0, em[r])
            want = Brute(clean, g, None, None, mask[r]).log_prob(tags[r])
            np.testing.assert_allclose(got[r], want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- tag schemes


@contract(
    "`mask_transitions`: `allowed` of a random (possibly wrong) shape; NaN scores",
    "A shape that does not broadcast to `scores`: `ValueError` naming `allowed` with the "
    "expected and the actual shape. Otherwise disallowed entries become `-inf` and "
    "allowed entries pass unchanged, NaN included.",
)
@SETTINGS
@given(
    k=st.integers(2, 3),
    allowed_shape=st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple),
    seed=st.integers(0, 2**32 - 1),
)
def mask_transitions_shapes_and_nan(k, allowed_shape, seed):
    rng = np.random.default_rng(seed)
    scores = _inject(rng, rng.normal(size=(k, k)), 0.2, (NAN,)).astype(np.float32)
    allowed = rng.random(allowed_shape) < 0.6
    try:
        fits = np.broadcast_shapes(scores.shape, allowed_shape) == scores.shape
    except ValueError:
        fits = False
    if not fits:
        pattern = (
            rf"`allowed` must have the shape of `scores` \({k}, {k}\).*got shape "
            + re.escape(str(allowed_shape))
        )
        with pytest.raises(ValueError, match=pattern):
            mask_transitions(scores, allowed)
        return
    got = np.asarray(mask_transitions(scores, allowed))
    np.testing.assert_array_equal(got, np.where(allowed, scores, -INF))


_TAGS = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "M-LOC", "B-", "O-X", "X-PER", 7]


def _accepted(scheme, label) -> bool:
    try:
        allowed_transitions(scheme, [label])
    except (ValueError, TypeError):
        return False
    return True


@contract(
    "`allowed_transitions`: random label lists (unknown or malformed tags, repeated "
    "labels, non-strings)",
    "A `ValueError` / `TypeError` naming the offending label, or masks `[K, K]`, `[K]`, "
    "`[K]` that follow any reordering of the labels (permutation-equivariant).",
)
@SETTINGS
@given(
    scheme=st.sampled_from(["BIO", "BIOES", "BMES"]),
    labels=st.lists(st.sampled_from(_TAGS), min_size=1, max_size=6),
    perm_seed=st.integers(0, 2**32 - 1),
)
def allowed_transitions_labels(scheme, labels, perm_seed):
    try:
        allowed, start, end = allowed_transitions(scheme, labels)
    except (ValueError, TypeError) as err:
        # the first label that is invalid on its own, else the first repeated one
        alone = [x for x in labels if not _accepted(scheme, x)]
        offender = alone[0] if alone else next(x for i, x in enumerate(labels) if x in labels[:i])
        assert "label" in str(err) and repr(offender) in str(err), err
        return
    k = len(labels)
    assert allowed.shape == (k, k) and start.shape == end.shape == (k,)
    perm = np.random.default_rng(perm_seed).permutation(k)
    p_allowed, p_start, p_end = allowed_transitions(scheme, [labels[i] for i in perm])
    np.testing.assert_array_equal(p_allowed, allowed[np.ix_(perm, perm)])
    np.testing.assert_array_equal(p_start, start[perm])
    np.testing.assert_array_equal(p_end, end[perm])


# --------------------------------------------------------------------------- masks


@contract(
    "`unilm_mask`, `combine_masks`: random segment layouts and mask shapes",
    "Concrete segment ids outside {0, 1} or not of the form `0…0 1…1 0…0`: `ValueError` "
    "naming `segment_ids`; otherwise `mask[i, j] = c_j ≤ c_i` with `c = cumsum(segment_ids)` "
    "(traced ids: the rule as is). Masks of different ranks or non-broadcasting shapes: "
    "`ValueError` listing the shapes; otherwise their logical AND.",
)
@SETTINGS
@given(
    seg=st.lists(st.lists(st.integers(0, 2), min_size=4, max_size=4), min_size=1, max_size=3),
    shapes=st.lists(
        st.lists(st.integers(1, 3), min_size=2, max_size=3).map(tuple), min_size=1, max_size=3
    ),
    seed=st.integers(0, 2**32 - 1),
)
def masks_layouts_and_shapes(seg, shapes, seed):
    seg = np.array(seg)
    c = np.cumsum(seg, axis=1)
    want = (c[:, None, :] <= c[:, :, None])[:, None]
    layout_ok = all(
        set(r) <= {0, 1} and re.fullmatch("0*1*0*", "".join(map(str, r))) for r in seg.tolist()
    )
    if layout_ok:
        np.testing.assert_array_equal(unilm_mask(seg), want)
    else:
        with pytest.raises(ValueError, match="segment_ids"):
            unilm_mask(seg)
    np.testing.assert_array_equal(jax.jit(unilm_mask)(seg), want)
    rng = np.random.default_rng(seed)
    masks = [rng.random(s) < 0.6 for s in shapes]
    try:
        same_rank = len({m.ndim for m in masks}) == 1
        expected = np.logical_and.reduce(np.broadcast_arrays(*masks)) if same_rank else None
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError, match=re.escape(str(shapes[0]))):
            combine_masks(*masks)
    else:
        np.testing.assert_array_equal(combine_masks(*masks), expected)


# --------------------------------------------------------------------------- optimizers
# The optimizer contracts are checked by the tests of each transform; a row runs them.


PARAM = type(pytest.param(None))


def run_test(fn: Callable[..., None]) -> None:
    """Runs a test function over every combination of its ``parametrize`` marks.

    Hypothesis tests run their own search when called without arguments.
    """
    combos: list[dict] = [{}]
    for mark in reversed(getattr(fn, "pytestmark", [])):
        if mark.name != "parametrize":
            continue
        names, values = mark.args[0], mark.args[1]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        expanded = []
        for value in values:
            if isinstance(value, PARAM):
                value = value.values
            elif len(names) == 1:
                value = (value,)
            expanded += [{**c, **dict(zip(names, value))} for c in combos]
        combos = expanded
    for kwargs in combos:
        fn(**kwargs)


@contract(
    "`adafactor`, `lookahead`, `lazy`: gradients with NaN or `±inf` at random positions",
    "The update entries computed from a non-finite gradient are non-finite (AdaFactor: the "
    "whole tensor's update, through its update-RMS clipping and factored means); every "
    "other entry and leaf is finite and equal to the run without the non-finite values.",
)
def optimizer_nonfinite_gradients():
    for check in (
        adafactor_tests.test_nonfinite_gradients_give_nonfinite_updates,
        lookahead_tests.test_nonfinite_gradients_give_nonfinite_updates,
        lazy_tests.test_nonfinite_gradients_give_nonfinite_updates,
    ):
        run_test(check)


@contract(
    "`adafactor` / `scale_by_factored_rms`, `lookahead`, `lazy`: gradients whose tree or "
    "leaf shapes differ from the parameters",
    "`ValueError` naming the leaf, the expected and the actual shape (e.g. "
    "``` `updates` leaf ['w'] must have the shape of the parameter: expected (5, 4), got "
    "(5,). ```).",
)
def optimizer_mismatched_gradients():
    for module in (adafactor_tests, lookahead_tests, lazy_tests):
        run_test(module.test_mismatched_gradients_raise_clear_errors)


@contract(
    'Optimizer hyperparameters of the wrong type or range (`lookahead(sync_period="5")`, '
    '`adafactor(decay_rate="0.8")`, `slow_step_size=1.5`)',
    "At construction: `TypeError` / `ValueError` naming the argument, what it must be and "
    "the value (``` `sync_period` must be an integer (Python scalar or 0-d array), got str "
    "'5'. ```).",
)
def optimizer_bad_hyperparameters():
    for module in (adafactor_tests, lookahead_tests):
        run_test(module.test_bad_argument_types_raise_at_construction)
        run_test(module.test_bad_arguments_raise)


@contract(
    "`optax.inject_hyperparams(adafactor)` without `static_args` (`min_dim_size_to_factor` "
    "fixes the state shapes at `init`)",
    "`TypeError` at `init` naming `min_dim_size_to_factor` and the fix "
    "`static_args=('min_dim_size_to_factor',)`; with it, the value cannot change later.",
)
def optimizer_structural_hyperparameters():
    run_test(adafactor_tests.test_structural_args_cannot_be_injected)


@contract(
    "`lazy`: `row_ids` without `params`; `elementwise=True` around an optimizer that is not "
    "elementwise (AdaFactor's factored statistics)",
    "`ValueError`: row ids need the parameters (the table's shape tells a table gradient "
    "from pre-gathered rows); `elementwise=True, but the inner state holds a leaf of shape "
    "… for the lazy parameter …`, at `init`.",
)
def lazy_misuse():
    run_test(lazy_tests.test_row_ids_without_params_raise)
    run_test(lazy_tests.test_elementwise_declared_for_factored_inner_raises)


@contract(
    "`lookahead(..., reset_state=True)`, `lazy`: an inner optimizer whose state holds Python "
    "scalars (`True`, `0`, `1.0`), eager, jitted, in `inject_hyperparams` or `MultiSteps`",
    "Works; parameters, slow weights and the reset inner state equal `optax.lookahead`'s.",
)
def wrappers_accept_python_scalar_state():
    run_test(lookahead_tests.test_python_scalar_inner_state_matches_optax)
    run_test(matrix_tests.test_python_scalar_inner_state)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("row", CONTRACTS, ids=lambda row: row.name)
def test_contract(row: Contract):
    row.check()


def test_table_has_one_row_per_contract():
    table = render_table().splitlines()
    assert table[:2] == ["| input | behaviour |", "| --- | --- |"]
    assert len(table) == 2 + len(CONTRACTS)
    assert len({row.name for row in CONTRACTS}) == len(CONTRACTS)
    for line, row in zip(table[2:], CONTRACTS):
        assert line.count(" | ") == 1 and _cell(row.input) in line and _cell(row.behaviour) in line


def test_rewrite_readme_replaces_only_the_section(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"# T\n\nbefore\n{BEGIN}\nold | table\n{END}\nafter\n", encoding="utf-8")
    assert rewrite_readme(path)
    text = path.read_text(encoding="utf-8")
    assert text == f"# T\n\nbefore\n{BEGIN}\n{render_table()}\n{END}\nafter\n"
    assert not rewrite_readme(path)  # idempotent
    path.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(ValueError, match="reliability:begin"):
        rewrite_readme(path)


def test_readme_table_matches_contracts():
    text = README.read_text(encoding="utf-8")
    _, body, _ = sync.split_section(text, BEGIN, END, "Reliability table")
    assert body.strip() == render_table(), (
        "README reliability table is stale: run `python -m tests.test_contracts --readme`."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Print the reliability contracts table, or rewrite it in README.md."
    )
    parser.add_argument(
        "--readme", action="store_true", help=f"rewrite the {BEGIN} section of README.md"
    )
    args = parser.parse_args(argv)
    if not args.readme:
        print(render_table())
        return 0
    try:
        changed = rewrite_readme()
    except ValueError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"{README}: {'updated' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
