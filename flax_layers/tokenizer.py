"""A small pure-Python WordPiece tokenizer reading a BERT ``vocab.txt``.

Same algorithm as the original BERT tokenizer (Devlin et al., 2019,
google-research/bert ``tokenization.py``; Hugging Face ``BertTokenizer``):
clean the text, put spaces around CJK characters, split on whitespace,
lower-case and strip accents (uncased models), split off punctuation, then
greedy longest-match-first WordPiece with ``##`` continuation pieces (Wu et al.,
2016, arXiv:1609.08144). Special tokens such as ``[MASK]`` written in the text
are kept whole. :func:`trim_vocab` builds the bert4keras-style ``keep_tokens``
list for a smaller vocabulary.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = ["WordPieceTokenizer", "load_vocab", "trim_vocab"]

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


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class WordPieceTokenizer:
    """BERT WordPiece tokenizer over a ``vocab.txt`` (pure Python, no peers).

    ``tokenize`` = basic tokenization (clean, CJK spacing, whitespace split,
    optional lower-casing + accent stripping, punctuation split) followed by
    greedy longest-match-first WordPiece; words longer than
    ``max_input_chars_per_word`` or with no segmentation become ``[UNK]``.

    Args:
      vocab: ``{token: id}`` or a path to ``vocab.txt`` (or its directory).
      do_lower_case: lower-case and strip accents (uncased models).
      max_input_chars_per_word: longer words map to ``[UNK]``.
      unk_token, cls_token, sep_token, pad_token, mask_token: special tokens.

    Raises:
      ValueError: if a special token is missing from the vocabulary.

    Reference: Devlin et al., 2019 (arXiv:1810.04805), google-research/bert
    ``tokenization.py``; Wu et al., 2016 (arXiv:1609.08144).

    Example:
      >>> vocab = {t: i for i, t in enumerate(
      ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", ",", "hi"])}
      >>> tok = WordPieceTokenizer(vocab)
      >>> tok.tokenize("Unaffable, hi!")
      ['un', '##aff', '##able', ',', 'hi', '[UNK]']
      >>> tok.encode("hi", "unaffable")
      ([2, 9, 3, 5, 6, 7, 3], [0, 0, 0, 1, 1, 1, 1])
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
    ):
        self.vocab = dict(vocab) if isinstance(vocab, Mapping) else load_vocab(vocab)
        self.inverse = {i: t for t, i in self.vocab.items()}
        self.do_lower_case = do_lower_case
        self.max_input_chars_per_word = max_input_chars_per_word
        self.unk_token, self.cls_token, self.sep_token = unk_token, cls_token, sep_token
        self.pad_token, self.mask_token = pad_token, mask_token
        specials = [unk_token, cls_token, sep_token, pad_token, mask_token]
        for token in specials:
            if token not in self.vocab:
                raise ValueError(f"WordPieceTokenizer: special token {token!r} is not in vocab.")
        self.special_tokens = tuple(specials)
        self._special_re = re.compile(
            "(" + "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)) + ")"
        )

    @property
    def unk_id(self) -> int:
        """Id of the unknown token."""
        return self.vocab[self.unk_token]

    @property
    def cls_id(self) -> int:
        """Id of ``[CLS]``."""
        return self.vocab[self.cls_token]

    @property
    def sep_id(self) -> int:
        """Id of ``[SEP]``."""
        return self.vocab[self.sep_token]

    @property
    def pad_id(self) -> int:
        """Id of ``[PAD]``."""
        return self.vocab[self.pad_token]

    @property
    def mask_id(self) -> int:
        """Id of ``[MASK]``."""
        return self.vocab[self.mask_token]

    def _basic(self, text: str) -> list[str]:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                chars.append(" ")
            elif _is_cjk(cp):
                chars.extend((" ", ch, " "))
            else:
                chars.append(ch)
        words = []
        for word in "".join(chars).split():
            if self.do_lower_case:
                word = unicodedata.normalize("NFD", word.lower())
                word = "".join(c for c in word if unicodedata.category(c) != "Mn")
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

    def tokenize(self, text: str) -> list[str]:
        """Splits ``text`` into word pieces (no ``[CLS]``/``[SEP]`` added)."""
        if not isinstance(text, str):
            raise TypeError(f"WordPieceTokenizer.tokenize: text must be str, got {type(text)}.")
        tokens: list[str] = []
        for chunk in self._special_re.split(text):
            if chunk in self.special_tokens:
                tokens.append(chunk)
                continue
            for word in self._basic(chunk):
                tokens.extend(self._wordpiece(word))
        return tokens

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        """Maps tokens to ids (unknown tokens to ``[UNK]``)."""
        return [self.vocab.get(t, self.unk_id) for t in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """Maps ids back to tokens."""
        return [self.inverse.get(int(i), self.unk_token) for i in ids]

    def encode(
        self, first: str, second: str | None = None, max_length: int | None = None
    ) -> tuple[list[int], list[int]]:
        """``[CLS] first [SEP] (second [SEP])`` ids and segment ids (0 then 1).

        With ``max_length`` the longer text is truncated from its end, one token
        at a time (the first one on ties, as Hugging Face ``longest_first``),
        until the whole sequence fits.
        """
        a = self.tokenize(first)
        b = self.tokenize(second) if second is not None else None
        if max_length is not None:
            specials = 2 if b is None else 3
            if max_length < specials:
                raise ValueError(f"encode: max_length must be >= {specials}, got {max_length}.")
            while len(a) + (len(b) if b else 0) + specials > max_length:
                if b and len(b) > len(a):
                    b.pop()
                else:
                    a.pop()
        tokens = [self.cls_token, *a, self.sep_token]
        segments = [0] * len(tokens)
        if b is not None:
            tokens += [*b, self.sep_token]
            segments += [1] * (len(b) + 1)
        return self.convert_tokens_to_ids(tokens), segments

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Joins word pieces back into text (``##`` pieces glued to the previous one)."""
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
