"""Save and restore an optimizer state, as the optimizer tests' checkpoint check does."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def checkpoint_roundtrip(state: Any, directory: pathlib.Path) -> Any:
    """Write ``state`` with orbax (numpy ``.npz`` when orbax is absent) and read it back."""
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        leaves, treedef = jax.tree.flatten(state)
        path = directory / "state.npz"
        np.savez(path, *[np.asarray(x) for x in leaves])
        with np.load(path) as data:
            restored = [jnp.asarray(data[f"arr_{i}"]) for i in range(len(leaves))]
        return jax.tree.unflatten(treedef, restored)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / "ckpt", state)
    checkpointer.wait_until_finished()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    return checkpointer.restore(directory / "ckpt", abstract)
