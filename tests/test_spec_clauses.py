"""Every clause of docs/SPEC.md has a test named after it: [MX-RCEIL] -> test_mx_rceil_*."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_spec_clause_has_a_test_named_after_it():
    clauses = set(re.findall(r"\*\*\[([A-Z0-9-]+)\]\*\*", (ROOT / "docs" / "SPEC.md").read_text()))
    assert len(clauses) >= 20
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    missing = [c for c in sorted(clauses) if not re.search(rf"def test_{c.lower().replace('-', '_')}_", tests)]
    assert missing == []
