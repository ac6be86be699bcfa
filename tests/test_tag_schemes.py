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
