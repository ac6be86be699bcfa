"""Accelerator vs CPU parity: the same jitted computations on both backends, one process.

Run ``python -m benchmarks.gpu_check`` with both platforms enabled (JAX's default
when ``JAX_PLATFORMS`` is unset; ``benchmarks/accelerator.sh`` sets
``JAX_PLATFORMS=cuda,cpu``). Each check puts the same host inputs on
``jax.devices("cpu")[0]`` and on the accelerator, runs the same function under
``jax.jit`` with ``jax.default_matmul_precision("highest")`` (so GPU float32 matmuls
do not run in TF32) and compares the results with the error relative to the
reference's scale::

    err = max |accelerator - cpu| / max(max |cpu|, tiny)

against a tolerance of 1e-5. Checks: the CRF log-partition ``log Z`` (rescaled,
sequential and parallel algorithms; B = 8, T = 1,024 and 8,192, ragged lengths),
the CRF marginals and Viterbi paths (exact) at T = 1,024, three steps of AdaFactor,
Lookahead(Adam) and Lazy(Adam) (row-id path), and a small BERT encoder forward.

``--accelerator cpu`` (or no accelerator found, with ``--allow-cpu``) compares CPU
with CPU: a dry run of the script itself. Prints a markdown table; exits 1 when a
check fails or errors, 2 when no accelerator is found (without ``--allow-cpu``).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import numpy as np
import optax

TAGS = 20
TINY = 1e-30


@dataclass
class Result:
    check: str
    shape: str
    err: float
    tol: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.err <= self.tol)


def rel_err(actual, expected) -> float:
    """``max |actual - expected| / max(max |expected|, tiny)`` over all leaves (float64)."""
    errs, scales = [0.0], [TINY]
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        a = np.asarray(a, np.float64)
        e = np.asarray(e, np.float64)
        if a.shape != e.shape:
            return float("inf")
        if a.size:
            errs.append(float(np.max(np.abs(a - e))))
            scales.append(float(np.max(np.abs(e))))
    return max(errs) / max(scales)


def on_both(fn: Callable, args: Sequence, accel: jax.Device, cpu: jax.Device):
    """``jit(fn)(*args)`` on the accelerator and on the CPU, as host arrays."""
    jitted = jax.jit(fn)
    out = []
    for device in (accel, cpu):
        placed = jax.device_put(args, device)
        with jax.default_matmul_precision("highest"):
            out.append(jax.device_get(jitted(*placed)))
    return out


def _crf_data(batch: int, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    em = rng.normal(size=(batch, steps, TAGS)).astype(np.float32)
    lengths = rng.integers(steps // 2, steps + 1, batch)
    lengths[0] = steps
    mask = np.arange(steps) < lengths[:, None]
    g, s, e = (
        rng.uniform(-0.1, 0.1, shape).astype(np.float32) for shape in [(TAGS, TAGS), TAGS, TAGS]
    )
    return em, mask, g, s, e


def check_crf(accel, cpu, quick: bool) -> list[Result]:
    from flax_layers import crf_log_partition, crf_marginals, viterbi_decode

    out = []
    sizes = [(8, 1024)] if quick else [(8, 1024), (8, 8192)]
    for batch, steps in sizes:
        em, mask, g, s, e = _crf_data(batch, steps)
        shape = f"B={batch}, T={steps:,}, K={TAGS}"
        for algorithm in ("rescaled", "sequential", "parallel"):

            def log_z(em, g, s, e, mask=mask, algorithm=algorithm):
                return crf_log_partition(em, g, mask, s, e, algorithm=algorithm)

            a, c = on_both(log_z, (em, g, s, e), accel, cpu)
            out.append(Result(f"CRF log Z, {algorithm}", shape, rel_err(a, c), 1e-5))
        if steps <= 1024:
            for algorithm in ("rescaled", "parallel"):

                def marg(em, g, s, e, mask=mask, algorithm=algorithm):
                    return crf_marginals(em, g, mask, s, e, algorithm=algorithm)

                a, c = on_both(marg, (em, g, s, e), accel, cpu)
                out.append(Result(f"CRF marginals, {algorithm}", shape, rel_err(a, c), 1e-5))

            def viterbi(em, g, s, e, mask=mask):
                return viterbi_decode(em, g, mask, s, e)

            (tags_a, score_a), (tags_c, score_c) = on_both(viterbi, (em, g, s, e), accel, cpu)
            differ = int(np.sum(np.any(tags_a != tags_c, axis=-1)))
            out.append(
                Result(
                    "Viterbi path (rows that differ) / score",
                    shape,
                    max(float(differ), rel_err(score_a, score_c)),
                    1e-5,
                    f"{differ} of {batch} paths differ",
                )
            )
    return out


def check_optimizers(accel, cpu, quick: bool) -> list[Result]:
    from optax_contrib import adafactor, lazy, lookahead

    rng = np.random.default_rng(1)
    params = {
        "embed": rng.normal(size=(512, 64)).astype(np.float32),
        "w": (rng.normal(size=(256, 384)) / 16).astype(np.float32),
        "b": np.zeros((384,), np.float32),
    }
    grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
    ids = rng.integers(0, 512, size=(96,)).astype(np.int32)
    cases = [
        ("AdaFactor (factored), 3 steps", adafactor(min_dim_size_to_factor=32), False),
        ("Lookahead(Adam), 3 steps (k=2)", lookahead(optax.adam(1e-3), sync_period=2), False),
        (
            "Lazy(Adam) frozen, row ids, 3 steps",
            lazy(optax.adam(1e-3), mask="embed", policy="frozen", elementwise=True),
            True,
        ),
    ]
    out = []
    for name, tx, use_ids in cases:

        def run(params, grads, ids, tx=tx, use_ids=use_ids):
            state = tx.init(params)
            for _ in range(3):
                extra = {"row_ids": {"embed": ids, "w": None, "b": None}} if use_ids else {}
                updates, state = tx.update(grads, state, params, **extra)
                params = optax.apply_updates(params, updates)
            return params, state

        a, c = on_both(run, (params, grads, ids), accel, cpu)
        out.append(Result(name, "embed 512×64, w 256×384", rel_err(a, c), 1e-5))
    return out


def check_bert(accel, cpu, quick: bool) -> list[Result]:
    from flax import nnx

    from flax_layers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=1000,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=512,
        with_mlm_head=False,
    )
    model = BertModel(cfg, rngs=nnx.Rngs(0))
    model.eval()
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(2)
    batch, length = 4, 64
    ids = rng.integers(1, cfg.vocab_size, size=(batch, length)).astype(np.int32)
    att = (np.arange(length) < np.array([[64], [40], [17], [64]])).astype(np.int32)
    seg = np.zeros_like(ids)

    def forward(state, ids, seg, att):
        return nnx.merge(graphdef, state)(ids, seg, att)

    a, c = on_both(forward, (state, ids, seg, att), accel, cpu)
    valid = att.astype(bool)
    return [
        Result(
            "BERT encoder forward (valid tokens)",
            "4×64, H=128, 2 layers",
            rel_err(a[valid], c[valid]),
            1e-5,
        )
    ]


CHECKS: dict[str, Callable] = {"crf": check_crf, "optimizers": check_optimizers, "bert": check_bert}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--accelerator", default="gpu", help="platform to compare with the CPU (gpu, tpu, cpu)"
    )
    parser.add_argument(
        "--allow-cpu", action="store_true", help="compare CPU with CPU when no accelerator exists"
    )
    parser.add_argument("--quick", action="store_true", help="T = 1,024 only")
    args = parser.parse_args(argv)
    cpu = jax.devices("cpu")[0]
    try:
        accel = jax.devices(args.accelerator)[0]
    except RuntimeError as err:
        if not args.allow_cpu:
            print(f"no {args.accelerator} device: {err}", file=sys.stderr)
            return 2
        print(f"no {args.accelerator} device ({err}); comparing CPU with CPU")
        accel = cpu
    print(
        f"jax {jax.__version__}: {accel.device_kind} ({accel.platform}) vs {cpu.device_kind} (cpu)"
    )
    t0 = time.perf_counter()
    results: list[Result] = []
    failed_checks = []
    for name, check in CHECKS.items():
        try:
            results.extend(check(accel, cpu, args.quick))
        except Exception:  # noqa: BLE001 - report and go on with the other checks
            failed_checks.append(name)
            print(f"check {name} raised:\n{traceback.format_exc()}", file=sys.stderr)
    print("\n| check | shape | max rel err (accel vs cpu) | tol | ok | note |")
    print("|---|---|---:|---:|---|---|")
    for r in results:
        ok = "yes" if r.ok else "**NO**"
        print(f"| {r.check} | {r.shape} | {r.err:.2e} | {r.tol:.0e} | {ok} | {r.note} |")
    for name in failed_checks:
        print(f"| {name} | — | — | — | **ERROR** | raised, see stderr |")
    bad = sum(not r.ok for r in results) + len(failed_checks)
    print(
        f"\ngpu_check: {len(results) - sum(not r.ok for r in results)} passed, {bad} failed "
        f"({accel.platform} vs cpu, {time.perf_counter() - t0:.0f} s)"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
