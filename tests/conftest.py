"""Checks made once before any test: every program the tests start is installed (scripts/setup.sh --test)."""

from __future__ import annotations

import pytest

from scripts.programs import missing


def pytest_sessionstart(session: pytest.Session) -> None:
    lacking = missing()
    if lacking:
        listed = "\n  ".join(lacking)
        hint = "run `bash scripts/setup.sh --test`"
        raise pytest.UsageError(f"missing programs the tests start ({hint}):\n  {listed}")
