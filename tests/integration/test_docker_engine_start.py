"""cluster/start_docker.sh brings a real Docker engine up from what a killed engine leaves behind.

A dockerd killed without its own clean-up leaves /var/run/docker.pid; once that number belongs to another
process, a new dockerd refuses to start ("pid file found"). CI met exactly that.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.environments import docker_engine_started

pytestmark = pytest.mark.integration
PID_FILE = Path("/var/run/docker.pid")


def _dockerd_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            named = (entry / "comm").read_text().strip() == "dockerd"
            zombie = "\nState:\tZ" in (entry / "status").read_text()
        except OSError:
            continue
        if named and not zombie:
            pids.append(int(entry.name))
    return pids


def _stop_engine(deadline_s: float = 40.0) -> None:
    """Stop every dockerd gracefully (SIGTERM: it removes its own pid file) and wait until it is gone."""
    for pid in _dockerd_pids():
        subprocess.run(["kill", "-TERM", str(pid)], check=False)
    deadline = time.monotonic() + deadline_s
    while _dockerd_pids():
        assert time.monotonic() < deadline, f"dockerd {_dockerd_pids()} did not stop within {deadline_s} s"
        time.sleep(0.2)


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not dockerd, whose pid a stale pid file will name."""
    process = subprocess.Popen(["sleep", "300"])
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


def test_a_stale_pid_file_naming_another_process_does_not_stop_the_engine_from_starting(
    stranger: subprocess.Popen[bytes],
) -> None:
    with docker_engine_started():
        pass
    _stop_engine()
    PID_FILE.write_text(f"{stranger.pid}")
    with docker_engine_started() as engine:
        assert engine.ping() is True
    assert stranger.poll() is None, "the process the stale pid file named was killed"
    assert PID_FILE.read_text().strip() != str(stranger.pid)
