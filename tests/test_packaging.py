"""The wheel holds the two library packages only; what the notebooks import is declared."""

from __future__ import annotations

import ast
import email
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("optax_contrib", "flax_layers")
SKIP = {".git", ".venv", "build", "dist", "outputs", "__pycache__", ".pytest_cache"}
SKIP_SUFFIXES = (".egg-info", "_cache", ".hypothesis")


def _ignore(_directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in SKIP or n.endswith(SKIP_SUFFIXES)}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """A wheel built by setuptools from a copy of the working tree (no network, no pip)."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    source, out = tmp / "src", tmp / "dist"
    shutil.copytree(ROOT, source, ignore=_ignore)
    build = "import sys, setuptools.build_meta as b; print(b.build_wheel(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", build, str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    name = done.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(out / name) as archive:
        yield archive


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_wheel_holds_exactly_the_library_packages(wheel):
    names = wheel.namelist()
    top = {n.split("/", 1)[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == set(PACKAGES), f"unexpected top-level entries: {sorted(top)}"
    modules = {n for n in names if n.endswith(".py")}
    for package in PACKAGES:  # every module of the library, nothing else
        assert modules >= {p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py")}
    assert not [n for n in names if "colabs" in n or n.startswith(("tests/", "benchmarks/"))]
    (info,) = dist_info
    top_level = wheel.read(f"{info}/top_level.txt").decode().split()
    assert sorted(top_level) == sorted(PACKAGES)


def test_wheel_metadata_names_the_repository_and_the_extras(wheel):
    (meta,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = email.message_from_bytes(wheel.read(meta))
    repo = _pyproject()["project"]["urls"]["Repository"]
    assert f"Repository, {repo}" in metadata.get_all("Project-URL")
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"notebooks", "colabs-runner", "test", "peers"} <= extras
    assert "colabs" not in extras


def _imports(path: Path) -> set[str]:
    """Top-level module names imported by a Python file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _requirement_name(requirement: str) -> str:
    for stop in "<>=!~;[ @":
        requirement = requirement.split(stop, 1)[0]
    return requirement.strip().lower().replace("_", "-")


def test_the_library_never_imports_repository_only_code():
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            assert not _imports(path) & {"colabs", "tests", "benchmarks"}, path


def test_what_the_notebooks_import_is_declared():
    """Each third-party module a notebook (or corpora.py) imports comes from a distribution
    named in the dependencies or the ``notebooks`` extra."""
    project = _pyproject()["project"]
    declared = {
        _requirement_name(r)
        for r in project["dependencies"] + project["optional-dependencies"]["notebooks"]
    }
    providers = importlib.metadata.packages_distributions()
    local = {*PACKAGES, "colabs", "__future__"}
    scripts = [p for p in (ROOT / "colabs").glob("*.py") if p.with_suffix(".ipynb").is_file()]
    assert scripts
    undeclared = {}
    for path in [*scripts, ROOT / "colabs" / "corpora.py"]:
        for module in _imports(path) - local - set(sys.stdlib_module_names):
            dists = {_requirement_name(d) for d in providers.get(module, [module])}
            if not dists & declared:
                undeclared.setdefault(module, []).append(path.name)
    assert not undeclared, f"add to the notebooks extra of pyproject.toml: {undeclared}"
