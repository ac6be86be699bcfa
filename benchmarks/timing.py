"""Round-robin timing shared by the benchmarks.

The sides of one comparison are sampled in turn (ours, peer, ours, peer, ...), so a
slow phase of a shared machine hits all of them alike instead of whichever ran
during it; each side's time is the median of its samples.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """A sampler: calls ``fn`` once (it must block until done) and returns seconds."""

    def sample() -> float:
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
