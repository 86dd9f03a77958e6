"""Run rows of the CI matrix (ci/matrix.toml): `python ci/run.py ROW [ROW ...] [-- PYTEST ARGS]`.

`local` names every row that needs no accelerator. Each row runs pytest with its marker
expression and environment; a row whose marker selects no test yet passes (and says so). The last
line totals every row: `ci: N passed, N failed, N skipped`.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the package works there, this runner needs 3.11+
    raise SystemExit("ci/run.py needs Python 3.11 or newer (tomllib)") from None
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MATRIX = Path(__file__).resolve().parent / "matrix.toml"
NO_TESTS_COLLECTED = 5  # pytest's exit code when the marker selects nothing


def load_matrix() -> dict[str, dict]:
    with open(MATRIX, "rb") as f:
        return tomllib.load(f)["rows"]


def expand(names: list[str], rows: dict[str, dict]) -> list[str]:
    out = []
    for name in names:
        if name == "local":
            out += [r for r, row in rows.items() if row["accelerator"] == "none"]
        elif name in rows:
            out.append(name)
        else:
            raise SystemExit(f"ci/run.py: no row {name!r}; rows: local, {', '.join(rows)}")
    return list(dict.fromkeys(out))


def run_row(name: str, row: dict, extra: list[str]) -> dict[str, int]:
    missing = [m for m in row["needs"] if importlib.util.find_spec(m) is None]
    if missing:
        print(f"ci: row {name} needs {', '.join(missing)}: {row['install']}", flush=True)
        return {"passed": 0, "failed": 1, "skipped": 0}
    absent = accelerator_absent(row["accelerator"])
    if absent:  # a hardware row that skipped every test would pass without testing anything
        print(f"ci: row {name} runs on {row['runs_on']}, but {absent}", flush=True)
        return {"passed": 0, "failed": 1, "skipped": 0}
    report = ROOT / ".ci-results" / f"{name}.xml"
    report.parent.mkdir(exist_ok=True)
    report.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-m", row["markers"], f"--junitxml={report}", *extra]
    print(f"ci: row {name}: {row['summary']}\nci: $ {' '.join(cmd)}", flush=True)
    code = subprocess.call(cmd, cwd=ROOT, env={**os.environ, **row["env"]})
    if code == NO_TESTS_COLLECTED:
        print(f"ci: row {name} selects no tests yet", flush=True)
        return {"passed": 0, "failed": 0, "skipped": 0}
    counts = _counts(report)
    if code != 0 and counts["failed"] == 0:
        counts["failed"] = 1  # pytest itself failed (collection error, crash)
    return counts


def accelerator_absent(accelerator: str) -> str:
    """Why torch sees no device of `accelerator` here ("" when it does, or when the row needs none)."""
    if accelerator == "none":
        return ""
    import torch

    if accelerator == "nvidia" and not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    if accelerator == "intel" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        return "torch.xpu.is_available() is False (a torch XPU build and the Intel GPU driver are needed)"
    return ""


def _counts(report: Path) -> dict[str, int]:
    if not report.exists():
        return {"passed": 0, "failed": 0, "skipped": 0}
    suites = ET.parse(report).getroot()
    suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
    tests, failed = int(suite.get("tests")), int(suite.get("failures")) + int(suite.get("errors"))
    skipped = int(suite.get("skipped"))
    return {"passed": tests - failed - skipped, "failed": failed, "skipped": skipped}


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    names = argv[: argv.index("--")] if "--" in argv else argv
    if not names:
        print(__doc__)
        return 2
    rows = load_matrix()
    total = {"passed": 0, "failed": 0, "skipped": 0}
    for name in expand(names, rows):
        for key, value in run_row(name, rows[name], extra).items():
            total[key] += value
    print(f"ci: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    return 1 if total["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
