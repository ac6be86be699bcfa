"""Records benchmark output and writes it into the README, so no figure is copied by hand.

``python -m benchmarks.readme NAME [NAME ...] [--readme-only] [-- ARGS]`` runs
``python -m benchmarks.NAME ARGS`` in a fresh process, saves what it prints to
``benchmarks/results/NAME.md`` under a line saying when, on what machine and by which
command it was measured, and then rewrites the
README section between ``<!-- benchmarks:NAME:begin -->`` and
``<!-- benchmarks:NAME:end -->`` with that file. ``--readme-only`` skips the runs and
only copies the recorded files into the README. ``tests/test_benchmarks_readme.py``
fails when a README section differs from its recorded file.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import re
import subprocess
import sys

from colabs import sync

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"


def markers(name: str) -> tuple[str, str]:
    """The README markers around benchmark ``name``'s section."""
    return f"<!-- benchmarks:{name}:begin -->", f"<!-- benchmarks:{name}:end -->"


def readme_sections(text: str) -> dict[str, str]:
    """Every benchmark section of a README text, by name."""
    out = {}
    for name in re.findall(r"<!-- benchmarks:([\w-]+):begin -->", text):
        _, body, _ = sync.split_section(text, *markers(name), f"benchmark section {name!r}")
        out[name] = body.removeprefix("\n")
    return out


def machine() -> str:
    """One line describing this machine and the main package versions."""
    import jax

    try:
        import torch

        torch_version = f", torch {torch.__version__}"
    except ImportError:  # the peers extra is optional
        torch_version = ""
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return (
        f"{os.cpu_count()} {platform.machine()} CPU cores, jax {jax.__version__} on "
        f"{jax.default_backend()} ({devices}){torch_version}, Python {platform.python_version()}"
    )


def record(name: str, args: list[str]) -> pathlib.Path:
    """Runs benchmark ``name`` with ``args`` in a fresh process and saves its output."""
    command = [sys.executable, "-m", f"benchmarks.{name}", *args]
    print(f"[benchmarks] running {' '.join(command[1:])}", flush=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    sys.stderr.write(done.stderr[-4000:])
    if done.returncode != 0:
        raise SystemExit(f"benchmarks.{name} failed with exit status {done.returncode}")
    shown = " ".join(["python -m benchmarks." + name, *args])
    header = (
        f"Measured {started:%Y-%m-%d} on {machine()} by `{shown}` "
        f"({(datetime.datetime.now(datetime.timezone.utc) - started).total_seconds():.0f} s); "
        "recorded by `python -m benchmarks.readme`."
    )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(f"{header}\n\n{done.stdout.strip()}\n", encoding="utf-8")
    print(f"[benchmarks] wrote {path.relative_to(ROOT)}", flush=True)
    return path


def write_readme(names: list[str], readme: pathlib.Path = README) -> bool:
    """Copies ``benchmarks/results/NAME.md`` into the README section of each name."""
    text = readme.read_text(encoding="utf-8")
    new = text
    for name in names:
        body = (RESULTS / f"{name}.md").read_text(encoding="utf-8")
        new = sync.replace_section(new, *markers(name), body, f"benchmark section {name!r}")
    if new != text:
        readme.write_text(new, encoding="utf-8")
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", help="benchmark modules, e.g. crf optimizers")
    parser.add_argument("--readme-only", action="store_true", help="do not run; copy only")
    argv = sys.argv[1:] if argv is None else argv
    # Everything after "--" goes to the benchmarks: NAME ... -- --quick
    cut = argv.index("--") if "--" in argv else len(argv)
    ns = parser.parse_args(argv[:cut])
    args = argv[cut + 1 :]
    if not ns.readme_only:
        for name in ns.names:
            record(name, args)
    changed = write_readme(ns.names)
    print(f"README.md: {'updated' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
