"""Runs one benchmark module: ``python -m benchmarks NAME [its arguments]``.

``python -m benchmarks`` alone lists the modules (each also runs as
``python -m benchmarks.NAME``; ``--quick`` gives every one a short smoke run).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import benchmarks

NOT_BENCHMARKS = {"timing", "readme"}  # helpers, not benchmarks


def names() -> list[str]:
    """The benchmark modules of this package."""
    found = []
    for info in pkgutil.iter_modules(benchmarks.__path__):
        if info.name.startswith("_") or info.name in NOT_BENCHMARKS:
            continue
        found.append(info.name)
    return sorted(found)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "--list"):
        print(__doc__)
        print("modules: " + ", ".join(names()))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in names():
        print(f"unknown benchmark {name!r}; modules: {', '.join(names())}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"benchmarks.{name}")
    sys.argv = [f"benchmarks.{name}", *rest]
    return int(module.main() or 0)  # some mains return an exit status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
