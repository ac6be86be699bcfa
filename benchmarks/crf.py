"""CRF / Viterbi / LinearChainCRF / Bi-MEMM on CPU: ours (JAX) against peers, side by side.

Run ``python -m benchmarks.crf`` (``--quick`` for a short smoke run: fewer repeats, no
T = 8,192 and no parallel scan at T = 1,024, memory not timed; ``--only SECTION`` for
the sections whose name contains SECTION: crf, distribution, holes, algorithms, memory,
memm). Batch 32, 20 tags,
T = 128 unless a row says otherwise; random emissions, lengths between T/2 and T, row 0
full (pytorch-crf needs every row's first position valid).

Sections:

* ``crf``: CRF log-likelihood forward + backward (gradients for emissions, transitions,
  start and end) with our ``"rescaled"`` (default) and ``"sequential"`` algorithms vs
  pytorch-crf (``torch.set_num_threads(2)``) and Viterbi vs pytorch-crf ``decode``, goal
  ≥ 50× for both (for fwd+bwd, with the default ``"rescaled"`` algorithm). When
  torch-struct imports, also the log-partition gradient, entropy and argmax against
  ``torch_struct.LinearChainCRF`` (its potentials ``[B, T-1, K, K]`` are built from the
  same emissions inside the timed call).
* ``distribution``: ``flax_layers.LinearChainCRF`` entropy, KL divergence, sampling and
  top-5. Entropy, KL and sampling are set against SynJax's absolute times recorded on this
  shape on this machine (SynJax is not on the registry, so they are constants here, not
  measured in the run); top-5 against our Viterbi. Goals: entropy,
  KL and sampling ≥ 10× faster than SynJax; top_k(5) within 10× of our Viterbi.
* ``holes``: CRF fwd+bwd with a concrete right-padded mask, the same mask with holes
  (positions 0 and 5 masked in every row) and a traced right-padded mask.
* ``algorithms``: ``jax.grad`` of the summed ``crf_log_partition`` with the rescaled,
  sequential and parallel algorithms at T = 1,024 (B = 32) and T = 8,192 (B = 8).
* ``memory``: peak memory (compiled ``memory_analysis()``) and time of the CRF
  log-likelihood fwd+bwd at T = 16,384, B = 8: rescaled, sequential, sequential with
  ``checkpoint=True``.
* ``memm``: Bi-MEMM loss fwd+bwd vs our CRF (the article's claim: faster).

Every JAX function is compiled (lower + compile, reported separately) and warmed up
first; then the sides of a comparison are sampled round-robin in one process
(:mod:`benchmarks.timing`) and each reports its median (torch-struct, seconds a call,
in its own group with fewer repeats). Each sample is primed (one untimed call right
before the timed one, for ours and pytorch-crf alike; not for torch-struct, whose calls
take seconds): without it, every sample of ours would time the JAX runtime waking up
after the peer's 13-100 ms turn (about 0.2-0.8 ms on this 2-core VM) rather than the
computation. ``--unprimed`` times without it. ``OMP_WAIT_POLICY=PASSIVE`` is set before torch
loads, so its idle threads do not spin on the cores the next sample needs.

The limit columns (:mod:`benchmarks.timing`, measured in this process): the bytes the
minimal algorithm must move (emissions read, tags read or written, the emission gradient
written for fwd+bwd) as a share of the copy bandwidth, and its ``K × K`` work as a share
of the float32 matmul peak: ``2 K²`` FLOPs a row and step per sweep (multiply-add; for
Viterbi add-max), three sweeps for a gradient or marginals (forward, backward, expected
transition counts), one for Viterbi or a forward pass. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Without this, torch's OpenMP threads spin after each call and take the cores from the
# next sample, ours or theirs (on a shared 2-core machine: ours 2.0 -> 7.1 ms and
# pytorch-crf 44 -> 324 ms for the CRF fwd+bwd, sampled round-robin).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.timing import (  # noqa: E402
    LIMIT_HEADER,
    Machine,
    compile_jit,
    jax_sampler,
    limit_cells,
    machine_limits,
    markdown_header,
    markdown_row,
    medians_ms,
    timed,
)
from flax_layers import (  # noqa: E402
    LinearChainCRF,
    crf_log_likelihood,
    crf_log_partition,
    memm_log_likelihood,
    viterbi_decode,
)

BATCH, TAGS, STEPS = 32, 20, 128
F32 = 4
GOAL = 50  # speed-up over pytorch-crf, fwd+bwd and Viterbi

# SynJax, measured on B=32, T=128, K=20 on this machine (not installable here; recorded).
SYNJAX_ENTROPY_MS = 31.0
SYNJAX_SAMPLE_MS = 39.0
SYNJAX = "SynJax (recorded figure, not measured in this run)"

NAN = float("nan")


@dataclass
class Row:
    """One line of the time table: ms are medians, ``speedup`` is peer / ours."""

    case: str
    shape: str
    ours_ms: float
    peer: str
    peer_ms: float
    compile_s: float
    min_bytes: int
    flops: float | None
    goal: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def speedup(self) -> float:
        return self.peer_ms / self.ours_ms


@dataclass
class MemRow:
    case: str
    shape: str
    temp: int
    args: int
    out: int
    ratio: float
    ms: float
    compile_s: float
    min_bytes: int
    flops: float


@dataclass
class Ctx:
    """Run settings, messages to print, and the compiled functions sections share."""

    quick: bool
    primed: bool = True
    messages: list[str] = field(default_factory=list)
    cache: dict[str, tuple] = field(default_factory=dict)

    def sampler(self, compiled, *args) -> Callable[[], float]:
        """:func:`benchmarks.timing.jax_sampler`, primed unless ``--unprimed``."""
        return jax_sampler(compiled, *args, primed=self.primed)

    def compile(self, key: str, fn: Callable, *args) -> tuple:
        """:func:`compile_jit`, once per ``key`` (the T = 128 cases recur across sections)."""
        if key not in self.cache:
            self.cache[key] = compile_jit(fn, *args)
        return self.cache[key]


# ------------------------------------------------------------------------- helpers


def _shape(batch: int, steps: int) -> str:
    return f"B={batch}, T={steps:,}, K={TAGS}"


def _data(num_steps: int, batch: int = BATCH, seed: int = 0):
    rng = np.random.default_rng(seed)
    em = rng.normal(size=(batch, num_steps, TAGS)).astype(np.float32)
    tags = rng.integers(0, TAGS, (batch, num_steps)).astype(np.int32)
    lengths = rng.integers(num_steps // 2, num_steps + 1, batch)
    lengths[0] = num_steps  # pytorch-crf: every row starts valid; one row is full
    mask = np.arange(num_steps) < lengths[:, None]
    params = [rng.uniform(-0.1, 0.1, s).astype(np.float32) for s in [(TAGS, TAGS), TAGS, TAGS]]
    return em, tags, mask, params


def _ll_grad(tags, mask, algorithm="rescaled", checkpoint=False):
    """``(em, g, start, end) -> grads`` of the summed negative CRF log-likelihood."""

    def loss(em, g, start, end):
        ll = crf_log_likelihood(
            em, tags, g, mask, start, end, algorithm=algorithm, checkpoint=checkpoint
        )
        return -jnp.sum(ll)

    return jax.grad(loss, argnums=(0, 1, 2, 3))


def _fb_bytes(batch: int, steps: int, tags: bool = True) -> int:
    """Emissions read + emission gradient written (+ tags read)."""
    return 2 * batch * steps * TAGS * F32 + (batch * steps * 4 if tags else 0)


def _chain_flops(batch: int, steps: int, passes: float) -> float:
    """``passes`` sweeps of ``K × K`` work a step: ``2 K²`` FLOPs each (multiply-add, or
    add-max for Viterbi) per row and step. A forward-backward gradient is three sweeps:
    the forward and backward recursions and the expected transition counts."""
    return passes * 2 * TAGS**2 * batch * (steps - 1)


# ------------------------------------------------------------------------- peers


def _torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(2)
    return torch


def _pytorch_crf_fns(torch, em, tags, mask, params):
    from torchcrf import CRF as TorchCRF

    crf = TorchCRF(TAGS, batch_first=True)
    with torch.no_grad():
        crf.transitions.copy_(torch.from_numpy(params[0]))
        crf.start_transitions.copy_(torch.from_numpy(params[1]))
        crf.end_transitions.copy_(torch.from_numpy(params[2]))
    em_t = torch.from_numpy(em).requires_grad_(True)
    tags_t, mask_t = torch.from_numpy(tags).long(), torch.from_numpy(mask)

    def loss_and_grad():
        em_t.grad = None
        crf.zero_grad()
        (-crf(em_t, tags_t, mask_t, reduction="sum")).backward()

    def decode():
        with torch.no_grad():
            return crf.decode(em_t, mask_t)

    return loss_and_grad, decode


def _torch_struct_fns(torch, em, mask, params, check_log_z):
    """torch-struct log-partition gradient, entropy and argmax, or an explanation string."""
    try:
        import torch_struct
    except Exception as e:  # noqa: BLE001 - report whatever stops the import
        return f"torch-struct not available: {type(e).__name__}: {e}"
    num_steps = em.shape[1]
    em_t = torch.from_numpy(em).requires_grad_(True)
    g, start, end = (torch.from_numpy(p).requires_grad_(True) for p in params)
    lengths = torch.from_numpy(mask.sum(-1))
    last_edge = torch.nn.functional.one_hot(lengths - 2, num_steps - 1).to(em_t.dtype)

    def dist():
        # phi[b, n, j, i] = score of tag i at position n -> tag j at position n + 1.
        edges = g.T + em_t[:, 1:, :, None]
        first = (em_t[:, 0] + start)[:, None, None, :]
        edges = torch.cat([edges[:, :1] + first, edges[:, 1:]], dim=1)
        edges = edges + last_edge[:, :, None, None] * end[:, None]
        with warnings.catch_warnings():  # torch.distributions: no `arg_constraints`
            warnings.simplefilter("ignore", UserWarning)
            return torch_struct.LinearChainCRF(edges, lengths=lengths)

    try:
        log_z = dist().partition.detach().numpy()
    except Exception as e:  # noqa: BLE001
        return f"torch-struct imports but fails: {type(e).__name__}: {e}"
    if not np.allclose(log_z, check_log_z, rtol=1e-4, atol=1e-2):
        diff = np.abs(log_z - check_log_z).max()
        return f"torch-struct log Z disagrees with ours (max abs diff {diff:.3g}): not timed."

    def log_z_grad():
        for t in (em_t, g, start, end):
            t.grad = None
        dist().partition.sum().backward()

    def entropy():
        with torch.no_grad():
            return dist().entropy

    def argmax():
        return dist().argmax

    return log_z_grad, entropy, argmax


# ------------------------------------------------------------------------- sections


def _viterbi(ctx: Ctx, mask, args) -> tuple:
    fn = lambda em, g, s, e: viterbi_decode(em, g, mask, s, e)  # noqa: E731
    return ctx.compile("viterbi", fn, *args)


def _entropy(ctx: Ctx, mask, args) -> tuple:
    fn = lambda em, g, s, e: LinearChainCRF(em, g, mask=mask, start=s, end=e).entropy()  # noqa: E731
    return ctx.compile("entropy", fn, *args)


def bench_crf(ctx: Ctx) -> list[Row]:
    """CRF fwd+bwd and Viterbi vs pytorch-crf; log Z gradient, entropy, argmax vs torch-struct."""
    repeats = 5 if ctx.quick else 20
    em, tags, mask, params = _data(STEPS)
    args = tuple(jnp.asarray(a) for a in (em, *params))
    shape = _shape(BATCH, STEPS)

    compiled = {
        algorithm: ctx.compile(f"ll {algorithm}", _ll_grad(tags, mask, algorithm), *args)
        for algorithm in ["rescaled", "sequential"]
    }
    compiled["viterbi"] = _viterbi(ctx, mask, args)
    compiled["logz"] = compile_jit(
        jax.grad(lambda em, g, s, e: jnp.sum(crf_log_partition(em, g, mask, s, e)), (0, 1, 2, 3)),
        *args,
    )
    compiled["entropy"] = _entropy(ctx, mask, args)
    sampler = {n: ctx.sampler(c, *args) for n, (c, _) in compiled.items()}
    cs = {n: c for n, (_, c) in compiled.items()}

    # Two round-robin groups: pytorch-crf (fast, many repeats) and torch-struct (slow,
    # seconds a call here, few repeats), each with the cases of ours it is compared to.
    group_a = {n: sampler[n] for n in ["rescaled", "sequential", "viterbi"]}
    group_b = {n: sampler[n] for n in ["logz", "entropy", "viterbi"]}
    repeats_b = repeats
    torch = _torch()
    if torch is None:
        ctx.messages.append("torch not installed: no pytorch-crf / torch-struct columns.")
    else:
        fb, decode = _pytorch_crf_fns(torch, em, tags, mask, params)
        group_a |= {
            "pytorch-crf fb": timed(fb, primed=ctx.primed),
            "pytorch-crf decode": timed(decode, primed=ctx.primed),
        }
        log_z = np.asarray(crf_log_partition(*args[:2], mask, *args[2:]))
        ts = _torch_struct_fns(torch, em, mask, params, log_z)
        if isinstance(ts, str):
            ctx.messages.append(ts)
        else:
            group_b |= {f"ts {n}": timed(f) for n, f in zip(["logz", "entropy", "argmax"], ts)}
            repeats_b = 2 if ctx.quick else 5
    ms = dict(zip(group_a, medians_ms(list(group_a.values()), repeats)))
    ms_b = dict(zip(group_b, medians_ms(list(group_b.values()), repeats_b, warmup=1)))
    ms |= {n: t for n, t in ms_b.items() if n != "viterbi"}
    peer = lambda n: ms.get(n, NAN)  # noqa: E731
    fb_bytes, fb_flops = _fb_bytes(BATCH, STEPS), _chain_flops(BATCH, STEPS, 3)
    dec_bytes, dec_flops = BATCH * STEPS * (TAGS * F32 + 4), _chain_flops(BATCH, STEPS, 1)

    def vs_peer(case, name, peer_name, peer_label, nbytes, flops, goal=GOAL):
        speedup = peer(peer_name) / ms[name]
        met = None if not goal or math.isnan(speedup) else speedup >= goal
        return Row(
            case,
            shape,
            ms[name],
            peer_label,
            peer(peer_name),
            cs[name],
            nbytes,
            flops,
            f"≥ {goal}×" if goal else "",
            met,
        )

    rows = [  # the goal is the default algorithm's; "sequential" is shown for scale
        vs_peer(
            f"CRF log-lik fwd+bwd, {a}",
            a,
            "pytorch-crf fb",
            "pytorch-crf",
            fb_bytes,
            fb_flops,
            goal=GOAL if a == "rescaled" else None,
        )
        for a in ["rescaled", "sequential"]
    ]
    rows.append(
        vs_peer(
            "Viterbi decode",
            "viterbi",
            "pytorch-crf decode",
            "pytorch-crf decode",
            dec_bytes,
            dec_flops,
        )
    )
    if "ts logz" in ms:
        ms["viterbi (torch-struct group)"] = ms_b["viterbi"]
        cs["viterbi (torch-struct group)"] = cs["viterbi"]
        rows += [
            vs_peer(
                "log Z fwd+bwd (grad of crf_log_partition), rescaled",
                "logz",
                "ts logz",
                "torch-struct",
                _fb_bytes(BATCH, STEPS, tags=False),
                fb_flops,
                goal=None,
            ),
            vs_peer(
                "LinearChainCRF.entropy()",
                "entropy",
                "ts entropy",
                "torch-struct entropy",
                BATCH * STEPS * TAGS * F32,
                fb_flops,
                goal=None,
            ),
            vs_peer(
                "Viterbi decode",
                "viterbi (torch-struct group)",
                "ts argmax",
                "torch-struct argmax",
                dec_bytes,
                dec_flops,
                goal=None,
            ),
        ]
    return rows


def bench_distribution(ctx: Ctx) -> list[Row]:
    """LinearChainCRF entropy, KL, sample, top_k(5) vs SynJax's recorded figures."""
    repeats = 5 if ctx.quick else 20
    em, _, mask, params = _data(STEPS)
    em2 = _data(STEPS, seed=1)[0]
    args = tuple(jnp.asarray(a) for a in (em, *params))
    em2 = jnp.asarray(em2)
    key = jax.random.key(0)
    shape = _shape(BATCH, STEPS)

    def dist(em, g, s, e):
        return LinearChainCRF(em, g, mask=mask, start=s, end=e)

    fns = {
        "kl": (
            lambda em, em2, g, s, e: dist(em, g, s, e).kl_divergence(dist(em2, g, s, e)),
            (args[0], em2, *args[1:]),
        ),
        "sample": (lambda key, em, g, s, e: dist(em, g, s, e).sample(key), (key, *args)),
        "sample100": (lambda key, em, g, s, e: dist(em, g, s, e).sample(key, (100,)), (key, *args)),
        "top5": (lambda em, g, s, e: dist(em, g, s, e).top_k(5), args),
    }
    compiled = {n: (*compile_jit(f, *a), a) for n, (f, a) in fns.items()}
    compiled["entropy"] = (*_entropy(ctx, mask, args), args)
    compiled["viterbi"] = (*_viterbi(ctx, mask, args), args)
    names = list(compiled)
    ms = dict(
        zip(names, medians_ms([ctx.sampler(c, *a) for c, _, a in compiled.values()], repeats))
    )
    cs = {n: compiled[n][1] for n in names}
    em_bytes = BATCH * STEPS * TAGS * F32
    path_bytes = BATCH * STEPS * 4

    def vs_synjax(name, case, synjax_ms, min_bytes, flops, goal=True, note=""):
        speedup = synjax_ms / ms[name]
        return Row(
            case,
            shape,
            ms[name],
            SYNJAX,
            synjax_ms,
            cs[name],
            min_bytes,
            flops,
            "≥ 10×" if goal else "",
            speedup >= 10 if goal else None,
            note,
        )

    ratio = ms["top5"] / ms["viterbi"]
    # Entropy: marginals and expected counts (3 sweeps); KL adds the other chain's forward
    # sweep; sampling is one forward sweep plus O(K) work a step and sample.
    fb_flops = _chain_flops(BATCH, STEPS, 3)
    sample_flops = _chain_flops(BATCH, STEPS, 1)
    return [
        vs_synjax("entropy", "LinearChainCRF.entropy()", SYNJAX_ENTROPY_MS, em_bytes, fb_flops),
        vs_synjax(
            "kl",
            "LinearChainCRF.kl_divergence(other)",
            SYNJAX_ENTROPY_MS,
            2 * em_bytes,
            _chain_flops(BATCH, STEPS, 4),
            note="compared with SynJax's entropy() figure",
        ),
        vs_synjax(
            "sample",
            "LinearChainCRF.sample(key), 1 sample",
            SYNJAX_SAMPLE_MS,
            em_bytes + path_bytes,
            sample_flops,
        ),
        vs_synjax(
            "sample100",
            "LinearChainCRF.sample(key, (100,))",
            SYNJAX_SAMPLE_MS,
            em_bytes + 100 * path_bytes,
            sample_flops,
            goal=False,
            note=f"vs SynJax's 1-sample figure; ours {ms['sample100'] / 100:.3f} ms per sample",
        ),
        Row(
            "LinearChainCRF.top_k(5)",
            shape,
            ms["top5"],
            "our Viterbi (viterbi_decode)",
            ms["viterbi"],
            cs["top5"],
            em_bytes + 5 * path_bytes,
            _chain_flops(BATCH, STEPS, 5),  # k = 5 candidates per (i, j)
            "top_k / Viterbi ≤ 10×",
            ratio <= 10,
            f"top_k(5) / Viterbi = {ratio:.1f}×",
        ),
    ]


def bench_holes(ctx: Ctx) -> list[Row]:
    """CRF fwd+bwd: concrete right-padded mask vs the same with holes vs a traced mask."""
    repeats = 5 if ctx.quick else 20
    em, tags, mask, params = _data(STEPS)
    args = tuple(jnp.asarray(a) for a in (em, *params))
    holes = mask.copy()
    holes[:, [0, 5]] = False

    padded = ctx.compile("ll rescaled", _ll_grad(tags, mask), *args)
    cases = [
        ("right-padded mask (concrete)", padded, args),
        ("mask with holes at 0 and 5 (concrete)", compile_jit(_ll_grad(tags, holes), *args), args),
    ]
    traced_args = (*args, jnp.asarray(mask))

    def traced_loss(em, g, s, e, m):
        return jax.grad(
            lambda em, g, s, e: -jnp.sum(crf_log_likelihood(em, tags, g, m, s, e)), (0, 1, 2, 3)
        )(em, g, s, e)

    cases.append(
        ("right-padded mask (traced argument)", compile_jit(traced_loss, *traced_args), traced_args)
    )
    ms = medians_ms([ctx.sampler(c, *a) for _, (c, _), a in cases], repeats)
    base = ms[0]
    return [
        Row(
            f"CRF log-lik fwd+bwd, {name}",
            _shape(BATCH, STEPS),
            t,
            "right-padded (concrete)",
            base,
            compile_s,
            _fb_bytes(BATCH, STEPS),
            _chain_flops(BATCH, STEPS, 3),
            note=f"ratio to right-padded {t / base:.2f}×",
        )
        for (name, (_, compile_s), _), t in zip(cases, ms)
    ]


def bench_algorithms(ctx: Ctx) -> list[Row]:
    """grad of crf_log_partition: rescaled vs sequential vs parallel at long T."""
    sizes = [(BATCH, 1024, 3 if ctx.quick else 10)]
    algorithms = ["rescaled", "sequential", "parallel"]
    if ctx.quick:
        algorithms.remove("parallel")
        ctx.messages.append("--quick: algorithms section skips T = 8,192 and 'parallel'.")
    else:
        sizes.append((8, 8192, 5))
    rows = []
    for batch, steps, repeats in sizes:
        em, _, mask, params = _data(steps, batch)
        args = tuple(jnp.asarray(a) for a in (em, *params))
        compiled = []
        for algorithm in algorithms:

            def loss(em, g, s, e, mask=mask, algorithm=algorithm):
                return jnp.sum(crf_log_partition(em, g, mask, s, e, algorithm=algorithm))

            compiled.append(compile_jit(jax.grad(loss, (0, 1, 2, 3)), *args))
        ms = medians_ms([ctx.sampler(c, *args) for c, _ in compiled], repeats, warmup=1)
        for algorithm, t, (_, compile_s) in zip(algorithms, ms, compiled):
            rows.append(
                Row(
                    f"log Z fwd+bwd, {algorithm}",
                    _shape(batch, steps),
                    t,
                    "our rescaled",
                    ms[0],
                    compile_s,
                    _fb_bytes(batch, steps, tags=False),
                    _chain_flops(batch, steps, 3),
                    note=f"ratio to rescaled {t / ms[0]:.2f}×",
                )
            )
    return rows


def bench_memory(ctx: Ctx) -> list[MemRow]:
    """Peak memory (compiled memory_analysis) and time at T = 16,384, B = 8."""
    batch, steps = 8, 16384
    em, tags, mask, params = _data(steps, batch)
    args = tuple(jnp.asarray(a) for a in (em, *params))
    cases = [
        ("rescaled", "rescaled", False),
        ("sequential", "sequential", False),
        ("sequential, checkpoint=True", "sequential", True),
    ]
    compiled = [compile_jit(_ll_grad(tags, mask, a, c), *args) for _, a, c in cases]
    if ctx.quick:
        ctx.messages.append("--quick: memory section not timed (memory_analysis only).")
        ms = [NAN] * len(cases)
    else:
        ms = medians_ms([ctx.sampler(c, *args) for c, _ in compiled], 3, warmup=1)
    mems = [c.memory_analysis() for c, _ in compiled]
    base = mems[0].temp_size_in_bytes
    return [
        MemRow(
            f"CRF log-lik fwd+bwd, {name}",
            _shape(batch, steps),
            m.temp_size_in_bytes,
            m.argument_size_in_bytes,
            m.output_size_in_bytes,
            m.temp_size_in_bytes / base,
            t,
            compile_s,
            _fb_bytes(batch, steps),
            _chain_flops(batch, steps, 3),
        )
        for (name, _, _), m, t, (_, compile_s) in zip(cases, mems, ms, compiled)
    ]


def bench_memm(ctx: Ctx) -> list[Row]:
    """Bi-MEMM loss fwd+bwd vs our CRF (rescaled) fwd+bwd."""
    repeats = 5 if ctx.quick else 20
    em, tags, mask, params = _data(STEPS)
    args = tuple(jnp.asarray(a) for a in (em, *params))

    def memm_loss(em, g):
        return -jnp.sum(memm_log_likelihood(em, tags, g, mask, direction="both"))

    memm, memm_s = compile_jit(jax.grad(memm_loss, argnums=(0, 1)), *args[:2])
    crf, _ = ctx.compile("ll rescaled", _ll_grad(tags, mask), *args)
    ours, peer = medians_ms([ctx.sampler(memm, *args[:2]), ctx.sampler(crf, *args)], repeats)
    return [
        Row(
            "Bi-MEMM loss fwd+bwd",
            _shape(BATCH, STEPS),
            ours,
            "our CRF fwd+bwd (rescaled)",
            peer,
            memm_s,
            _fb_bytes(BATCH, STEPS),
            None,  # O(T K) work a row: memory-bound
            "faster than CRF",
            ours < peer,
        )
    ]


SECTIONS: dict[str, Callable[[Ctx], list]] = {
    "crf": bench_crf,
    "distribution": bench_distribution,
    "holes": bench_holes,
    "algorithms": bench_algorithms,
    "memory": bench_memory,
    "memm": bench_memm,
}


# ------------------------------------------------------------------------- output


RIGHT = {"ours ms", "peer ms", "speed-up (peer/ours)", "compile s", *LIMIT_HEADER}


def _fmt_ms(ms: float) -> str:
    return "—" if math.isnan(ms) else f"{ms:.3f}"


def format_rows(rows: Sequence[Row], machine: Machine) -> str:
    names = [
        "case", "shape", "ours ms", "peer", "peer ms", "speed-up (peer/ours)", "goal", "met",
        "compile s", *LIMIT_HEADER, "note",
    ]  # fmt: skip
    lines = [markdown_header(names, [n in RIGHT for n in names])]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "no")
        if math.isnan(r.speedup):
            speedup = "—"
        else:
            speedup = f"{r.speedup:.1f}×" if r.speedup >= 0.95 else f"{r.speedup:.2g}×"
        cells = [
            r.case, r.shape, _fmt_ms(r.ours_ms), r.peer, _fmt_ms(r.peer_ms), speedup, r.goal, met,
            f"{r.compile_s:.2f}", *limit_cells(r.ours_ms * 1e-3, r.min_bytes, r.flops, machine),
            r.note,
        ]  # fmt: skip
        lines.append(markdown_row(cells))
    return "\n".join(lines)


def format_memory(rows: Sequence[MemRow], machine: Machine) -> str:
    mib = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
    names = [
        "case", "shape", "temp MiB", "argument MiB", "output MiB", "total MiB",
        "temp / rescaled", "ms", "compile s", *LIMIT_HEADER,
    ]  # fmt: skip
    lines = [markdown_header(names, [n != "case" and n != "shape" for n in names])]
    for r in rows:
        cells = [
            r.case, r.shape, mib(r.temp), mib(r.args), mib(r.out),
            mib(r.temp + r.args + r.out), f"{r.ratio:.3f}", _fmt_ms(r.ms), f"{r.compile_s:.2f}",
            *limit_cells(r.ms * 1e-3, r.min_bytes, r.flops, machine),
        ]  # fmt: skip
        lines.append(markdown_row(cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (smoke run)")
    parser.add_argument(
        "--unprimed",
        action="store_true",
        help="time each sample without the untimed call right before it (see benchmarks.timing)",
    )
    parser.add_argument(
        "--only",
        default="",
        help=f"run only the sections whose name contains this ({', '.join(SECTIONS)})",
    )
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores, "
        f"{platform.processor() or platform.machine()}; median ms after warm-up, sampled "
        "round-robin in one process, "
        + ("each sample unprimed" if args.unprimed else "each sample right after an untimed call")
    )
    machine = machine_limits(3 if args.quick else 5)
    print(machine.describe())
    ctx = Ctx(args.quick, primed=not args.unprimed)
    rows: list[Row] = []
    mem_rows: list[MemRow] = []
    for name, section in SECTIONS.items():
        if args.only in name:
            out = section(ctx)
            (mem_rows if name == "memory" else rows).extend(out)
    for message in ctx.messages:
        print(message)
    if any(r.peer == SYNJAX for r in rows):
        print(
            "\nSynJax columns are figures recorded earlier on B=32, T=128, K=20 on this "
            "machine, not measured in this run."
        )
    if rows:
        print("\n" + format_rows(rows, machine))
    if mem_rows:
        print("\nPeak memory: compiled memory_analysis(); temp = XLA scratch buffers.")
        print(format_memory(mem_rows, machine))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
