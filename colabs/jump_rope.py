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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optax-flax-contrib/optax-flax-contrib/blob/main/colabs/jump_rope.ipynb)

# %% [markdown]
# # The shape of a spinning rope, by energy minimisation with optax
#
# A rope of unit density and length $\ell$ turns at angular velocity $\omega$ about a vertical
# axis (the $y$ axis); $x$ is the distance from the axis, gravity $g$ pulls along $-y$. In the
# rotating frame the equilibrium shape minimises the potential of the centrifugal and
# gravitational forces,
# $$E = \int \big(-\tfrac12\omega^2 x^2 + g\,y\big)\,ds ,$$
# over curves of fixed length between the two fixed ends. The length constraint is essential:
# its Lagrange multiplier is the tension (without it the $g=0$ problem has no minimum, the
# rope would stretch outwards forever).
#
# Two limits have closed forms to check against:
#
# * $\omega = 0$: the **catenary** $y = a\cosh\frac{x-b}{a} + c$, with horizontal tension
#   $H = g\,a$;
# * $g = 0$: the **troposkein** (the skipping-rope / Darrieus-blade shape). The axial force
#   $C$ is constant and the tension is $T(x) = T_0 - \tfrac12\omega^2x^2$, so
#   $$\frac{dy}{dx} = \frac{C}{\sqrt{T(x)^2 - C^2}}$$
#   (the troposkein of Blackwell & Reis, Sandia report SLA-74-0154 (1974): $C/\sqrt{(\lambda+\tfrac12\omega^2x^2)^2-C^2}$ with $\lambda = -T_0$), an
#   elliptic integral. At the widest point $x_{max}$ the rope is parallel to the axis, so
#   $T(x_{max}) = C$; the constants $(C, x_{max})$ follow from the span and the length.
#
# **Discretisation.** $N$ links of length $h=\ell/N$ with angles $\theta_i$: node
# $p_k = p_0 + h\sum_{i<k}(\cos\theta_i, \sin\theta_i)$. The length is exact by construction;
# the far end $p_N = B$ is imposed with an **augmented Lagrangian**
# $L = E(\theta) + \mu\cdot c + \tfrac{\rho}{2}|c|^2$, $c = p_N - B$, updating
# $\mu \leftarrow \mu + \rho\,c$ after each inner minimisation. At convergence $\mu$ is the
# force the hand exerts, i.e. the tension vector at the end: a second check against the closed
# forms. The inner minimisation compares three optimizers of this library / optax: Adam,
# `optax_contrib.lookahead(adam)` and `optax_contrib.adafactor`.

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
NAME = "jump_rope"
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

LINKS = 64 if QUICK else 256  # N, links of the discrete rope
CONVERGENCE_LINKS = (16, 32, 64) if QUICK else (16, 32, 64, 128, 256)  # discretisation study
OUTER = 30 if QUICK else 60  # augmented-Lagrangian multiplier updates
INNER = 200 if QUICK else 500  # optimizer steps per multiplier update
RHO = 10.0  # penalty weight of the augmented Lagrangian
LEARNING_RATE = 1e-2  # peak, cosine-decayed to 1e-5 over the run
LENGTH = 3.0
CATENARY_ENDS = ((-1.0, 0.0), (1.0, 0.0))  # omega = 0, g = 1
TROPOSKEIN_ENDS = ((0.0, 0.0), (0.0, 2.0))  # both ends on the axis, omega = 1, g = 0
GRAVITY_FAMILY = (0.0, 0.1, 0.2, 0.35, 0.5)  # g / omega^2 for the mixed-case plot

# %%
import json
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from scipy import integrate, optimize
from tqdm.auto import tqdm

from optax_contrib.adafactor import adafactor
from optax_contrib.lookahead import lookahead

print("jax", jax.__version__, "| quick mode:", QUICK)

# %% [markdown]
# ## Energy of the discrete rope
#
# On a straight link from $a$ to $b$ the integrals are exact: $\int y\,ds = h\,(y_a+y_b)/2$
# and $\int x^2 ds = h\,(x_a^2+x_ax_b+x_b^2)/3$.


# %%
def rope_nodes(theta, start, link):
    """Node positions [N+1, 2] of a chain of links of length `link` at angles `theta` [N]."""
    steps = link * jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)
    return jnp.concatenate([start[None], start + jnp.cumsum(steps, axis=0)], axis=0)


def rope_energy(theta, start, link, omega, g):
    p = rope_nodes(theta, start, link)
    xa, xb, ya, yb = p[:-1, 0], p[1:, 0], p[:-1, 1], p[1:, 1]
    centrifugal = -0.5 * omega**2 * (xa * xa + xa * xb + xb * xb) / 3
    return link * jnp.sum(centrifugal + g * (ya + yb) / 2)


def arc_guess(n, start, end, length):
    """Angles of a circular arc of the given length between the ends (bulging to the right)."""
    chord = np.subtract(end, start)
    beta = optimize.brentq(lambda b: length * np.sin(b) / b - np.hypot(*chord), 1e-9, np.pi - 1e-9)
    s = (np.arange(n) + 0.5) / n
    return jnp.asarray(np.arctan2(chord[1], chord[0]) + beta * (2 * s - 1), jnp.float32)


def make_optimizers(total_steps):
    schedule = optax.cosine_decay_schedule(LEARNING_RATE, total_steps, alpha=1e-3)
    return {
        "adam": optax.adam(schedule),
        "lookahead(adam)": lookahead(optax.adam(schedule), sync_period=5, slow_step_size=0.5),
        "adafactor": adafactor(schedule, multiply_by_parameter_scale=False),
    }


_outer_steps = {}  # one jitted multiplier update per optimizer (retraced only for new N)


def outer_step_for(optimizer):
    """Jitted: INNER optimizer steps on the augmented Lagrangian, then the multiplier update."""
    if id(optimizer) in _outer_steps:
        return _outer_steps[id(optimizer)]

    @jax.jit
    def outer_step(theta, opt_state, mu, start, end, omega, g):
        link = LENGTH / theta.shape[0]

        def lagrangian(theta):
            c = rope_nodes(theta, start, link)[-1] - end
            return rope_energy(theta, start, link, omega, g) + mu @ c + 0.5 * RHO * c @ c

        def inner(carry, _):
            theta, opt_state = carry
            updates, opt_state = optimizer.update(jax.grad(lagrangian)(theta), opt_state, theta)
            return (optax.apply_updates(theta, updates), opt_state), None

        (theta, opt_state), _ = jax.lax.scan(inner, (theta, opt_state), None, length=INNER)
        c = rope_nodes(theta, start, link)[-1] - end
        return theta, opt_state, mu + RHO * c, rope_energy(theta, start, link, omega, g), c

    _outer_steps[id(optimizer)] = outer_step
    return outer_step


def solve_rope(optimizer, n, start, end, omega, g, desc=None):
    """Minimise the energy of an n-link rope from `start` to `end` (augmented Lagrangian).

    Returns the angles, the end multiplier mu (the force on the far end) and the history
    (step, energy, |end miss|) after each multiplier update.
    """
    outer_step = outer_step_for(optimizer)
    start, end = jnp.asarray(start, jnp.float32), jnp.asarray(end, jnp.float32)
    omega, g = jnp.float32(omega), jnp.float32(g)
    theta = arc_guess(n, start, end, LENGTH)
    opt_state, mu, history = optimizer.init(theta), jnp.zeros(2), []
    for k in tqdm(range(OUTER), desc=desc, leave=False, disable=desc is None):
        theta, opt_state, mu, energy, c = outer_step(theta, opt_state, mu, start, end, omega, g)
        history.append(((k + 1) * INNER, float(energy), float(jnp.linalg.norm(c))))
    return theta, np.asarray(mu), np.array(history)


def distance_to_curve(points, curve):
    """Distance of each point [P, 2] to the polyline `curve` [Q, 2]."""
    a, b, p = curve[:-1][None], curve[1:][None], points[:, None]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / (ab * ab).sum(-1), 0.0, 1.0)
    return np.sqrt(((a + t[..., None] * ab - p) ** 2).sum(-1)).min(axis=1)


# %% [markdown]
# ## Closed forms
#
# **Catenary** through $(\pm w, 0)$ with length $\ell$: $2a\sinh(w/a) = \ell$ fixes $a$.
# **Troposkein** with ends $(0,0)$ and $(0,D)$: substituting $x = x_{max}\sin\varphi$ removes
# the square-root singularity at $x_{max}$ ($T - C = \tfrac12\omega^2x_{max}^2\cos^2\varphi$):
# $$\frac{D}{2} = \int_0^{\pi/2}\frac{\sqrt2\,C\,d\varphi}{\omega\sqrt{T+C}},\qquad
#   \frac{\ell}{2} = \int_0^{\pi/2}\frac{\sqrt2\,T\,d\varphi}{\omega\sqrt{T+C}},$$
# smooth integrands (Gauss-Legendre), two equations for $(C, x_{max})$ solved with scipy.

# %%
(cx0, _), (cx1, _) = CATENARY_ENDS
half_span = (cx1 - cx0) / 2
cat_a = optimize.brentq(lambda a: 2 * a * np.sinh(half_span / a) - LENGTH, 1e-2, 1e3)
xs = np.linspace(cx0, cx1, 20001)
catenary = np.stack(
    [xs, cat_a * np.cosh((xs - (cx0 + cx1) / 2) / cat_a) - cat_a * np.cosh(half_span / cat_a)], 1
)
cat_force = np.array([1.0 * cat_a, 1.0 * LENGTH / 2])  # (H, V) at the hand, g = 1

OMEGA, SPAN = 1.0, TROPOSKEIN_ENDS[1][1] - TROPOSKEIN_ENDS[0][1]
gl_x, gl_w = np.polynomial.legendre.leggauss(64)
gl_phi, gl_w = (gl_x + 1) * np.pi / 4, gl_w * np.pi / 4


def troposkein_integrals(c, x_max, phi=gl_phi):
    q = 0.5 * OMEGA**2 * x_max**2 * np.cos(phi) ** 2  # T - C
    dphi = np.sqrt(2) / (OMEGA * np.sqrt(2 * c + q))
    return c * dphi, (c + q) * dphi  # integrands of dy and ds


def troposkein_equations(log_params):
    c, x_max = np.exp(log_params)
    dy, ds = troposkein_integrals(c, x_max)
    return [gl_w @ dy - SPAN / 2, gl_w @ ds - LENGTH / 2]


trop_c, trop_xmax = np.exp(optimize.fsolve(troposkein_equations, [0.0, 0.0], xtol=1e-13))
trop_t0 = trop_c + 0.5 * OMEGA**2 * trop_xmax**2
phi = np.linspace(0, np.pi / 2, 20001)
y_half = integrate.cumulative_trapezoid(
    troposkein_integrals(trop_c, trop_xmax, phi)[0], phi, initial=0
)
x_half = trop_xmax * np.sin(phi)
troposkein = np.concatenate(
    [np.stack([x_half, y_half], 1), np.stack([x_half, SPAN - y_half], 1)[::-1]]
)
trop_force = np.array([np.sqrt(trop_t0**2 - trop_c**2), trop_c])  # (radial, axial) at the end
print(
    f"catenary: a = {cat_a:.6f}; troposkein: C = {trop_c:.6f}, x_max = {trop_xmax:.6f}, "
    f"T0 = {trop_t0:.6f}, residual {np.abs(troposkein_equations(np.log([trop_c, trop_xmax]))).max():.1e}"
)

# %% [markdown]
# ## Solve both limits with three optimizers

# %%
cases = {
    "catenary (ω=0)": dict(ends=CATENARY_ENDS, omega=0.0, g=1.0, exact=catenary, force=cat_force),
    "troposkein (g=0)": dict(
        ends=TROPOSKEIN_ENDS, omega=OMEGA, g=0.0, exact=troposkein, force=trop_force
    ),
}
optimizers = make_optimizers(OUTER * INNER)
solutions, rows = {}, []
t0 = time.perf_counter()
for case, spec in cases.items():
    for opt_name, opt in optimizers.items():
        theta, mu, history = solve_rope(
            opt, LINKS, *spec["ends"], spec["omega"], spec["g"], desc=f"{case}, {opt_name}"
        )
        nodes = np.asarray(
            rope_nodes(theta, jnp.asarray(spec["ends"][0], jnp.float32), LENGTH / LINKS)
        )
        shape_error = distance_to_curve(nodes, spec["exact"]).max()
        force_error = np.abs(np.abs(mu) - spec["force"]).max() / np.linalg.norm(spec["force"])
        solutions[case, opt_name] = (nodes, history)
        rows.append((case, opt_name, shape_error, force_error, history[-1, 2], history[-1, 1]))
print(f"solved {len(rows)} problems in {time.perf_counter() - t0:.1f}s\n")
print("| case | optimizer | max shape error / ℓ | end force rel. error | end miss | energy |")
print("|---|---|---|---|---|---|")
for case, opt_name, err, ferr, miss, energy in rows:
    print(f"| {case} | {opt_name} | {err / LENGTH:.2e} | {ferr:.2e} | {miss:.1e} | {energy:.6f} |")

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
for ax, (case, spec) in zip(axes[:2], cases.items()):
    ax.plot(*spec["exact"].T, "k-", lw=4, alpha=0.25, label="closed form")
    for marker, opt_name in zip("o+x", optimizers):
        nodes, _ = solutions[case, opt_name]
        ax.plot(*nodes.T, marker, ms=4, label=f"{opt_name} (N={LINKS})")
    ax.set(title=case, xlabel="x (distance from axis)", ylabel="y (height)", aspect="equal")
    ax.legend(fontsize=8, loc="center" if spec["omega"] else "lower left")
    ax.grid(alpha=0.3)
for case, style in zip(cases, ("-", "--")):
    final_energy = min(solutions[case, o][1][-1, 1] for o in optimizers)
    for opt_name, color in zip(optimizers, ("tab:blue", "tab:orange", "tab:green")):
        h = solutions[case, opt_name][1]
        gap = np.abs(h[:, 1] - final_energy) + h[:, 2]
        axes[2].semilogy(
            h[:, 0],
            np.maximum(gap, 1e-9),
            style,
            color=color,
            label=f"{case.split()[0]}, {opt_name}",
        )
axes[2].set(title="|E − E_final| + |end miss| per multiplier update", xlabel="optimizer step")
axes[2].legend(fontsize=7)
axes[2].grid(alpha=0.3)
fig.tight_layout()
fig.savefig(OUT / "shapes.png", dpi=120)

# %% [markdown]
# ## Discretisation error
#
# The optimizers all reach the discrete minimiser, so the remaining shape error is the chain
# approximation of a smooth curve: it should fall like $O(N^{-2})$.

# %%
conv = {case: [] for case in cases}
for n in tqdm(CONVERGENCE_LINKS, desc="discretisation study"):
    for case, spec in cases.items():
        theta, _, _ = solve_rope(optimizers["adam"], n, *spec["ends"], spec["omega"], spec["g"])
        start = jnp.asarray(spec["ends"][0], jnp.float32)
        nodes = np.asarray(rope_nodes(theta, start, LENGTH / n))
        conv[case].append(distance_to_curve(nodes, spec["exact"]).max() / LENGTH)
orders = {
    case: -np.polyfit(np.log(CONVERGENCE_LINKS), np.log(errs), 1)[0] for case, errs in conv.items()
}
for case, errs in conv.items():
    listed = ", ".join(f"{e:.2e}" for e in errs)
    print(f"{case}: max shape error / ℓ = {listed} -> order {orders[case]:.2f}")

# %% [markdown]
# ## Both forces at once
#
# With both ends on the axis and gravity along it, the family between the troposkein
# ($g = 0$) and a rope sagging under its weight: the lower lobe widens as $g/\omega^2$ grows.
# No closed form here; the same jitted solver handles every value of $g$.

# %%
family = {}
for g in tqdm(GRAVITY_FAMILY, desc="gravity family"):
    theta, _, _ = solve_rope(optimizers["adam"], LINKS, *TROPOSKEIN_ENDS, OMEGA, g)
    start = jnp.asarray(TROPOSKEIN_ENDS[0], jnp.float32)
    family[g] = np.asarray(rope_nodes(theta, start, LENGTH / LINKS))
centre_height = {g: family[g][:, 1].mean() for g in GRAVITY_FAMILY}  # centre of mass

fig2, (ax_conv, ax_fam) = plt.subplots(1, 2, figsize=(11, 4.6))
for case, errs in conv.items():
    ax_conv.loglog(CONVERGENCE_LINKS, errs, "o-", label=f"{case}, order {orders[case]:.2f}")
n_ref = np.array(CONVERGENCE_LINKS, float)
ax_conv.loglog(n_ref, conv["catenary (ω=0)"][0] * (n_ref[0] / n_ref) ** 2, "k:", label="N⁻²")
ax_conv.set(title="discretisation error (adam)", xlabel="links N", ylabel="max shape error / ℓ")
ax_conv.legend(fontsize=8)
ax_conv.grid(alpha=0.3, which="both")
for g in GRAVITY_FAMILY:
    ax_fam.plot(*family[g].T, "-", label=f"g/ω² = {g}")
ax_fam.plot(*troposkein.T, "k:", lw=2, label="troposkein (closed form)")
ax_fam.axvline(0, color="gray", lw=0.8)
ax_fam.set(
    title="rope on a vertical spinning axis",
    xlabel="x (distance from axis)",
    ylabel="y (height)",
    aspect="equal",
)
ax_fam.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
fig2.tight_layout()
fig2.savefig(OUT / "convergence_and_family.png", dpi=120)

# %%
errors = {(case, opt): err for case, opt, err, *_ in rows}
summary = {
    "catenary_max_err": float(max(errors["catenary (ω=0)", o] for o in optimizers) / LENGTH),
    "troposkein_max_err": float(max(errors["troposkein (g=0)", o] for o in optimizers) / LENGTH),
    "max_force_rel_err": float(max(r[3] for r in rows)),
    "max_end_miss": float(max(r[4] for r in rows)),
    "catenary_order": round(float(orders["catenary (ω=0)"]), 2),
    "troposkein_order": round(float(orders["troposkein (g=0)"]), 2),
    "links": LINKS,
    "quick": QUICK,
}
(OUT / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))

tolerance = (
    5e-4 * (64 / LINKS) ** 2
)  # the O(N^-2) chain error is about 6e-5 of the length at N = 64
assert summary["catenary_max_err"] < tolerance, "catenary shape off"
assert summary["troposkein_max_err"] < tolerance, "troposkein shape off"
assert summary["max_force_rel_err"] < 1e-2, "end multiplier is not the tension"
assert summary["max_end_miss"] < 1e-4, "end constraint not met"
assert 1.7 < summary["catenary_order"] < 2.3 and 1.7 < summary["troposkein_order"] < 2.3, (
    "not O(N^-2)"
)
assert all(np.diff([centre_height[g] for g in GRAVITY_FAMILY]) < 0), "gravity should lower the rope"


# %% [markdown]
# **Recorded results.** Written by `python -m colabs --readme` from README.md's notebook table
# (quick mode) and `colabs/results/jump_rope.json` (the latest `python -m colabs --full
# jump_rope`); the run above printed its own figures.
#
# | figure | quick mode | full size |
# |---|--:|--:|
# | `catenary_max_err` | 5.27e-05 | 3.32e-06 |
# | `troposkein_max_err` | 5.9e-05 | 3.69e-06 |
# | `max_force_rel_err` | 0.000108 | 6.75e-06 |
# | `max_end_miss` | 5.96e-08 | 4.3e-07 |
# | `catenary_order` | 2.01 | 2 |
# | `troposkein_order` | 2.01 | 2.01 |
# | `links` | 64 | 256 |
#
# The full-size run took 20 s on 2 x86_64 CPU cores, Python 3.11.7, jax 0.10.2, flax 0.12.8,
# optax 0.2.8 (2026-11-30, commit `1faf986`).
