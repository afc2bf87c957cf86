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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from engine.config import load_config, write_isolated_config
from engine.journal import Journal
from engine.models import Phase
from engine.requests import build_request

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
GCS_ADDRESS = "TEST_RAY_GCS_ADDRESS"  # in ray_head's environment: the address a driver joins


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
    dashboard, gcs = free_port(), free_port()
    # Token authentication with a token of the test's own: a fresh machine has no ~/.ray/auth_token.
    token = tmp_path / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**home, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    started = subprocess.run(
        [
            "ray",
            "start",
            "--head",
            f"--port={gcs}",
            f"--dashboard-port={dashboard}",
            "--dashboard-host=127.0.0.1",
            # Its own agent ports: Ray's default one (52365) may be held by another Ray on this machine (the
            # session's embedded one, another test run), and then `ray job submit` finds no agent.
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
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
        yield {**env, "RAY_ADDRESS": f"http://127.0.0.1:{dashboard}", GCS_ADDRESS: f"127.0.0.1:{gcs}"}
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
    # No traffic reaches the canary: its window, lengthened once, ends inconclusive; configured to fail, that
    # rolls it back, and the exit status says so.
    bad = cli(
        *_sample_args(
            "clisvc",
            "2.0.0",
            "--set",
            "stepDuration=1s",
            "--set",
            "analysisInterval=500",
            "--set",
            "maxWindowExtensions=1",
            "--set",
            "onInconclusive=fail",
            "--replicas",
            "1",
        ),
        env=home,
    )
    assert bad.returncode == 1, bad.stdout[-3000:] + bad.stderr[-3000:]
    assert "rolled_back" in bad.stdout and "inconclusive after 1 extension(s)" in bad.stdout
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


def test_a_token_cluster_joined_without_token_auth_names_ray_auth_mode(ray_head: dict[str, str]) -> None:
    """Ray itself says only "Failed to connect to Ray cluster" (issue 8, finding 5)."""
    address = ray_head[GCS_ADDRESS]
    bare = {k: v for k, v in ray_head.items() if not k.startswith("RAY_AUTH")}
    refused = cli(*_sample_args("authsvc", "1.0.0"), env={**bare, "RAY_ADDRESS": address}, timeout=240)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-3000:]
    assert f"the Ray cluster at {address} refused this client" in refused.stderr
    assert "RAY_AUTH_MODE is not set here" in refused.stderr
    assert "RAY_AUTH_TOKEN_PATH" in refused.stderr and "ray get-auth-token" in refused.stderr
    assert "Traceback" not in refused.stderr
    # The mode set but no token at hand: named the same way.
    missing = {**bare, "RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"}
    missing["RAY_AUTH_TOKEN_PATH"] = "/nonexistent"
    no_token = cli(*_sample_args("authsvc", "1.0.0"), env=missing, timeout=240)
    assert no_token.returncode == 2, no_token.stderr[-3000:]
    assert "RAY_AUTH_MODE is 'token' here" in no_token.stderr and "RAY_AUTH_TOKEN_PATH" in no_token.stderr


def _journal(env: dict[str, str]) -> Journal:
    return Journal(Path(env["ORCH_HOME"]) / "journal.db")


def _until(what: str, condition: Callable[[], Any], timeout_s: float = 240) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout_s}s: {what}")


def _phase(env: dict[str, str], deployment_id: str) -> Phase:
    return _journal(env).state(deployment_id).phase()


def _at_weight(env: dict[str, str], deployment_id: str, revision: str, weight: int) -> bool:
    return _journal(env).state(deployment_id).weights.get(revision) == weight


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def background(home: dict[str, str]) -> Iterator[list[int]]:
    """The pids of the background drivers a test starts: stopped (SIGTERM: Ray's reaper then stops their
    embedded cluster) if the test ends before they do, and the sample service removed."""
    pids: list[int] = []
    try:
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).send_signal(signal.SIGTERM)
        _teardown(home, "bgsvc")


def _no_wait(env: dict[str, str], pids: list[int], version: str, *extra: str) -> tuple[dict[str, Any], str]:
    done = cli(*_sample_args("bgsvc", version, "--replicas", "1", "--no-wait", "--json", *extra), env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    shown = json.loads(done.stdout)
    if "background_pid" in shown:
        pids.append(int(shown["background_pid"]))
    return shown, done.stderr


SLOW_CANARY = ("--set", "stepDuration=60s", "--set", "initialTrafficPercentage=20")


def _control(env: dict[str, str], *args: str) -> str:
    done = cli(*args, env=env, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "journal only" not in done.stderr  # it went through the queen
    return done.stdout


def test_embedded_no_wait_keeps_a_background_driver_and_controls_reach_its_queen(
    home: dict[str, str], background: list[int]
) -> None:
    """Issue 8, finding 5: with the embedded Ray, `deploy --no-wait` used to stall as soon as it returned.
    Then the CLI's pause, resume, promote, abort and rollback, all through the running queen."""
    first, note = _no_wait(home, background, "1.0.0", "--strategy", "rolling")
    assert f"background driver (pid {first['background_pid']})" in note and Path(first["log"]).is_file()
    _until("1.0.0 live", lambda: _phase(home, first["deployment_id"]) is Phase.SUCCEEDED)
    _until("the first background driver gone", lambda: _gone(first["background_pid"]), 120)
    assert "ended succeeded" in Path(first["log"]).read_text()

    second, _ = _no_wait(home, background, "2.0.0", *SLOW_CANARY)  # a new driver: the first one left
    v2 = second["deployment_id"]
    _until("2.0.0 at 20%", lambda: _at_weight(home, v2, "2-0-0", 20))
    third, attached = _no_wait(home, background, "3.0.0", *SLOW_CANARY)  # joins the running orchestrator
    fourth, _ = _no_wait(home, background, "4.0.0", *SLOW_CANARY)
    assert "already running for this journal" in attached and "background_pid" not in third
    assert "paused" in _control(home, "pause", v2[:12], "--reason", "look at the graphs")
    assert _journal(home).state(v2).paused
    assert "progressing" in _control(home, "resume", v2)
    _control(home, "promote", v2, "--full")  # four 60 s steps skipped
    _until("2.0.0 promoted", lambda: _phase(home, v2) is Phase.SUCCEEDED, 120)
    v3, v4 = third["deployment_id"], fourth["deployment_id"]
    _until("3.0.0 at 20%", lambda: _at_weight(home, v3, "3-0-0", 20))
    _control(home, "abort", v3, "--reason", "wrong build")
    _until("3.0.0 aborted", lambda: _phase(home, v3) is Phase.ABORTED, 120)
    _until("4.0.0 at 20%", lambda: _at_weight(home, v4, "4-0-0", 20))
    _control(home, "rollback", v4, "--reason", "customers complain")
    _until("4.0.0 rolled back", lambda: _phase(home, v4) is Phase.ROLLED_BACK, 120)
    assert _journal(home).state(v4).weights == {"2-0-0": 100}
    _until("the second background driver gone", lambda: _gone(second["background_pid"]), 120)
    ended = cli("resume", v4, env=home, timeout=60)
    assert ended.returncode == 2 and "already ended: rolled_back" in ended.stderr


def test_a_control_request_without_any_orchestrator_says_it_only_wrote_the_journal(
    home: dict[str, str],
) -> None:
    request = build_request(
        load_config(home["ORCH_CONFIG"]), {"name": "idle", "version": "1.0.0"}, "canary", "development"
    )
    _journal(home).submit("idle-1", request, actor="test")
    paused = cli("pause", "idle-1", env=home, timeout=60)
    assert paused.returncode == 0, paused.stderr
    assert "the pause request was written to the journal only" in paused.stderr
    assert "no orchestrator runs for the journal" in paused.stderr
    assert _journal(home).state("idle-1").paused


def test_quickstart_runs_as_the_readme_says(home: dict[str, str]) -> None:
    done = cli("quickstart", "--step-seconds", "3", env=home, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    assert "quickstart passed: promoted the good canary, rolled back the faulty one" in done.stdout
    rows = [(s.request.artifact.version, s.phase()) for s in _journal(home).deployments()]
    assert rows == [("1.0.0", Phase.SUCCEEDED), ("2.0.0", Phase.SUCCEEDED), ("3.0.0", Phase.ROLLED_BACK)]


# --------------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------------
CLI_PIPELINE = {
    "environments": ["development"],
    "stages": [
        {"name": "deploy", "kind": "deploy", "strategy": {"type": "rolling", "replicas": 1}},
        {
            "name": "smoke",
            "kind": "validate",
            "dependsOn": ["deploy"],
            "attempts": 1,
            "checks": [{"path": "/health"}, {"path": "/", "requests": 20}],
        },
    ],
}


def _with_pipeline(env: dict[str, str]) -> dict[str, str]:
    """The isolated configuration with a quick pipeline of its own (development only: no approval)."""
    import yaml

    config = Path(env["ORCH_CONFIG"])
    data = yaml.safe_load(config.read_text())
    data.setdefault("pipelines", {})["cli-pipeline"] = CLI_PIPELINE
    config.write_text(yaml.safe_dump(data))
    return env


def _pipeline_args(version: str, *extra: str) -> list[str]:
    return [
        "pipeline",
        "run",
        "cli-pipeline",
        "--service",
        "clipipe",
        "--version",
        version,
        "--command",
        f"{sys.executable} examples/sample_service.py",
        "--workdir",
        str(REPO),
        *extra,
    ]


def test_pipeline_run_exits_1_when_a_stage_fails_and_its_environment_is_rolled_back(
    home: dict[str, str],
) -> None:
    env = _with_pipeline(home)
    good = cli(*_pipeline_args("1.0.0"), env=env)
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
    assert "smoke.development.clipipe succeeded" in good.stdout
    # 2.0.0 fails a third of its requests: the smoke test fails, development goes back to 1.0.0.
    bad = cli(*_pipeline_args("2.0.0", "--env", "ERROR_RATE=0.34", "--json"), env=env)
    assert bad.returncode == 1, bad.stdout[-3000:] + bad.stderr[-3000:]
    status = json.loads(bad.stdout)
    assert status["state"] == "failed" and status["failed_stage"] == "smoke.development.clipipe"
    assert status["rolled_back"] == [f"{status['pipeline_id']}.deploy.development.clipipe"]
    offline = cli("pipeline", "status", status["pipeline_id"][:-2], env=env, timeout=60)
    assert offline.returncode == 1, offline.stderr
    assert "rolled back by" in offline.stdout and "-rollback: succeeded" in offline.stdout
    history = json.loads(cli("history", "--json", "--service", "clipipe", env=env, timeout=60).stdout)
    assert [(r["target"]["environment"], r["phase"]) for r in history][-1] == ("development", "succeeded")
    assert history[-1]["deployment_id"].endswith("-rollback")
    _teardown(env, "clipipe")


def test_ray_job_submit_fails_the_job_when_the_pipeline_rolls_back(
    ray_head: dict[str, str], tmp_path: Path
) -> None:
    """The CI examples' command: a pipeline run through `ray job submit` whose stage fails makes
    `ray job submit` itself exit non-zero, which fails the CI job."""
    env = _with_pipeline(ray_head)
    artifact = tmp_path / "artifact.yaml"
    command = [sys.executable, "examples/sample_service.py"]
    for version, error_rate, expected in (("1.0.0", "0", 0), ("2.0.0", "0.34", 1)):
        artifact.write_text(
            json.dumps(
                {
                    "name": "jobpipe",
                    "version": version,
                    "command": command,
                    "workingDir": str(REPO),
                    "env": {"ERROR_RATE": error_rate},
                }
            )
        )
        submitted = _job_submit(
            env, "python", "orchestrator.py", "pipeline", "run", "cli-pipeline", "--artifact", str(artifact)
        )
        assert submitted.returncode == expected, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "smoke.development.jobpipe failed" in submitted.stdout
    _teardown({k: v for k, v in env.items() if k != "RAY_ADDRESS"}, "jobpipe")


def _job_submit(env: dict[str, str], *entrypoint: str) -> subprocess.CompletedProcess[str]:
    command = [
        "ray",
        "job",
        "submit",
        "--address",
        env["RAY_ADDRESS"],
        "--working-dir",
        ".",
        "--",
        *entrypoint,
    ]
    deadline = time.monotonic() + 180
    while True:  # the head's job agent answers a few seconds after `ray start` returns
        submitted = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in submitted.stdout + submitted.stderr or time.monotonic() > deadline:
            return submitted
        time.sleep(2)
