"""Timing and machine limits shared by the benchmarks.

Timing: the sides of one comparison are sampled in turn (ours, peer, ours, peer, ...),
so a slow phase of a shared machine hits all of them alike instead of whichever ran
during it; each side's time is the median of its samples, taken after warm-up calls
that are not recorded. A sampler can be primed (:func:`timed`): one untimed call right
before each timed one, so that no side is timed waking up from the other sides' turns.
Compile time (lower + compile) is measured separately (:func:`compile_jit`).

Limits: a benchmark row also says how close it runs to what this machine can do. Its
"minimal work" is the bytes the minimal algorithm must move (inputs read once, outputs
written once) and, for rows with matrix products or ``K²``-per-step recursions, its
floating-point operations. :func:`machine_limits` measures, once per process and in the
same process as the rows, the copy bandwidth (a jitted ``x + 1.0`` over 256 MB of
float32, donated so that it runs in place: bytes read + written per second) and the
peak float32 FLOP rate (jitted matmuls, :func:`peak_flops`); a row's fractions are
``bytes / time / bandwidth`` and ``FLOPs / time / peak``. The larger of the two says
which limit binds and how far the row is from it. The bandwidth is that of main memory:
a row whose data stays in the caches can exceed 100% of it. On a machine shared with
other work both limits are measured under the same load as the rows.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


def timed(fn: Callable[[], object], *, primed: bool = False) -> Callable[[], float]:
    """A sampler: calls ``fn`` once (it must block until done) and returns seconds.

    ``primed``: call ``fn`` once more, untimed, right before the timed call. In a
    round-robin the other sides run between two samples of one side, long enough for
    its runtime's worker threads to fall asleep and its data to leave the caches (on a
    2-core VM a jitted call that takes 7 µs back to back takes about 180 µs after 20 ms
    idle); the primed sample measures the call's steady-state cost, as it is paid
    inside a training or decoding loop.
    """

    def sample() -> float:
        if primed:
            fn()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return sample


def round_robin_medians(
    samplers: Sequence[Callable[[], float]], repeats: int, warmup: int = 0
) -> list[float]:
    """Runs each sampler ``warmup`` times, then all of them in turn ``repeats`` times.

    Args:
      samplers: callables that run one sample and return its time (any unit).
      repeats: samples per sampler.
      warmup: unrecorded samples per sampler first.

    Returns:
      The median sample of each sampler, in the samplers' order.
    """
    for sample in samplers:
        for _ in range(warmup):
            sample()
    samples: list[list[float]] = [[] for _ in samplers]
    for _ in range(repeats):
        for sample, out in zip(samplers, samples):
            out.append(sample())
    return [statistics.median(out) for out in samples]


def medians_ms(
    samplers: Sequence[Callable[[], float]], repeats: int, warmup: int = 2
) -> list[float]:
    """:func:`round_robin_medians` in milliseconds (samplers that return seconds)."""
    return [1e3 * s for s in round_robin_medians(samplers, repeats, warmup)]


def jax_sampler(fn: Callable[..., Any], *args, primed: bool = False) -> Callable[[], float]:
    """A sampler of ``fn(*args)`` (e.g. a compiled JAX function) that waits for its result
    (``primed``: see :func:`timed`)."""
    import jax

    return timed(lambda: jax.block_until_ready(fn(*args)), primed=primed)


def compile_jit(fn: Callable, *args, **jit_kwargs) -> tuple[Any, float]:
    """``jax.jit(fn, **jit_kwargs)`` lowered and compiled for ``args``; (compiled, seconds)."""
    import jax

    t0 = time.perf_counter()
    compiled = jax.jit(fn, **jit_kwargs).lower(*args).compile()
    return compiled, time.perf_counter() - t0


# ------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Machine:
    """This machine's measured limits: copy bandwidth (bytes/s) and float32 peak (FLOP/s)."""

    bandwidth: float
    peak_flops: float

    def describe(self) -> str:
        return (
            f"copy bandwidth {self.bandwidth / 1e9:.1f} GB/s (jitted x + 1.0 over 256 MB "
            f"float32, bytes read + written); peak {self.peak_flops / 1e9:.0f} GFLOP/s "
            "(jitted float32 matmuls, the faster of one 2,048² and 16 batched 512²); both "
            "medians, measured in this process"
        )


def copy_bandwidth(repeats: int = 5) -> float:
    """Bytes read + written per second by a jitted ``x + 1.0`` over 256 MB of float32.

    ``x`` is donated, so the sum is written in place: a fresh 256 MB output would time
    the kernel's page faults instead of the memory traffic.
    """
    import jax
    import jax.numpy as jnp

    x = [jnp.zeros((64 * 2**20,), jnp.float32)]
    nbytes = x[0].nbytes
    compiled = jax.jit(lambda x: x + 1.0, donate_argnums=0).lower(x[0]).compile()

    def step():
        x[0] = compiled(x[0])
        x[0].block_until_ready()

    (s,) = round_robin_medians([timed(step)], repeats, warmup=2)
    return 2 * nbytes / s


PEAK_SHAPES = ((1, 2048), (16, 512))  # (batch, n): a 2,048² and 16 batched 512² matmuls


def peak_flops(repeats: int = 5) -> float:
    """float32 FLOP/s of jitted ``n × n`` by ``n × n`` matmuls (``2 n³`` FLOPs each).

    The faster of :data:`PEAK_SHAPES`: XLA:CPU runs them with different kernels (here
    the batched 512² ones reach about twice the rate of the single 2,048² one).
    """
    import jax
    import jax.numpy as jnp

    samplers, flops = [], []
    for batch, n in PEAK_SHAPES:
        a, b = (jax.random.normal(jax.random.key(i), (batch, n, n), jnp.float32) for i in (0, 1))
        compiled = jax.jit(jnp.matmul).lower(a, b).compile()
        samplers.append(jax_sampler(compiled, a, b))
        flops.append(2 * batch * n**3)
    seconds = round_robin_medians(samplers, repeats, warmup=1)
    return max(f / s for f, s in zip(flops, seconds))


@functools.cache
def machine_limits(repeats: int = 5) -> Machine:
    """:func:`copy_bandwidth` and :func:`peak_flops`, measured once per process."""
    return Machine(copy_bandwidth(repeats), peak_flops(repeats))


LIMIT_HEADER = ("min bytes", "% of copy bw", "FLOPs", "% of peak FLOP/s")


def _count(x: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _pct(x: float) -> str:
    return f"{x:.3g}%" if x < 10 else f"{x:.0f}%"


def limit_cells(
    seconds: float, nbytes: float | None, flops: float | None, machine: Machine
) -> list[str]:
    """The :data:`LIMIT_HEADER` cells of a row that took ``seconds``.

    ``nbytes``/``flops`` None (or 0) print as "—"; so does a fraction of a NaN time.
    """

    def cells(work, unit, rate, fmt):
        if not work:
            return ["—", "—"]
        frac = "—" if math.isnan(seconds) else _pct(100 * work / seconds / rate)
        return [fmt(work, unit), frac]

    def fmt_bytes(b, _):
        return f"{b / 2**20:.3g} MiB" if b >= 2**20 else f"{b / 2**10:.3g} KiB"

    return cells(nbytes, "B", machine.bandwidth, fmt_bytes) + cells(
        flops, "FLOP", machine.peak_flops, _count
    )


def markdown_row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_header(names: Sequence[str], right: Sequence[bool]) -> str:
    """A markdown header line and its alignment line (``right``: right-aligned columns)."""
    align = ["---:" if r else "---" for r in right]
    return markdown_row(names) + "\n" + markdown_row(align)
