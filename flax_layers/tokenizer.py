"""BERT WordPiece tokenizer over a ``vocab.txt``: pure Python, or Hugging Face ``tokenizers``.

Same algorithm as the BERT tokenizer (Devlin et al., 2019, google-research/bert
``tokenization.py``) in the form Hugging Face ``tokenizers`` runs it (``BertNormalizer``,
``BertPreTokenizer``, ``WordPiece``): drop control characters, map whitespace to spaces, put
spaces around CJK ideographs, strip accents and lower-case (uncased models), split on
whitespace and punctuation, then greedy longest-match-first WordPiece with ``##``
continuation pieces (Wu et al., 2016, arXiv:1609.08144). Special tokens such as ``[MASK]``
written in the text are kept whole.

:class:`WordPieceTokenizer` has two backends giving the same tokens and ids: a pure-Python
one (no dependency) and a fast one that builds a ``tokenizers.Tokenizer`` from the same
vocabulary and settings (used when the ``tokenizers`` package is installed).
:func:`trim_vocab` builds the bert4keras-style ``keep_tokens`` list for a smaller vocabulary.
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = ["WordPieceTokenizer", "load_vocab", "trim_vocab"]

_BACKENDS = ("auto", "python", "tokenizers")

_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def load_vocab(path: str | os.PathLike[str]) -> dict[str, int]:
    """Reads a BERT ``vocab.txt`` (one token per line; line number = id).

    Args:
      path: the file, or a directory holding ``vocab.txt``.

    Returns:
      ``{token: id}``.

    Raises:
      FileNotFoundError: if the file does not exist.

    Example:
      >>> import tempfile, os
      >>> p = os.path.join(tempfile.mkdtemp(), "vocab.txt")
      >>> _ = open(p, "w").write("[PAD]\\n[UNK]\\nhello\\n")
      >>> load_vocab(p)
      {'[PAD]': 0, '[UNK]': 1, 'hello': 2}
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "vocab.txt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_vocab: no such file {path!r}.")
    vocab: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            token = line.rstrip("\n").rstrip("\r")
            if token and token not in vocab:
                vocab[token] = len(vocab)
    return vocab


def trim_vocab(
    vocab: Mapping[str, int],
    keep: Callable[[str], bool] | Iterable[str],
    *,
    always_keep: Sequence[str] = _SPECIAL,
) -> tuple[dict[str, int], list[int]]:
    """Keeps a subset of a vocabulary, returning the new vocab and bert4keras ``keep_tokens``.

    The tokens of ``always_keep`` present in ``vocab`` come first (in that
    order), then the other kept tokens in their original id order. New id
    ``i`` corresponds to old id ``keep_tokens[i]``; pass ``keep_tokens`` to
    ``load_hf_bert`` to trim the embedding matrix and MLM bias accordingly.

    Args:
      vocab: ``{token: id}``.
      keep: a predicate on tokens, or an iterable of tokens to keep.
      always_keep: tokens kept first regardless of ``keep``.

    Returns:
      ``(new_vocab, keep_tokens)``.

    Reference: bert4keras ``load_vocab(..., simplified=True)`` and
    ``keep_tokens`` (Su, kexue.fm/archives/7147).

    Example:
      >>> vocab = {"[PAD]": 0, "[UNK]": 1, "a": 2, "b": 3, "##c": 4}
      >>> trim_vocab(vocab, lambda t: not t.startswith("##"))
      ({'[PAD]': 0, '[UNK]': 1, 'a': 2, 'b': 3}, [0, 1, 2, 3])
    """
    if callable(keep):
        predicate = keep
    else:
        kept_set = set(keep)
        predicate = kept_set.__contains__
    new_vocab: dict[str, int] = {}
    keep_tokens: list[int] = []
    for token in always_keep:
        if token in vocab and token not in new_vocab:
            new_vocab[token] = len(keep_tokens)
            keep_tokens.append(vocab[token])
    for token, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        if token not in new_vocab and predicate(token):
            new_vocab[token] = len(keep_tokens)
            keep_tokens.append(idx)
    return new_vocab, keep_tokens


# Character classes of the cleaning step, as Hugging Face tokenizers' BertNormalizer draws
# them: NUL, U+FFFD and the "other" categories except tab/newline/return are dropped
# (control Cc, format Cf, private use Co, surrogates Cs; unassigned Cn is kept), the
# White_Space characters that remain become a space, CJK ideographs get a space each side.
_DROP, _SPACE, _CJK, _KEEP = range(4)
_DROPPED_CATEGORIES = frozenset(("Cc", "Cf", "Co", "Cs"))
_SPACE_CATEGORIES = frozenset(("Zs", "Zl", "Zp"))
_SURROGATES = re.compile("[\ud800-\udfff]")


def _is_cjk(cp: int) -> bool:
    # The CJK Unified / Compatibility Ideograph blocks of google-research/bert, with the
    # Extension E range starting at U+2B920 as in Hugging Face tokenizers' BertNormalizer.
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B920 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


@functools.lru_cache(maxsize=1 << 16)
def _char_class(ch: str) -> int:
    if ch in "\t\n\r":
        return _SPACE
    category = unicodedata.category(ch)
    if ch in "\x00\ufffd" or category in _DROPPED_CATEGORIES:
        return _DROP
    if category in _SPACE_CATEGORIES:
        return _SPACE
    return _CJK if _is_cjk(ord(ch)) else _KEEP


@functools.lru_cache(maxsize=1 << 16)
def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _clean(text: str) -> str:
    out = []
    for ch in text:
        kind = _char_class(ch)
        if kind == _KEEP:
            out.append(ch)
        elif kind == _SPACE:
            out.append(" ")
        elif kind == _CJK:
            out.append(f" {ch} ")
    return "".join(out)


def _strip_accents_and_lower(word: str) -> str:
    if word.isascii():
        return word.lower()
    word = unicodedata.normalize("NFD", word)
    word = "".join(c for c in word if unicodedata.category(c) != "Mn")
    # Character by character, as tokenizers does: str.lower would turn a word-final
    # capital sigma into a final sigma (U+03C2) where tokenizers gives U+03C3.
    return "".join(c.lower() for c in word) if "\u03a3" in word else word.lower()


class WordPieceTokenizer:
    """BERT WordPiece tokenizer over a ``vocab.txt``, in pure Python or on ``tokenizers``.

    ``tokenize`` = basic tokenization followed by greedy longest-match-first WordPiece. Basic
    tokenization (Hugging Face tokenizers' ``BertNormalizer`` + ``BertPreTokenizer``):

    1. drop NUL, U+FFFD and characters of the categories Cc, Cf, Co, Cs (except tab,
       newline, carriage return, which are whitespace); map whitespace to spaces;
    2. put a space on each side of CJK ideographs (so each is a word);
    3. if ``do_lower_case``: NFD, drop non-spacing marks (Mn), lower-case each character;
    4. split on whitespace, and split off every punctuation character (ASCII punctuation
       and the Unicode P* categories) as its own word.

    WordPiece then splits each word into the longest vocabulary prefix, then the longest
    ``##``-prefixed continuation, and so on; a word longer than ``max_input_chars_per_word``
    characters, or with no such segmentation, becomes ``[UNK]``. The special tokens written
    in the text (case-sensitive, e.g. ``[MASK]``) are cut out first and kept whole.

    Both backends run exactly this. ``backend="tokenizers"`` builds a ``tokenizers.Tokenizer``
    from the same vocabulary (``BertNormalizer(clean_text=True, handle_chinese_chars=True,
    strip_accents=do_lower_case, lowercase=do_lower_case)``, ``BertPreTokenizer()``,
    ``WordPiece(vocab, unk_token, max_input_chars_per_word)``, the special tokens added
    un-normalised) and encodes batches with its Rust ``encode_batch``; it agrees with
    ``transformers``' ``BertTokenizerFast`` over the same vocabulary. Where tokenizers
    departs from google-research/bert, both backends follow tokenizers: private-use
    characters are dropped too, U+2B820-U+2B91F get no spaces, and lower-casing goes
    character by character after the accents are stripped (a word-final ``Σ`` becomes
    ``σ``, not ``ς``). The backends can differ only where their Unicode tables do: a few
    hundred recently assigned or re-categorised code points (e.g. the brackets
    U+2E55-U+2E5D, punctuation to Python 3.11's ``unicodedata`` but not to the older tables
    inside ``tokenizers``).

    Args:
      vocab: ``{token: id}`` or a path to ``vocab.txt`` (or its directory).
      do_lower_case: strip accents and lower-case (uncased models).
      max_input_chars_per_word: longer words map to ``[UNK]`` (a non-negative int).
      unk_token, cls_token, sep_token, pad_token, mask_token: special tokens (non-empty
        strings in ``vocab``).
      backend: ``"python"`` (pure Python), ``"tokenizers"`` (Hugging Face ``tokenizers``,
        must be installed) or ``"auto"`` (``"tokenizers"`` when installed, else
        ``"python"``). The chosen one is in the ``backend`` attribute.

    Raises:
      ValueError: if a special token is empty or missing from the vocabulary,
        ``max_input_chars_per_word`` is negative, or ``backend`` is not one of the three
        names.
      TypeError: if ``max_input_chars_per_word`` is not an int.
      ImportError: if ``backend="tokenizers"`` and the package is not installed.

    Reference: Devlin et al., 2019 (arXiv:1810.04805), google-research/bert
    ``tokenization.py``; Wu et al., 2016 (arXiv:1609.08144); Hugging Face tokenizers
    (``BertNormalizer``, ``BertPreTokenizer``, ``WordPiece``).

    Example:
      >>> vocab = {t: i for i, t in enumerate(
      ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", ",", "hi"])}
      >>> tok = WordPieceTokenizer(vocab)  # "tokenizers" if installed, else "python"
      >>> tok.backend in ("python", "tokenizers")
      True
      >>> tok.tokenize("Ünaffable, hi [MASK]!")
      ['un', '##aff', '##able', ',', 'hi', '[MASK]', '[UNK]']
      >>> tok.encode("hi", "unaffable")
      ([2, 9, 3, 5, 6, 7, 3], [0, 0, 0, 1, 1, 1, 1])
      >>> WordPieceTokenizer(vocab, backend="python").encode_batch(["hi", ""], max_length=3)
      [([2, 9, 3], [0, 0, 0]), ([2, 3], [0, 0])]
    """

    def __init__(
        self,
        vocab: Mapping[str, int] | str | os.PathLike[str],
        *,
        do_lower_case: bool = True,
        max_input_chars_per_word: int = 100,
        unk_token: str = "[UNK]",
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        mask_token: str = "[MASK]",
        backend: str = "auto",
    ):
        if isinstance(max_input_chars_per_word, bool) or not isinstance(
            max_input_chars_per_word, int
        ):
            raise TypeError(
                "WordPieceTokenizer: max_input_chars_per_word must be an int, "
                f"got {type(max_input_chars_per_word)}."
            )
        if max_input_chars_per_word < 0:
            raise ValueError(
                "WordPieceTokenizer: max_input_chars_per_word must be >= 0, "
                f"got {max_input_chars_per_word}."
            )
        self.vocab = dict(vocab) if isinstance(vocab, Mapping) else load_vocab(vocab)
        self.inverse = {i: t for t, i in self.vocab.items()}
        self.do_lower_case = do_lower_case
        self.max_input_chars_per_word = max_input_chars_per_word
        self.unk_token, self.cls_token, self.sep_token = unk_token, cls_token, sep_token
        self.pad_token, self.mask_token = pad_token, mask_token
        specials = [unk_token, cls_token, sep_token, pad_token, mask_token]
        for token in specials:
            if not isinstance(token, str) or not token:
                raise ValueError(
                    f"WordPieceTokenizer: special tokens must be non-empty str, got {token!r}."
                )
            if token not in self.vocab:
                raise ValueError(f"WordPieceTokenizer: special token {token!r} is not in vocab.")
        self.special_tokens = tuple(specials)
        self._special_re = re.compile(
            "(" + "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)) + ")"
        )
        if backend not in _BACKENDS:
            raise ValueError(
                f"WordPieceTokenizer: backend must be one of {_BACKENDS}, got {backend!r}."
            )
        self._fast = None
        if backend == "auto":
            try:
                self._fast = self._build_fast()
            except ImportError:
                pass
            backend = "python" if self._fast is None else "tokenizers"
        elif backend == "tokenizers":
            self._fast = self._build_fast()
        self.backend = backend

    def _build_fast(self):
        try:
            from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
        except ImportError as e:
            raise ImportError(
                "WordPieceTokenizer: backend='tokenizers' needs the Hugging Face `tokenizers` "
                "package (pip install tokenizers); use backend='python' or 'auto'."
            ) from e
        fast = Tokenizer(
            models.WordPiece(
                self.vocab,
                unk_token=self.unk_token,
                max_input_chars_per_word=self.max_input_chars_per_word,
            )
        )
        fast.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=True,
            strip_accents=self.do_lower_case,
            lowercase=self.do_lower_case,
        )
        fast.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        fast.add_special_tokens(
            [
                AddedToken(t, normalized=False, special=True)
                for t in dict.fromkeys(self.special_tokens)
            ]
        )
        return fast

    @property
    def unk_token_id(self) -> int:
        """Id of the unknown token."""
        return self.vocab[self.unk_token]

    @property
    def cls_token_id(self) -> int:
        """Id of ``[CLS]``."""
        return self.vocab[self.cls_token]

    @property
    def sep_token_id(self) -> int:
        """Id of ``[SEP]``."""
        return self.vocab[self.sep_token]

    @property
    def pad_token_id(self) -> int:
        """Id of ``[PAD]``."""
        return self.vocab[self.pad_token]

    @property
    def mask_token_id(self) -> int:
        """Id of ``[MASK]``."""
        return self.vocab[self.mask_token]

    def _deprecated_id(self, old: str) -> int:
        new = old.replace("_id", "_token_id")
        warnings.warn(
            f"WordPieceTokenizer.{old} is deprecated, use {new}.", DeprecationWarning, stacklevel=3
        )
        return getattr(self, new)

    unk_id = property(lambda self: self._deprecated_id("unk_id"), doc="Deprecated: unk_token_id.")
    cls_id = property(lambda self: self._deprecated_id("cls_id"), doc="Deprecated: cls_token_id.")
    sep_id = property(lambda self: self._deprecated_id("sep_id"), doc="Deprecated: sep_token_id.")
    pad_id = property(lambda self: self._deprecated_id("pad_id"), doc="Deprecated: pad_token_id.")
    mask_id = property(
        lambda self: self._deprecated_id("mask_id"), doc="Deprecated: mask_token_id."
    )

    # -- pure-Python backend -------------------------------------------------------------

    def _basic(self, text: str) -> list[str]:
        words = []
        for word in _clean(text).split():
            if self.do_lower_case:
                word = _strip_accents_and_lower(word)
            current = ""
            for ch in word:
                if _is_punctuation(ch):
                    if current:
                        words.append(current)
                    words.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def _wordpiece(self, word: str) -> list[str]:
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token]
        if word in self.vocab:
            return [word]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            piece = None
            while start < end:
                candidate = word[start:end] if start == 0 else "##" + word[start:end]
                if candidate in self.vocab:
                    piece = candidate
                    break
                end -= 1
            if piece is None:
                return [self.unk_token]
            pieces.append(piece)
            start = end
        return pieces

    def _tokenize_python(self, text: str) -> list[str]:
        tokens: list[str] = []
        for chunk in self._special_re.split(text):
            if chunk in self.special_tokens:
                tokens.append(chunk)
                continue
            for word in self._basic(chunk):
                tokens.extend(self._wordpiece(word))
        return tokens

    # -- tokenizers backend --------------------------------------------------------------

    def _fast_encodings(self, texts: list[str], *, tokens: bool = False) -> list:
        # encode_batch_fast (tokenizers >= 0.20) skips the offsets and leaves the token
        # strings empty; it serves when only the ids are wanted.
        encode = self._fast.encode_batch
        if not tokens:
            encode = getattr(self._fast, "encode_batch_fast", encode)
        try:
            return encode(texts, add_special_tokens=False)
        except TypeError:
            # Lone surrogates cannot cross into Rust. The pure-Python path drops them
            # (category Cs) and they break a special token written around them; a private-use
            # character (category Co) behaves the same way on both counts.
            return encode([_SURROGATES.sub("\ue000", t) for t in texts], add_special_tokens=False)

    # -- public API ----------------------------------------------------------------------

    @staticmethod
    def _check_texts(name: str, texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            raise TypeError(f"WordPieceTokenizer.{name}: expected a sequence of str, got a str.")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(
                    f"WordPieceTokenizer.{name}: texts[{i}] must be str, got {type(text)}."
                )
        return texts

    def tokenize(self, text: str) -> list[str]:
        """Splits ``text`` into word pieces (no ``[CLS]``/``[SEP]`` added).

        Args:
          text: the text.

        Returns:
          The word pieces, as vocabulary tokens (``[UNK]`` for unknown words).

        Raises:
          TypeError: if ``text`` is not a ``str``.
        """
        if not isinstance(text, str):
            raise TypeError(f"WordPieceTokenizer.tokenize: text must be str, got {type(text)}.")
        if self._fast is not None:
            return self._fast_encodings([text], tokens=True)[0].tokens
        return self._tokenize_python(text)

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[str]]:
        """Tokenizes many texts at once (``tokenizers``' ``encode_batch`` on the fast backend).

        Args:
          texts: a sequence of ``str``.

        Returns:
          ``[tokenize(t) for t in texts]``.

        Raises:
          TypeError: if ``texts`` is a ``str`` or holds a non-``str``.
        """
        texts = self._check_texts("tokenize_batch", texts)
        if self._fast is not None:
            return [e.tokens for e in self._fast_encodings(texts, tokens=True)]
        return [self._tokenize_python(t) for t in texts]

    def _ids_batch(self, texts: list[str]) -> list[list[int]]:
        if self._fast is not None:
            return [e.ids for e in self._fast_encodings(texts)]
        vocab = self.vocab
        return [[vocab[t] for t in self._tokenize_python(text)] for text in texts]

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        """Maps tokens to ids (unknown tokens to ``[UNK]``)."""
        return [self.vocab.get(t, self.unk_token_id) for t in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """Maps ids back to tokens."""
        return [self.inverse.get(int(i), self.unk_token) for i in ids]

    def encode(
        self, first: str, second: str | None = None, max_length: int | None = None
    ) -> tuple[list[int], list[int]]:
        """``[CLS] first [SEP] (second [SEP])`` ids and segment ids (0 then 1).

        With ``max_length`` the texts are cut from their ends as Hugging Face's
        ``longest_first`` truncation does: a single text to ``max_length - 2`` tokens; of a
        pair (``m = max_length - 3`` tokens to share), the shorter text stays whole if it
        has at most ``m / 2`` tokens and the longer one gets the rest, else each gets
        ``m // 2`` and the odd token goes to the longer one (the second on equal lengths).

        Args:
          first: the first text.
          second: the optional second text (segment 1).
          max_length: the most ids returned, special tokens included; ``None``: no limit.

        Returns:
          ``(input_ids, token_type_ids)``, two lists of ints of the same length.

        Raises:
          TypeError: if a text is not a ``str``.
          ValueError: if ``max_length`` cannot hold the special tokens.
        """
        for name, text in (("first", first), ("second", second)):
            if not (isinstance(text, str) or (name == "second" and text is None)):
                raise TypeError(f"WordPieceTokenizer.encode: {name} must be str, got {type(text)}.")
        return self.encode_batch([first], None if second is None else [second], max_length)[0]

    def encode_batch(
        self,
        firsts: Sequence[str],
        seconds: Sequence[str] | None = None,
        max_length: int | None = None,
    ) -> list[tuple[list[int], list[int]]]:
        """:meth:`encode` over many texts (or text pairs) at once.

        On the ``tokenizers`` backend all the texts go through one Rust ``encode_batch``
        call; the special tokens and the truncation are added the same way on both backends.

        Args:
          firsts: the first texts.
          seconds: the second texts, one per first text, or ``None``.
          max_length: as in :meth:`encode`.

        Returns:
          ``[encode(f, s, max_length) for f, s in zip(firsts, seconds)]``.

        Raises:
          TypeError: if ``firsts``/``seconds`` is a ``str`` or holds a non-``str``.
          ValueError: if the two sequences differ in length, or ``max_length`` cannot hold
            the special tokens.
        """
        firsts = self._check_texts("encode_batch", firsts)
        n = len(firsts)
        if seconds is not None:
            seconds = self._check_texts("encode_batch", seconds)
            if len(seconds) != n:
                raise ValueError(
                    "encode_batch: firsts and seconds must have the same length, "
                    f"got {n} and {len(seconds)}."
                )
        specials = 2 if seconds is None else 3
        if max_length is not None and max_length < specials:
            raise ValueError(f"encode: max_length must be >= {specials}, got {max_length}.")
        ids = self._ids_batch(firsts if seconds is None else firsts + seconds)
        cls, sep = self.cls_token_id, self.sep_token_id
        out = []
        for i in range(n):
            a = ids[i]
            b = None if seconds is None else ids[n + i]
            if max_length is not None:
                budget = max_length - specials
                if b is None:
                    a = a[:budget]
                else:
                    a, b = _longest_first(a, b, budget)
            input_ids = [cls, *a, sep]
            if b is None:
                out.append((input_ids, [0] * len(input_ids)))
            else:
                input_ids += [*b, sep]
                out.append((input_ids, [0] * (len(a) + 2) + [1] * (len(b) + 1)))
        return out

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Joins word pieces back into text (``##`` pieces glued to the previous one).

        Args:
          ids: token ids.
          skip_special_tokens: leave out the special tokens.

        Returns:
          The text, words separated by spaces except between two CJK ideographs.
        """
        out = ""
        for token in self.convert_ids_to_tokens(ids):
            if skip_special_tokens and token in self.special_tokens:
                continue
            if token.startswith("##"):
                out += token[2:]
            elif out and not (_is_cjk(ord(token[0])) and _is_cjk(ord(out[-1]))):
                out += " " + token
            else:
                out += token
        return out


def _longest_first(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Cuts a pair to ``budget`` tokens as tokenizers' ``TruncationStrategy::LongestFirst``."""
    n1, n2 = len(a), len(b)
    if n1 + n2 <= budget:
        return a, b
    swap = n1 > n2
    if swap:  # n1 is the shorter length
        n1, n2 = n2, n1
    n2 = max(n1, budget - n1)
    if n1 + n2 > budget:
        n1 = budget // 2
        n2 = n1 + budget % 2
    if swap:
        n1, n2 = n2, n1
    return a[:n1], b[:n2]
