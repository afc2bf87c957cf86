"""Fuzzing what people type: the CLI's arguments (client/cli.py, run in-process against a temporary ORCH_HOME,
no cluster) and the driver API's arguments (engine.requests.build_request, then the queen's Ray-free checks:
the environment, the governance policy and its refusals). Bad input exits with the usage code and a message
naming the field (or is a ValueError naming it); never a traceback, and the journal is left as it was."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

import client.cli as cli
from engine.config import EnterpriseConfig, load_config, write_isolated_config
from engine.governance import environment_of, governed, refusals
from engine.journal import Journal
from engine.models import Artifact, ConfigVersion, DeploymentRequest, PlatformConfig, Strategy
from engine.requests import build_request
from engine.state import EventKind
from tests.unit.fuzzing import FEW, FUZZ, assert_clear, garbage


class Reached(Exception):
    """Raised by the stand-in for the driver: the CLI built a request and would now start a cluster."""

    def __init__(self, request: DeploymentRequest) -> None:
        super().__init__("reached the cluster")
        self.request = request


class NoCluster:
    """The driver at its seam in client.cli: a request that passed every check stops here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.namespace = "fuzz"

    def submit_request(self, request: DeploymentRequest, deployment_id: str | None = None) -> str:
        raise Reached(request)


@contextlib.contextmanager
def orchestrator_home() -> Iterator[tuple[Path, Journal]]:
    """A temporary ORCH_HOME with its own configuration and a journal holding one committed deployment."""
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        config_path = write_isolated_config(home)
        config = load_config(config_path)
        journal = Journal(config.journal_location())
        request = build_request(config, {"name": "web", "version": "1.0.0"}, "canary", "development")
        journal.submit("web-committed", request, actor="alice")
        journal.append("web-committed", EventKind.ADMITTED, {}, actor="queen")
        before = {"ORCH_HOME": os.environ.get("ORCH_HOME"), "ORCH_CONFIG": os.environ.get("ORCH_CONFIG")}
        os.environ.update(ORCH_HOME=str(home), ORCH_CONFIG=str(config_path))
        try:
            yield home, journal
        finally:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            journal.close()


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exited:  # argparse's own usage errors
            code = int(exited.code or 0)
    return code, out.getvalue(), err.getvalue()


SET_KEYS = [
    "stepDuration",
    "step_percentage",
    "initialTrafficPercentage",
    "maxSteps",
    "successThreshold.errorRate",
    "failureThreshold.availability",
    "failureThreshold.consecutiveFailures",
    "progressDeadline",
    "switchTrafficPercentage",
    "maxSurge",
    "a",
    "a.b",
    "bogusKey",
]
set_values = st.one_of(
    st.sampled_from(["0", "-5", "101", "abc", "[", "{", "1e999", "5m", "30s", "null", "- x", ": :", "'"]),
    st.text(alphabet="abc019-.:[]{}'\" ", max_size=8),
)


@st.composite
def deploy_arguments(draw: st.DrawFn) -> list[str]:
    argv = ["deploy", "--service", draw(st.sampled_from(["web", "Web", "-x", "a" * 70, "w_b"]))]
    argv += ["--version", draw(st.sampled_from(["2.0.0", "", "-1", "v 1", "1" * 80]))]
    if draw(st.booleans()):
        argv += [
            "--strategy",
            draw(st.sampled_from(["canary", "blue-green", "rolling", "linear", "Canary10"])),
        ]
    if draw(st.booleans()):
        argv += ["--environment", draw(st.sampled_from(["development", "nowhere", "Production", ""]))]
    if draw(st.booleans()):
        argv += ["--platform", draw(st.sampled_from(["local", "azure_functions", "mars", "docker"]))]
    for _ in range(draw(st.integers(0, 3))):
        argv += ["--set", f"{draw(st.sampled_from(SET_KEYS))}={draw(set_values)}"]
    if draw(st.booleans()):
        argv += ["--replicas", draw(st.sampled_from(["0", "-3", "65", "two", "2"]))]
    if draw(st.booleans()):
        argv += ["--env", draw(st.sampled_from(["MODE=fast", "NOEQUALS", "=x", "DB_PASSWORD=hunter2"]))]
    if draw(st.booleans()):
        argv += [draw(st.sampled_from(["--change-id", "--change-summary"])), "CHG-1"]
    return argv


ARTIFACT_FILES = [
    "name: web\nversion: 2.0.0\n",
    "- a list\n- not a mapping\n",
    "name: [unclosed\n",
    "just a string\n",
    "env: not-a-mapping\n",
    "42\n",
    "",
]


@given(deploy_arguments(), st.one_of(st.none(), st.sampled_from([*ARTIFACT_FILES, "(missing)"])))
@FUZZ
@example(["deploy", "--service", "web", "--version", "2", "--set", "a=1", "--set", "a.b=2"], None)
@example(["deploy", "--service", "web", "--version", "2", "--set", "stepDuration=["], None)
@example(["deploy", "--version", "2"], "- a list\n")
@example(["deploy", "--version", "2"], "(missing)")
@example(["deploy", "--version", "2"], "name: [unclosed\n")
@example(["deploy", "--service", "web", "--version", "2"], "env: not-a-mapping\n")
def test_deploy_with_bad_values_exits_with_the_usage_code_naming_the_field(
    argv: list[str], artifact_file: str | None
) -> None:
    with orchestrator_home() as (home, journal):
        if artifact_file is not None:
            file = home / "artifact.yaml"
            if artifact_file != "(missing)":
                file.write_text(artifact_file)
            argv = [*argv, "--artifact", str(file)]
        chain = journal.chain()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cli, "DeploymentOrchestrator", NoCluster)
            try:
                code, _out, err = run_cli(argv)
            except Reached as reached:
                assert reached.request.artifact.name == "web" or "--artifact" in argv, argv
                return
        assert journal.chain() == chain, "a refused deployment changed the journal"
        assert code == cli.EXIT_USAGE, (code, err)
        assert_clear(err)
        assert err.strip(), argv


@given(
    st.sampled_from(["status", "pause", "resume", "abort", "rollback", "promote", "history", "approvals"]),
    st.lists(
        st.sampled_from(["web-", "", "nope", "--json", "--limit", "-1", "--events", "x", "--reason"]),
        max_size=3,
    ),
)
@FEW
def test_other_commands_with_bad_arguments_fail_cleanly_and_change_nothing(
    command: str, words: list[str]
) -> None:
    with orchestrator_home() as (_home, journal):
        chain = journal.chain()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cli, "connect_to_running", lambda *args: None)  # no cluster runs here
            code, _out, err = run_cli(["--token-file", "/nonexistent/token", command, *words])
        assert code in (cli.EXIT_USAGE, cli.EXIT_REFUSED), (code, err)
        assert_clear(err)
        assert journal.chain() == chain


CONFIG: EnterpriseConfig = load_config()
VERSION = ConfigVersion(path="enterprise_config.yaml", sha256="0" * 64, git_state="unknown")
artifacts = st.one_of(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["web", "Web", ""]), "version": st.sampled_from(["1.0.0", "", "-"])},
        optional={
            "source": st.sampled_from(["local", "registry.example.com/web:1", "evil.example/web", ""]),
            "sha256": st.sampled_from(["a" * 64, "xyz", None]),
            "env": st.one_of(garbage, st.just({"API_TOKEN": "x"})),
            "command": garbage,
            "unknown": garbage,
        },
    ),
    garbage,
)
strategies = st.one_of(
    st.sampled_from(["canary", "blue_green", "rolling", "nope", "Canary10Percent5Minutes", "Linear0Percent"]),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["canary", "rolling", "x"])}, optional={"replicas": garbage}
    ),
)
platforms = st.one_of(
    st.sampled_from(["local", "docker", "kubernetes", "lambda", "vm", "gcp_functions", "nope"]),
    st.fixed_dictionaries({"type": st.sampled_from(["local", "nope"])}, optional={"settings": garbage}),
)


@given(
    artifacts,
    strategies,
    st.sampled_from(["development", "staging", "production", "nowhere", "Bad Name"]),
    platforms,
    st.dictionaries(
        st.sampled_from(["stepDuration", "replicas", "maxSteps", "changeRecord"]), garbage, max_size=2
    ),
)
@FUZZ
@example({"name": "web", "version": "1"}, "canary", "development", "local", {"changeRecord": "CHG-1"})
@example({"name": "web", "version": "1"}, "Linear0Percent", "development", "local", {})
def test_driver_arguments_build_a_request_or_name_the_field(
    artifact: Any, strategy: Any, environment: str, platform: Any, overrides: dict[str, Any]
) -> None:
    try:
        request = build_request(CONFIG, artifact, strategy, environment, platform, "alice", **overrides)
    except ValidationError as error:
        assert_clear(str(error))
        assert all(problem["loc"] or ":" in problem["msg"] for problem in error.errors()), error
        return
    except ValueError as error:
        assert_clear(str(error))
        assert any(word in str(error) for word in ("strategy", "platform", "schedule", "environment")), error
        return
    assert isinstance(request.artifact, Artifact) and isinstance(request.strategy, Strategy)
    assert isinstance(request.platform, PlatformConfig)
    with tempfile.TemporaryDirectory() as folder:  # the queen's checks before it records anything
        journal = Journal(Path(folder) / "journal.db")
        try:
            found = environment_of(CONFIG, journal.records("environment"), request.environment)
        except ValueError as error:
            assert str(error).startswith("environment: unknown environment"), error
        else:
            for problem in refusals(governed(CONFIG, request, found, VERSION), CONFIG.roles):
                assert_clear(problem)
                assert problem.split(":")[0].strip(), problem
        assert journal.last_seq() == 0
        journal.close()
