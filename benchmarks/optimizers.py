"""Optimizer benchmarks: ours vs optax, side by side in one process (CPU).

Run ``python -m benchmarks.optimizers`` (or ``--quick`` for a fast smoke run).

Each case times one jitted training-step body, ``update`` + ``optax.apply_updates``,
with the parameter and state buffers donated, ``block_until_ready`` after every
sample, and reports the median over repeats after warm-up (:mod:`benchmarks.timing`);
compile time (lower + compile) is reported separately, as are the bytes of optimizer
state. For transforms whose cost varies from step to step (Lookahead synchronises every
``k`` steps) one sample is ``k`` consecutive steps and the time is per step.

The cases compared in one row are compiled and warmed up first and then sampled
round-robin (ours, peer, ours, peer, ...), so that a slow phase of a shared machine
hits both sides alike instead of whichever ran during it.

Limit columns (:mod:`benchmarks.timing`): these steps are elementwise (a few FLOPs a
parameter), so their limit is memory traffic. "min bytes" is what the step must read
and write at least, with every buffer updated in place: parameters, gradients and
optimizer state read, parameters and state written (``3 P + 2 S`` for ``P`` bytes of
parameters and ``S`` of state); Lookahead adds its slow copy once per period
(``2 P / k`` a step), the sparse Lazy path only the touched rows. It is given as a share
of the copy bandwidth measured in the same process, for ours and for the peer.

Sections are plain functions ``section(quick: bool) -> list[Row]`` listed in
``SECTIONS``; they build :class:`Runner`s (:func:`prepare_step`,
:func:`prepare_update`) and time them together with :func:`time_interleaved`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

from benchmarks.timing import (
    LIMIT_HEADER,
    Machine,
    compile_jit,
    limit_cells,
    machine_limits,
    markdown_header,
    markdown_row,
    round_robin_medians,
)
from optax_contrib.adafactor import adafactor
from optax_contrib.lookahead import lookahead


@dataclass
class Row:
    """One line of the result table (times in ms per step, compile times in s)."""

    case: str
    ours_ms: float
    peer_ms: float
    compile_ours_s: float
    compile_peer_s: float
    state_bytes: str = ""
    min_bytes_ours: int = 0
    min_bytes_peer: int = 0

    @property
    def ratio(self) -> float:
        return self.ours_ms / self.peer_ms


@dataclass
class Timing:
    """Result of :func:`time_interleaved`: median ms per step, compile s, state bytes."""

    ms: float
    compile_s: float
    state_bytes: int
    min_bytes: int


@dataclass
class Runner:
    """A compiled step ``(a, b) = compiled(a, b, *other_args)`` and its live buffers."""

    compiled: Any
    buffers: tuple[Any, Any]
    other_args: tuple[Any, ...]
    steps_per_sample: int
    compile_s: float
    state_bytes: int
    min_bytes: int

    def sample(self) -> float:
        """Runs ``steps_per_sample`` steps; returns seconds per step."""
        a, b = self.buffers
        t0 = time.perf_counter()
        for _ in range(self.steps_per_sample):
            a, b = self.compiled(a, b, *self.other_args)
        jax.block_until_ready((a, b))
        self.buffers = (a, b)
        return (time.perf_counter() - t0) / self.steps_per_sample


def tree_bytes(tree: Any) -> int:
    """Total bytes of the array leaves of a pytree (e.g. an optimizer state)."""
    return sum(int(x.nbytes) for x in jax.tree.leaves(tree) if hasattr(x, "nbytes"))


def num_params(tree: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))


def update_bytes(param_bytes: int, state_bytes: int) -> int:
    """Minimal traffic of an in-place step: params, grads, state read; params, state written."""
    return 3 * param_bytes + 2 * state_bytes


def prepare_step(
    step: Callable[..., tuple[Any, Any]],
    donated: tuple[Any, Any],
    other_args: Sequence[Any] = (),
    *,
    steps_per_sample: int = 1,
    state_bytes: int = 0,
    min_bytes: int = 0,
) -> Runner:
    """Compiles ``step`` with its first two arguments donated (``donated`` is consumed).

    Compile time is lower + compile; warm-up happens in :func:`time_interleaved`.
    """
    compiled, compile_s = compile_jit(step, *donated, *other_args, donate_argnums=(0, 1))
    return Runner(
        compiled, donated, tuple(other_args), steps_per_sample, compile_s, state_bytes, min_bytes
    )


def prepare_update(
    tx: optax.GradientTransformation,
    params: Any,
    grads: Any,
    *,
    steps_per_sample: int = 1,
    min_bytes: int | None = None,
) -> Runner:
    """A :class:`Runner` for the jitted ``tx.update`` + ``optax.apply_updates``.

    ``min_bytes`` defaults to :func:`update_bytes` of the parameters and the state.
    """
    params = jax.tree.map(jnp.copy, params)  # the copies are donated, not the caller's
    state = tx.init(params)
    nbytes = tree_bytes(state)
    if min_bytes is None:
        min_bytes = update_bytes(tree_bytes(params), nbytes)

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return prepare_step(
        step,
        (params, state),
        (grads,),
        steps_per_sample=steps_per_sample,
        state_bytes=nbytes,
        min_bytes=min_bytes,
    )


def time_interleaved(runners: Sequence[Runner], *, repeats: int, warmup: int = 2) -> list[Timing]:
    """Warms the runners up, samples them round-robin ``repeats`` times; median ms per step.

    The runners' buffers are released afterwards.
    """
    medians = round_robin_medians([r.sample for r in runners], repeats, warmup)
    timings = [
        Timing(1e3 * s, r.compile_s, r.state_bytes, r.min_bytes) for r, s in zip(runners, medians)
    ]
    for r in runners:
        r.buffers = (None, None)
    return timings


def transformer_params(quick: bool, seed: int = 0) -> dict[str, jax.Array]:
    """A small transformer's parameter tree (about 29M parameters; 1.3M with quick)."""
    vocab, d, layers = (4000, 128, 2) if quick else (32000, 512, 4)
    shapes = {"embed": (vocab, d), "final_norm": (d,)}
    for i in range(layers):
        shapes |= {
            f"layer{i}/qkv": (d, 3 * d),
            f"layer{i}/out": (d, d),
            f"layer{i}/mlp_in": (d, 4 * d),
            f"layer{i}/mlp_out": (4 * d, d),
            f"layer{i}/mlp_bias": (4 * d,),
            f"layer{i}/norm": (d,),
        }
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return {
        name: 0.02 * jax.random.normal(k, shape, jnp.float32)
        for k, (name, shape) in zip(keys, sorted(shapes.items()))
    }


def _bytes_text(ours: Timing, peer: Timing, n: int) -> str:
    return (
        f"{ours.state_bytes / 2**20:.1f} MiB ({ours.state_bytes / n:.3f} B/param) / "
        f"{peer.state_bytes / 2**20:.1f} MiB ({peer.state_bytes / n:.3f} B/param)"
    )


def _row(case: str, ours: Timing, peer: Timing, n: int) -> Row:
    return Row(
        case,
        ours.ms,
        peer.ms,
        ours.compile_s,
        peer.compile_s,
        _bytes_text(ours, peer, n),
        ours.min_bytes,
        peer.min_bytes,
    )


def bench_adafactor(quick: bool) -> list[Row]:
    """AdaFactor vs optax.adafactor and vs optax.adam (goal ≤ 1.2× an Adam step).

    AdaFactor's minimal traffic is ``5 P`` plus its state (gradients and parameters read
    twice, parameters written once): every entry's update needs the column statistics and
    both whole-tensor RMS values (update clipping, parameter scale) first.
    """
    params = transformer_params(quick)
    grads = jax.tree.map(lambda p: jnp.sin(1e3 * p), params)
    n = num_params(params)
    repeats = 3 if quick else 10
    pbytes = tree_bytes(params)

    def factored(tx):
        state_bytes = tree_bytes(tx.init(params))
        return prepare_update(tx, params, grads, min_bytes=5 * pbytes + 2 * state_bytes)

    ours, peer, adam = time_interleaved(
        [
            factored(adafactor(1e-3)),
            factored(optax.adafactor(1e-3)),
            prepare_update(optax.adam(1e-3), params, grads),
        ],
        repeats=repeats,
    )
    size = f"{n / 1e6:.1f}M params"
    return [
        _row(f"AdaFactor vs optax.adafactor, {size}", ours, peer, n),
        _row(f"AdaFactor vs optax.adam, {size} (goal ≤ 1.2×)", ours, adam, n),
    ]


def bench_lookahead(quick: bool) -> list[Row]:
    """Lookahead(inner) vs inner alone (goal ≤ 1.1×), per step averaged over k steps.

    Also ours vs ``optax.lookahead`` around the same Adam (its parameters are
    ``LookaheadParams``, fast and slow, both updated every step).
    """
    params = transformer_params(quick)
    grads = jax.tree.map(lambda p: jnp.sin(1e3 * p), params)
    n = num_params(params)
    repeats = 3 if quick else 30
    k = 5
    size = f"k={k}, {n / 1e6:.1f}M"
    rows = []
    for name, inner in [("adam", optax.adam(1e-3)), ("adafactor", adafactor(1e-3))]:
        min_bytes = _lookahead_bytes(inner, params, k)
        runners = [
            prepare_update(
                lookahead(inner, sync_period=k),
                params,
                grads,
                steps_per_sample=k,
                min_bytes=min_bytes,
            ),
            prepare_update(inner, params, grads, steps_per_sample=k),
        ]
        if name == "adam":
            runners.append(_optax_lookahead_runner(inner, params, grads, k))
        ours, peer, *reference = time_interleaved(runners, repeats=repeats)
        rows.append(_row(f"Lookahead({name}) vs {name}, {size} (goal ≤ 1.1×)", ours, peer, n))
        if reference:
            rows.append(
                _row(f"Lookahead({name}) vs optax.lookahead({name}), {size}", ours, reference[0], n)
            )
    return rows


def _lookahead_bytes(inner: optax.GradientTransformation, params: Any, k: int) -> int:
    """Minimal traffic a Lookahead step: the inner step, the slow copy read and written
    once per period of ``k`` steps."""
    p = tree_bytes(params)
    return update_bytes(p, tree_bytes(inner.init(params))) + 2 * p // k


def _optax_lookahead_runner(
    inner: optax.GradientTransformation, params: Any, grads: Any, k: int
) -> Runner:
    tx = optax.lookahead(inner, sync_period=k, slow_step_size=0.5)
    both = optax.LookaheadParams(*(jax.tree.map(jnp.copy, params) for _ in range(2)))
    state = tx.init(both)

    def step(both, state, grads):
        updates, state = tx.update(grads, state, both)
        return optax.apply_updates(both, updates), state

    # Its slow copy lives in the parameters; count it with the state, as ours is.
    nbytes = tree_bytes(state) + tree_bytes(params)
    return prepare_step(
        step,
        (both, state),
        (grads,),
        steps_per_sample=k,
        state_bytes=nbytes,
        min_bytes=_lookahead_bytes(inner, params, k),
    )


def bench_lookahead_steps(quick: bool) -> list[Row]:
    """Where Lookahead(adam)'s cost lies in a period, step by step, vs an Adam step.

    Ours and Adam are stepped one at a time, round-robin, ours starting right after a
    synchronisation (its place in the ``k``-step period is read from its state), so
    each of ours' samples is one known step of the period: the step after a
    synchronisation (the copy of the parameters into the state), the ordinary steps,
    and the synchronisation step (one extra read of the slow weights). The last row
    times that copy alone, a jitted copy of the parameter tree into a donated buffer:
    the write any state-held Lookahead has to make once per period.
    """
    params = transformer_params(quick)
    grads = jax.tree.map(lambda p: jnp.sin(1e3 * p), params)
    n = num_params(params)
    k = 5
    inner = optax.adam(1e-3)
    p_bytes = tree_bytes(params)
    ours = prepare_update(lookahead(inner, sync_period=k), params, grads)
    adam = prepare_update(inner, params, grads)
    # The select reads the destination, so XLA keeps the donated buffer (a destination
    # that is only written would be pruned from the inputs and freshly allocated).
    copy = prepare_step(
        lambda src, dst, flag: (src, jax.tree.map(lambda s, d: jnp.where(flag, s, d), src, dst)),
        tuple(jax.tree.map(jnp.copy, params) for _ in range(2)),
        (jnp.bool_(True),),
        state_bytes=p_bytes,
        min_bytes=2 * p_bytes,
    )
    for runner in (ours, adam, copy):  # warm-up, before the phase of ours is set
        for _ in range(2):
            runner.sample()
    while int(ours.buffers[1].steps_since_sync) != 0:
        ours.sample()
    # One round: ours at steps 1..k of the period, each followed by an Adam step.
    *steps, copied = time_interleaved(
        [ours, adam] * k + [copy], repeats=3 if quick else 20, warmup=0
    )
    after, *ordinary, sync = steps[0::2]
    adam_ms = statistics.median(t.ms for t in steps[1::2])
    size = f"k={k}, {n / 1e6:.1f}M"
    # Minimal traffic of each step: an Adam step; the sync step also reads and writes the
    # slow weights; the step after it writes the parameters into the state.
    adam_bytes = adam.min_bytes
    cases = [
        (
            "Lookahead(adam) ordinary step (mean of steps 2..k-1)",
            statistics.mean(t.ms for t in ordinary),
            ours,
            "",
            adam_bytes,
        ),
        ("Lookahead(adam) sync step", sync.ms, ours, "", adam_bytes + 2 * p_bytes),
        ("Lookahead(adam) step after sync", after.ms, ours, "", adam_bytes + p_bytes),
        (
            "copy of the parameters alone",
            copied.ms,
            copy,
            f"{p_bytes / 2**20:.1f} MiB copied",
            2 * p_bytes,
        ),
    ]
    return [
        Row(
            f"{case} vs adam step, {size}",
            ms,
            adam_ms,
            runner.compile_s,
            adam.compile_s,
            note,
            nbytes,
            adam_bytes,
        )
        for case, ms, runner, note, nbytes in cases
    ]


def bench_lazy(quick: bool) -> list[Row]:
    """Lazy(Adam) with row ids on an embedding table vs dense optax.adam (goal ≤ 0.02×).

    A 1,000,000 × 64 table (100,000 × 64 with quick) and 4,096 row ids per step
    drawn with repetition. Frozen policy with an elementwise inner runs the sparse
    path, given either the dense table gradient or the pre-gathered row gradient;
    the article policy (dense masked path) is shown for scale.
    """
    from optax_contrib.lazy import lazy

    num_rows, dim, n_ids = (100_000 if quick else 1_000_000), 64, 4096
    repeats = 3 if quick else 10
    k_table, k_ids, k_grad = jax.random.split(jax.random.key(0), 3)
    table = jax.random.normal(k_table, (num_rows, dim), jnp.float32)
    ids = jax.random.randint(k_ids, (n_ids,), 0, num_rows)
    row_grads = jax.random.normal(k_grad, (n_ids, dim), jnp.float32)
    table_grads = jnp.zeros_like(table).at[ids].add(row_grads)

    # Minimal traffic: the sparse path touches the rows in the batch (parameters, their
    # gradient rows, two moments: 3 + 2 * 2 row reads/writes) and reads the ids; the
    # article policy and dense Adam update the whole table and its state.
    touched = int(jnp.unique(ids).size)
    sparse_bytes = 7 * touched * dim * 4 + ids.nbytes

    def prepared(tx: optax.GradientTransformation, grads: jax.Array, with_ids: bool) -> Runner:
        params = jnp.copy(table)
        state = tx.init(params)
        nbytes = tree_bytes(state)

        def step(params, state, grads, ids):
            extra = {"row_ids": ids} if with_ids else {}
            updates, state = tx.update(grads, state, params, **extra)
            return optax.apply_updates(params, updates), state

        min_bytes = sparse_bytes if tx is sparse else update_bytes(table.nbytes, nbytes)
        return prepare_step(
            step, (params, state), (grads, ids), state_bytes=nbytes, min_bytes=min_bytes
        )

    sparse = lazy(optax.adam(1e-3), policy="frozen", elementwise=True)
    article = lazy(optax.adam(1e-3), policy="article")
    size = f"{num_rows:,} × {dim}, {n_ids} ids"
    cases = [
        (f"Lazy(Adam) sparse path, table grad vs adam, {size} (goal ≤ 0.02×)", sparse, table_grads),
        (f"Lazy(Adam) sparse path, row grads vs adam, {size} (goal ≤ 0.02×)", sparse, row_grads),
        (f"Lazy(Adam) article policy (dense masked) vs adam, {size}", article, table_grads),
    ]
    *ours, dense = time_interleaved(
        [prepared(tx, grads, with_ids=True) for _, tx, grads in cases]
        + [prepared(optax.adam(1e-3), table_grads, with_ids=False)],
        repeats=repeats,
    )
    return [_row(case, t, dense, table.size) for (case, _, _), t in zip(cases, ours)]


SECTIONS: list[Callable[[bool], list[Row]]] = [
    bench_adafactor,
    bench_lookahead,
    bench_lookahead_steps,
    bench_lazy,
]


def format_table(rows: Sequence[Row], machine: Machine) -> str:
    """The result table; the limit columns are ours', then the peer's share of bandwidth."""
    names = [
        "case", "ours (ms)", "peer (ms)", "ratio", "compile ours/peer (s)",
        "state bytes (ours / peer)", *LIMIT_HEADER, "peer min bytes", "peer % of copy bw",
    ]  # fmt: skip
    text = ("case", "state bytes (ours / peer)")
    lines = [markdown_header(names, [n not in text for n in names])]
    for r in rows:
        peer = limit_cells(r.peer_ms * 1e-3, r.min_bytes_peer, None, machine)[:2]
        cells = [
            r.case, f"{r.ours_ms:.2f}", f"{r.peer_ms:.2f}", f"{r.ratio:.2f}×",
            f"{r.compile_ours_s:.2f} / {r.compile_peer_s:.2f}", r.state_bytes,
            *limit_cells(r.ours_ms * 1e-3, r.min_bytes_ours, None, machine), *peer,
        ]  # fmt: skip
        lines.append(markdown_row(cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument(
        "--only", default="", help="run only the sections whose name contains this, e.g. lazy"
    )
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, optax {optax.__version__}, devices: {jax.devices()}")
    machine = machine_limits(3 if args.quick else 5)
    print(machine.describe())
    rows: list[Row] = []
    for section in SECTIONS:
        if args.only in section.__name__:
            rows.extend(section(args.quick))
    print(format_table(rows, machine))


if __name__ == "__main__":
    main()
