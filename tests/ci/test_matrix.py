"""The CI matrix is well-formed data, and .ci/run runs exactly the README's test command."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ci"))
run = pytest.importorskip("run")

MARKERS = {"cuda", "xpu", "interpret", "aot"}


def test_every_row_has_its_fields():
    rows = run.load_matrix()
    assert {"cpu", "triton-interpret", "compile", "cuda", "xpu"} <= set(rows)
    for name, row in rows.items():
        assert set(row) == {"markers", "env", "accelerator", "runs_on", "needs", "install", "summary"}, name
        assert row["accelerator"] in ("none", "nvidia", "intel"), name


def test_a_hardware_row_fails_instead_of_skipping_everything_without_its_device(capsys):
    rows = run.load_matrix()
    assert run.accelerator_absent("none") == ""
    for name in ("cuda", "xpu"):
        if run.accelerator_absent(rows[name]["accelerator"]):
            assert run.run_row(name, rows[name], []) == {"passed": 0, "failed": 1, "skipped": 0}
            assert f"ci: row {name} runs on" in capsys.readouterr().out


def test_the_xpu_row_installs_without_the_nvidia_triton_wheel():
    install = run.load_matrix()["xpu"]["install"]
    assert "whl/xpu" in install and ".[xpu-test]" in install and ".[test]\"" not in install
    pyproject = (ROOT / "pyproject.toml").read_text()
    extras = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    xpu_lines = [line for line in extras.splitlines() if line.startswith("xpu")]
    assert xpu_lines and not any("triton" in line for line in xpu_lines)


def test_local_is_every_row_without_an_accelerator():
    rows = run.load_matrix()
    assert run.expand(["local"], rows) == ["cpu", "triton-interpret", "compile"]
    with pytest.raises(SystemExit, match="no row 'gpu'"):
        run.expand(["gpu"], rows)


def test_row_markers_are_registered_and_the_cpu_row_excludes_all_hardware_rows():
    pyproject = (ROOT / "pyproject.toml").read_text()
    for marker in MARKERS:
        assert f'"{marker}: ' in pyproject
    cpu = run.load_matrix()["cpu"]["markers"]
    assert all(m in cpu for m in MARKERS)


def readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^```sh\n(.+?)\n```", text, flags=re.MULTILINE | re.DOTALL)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    setup = (ROOT / "README.md").read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.+?)\n```", setup, flags=re.DOTALL)
    assert len(commands) == 2, commands
    demo, tests = commands
    assert "python -m lowbit demo" in demo
    assert "python ci/run.py local" in tests
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == [tests]
