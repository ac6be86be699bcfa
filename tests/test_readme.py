"""The README's quick example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_quick_example_runs():
    text = README.read_text(encoding="utf-8")
    match = re.search(r"## Quick example\n\n```python\n(.*?)```", text, re.S)
    assert match, "README.md has no '## Quick example' python block"
    namespace: dict = {}
    exec(compile(match.group(1), "README.md quick example", "exec"), namespace)
    tags, score = namespace["tags"], namespace["score"]
    assert tags.shape == (2, 7) and score.shape == (2,)
    assert (tags[1, 4:] == -1).all()  # padded positions are marked
    # The slow-weight copy holds the Lookahead slow weights, not the fast ones.
    import jax
    import numpy as np

    from flax import nnx

    slow = namespace["slow"]
    eval_kernel = nnx.state(namespace["eval_model"], nnx.Param)["kernel"][...]
    np.testing.assert_array_equal(np.asarray(eval_kernel), np.asarray(slow["kernel"][...]))
    fast_kernel = nnx.state(namespace["model"], nnx.Param)["kernel"][...]
    assert not np.array_equal(np.asarray(eval_kernel), np.asarray(fast_kernel))
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(slow))
