"""Deployment metrics and the four DORA metrics, computed from the journal (so they survive restarts).

``DeploymentMetrics`` folds journal events in order (it remembers the last sequence number it saw, so each
refresh reads only new events) and ``families(now)`` gives every metric as plain values; the exporters in
actors/telemetry.py turn them into prometheus-client families and Ray metrics. No Ray, no Prometheus here.

DORA, per environment, over a trailing window (``metrics.doraWindow``, 30 days by default):
- deployment frequency: deployments that went live (succeeded), per day;
- lead time for changes: from the artifact's commit time (``Artifact.metadata`` ``commitTime``, else
  ``buildTime``: Unix seconds or ISO 8601) to live;
- change failure rate: the share of changes (deployments that succeeded, failed or were rolled back; not
  aborted ones, not rollback redeployments) that failed, were rolled back, or were rolled back later;
- time to restore: a rolled-back deployment from its rollback request to traffic back on stable; a failed
  one until the next deployment of its target went live; a rollback redeployment from its request to live.
Every counter is a total from the journal's beginning; PromQL windows (``increase(...[1d])``) work on them.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from engine.models import Phase, Strategy
from engine.state import Event, EventKind

DAY_S = 86_400.0
DURATION_BUCKETS = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
LEAD_BUCKETS = (60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, DAY_S, 3 * DAY_S, 7 * DAY_S, 30 * DAY_S)
RESTORE_BUCKETS = (1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, DAY_S)
COMMIT_KEYS = ("commitTime", "commit_time", "commitTimestamp", "buildTime", "build_time", "buildTimestamp")
CHANGE_OUTCOMES = frozenset({Phase.SUCCEEDED.value, Phase.FAILED.value, Phase.ROLLED_BACK.value})
_REDEPLOY_NOTE = re.compile(r"^rollback of (\S+):")

Labels = tuple[tuple[str, str], ...]
Kind = Literal["counter", "gauge", "histogram"]


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * len(self.buckets)
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        counts = self.counts or [0] * len(self.buckets)
        return [*((f"{b:g}", c) for b, c in zip(self.buckets, counts, strict=True)), ("+Inf", self.count)]


@dataclass
class Family:
    """One metric: its name, kind, help and samples (label set -> value, or a histogram)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]
    values: dict[Labels, float] = field(default_factory=dict)
    histograms: dict[Labels, Histogram] = field(default_factory=dict)


@dataclass
class Record:
    """What the metrics need of one deployment."""

    deployment_id: str
    environment: str
    strategy: str
    service: str
    version: str
    commit_time: float | None
    submitted_at: float
    admitted: bool = False
    finished_at: float | None = None
    outcome: str | None = None
    rollback_at: float | None = None
    phase: str = Phase.QUEUED.value
    restores: str | None = None  # a rollback redeployment: the deployment it undoes
    undone: bool = False  # a succeeded deployment rolled back later (a failed change)
    restore_s: float | None = None  # how long it took to restore service, when it did


def commit_time(metadata: Mapping[str, Any]) -> float | None:
    """The artifact's commit (else build) time: Unix seconds or milliseconds, or ISO 8601."""
    for key in COMMIT_KEYS:
        value = metadata.get(key)
        if value in (None, ""):
            continue
        try:
            number = float(value)
            return number / 1000 if number > 1e12 else number
        except (TypeError, ValueError):
            pass
        try:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
    return None


def _labels(**values: str) -> Labels:
    return tuple(values.items())


def _gauge(name: str, text: str, labels: tuple[str, ...], values: Mapping[Labels, float]) -> Family:
    return Family(name, "gauge", text, labels, values=dict(values))


ENV = ("environment",)


class DeploymentMetrics:
    """Every figure, folded from the journal's events (``fold``) and read at any time (``families``)."""

    def __init__(self, compliance_levels: Mapping[str, str] | None = None, dora_window_s: float = 30 * DAY_S):
        self.compliance_levels = dict(compliance_levels or {})
        self.dora_window_s = dora_window_s
        self.seq = 0
        self.records: dict[str, Record] = {}
        self.counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self.histograms: dict[str, dict[Labels, Histogram]] = defaultdict(dict)
        self.weights: dict[tuple[str, str], dict[str, int]] = {}  # (service, environment) -> revision -> %
        self.versions: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
        self.live: dict[tuple[str, str], str] = {}  # target -> deployment id of the live revision
        self.last_judgement: dict[tuple[str, str], tuple[dict[str, Any], Strategy | None]] = {}
        self.environment_health: dict[str, float] = {}
        self.compliance_score: dict[str, float] = {}
        self.last_checkpoint: tuple[float, int] | None = None
        self._strategies: dict[str, Strategy | None] = {}
        self.unrestored: dict[
            tuple[str, str], float
        ] = {}  # target -> when its first unrestored failure ended

    # ------------------------------------------------------------------------------ folding
    def fold(self, events: Iterable[Event]) -> None:
        for event in events:
            if event.seq <= self.seq:
                continue
            self.seq = event.seq
            handler = _HANDLERS.get(event.kind.value)
            record = self.records.get(event.deployment_id)
            if handler is not None:
                handler(self, event, record)
            if record is not None and event.kind.value in _PHASE_AFTER:
                record.phase = _PHASE_AFTER[event.kind.value]
                record.admitted = record.admitted or event.kind is EventKind.ADMITTED

    def _count(self, name: str, labels: Labels, by: float = 1.0) -> None:
        counter = self.counters[name]
        counter[labels] = counter.get(labels, 0.0) + by

    def _observe(self, name: str, buckets: tuple[float, ...], labels: Labels, value: float) -> None:
        self.histograms[name].setdefault(labels, Histogram(buckets)).observe(value)

    def _on_submitted(self, event: Event, _: Record | None) -> None:
        request = event.data.get("request") or {}
        artifact = request.get("artifact") or {}
        record = Record(
            deployment_id=event.deployment_id,
            environment=str(request.get("environment", "")),
            strategy=str((request.get("strategy") or {}).get("type", "")),
            service=str(artifact.get("name", "")),
            version=str(artifact.get("version", "")),
            commit_time=commit_time(artifact.get("metadata") or {}),
            submitted_at=event.at,
        )
        self.records[event.deployment_id] = record
        try:  # its thresholds, which an older judgement does not carry itself
            self._strategies[event.deployment_id] = Strategy.model_validate(request.get("strategy"))
        except ValidationError:
            self._strategies[event.deployment_id] = None
        self._count("submitted", _labels(environment=record.environment, strategy=record.strategy))

    def _on_planned(self, event: Event, record: Record | None) -> None:
        if record is None:
            return
        target = (record.service, record.environment)
        versions = self.versions[target]
        stable = event.data.get("stable_artifact") or {}
        if event.data.get("stable_revision") and stable.get("version"):
            versions[str(event.data["stable_revision"])] = str(stable["version"])
        if event.data.get("candidate_revision"):
            versions[str(event.data["candidate_revision"])] = record.version
        self._weights(record, event.data.get("weights"))

    def _weights(self, record: Record, weights: Any) -> None:
        if isinstance(weights, Mapping):
            self.weights[(record.service, record.environment)] = {str(k): int(v) for k, v in weights.items()}

    def _on_weights(self, event: Event, record: Record | None) -> None:
        if record is not None:
            self._weights(record, event.data.get("weights"))

    def _on_rollback(self, event: Event, record: Record | None) -> None:
        if record is not None and record.rollback_at is None:
            record.rollback_at = event.at
            trigger = str(event.data.get("trigger", "unknown"))
            self._count("rollbacks", _labels(environment=record.environment, trigger=trigger))

    def _on_step(self, event: Event, record: Record | None) -> None:
        step = str(event.data.get("step", ""))
        kind = step.split(" ")[0] if step else "unknown"
        kind = {"set": "set_weight", "await": "await_promotion", "remove": "remove_stable"}.get(kind, kind)
        elapsed = float(event.data.get("elapsed_s", 0.0) or 0.0)
        self._observe("step_seconds", STEP_BUCKETS, _labels(kind=kind), elapsed)
        self._count(
            "step_platform_seconds", _labels(kind=kind), float(event.data.get("platform_s", 0.0) or 0.0)
        )

    def _on_measurement(self, event: Event, record: Record | None) -> None:
        if record is None or "verdict" not in event.data:
            return
        verdict = str(event.data["verdict"])
        self._count("judgements", _labels(environment=record.environment, verdict=verdict))
        target = (record.service, record.environment)
        self.last_judgement[target] = (dict(event.data), self._strategies.get(record.deployment_id))

    def _on_finished(self, event: Event, record: Record | None) -> None:
        if record is None or record.outcome is not None:
            return
        record.outcome = str(event.data.get("outcome"))
        record.finished_at = event.at
        labels = _labels(environment=record.environment, strategy=record.strategy, outcome=record.outcome)
        self._count("finished", labels)
        self._observe("duration", DURATION_BUCKETS, labels, event.at - record.submitted_at)
        self._weights(record, event.data.get("weights"))
        target = (record.service, record.environment)
        if record.outcome == Phase.SUCCEEDED.value:
            self.live[target] = record.deployment_id
            if record.commit_time is not None:
                self._observe(
                    "lead_time",
                    LEAD_BUCKETS,
                    _labels(environment=record.environment),
                    event.at - record.commit_time,
                )
        record.restore_s = self._restore_time(record)
        if record.restore_s is not None:
            self._observe(
                "restore", RESTORE_BUCKETS, _labels(environment=record.environment), record.restore_s
            )

    def _restore_time(self, record: Record) -> float | None:
        """How long this deployment took to restore service, if it restored (or ended a failure)."""
        assert record.finished_at is not None
        target = (record.service, record.environment)
        if record.outcome == Phase.FAILED.value:
            self.unrestored.setdefault(target, record.finished_at)
        if record.outcome == Phase.ROLLED_BACK.value and record.rollback_at is not None:
            return record.finished_at - record.rollback_at
        if record.outcome != Phase.SUCCEEDED.value:
            return None
        failed_at = self.unrestored.pop(target, None)
        if record.restores is not None:
            return record.finished_at - min(record.submitted_at, failed_at or record.submitted_at)
        return None if failed_at is None else record.finished_at - failed_at

    def _on_note(self, event: Event, record: Record | None) -> None:
        match = _REDEPLOY_NOTE.match(str(event.data.get("message", "")))
        if record is None or match is None:
            return
        record.restores = match.group(1)
        undone = self.records.get(match.group(1))
        if undone is not None:
            undone.undone = True

    def _on_hook(self, event: Event, record: Record | None) -> None:
        labels = _labels(type=str(event.data.get("type", "")), outcome=str(event.data.get("outcome", "")))
        self._count("hook_answers", labels)

    def _on_audit(self, event: Event, record: Record | None) -> None:
        action = str(event.data.get("action", "audit"))
        self._count("audit_entries", _labels(action=action))
        if action == "role_refused":
            self._count("refusals", _labels(environment=str(event.data.get("environment") or "*")))
        elif action == "alert_sent":
            labels = _labels(
                kind=str(event.data.get("kind", "")), severity=str(event.data.get("severity", ""))
            )
            self._count("alerts_sent", labels)
        elif action == "checkpoint":
            self.last_checkpoint = (event.at, event.seq)

    def _on_compliance(self, event: Event, record: Record | None) -> None:
        result = event.data.get("result") or {}
        environment = str(result.get("environment") or (record.environment if record else ""))
        passed = bool(event.data.get("passed"))
        self._count(
            "compliance_checks", _labels(environment=environment, result="passed" if passed else "failed")
        )
        if isinstance(result.get("score"), int | float):
            self.compliance_score[environment] = float(result["score"])

    def _on_environment_status(self, event: Event, record: Record | None) -> None:
        environment = str(event.data.get("environment") or event.deployment_id.split(":", 1)[-1])
        self.environment_health[environment] = 1.0 if event.data.get("status") == "ready" else 0.0

    def _on_drift(self, event: Event, record: Record | None) -> None:
        environment = record.environment if record else ""
        crash = "true" if event.data.get("crash_loop") else "false"
        self._count("drift", _labels(environment=environment, crash_loop=crash))

    # ------------------------------------------------------------------------------ reading
    def families(self, now: float) -> list[Family]:
        return [*self._counter_families(), *self._histogram_families(), *self._gauge_families(now)]

    def _counter_families(self) -> list[Family]:
        specs = [
            (
                "submitted",
                "orchestrator_deployments_submitted",
                "Deployments submitted",
                ("environment", "strategy"),
            ),
            (
                "finished",
                "orchestrator_deployments_finished",
                "Deployments ended, by outcome",
                ("environment", "strategy", "outcome"),
            ),
            ("rollbacks", "orchestrator_rollbacks", "Rollbacks, by trigger", ("environment", "trigger")),
            (
                "judgements",
                "orchestrator_analysis_judgements",
                "Analysis judgements",
                ("environment", "verdict"),
            ),
            ("hook_answers", "orchestrator_hook_gate_answers", "Gating hooks' answers", ("type", "outcome")),
            ("alerts_sent", "orchestrator_alerts_sent", "Alerts sent (audit trail)", ("kind", "severity")),
            ("audit_entries", "orchestrator_audit_entries", "Audit entries, by action", ("action",)),
            ("refusals", "orchestrator_access_refusals", "Calls refused for their role", ("environment",)),
            (
                "compliance_checks",
                "orchestrator_compliance_checks",
                "Compliance gate results",
                ("environment", "result"),
            ),
            ("drift", "orchestrator_drift_findings", "Supervision findings", ("environment", "crash_loop")),
            (
                "step_platform_seconds",
                "orchestrator_step_platform_seconds",
                "Seconds of strategy steps spent inside platform calls",
                ("kind",),
            ),
        ]
        families = []
        for key, name, text, labels in specs:
            values = dict(self.counters.get(key, {}))
            if key == "compliance_checks":  # every configured environment, also before its first check
                for environment in self.compliance_levels:
                    for result in ("passed", "failed"):
                        values.setdefault(_labels(environment=environment, result=result), 0.0)
            families.append(Family(f"{name}_total", "counter", text, labels, values=values))
        families.append(
            Family(
                "orchestrator_journal_events_total", "counter", "Journal events", (), {(): float(self.seq)}
            )
        )
        return families

    def _histogram_families(self) -> list[Family]:
        specs = [
            (
                "duration",
                "orchestrator_deployment_duration_seconds",
                "Submission to end",
                ("environment", "strategy", "outcome"),
            ),
            ("step_seconds", "orchestrator_step_duration_seconds", "Wall time of strategy steps", ("kind",)),
            (
                "lead_time",
                "orchestrator_dora_lead_time_seconds",
                "Commit (or build) to live",
                ("environment",),
            ),
            (
                "restore",
                "orchestrator_dora_time_to_restore_seconds",
                "Failure to service restored",
                ("environment",),
            ),
        ]
        return [
            Family(name, "histogram", text, labels, histograms=dict(self.histograms.get(key, {})))
            for key, name, text, labels in specs
        ]

    def _gauge_families(self, now: float) -> list[Family]:
        return [
            *self._load_gauges(),
            self._success_ratio(),
            self._weight_gauge(),
            *self._environment_gauges(),
            *self._analysis_gauges(),
            *self._compliance_gauges(now),
            *self._dora_gauges(now),
        ]

    def _load_gauges(self) -> list[Family]:
        active = [r for r in self.records.values() if r.outcome is None]
        by_phase: Counter[Labels] = Counter(_labels(environment=r.environment, phase=r.phase) for r in active)
        running = sum(1 for r in active if r.admitted)
        phases = {k: float(v) for k, v in by_phase.items()}
        return [
            _gauge("orchestrator_deployments_active", "Active deployments by phase", (*ENV, "phase"), phases),
            _gauge("orchestrator_deployments_running", "Deployments running", (), {(): float(running)}),
            _gauge(
                "orchestrator_deployments_queued",
                "Deployments waiting",
                (),
                {(): float(len(active) - running)},
            ),
        ]

    def _success_ratio(self) -> Family:
        ended: Counter[str] = Counter()
        succeeded: Counter[str] = Counter()
        for record in self.records.values():
            if record.outcome in CHANGE_OUTCOMES:
                ended[record.environment] += 1
                succeeded[record.environment] += record.outcome == Phase.SUCCEEDED.value
        values = {_labels(environment=e): succeeded[e] / n for e, n in ended.items()}
        return Family(
            "orchestrator_deployment_success_ratio",
            "gauge",
            "Succeeded / ended (not aborted)",
            ("environment",),
            values,
        )

    def _weight_gauge(self) -> Family:
        values: dict[Labels, float] = {}
        for (service, environment), weights in self.weights.items():
            versions = self.versions.get((service, environment), {})
            for revision, weight in weights.items():
                labels = _labels(
                    service=service,
                    environment=environment,
                    revision=revision,
                    version=versions.get(revision, revision),
                )
                values[labels] = float(weight)
        return Family(
            "orchestrator_traffic_weight_percent", "gauge", "Traffic weight per revision",
            ("service", "environment", "revision", "version"), values,
        )  # fmt: skip

    def _environment_gauges(self) -> list[Family]:
        live: Counter[str] = Counter(environment for _, environment in self.live)
        environments = set(self.compliance_levels) | set(live)
        healthy = {_labels(environment=e): v for e, v in self.environment_health.items()}
        services = {_labels(environment=e): float(live[e]) for e in environments}
        return [
            _gauge("orchestrator_environment_healthy", "1 when its last status was ready", ENV, healthy),
            _gauge("orchestrator_environment_live_services", "Services live in it", ENV, services),
        ]

    def _analysis_gauges(self) -> list[Family]:
        from engine.views import judgement_checks

        value: dict[Labels, float] = {}
        bound: dict[Labels, float] = {}
        for (service, environment), (data, strategy) in self.last_judgement.items():
            for check in judgement_checks(data, strategy):
                labels = _labels(service=service, environment=environment, metric=check.metric)
                if check.value is not None:
                    value[labels] = check.value
                for which, limit in (("success", check.success), ("failure", check.failure)):
                    if limit is not None:
                        bound[(*labels, ("bound", which))] = limit
        names = ("service", "environment", "metric")
        return [
            _gauge("orchestrator_analysis_last_value", "Latest judged figure of the candidate", names, value),
            _gauge("orchestrator_analysis_threshold", "Its thresholds", (*names, "bound"), bound),
        ]

    def _compliance_gauges(self, now: float) -> list[Family]:
        levels = {_labels(environment=e, level=level): 1.0 for e, level in self.compliance_levels.items()}
        scores = {_labels(environment=e): s for e, s in self.compliance_score.items()}
        families = [
            _gauge("orchestrator_compliance_level_info", "Configured level", (*ENV, "level"), levels),
            _gauge("orchestrator_compliance_score_percent", "Latest compliance gate score", ENV, scores),
        ]
        if self.last_checkpoint is not None:
            at, seq = self.last_checkpoint
            age: dict[Labels, float] = {(): now - at}
            unsigned: dict[Labels, float] = {(): float(self.seq - seq)}
            families.append(
                _gauge("orchestrator_audit_checkpoint_age_seconds", "Since the last one", (), age)
            )
            families.append(
                _gauge("orchestrator_audit_unsigned_events", "After the last checkpoint", (), unsigned)
            )
        return families

    def _dora_gauges(self, now: float) -> list[Family]:
        since = now - self.dora_window_s
        days = self.dora_window_s / DAY_S
        frequency: dict[Labels, float] = {}
        lead: dict[Labels, float] = {}
        failure: dict[Labels, float] = {}
        restore: dict[Labels, float] = {}
        recent = [r for r in self.records.values() if r.finished_at is not None and r.finished_at >= since]
        for environment in sorted({r.environment for r in recent} | set(self.compliance_levels)):
            mine = [r for r in recent if r.environment == environment]
            labels = _labels(environment=environment)
            live = [r for r in mine if r.outcome == Phase.SUCCEEDED.value]
            frequency[labels] = len(live) / days
            leads = [
                r.finished_at - r.commit_time for r in live if r.commit_time is not None and r.finished_at
            ]
            if leads:
                lead[labels] = statistics.median(leads)
            changes = [r for r in mine if r.outcome in CHANGE_OUTCOMES and r.restores is None]
            if changes:
                failed = [r for r in changes if r.outcome != Phase.SUCCEEDED.value or r.undone]
                failure[labels] = len(failed) / len(changes)
            times = [r.restore_s for r in mine if r.restore_s is not None]
            if times:
                restore[labels] = statistics.median(times)
        return [
            _gauge("orchestrator_dora_deployment_frequency_per_day", "Live per day (window)", ENV, frequency),
            _gauge("orchestrator_dora_lead_time_median_seconds", "Median commit to live (window)", ENV, lead),
            _gauge("orchestrator_dora_change_failure_rate", "Failed / all changes (window)", ENV, failure),
            _gauge("orchestrator_dora_time_to_restore_median_seconds", "Median (window)", ENV, restore),
        ]


# The phase an active deployment shows after an event of these kinds (other kinds leave it as it was).
_PHASE_AFTER = {
    EventKind.ADMITTED.value: Phase.PROGRESSING.value,
    EventKind.PAUSED.value: Phase.PAUSED.value,
    EventKind.RESUMED.value: Phase.PROGRESSING.value,
    EventKind.PROMOTE_REQUESTED.value: Phase.PROGRESSING.value,
    EventKind.ROLLBACK_STARTED.value: Phase.ROLLING_BACK.value,
    "approval_requested": "awaiting_approval",
    "approved": Phase.QUEUED.value,
}

_HANDLERS = {
    EventKind.SUBMITTED.value: DeploymentMetrics._on_submitted,
    EventKind.PLANNED.value: DeploymentMetrics._on_planned,
    EventKind.WEIGHTS_SET.value: DeploymentMetrics._on_weights,
    EventKind.ROLLBACK_REQUESTED.value: DeploymentMetrics._on_rollback,
    EventKind.ROLLBACK_STARTED.value: DeploymentMetrics._on_rollback,
    EventKind.STEP_COMPLETED.value: DeploymentMetrics._on_step,
    EventKind.MEASUREMENT.value: DeploymentMetrics._on_measurement,
    EventKind.FINISHED.value: DeploymentMetrics._on_finished,
    EventKind.NOTE.value: DeploymentMetrics._on_note,
    EventKind.HOOK.value: DeploymentMetrics._on_hook,
    EventKind.AUDIT.value: DeploymentMetrics._on_audit,
    "compliance_checked": DeploymentMetrics._on_compliance,
    "environment_status": DeploymentMetrics._on_environment_status,
    "drift": DeploymentMetrics._on_drift,
}
