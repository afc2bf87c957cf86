"""Alerts: what deserves a person's attention, read from journal events (no Ray here).

Rules turn events into alerts: a deployment failed or rolled back, a performance threshold breached (a
failure-threshold judgement), a compliance violation (a failed compliance gate or artifact verification), an
environment whose health degraded (its status event, a platform fault), a crash loop (a supervision finding),
and, checked at every round rather than from one event, a deployment stuck past its deadline. The event
kinds of other domains are matched by name, so a kind that a deployment of this version never writes simply
never matches.

Each alert has a severity (``alerting.severities`` overrides the defaults), goes to the channels of every
route that matches its environment, severity and kind, at most once per ``dedupWindow`` for the same
subject, and each channel sends at most ``rateLimit.count`` alerts per ``rateLimit.per``: an alert over
the limit is held back and counted, and the channel's next alert says how many were.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Annotated, Any, Protocol

from pydantic import Field, field_validator

from engine.models import DurationMs, Model, Phase, Strategy
from engine.secrets import REFERENCE
from engine.state import DeploymentState, Event, EventKind


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertKind(str, Enum):
    DEPLOYMENT_FAILED = "deployment_failed"
    DEPLOYMENT_ROLLED_BACK = "deployment_rolled_back"
    DEPLOYMENT_STUCK = "deployment_stuck"
    ENVIRONMENT_DEGRADED = "environment_degraded"
    COMPLIANCE_VIOLATION = "compliance_violation"
    PERFORMANCE_BREACH = "performance_breach"
    CRASH_LOOP = "crash_loop"


DEFAULT_SEVERITY: dict[AlertKind, Severity] = {
    AlertKind.DEPLOYMENT_FAILED: Severity.CRITICAL,
    AlertKind.DEPLOYMENT_ROLLED_BACK: Severity.WARNING,
    AlertKind.DEPLOYMENT_STUCK: Severity.CRITICAL,
    AlertKind.ENVIRONMENT_DEGRADED: Severity.WARNING,
    AlertKind.COMPLIANCE_VIOLATION: Severity.CRITICAL,
    AlertKind.PERFORMANCE_BREACH: Severity.WARNING,
    AlertKind.CRASH_LOOP: Severity.CRITICAL,
}


class Alert(Model):
    kind: AlertKind
    severity: Severity
    subject: str = Field(description="What it is about: a deployment id, an environment, a target")
    environment: str | None = None
    title: str
    body: str
    at: float

    @property
    def key(self) -> str:
        """Alerts with the same key are one alert (deduplicated)."""
        return f"{self.kind.value}:{self.subject}"


# --------------------------------------------------------------------------------------------
# Configuration (``alerting:`` in enterprise_config.yaml)
# --------------------------------------------------------------------------------------------
_SECRET_IN_URL = re.compile(r"^[A-Za-z0-9+.-]+://[^/@\s?#]*:[^/@\s?#]+@")  # user:password@


class AlertChannel(Model):
    """Where alerts go: an Apprise URL (``json://``, ``mmost://`` for a Slack-compatible incoming webhook,
    ``slack://``, ``mailto://`` ...) or a reference to one (``env:NAME``, ``file:/path``)."""

    url: str

    @field_validator("url")
    @classmethod
    def _url_or_reference(cls, url: str) -> str:
        if REFERENCE.match(url):
            return url
        if "://" not in url:
            raise ValueError(f"'{url}' is not a notification URL (such as json://host/path or mailto://...)")
        if _SECRET_IN_URL.match(url):
            raise ValueError("the URL holds a password: put the whole URL in env:NAME or file:/path")
        return url

    @property
    def scheme(self) -> str:
        return "reference" if REFERENCE.match(self.url) else self.url.split("://", 1)[0]


class AlertRoute(Model):
    environments: list[str] = Field(default_factory=lambda: ["*"], description="Patterns")
    severities: list[Severity] = Field(default_factory=lambda: list(Severity))
    kinds: list[AlertKind] = Field(default_factory=list, description="Empty: every kind")
    channels: list[str] = Field(min_length=1)

    def matches(self, alert: Alert) -> bool:
        if alert.severity not in self.severities or (self.kinds and alert.kind not in self.kinds):
            return False
        if alert.environment is None:
            return "*" in self.environments
        return any(fnmatch.fnmatchcase(alert.environment, pattern) for pattern in self.environments)


class RateLimit(Model):
    count: int = Field(default=20, ge=1)
    per: Annotated[DurationMs, Field(gt=0)] = 60_000


class AlertingSettings(Model):
    channels: dict[str, AlertChannel] = Field(default_factory=dict)
    routes: list[AlertRoute] = Field(default_factory=list)
    dedup_window: DurationMs = 600_000
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    severities: dict[AlertKind, Severity] = Field(default_factory=dict, description="Overrides per kind")
    retries: int = Field(default=2, ge=0, le=10)
    backoff: Annotated[DurationMs, Field(gt=0)] = 1_000

    def severity(self, kind: AlertKind) -> Severity:
        return self.severities.get(kind, DEFAULT_SEVERITY[kind])

    def channels_for(self, alert: Alert) -> list[str]:
        """Every channel of every matching route, each once, in the order the routes name them."""
        chosen: list[str] = []
        for route in self.routes:
            if route.matches(alert):
                chosen += [name for name in route.channels if name not in chosen]
        return chosen


def alerting_problems(settings: AlertingSettings) -> Iterable[tuple[str, str]]:
    """(yaml path, problem) for routes naming channels that are not defined."""
    known = ", ".join(sorted(settings.channels)) or "none"
    for index, route in enumerate(settings.routes):
        for position, name in enumerate(route.channels):
            if name not in settings.channels:
                yield (
                    f"alerting.routes[{index}].channels[{position}]",
                    f"channel '{name}' is not defined under alerting.channels (defined: {known})",
                )


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------
def alerts_for(event: Event, state: DeploymentState | None, settings: AlertingSettings) -> list[Alert]:
    """The alerts one journal event raises (none for most)."""
    made = _deployment_alert(event, state) if state is not None else None
    made = made or _domain_alert(event, state)
    if made is None:
        return []
    kind, subject, environment, title, body = made
    return [
        Alert(
            kind=kind,
            severity=settings.severity(kind),
            subject=subject,
            environment=environment,
            title=title,
            body=body,
            at=event.at,
        )
    ]


_Made = tuple[AlertKind, str, str | None, str, str]


def _name(state: DeploymentState) -> str:
    request = state.request
    return f"{request.target.service} {request.artifact.version} in {request.environment}"


def _deployment_alert(event: Event, state: DeploymentState) -> _Made | None:
    environment = state.request.environment
    if event.kind is EventKind.FINISHED:
        outcome = str(event.data.get("outcome"))
        message = str(event.data.get("message", ""))
        if outcome == Phase.FAILED.value:
            title = f"Deployment failed: {_name(state)}"
            return AlertKind.DEPLOYMENT_FAILED, event.deployment_id, environment, title, message
        if outcome == Phase.ROLLED_BACK.value:
            title = f"Deployment rolled back: {_name(state)}"
            return AlertKind.DEPLOYMENT_ROLLED_BACK, event.deployment_id, environment, title, message
    if event.kind is EventKind.MEASUREMENT and event.data.get("verdict") == "failure":
        title = f"Performance threshold breached: {_name(state)}"
        reason = str(event.data.get("reason", ""))
        return AlertKind.PERFORMANCE_BREACH, event.deployment_id, environment, title, reason
    return None


def _domain_alert(event: Event, state: DeploymentState | None) -> _Made | None:
    """Events of the governance, environment and supervision domains, matched by their kind's name."""
    kind, data = event.kind.value, event.data
    environment = state.request.environment if state else _environment_of(event)
    where = f" in {environment}" if environment else ""
    if kind == "compliance_checked" and data.get("passed") is False:
        result = data.get("result") or {}
        body = _failed_rules(result) or "the compliance gate did not pass"
        title = f"Compliance violation: {event.deployment_id}{where}"
        return AlertKind.COMPLIANCE_VIOLATION, event.deployment_id, environment, title, body
    if kind == "artifact_verified" and any(c.get("status") == "failed" for c in data.get("checks", [])):
        body = "; ".join(
            f"{c.get('name')}: {c.get('evidence')}" for c in data["checks"] if c.get("status") == "failed"
        )
        title = f"Compliance violation: artifact of {event.deployment_id} failed verification{where}"
        return AlertKind.COMPLIANCE_VIOLATION, event.deployment_id, environment, title, body
    if kind == "environment_status" and data.get("status") not in (None, "ready"):
        title = f"Environment health degraded: {environment} is {data.get('status')}"
        return (
            AlertKind.ENVIRONMENT_DEGRADED,
            f"environment:{environment}",
            environment,
            title,
            str(data.get("reason", "")),
        )
    if kind == "platform_fault":
        title = f"Environment health degraded: platform fault{where}"
        return (
            AlertKind.ENVIRONMENT_DEGRADED,
            event.deployment_id,
            environment,
            title,
            str(data.get("reason", "")),
        )
    if kind == "drift" and data.get("crash_loop"):
        subject = f"{data.get('subject', 'replicas')} of {data.get('revision', '?')}"
        title = f"Crash loop{where}: {subject}"
        body = f"{data.get('found', '')}; {data.get('done', '')}".strip("; ")
        target = state.request.target.key if state else event.deployment_id
        return AlertKind.CRASH_LOOP, f"{target}:{subject}", environment, title, body
    return None


def _failed_rules(result: Mapping[str, Any]) -> str:
    rules = [r for r in result.get("rules", []) if isinstance(r, Mapping) and not r.get("passed", True)]
    head = (
        f"score {result.get('score')}% (needs {result.get('required_score')}%)" if "score" in result else ""
    )
    failed = "; ".join(f"{r.get('rule')}: {r.get('evidence')}" for r in rules)
    return "; ".join(part for part in (head, failed) if part)


def _environment_of(event: Event) -> str | None:
    if event.deployment_id.startswith("environment:"):
        return event.deployment_id.split(":", 1)[1]
    value = event.data.get("environment")
    return value if isinstance(value, str) else None


def stuck_limit_s(state: DeploymentState) -> float | None:
    """How long an admitted deployment may go without any journal event before it is stuck: its progress
    deadline plus the current step's own duration (plus the longest pause while paused)."""
    if state.admitted_at is None or not state.active:
        return None
    strategy: Strategy = state.request.strategy
    step = state.current_step()
    limit = strategy.progress_deadline + (step.duration_ms if step else 0)
    if state.phase() is Phase.PAUSED:
        limit += strategy.max_pause_duration
    return limit / 1000


def stuck_alert(state: DeploymentState, now: float, settings: AlertingSettings) -> Alert | None:
    limit = stuck_limit_s(state)
    quiet = now - state.updated_at
    if limit is None or quiet <= limit:
        return None
    step = state.current_step()
    where = f"at step {state.step_index + 1}/{len(state.plan)} ({step.label})" if step else "before planning"
    detail = f"; {state.message}" if state.message else ""
    return Alert(
        kind=AlertKind.DEPLOYMENT_STUCK,
        severity=settings.severity(AlertKind.DEPLOYMENT_STUCK),
        subject=state.deployment_id,
        environment=state.request.environment,
        title=f"Deployment stuck: {_name(state)}",
        body=f"{state.phase().value} {where}, no progress for {quiet:.0f}s (deadline {limit:g}s){detail}",
        at=now,
    )


# --------------------------------------------------------------------------------------------
# Deduplication and rate limits
# --------------------------------------------------------------------------------------------
class SentAlerts(Protocol):
    """When each alert key was last sent (durable: the journal's records)."""

    def last_sent(self, key: str) -> float | None: ...

    def mark_sent(self, key: str, at: float) -> None: ...


class RateLimiter:
    """At most ``count`` sends per channel within ``per_s``; held-back alerts are counted per channel."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.time) -> None:
        self.count = limit.count
        self.per_s = limit.per / 1000
        self.clock = clock
        self._sent: dict[str, deque[float]] = {}
        self.held_back: dict[str, int] = {}

    def allow(self, channel: str) -> bool:
        now = self.clock()
        sent = self._sent.setdefault(channel, deque())
        while sent and now - sent[0] >= self.per_s:
            sent.popleft()
        if len(sent) >= self.count:
            self.held_back[channel] = self.held_back.get(channel, 0) + 1
            return False
        sent.append(now)
        return True

    def take_held_back(self, channel: str) -> int:
        return self.held_back.pop(channel, 0)
