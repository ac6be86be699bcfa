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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optax-flax-contrib/optax-flax-contrib/blob/main/colabs/init_geometry.ipynb)

# %% [markdown]
# # Initialisation from a geometric view, measured
#
# Random vectors in high dimension are nearly orthogonal: the cosine of two independent
# isotropic vectors in $\mathbb{R}^n$ has mean 0 and variance $1/n$. So a matrix
# $W\in\mathbb{R}^{m\times n}$ ($n$ inputs, $m$ outputs, $y = Wx$) with i.i.d. zero-mean
# entries of variance $\sigma^2$ has nearly orthogonal columns, and
# $$\mathbb{E}[W^\top W] = m\sigma^2 I ,\qquad \mathbb{E}\|Wx\|^2 = m\sigma^2\|x\|^2 .$$
# With $\sigma^2 = 1/m$ ("fan-out") $W^\top W \approx I$ for $m \ge n$: the layer is nearly
# an isometry and norms are preserved. LeCun's $1/n$ ("fan-in") preserves the second moment
# of each *unit* instead ($\|y\|^2/\|x\|^2 \approx m/n$), Xavier's $2/(n+m)$ is the
# compromise, and ReLU halves the energy, hence He's factor 2. Predictions checked here:
#
# 1. $\operatorname{Var}\cos(u, v) = 1/n$;
# 2. orthogonality error $\operatorname{mean}\big((W^\top W - I)^2\big) = \frac{n-2+\kappa}{n\,m}$
#    for $\sigma^2=1/m$ and entry kurtosis $\kappa$ (off-diagonal variance $1/m$, diagonal
#    $(\kappa-1)/m$); for the square Gaussian case ($\kappa=3$) this is $(n+1)/n^2$. Any
#    zero-mean distribution works: uniform has $\kappa = 9/5$, a normal truncated at
#    $\pm2\sigma$ about 2.36;
# 3. one layer multiplies the energy by $m\sigma^2$ (times $\frac12$ after a ReLU);
# 4. through a deep stack of layers of varying widths the energies multiply: after $L$
#    layers $\log_2\|h_L\|^2/\|h_0\|^2 = \sum_l \log_2(m_l\sigma_l^2\,[\tfrac12])$ in
#    expectation: 0 for fan-out (linear) and He fan-out (ReLU), $\log_2(m_L/n_0)$ for the
#    fan-in rules, drift for the rest.
#
# Library API used: `flax_layers.initializers` (`norm_preserving`, `lecun`, `xavier`, `he`,
# `geometric_init`, `orthogonality_error`, `norm_preservation_ratio`). Flax kernels are
# stored `[in, out]` ($K = W^\top$), so the article's $W^\top W$ is `K @ K.T` there.

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
NAME = "init_geometry"
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
# Settings: the only cell to edit. Quick mode (default) runs in well under a minute on a
# 2-core CPU; set COLABS_FULL=1 (or QUICK = False) for the full-size run.
QUICK = os.environ.get("COLABS_FULL", "0") != "1"

WIDTHS = (16, 32, 64, 128, 256, 512) if QUICK else (16, 32, 64, 128, 256, 512, 1024, 2048)
SAMPLES = 2**16 if QUICK else 2**18  # matrix entries (or vector pairs x n) per width
DEPTH = 12 if QUICK else 48  # layers of the deep stacks
STACK_WIDTHS = (128, 256, 512) if QUICK else (256, 512, 1024)  # hidden widths drawn from these
STACK_SEEDS = 8 if QUICK else 32  # weight draws per stack
STACK_BATCH = 64  # isotropic Gaussian inputs per draw
SEED = 0

# %%
import functools
import json

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from flax_layers.initializers import (
    he,
    lecun,
    norm_preservation_ratio,
    norm_preserving,
    orthogonality_error,
    xavier,
)

print("jax", jax.__version__, "| quick mode:", QUICK)

# "rbg" keys compile much faster than the default threefry on CPU (one compile per shape).
key = jax.random.key(SEED, impl="rbg")

# %% [markdown]
# ## 1. Random vectors are nearly orthogonal: $\operatorname{Var}\cos = 1/n$

# %%
cos_rows = []
for i, n in enumerate(WIDTHS):
    pairs = max(SAMPLES // n, 4096)
    u, v = jax.random.normal(jax.random.fold_in(key, i), (2, pairs, n))
    cos = jnp.sum(u * v, -1) / (jnp.linalg.norm(u, axis=-1) * jnp.linalg.norm(v, axis=-1))
    cos_rows.append((n, float(jnp.mean(cos)), float(jnp.var(cos)), 1 / n))
cos_rel_err = max(abs(var / pred - 1) for _, _, var, pred in cos_rows)
print("| n | mean cos | Var cos | 1/n |\n|---|---|---|---|")
for n, mean, var, pred in cos_rows:
    print(f"| {n} | {mean:+.4f} | {var:.5f} | {pred:.5f} |")

# %% [markdown]
# ## 2. Orthogonality error of $W^\top W$ versus width
#
# Measured with `orthogonality_error` on kernels from `norm_preserving(distribution)`
# ($\sigma^2 = 1/m$), averaged over enough draws to make the estimate precise, against
# $\frac{n-2+\kappa}{nm}$, for square layers ($m=n$) and for 4x expanding ones ($m=4n$).

# %%
KURTOSIS = {
    "normal": 3.0,
    "uniform": 9 / 5,
    "truncated_normal": 3.0 + float(stats.truncnorm(-2, 2).stats(moments="k")),
}
ortho_error = jax.jit(jax.vmap(orthogonality_error))
ortho = {}  # (distribution, expansion) -> list of (n, measured, predicted)
cases = [(dist, 1) for dist in KURTOSIS] + [("normal", 4)]
for dist, expand in tqdm(cases, desc="orthogonality error"):
    init = norm_preserving(dist, batch_axis=0)  # axis 0 indexes independent draws
    ortho[dist, expand] = []
    for n in WIDTHS:
        m = expand * n
        draws = max(SAMPLES // (n * m), 4)
        kernels = init(jax.random.fold_in(key, 1000 * expand + n), (draws, n, m))  # [in, out]
        measured = float(jnp.mean(ortho_error(kernels)))
        predicted = (n - 2 + KURTOSIS[dist]) / (n * m)
        ortho[dist, expand].append((n, measured, predicted))
ortho_rel_err = max(abs(meas / pred - 1) for rows in ortho.values() for _, meas, pred in rows)
print("κ:", {d: round(k, 3) for d, k in KURTOSIS.items()})
print("| n | " + " | ".join(f"{d}, m={e}n" for d, e in ortho) + " | (n+1)/n² |")
print("|---" * (len(ortho) + 2) + "|")
for j, n in enumerate(WIDTHS):
    cells = " | ".join(f"{rows[j][1]:.3e}" for rows in ortho.values())
    print(f"| {n} | {cells} | {(n + 1) / n**2:.3e} |")
print(f"largest relative deviation from the prediction: {ortho_rel_err:.3f}")

# %% [markdown]
# ## 3. One layer: energy gain $m\sigma^2$, halved by ReLU
#
# `norm_preservation_ratio(K, x)` is the mean of $\|xK\|/\|x\|$; for wide layers its square
# is the energy gain. Measured on an expanding layer (256 → 1024) and a contracting one
# (1024 → 256), with and without ReLU.

# %%
INITS = {  # name -> (initialiser factory, variance as a function of (fan_in n, fan_out m))
    "LeCun 1/n": (lecun, lambda n, m: 1 / n),
    "fan-out 1/m": (norm_preserving, lambda n, m: 1 / m),
    "Xavier 2/(n+m)": (xavier, lambda n, m: 2 / (n + m)),
    "He fan-in 2/n": (functools.partial(he, mode="fan_in"), lambda n, m: 2 / n),
    "He fan-out 2/m": (functools.partial(he, mode="fan_out"), lambda n, m: 2 / m),
}
x = jax.random.normal(jax.random.fold_in(key, 7), (512, 1024))
gain_rows, gain_rel_err = [], 0.0
for name, (factory, variance) in INITS.items():
    init, row = factory(), [name]
    for n, m in ((256, 1024), (1024, 256)):
        kernel = init(jax.random.fold_in(key, n), (n, m))
        linear = float(norm_preservation_ratio(kernel, x[:, :n])) ** 2
        relu = float(
            jnp.mean(jnp.sum(jax.nn.relu(x[:, :n] @ kernel) ** 2, -1) / jnp.sum(x[:, :n] ** 2, -1))
        )
        predicted = m * variance(n, m)
        gain_rel_err = max(
            gain_rel_err, abs(linear / predicted - 1), abs(relu / (predicted / 2) - 1)
        )
        row += [predicted, linear, relu]
    gain_rows.append(row)
print("| init | 256→1024 predicted | linear | ReLU | 1024→256 predicted | linear | ReLU |")
print("|---|---|---|---|---|---|---|")
for name, *vals in gain_rows:
    print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
print(f"(ReLU column predicted: half the linear one) largest relative deviation {gain_rel_err:.3f}")

# %% [markdown]
# ## 4. Deep stacks of varying width
#
# `DEPTH` layers whose widths are drawn at random from `STACK_WIDTHS` (input 256, last layer
# the widest, so that preserving norms and preserving per-unit moments end apart).
# The measured curve is $\log_2$ of the mean energy ratio over `STACK_SEEDS` weight draws x
# `STACK_BATCH` Gaussian inputs; the predicted one sums $\log_2(m_l\sigma_l^2[\tfrac12])$.
# All these initialisers draw the same normal samples for the same key, scaled by their own
# standard deviation, so the random fluctuations are shared and the gaps between the curves
# are exact.

# %%
widths = (
    [256] + list(np.random.default_rng(SEED).choice(STACK_WIDTHS, DEPTH - 1)) + [max(STACK_WIDTHS)]
)
widths = [int(w) for w in widths]
x0 = jax.random.normal(jax.random.fold_in(key, 11), (STACK_SEEDS, STACK_BATCH, widths[0]))
e0 = jnp.sum(x0**2, -1)
apply_layer = jax.jit(lambda h, k: jnp.einsum("sbn,snm->sbm", h, k))
stack = {}  # (init, relu) -> (measured [DEPTH], predicted [DEPTH])
for name, (factory, variance) in tqdm(INITS.items(), desc="deep stacks"):
    init = factory(batch_axis=0)  # [draws, in, out]: axis 0 indexes independent draws
    h = {False: x0, True: x0}
    ratios = {False: [], True: []}
    for layer, (n, m) in enumerate(zip(widths[:-1], widths[1:])):
        kernels = init(jax.random.fold_in(key, 100 + layer), (STACK_SEEDS, n, m))
        for relu in (False, True):
            y = apply_layer(h[relu], kernels)
            h[relu] = jax.nn.relu(y) if relu else y
            ratios[relu].append(float(jnp.mean(jnp.sum(h[relu] ** 2, -1) / e0)))
    for relu in (False, True):
        gains = [
            np.log2(m * variance(n, m) * (0.5 if relu else 1.0))
            for n, m in zip(widths[:-1], widths[1:])
        ]
        stack[name, relu] = (np.log2(ratios[relu]), np.cumsum(gains))
stack_dev = {
    relu: max(np.abs(meas - pred).max() for (_, r), (meas, pred) in stack.items() if r == relu)
    for relu in (False, True)
}
print("widths:", widths)
print(
    "| init | linear: final log2 ratio (predicted) | ReLU: final log2 ratio (predicted) |\n|---|---|---|"
)
for name in INITS:
    (ml, pl), (mr, pr) = stack[name, False], stack[name, True]
    print(f"| {name} | {ml[-1]:+.2f} ({pl[-1]:+.2f}) | {mr[-1]:+.2f} ({pr[-1]:+.2f}) |")
print(
    f"largest deviation at any depth: linear {stack_dev[False]:.3f} bits, ReLU {stack_dev[True]:.3f} bits"
)

# %%
fig, axes = plt.subplots(2, 2, figsize=(12, 9))
ax = axes[0, 0]
ns = np.array(WIDTHS)
ax.loglog(ns, [r[2] for r in cos_rows], "o", label="measured Var cos")
ax.loglog(ns, 1 / ns, "k--", label="1/n")
ax.set(title="cosine of two random vectors", xlabel="dimension n", ylabel="variance")
ax.legend()
ax = axes[0, 1]
for (dist, expand), rows in ortho.items():
    ax.loglog(ns, [r[1] for r in rows], "o", label=f"{dist}, m={expand}n")
    ax.loglog(ns, [r[2] for r in rows], "k:", lw=1)
ax.loglog(ns, (ns + 1) / ns**2, "k--", lw=1, label="(n+1)/n²  (dotted: (n−2+κ)/(nm))")
ax.set(title="orthogonality error mean((WᵀW − I)²), σ² = 1/m", xlabel="inputs n", ylabel="error")
ax.legend(fontsize=8)
for ax, relu in zip(axes[1], (False, True)):
    for (name, r), (meas, pred) in stack.items():
        if r == relu:
            (line,) = ax.plot(range(DEPTH + 1), [0, *meas], "-", label=name)
            ax.plot(range(DEPTH + 1), [0, *pred], "--", color=line.get_color(), lw=1)
    ax.set(
        title=f"deep stack, {'ReLU' if relu else 'linear'} (dashed: prediction)",
        xlabel="layer",
        ylabel="log2 ‖h_l‖² / ‖h_0‖²",
    )
    ax.legend(fontsize=8)
for ax in axes[0]:
    ax.set_xticks(WIDTHS, [str(n) for n in WIDTHS])
    ax.xaxis.set_minor_locator(plt.NullLocator())
for ax in axes.flat:
    ax.grid(alpha=0.3, which="both")
fig.tight_layout()
fig.savefig(OUT / "geometry.png", dpi=120)

# %%
final = {name: (stack[name, False][0][-1], stack[name, True][0][-1]) for name in INITS}
summary = {
    "cos_var_rel_err": round(cos_rel_err, 4),
    "ortho_rel_err": round(ortho_rel_err, 4),
    "layer_gain_rel_err": round(gain_rel_err, 4),
    "stack_dev_bits_linear": round(float(stack_dev[False]), 3),
    "stack_dev_bits_relu": round(float(stack_dev[True]), 3),
    "fan_out_linear_log2": round(float(final["fan-out 1/m"][0]), 3),
    "he_fan_out_relu_log2": round(float(final["He fan-out 2/m"][1]), 3),
    "lecun_linear_log2": round(float(final["LeCun 1/n"][0]), 3),
    "quick": QUICK,
}
(OUT / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))

assert summary["cos_var_rel_err"] < 0.1, "Var cos is not 1/n"
assert summary["ortho_rel_err"] < 0.1, "orthogonality error not within 10% of (n-2+κ)/(nm)"
assert summary["layer_gain_rel_err"] < 0.1, "one-layer energy gain is not m σ² (/2 with ReLU)"
assert summary["stack_dev_bits_linear"] < 0.15, "linear deep stack off the prediction"
# ReLU energies are heavy-tailed (log-normal-like over depth): ~0.5 bit of sampling noise at
# the committed sizes. A variance off by 6% per layer, or fan-in/fan-out swapped, is > 1 bit.
assert summary["stack_dev_bits_relu"] < 1.0, "ReLU deep stack off the prediction"
assert abs(summary["fan_out_linear_log2"]) < 0.15, "fan-out does not preserve norms"
assert abs(summary["he_fan_out_relu_log2"]) < 1.0, "He fan-out does not preserve norms with ReLU"
expected_lecun = np.log2(widths[-1] / widths[0])  # fan-in keeps per-unit moments instead
assert abs(summary["lecun_linear_log2"] - expected_lecun) < 0.15, (
    "LeCun energy ratio is not m_L/n_0"
)


# %% [markdown]
# **Recorded results.** Written by `python -m colabs --readme` from README.md's notebook table
# (quick mode) and `colabs/results/init_geometry.json` (the latest `python -m colabs --full
# init_geometry`); the run above printed its own figures.
#
# | figure | quick mode | full size |
# |---|--:|--:|
# | `cos_var_rel_err` | 0.041 | 0.0287 |
# | `ortho_rel_err` | 0.0356 | 0.0206 |
# | `layer_gain_rel_err` | 0.0081 | 0.0081 |
# | `stack_dev_bits_linear` | 0.062 | 0.034 |
# | `stack_dev_bits_relu` | 0.218 | 0.499 |
# | `fan_out_linear_log2` | -0.03 | -0.023 |
# | `he_fan_out_relu_log2` | -0.182 | 0.446 |
# | `lecun_linear_log2` | 0.97 | 1.98 |
#
# The full-size run took 85 s on 2 x86_64 CPU cores, Python 3.11.7, jax 0.10.2, flax 0.12.8,
# optax 0.2.8 (2026-11-30, commit `1faf986`).
