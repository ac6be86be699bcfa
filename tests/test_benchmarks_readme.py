"""The README's benchmark tables are the recorded benchmark output, copied by a command."""

import pathlib

import pytest

from benchmarks import readme

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_readme_benchmark_section_is_its_recorded_output():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    sections = readme.readme_sections(text)
    assert sections, "README.md has no <!-- benchmarks:NAME:begin --> section"
    for name, body in sections.items():
        recorded = readme.RESULTS / f"{name}.md"
        assert recorded.exists(), f"no {recorded}: run `python -m benchmarks.readme {name}`"
        assert body == recorded.read_text(encoding="utf-8"), (
            f"README's {name} section differs from {recorded.name}: "
            f"run `python -m benchmarks.readme {name} --readme-only`"
        )
        assert body.startswith("Measured "), f"{recorded.name} lacks its provenance line"


def test_every_recorded_result_is_in_the_readme():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [
        p.stem for p in readme.RESULTS.glob("*.md") if p.stem not in readme.readme_sections(text)
    ]
    assert not missing, f"recorded but not in README.md: {missing}"


def test_write_readme_replaces_only_the_section(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "demo.md").write_text("Measured today.\n\n| a |\n", encoding="utf-8")
    monkeypatch.setattr(readme, "RESULTS", results)
    begin, end = readme.markers("demo")
    path = tmp_path / "README.md"
    path.write_text(f"intro\n{begin}\nstale\n{end}\noutro\n", encoding="utf-8")
    assert readme.write_readme(["demo"], path)
    assert path.read_text() == f"intro\n{begin}\nMeasured today.\n\n| a |\n{end}\noutro\n"
    assert not readme.write_readme(["demo"], path)
    path.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(ValueError, match="benchmarks:demo:begin"):
        readme.write_readme(["demo"], path)
