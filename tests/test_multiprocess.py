"""Data-parallel training across two JAX processes, against the one-process run.

Two worker processes (``tests/multiprocess_worker.py``, two CPU devices each) join
the JAX multi-process runtime on loopback (``jax.distributed.initialize``, gloo CPU
collectives) and train a tiny embedding model with ``optax.adam`` (the control),
``adafactor`` (default and factored), ``lookahead(adam)`` and ``lazy(adam)`` (dense
and row-id paths) on a global mesh over all four devices: the global batch sharded
over the data axis, the parameters replicated or sharded over a model axis. Each
result must equal the same steps run on the whole batch in this (single) process;
the optimizer state the two processes checkpoint with orbax must restore in this
process to the same state.

The workers are started once for the whole module (one test with subtests, so
that ``pytest -n`` does not start them twice) with a clean environment and a
deadline; the test is skipped, with the worker's error, when the multi-process
runtime cannot start here.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_contrib import lazy
from tests import multiprocess_worker as mw

REPO = pathlib.Path(__file__).resolve().parent.parent
WORKER = pathlib.Path(mw.__file__).resolve()
NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
DEADLINE_S = 180.0
RTOL = ATOL = 1e-6


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_env() -> dict[str, str]:
    """This environment without JAX/XLA settings, then CPU with two devices per process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_", "TPU_"))}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _run_workers(out: pathlib.Path) -> None:
    """Run the workers to completion; skip if the runtime is unavailable, fail otherwise."""
    port = _free_port()
    env = _worker_env()
    logs = [out / f"worker{i}.log" for i in range(NUM_PROCESSES)]
    procs = []
    for i, log in enumerate(logs):
        with open(log, "w") as f:
            cmd = [sys.executable, str(WORKER), str(i), str(NUM_PROCESSES), str(port), str(out)]
            procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=f, stderr=f))
    deadline = time.monotonic() + DEADLINE_S
    try:
        while any(p.poll() is None for p in procs):
            # A worker that failed leaves the others waiting on collectives: stop them.
            if any(p.returncode not in (None, 0) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = "\n".join(f"--- worker {i} ---\n{log.read_text()[-4000:]}" for i, log in enumerate(logs))
    codes = [p.returncode for p in procs]
    if mw.UNAVAILABLE_EXIT in codes:
        pytest.skip(f"the JAX multi-process runtime (gloo CPU collectives) is unavailable:\n{text}")
    if time.monotonic() > deadline:
        pytest.fail(f"multi-process workers did not finish within {DEADLINE_S:.0f} s:\n{text}")
    if codes != [0] * NUM_PROCESSES:
        pytest.fail(f"multi-process workers exited with {codes}:\n{text}")


def _reference(case: str):
    """The same steps on the whole global batch, in this process, on one CPU device."""
    with jax.default_device(jax.devices("cpu")[0]):
        params = {k: jnp.asarray(v) for k, v in mw.init_params().items()}
        data = [(jnp.asarray(ids), jnp.asarray(y)) for ids, y in mw.batches()]
        params, state, losses = mw.train(case, params, data)
    return params, state, np.asarray([float(x) for x in losses])


def _assert_close(actual, expected, what: str) -> None:
    expected = np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    if np.issubdtype(expected.dtype, np.floating):
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=what)
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=what)


def test_two_process_data_parallel_training_matches_one_process(tmp_path, subtests):
    _run_workers(tmp_path)
    initial = mw.init_params()
    references = {case: _reference(case) for case in mw.CASES}
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        ocp = None
    device = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])

    for layout in mw.LAYOUTS:
        results = np.load(tmp_path / f"{layout}.npz")
        meta = json.loads((tmp_path / f"{layout}.json").read_text())
        for case, (ref_params, ref_state, ref_losses) in references.items():
            with subtests.test(msg="training", layout=layout, case=case):
                np.testing.assert_allclose(
                    results[f"{case}/losses"], ref_losses, rtol=RTOL, atol=ATOL
                )
                for i, leaf in enumerate(jax.tree.leaves(ref_params)):
                    _assert_close(results[f"{case}/params/{i}"], leaf, f"{case} param {i}")
                state_leaves = jax.tree.leaves(ref_state)
                for i, leaf in enumerate(state_leaves):
                    _assert_close(results[f"{case}/state/{i}"], leaf, f"{case} state leaf {i}")
                assert f"{case}/state/{len(state_leaves)}" not in results
                # Every parameter moved away from its initial value.
                names = sorted(initial)  # the leaf order of a dict pytree
                for i, name in enumerate(names):
                    assert not np.allclose(results[f"{case}/params/{i}"], initial[name])
                if case.startswith("lazy"):
                    # Rows no batch touches keep their initial value exactly.
                    embed = results[f"{case}/params/{names.index('embed')}"]
                    np.testing.assert_array_equal(
                        embed[mw.USED_ROWS :], initial["embed"][mw.USED_ROWS :]
                    )

            with subtests.test(msg="state sharded like the params", layout=layout, case=case):
                report = meta["shardings"][case]
                assert report["mismatches"] == []
                assert report["compared"] > 0

            if ocp is None:
                continue
            with subtests.test(msg="orbax checkpoint", layout=layout, case=case):
                assert meta["checkpoints"]
                abstract = jax.tree.map(
                    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), ref_state
                )
                restored = ocp.StandardCheckpointer().restore(
                    tmp_path / "ckpt" / layout / case, abstract
                )
                assert jax.tree.structure(restored) == jax.tree.structure(ref_state)
                for i, leaf in enumerate(jax.tree.leaves(restored)):
                    np.testing.assert_array_equal(
                        np.asarray(leaf), results[f"{case}/state/{i}"], err_msg=f"{case} {i}"
                    )


def test_lazy_row_ids_sharded_over_the_data_axis():
    """``lazy`` row ids taken straight from a data-sharded batch, against replicated ids."""
    cpus = jax.devices("cpu")
    if len(cpus) < 8:
        pytest.skip("needs 8 CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    explicit = jax.sharding.AxisType.Explicit
    mesh = jax.make_mesh((8,), ("data",), axis_types=(explicit,), devices=cpus[:8])
    table = jnp.asarray(np.random.default_rng(0).normal(size=(16, 4)), jnp.float32)
    ids = np.array([1, 3, 3, 5, 7, 9, 11, 1], np.int32)
    grads = jnp.zeros_like(table).at[ids].add(1.0)
    tx = lazy(optax.adam(1e-2), policy="frozen", elementwise=True)
    step = jax.jit(lambda g, s, p, r: tx.update(g, s, p, row_ids=r))
    with jax.set_mesh(mesh):
        p = jax.sharding.PartitionSpec
        table_r, grads_r = (jax.device_put(x, p()) for x in (table, grads))
        state = tx.init(table_r)
        expected, _ = step(grads_r, state, table_r, jax.device_put(ids, p()))
        updates, _ = step(grads_r, state, table_r, jax.device_put(ids, p("data")))
    np.testing.assert_array_equal(np.asarray(updates), np.asarray(expected))
