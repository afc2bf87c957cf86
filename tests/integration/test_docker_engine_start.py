"""cluster/start_docker.sh brings a real Docker engine up from what a killed engine leaves behind.

A dockerd killed without its own clean-up leaves /var/run/docker.pid; once that number belongs to another
process, a new dockerd refuses to start ("pid file found"). CI met exactly that.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.environments import docker_engine_started, dockerd_processes, stop_docker

pytestmark = pytest.mark.integration
PID_FILE = Path("/var/run/docker.pid")


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
    stop_docker(dockerd_processes())  # gracefully: each removes its own pid file
    PID_FILE.write_text(f"{stranger.pid}")
    with docker_engine_started() as engine:
        assert engine.ping() is True
    assert stranger.poll() is None, "the process the stale pid file named was killed"
    assert PID_FILE.read_text().strip() != str(stranger.pid)
