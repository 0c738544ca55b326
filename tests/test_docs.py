"""The docs' evidence stays real: every test a doc cites as `module::test_name` (a trailing … for a
prefix) is a test of that module, so a moved or renamed test cannot leave a guarantee pointing at
nothing."""

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
CITED = re.compile(r"`(?:[\w/]*/)?(test_\w+)::(test_\w+)(…)?")


def _tests_by_module() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        found.setdefault(path.stem, set()).update(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
    return found


def _citations(text: str) -> list[tuple[str, str, bool]]:
    return [(m.group(1), m.group(2), bool(m.group(3))) for m in CITED.finditer(text)]


def test_every_test_a_doc_cites_exists():
    tests = _tests_by_module()
    missing, seen = [], 0
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for module, name, prefix in _citations(doc.read_text()):
            seen += 1
            names = tests.get(module, set())
            if not (any(n.startswith(name) for n in names) if prefix else name in names):
                missing.append(f"{doc.name}: {module}::{name}{'…' if prefix else ''}")
    assert seen > 20, seen  # the pattern still finds the docs' citations
    assert not missing, missing


def test_a_citation_of_a_moved_test_is_caught():
    tests = _tests_by_module()
    [(module, name, prefix)] = _citations("`test_recovery::test_the_pipeline_error_survives…`")
    assert prefix and not any(n.startswith(name) for n in tests[module])  # it moved to test_runner
    assert any(n.startswith(name) for n in tests["test_runner"])
