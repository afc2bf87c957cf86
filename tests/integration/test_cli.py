"""The command line as a user runs it: a real `ray start --head` cluster, `ray job submit`, the journal read
without any cluster, clear errors and exit statuses."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from engine.config import write_isolated_config

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "orchestrator.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    config = write_isolated_config(tmp_path, (19800, 19899), (40000, 40999), namespace="orch-cli")
    env = {**os.environ, "ORCH_HOME": str(tmp_path), "ORCH_CONFIG": str(config)}
    env.pop("RAY_ADDRESS", None)
    env.pop("ORCH_TOKEN", None)
    # The first admin token, in $ORCH_HOME/token: a driver on a cluster (ray job submit) finds it there.
    boot = cli("token", "bootstrap", env=env, timeout=60)
    assert boot.returncode == 0, boot.stderr
    return env


@pytest.fixture
def ray_head(tmp_path: Path, home: dict[str, str]) -> Iterator[dict[str, str]]:
    """A Ray cluster started the way the README says, stopped by killing only its own processes."""
    temp_dir = Path("/tmp") / f"rc{os.getpid()}"  # short: Ray's socket paths must fit in 107 bytes
    dashboard = free_port()
    # Token authentication with a token of the test's own: a fresh machine has no ~/.ray/auth_token.
    token = tmp_path / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**home, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    started = subprocess.run(
        [
            "ray",
            "start",
            "--head",
            f"--port={free_port()}",
            f"--dashboard-port={dashboard}",
            "--dashboard-host=127.0.0.1",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield {**env, "RAY_ADDRESS": f"http://127.0.0.1:{dashboard}"}
    finally:
        for process in psutil.process_iter(["cmdline"]):
            if str(temp_dir) in " ".join(process.info["cmdline"] or []):
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.send_signal(signal.SIGKILL)


def _sample_args(service: str, version: str, *extra: str) -> list[str]:
    return [
        "deploy",
        "--service",
        service,
        "--version",
        version,
        "--command",
        f"{sys.executable} examples/sample_service.py",
        "--workdir",
        str(REPO),
        *extra,
    ]


def _teardown(env: dict[str, str], service: str) -> None:
    code = (
        "from adapters import create_platform; from engine.config import load_config; "
        "from engine.models import Target; p = create_platform(load_config().platform('local')); "
        f"t = Target(service='{service}', environment='development'); "
        "[p.remove_revision(t, r.revision) for r in p.list_revisions(t)]; p.router.remove_frontend(t)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=60)


def test_ray_job_submit_deploys_and_history_reads_without_a_cluster(ray_head: dict[str, str]) -> None:
    command = [
        "ray",
        "job",
        "submit",
        "--address",
        ray_head["RAY_ADDRESS"],
        "--working-dir",
        ".",
        "--",
        "python",
        "orchestrator.py",
        *_sample_args("jobsvc", "1.0.0", "--strategy", "rolling", "--replicas", "1", "--json"),
    ]
    deadline = time.monotonic() + 180
    while True:  # the head's job agent answers a few seconds after `ray start` returns
        submitted = subprocess.run(
            command, cwd=REPO, env=ray_head, capture_output=True, text=True, timeout=300
        )
        if "No available agent" not in submitted.stdout + submitted.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert '"phase": "succeeded"' in submitted.stdout
    offline = {k: v for k, v in ray_head.items() if k != "RAY_ADDRESS"}
    history = cli("history", "--json", env=offline, timeout=60)
    assert history.returncode == 0, history.stderr
    rows = json.loads(history.stdout)
    assert [(r["target"]["service"], r["phase"]) for r in rows] == [("jobsvc", "succeeded")]
    status = cli("status", rows[0]["deployment_id"][:10], env=offline, timeout=60)
    assert status.returncode == 0 and "finished" in status.stdout
    _teardown(offline, "jobsvc")


def test_deploy_exit_status_and_json(home: dict[str, str]) -> None:
    first = cli(
        *_sample_args("clisvc", "1.0.0", "--strategy", "rolling", "--replicas", "1", "--json"), env=home
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads(first.stdout)["phase"] == "succeeded"
    # No traffic reaches the canary: three windows without data roll it back, and the exit status says so.
    bad = cli(
        *_sample_args(
            "clisvc",
            "2.0.0",
            "--set",
            "stepDuration=1s",
            "--set",
            "analysisInterval=500",
            "--set",
            "failureThreshold.consecutiveFailures=2",
            "--replicas",
            "1",
        ),
        env=home,
    )
    assert bad.returncode == 1, bad.stdout[-3000:] + bad.stderr[-3000:]
    assert "rolled_back" in bad.stdout and "no_data" in bad.stdout
    _teardown(home, "clisvc")


def test_bad_configuration_names_the_key(home: dict[str, str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("strategyDefaults:\n  canary:\n    initialTrafficPercentage: 150\n")
    result = cli("--config", str(broken), "history", env=home, timeout=60)
    assert result.returncode == 2
    assert "strategyDefaults.canary.initialTrafficPercentage" in result.stderr
    assert "150" in result.stderr


def test_impossible_strategy_is_refused_before_anything_starts(home: dict[str, str]) -> None:
    started = time.monotonic()
    result = cli(*_sample_args("clisvc", "1.0.0", "--set", "stepPercentage=0"), env=home, timeout=60)
    assert result.returncode == 2
    assert "stepPercentage" in result.stderr or "step_percentage" in result.stderr
    assert time.monotonic() - started < 60
