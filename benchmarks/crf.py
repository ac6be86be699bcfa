"""CRF / Viterbi / Bi-MEMM on CPU: ours (JAX) against pytorch-crf, side by side.

Run ``python -m benchmarks.crf`` (``--quick`` for a short smoke run). Cases, with batch
32 and 20 tags, at T = 128 and T = 1024:

* CRF log-likelihood forward + backward (gradients for emissions, transitions, start and
  end): our default ``"rescaled"`` algorithm, the log-space ``"sequential"`` scan and the
  ``"parallel"`` associative scan, each against pytorch-crf (``torch.set_num_threads(2)``).
* Viterbi decoding against pytorch-crf ``decode``.
* Bi-MEMM loss forward + backward against our own CRF (the article's claim: faster).

Every timing is the median of several runs after warm-up, in one process; compile time
(trace + XLA compile) is reported separately. The table is markdown.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.timing import round_robin_medians, timed  # noqa: E402
from flax_layers import crf_log_likelihood, memm_log_likelihood, viterbi_decode  # noqa: E402

BATCH, TAGS = 32, 20


def _median_ms(fn, repeats: int, warmup: int = 2) -> float:
    return 1e3 * round_robin_medians([timed(fn)], repeats, warmup)[0]


def _compile(fn, *args):
    """Jits ``fn``; returns (compiled callable, compile seconds)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def _data(num_steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    em = rng.normal(size=(BATCH, num_steps, TAGS)).astype(np.float32)
    tags = rng.integers(0, TAGS, (BATCH, num_steps))
    lengths = rng.integers(num_steps // 2, num_steps + 1, BATCH)
    lengths[0] = num_steps  # pytorch-crf: every row starts valid; one row is full
    mask = np.arange(num_steps) < lengths[:, None]
    params = [rng.uniform(-0.1, 0.1, s).astype(np.float32) for s in [(TAGS, TAGS), TAGS, TAGS]]
    return em, tags, mask, params


def _torch_fns(em, tags, mask, params):
    try:
        import torch
        from torchcrf import CRF as TorchCRF
    except ImportError:
        return None
    torch.set_num_threads(2)
    crf = TorchCRF(TAGS, batch_first=True)
    with torch.no_grad():
        crf.transitions.copy_(torch.from_numpy(params[0]))
        crf.start_transitions.copy_(torch.from_numpy(params[1]))
        crf.end_transitions.copy_(torch.from_numpy(params[2]))
    em_t = torch.from_numpy(em).requires_grad_(True)
    tags_t, mask_t = torch.from_numpy(tags), torch.from_numpy(mask)

    def loss_and_grad():
        em_t.grad = None
        crf.zero_grad()
        (-crf(em_t, tags_t, mask_t, reduction="sum")).backward()

    def decode():
        with torch.no_grad():
            return crf.decode(em_t, mask_t)

    return loss_and_grad, decode


def _bench_length(num_steps: int, repeats: int, quick: bool) -> list[tuple]:
    em, tags, mask, (g, start, end) = _data(num_steps)
    args = (jnp.asarray(em), jnp.asarray(g), jnp.asarray(start), jnp.asarray(end))
    torch_fns = _torch_fns(em, tags, mask, [g, start, end])
    peer_fb = peer_dec = float("nan")
    if torch_fns is not None:
        peer_fb = _median_ms(torch_fns[0], repeats)
        peer_dec = _median_ms(torch_fns[1], repeats)

    def timed(fn, *fn_args):
        compiled, compile_s = _compile(fn, *fn_args)
        return _median_ms(lambda: jax.block_until_ready(compiled(*fn_args)), repeats), compile_s

    rows, crf_ms = [], {}
    algorithms = ["rescaled"]
    if num_steps <= 128:  # the parallel scan does O(T K^3) work: made for accelerators
        algorithms += ["sequential", "parallel"]
    elif not quick:
        algorithms += ["sequential"]
    for algorithm in algorithms:

        def loss(em, g, start, end, algorithm=algorithm):
            ll = crf_log_likelihood(em, tags, g, mask, start, end, algorithm=algorithm)
            return -jnp.sum(ll)

        ms, compile_s = timed(jax.grad(loss, argnums=(0, 1, 2, 3)), *args)
        crf_ms[algorithm] = ms
        name = f"CRF log-lik fwd+bwd, {algorithm}"
        rows.append((name, num_steps, ms, "pytorch-crf", peer_fb, compile_s))

    ms, compile_s = timed(lambda em, g, s, e: viterbi_decode(em, g, mask, s, e), *args)
    rows.append(("Viterbi decode", num_steps, ms, "pytorch-crf decode", peer_dec, compile_s))

    def memm_loss(em, g):
        return -jnp.sum(memm_log_likelihood(em, tags, g, mask, direction="both"))

    ms, compile_s = timed(jax.grad(memm_loss, argnums=(0, 1)), *args[:2])
    peer = "our CRF (rescaled)"
    rows.append(("Bi-MEMM loss fwd+bwd", num_steps, ms, peer, crf_ms["rescaled"], compile_s))
    return rows


def run(quick: bool) -> list[tuple]:
    rows = _bench_length(128, 5 if quick else 20, quick)
    return rows + _bench_length(1024, 3 if quick else 10, quick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (smoke run)")
    args = parser.parse_args()
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores, "
        f"{platform.processor() or platform.machine()}; batch {BATCH}, {TAGS} tags; "
        "median ms after warm-up"
    )
    rows = run(args.quick)
    print("\n| case | T | ours ms | peer | peer ms | speed-up | compile s |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for name, num_steps, ours, peer, peer_ms, compile_s in rows:
        print(
            f"| {name} | {num_steps} | {ours:.3f} | {peer} | {peer_ms:.3f} | "
            f"{peer_ms / ours:.1f}x | {compile_s:.2f} |"
        )


if __name__ == "__main__":
    main()
