"""Tokens and roles checked inside the actors on a real local Ray: callers without a token, with a revoked
token or without the role are refused and audited, also when they call the actors directly
(``ray.get_actor``), bypassing the driver; what is allowed is recorded as the token's person."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import ray

from actors.common import QUEEN_NAME, worker_name
from engine.identity import AccessDenied
from engine.models import Environment
from engine.state import EventKind
from tests.integration.conftest import orch_journal, sample_artifact

pytestmark = pytest.mark.integration
SANDBOX = "sandbox"  # registered at run time: only the "*" grants of the shipped config apply there
ROLLING = {"type": "rolling", "replicas": 1}


def actor(orch: Any, name: str) -> Any:
    return ray.get_actor(name, namespace=orch.namespace)


def get(ref: Any) -> Any:
    return ray.get(ref, timeout=120)


def refusals_since(orch: Any, seq: int) -> list[tuple[str, str, str]]:
    """(person, attempted action, reason) of every refusal audited after ``seq``."""
    return [
        (e.actor, str(e.data["attempted"]), str(e.data["reason"]))
        for e in orch_journal(orch).events(after_seq=seq)
        if e.kind is EventKind.AUDIT and e.data.get("action") == "role_refused"
    ]


def head(orch: Any) -> int:
    current = orch_journal(orch).head()
    return current[0] if current else 0


@pytest.fixture(scope="module")
def sandbox_deployment(orchestrator: Any) -> Iterator[str]:
    """A service the admin deployed to an environment where other people only view."""
    orchestrator.register_environment({"name": SANDBOX})
    result = orchestrator.deploy(sample_artifact("guarded", "1.0.0"), ROLLING, SANDBOX, timeout_s=120)
    assert result.success, result.status
    yield result.deployment_id


def test_calls_without_a_token_are_refused_inside_the_actors_and_audited(orchestrator: Any) -> None:
    queen = actor(orchestrator, QUEEN_NAME)
    request = orchestrator.request(sample_artifact("intruder", "1.0.0"), ROLLING, "development")
    since = head(orchestrator)
    with pytest.raises(AccessDenied, match="submit refused: no token"):
        get(queen.submit.remote(request))
    with pytest.raises(AccessDenied, match="no token"):
        get(queen.history.remote(10, None))
    with pytest.raises(AccessDenied, match="no token"):
        get(actor(orchestrator, worker_name("DO-004")).trigger_rollback.remote("anything", "x", "mallory"))
    with pytest.raises(AccessDenied, match="no token"):
        get(actor(orchestrator, worker_name("DO-001")).register_environment.remote(Environment(name="rogue")))
    with pytest.raises(AccessDenied, match="unknown token"):
        get(queen.submit.remote(request, token="orch_0badc0de_" + "x" * 43))
    assert refusals_since(orchestrator, since) == [
        ("anonymous", "submit", "no token: pass one (token=..., ORCH_TOKEN or a token file in ORCH_HOME)"),
        ("anonymous", "history", "no token: pass one (token=..., ORCH_TOKEN or a token file in ORCH_HOME)"),
        (
            "anonymous",
            "trigger_rollback",
            "no token: pass one (token=..., ORCH_TOKEN or a token file in ORCH_HOME)",
        ),
        (
            "anonymous",
            "register_environment",
            "no token: pass one (token=..., ORCH_TOKEN or a token file in ORCH_HOME)",
        ),
        ("anonymous", "submit", "unknown token"),
    ]
    journal = orch_journal(orchestrator)
    assert all(s.request.artifact.name != "intruder" for s in journal.deployments(limit=100_000))
    assert "rogue" not in {r["name"] for r in journal.records("environment")}


def test_a_revoked_token_is_refused_directly_and_through_the_driver(orchestrator: Any) -> None:
    from orchestrator import DeploymentOrchestrator

    token = orchestrator.issue_token("mallory")
    queen = actor(orchestrator, QUEEN_NAME)
    assert isinstance(get(queen.history.remote(1, None, token=token)), list)  # valid: a viewer everywhere
    revoked = orchestrator.revoke_token(person="mallory")
    assert [r["person"] for r in revoked] == ["mallory"]
    since = head(orchestrator)
    with pytest.raises(AccessDenied, match="of mallory was revoked"):
        get(queen.history.remote(1, None, token=token))
    as_mallory = DeploymentOrchestrator(config_path=orchestrator.config_path, token=token)
    with pytest.raises(AccessDenied, match=r"submit refused: token \w+ of mallory was revoked"):
        as_mallory.submit(sample_artifact("revoked", "1.0.0"), ROLLING, "development")
    assert [(who, what) for who, what, _ in refusals_since(orchestrator, since)] == [
        ("mallory", "history"),
        ("mallory", "submit"),
    ]
    listed = {row["token_id"]: row for row in orchestrator.tokens()}
    assert listed[revoked[0]["token_id"]]["revoked_at"] is not None
    assert all(token.split("_", 2)[2] not in str(row) for row in listed.values())


def test_a_caller_without_the_role_is_refused_where_they_lack_it(
    orchestrator: Any, sandbox_deployment: str
) -> None:
    vic = orchestrator.issue_token("vic")  # the shipped access: viewer everywhere, deployer in development
    queen = actor(orchestrator, QUEEN_NAME)
    assert get(queen.status.remote(sandbox_deployment, token=vic)).deployment_id == sandbox_deployment
    since = head(orchestrator)
    request = orchestrator.request(sample_artifact("guarded", "2.0.0"), ROLLING, SANDBOX)
    with pytest.raises(AccessDenied, match="vic lacks the deployer role in environment 'sandbox'"):
        get(queen.submit.remote(request, token=vic))
    with pytest.raises(AccessDenied, match="vic lacks the deployer role in environment 'sandbox'"):
        get(queen.control.remote(sandbox_deployment, "rollback", "vic", "mine now", token=vic))
    rollbacks = actor(orchestrator, worker_name("DO-004"))
    with pytest.raises(AccessDenied, match="vic lacks the deployer role"):
        get(rollbacks.trigger_rollback.remote(sandbox_deployment, "mine now", "vic", token=vic))
    with pytest.raises(AccessDenied, match="only its own actors"):
        get(rollbacks.on_unhealthy.remote(sandbox_deployment, "fake", token=vic))
    with pytest.raises(AccessDenied, match="vic lacks the admin role in environment 'prod-2'"):
        get(
            actor(orchestrator, worker_name("DO-001")).register_environment.remote(
                Environment(name="prod-2"), vic
            )
        )
    with pytest.raises(AccessDenied, match="vic lacks the admin role in every environment"):
        get(queen.issue_token.remote("vic-2", token=vic))
    assert [what for _, what, _ in refusals_since(orchestrator, since)] == [
        "submit",
        "rollback",
        "trigger_rollback",
        "on_unhealthy",
        "register_environment",
        "token issue",
    ]
    state = orch_journal(orchestrator).state(sandbox_deployment)
    assert state.rollback is None and state.outcome is not None and state.outcome.value == "succeeded"


def test_what_a_person_may_do_is_recorded_as_done_by_them(orchestrator: Any) -> None:
    from orchestrator import DeploymentOrchestrator

    vic = orchestrator.issue_token("vic")
    as_vic = DeploymentOrchestrator(config_path=orchestrator.config_path, token=vic)
    result = as_vic.deploy(sample_artifact("vics", "1.0.0"), ROLLING, "development", timeout_s=120)
    assert result.success, result.status
    journal = orch_journal(orchestrator)
    assert journal.state(result.deployment_id).request.requested_by == "vic"
    submitted = journal.events(result.deployment_id)[0]
    assert submitted.kind is EventKind.SUBMITTED and submitted.actor == "vic"
