"""The colabs/ notebooks: pairing, conventions, execution, and the ``python -m colabs`` runner."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from colabs import sync

ROOT = Path(__file__).resolve().parents[1]
COLABS = ROOT / "colabs"
NOTEBOOKS = sorted(p.stem for p in COLABS.glob("*.ipynb"))
SETTINGS_LINE = 'QUICK = os.environ.get("COLABS_FULL", "0") != "1"'
REPO = sync.repository_url(ROOT)
FIND_SPEC = importlib.util.find_spec


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
    cells = _cells(COLABS / f"{name}.py")
    code = [src for kind, src in cells if kind == "code"]
    setup, settings, last = code[0], code[1], code[-1]
    hint = "run `python -m colabs --sync-links`"
    assert cells[0] == ("markdown", sync.badge_cell(REPO, name)), f"first cell: badge; {hint}"
    assert cells[1][0] == "markdown" and cells[1][1].startswith("# "), "then the title"
    assert setup == sync.setup_cell(REPO, name), f"the first code cell is the setup; {hint}"
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
    problems = sync.readme_problems(ROOT, [name]).get(name, [])
    assert not problems, (
        f"README.md's figures for {name} disagree with this run (tolerance: {sync.RTOL:.0%} or "
        f"{sync.ATOL}); if the notebook's results changed on purpose, run "
        f"`python -m colabs {name} && python -m colabs --readme`: " + "; ".join(problems)
    )


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


def test_runner_without_notebooks_fails_with_a_message(tmp_path, capsys):
    from colabs import __main__ as runner

    empty = tmp_path / "colabs"
    empty.mkdir()
    assert runner.main([], colabs_dir=empty) == 1
    assert runner.main(["--list"], colabs_dir=empty) == 1
    err = capsys.readouterr().err
    assert "no notebooks found" in err and "checkout" in err


# --------------------------------------------------------------------------- the setup cell


def _run_setup(name, cwd, monkeypatch, *, colab, snownlp=True):
    """Execute the rendered setup cell in ``cwd``; returns its namespace and the commands run."""
    commands = []
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: commands.append(cmd))
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda mod, *a: None if mod == "snownlp" and not snownlp else FIND_SPEC(mod, *a),
    )
    namespace: dict = {}
    exec(compile(sync.setup_cell(REPO, name), f"{name} setup", "exec"), namespace)
    return namespace, commands


def test_setup_cell_in_a_checkout_finds_the_root_from_colabs_and_below(tmp_path, monkeypatch):
    checkout = tmp_path / "repo"
    (checkout / "colabs" / "sub").mkdir(parents=True)
    (checkout / "colabs" / "corpora.py").write_text("")
    for cwd in (checkout, checkout / "colabs", checkout / "colabs" / "sub"):
        ns, commands = _run_setup("demo", cwd, monkeypatch, colab=False)
        assert ns["ROOT"] == checkout and sys.path[0] == str(checkout) and commands == []
        assert ns["OUT"] == checkout / "colabs" / "outputs" / "demo" and ns["OUT"].is_dir()


def test_setup_cell_on_colab_clones_and_installs_the_notebook_extra(tmp_path, monkeypatch):
    ns, commands = _run_setup("demo", tmp_path, monkeypatch, colab=True, snownlp=False)
    clone = tmp_path / REPO.rsplit("/", 1)[-1]
    assert ns["ROOT"] == clone and sys.path[0] == str(clone)
    assert commands[0] == ["git", "clone", "--depth", "1", REPO, str(clone)]
    assert commands[1][:4] == [sys.executable, "-m", "pip", "install"]
    assert commands[1][-1] == f"{clone}[notebooks]" and len(commands) == 2
    # run again (the clone exists, the requirements are installed): nothing is fetched
    (clone / "colabs").mkdir(parents=True, exist_ok=True)
    ns, commands = _run_setup("demo", tmp_path, monkeypatch, colab=True, snownlp=True)
    assert ns["ROOT"] == clone and commands == []


def test_setup_cell_outside_a_checkout_says_so(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="no checkout of https://github.com/"):
        _run_setup("demo", tmp_path, monkeypatch, colab=False)


# --------------------------------------------------------------------------- links and README


def test_links_agree_with_pyproject():
    """Badges, setup cells and README/notebook links all name [project.urls] Repository."""
    assert sync.link_problems(ROOT) == [], "run `python -m colabs --sync-links`"


def test_readme_notebook_table_is_complete():
    """One row per notebook, in the rendered form (name, badge, title); README's own figures."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rendered, _ = sync.render_table(ROOT, readme, summaries=False)
    assert rendered == readme, "run `python -m colabs --readme`"
    _, rows, _ = sync.read_table(readme)
    assert sorted(name for name, _ in rows) == NOTEBOOKS
    assert all(sync.parse_figures(cell) for _, cell in rows), "every row lists its figures"


EMPTY_NOTEBOOK = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _fake_repo(tmp_path, url="https://github.com/someone/elsewhere"):
    pyproject = f'[project]\nname = "x"\n[project.urls]\nRepository = "{url}"\n'
    (tmp_path / "pyproject.toml").write_text(pyproject)
    colabs = tmp_path / "colabs"
    (colabs / "outputs" / "demo").mkdir(parents=True)
    (colabs / "demo.ipynb").write_text(json.dumps(EMPTY_NOTEBOOK))
    (colabs / "demo.py").write_text(
        "# ---\n# jupyter:\n#   jupytext:\n#     formats: ipynb,py:percent\n# ---\n\n"
        "# %% [markdown]\n# # A demo | with a bar\n\n"
        '# %%\nimport os\n\n# %%\nQUICK = os.environ.get("COLABS_FULL", "0") != "1"\n'
    )
    (tmp_path / "README.md").write_text(
        "# x\n\npip install 'x @ git+https://github.com/old/place'\n\n"
        f"{sync.BEGIN}\n{sync.END}\n\n{sync.FULL_BEGIN}\n{sync.FULL_END}\n\nmore text\n"
    )
    return colabs


def test_sync_links_rewrites_every_address_from_pyproject(tmp_path):
    _fake_repo(tmp_path)
    repo = sync.repository_url(tmp_path)
    assert len(sync.link_problems(tmp_path)) == 2  # the notebook and README.md line 3
    changed = sync.sync_links(tmp_path, jupytext=False)
    assert {p.name for p in changed} == {"demo.py", "README.md"}
    assert sync.link_problems(tmp_path) == [] and sync.sync_links(tmp_path, jupytext=False) == []
    assert "git+https://github.com/someone/elsewhere'" in (tmp_path / "README.md").read_text()
    script = (tmp_path / "colabs" / "demo.py").read_text()
    assert script.count("# %%") == 4 and sync.badge(repo, "demo") in script
    assert sync.setup_cell(repo, "demo") in script and "# # A demo" in script
    (tmp_path / "pyproject.toml").write_text(
        '[project.urls]\nRepository = "https://gitlab.com/a/b"\n'
    )
    with pytest.raises(ValueError, match=r"github\.com/OWNER/NAME"):
        sync.repository_url(tmp_path)


def test_readme_command_renders_the_table_from_the_summaries(tmp_path, capsys):
    from colabs import __main__ as runner

    colabs = _fake_repo(tmp_path)
    summary = colabs / "outputs" / "demo" / "summary.json"
    summary.write_text(json.dumps({"f1": 0.87654, "ok": True, "n": 12, "quick": True}))
    assert runner.main(["--readme", "--check"], colabs_dir=colabs) == 1
    assert runner.main(["--readme"], colabs_dir=colabs) == 0
    readme = (tmp_path / "README.md").read_text()
    assert "| `demo` [![Open In Colab]" in readme and r"A demo \| with a bar" in readme
    assert "`f1` 0.877, `ok` True, `n` 12 |" in readme and readme.endswith("more text\n")
    assert runner.main(["--readme", "--check"], colabs_dir=colabs) == 0
    assert sync.readme_problems(tmp_path) == {}
    summary.write_text(json.dumps({"f1": 0.95, "ok": True, "n": 12, "quick": True}))
    assert sync.readme_problems(tmp_path) == {"demo": ["`f1`: README.md 0.877, summary.json 0.95"]}
    result = runner.Result("demo", True, 1.0, json.loads(summary.read_text()))
    notes = runner.readme_notes([result], tmp_path)
    assert "README.md disagrees with demo: `f1`" in notes[0] and "--readme" in notes[1]
    summary.write_text(json.dumps({"f1": 0.95, "quick": False}))  # a full run is not used
    assert runner.main(["--readme", "--check"], colabs_dir=colabs) == 0
    assert "not from quick mode" in capsys.readouterr().out
    (tmp_path / "README.md").write_text("no markers\n")
    assert runner.main(["--readme"], colabs_dir=colabs) == 2
    assert sync.BEGIN in capsys.readouterr().err


def test_compare_figures_tolerance_and_kinds():
    base = {"f1": 0.8, "tiny": 1e-6, "flag": True, "label": "x", "step_speedup": 0.5, "quick": True}
    same = {"f1": 0.8, "tiny": 1e-6, "flag": True, "label": "x", "step_speedup": 0.5}
    assert sync.compare_figures(same, base) == []
    near = dict(same, f1=0.8 * (1 + 0.9 * sync.RTOL), tiny=0.9 * sync.ATOL, step_speedup=-3.0)
    assert sync.compare_figures(near, base) == []  # within tolerance; timings by name only
    far = dict(same, f1=0.8 * (1 + 1.1 * sync.RTOL))
    assert sync.compare_figures(far, base) == [f"`f1`: README.md {far['f1']!r}, summary.json 0.8"]
    assert len(sync.compare_figures(dict(same, tiny=1.1 * sync.ATOL), base)) == 1
    assert len(sync.compare_figures(dict(same, flag=1), base)) == 1  # a bool is not a number
    assert len(sync.compare_figures(dict(same, label="y"), base)) == 1
    assert len(sync.compare_figures(dict(same, f1=float("nan")), base)) == 1
    missing = {k: v for k, v in same.items() if k != "step_speedup"}
    assert sync.compare_figures(dict(missing, extra=1), base) == [
        "`step_speedup` is in summary.json but not in README.md",
        "`extra` is in README.md but not in summary.json",
    ]


def test_figures_render_and_parse_back():
    summary = {"a": 0.123456, "b": -4.77e-07, "c": 8.0, "d": 77, "e": False, "f": 'say "hi", ok'}
    parsed = sync.parse_figures(sync.render_figures(dict(summary, quick=True)))
    assert parsed == {"a": 0.123, "b": -4.77e-07, "c": 8, "d": 77, "e": False, "f": 'say "hi", ok'}
    assert sync.compare_figures(parsed, summary) == []
    with pytest.raises(ValueError, match="'|'"):
        sync.format_figure("a|b")


DEMO_RUN = """\
import json, os
from pathlib import Path
QUICK = os.environ.get("COLABS_FULL", "0") != "1"
out = Path.cwd() / "colabs" / "outputs" / "demo"
out.mkdir(parents=True, exist_ok=True)
summary = {"f1": 0.81234 if QUICK else 0.93456, "n": 12 if QUICK else 40, "quick": QUICK}
(out / "summary.json").write_text(json.dumps(summary))
"""


def test_full_run_is_recorded_and_rendered_in_readme_and_closing_cell(tmp_path, capsys):
    pytest.importorskip("jupytext")
    from colabs import __main__ as runner

    colabs = _fake_repo(tmp_path)
    script = colabs / "demo.py"
    script.write_text(script.read_text() + "\n\n# %%\n" + DEMO_RUN)
    assert runner.main(["demo"], colabs_dir=colabs) == 0  # quick: nothing recorded
    assert not (colabs / "results").exists() and sync.read_record(colabs, "demo") is None
    assert runner.main(["--readme"], colabs_dir=colabs) == 0
    readme = (tmp_path / "README.md").read_text()
    assert "not recorded: `python -m colabs --full demo`" in readme
    assert "No full-size run recorded yet" in script.read_text()

    assert runner.main(["--full", "demo"], colabs_dir=colabs) == 0
    assert "recorded colabs/results/demo.json" in capsys.readouterr().out
    record = sync.read_record(colabs, "demo")
    assert record["summary"] == {"f1": 0.93456, "n": 40, "quick": False}
    assert record["mode"] == "full" and 0 <= record["wall_s"] < 60 and record["date"]
    assert runner.main(["--readme", "--check"], colabs_dir=colabs) == 1
    assert runner.main(["--readme"], colabs_dir=colabs) == 0
    assert runner.main(["--readme", "--check"], colabs_dir=colabs) == 0
    readme = (tmp_path / "README.md").read_text()
    wall = sync.format_wall(record["wall_s"])
    assert f"| `demo` | {wall} | {record['date']}, `{record['commit']}` | `f1` 0.935, `n` 40 |" in (
        readme
    )
    assert f"Recorded on {record['machine']}." in readme and readme.endswith("more text\n")
    text = script.read_text()
    assert "| `f1` | 0.812 | 0.935 |" in text and "| `n` | 12 | 40 |" in text
    assert text.count(sync.CLOSING_TITLE) == 1 and text.rstrip().endswith(f"`{record['commit']}`).")
    assert max(len(line) for line in text.splitlines()) <= 100
    cells = json.loads((colabs / "demo.ipynb").read_text())["cells"]  # regenerated by jupytext
    assert cells[-1]["cell_type"] == "markdown" and "| `f1` | 0.812 | 0.935 |" in "".join(
        cells[-1]["source"]
    )
    assert runner.main(["--readme"], colabs_dir=colabs) == 0 and script.read_text() == text

    (colabs / "results" / "demo.json").write_text(json.dumps(dict(record, mode="quick")))
    with pytest.raises(ValueError, match="not the record of a full-size run"):
        sync.read_record(colabs, "demo")
    with pytest.raises(ValueError, match="only a successful full-size run"):
        runner.record_full(runner.Result("demo", True, 1.0, {"f1": 0.8, "quick": True}), colabs)


def test_every_notebook_has_a_full_size_record_shown_in_readme_and_its_closing_cell():
    """The README's table of full-size runs and the notebooks' closing cells are the ones
    rendered from ``colabs/results/NAME.json``; every notebook has run at full size."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    hint = "run `python -m colabs --readme`"
    assert sync.render_full_table(ROOT, readme) == readme, hint
    for name, text in sync.render_closing_cells(ROOT, readme).items():
        assert (COLABS / f"{name}.py").read_text(encoding="utf-8") == text, f"{name}: {hint}"
    _, rows, _ = sync.read_table(readme)
    for name, cell in rows:
        record = sync.read_record(COLABS, name)
        assert record is not None, f"{name}: no full-size run recorded (python -m colabs --full)"
        assert not record["commit"].endswith("+dirty"), f"{name}: recorded from a dirty tree"
        full = set(record["summary"]) - {"quick"}
        assert full == set(sync.parse_figures(cell)), f"{name}: full and quick figures differ"
