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
