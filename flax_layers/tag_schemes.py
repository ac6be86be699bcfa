"""Allowed tag transitions of the BIO, BIOES and BMES tagging schemes.

Span tagging schemes forbid some tag bigrams: in BIO an ``I-PER`` may only follow
``B-PER`` or ``I-PER``; in BIOES a span must also close with ``E-x`` (or be a single
``S-x``) before anything else starts; BMES (word segmentation: Begin, Middle, End,
Single) follows the BIOES rules with ``M`` for ``I``. :func:`allowed_transitions` returns
the ``[K, K]`` boolean matrix plus the allowed first and last tags;
:func:`mask_transitions` turns scores of disallowed moves into ``-inf``, which the CRF
and MEMM functions honour in training (zero probability, zero gradient, no NaN) and in
Viterbi decoding (never chosen while an allowed path exists).

Reference: Ramshaw & Marcus, "Text Chunking using Transformation-Based Learning" (1995,
IOB); Ratinov & Roth, "Design Challenges and Misconceptions in Named Entity Recognition"
(CoNLL 2009, BIOES/BILOU); Xue, "Chinese Word Segmentation as Character Tagging" (2003,
BMES); AllenNLP ``allowed_transitions``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["allowed_transitions", "mask_transitions"]

# scheme -> (prefix of an inside tag, prefixes that open a span, that close a span, all)
_SCHEMES = {
    "BIO": ("I", {"B"}, set(), {"B", "I", "O"}),
    "BIOES": ("I", {"B"}, {"E"}, {"B", "I", "O", "E", "S"}),
    "BMES": ("M", {"B"}, {"E"}, {"B", "M", "O", "E", "S"}),
}
_ALIASES = {"IOB2": "BIO", "IOBES": "BIOES", "BMESO": "BMES"}


def _parse(label: str, scheme: str, prefixes: set[str]) -> tuple[str, str]:
    if not isinstance(label, str):
        raise TypeError(f"allowed_transitions: labels must be strings, got {label!r}.")
    prefix, dash, kind = label.partition("-")
    if prefix not in prefixes or (prefix == "O" and dash) or (dash and not kind):
        raise ValueError(
            f"allowed_transitions: label {label!r} is not a {scheme} tag; expected 'O' or "
            f"one of {sorted(prefixes - {'O'})} optionally followed by '-TYPE'."
        )
    return prefix, kind


def allowed_transitions(
    scheme: str, labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks of the allowed transitions, first tags and last tags of a scheme.

    Rules (``x`` is the entity type; untyped tags such as ``"B"`` have type ``""``):

    * BIO: ``I-x`` only after ``B-x`` or ``I-x``; ``O`` and ``B-*`` anywhere; a
      sequence may not start with ``I``.
    * BIOES: after ``B-x``/``I-x`` only ``I-x``/``E-x``; after ``O``/``E-*``/``S-*`` (and
      at the start) only ``O``/``B-*``/``S-*``; a sequence ends with ``O``/``E``/``S``.
    * BMES: as BIOES with ``M`` for ``I`` (``O`` is accepted too).

    Args:
      scheme: ``"BIO"`` (alias ``"IOB2"``), ``"BIOES"`` (``"IOBES"``) or ``"BMES"``.
      labels: tag strings in tag-id order, e.g. ``["O", "B-PER", "I-PER"]``.

    Returns:
      ``(allowed, allowed_start, allowed_end)``: numpy bool arrays ``[K, K]``
      (``allowed[i, j]``: tag ``j`` may follow tag ``i``), ``[K]`` and ``[K]``.

    Raises:
      ValueError: an unknown scheme, an empty ``labels``, a label that is not a tag of
        the scheme (e.g. ``"E-PER"`` in BIO, ``"O-PER"``, ``"B-"``) or a repeated label.
      TypeError: a label that is not a string.

    Reference: Ramshaw & Marcus (1995); Ratinov & Roth (2009); AllenNLP.

    Example:
      >>> allowed, first, last = allowed_transitions("BIO", ["O", "B-PER", "I-PER"])
      >>> allowed.astype(int)
      array([[1, 1, 0],
             [1, 1, 1],
             [1, 1, 1]])
      >>> first.astype(int), last.astype(int)
      (array([1, 1, 0]), array([1, 1, 1]))
    """
    key = str(scheme).upper()
    key = _ALIASES.get(key, key)
    if key not in _SCHEMES:
        raise ValueError(
            f"allowed_transitions: scheme must be one of {sorted(_SCHEMES) + sorted(_ALIASES)}"
            f", got {scheme!r}."
        )
    try:
        tag_list = [] if isinstance(labels, str) else list(labels)
    except TypeError:
        tag_list = []
    if not tag_list:
        raise ValueError(
            f"allowed_transitions: labels must be a non-empty sequence of tags, got {labels!r}."
        )
    labels = tag_list
    inside, _, closing, prefixes = _SCHEMES[key]
    tags = [_parse(label, key, prefixes) for label in labels]
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        if label in seen:
            raise ValueError(
                f"allowed_transitions: labels must be distinct (one tag id per tag), got "
                f"{label!r} at indices {seen[label]} and {i}."
            )
        seen[label] = i
    num = len(tags)
    allowed = np.zeros((num, num), dtype=bool)
    start = np.zeros(num, dtype=bool)
    end = np.zeros(num, dtype=bool)
    for j, (p_to, k_to) in enumerate(tags):
        continues = p_to == inside or p_to in closing  # needs an open span of its type
        start[j] = not continues
        if key == "BIO":
            end[j] = True
        else:
            end[j] = p_to in {"O", "E", "S"}
        for i, (p_from, k_from) in enumerate(tags):
            span_open = p_from in {"B", inside}
            if key == "BIO":
                allowed[i, j] = (not continues) or (span_open and k_from == k_to)
            elif span_open:
                allowed[i, j] = continues and k_from == k_to
            else:
                allowed[i, j] = not continues
    return allowed, start, end


def mask_transitions(scores: jax.Array, allowed: jax.Array) -> jax.Array:
    """Replaces the scores of disallowed moves with ``-inf``.

    Math: ``s'_ij = s_ij`` if ``allowed_ij`` else ``-inf``; the gradient with respect to a
    disallowed entry is 0 (no NaN). Allowed entries are passed through unchanged, NaN
    included (a NaN score stays NaN).

    Args:
      scores: floating transition ``[K, K]`` (or start/end ``[K]``) scores, optionally
        with leading batch axes.
      allowed: boolean mask of the shape of ``scores`` or broadcastable to it (e.g. a
        ``[K, K]`` mask for ``[..., K, K]`` scores); it may not broadcast ``scores`` to a
        larger shape.

    Returns:
      The masked scores, same shape and dtype as ``scores``.

    Raises:
      TypeError: non-floating ``scores`` (``-inf`` has no integer value) or non-boolean
        ``allowed``.
      ValueError: ``allowed`` whose shape does not broadcast to the shape of ``scores``
        (the message gives both shapes).

    Reference: AllenNLP ``ConditionalRandomField(constraints=...)``.

    Example:
      >>> import jax.numpy as jnp
      >>> mask_transitions(jnp.zeros(3), jnp.array([True, False, True]))
      Array([  0., -inf,   0.], dtype=float32)
    """
    scores = jnp.asarray(scores)
    allowed = jnp.asarray(allowed)
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        raise TypeError(
            f"mask_transitions: `scores` must be a floating array, got dtype {scores.dtype}."
        )
    if allowed.dtype != jnp.bool_:
        raise TypeError(f"mask_transitions: `allowed` must be boolean, got {allowed.dtype}.")
    try:
        fits = np.broadcast_shapes(scores.shape, allowed.shape) == scores.shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"mask_transitions: `allowed` must have the shape of `scores` {scores.shape} (or "
            f"broadcast to it), got shape {allowed.shape}."
        )
    return jnp.where(allowed, scores, jnp.array(-jnp.inf, scores.dtype))
