"""The colabs/ notebooks: pairing, conventions, execution, and the ``python -m colabs`` runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COLABS = ROOT / "colabs"
NOTEBOOKS = sorted(p.stem for p in COLABS.glob("*.ipynb"))
SETTINGS_LINE = 'QUICK = os.environ.get("COLABS_FULL", "0") != "1"'


def _cells(path: Path) -> list[tuple[str, str]]:
    jupytext = pytest.importorskip("jupytext")
    notebook = jupytext.read(path)
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_the_first_notebooks_exist():
    assert {"init_geometry", "jump_rope", "multilabel_zlpr"} <= set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_pair_in_sync(name):
    script, notebook = COLABS / f"{name}.py", COLABS / f"{name}.ipynb"
    assert script.is_file(), f"{notebook.name} has no {script.name} twin"
    assert _cells(script) == _cells(notebook), (
        f"{name}.ipynb is out of sync: run `jupytext --to ipynb colabs/{name}.py`"
    )
    raw = json.loads(notebook.read_text(encoding="utf-8"))
    for cell in raw["cells"]:
        if cell["cell_type"] == "code":
            assert not cell["outputs"] and cell["execution_count"] is None, (
                f"{name}.ipynb must be committed with outputs stripped"
            )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_conventions(name):
    code = [src for kind, src in _cells(COLABS / f"{name}.py") if kind == "code"]
    setup, settings, last = code[0], code[1], code[-1]
    assert 'REPO = "https://github.com/' in setup and '"google.colab" in sys.modules' in setup
    assert f'NAME = "{name}"' in setup and "OUT = " in setup
    assert SETTINGS_LINE in settings, "the second code cell is the settings cell"
    assert sum(SETTINGS_LINE in src for src in code) == 1
    assert '"summary.json"' in last and "assert " in last
    assert last.index('"summary.json"') < last.index("assert "), "write summary, then assert"
    assert not any(
        line.lstrip().startswith(("!", "%")) for src in code for line in src.splitlines()
    )


@pytest.mark.notebook
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, monkeypatch):
    """Runs the .ipynb top to bottom in quick mode; its own assertions are the test."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("COLABS_FULL", "0")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend
    summary_path = COLABS / "outputs" / name / "summary.json"
    summary_path.unlink(missing_ok=True)
    notebook = nbformat.read(COLABS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=900,
        resources={"metadata": {"path": str(COLABS)}},
    )
    started = time.time()
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    assert summary_path.is_file() and summary_path.stat().st_mtime >= started - 1
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    assert summary["quick"] is True
    assert all(isinstance(v, int | float | str | bool) for v in summary.values()), "flat summary"


# --------------------------------------------------------------------------- the runner

GOOD = """\
import json, os
from pathlib import Path
out = Path.cwd() / "colabs" / "outputs" / "good"
out.mkdir(parents=True, exist_ok=True)
print("progress")
summary = {"score": 0.123456, "mode": os.environ["COLABS_FULL"], "quick": True}
(out / "summary.json").write_text(json.dumps(summary))
"""
BAD = """\
import json
from pathlib import Path
out = Path.cwd() / "colabs" / "outputs" / "bad"
out.mkdir(parents=True, exist_ok=True)
(out / "summary.json").write_text(json.dumps({"score": 0.5}))
assert 0.5 > 0.9, "headline regressed"
"""
SILENT = "import sys\nsys.exit(0)\n"


@pytest.fixture
def fake_colabs(tmp_path):
    colabs = tmp_path / "colabs"
    colabs.mkdir()
    for name, source in (("good", GOOD), ("bad", BAD), ("silent", SILENT)):
        (colabs / f"{name}.py").write_text(source)
        (colabs / f"{name}.ipynb").write_text("{}")
    (colabs / "helper.py").write_text("")  # a .py without .ipynb is not a notebook
    return colabs


def test_runner_discovers_reports_and_fails(fake_colabs, capsys):
    from colabs import __main__ as runner

    assert runner.discover(fake_colabs) == ["bad", "good", "silent"]
    good = runner.run_notebook("good", fake_colabs, full=True)
    assert good.ok and good.returncode == 0
    assert good.summary == {"score": 0.123456, "mode": "1", "quick": True}
    assert "progress" in good.log.read_text()
    line = runner.format_line(good)
    assert line.split()[:2] == ["good", "OK"] and "score=0.1235" in line and "quick" not in line

    bad = runner.run_notebook("bad", fake_colabs)
    assert not bad.ok and bad.returncode == 1 and bad.summary == {"score": 0.5}
    assert "FAILED" in runner.format_line(bad) and "score=0.5" in runner.format_line(bad)
    silent = runner.run_notebook("silent", fake_colabs)  # exits 0 but wrote no summary
    assert not silent.ok and "no summary.json" in runner.format_line(silent)

    assert runner.main(["good"], colabs_dir=fake_colabs) == 0
    assert runner.main([], colabs_dir=fake_colabs) == 1
    out = capsys.readouterr().out
    assert "headline regressed" in out and "FAILED: bad, silent" in out
    assert runner.main(["nope"], colabs_dir=fake_colabs) == 2


def test_runner_kills_a_hung_notebook(fake_colabs):
    from colabs import __main__ as runner

    (fake_colabs / "hang.py").write_text("import time\ntime.sleep(60)\n")
    (fake_colabs / "hang.ipynb").write_text("{}")
    started = time.perf_counter()
    result = runner.run_notebook("hang", fake_colabs, timeout=1.0)
    assert not result.ok and result.returncode is None
    assert time.perf_counter() - started < 30


def test_cli_lists_the_notebooks():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "colabs", "--list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == NOTEBOOKS
