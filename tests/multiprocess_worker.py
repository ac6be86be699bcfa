"""One of the processes of ``tests/test_multiprocess.py``: data-parallel training.

Run as ``python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR``
with ``JAX_PLATFORMS=cpu`` and ``XLA_FLAGS=--xla_force_host_platform_device_count=2``
(the test sets both). Every process joins the JAX multi-process runtime on
``127.0.0.1:PORT`` (gloo CPU collectives), builds a global mesh over the devices of
all processes, feeds its slice of each global batch with
``jax.make_array_from_process_local_data`` and trains the tiny model below with each
optimizer of :data:`CASES`, in two layouts:

- ``"replicated"``: mesh ``("data",)`` over all devices, parameters replicated;
- ``"sharded"``: mesh ``("data", "model")``, the batch over ``"data"`` (one row of the
  mesh per process) and the parameters over ``"model"``.

Process 0 writes ``OUT_DIR/LAYOUT.npz`` (final parameters, optimizer state and
losses, gathered to the host) and ``OUT_DIR/LAYOUT.json`` (how many state leaves
shaped like their parameter were compared with its sharding, and which differ);
when orbax is installed, all processes together write an orbax checkpoint of each
final optimizer state to ``OUT_DIR/ckpt/LAYOUT/CASE``.

Importing this module has no side effects: the test imports :func:`init_params`,
:func:`batches`, :data:`CASES` and :func:`train` for the one-process reference.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_contrib

VOCAB, DIM, CLASSES = 16, 8, 4
BATCH, LENGTH, STEPS = 8, 3, 6
USED_ROWS = 12  # token ids are drawn from [0, USED_ROWS): the last rows are never touched
UNAVAILABLE_EXIT = 77  # exit status: the multi-process runtime could not start
LAZY_MASK = {"b": False, "embed": True, "w": False}

# name -> (optimizer factory, pass the batch's token ids as ``row_ids``)
CASES: dict[str, tuple[Callable[[], optax.GradientTransformation], bool]] = {
    "optax_adam": (lambda: optax.adam(1e-2), False),
    "adafactor": (lambda: optax_contrib.adafactor(), False),
    "adafactor_factored": (lambda: optax_contrib.adafactor(min_dim_size_to_factor=4), False),
    "lookahead": (lambda: optax_contrib.lookahead(optax.adam(1e-2)), False),
    "lazy": (lambda: optax_contrib.lazy(optax.adam(1e-2), mask=LAZY_MASK), False),
    "lazy_sparse": (
        lambda: optax_contrib.lazy(
            optax.adam(1e-2), mask=LAZY_MASK, policy="frozen", elementwise=True
        ),
        True,
    ),
}
LAYOUTS = ("replicated", "sharded")


def init_params() -> dict[str, np.ndarray]:
    """The initial parameters (host arrays, the same in every process)."""
    rng = np.random.default_rng(0)
    return {
        "b": np.zeros((CLASSES,), np.float32),
        "embed": rng.normal(size=(VOCAB, DIM)).astype(np.float32),
        "w": (rng.normal(size=(DIM, CLASSES)) / np.sqrt(DIM)).astype(np.float32),
    }


def batches() -> list[tuple[np.ndarray, np.ndarray]]:
    """The global batches ``(token ids (BATCH, LENGTH), targets (BATCH, CLASSES))``."""
    rng = np.random.default_rng(1)
    return [
        (
            rng.integers(0, USED_ROWS, size=(BATCH, LENGTH)).astype(np.int32),
            rng.normal(size=(BATCH, CLASSES)).astype(np.float32),
        )
        for _ in range(STEPS)
    ]


def _spec(x: jax.Array) -> tuple[Any, ...] | None:
    """Per-axis mesh axes of ``x`` under an explicit mesh, else None (no mesh set)."""
    if jax.sharding.get_abstract_mesh().empty:
        return None
    spec = tuple(jax.typeof(x).sharding.spec)
    return spec + (None,) * (x.ndim - len(spec))


def embed(table: jax.Array, ids: jax.Array) -> jax.Array:
    """``table[ids]``; under an explicit mesh the output keeps the ids' batch sharding."""
    ids_spec, table_spec = _spec(ids), _spec(table)
    if ids_spec is None or table_spec is None:
        return table[ids]
    return table.at[ids].get(out_sharding=jax.sharding.PartitionSpec(*ids_spec, *table_spec[1:]))


def dense(h: jax.Array, w: jax.Array) -> jax.Array:
    """``h @ w``; under an explicit mesh the output is sharded like the batch of ``h``."""
    h_spec = _spec(h)
    if h_spec is None:
        return h @ w
    return jnp.matmul(h, w, out_sharding=jax.sharding.PartitionSpec(h_spec[0], None))


def replicated(x: jax.Array) -> jax.Array:
    """``x`` replicated over an explicit mesh (unchanged without one).

    ``lazy`` de-duplicates ``row_ids`` with ``jnp.unique``, a sort along the ids
    axis, which explicit sharding only allows on an axis that is not sharded.
    """
    if _spec(x) is None:
        return x
    return jax.sharding.reshard(x, jax.sharding.PartitionSpec())


def loss_fn(params: dict[str, jax.Array], ids: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error of a mean-pooled bag of embeddings and a linear head."""
    h = jnp.mean(embed(params["embed"], ids), axis=1)
    return jnp.mean((dense(h, params["w"]) + params["b"] - y) ** 2)


def make_step(tx: optax.GradientTransformation, use_row_ids: bool) -> Callable[..., Any]:
    """A jitted training step ``(params, state, ids, y) -> (params, state, loss)``."""

    def step(params, state, ids, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, ids, y)
        extra = {"row_ids": replicated(ids.reshape(-1))} if use_row_ids else {}
        updates, state = tx.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state, loss

    return jax.jit(step)


def train(
    case: str,
    params: dict[str, jax.Array],
    data: list[tuple[jax.Array, jax.Array]],
) -> tuple[dict[str, jax.Array], Any, list[jax.Array]]:
    """``STEPS`` steps of ``CASES[case]`` from ``params`` on ``data``."""
    make_tx, use_row_ids = CASES[case]
    tx = make_tx()
    state = jax.jit(tx.init)(params)
    step = make_step(tx, use_row_ids)
    losses = []
    for ids, y in data:
        params, state, loss = step(params, state, ids, y)
        losses.append(loss)
    return params, state, losses


def _sharding_report(params: dict[str, jax.Array], state: Any) -> dict[str, Any]:
    """Compare each state leaf shaped like its parameter with that parameter's sharding."""
    compared, mismatches = 0, []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        if not keys or keys[-1] not in params or leaf.shape != params[keys[-1]].shape:
            continue
        compared += 1
        param = params[keys[-1]]
        if not leaf.sharding.is_equivalent_to(param.sharding, leaf.ndim):
            mismatches.append(f"{jax.tree_util.keystr(path)}: {leaf.sharding} vs {param.sharding}")
    return {"compared": compared, "mismatches": mismatches}


def _run_layout(layout: str, out_dir: str, process_id: int, num_processes: int) -> None:
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    explicit = jax.sharding.AxisType.Explicit
    if layout == "replicated":
        mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(explicit,))
        param_specs = {"b": P(), "embed": P(), "w": P()}
    else:
        mesh = jax.make_mesh(
            (num_processes, jax.local_device_count()),
            ("data", "model"),
            axis_types=(explicit, explicit),
        )
        param_specs = {"b": P(), "embed": P(None, "model"), "w": P("model", None)}
    per_process = BATCH // num_processes
    rows = slice(process_id * per_process, (process_id + 1) * per_process)

    def global_batch(x: np.ndarray) -> jax.Array:
        sharding = NamedSharding(mesh, P("data", *([None] * (x.ndim - 1))))
        # This process's devices hold the contiguous block `rows` of the global batch.
        held = sharding.addressable_devices_indices_map(x.shape).values()
        if {i for index in held for i in range(len(x))[index[0]]} != set(range(len(x))[rows]):
            raise RuntimeError(f"process {process_id} does not hold rows {rows} of the batch")
        return jax.make_array_from_process_local_data(sharding, x[rows], x.shape)

    checkpoints = importlib.util.find_spec("orbax") is not None
    if checkpoints:
        import orbax.checkpoint as ocp

    host_params = init_params()
    results: dict[str, np.ndarray] = {}
    shardings: dict[str, dict[str, Any]] = {}
    with jax.set_mesh(mesh):
        data = [(global_batch(ids), global_batch(y)) for ids, y in batches()]
        params0 = {
            k: jax.device_put(v, NamedSharding(mesh, param_specs[k]))
            for k, v in host_params.items()
        }
        for case in CASES:
            t0 = time.perf_counter()
            params, state, losses = train(case, params0, data)
            t1 = time.perf_counter()
            shardings[case] = _sharding_report(params, state)
            gathered = multihost_utils.process_allgather((params, state), tiled=True)
            for kind, tree in zip(("params", "state"), gathered):
                for i, leaf in enumerate(jax.tree.leaves(tree)):
                    results[f"{case}/{kind}/{i}"] = np.asarray(leaf)
            results[f"{case}/losses"] = np.asarray([float(x) for x in losses])
            t2 = time.perf_counter()
            if checkpoints:
                checkpointer = ocp.StandardCheckpointer()
                checkpointer.save(os.path.join(out_dir, "ckpt", layout, case), state)
                checkpointer.wait_until_finished()
            print(
                f"{layout} {case}: train {t1 - t0:.1f} s, gather {t2 - t1:.1f} s, "
                f"checkpoint {time.perf_counter() - t2:.1f} s",
                flush=True,
            )
    if process_id == 0:
        np.savez(os.path.join(out_dir, f"{layout}.npz"), **results)
        with open(os.path.join(out_dir, f"{layout}.json"), "w") as f:
            json.dump({"shardings": shardings, "checkpoints": checkpoints}, f)


def main(argv: list[str]) -> int:
    process_id, num_processes, port, out_dir = int(argv[0]), int(argv[1]), argv[2], argv[3]
    try:  # gloo: the CPU collectives across processes (jax's default since 0.4.3x)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # a jax without the option
        pass
    try:
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=60,
        )
        # A first cross-process collective: fails here when no CPU collectives exist.
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("multiprocess_worker: start")
    except Exception:  # the runtime itself is missing or broken: report, exit distinctly
        print("MULTIPROCESS_UNAVAILABLE:", traceback.format_exc(), file=sys.stderr, flush=True)
        return UNAVAILABLE_EXIT
    for layout in LAYOUTS:
        _run_layout(layout, out_dir, process_id, num_processes)
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
