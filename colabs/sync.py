"""Keep the notebooks and README.md in step with ``pyproject.toml`` and the notebooks' results.

The repository address is written once, as ``Repository`` in ``[project.urls]`` of
``pyproject.toml``. Everything else that names it is generated from it:

* each notebook's first cell, an "Open In Colab" badge, and its setup cell (the first code
  cell), rendered by :func:`badge_cell` and :func:`setup_cell`;
* every ``git+https://github.com/OWNER/NAME``, ``git clone https://github.com/OWNER/NAME``
  and ``https://colab.research.google.com/github/OWNER/NAME/blob/BRANCH/`` link in README.md
  and in the notebooks.

``python -m colabs --sync-links`` rewrites them (and regenerates the ``.ipynb`` twins with
jupytext); :func:`link_problems` lists what disagrees, for ``--check`` and the tests.

The README's notebook table, between ``<!-- colabs:begin -->`` and ``<!-- colabs:end -->``,
is rendered by :func:`render_table` from the notebooks' titles and the headline figures of
their ``colabs/outputs/NAME/summary.json`` (``python -m colabs --readme``).
:func:`compare_figures` says where the README's figures and a summary disagree by more than
``RTOL`` (relative) or ``ATOL`` (absolute), whichever is larger; wall-time figures (names
with ``speedup`` or ``per_s``) vary with the machine and are compared by name only.

Plain Python, standard library only, so that it runs before anything is installed.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BRANCH = "main"
"""The branch the Colab badges open."""
BEGIN, END = "<!-- colabs:begin -->", "<!-- colabs:end -->"
"""The markers around the README's notebook table."""
RTOL, ATOL = 0.05, 0.005
"""A README figure agrees with a summary when ``|readme - summary| <= max(RTOL * |summary|,
ATOL)``."""
TABLE_HEADER = (
    "| notebook | idea | headline figures (quick mode, CPU) |",
    "|---|---|---|",
)
BADGE_SVG = "https://colab.research.google.com/assets/colab-badge.svg"

_GITHUB = re.compile(r"https://github\.com/([\w-]+/[\w-]+)")
_LINK = re.compile(
    r"(?P<prefix>git\+https://github\.com/|git clone https://github\.com/"
    r"|https://colab\.research\.google\.com/github/)(?P<slug>[\w-]+/[\w-]+)"
    r"(?P<blob>/blob/[\w.-]+/)?"
)
_FIGURE = re.compile(r'`(?P<key>[A-Za-z_]\w*)` (?P<value>"(?:[^"\\]|\\.)*"|[^\s,|]+)')
_CELL_MARKER = re.compile(r"^# %%.*$", re.M)


# --------------------------------------------------------------------------- the address


def repository_url(root: Path = ROOT) -> str:
    """The ``Repository`` address of ``[project.urls]`` in ``root/pyproject.toml``.

    Raises:
        ValueError: when it is missing or not of the form ``https://github.com/OWNER/NAME``
            (Colab opens notebooks from GitHub only).
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    path = root / "pyproject.toml"
    urls = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {}).get("urls", {})
    url = urls.get("Repository")
    if not isinstance(url, str) or _GITHUB.fullmatch(url) is None:
        raise ValueError(
            f'{path}: [project.urls] needs Repository = "https://github.com/OWNER/NAME" '
            f"(no trailing slash or .git), got {url!r}"
        )
    return url


def _slug(repo: str) -> str:
    match = _GITHUB.fullmatch(repo)
    if match is None:
        raise ValueError(f"not a https://github.com/OWNER/NAME address: {repo!r}")
    return match.group(1)


def colab_url(repo: str, name: str) -> str:
    """The address that opens ``colabs/NAME.ipynb`` of ``repo`` in Colab."""
    return (
        f"https://colab.research.google.com/github/{_slug(repo)}/blob/{BRANCH}/colabs/{name}.ipynb"
    )


def badge(repo: str, name: str) -> str:
    """The markdown "Open In Colab" badge of notebook ``name``."""
    return f"[![Open In Colab]({BADGE_SVG})]({colab_url(repo, name)})"


# --------------------------------------------------------------------------- notebook cells

_SETUP = """\
# Setup (written by `python -m colabs --sync-links`; the same in every notebook): find the
# repository checkout (on Colab: clone it and install the notebook requirements), put its root
# first on sys.path and create this notebook's output folder.
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = "{repo}"
NAME = "{name}"
ROOT = None
for _dir in (Path.cwd(), *Path.cwd().parents):  # a checkout holds colabs/corpora.py
    if (_dir / "colabs" / "corpora.py").is_file():
        ROOT = _dir
        break
if ROOT is None and "google.colab" in sys.modules:
    ROOT = Path.cwd() / REPO.rsplit("/", 1)[-1]
    if not ROOT.is_dir():
        subprocess.run(["git", "clone", "--depth", "1", REPO, str(ROOT)], check=True)
if ROOT is None:
    raise RuntimeError(f"{{NAME}}: no checkout of {{REPO}} in {{Path.cwd()}} or above; run it there")
if "google.colab" in sys.modules and importlib.util.find_spec("snownlp") is None:
    _pip = [sys.executable, "-m", "pip", "install", "--progress-bar", "off"]
    subprocess.run([*_pip, f"{{ROOT}}[notebooks]"], check=True)  # the library + notebook extras
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
COLABS_DIR = ROOT / "colabs"
OUT = COLABS_DIR / "outputs" / NAME
OUT.mkdir(parents=True, exist_ok=True)"""


def setup_cell(repo: str, name: str) -> str:
    """Source of the setup cell (the first code cell) of notebook ``name``."""
    _slug(repo)
    return _SETUP.format(repo=repo, name=name)


def badge_cell(repo: str, name: str) -> str:
    """Source of the first cell of notebook ``name`` (markdown): its Colab badge."""
    return badge(repo, name)


def _cells(text: str) -> tuple[str, list[str]]:
    """Split a jupytext percent script into its header and its cells (marker line included)."""
    starts = [m.start() for m in _CELL_MARKER.finditer(text)]
    if not starts:
        return text, []
    bounds = [*starts, len(text)]
    return text[: starts[0]], [text[a:b] for a, b in zip(bounds, bounds[1:])]


def _cell_text(marker: str, source: str, comment: bool = False) -> str:
    lines = source.splitlines()
    if comment:
        lines = [f"# {line}" if line else "#" for line in lines]
    return marker + "\n" + "\n".join(lines) + "\n\n"


def _is_badge(cell: str) -> bool:
    lines = cell.splitlines()
    return lines[0].startswith("# %% [markdown]") and len(lines) > 1 and BADGE_SVG in lines[1]


def _sync_links_text(text: str, repo: str) -> str:
    slug = _slug(repo)

    def replace(match: re.Match) -> str:
        blob = f"/blob/{BRANCH}/" if match.group("blob") else ""
        return match.group("prefix") + slug + blob

    return _LINK.sub(replace, text)


def synced_notebook(text: str, repo: str, name: str) -> str:
    """The jupytext script ``text`` of notebook ``name`` with its badge and setup cells
    rendered for ``repo`` (the badge cell is inserted first when missing) and its links synced.

    Raises:
        ValueError: when the script has no code cell.
    """
    header, cells = _cells(_sync_links_text(text, repo))
    badge_text = _cell_text("# %% [markdown]", badge_cell(repo, name), comment=True)
    if cells and _is_badge(cells[0]):
        cells[0] = badge_text
    else:
        cells.insert(0, badge_text)
    code = [i for i, cell in enumerate(cells) if cell.split("\n", 1)[0].rstrip() == "# %%"]
    if not code:
        raise ValueError(f"{name}: no code cell to hold the setup")
    cells[code[0]] = _cell_text("# %%", setup_cell(repo, name))
    return header + "".join(cells).rstrip("\n") + "\n"


def _notebook_names(colabs_dir: Path) -> list[str]:
    return sorted(p.stem for p in colabs_dir.glob("*.ipynb") if p.with_suffix(".py").is_file())


def link_problems(root: Path = ROOT) -> list[str]:
    """What disagrees with ``[project.urls] Repository``: notebook badge and setup cells that
    are not the rendered ones, and links in README.md or the notebooks that name another
    repository or branch. Empty when everything agrees."""
    repo = repository_url(root)
    problems = []
    for name in _notebook_names(root / "colabs"):
        text = (root / "colabs" / f"{name}.py").read_text(encoding="utf-8")
        if text != synced_notebook(text, repo, name):
            problems.append(f"colabs/{name}.py: badge, setup cell or links differ from {repo}")
    readme = root / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
        for match in _LINK.finditer(text):
            if match.group(0) != _sync_links_text(match.group(0), repo):
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"README.md:{line}: {match.group(0)!r} is not {repo}")
    return problems


def sync_links(root: Path = ROOT, *, jupytext: bool = True) -> list[Path]:
    """Rewrite the notebooks' badge and setup cells and the links of README.md and the
    notebooks from ``[project.urls] Repository``; regenerate the changed ``.ipynb`` with
    ``jupytext --update`` unless ``jupytext=False``. Returns the files rewritten."""
    repo = repository_url(root)
    changed = []
    for name in _notebook_names(root / "colabs"):
        path = root / "colabs" / f"{name}.py"
        old = path.read_text(encoding="utf-8")
        new = synced_notebook(old, repo, name)
        if new != old:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
            if jupytext:
                _jupytext_update(path)
    readme = root / "README.md"
    if readme.is_file():
        old = readme.read_text(encoding="utf-8")
        new = _sync_links_text(old, repo)
        if new != old:
            readme.write_text(new, encoding="utf-8")
            changed.append(readme)
    return changed


def _jupytext_update(path: Path) -> None:
    command = [sys.executable, "-m", "jupytext", "--quiet", "--update", "--to", "ipynb", str(path)]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as err:
        raise RuntimeError(
            f"`jupytext --update --to ipynb {path}` failed (install the colabs-runner extra: "
            f"pip install -e '.[colabs-runner]'):\n{err.stderr}"
        ) from err


# --------------------------------------------------------------------------- the README table


def notebook_title(path: Path) -> str:
    """The first markdown heading (``# # Title``) of a jupytext script."""
    match = re.search(r"^# # (.+?)\s*$", path.read_text(encoding="utf-8"), re.M)
    if match is None:
        raise ValueError(f"{path}: no '# # Title' markdown heading")
    return match.group(1)


def format_figure(value: object) -> str:
    """README rendering of one headline figure: 3 significant digits for floats."""
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, str):
        if "|" in value or "\n" in value:
            raise ValueError(f"a string figure cannot hold '|' or a newline: {value!r}")
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"a headline figure is a number, bool or str, got {type(value).__name__}")


def _parse_value(token: str) -> object:
    if token in ("True", "False"):
        return token == "True"
    if token.startswith('"'):
        return json.loads(token)
    for kind in (int, float):
        try:
            return kind(token)
        except ValueError:
            pass
    return token


def parse_figures(cell: str) -> dict[str, object]:
    """The ``{key: value}`` figures of a README figures cell (`` `key` value, ...``)."""
    return {m.group("key"): _parse_value(m.group("value")) for m in _FIGURE.finditer(cell)}


def render_figures(summary: dict) -> str:
    """The README figures cell of a summary (``quick`` left out)."""
    return ", ".join(f"`{k}` {format_figure(v)}" for k, v in summary.items() if k != "quick")


def render_row(repo: str, name: str, title: str, figures: str) -> str:
    """One README table row."""
    title = title.replace("|", "\\|")
    return f"| `{name}` {badge(repo, name)} | {title} | {figures} |"


def split_section(text: str, begin: str, end: str, what: str = "section") -> tuple[str, str, str]:
    """``(head, body, tail)`` of ``text`` split at its one ``begin`` ... ``end`` section; the
    markers stay in ``head`` and ``tail``. README.md's generated sections (the notebook
    tables here, the benchmark tables, the Reliability table) are all read this way.

    Raises:
        ValueError: unless ``text`` holds each marker once, ``begin`` first.
    """
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"README.md needs one {what} between {begin} and {end} (in that order)")
    head, rest = text.split(begin, 1)
    body, tail = rest.split(end, 1)
    return head + begin, body, end + tail


def replace_section(text: str, begin: str, end: str, body: str, what: str = "section") -> str:
    """``text`` with the body of its ``begin`` ... ``end`` section (:func:`split_section`)
    replaced by ``body``, on the lines between the two markers."""
    head, _, tail = split_section(text, begin, end, what)
    return head + "\n" + body.strip("\n") + "\n" + tail


def read_table(readme: str) -> tuple[str, list[tuple[str, str]], str]:
    """Split README text at the notebook table.

    Returns:
        ``(before, rows, after)``: the text up to and including the begin marker, the
        ``(name, figures cell)`` of each row in order, and the text from the end marker on.

    Raises:
        ValueError: when the markers are missing, repeated or out of order.
    """
    head, body, tail = split_section(readme, BEGIN, END, "notebook table")
    rows = []
    for line in body.splitlines():
        match = re.match(r"\|\s*`(\w+)`.*\|(?P<figures>[^|]*)\|\s*$", line)
        if match and line.strip() not in TABLE_HEADER:
            rows.append((match.group(1), match.group("figures").strip()))
    return head, rows, tail


def _summary(colabs_dir: Path, name: str) -> dict | None:
    path = colabs_dir / "outputs" / name / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return summary if isinstance(summary, dict) else None


def render_table(
    root: Path = ROOT, readme: str | None = None, *, summaries: bool = True
) -> tuple[str, list[str]]:
    """README text with its notebook table rendered from the notebooks and their summaries.

    A row's figures come from ``colabs/outputs/NAME/summary.json`` when it exists and was
    written in quick mode, else they stay as the README has them. Rows keep the README's
    order; notebooks new to it are appended in name order, removed ones are dropped.

    Args:
        root: the repository root.
        readme: the README text (default: ``root/README.md``).
        summaries: read the summaries; ``False`` keeps every row's figures as they are
            (re-renders only names, badges and titles).

    Returns:
        ``(text, notes)``: the new README text and one note per row whose figures were kept.
    """
    repo = repository_url(root)
    colabs_dir = root / "colabs"
    if readme is None:
        readme = (root / "README.md").read_text(encoding="utf-8")
    _, rows, _ = read_table(readme)
    names = _notebook_names(colabs_dir)
    old = dict(rows)
    order = [n for n, _ in rows if n in names] + [n for n in names if n not in old]
    lines, notes = list(TABLE_HEADER), []
    for name in order:
        summary = _summary(colabs_dir, name) if summaries else None
        if summary is not None and summary.get("quick") is True:
            figures = render_figures(summary)
        else:
            why = "no summary.json" if summary is None else "summary.json is not from quick mode"
            figures = old.get(name) or f"(run `python -m colabs {name}`)"
            notes.append(f"{name}: {why}; figures kept from README.md")
        title = notebook_title(colabs_dir / f"{name}.py")
        lines.append(render_row(repo, name, title, figures))
    return replace_section(readme, BEGIN, END, "\n".join(lines), "notebook table"), notes


def is_timing(key: str) -> bool:
    """Whether a figure is a wall-time measurement (compared by name only)."""
    return "speedup" in key or "per_s" in key


def compare_figures(readme: dict, summary: dict) -> list[str]:
    """Where README figures and a notebook's summary disagree (``quick`` left out).

    Numbers agree within ``max(RTOL * |summary|, ATOL)`` (integer counts also within
    ``sqrt(count)``, one Poisson standard deviation); bools and strings must be equal;
    wall-time figures (:func:`is_timing`) only need to be present in both. A NaN agrees with
    nothing.

    Returns:
        One message per disagreement; empty when they agree.
    """
    expected = {k: v for k, v in summary.items() if k != "quick"}
    problems = [
        f"`{k}` is in summary.json but not in README.md" for k in expected if k not in readme
    ]
    problems += [
        f"`{k}` is in README.md but not in summary.json" for k in readme if k not in expected
    ]
    for key, want in expected.items():
        if key not in readme or is_timing(key):
            continue
        got = readme[key]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (got, want))
        if numeric:
            tol = max(RTOL * abs(want), ATOL)
            if all(isinstance(v, int) for v in (got, want)):
                # A count of events (e.g. invalid Viterbi paths) moves with the float
                # rounding of training: one Poisson standard deviation, sqrt(count).
                tol = max(tol, math.sqrt(abs(want)))
            ok = abs(got - want) <= tol  # False for NaN
            ok = ok and not (math.isnan(got) or math.isnan(want))
        else:
            ok = got == want and type(got) is type(want)
        if not ok:
            problems.append(f"`{key}`: README.md {got!r}, summary.json {want!r}")
    return problems


def readme_problems(root: Path = ROOT, names: list[str] | None = None) -> dict[str, list[str]]:
    """Per notebook with a quick-mode ``summary.json``: where README.md's row disagrees with it.

    Args:
        root: the repository root.
        names: the notebooks to check (default: every notebook with a summary).

    Raises:
        ValueError: when README.md has no marked notebook table.
    """
    _, rows, _ = read_table((root / "README.md").read_text(encoding="utf-8"))
    table = {name: parse_figures(cell) for name, cell in rows}
    out = {}
    for name in names if names is not None else _notebook_names(root / "colabs"):
        summary = _summary(root / "colabs", name)
        if summary is None or summary.get("quick") is not True:
            continue
        if name not in table:
            out[name] = ["no row in README.md's notebook table"]
        elif problems := compare_figures(table[name], summary):
            out[name] = problems
    return out


# --------------------------------------------------------------------------- full-size records

FULL_BEGIN, FULL_END = "<!-- colabs-full:begin -->", "<!-- colabs-full:end -->"
"""The markers around the README's table of recorded full-size runs."""
FULL_HEADER = (
    "| notebook | wall time | recorded | figures at full size (`COLABS_FULL=1`) |",
    "|---|--:|---|---|",
)
CLOSING_TITLE = "**Recorded results.**"
"""First words of each notebook's closing cell (markdown), rendered by :func:`closing_cell`."""
WRAP = 92
"""Width of the closing cell's prose lines (before the ``# `` of the jupytext script)."""


def read_record(colabs_dir: Path, name: str) -> dict | None:
    """The record of notebook ``name``'s latest full-size run, ``colabs_dir/results/NAME.json``
    (written by ``python -m colabs --full``), or ``None`` when there is none.

    Raises:
        ValueError: when the file exists but is not the record of a full-size run.
    """
    path = colabs_dir / "results" / f"{name}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    keys = {"name", "mode", "wall_s", "date", "machine", "commit", "summary"}
    if (
        not isinstance(record, dict)
        or not keys <= record.keys()
        or record["name"] != name
        or record["mode"] != "full"
        or not isinstance(record["summary"], dict)
        or record["summary"].get("quick") is not False
    ):
        raise ValueError(f"{path}: not the record of a full-size run of {name} ({sorted(keys)})")
    return record


def format_wall(seconds: float) -> str:
    """A wall time in seconds or minutes: ``"48 s"``, ``"12.5 min"``."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def render_full_table(root: Path = ROOT, readme: str | None = None) -> str:
    """README text with its table of full-size runs rendered from ``colabs/results/*.json``.

    One row per notebook, in the order of the quick-mode table: the wall time of the run,
    its date and commit, and its figures; a notebook without a record says how to make one.
    The machine of the runs is named above the table (per row when they differ).
    """
    colabs_dir = root / "colabs"
    if readme is None:
        readme = (root / "README.md").read_text(encoding="utf-8")
    what = "table of full-size runs"
    split_section(readme, FULL_BEGIN, FULL_END, what)  # fail before reading the records
    _, rows, _ = read_table(readme)
    names = _notebook_names(colabs_dir)
    order = [n for n, _ in rows if n in names] + sorted(set(names) - {n for n, _ in rows})
    records = {name: read_record(colabs_dir, name) for name in order}
    machines = sorted({r["machine"] for r in records.values() if r is not None})
    lines = []
    if len(machines) == 1:
        lines += [f"Recorded on {machines[0]}.", ""]
    lines += list(FULL_HEADER)
    for name in order:
        record = records[name]
        if record is None:
            lines.append(f"| `{name}` | | not recorded: `python -m colabs --full {name}` | |")
            continue
        when = f"{record['date']}, `{record['commit']}`"
        if len(machines) > 1:
            when += f", {record['machine']}"
        figures = render_figures(record["summary"])
        lines.append(f"| `{name}` | {format_wall(record['wall_s'])} | {when} | {figures} |")
    return replace_section(readme, FULL_BEGIN, FULL_END, "\n".join(lines), what)


def closing_cell(name: str, record: dict | None, quick: dict[str, object]) -> str:
    """Source of notebook ``name``'s closing cell (markdown): its quick-mode figures (as in
    README.md's notebook table) beside those of its recorded full-size run, and that run's
    wall time, date, commit and machine."""
    lines = [
        *textwrap.wrap(
            f"{CLOSING_TITLE} Written by `python -m colabs --readme` from README.md's notebook "
            f"table (quick mode) and `colabs/results/{name}.json` (the latest "
            f"`python -m colabs --full {name}`); the run above printed its own figures.",
            width=WRAP,
        ),
        "",
    ]
    if record is None:
        lines.append(f"No full-size run recorded yet: `python -m colabs --full {name}`.")
        return "\n".join(lines)
    full = {k: v for k, v in record["summary"].items() if k != "quick"}
    keys = [*full, *(k for k in quick if k not in full)]
    lines += ["| figure | quick mode | full size |", "|---|--:|--:|"]
    for key in keys:
        cells = [format_figure(d[key]) if key in d else "" for d in (quick, full)]
        lines.append(f"| `{key}` | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        *textwrap.wrap(
            f"The full-size run took {format_wall(record['wall_s'])} on {record['machine']} "
            f"({record['date']}, commit `{record['commit']}`).",
            width=WRAP,
        ),
    ]
    return "\n".join(lines)


def _is_closing(cell: str) -> bool:
    lines = cell.splitlines()
    return (
        lines[0].startswith("# %% [markdown]")
        and len(lines) > 1
        and lines[1].startswith(f"# {CLOSING_TITLE}")
    )


def synced_closing(text: str, cell: str) -> str:
    """The jupytext script ``text`` with its closing cell replaced by ``cell`` (appended when
    the last cell is not a closing cell)."""
    header, cells = _cells(text)
    rendered = _cell_text("# %% [markdown]", cell, comment=True)
    if cells and _is_closing(cells[-1]):
        cells[-1] = rendered
    else:
        if cells:
            cells[-1] = cells[-1].rstrip("\n") + "\n\n\n"
        cells.append(rendered)
    return header + "".join(cells).rstrip("\n") + "\n"


def render_closing_cells(root: Path = ROOT, readme: str | None = None) -> dict[str, str]:
    """``{name: script text}`` of every notebook with its closing cell rendered from its
    record and README.md's quick-mode figures (``readme``, default ``root/README.md``)."""
    colabs_dir = root / "colabs"
    if readme is None:
        readme = (root / "README.md").read_text(encoding="utf-8")
    _, rows, _ = read_table(readme)
    quick = {name: parse_figures(cell) for name, cell in rows}
    out = {}
    for name in _notebook_names(colabs_dir):
        text = (colabs_dir / f"{name}.py").read_text(encoding="utf-8")
        cell = closing_cell(name, read_record(colabs_dir, name), quick.get(name, {}))
        out[name] = synced_closing(text, cell)
    return out


def write_closing_cells(
    root: Path = ROOT, readme: str | None = None, *, jupytext: bool = True
) -> list[Path]:
    """Rewrite every notebook's closing cell (:func:`render_closing_cells`) and regenerate
    the changed ``.ipynb`` unless ``jupytext=False``. Returns the scripts rewritten."""
    changed = []
    for name, new in render_closing_cells(root, readme).items():
        path = root / "colabs" / f"{name}.py"
        if path.read_text(encoding="utf-8") != new:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
            if jupytext:
                _jupytext_update(path)
    return changed
