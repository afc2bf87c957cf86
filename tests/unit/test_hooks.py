"""Webhooks: delivery (timeouts, bounded retries with back-off) against a real HTTP receiver on loopback, and
each gate's meaning in the reconciler, driven with a fake clock and a fake platform."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.webhooks import HttpWebhookSender
from engine.hooks import (
    ConfiguredWebhook,
    WebhookGate,
    attach_configured,
    deliver,
    gate_types,
    notifications,
)
from engine.models import (
    Artifact,
    DeploymentRequest,
    HookType,
    Phase,
    PlatformConfig,
    RollbackTrigger,
    Strategy,
    Webhook,
)
from engine.plans import build_plan
from engine.reconciler import DeploymentReconciler
from engine.state import EventKind
from tests.receiver import Receiver, http_receiver
from tests.unit.fakes import FakeSmoke, drive
from tests.unit.test_reconciler import World as ReconcilerWorld

CANARY: dict[str, Any] = {
    "type": "canary",
    "replicas": 2,
    "maxPauseDuration": 600_000,
    "canary": {
        "initialTrafficPercentage": 20,
        "stepPercentage": 30,
        "stepDuration": 10_000,
        "maxSteps": 3,
        "successThreshold": {"errorRate": 1},
        "failureThreshold": {"errorRate": 5, "consecutiveFailures": 2},
    },
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with http_receiver() as running:
        yield running


def hook(receiver: Receiver, kind: str, path: str = "/hook", **extra: Any) -> dict[str, Any]:
    return {"name": f"{kind}-hook", "type": kind, "url": receiver.url + path, "backoff": 100, **extra}


class World(ReconcilerWorld):
    """The reconciler tests' world (a journal, a fake platform, a fake clock); the gate calls the real
    receiver."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.sleeps: list[float] = []

    def reconciler(self, deployment_id: str) -> DeploymentReconciler:
        def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            self.clock.sleep(seconds)

        gate = WebhookGate(self.journal, HttpWebhookSender(), clock=self.clock.now, sleep=sleep)
        return DeploymentReconciler(
            self.journal,
            deployment_id,
            lambda cfg: self.platform,
            clock=self.clock,
            smoke=FakeSmoke(),
            gate=gate,
        )

    def run(self, deployment_id: str, steps: int = 2_000, until: Any = None) -> Phase:
        return drive(self.reconciler(deployment_id), self.clock, self.journal, deployment_id, until, steps)

    def hook_events(self, deployment_id: str) -> list[dict[str, Any]]:
        return [e.data for e in self.journal.events(deployment_id) if e.kind is EventKind.HOOK]

    def traffic_calls(self) -> list[str]:
        return [c for c in self.platform.calls if c.startswith("traffic")]


# --------------------------------------------------------------------------------------------
# Delivery
# --------------------------------------------------------------------------------------------
def test_a_2xx_answer_passes_at_once(receiver: Receiver) -> None:
    sleeps: list[float] = []
    delivery = deliver(Webhook(**hook(receiver, "rollout")), {"x": 1}, HttpWebhookSender(), sleeps.append)
    assert delivery.ok and delivery.status == 200 and delivery.attempts == 1 and sleeps == []
    received = receiver.at("/hook")
    assert received[0].json() == {"x": 1}
    assert received[0].headers["Content-Type"] == "application/json"


def test_server_errors_are_retried_with_exponential_backoff_then_pass(receiver: Receiver) -> None:
    receiver.answer("/hook", 503, 500, 200)
    sleeps: list[float] = []
    delivery = deliver(
        Webhook(**hook(receiver, "rollout", retries=3)), {}, HttpWebhookSender(), sleeps.append
    )
    assert delivery.ok and delivery.attempts == 3
    assert sleeps == [0.1, 0.2]
    assert len(receiver.at("/hook")) == 3


def test_retries_are_bounded(receiver: Receiver) -> None:
    receiver.answer("/hook", 502)
    sleeps: list[float] = []
    delivery = deliver(
        Webhook(**hook(receiver, "rollout", retries=2)), {}, HttpWebhookSender(), sleeps.append
    )
    assert not delivery.ok and delivery.status == 502 and delivery.attempts == 3
    assert len(receiver.at("/hook")) == 3 and sleeps == [0.1, 0.2]


def test_a_client_error_is_an_answer_not_retried(receiver: Receiver) -> None:
    receiver.answer("/hook", 409)
    delivery = deliver(
        Webhook(**hook(receiver, "confirm-promotion")), {}, HttpWebhookSender(), lambda s: None
    )
    assert not delivery.ok and delivery.status == 409 and delivery.attempts == 1
    assert delivery.answer == "HTTP 409"


def test_a_slow_receiver_times_out_and_is_retried(receiver: Receiver) -> None:
    receiver.answer("/hook", 200, delay=1.5)
    spec = hook(receiver, "rollout", timeout="300ms", retries=1)
    delivery = deliver(Webhook(**spec), {}, HttpWebhookSender(), lambda s: None)
    assert not delivery.ok and delivery.status is None and delivery.attempts == 2
    assert delivery.error == "no answer within 0.3s"


def test_nothing_listening_is_a_failure_naming_the_hook_not_its_url() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = Webhook(name="gate", type="confirm-rollout", url=f"http://127.0.0.1:{port}/secret-path", retries=1)
    delivery = deliver(spec, {}, HttpWebhookSender(), lambda s: None)
    assert not delivery.ok and delivery.attempts == 2
    assert "ConnectionRefusedError" in (delivery.error or "") and "secret-path" not in delivery.answer


def test_a_url_reference_is_resolved_at_call_time(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCH_TEST_HOOK_URL", receiver.url + "/from-env")
    spec = Webhook(name="gate", type="rollout", url="env:ORCH_TEST_HOOK_URL")
    assert deliver(spec, {}, HttpWebhookSender(), lambda s: None).ok
    assert len(receiver.at("/from-env")) == 1
    monkeypatch.delenv("ORCH_TEST_HOOK_URL")
    missing = deliver(spec, {}, HttpWebhookSender(), lambda s: None)
    assert not missing.ok and "ORCH_TEST_HOOK_URL is not set" in (missing.error or "")


def test_bad_hooks_are_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="unknown hook type 'post-deploy'"):
        Webhook(name="x", type="post-deploy", url="http://example.com/")
    with pytest.raises(ValidationError, match="without credentials"):
        Webhook(name="x", type="rollout", url="https://user:pass@example.com/hook")
    assert (
        Webhook(name="x", type="confirmTrafficIncrease", url="http://h/").type
        is HookType.CONFIRM_TRAFFIC_INCREASE
    )
    assert Webhook(name="x", type="pre_rollout", url="http://h/").type is HookType.PRE_ROLLOUT


# --------------------------------------------------------------------------------------------
# Where gates apply
# --------------------------------------------------------------------------------------------
def test_gates_of_a_canary_plan() -> None:
    plan = build_plan(Strategy.model_validate(CANARY), has_stable=True)
    labels = {i: (step.label, [t.value for t in gate_types(plan, i, True)]) for i, step in enumerate(plan)}
    assert labels == {
        0: ("deploy candidate x1", ["confirm-rollout"]),
        1: ("set weight 20%", ["pre-rollout", "confirm-traffic-increase"]),
        2: ("analyze 10s", ["rollout"]),
        3: ("set weight 50%", ["confirm-traffic-increase"]),
        4: ("analyze 10s", ["rollout"]),
        5: ("set weight 80%", ["confirm-traffic-increase"]),
        6: ("analyze 10s", ["rollout"]),
        7: ("deploy candidate x2", ["confirm-promotion"]),
        8: ("set weight 100%", []),
        9: ("remove stable", []),
    }


def test_gates_of_a_blue_green_plan_and_of_a_first_deployment() -> None:
    strategy = Strategy.model_validate({"type": "blue_green", "blueGreen": {"validationDuration": 1000}})
    plan = build_plan(strategy, has_stable=True)
    kinds = [(s.label, [t.value for t in gate_types(plan, i, True)]) for i, s in enumerate(plan)]
    assert kinds[:3] == [
        ("deploy candidate x2", ["confirm-rollout"]),
        ("validate 1s", ["pre-rollout", "rollout"]),
        ("set weight 100%", ["confirm-promotion"]),
    ]
    first = build_plan(strategy, has_stable=False)
    assert [gate_types(first, i, False) for i in range(len(first))] == [
        [HookType.CONFIRM_ROLLOUT],
        [HookType.PRE_ROLLOUT],
        [],
    ]


# --------------------------------------------------------------------------------------------
# Gates in the reconciler
# --------------------------------------------------------------------------------------------
def with_hooks(*hooks: dict[str, Any], **strategy: Any) -> dict[str, Any]:
    return {**CANARY, **strategy, "webhooks": list(hooks)}


def test_confirm_promotion_holds_until_the_hook_answers_2xx(tmp_path: Path, receiver: Receiver) -> None:
    world = World(str(tmp_path / "journal.db"))
    world.deploy_stable()
    receiver.answer("/confirm", 503)
    deployment = world.submit("2.0.0", with_hooks(hook(receiver, "confirm-promotion", "/confirm", retries=0)))
    world.run(deployment, until=lambda s: len(receiver.at("/confirm")) >= 5)
    state = world.journal.state(deployment)
    assert state.phase() is Phase.PROGRESSING and state.plan[state.step_index].label == "deploy candidate x2"
    assert state.weights == {"2-0-0": 80, "1-0-0": 20}  # held at the last canary weight
    assert "waiting for confirm-promotion hook 'confirm-promotion-hook': HTTP 503" in state.status().message
    held = [e for e in world.hook_events(deployment) if e["outcome"] == "held"]
    assert len(held) == 1  # journaled when the answer changes, not at every call
    receiver.answer("/confirm", 200)
    assert world.run(deployment) is Phase.SUCCEEDED
    assert [e["outcome"] for e in world.hook_events(deployment)] == ["held", "passed"]
    payload = receiver.at("/confirm")[-1].json()
    assert payload["type"] == "confirm-promotion" and payload["deploymentId"] == deployment
    assert payload["target"] == "web.staging" and payload["environment"] == "staging"
    assert payload["candidateRevision"] == "2-0-0" and payload["candidateVersion"] == "2.0.0"
    assert payload["stableRevision"] == "1-0-0" and payload["stableVersion"] == "1.0.0"
    assert payload["weights"] == {"2-0-0": 80, "1-0-0": 20} and payload["phase"] == "progressing"
    assert payload["step"]["index"] == 7 and payload["step"]["label"] == "deploy candidate x2"
    assert payload["judgement"]["verdict"] == "success"  # the last analysis window's judgement


def test_a_confirm_hold_is_bounded_by_max_pause_duration(tmp_path: Path, receiver: Receiver) -> None:
    world = World(str(tmp_path / "journal.db"))
    world.deploy_stable()
    receiver.answer("/confirm", 404)
    spec = hook(receiver, "confirm-traffic-increase", "/confirm", interval="30s")
    deployment = world.submit("2.0.0", with_hooks(spec, maxPauseDuration="2m"))
    assert world.run(deployment) is Phase.ROLLED_BACK
    state = world.journal.state(deployment)
    assert state.rollback is not None and state.rollback.trigger is RollbackTrigger.DEADLINE
    assert "answered HTTP 404: not passed within 120s" in state.rollback.reason
    assert world.traffic_calls()[-1] == "traffic [('1-0-0', 100)]"
    assert not any("2-0-0" in call for call in world.traffic_calls())  # never any traffic for the candidate


def test_a_hold_survives_a_new_runner(tmp_path: Path, receiver: Receiver) -> None:
    """The hold's start is journaled: a new reconciler (after a crash) does not begin the wait anew."""
    world = World(str(tmp_path / "journal.db"))
    world.deploy_stable()
    receiver.answer("/confirm", 503)
    spec = hook(receiver, "confirm-rollout", "/confirm", retries=0, interval="10s")
    deployment = world.submit("2.0.0", with_hooks(spec, maxPauseDuration="60s"))
    world.run(deployment, until=lambda s: world.clock.t > 1_000_045)
    # A new runner 45 s into the hold: 60 s after it began, not after the new runner began, it ends.
    assert world.run(deployment) is Phase.ROLLED_BACK
    held = [e for e in world.journal.events(deployment) if e.kind is EventKind.HOOK]
    assert held[0].data["outcome"] == "held"
    rollback = world.journal.state(deployment).rollback
    assert rollback is not None and rollback.trigger is RollbackTrigger.DEADLINE
    assert 60 < rollback.at - held[0].at <= 71  # the first call more than 60 s after the hold began
    assert not any(call.startswith("ensure 2-0-0") for call in world.platform.calls)  # never scaled up


def test_a_failing_pre_rollout_hook_rolls_back_before_any_traffic(tmp_path: Path, receiver: Receiver) -> None:
    world = World(str(tmp_path / "journal.db"))
    world.deploy_stable()
    receiver.answer("/pre", 500)
    deployment = world.submit("2.0.0", with_hooks(hook(receiver, "pre-rollout", "/pre", retries=2)))
    assert world.run(deployment) is Phase.ROLLED_BACK
    state = world.journal.state(deployment)
    assert state.rollback is not None and state.rollback.trigger is RollbackTrigger.HOOK
    assert state.rollback.reason == "pre-rollout hook 'pre-rollout-hook' answered HTTP 500"
    assert len(receiver.at("/pre")) == 3  # the first attempt and two retries
    assert world.sleeps[:2] == [0.1, 0.2]
    assert not any("2-0-0" in call for call in world.traffic_calls())
    assert [e["outcome"] for e in world.hook_events(deployment)] == ["failed"]


def test_rollout_hooks_count_like_failed_windows(tmp_path: Path, receiver: Receiver) -> None:
    world = World(str(tmp_path / "journal.db"))
    world.deploy_stable()
    receiver.answer("/load", 500, 200, 200, 200, 200)  # one failure, then it works
    spec = hook(receiver, "rollout", "/load", retries=0, interval="1s")
    assert world.run(world.submit("2.0.0", with_hooks(spec))) is Phase.SUCCEEDED
    assert len(receiver.at("/load")) == 4  # three analysis steps, one of them asked twice
    receiver.answer("/load", 500)  # consecutiveFailures: 2
    failing = world.submit("3.0.0", with_hooks(spec))
    assert world.run(failing) is Phase.ROLLED_BACK
    rollback = world.journal.state(failing).rollback
    assert rollback is not None and rollback.trigger is RollbackTrigger.HOOK
    assert rollback.reason == "rollout hook 'rollout-hook' answered HTTP 500, 2 times in a row"


def test_without_hooks_no_call_is_made(tmp_path: Path, receiver: Receiver) -> None:
    world = World(str(tmp_path / "journal.db"))
    world.deploy_stable()
    assert world.run(world.submit("2.0.0", CANARY)) is Phase.SUCCEEDED
    assert receiver.requests == [] and world.hook_events("d2") == []


# --------------------------------------------------------------------------------------------
# Configured hooks and notifications
# --------------------------------------------------------------------------------------------
def test_configured_hooks_attach_by_environment_and_strategy() -> None:
    configured = [
        ConfiguredWebhook(
            name="prod-gate", type="confirm-promotion", url="http://h/", environments=["prod*"]
        ),
        ConfiguredWebhook(name="canary-load", type="rollout", url="http://h/", strategies=["canary"]),
        ConfiguredWebhook(name="all-events", type="event", url="http://h/"),
    ]
    request = DeploymentRequest(
        artifact=Artifact(name="web", version="2.0.0"),
        strategy=Strategy.model_validate(with_hooks({"name": "own", "type": "rollback", "url": "http://o/"})),
        environment="production",
        platform=PlatformConfig(type="local"),
    )
    attached = attach_configured(configured, request)
    assert [h.name for h in attached.strategy.webhooks] == ["prod-gate", "canary-load", "own"]
    assert attach_configured(configured, attached) == attached  # idempotent
    staging = attach_configured(configured, request.model_copy(update={"environment": "staging"}))
    assert [h.name for h in staging.strategy.webhooks] == ["canary-load", "own"]


def test_notifications_of_an_event(tmp_path: Path, receiver: Receiver) -> None:
    world = World(str(tmp_path / "journal.db"))
    world.deploy_stable()
    spec = with_hooks(hook(receiver, "post-rollout", "/post"), hook(receiver, "rollback", "/rb"))
    deployment = world.submit("2.0.0", spec)
    world.platform.error_rates["2-0-0"] = 0.5
    assert world.run(deployment) is Phase.ROLLED_BACK
    configured = [ConfiguredWebhook(name="everything", type="event", url=receiver.url + "/events")]
    sent: dict[str, list[str]] = {}
    for event in world.journal.events(deployment):
        state = world.journal.state(deployment)
        for webhook, payload in notifications(event, state, configured, world.clock.now()):
            sent.setdefault(event.kind.value, []).append(webhook.name)
            assert payload["event"]["kind"] == event.kind.value
    assert sent["rollback_started"] == ["everything", "rollback-hook"]
    assert sent["finished"] == ["everything", "post-rollout-hook"]
    assert sent["submitted"] == ["everything"]


def test_a_request_built_from_the_configuration_carries_its_hooks() -> None:
    from engine.config import EnterpriseConfig
    from engine.requests import build_request

    config = EnterpriseConfig.from_mapping(
        {
            "environments": {"staging": {}, "production": {}},
            "hooks": [
                {
                    "name": "gate",
                    "type": "confirm-promotion",
                    "url": "env:GATE_URL",
                    "environments": ["production"],
                },
                {"name": "siem", "type": "event", "url": "http://siem/"},
            ],
        }
    )
    artifact = {"name": "web", "version": "2.0.0"}
    own = [
        {"name": "load", "type": "rollout", "url": "http://load/", "metadata": {"someKey": "kept as given"}}
    ]
    production = build_request(config, artifact, "canary", "production", webhooks=own)
    assert [(h.name, h.type.value) for h in production.strategy.webhooks] == [
        ("gate", "confirm-promotion"),
        ("load", "rollout"),
    ]
    assert production.strategy.webhooks[1].metadata == {"someKey": "kept as given"}
    staging = build_request(config, artifact, "canary", "staging")
    assert staging.strategy.webhooks == []  # the event hook is the dispatcher's, for every event
