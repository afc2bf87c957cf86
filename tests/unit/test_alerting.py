"""Alerting and the dispatcher: rules on journal events, routing per environment and severity, dedup and rate
limits (fake clock), delivery through Apprise to a real HTTP receiver (JSON webhook, a Slack-compatible
incoming webhook) and a real SMTP server, notification hooks, and the durable cursor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from adapters.notifications import AppriseNotifier
from adapters.webhooks import HttpWebhookSender
from engine.alerting import Alert, AlertingSettings, AlertKind, Severity, alerts_for, stuck_alert
from engine.dispatch import Dispatcher
from engine.hooks import ConfiguredWebhook
from engine.journal import Journal
from engine.models import Artifact, DeploymentRequest, PlatformConfig, Strategy
from engine.state import Event, EventKind
from tests.receiver import Mailbox, Receiver, http_receiver, smtp_server
from tests.unit.fakes import FakeClock


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with http_receiver() as running:
        yield running


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    with smtp_server() as running:
        yield running


def settings(receiver: Receiver, mailbox: Mailbox | None = None, **extra: Any) -> AlertingSettings:
    port = receiver.url.rsplit(":", 1)[1]
    channels: dict[str, Any] = {
        "siem": {"url": f"json://127.0.0.1:{port}/alerts"},
        "chat": {"url": f"mmost://127.0.0.1:{port}/team-token"},  # Slack's incoming-webhook JSON
    }
    routes: list[dict[str, Any]] = [
        {"environments": ["prod*"], "severities": ["critical", "warning"], "channels": ["siem", "chat"]},
        {"environments": ["*"], "severities": ["critical"], "channels": ["siem"]},
    ]
    if mailbox is not None:
        query = "from=orchestrator@example.com&to=oncall@example.com&mode=insecure"
        channels["mail"] = {"url": f"mailto://127.0.0.1:{mailbox.port}?{query}"}
        routes.append({"environments": ["production"], "kinds": ["deployment_failed"], "channels": ["mail"]})
    return AlertingSettings.model_validate({"channels": channels, "routes": routes, "backoff": 10, **extra})


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock()
        self.journal = Journal(tmp_path / "journal.db", clock=self.clock.now)
        self.count = 0

    def submit(self, environment: str = "production", hooks: list[dict[str, Any]] | None = None) -> str:
        self.count += 1
        request = DeploymentRequest(
            artifact=Artifact(name="web", version=f"2.0.{self.count}"),
            strategy=Strategy.model_validate({"type": "canary", "webhooks": hooks or []}),
            environment=environment,
            platform=PlatformConfig(type="local"),
        )
        self.journal.submit(f"web-{self.count}", request, actor="test")
        return f"web-{self.count}"

    def finish(self, deployment_id: str, outcome: str, message: str = "") -> None:
        self.journal.append(deployment_id, EventKind.FINISHED, {"outcome": outcome, "message": message})

    def dispatcher(
        self, alerting: AlertingSettings, hooks: list[ConfiguredWebhook] | None = None
    ) -> Dispatcher:
        return Dispatcher(
            self.journal,
            hooks or [],
            alerting,
            HttpWebhookSender(),
            AppriseNotifier(),
            clock=self.clock.now,
            sleep=self.clock.sleep,
        )

    def audit(self, action: str) -> list[dict[str, Any]]:
        return [
            e.data for e in self.journal.events() if e.kind is EventKind.AUDIT and e.data["action"] == action
        ]


class _Kind(NamedTuple):
    """The kind of an event written by another domain (governance, environments, supervision): rules read
    kinds by name, so the test builds the event as that domain journals it."""

    value: str


def an_alert(subject: str, title: str, at: float, kind: AlertKind = AlertKind.DEPLOYMENT_FAILED) -> Alert:
    return Alert(
        kind=kind,
        severity=Severity.CRITICAL,
        subject=subject,
        environment="staging",
        title=title,
        body="b",
        at=at,
    )


def foreign_event(kind: str, about: str, **data: Any) -> Event:
    return Event.model_construct(seq=1, deployment_id=about, kind=_Kind(kind), at=5.0, actor="x", data=data)


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------
def test_rules_of_deployment_events(tmp_path: Path) -> None:
    world = World(tmp_path)
    deployment = world.submit()
    state = world.journal.state(deployment)
    config = AlertingSettings(severities={AlertKind.DEPLOYMENT_ROLLED_BACK: Severity.CRITICAL})

    def alert(kind: EventKind, **data: Any) -> list[Alert]:
        return alerts_for(Event(deployment_id=deployment, kind=kind, at=1.0, data=data), state, config)

    failed = alert(EventKind.FINISHED, outcome="failed", message="router gone")
    assert [(a.kind, a.severity, a.environment) for a in failed] == [
        (AlertKind.DEPLOYMENT_FAILED, Severity.CRITICAL, "production")
    ]
    assert failed[0].title == "Deployment failed: web 2.0.1 in production" and failed[0].body == "router gone"
    rolled = alert(EventKind.FINISHED, outcome="rolled_back")
    assert rolled[0].kind is AlertKind.DEPLOYMENT_ROLLED_BACK and rolled[0].severity is Severity.CRITICAL
    assert alert(EventKind.FINISHED, outcome="succeeded") == []
    assert alert(EventKind.FINISHED, outcome="aborted") == []  # a person's decision, not news
    breach = alert(EventKind.MEASUREMENT, verdict="failure", reason="error rate 30% > 5%")
    assert breach[0].kind is AlertKind.PERFORMANCE_BREACH and breach[0].body == "error rate 30% > 5%"
    assert alert(EventKind.MEASUREMENT, verdict="success", reason="fine") == []


def test_rules_of_other_domains_events(tmp_path: Path) -> None:
    world = World(tmp_path)
    state = world.journal.state(world.submit())
    config = AlertingSettings()
    compliance = foreign_event(
        "compliance_checked",
        "web-1",
        passed=False,
        result={
            "score": 60,
            "required_score": 95,
            "rules": [{"rule": "approvals", "passed": False, "evidence": "none"}],
        },
    )
    (violation,) = alerts_for(compliance, state, config)
    assert violation.kind is AlertKind.COMPLIANCE_VIOLATION and violation.severity is Severity.CRITICAL
    assert violation.body == "score 60% (needs 95%); approvals: none"
    checks = [
        {"name": "signature", "status": "failed", "evidence": "unsigned"},
        {"name": "digest", "status": "passed"},
    ]
    (artifact,) = alerts_for(foreign_event("artifact_verified", "web-1", checks=checks), state, config)
    assert artifact.kind is AlertKind.COMPLIANCE_VIOLATION and artifact.body == "signature: unsigned"
    status = foreign_event(
        "environment_status", "environment:staging", environment="staging", status="not_ready"
    )
    (degraded,) = alerts_for(status, None, config)
    assert (degraded.kind, degraded.subject, degraded.environment) == (
        AlertKind.ENVIRONMENT_DEGRADED,
        "environment:staging",
        "staging",
    )
    ready = foreign_event("environment_status", "environment:staging", environment="staging", status="ready")
    assert alerts_for(ready, None, config) == []
    drift = foreign_event(
        "drift", "web-1", crash_loop=True, subject="replicas", revision="2-0-1", found="5 restarts"
    )
    (crash,) = alerts_for(drift, state, config)
    assert crash.kind is AlertKind.CRASH_LOOP and crash.subject == "web.production:replicas of 2-0-1"
    assert (
        alerts_for(
            foreign_event("drift", "web-1", subject="router", found="dead", done="restarted"), state, config
        )
        == []
    )


def test_stuck_means_no_event_past_the_deadline_plus_the_step(tmp_path: Path) -> None:
    world = World(tmp_path)
    deployment = world.submit()
    config = AlertingSettings()
    assert stuck_alert(world.journal.state(deployment), world.clock.t + 10_000, config) is None  # queued
    world.journal.append(deployment, EventKind.ADMITTED, {})
    state = world.journal.state(deployment)
    deadline = state.request.strategy.progress_deadline / 1000
    assert stuck_alert(state, state.updated_at + deadline - 1, config) is None
    alert = stuck_alert(state, state.updated_at + deadline + 1, config)
    assert alert is not None and alert.kind is AlertKind.DEPLOYMENT_STUCK
    assert "no progress for 601s (deadline 600s)" in alert.body


def test_routes_by_environment_severity_and_kind(receiver: Receiver, mailbox: Mailbox) -> None:
    config = settings(receiver, mailbox)

    def route(kind: AlertKind, environment: str | None) -> list[str]:
        alert = Alert(
            kind=kind,
            severity=config.severity(kind),
            subject="x",
            environment=environment,
            title="t",
            body="b",
            at=0,
        )
        return config.channels_for(alert)

    assert route(AlertKind.DEPLOYMENT_FAILED, "production") == ["siem", "chat", "mail"]
    assert route(AlertKind.DEPLOYMENT_ROLLED_BACK, "production") == ["siem", "chat"]  # a warning
    assert route(AlertKind.DEPLOYMENT_FAILED, "staging") == ["siem"]
    assert route(AlertKind.DEPLOYMENT_ROLLED_BACK, "staging") == []
    assert route(AlertKind.CRASH_LOOP, None) == ["siem"]  # an alert of no environment: "*" routes only


def test_a_route_to_an_undefined_channel_is_refused_at_its_path() -> None:
    from engine.config import ConfigError, EnterpriseConfig

    alerting = {"channels": {"chat": {"url": "json://h/"}}, "routes": [{"channels": ["chat", "pager"]}]}
    with pytest.raises(ConfigError) as refused:
        EnterpriseConfig.from_mapping({"alerting": alerting})
    assert refused.value.problems == [
        "<config>: alerting.routes[0].channels[1]: channel 'pager' is not defined under alerting.channels "
        "(defined: chat)"
    ]
    with pytest.raises(ConfigError, match="holds a password"):
        EnterpriseConfig.from_mapping(
            {"alerting": {"channels": {"m": {"url": "mailtos://u:secret@smtp.example.com"}}}}
        )


# --------------------------------------------------------------------------------------------
# The dispatcher, against the real receiver and SMTP server
# --------------------------------------------------------------------------------------------
def test_a_failed_production_deployment_reaches_every_channel(
    tmp_path: Path, receiver: Receiver, mailbox: Mailbox
) -> None:
    world = World(tmp_path)
    dispatcher = world.dispatcher(settings(receiver, mailbox))
    deployment = world.submit()
    world.finish(deployment, "failed", "web-1: 2-0-1 not ready within the progress deadline of 600s")
    assert dispatcher.round() == 2
    siem = receiver.at("/alerts")[0].json()
    assert siem["title"] == "[CRITICAL] Deployment failed: web 2.0.1 in production"
    assert "not ready within the progress deadline" in siem["message"] and siem["type"] == "failure"
    chat = receiver.at("/hooks/team-token")[0].json()
    assert chat["text"].startswith("[CRITICAL] Deployment failed: web 2.0.1 in production")  # Slack's shape
    (mail,) = mailbox.wait_for(1)
    assert mail["Subject"] == "[CRITICAL] Deployment failed: web 2.0.1 in production"
    assert mail["X-Envelope-To"] == "oncall@example.com"
    (sent,) = world.audit("alert_sent")
    assert sent["channels"] == ["siem", "chat", "mail"] and sent["kind"] == "deployment_failed"
    assert dispatcher.counts["alert", "deployment_failed", "sent"] == 1


def test_the_same_alert_is_sent_once_per_dedup_window(tmp_path: Path, receiver: Receiver) -> None:
    world = World(tmp_path)
    dispatcher = world.dispatcher(settings(receiver, dedupWindow="10m"))
    alert = an_alert("web-9", "Deployment stuck", world.clock.t, AlertKind.DEPLOYMENT_STUCK)
    dispatcher.raise_alert(alert)
    dispatcher.raise_alert(alert.model_copy(update={"at": world.clock.t + 599}))
    assert len(receiver.at("/alerts")) == 1
    assert dispatcher.counts["alert", "deployment_stuck", "deduplicated"] == 1
    # A new dispatcher (the queen restarted) remembers what was sent: the journal's records.
    again = world.dispatcher(settings(receiver, dedupWindow="10m"))
    again.raise_alert(alert.model_copy(update={"at": world.clock.t + 300}))
    assert len(receiver.at("/alerts")) == 1
    again.raise_alert(alert.model_copy(update={"at": world.clock.t + 601}))
    assert len(receiver.at("/alerts")) == 2


def test_a_channel_sends_at_most_its_rate_and_says_how_many_were_held_back(
    tmp_path: Path, receiver: Receiver
) -> None:
    world = World(tmp_path)
    dispatcher = world.dispatcher(settings(receiver, rateLimit={"count": 2, "per": "1m"}))
    for index in range(4):
        dispatcher.raise_alert(an_alert(f"web-{index}", f"failed {index}", world.clock.t))
    assert [r.json()["title"] for r in receiver.at("/alerts")] == [
        "[CRITICAL] failed 0",
        "[CRITICAL] failed 1",
    ]
    assert dispatcher.counts["alert", "deployment_failed", "rate_limited"] == 2
    world.clock.t += 61
    dispatcher.raise_alert(an_alert("web-5", "failed 5", world.clock.t))
    last = receiver.at("/alerts")[-1].json()
    assert last["title"] == "[CRITICAL] failed 5"
    assert "(2 more alerts were held back by the rate limit)" in last["message"]


def test_a_channel_that_fails_is_retried_with_backoff(tmp_path: Path, receiver: Receiver) -> None:
    world = World(tmp_path)
    receiver.answer("/alerts", 503, 500, 200)
    dispatcher = world.dispatcher(settings(receiver, retries=2, backoff="1s"))
    started = world.clock.t
    deployment = world.submit("staging")
    world.finish(deployment, "failed")
    dispatcher.round()
    assert len(receiver.at("/alerts")) == 3
    assert world.clock.t - started >= 3.0  # 1 s, then 2 s of back-off
    assert world.audit("alert_sent")[0]["channels"] == ["siem"]
    receiver.answer("/alerts", 500)
    world.finish(world.submit("staging"), "failed")
    dispatcher.round()
    assert len(receiver.at("/alerts")) == 6  # bounded: three attempts, then given up
    assert world.audit("alert_failed")[0]["failed"] == ["siem"]


def test_notification_hooks_are_sent_from_the_journal(tmp_path: Path, receiver: Receiver) -> None:
    world = World(tmp_path)
    hooks = [
        ConfiguredWebhook(name="siem", type="event", url=receiver.url + "/events", environments=["prod*"])
    ]
    dispatcher = world.dispatcher(AlertingSettings(), hooks)
    own = [
        {"name": "notify", "type": "post-rollout", "url": receiver.url + "/post"},
        {"name": "page", "type": "rollback", "url": receiver.url + "/rollback"},
    ]
    deployment = world.submit(hooks=own)
    world.journal.append(deployment, EventKind.ADMITTED, {})
    world.journal.append(deployment, EventKind.MEASUREMENT, {"verdict": "failure", "reason": "errors"})
    world.journal.append(deployment, EventKind.ROLLBACK_REQUESTED, {"trigger": "metrics", "reason": "errors"})
    world.journal.append(deployment, EventKind.ROLLBACK_STARTED, {"trigger": "metrics", "reason": "errors"})
    world.finish(deployment, "rolled_back", "metrics: errors")
    staging = world.submit("staging")  # the event hook is for production only
    assert dispatcher.round() == 7
    events = [r.json()["event"]["kind"] for r in receiver.at("/events")]
    assert events == [
        "submitted",
        "admitted",
        "measurement",
        "rollback_requested",
        "rollback_started",
        "finished",
    ]
    assert all(r.json()["deploymentId"] == deployment for r in receiver.at("/events"))
    (rollback,) = receiver.at("/rollback")
    assert rollback.json()["rollback"] == {"trigger": "metrics", "reason": "errors"}
    (post,) = receiver.at("/post")
    body = post.json()
    assert body["type"] == "post-rollout" and body["outcome"] == "rolled_back"
    assert body["judgement"] == {"verdict": "failure", "reason": "errors"}
    assert body["deploymentId"] == deployment and body["environment"] == "production"
    assert staging not in [r.json()["deploymentId"] for r in receiver.requests]


def test_the_cursor_is_durable_no_event_lost_or_sent_twice(tmp_path: Path, receiver: Receiver) -> None:
    world = World(tmp_path)
    before = world.submit()  # written before the dispatcher ever ran: history, not news
    hooks = [ConfiguredWebhook(name="all", type="event", url=receiver.url + "/events")]
    first = world.dispatcher(AlertingSettings(), hooks)
    one = world.submit()
    assert first.round() == 1
    two = world.submit()  # written while no dispatcher runs (the queen restarts)
    world.journal.append(two, EventKind.ADMITTED, {})
    second = world.dispatcher(AlertingSettings(), hooks)
    assert second.round() == 2
    assert second.round() == 0
    seen = [(r.json()["event"]["subject"], r.json()["event"]["kind"]) for r in receiver.at("/events")]
    assert seen == [(one, "submitted"), (two, "submitted"), (two, "admitted")]
    assert before not in [subject for subject, _ in seen]


def test_a_stuck_deployment_is_reported_once_per_window(tmp_path: Path, receiver: Receiver) -> None:
    world = World(tmp_path)
    dispatcher = world.dispatcher(settings(receiver))
    deployment = world.submit("staging")
    world.journal.append(deployment, EventKind.ADMITTED, {})
    dispatcher.round()
    assert receiver.at("/alerts") == []
    world.clock.t += 601
    dispatcher.round()
    dispatcher.round()
    (stuck,) = receiver.at("/alerts")
    assert stuck.json()["title"] == "[CRITICAL] Deployment stuck: web 2.0.1 in staging"


def test_loading_the_queens_module_does_not_import_apprise() -> None:
    """Every process that makes a handle to the queen (runners, DO-006) imports actors.queen; Apprise, which
    costs more than 100 ms of CPU to import, waits until a notification is sent."""
    import subprocess
    import sys

    code = "import sys, actors.queen; print('apprise' in sys.modules)"
    argv = [sys.executable, "-c", code]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"
