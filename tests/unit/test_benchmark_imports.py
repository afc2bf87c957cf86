"""Benchmarks import no test code: what they share with the tests lives in harness/."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def imports_of_tests(source: str) -> list[str]:
    """The modules under ``tests`` that a Python source imports, at any depth (functions included)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            modules = [node.module]
        else:
            continue
        found += [m for m in modules if m == "tests" or m.startswith("tests.")]
    return found


def test_the_check_sees_every_form_of_import() -> None:
    source = (
        "import tests.unit.fakes\n"
        "from tests.integration import environments\n"
        "def late():\n    from tests import conftest\n"
        "from harness.environments import wait_for\n"
        "import testsuite\n"
    )
    assert imports_of_tests(source) == ["tests.unit.fakes", "tests.integration", "tests"]


def test_no_benchmark_imports_from_tests() -> None:
    sources = sorted((REPO / "benchmarks").rglob("*.py"))
    assert sources, "no benchmark found: the check would pass on nothing"
    offenders = {
        str(path.relative_to(REPO)): imports
        for path in sources
        if (imports := imports_of_tests(path.read_text()))
    }
    assert offenders == {}, f"benchmarks import test code (move it to harness/): {offenders}"
