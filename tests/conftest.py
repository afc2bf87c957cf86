"""Checks made once before any test: every program the tests start is installed (scripts/setup.sh --test).
Fixtures every tier may use: a real PostgreSQL, and a journal location on each backend."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.postgres import PostgresServer, postgres_server
from scripts.programs import missing


def pytest_sessionstart(session: pytest.Session) -> None:
    lacking = missing()
    if lacking:
        listed = "\n  ".join(lacking)
        hint = "run `bash scripts/setup.sh --test`"
        raise pytest.UsageError(f"missing programs the tests start ({hint}):\n  {listed}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the session (TLS only over TCP), started at first use, stopped at the end."""
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def journal_at(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty journal's location on each backend: a SQLite file, a database of its own on PostgreSQL."""
    if request.param == "sqlite":
        yield str(tmp_path / "journal.db")
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name = f"j{uuid.uuid4().hex[:12]}"
    yield server.create_database(name)
    server.drop_database(name)
