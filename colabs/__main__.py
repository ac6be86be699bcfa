"""Run the notebooks headless and keep README.md in step with them.

``python -m colabs [NAME ...] [--full] [--list] [--verbose]`` runs notebooks;
``python -m colabs --sync-links [--check]`` renders the notebooks' badge and setup cells and
the repository links from ``[project.urls] Repository`` of ``pyproject.toml``;
``python -m colabs --readme [--check]`` rewrites README.md's notebook table from the
notebooks' ``summary.json`` files, its table of full-size runs from the records that
``--full`` writes to ``colabs/results/NAME.json``, and each notebook's closing cell from
both (see :mod:`colabs.sync`). With ``--check`` nothing is
written and the exit status is 1 when a file is out of date; both exit with 2 when they
cannot work (no ``[project.urls] Repository``, no marked table in README.md).

Each notebook ``colabs/NAME.ipynb`` is paired with ``colabs/NAME.py`` (jupytext percent
format, the source of truth). The runner executes the plain-script twin in a subprocess
(``python colabs/NAME.py`` from the repository root, ``MPLBACKEND=Agg``), which needs no
Jupyter kernel; the test suite executes the ``.ipynb`` itself with nbclient. Every notebook
writes ``colabs/outputs/NAME/summary.json`` and then asserts on it, so the runner reports
the headline figures even when an assertion fails. The full output of each run goes to
``colabs/outputs/NAME/run.log``.

Prints one line per notebook (status, wall time, headline figures), then the figures that
disagree with README.md's table, and exits with status 1 if any notebook failed or none was
found (2 for an unknown name). The notebooks live in a checkout of the repository, not in
the ``optax-flax-contrib`` package.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from colabs import sync

COLABS_DIR = Path(__file__).resolve().parent


@dataclass
class Result:
    """Outcome of one notebook run."""

    name: str
    ok: bool
    seconds: float
    summary: dict = field(default_factory=dict)
    returncode: int | None = None
    log: Path | None = None


def discover(colabs_dir: Path = COLABS_DIR) -> list[str]:
    """Names of the notebooks: every ``NAME.ipynb`` that has its ``NAME.py`` twin, sorted."""
    return sorted(p.stem for p in colabs_dir.glob("*.ipynb") if p.with_suffix(".py").is_file())


def run_notebook(
    name: str,
    colabs_dir: Path = COLABS_DIR,
    *,
    full: bool = False,
    timeout: float = 1800.0,
    stream: bool = False,
) -> Result:
    """Execute ``colabs_dir/NAME.py`` from ``colabs_dir.parent`` and read its summary.

    Args:
      name: notebook name (file stem).
      colabs_dir: the folder holding the notebooks.
      full: set ``COLABS_FULL=1`` (full-size run) instead of quick mode.
      timeout: seconds before the run is killed and reported as failed.
      stream: also echo the notebook's output to this terminal.

    Returns:
      A :class:`Result`; ``ok`` requires exit status 0 and a fresh ``summary.json``.
    """
    out_dir = colabs_dir / "outputs" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path, log_path = out_dir / "summary.json", out_dir / "run.log"
    summary_path.unlink(missing_ok=True)  # never report a stale summary
    root = colabs_dir.parent
    env = dict(os.environ, MPLBACKEND="Agg", COLABS_FULL="1" if full else "0", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [sys.executable, str(colabs_dir / f"{name}.py")],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        watchdog = threading.Timer(timeout, proc.kill)  # also ends a run that prints nothing
        watchdog.start()
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                log.write(line)
                log.flush()  # run.log can be followed while the notebook runs
                if stream:
                    sys.stdout.write(line)
                    sys.stdout.flush()
            returncode = proc.wait()
        finally:
            watchdog.cancel()
        if time.perf_counter() - start >= timeout:
            returncode = None
            log.write(f"\n[colabs] killed after {timeout:.0f}s\n")
    seconds = time.perf_counter() - start
    summary = {}
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            summary = {}
    ok = returncode == 0 and bool(summary)
    return Result(name, ok, seconds, summary, returncode, log_path)


RESULTS_DIR = COLABS_DIR / "results"
"""Where a full-size run's record is kept (tracked): ``results/NAME.json``."""


def machine() -> str:
    """One line naming this machine's CPU count and the main package versions."""
    versions = []
    for package in ("jax", "flax", "optax"):
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return (
        f"{os.cpu_count()} {platform.machine()} CPU cores, Python {platform.python_version()}, "
        + ", ".join(versions)
    )


def _commit(root: Path) -> str:
    """The checkout's commit (``+dirty`` when tracked files differ), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def record_full(result: Result, results_dir: Path = RESULTS_DIR) -> Path:
    """Write the record of a successful full-size run to ``results_dir/NAME.json``.

    The record holds the notebook's ``summary.json``, the wall time of the run, the date,
    the machine and the commit; ``python -m colabs --readme`` renders the README's
    full-size table and each notebook's closing cell from it.
    """
    if not result.ok or result.summary.get("quick") is not False:
        raise ValueError(f"{result.name}: only a successful full-size run is recorded")
    results_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "name": result.name,
        "mode": "full",
        "wall_s": round(result.seconds, 1),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine(),
        "commit": _commit(results_dir.parent.parent),
        "summary": result.summary,
    }
    path = results_dir / f"{result.name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def format_value(value: object) -> str:
    """Compact rendering of one headline figure."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.4g}"


def format_line(result: Result, width: int = 20) -> str:
    """One summary line: name, OK/FAILED, wall time, headline figures."""
    status = "OK" if result.ok else "FAILED"
    figures = " ".join(
        f"{k}={format_value(v)}" for k, v in result.summary.items() if k not in ("quick",)
    )
    if not result.summary:
        figures = "(no summary.json)"
    return f"{result.name:<{width}} {status:<6} {result.seconds:7.1f}s  {figures}"


def _tail(path: Path | None, lines: int = 25) -> str:
    if path is None or not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join("    " + line for line in kept[-lines:])


def _no_notebooks(colabs_dir: Path) -> int:
    print(
        f"no notebooks found in {colabs_dir}: a notebook is colabs/NAME.ipynb next to its "
        "colabs/NAME.py twin. They live in a checkout of the repository (they are not part of "
        "the optax-flax-contrib package): clone it and run `python -m colabs` from its root.",
        file=sys.stderr,
    )
    return 1


def _maintenance(args: argparse.Namespace, root: Path) -> int:
    """``--sync-links`` / ``--readme``, with or without ``--check``."""
    try:
        if args.sync_links:
            if args.check:
                problems = sync.link_problems(root)
                print("\n".join(problems) or "links agree with pyproject.toml")
                return 1 if problems else 0
            changed = sync.sync_links(root)
            print("\n".join(f"rewrote {p.relative_to(root)}" for p in changed) or "up to date")
            return 0
        readme = root / "README.md"
        old = readme.read_text(encoding="utf-8")
        new, notes = sync.render_table(root, old)
        new = sync.render_full_table(root, new)
        for note in notes:
            print(note)
        scripts = sync.render_closing_cells(root, new)
        stale = [
            f"colabs/{name}.py"
            for name, text in scripts.items()
            if (root / "colabs" / f"{name}.py").read_text(encoding="utf-8") != text
        ]
        if args.check:
            print("README.md's notebook tables are " + ("up to date" if new == old else "stale"))
            print("\n".join(f"{path}: closing cell is stale" for path in stale))
            return 0 if new == old and not stale else 1
        if new != old:
            readme.write_text(new, encoding="utf-8")
        print("rewrote README.md's notebook tables" if new != old else "README.md up to date")
        for path in sync.write_closing_cells(root, new):
            print(f"rewrote the closing cell of {path.relative_to(root)}")
        return 0
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def readme_notes(results: list[Result], root: Path) -> list[str]:
    """Lines naming the figures of this run's quick-mode summaries that README.md disagrees
    with; empty when there is no README.md or it agrees."""
    names = [r.name for r in results if r.ok and r.summary.get("quick") is True]
    if not names or not (root / "README.md").is_file():
        return []
    try:
        problems = sync.readme_problems(root, names)
    except ValueError as err:
        return [f"README.md not checked: {err}"]
    lines = [f"README.md disagrees with {n}: " + "; ".join(p) for n, p in problems.items()]
    if lines:
        lines.append("`python -m colabs --readme` rewrites the table from the summaries")
    return lines


def main(argv: list[str] | None = None, colabs_dir: Path = COLABS_DIR) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m colabs",
        description="Run the notebooks headless and print one summary line per notebook.",
    )
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all)")
    parser.add_argument("--full", action="store_true", help="full-size run (COLABS_FULL=1)")
    parser.add_argument("--list", action="store_true", help="list the notebooks and exit")
    parser.add_argument("--verbose", "-v", action="store_true", help="echo notebook output")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per notebook")
    maintenance = parser.add_mutually_exclusive_group()
    maintenance.add_argument(
        "--sync-links",
        action="store_true",
        help="render the notebooks' badge and setup cells and the README/notebook links from "
        "[project.urls] Repository in pyproject.toml",
    )
    maintenance.add_argument(
        "--readme",
        action="store_true",
        help="rewrite README.md's notebook table from colabs/outputs/NAME/summary.json",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="with --sync-links or --readme: write nothing, exit 1 when out of date",
    )
    args = parser.parse_args(argv)
    root = colabs_dir.parent
    if args.check and not (args.sync_links or args.readme):
        parser.error("--check goes with --sync-links or --readme")
    if (args.sync_links or args.readme) and (args.names or args.list or args.full):
        parser.error("--sync-links and --readme take no notebook names, --list or --full")
    if args.sync_links or args.readme:
        return _maintenance(args, root)

    available = discover(colabs_dir)
    if not available:
        return _no_notebooks(colabs_dir)
    if args.list:
        print("\n".join(available))
        return 0
    unknown = [n for n in args.names if n not in available]
    if unknown:
        print(f"unknown notebook(s): {', '.join(unknown)}; available: {', '.join(available)}")
        return 2
    names = args.names or available
    width = max((len(n) for n in names), default=10)
    print(f"running {len(names)} notebook(s) in {'full' if args.full else 'quick'} mode")
    results = []
    for name in names:
        result = run_notebook(
            name, colabs_dir, full=args.full, timeout=args.timeout, stream=args.verbose
        )
        results.append(result)
        print(format_line(result, width), flush=True)
        if args.full and result.ok:
            print(f"  recorded {record_full(result, colabs_dir / 'results').relative_to(root)}")
        if not result.ok and not args.verbose:
            print(f"  --- last lines of {result.log} ---\n{_tail(result.log)}", flush=True)
    failed = [r.name for r in results if not r.ok]
    total = sum(r.seconds for r in results)
    print(f"{len(results) - len(failed)}/{len(results)} OK in {total:.1f}s", end="")
    print(f"; FAILED: {', '.join(failed)}" if failed else "")
    for line in readme_notes(results, root):
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
