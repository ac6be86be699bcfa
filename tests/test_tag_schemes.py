"""Tests of flax_layers.tag_schemes against regular expressions of valid tag sequences."""

from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_layers import allowed_transitions, mask_transitions


def _valid_by_regex(scheme: str, seq: tuple[str, ...]) -> bool:
    """Independent reference: a sequence is valid iff it matches the scheme's grammar."""
    text = " ".join(seq) + " "
    types = sorted({t.partition("-")[2] for t in seq if t != "O"}) or [""]
    inside = "M" if scheme == "BMES" else "I"
    units = ["O "]
    for x in types:
        tag = lambda prefix, x=x: prefix + ("-" if x else "") + re.escape(x) + " "
        if scheme == "BIO":
            units.append(f"{tag('B')}({tag(inside)})*")
        else:
            units.append(tag("S"))
            units.append(f"{tag('B')}({tag(inside)})*{tag('E')}")
    return re.fullmatch("(" + "|".join(units) + ")*", text) is not None


def _valid_by_masks(masks, index, seq) -> bool:
    allowed, start, end = masks
    ids = [index[t] for t in seq]
    return (
        bool(start[ids[0]])
        and bool(end[ids[-1]])
        and all(allowed[i, j] for i, j in zip(ids[:-1], ids[1:]))
    )


@pytest.mark.parametrize(
    "scheme, labels",
    [
        ("BIO", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]),
        ("BIOES", ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "E-LOC", "S-LOC"]),
        ("BMES", ["B", "M", "E", "S"]),
    ],
)
def test_masks_accept_exactly_the_valid_sequences(scheme, labels):
    masks = allowed_transitions(scheme, labels)
    index = {t: i for i, t in enumerate(labels)}
    for length in (1, 2, 3, 4):
        for seq in itertools.product(labels, repeat=length):
            assert _valid_by_masks(masks, index, seq) == _valid_by_regex(scheme, seq), seq


def test_bio_matrix_by_hand_and_aliases():
    allowed, start, end = allowed_transitions("iob2", ["O", "B-X", "I-X", "B-Y", "I-Y"])
    expected = np.array(
        [
            [1, 1, 0, 1, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 0, 1, 1],
            [1, 1, 0, 1, 1],
        ],
        bool,
    )
    np.testing.assert_array_equal(allowed, expected)
    np.testing.assert_array_equal(start, [1, 1, 0, 1, 0])
    assert end.all()


def test_bad_schemes_and_labels_raise():
    with pytest.raises(ValueError, match="scheme must be one of"):
        allowed_transitions("BILOU", ["O"])
    with pytest.raises(ValueError, match="not a BIO tag"):
        allowed_transitions("BIO", ["O", "E-PER"])
    with pytest.raises(ValueError, match="non-empty"):
        allowed_transitions("BIO", [])
    with pytest.raises(TypeError, match="must be boolean"):
        mask_transitions(jnp.zeros(3), jnp.array([1, 0, 1]))


def test_mask_transitions_values_and_zero_gradients():
    allowed = np.array([[True, False], [True, True]])
    raw = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    masked = mask_transitions(raw, allowed)
    np.testing.assert_array_equal(masked, [[1.0, -np.inf], [3.0, 4.0]])
    grad = jax.grad(lambda r: jnp.sum(jnp.exp(mask_transitions(r, allowed))))(raw)
    assert np.all(np.isfinite(grad)) and grad[0, 1] == 0


def test_mask_transitions_shape_and_dtype_errors_name_the_argument():
    scores = jnp.zeros((3, 3))
    with pytest.raises(
        ValueError, match=r"`allowed` must have the shape of `scores` \(3, 3\).*got shape \(4, 4\)"
    ):
        mask_transitions(scores, np.ones((4, 4), bool))
    with pytest.raises(ValueError, match=r"`allowed` must .* \(3, 3\).*got shape \(2, 3, 3\)"):
        mask_transitions(scores, np.ones((2, 3, 3), bool))  # would enlarge the scores
    with pytest.raises(ValueError, match=r"\(3,\).*got shape \(3, 3\)"):
        mask_transitions(jnp.zeros(3), np.ones((3, 3), bool))  # start/end mixed up
    with pytest.raises(TypeError, match=r"`scores` must be a floating array"):
        mask_transitions(jnp.zeros((3, 3), jnp.int32), np.ones((3, 3), bool))
    # broadcasting a [K, K] mask over batched scores is allowed
    batched = mask_transitions(jnp.ones((2, 2, 2)), np.array([[True, False], [True, True]]))
    np.testing.assert_array_equal(batched[1], [[1.0, -np.inf], [1.0, 1.0]])
    # under jit the checks run at trace time
    with pytest.raises(ValueError, match="`allowed`"):
        jax.jit(mask_transitions)(scores, jnp.ones((2, 2), bool))


def test_mask_transitions_keeps_nan_at_allowed_entries():
    raw = jnp.array([[np.nan, np.nan], [0.5, 1.0]], jnp.bfloat16)
    got = mask_transitions(raw, np.array([[True, False], [False, True]]))
    assert got.dtype == jnp.bfloat16
    got = np.asarray(got, np.float32)
    assert np.isnan(got[0, 0]) and got[0, 1] == -np.inf and got[1, 0] == -np.inf
    assert got[1, 1] == 1.0


def test_allowed_transitions_rejects_repeated_and_malformed_labels():
    with pytest.raises(ValueError, match=r"distinct.*'B-PER' at indices 1 and 3"):
        allowed_transitions("BIO", ["O", "B-PER", "I-PER", "B-PER"])
    with pytest.raises(ValueError, match=r"'B-' is not a BIO tag"):
        allowed_transitions("BIO", ["O", "B-"])
    with pytest.raises(ValueError, match=r"'O-PER' is not a BIOES tag"):
        allowed_transitions("BIOES", ["O-PER"])
    with pytest.raises(TypeError, match="labels must be strings, got 3"):
        allowed_transitions("BIO", ["O", 3])
    with pytest.raises(ValueError, match="non-empty sequence"):
        allowed_transitions("BIO", 5)
    # any iterable of strings works, e.g. a numpy array or a generator
    tags = ["O", "B-X", "I-X"]
    for labels in (np.array(tags), (t for t in tags)):
        for got, want in zip(allowed_transitions("BIO", labels), allowed_transitions("BIO", tags)):
            np.testing.assert_array_equal(got, want)
