"""One real local Ray and one orchestrator (queen + domain workers) for the whole session."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.models import Artifact
from examples.quickstart import sample_artifact as quickstart_artifact
from harness.environments import dummy_aws_credentials
from tests.integration.governance_kit import GovernanceKit, add_governance

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def orch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("orch-home")


@pytest.fixture(scope="session")
def orchestrator(orch_home: Path) -> Iterator[Any]:
    import ray

    from engine.config import write_isolated_config
    from orchestrator import DeploymentOrchestrator

    os.environ["ORCH_HOME"] = str(orch_home)
    os.environ.pop("ORCH_TOKEN", None)  # the session's own admin token, not the developer's
    config = write_isolated_config(
        orch_home, namespace=f"orch-test-{os.getpid()}", prometheus_port=free_port()
    )
    add_governance(config, orch_home)  # a trusted signing key and a scanner (governance_kit.py)
    # Embedded on a new journal: the driver makes the first admin token in $ORCH_HOME/token and uses it.
    # Ray's processes keep the environment they start with: dummy AWS credentials only, so that the actors
    # reach the tests' moto servers and never a real account.
    with dummy_aws_credentials(orch_home):
        orch = DeploymentOrchestrator(config_path=config, num_cpus=2)
    assert (orch_home / "token").exists()
    yield orch
    orch.shutdown(stop_ray=False)  # first: a supervisor still running would restart what is removed
    _remove_everything(orch)
    ray.shutdown()


@pytest.fixture(scope="session")
def governance_kit(orchestrator: Any, orch_home: Path) -> GovernanceKit:
    return GovernanceKit(orch_home)


@pytest.fixture(scope="session")
def admin_token(orchestrator: Any, orch_home: Path) -> str:
    """The session's admin token (the one the ``orchestrator`` fixture's driver uses)."""
    return (orch_home / "token").read_text().strip()


def _remove_everything(orch: Any) -> None:
    """No process or HAProxy of the session is left behind."""
    from adapters import create_platform

    platform = create_platform(orch.config.platform("local"))
    for state in orch_journal(orch).deployments(limit=100_000):
        target = state.request.target
        for revision in platform.list_revisions(target):
            platform.remove_revision(target, revision.revision)
        platform.router.remove_frontend(target)  # type: ignore[attr-defined]
    platform.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def orch_journal(orch: Any) -> Any:
    from engine.journal import Journal

    return Journal(orch.journal_path)


def sample_artifact(service: str, version: str, error_rate: float = 0.0, **env: str) -> Artifact:
    return quickstart_artifact(version, error_rate, service=service, **env)


def canary(step_ms: int = 3000, steps: int = 3, **extra: Any) -> dict[str, Any]:
    return {
        "type": "canary",
        "replicas": 2,
        "canary": {
            "initialTrafficPercentage": 20,
            "stepPercentage": 30,
            "stepDuration": step_ms,
            "maxSteps": steps,
            "analysisInterval": 500,
            "minRequestCount": 10,
            "successThreshold": {"errorRate": 1},
            "failureThreshold": {"errorRate": 5},
            **extra,
        },
    }


@pytest.fixture(scope="module")
def people(orchestrator: Any, orch_home: Path) -> dict[str, Any]:
    """A driver per person, each holding that person's own token (issued by the session's admin); the token
    is in ORCH_HOME/tokens/PERSON as well, for the command line."""
    from orchestrator import DeploymentOrchestrator

    drivers: dict[str, Any] = {}
    folder = orch_home / "tokens"
    folder.mkdir(exist_ok=True)
    for person in ("alice", "bob", "carol", "erin", "grace", "ivan"):
        token = orchestrator.issue_token(person)
        (folder / person).write_text(token + "\n")
        drivers[person] = DeploymentOrchestrator(config_path=orchestrator.config_path, token=token)
    return drivers
