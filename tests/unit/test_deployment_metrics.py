"""Deployment and DORA metrics folded from the journal: real reconciler runs on a fake platform and hand-made
event streams, with a fake clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.deployment_metrics import DAY_S, DeploymentMetrics, Family, commit_time
from engine.journal import Journal
from engine.models import Artifact, DeploymentRequest, PlatformConfig, Strategy
from engine.state import EventKind
from tests.unit.fakes import FakeClock, submit_admitted
from tests.unit.test_reconciler import CANARY
from tests.unit.test_reconciler import World as ReconcilerWorld


def by_name(families: list[Family]) -> dict[str, Family]:
    return {f.name: f for f in families}


def value(families: dict[str, Family], name: str, **labels: str) -> float | None:
    return families[name].values.get(tuple(labels.items()))


class Stream:
    """Deployments written straight to a journal, at times the test chooses."""

    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock(start=1_700_000_000.0)
        self.journal = Journal(tmp_path / "journal.db", clock=self.clock.now)
        self.count = 0

    def deployment(self, version: str, environment: str = "production", commit: str | None = None) -> str:
        self.count += 1
        metadata = {"commitTime": commit} if commit else {}
        return submit_admitted(
            self.journal, f"web-{self.count}", version, {"type": "canary"}, environment, metadata
        )

    def at(self, seconds: float) -> None:
        self.clock.t = 1_700_000_000.0 + seconds

    def append(self, deployment_id: str, kind: EventKind, **data: Any) -> None:
        self.journal.append(deployment_id, kind, data)

    def metrics(self) -> DeploymentMetrics:
        metrics = DeploymentMetrics({"production": "strict", "staging": "enhanced"}, dora_window_s=7 * DAY_S)
        metrics.fold(self.journal.events())
        return metrics


def test_commit_time_from_metadata() -> None:
    assert commit_time({"commitTime": "1700000000"}) == 1_700_000_000.0
    assert commit_time({"commitTime": "1700000000123"}) == 1_700_000_000.123
    assert commit_time({"buildTime": "2023-11-14T22:13:20Z"}) == 1_700_000_000.0
    assert commit_time({"commitTime": "yesterday", "buildTime": "1700000000"}) == 1_700_000_000.0
    assert commit_time({"version": "1"}) is None


def test_dora_metrics(tmp_path: Path) -> None:
    stream = Stream(tmp_path)
    good = stream.deployment("1.0.0", commit="1699999000")  # committed 1000 s before it was submitted
    stream.at(300)
    stream.append(good, EventKind.FINISHED, outcome="succeeded")
    stream.at(1000)
    bad = stream.deployment("2.0.0", commit="1700000900")
    stream.at(1100)
    stream.append(bad, EventKind.ROLLBACK_REQUESTED, trigger="metrics", reason="errors")
    stream.at(1102)
    stream.append(bad, EventKind.FINISHED, outcome="rolled_back")  # restored in 2 s
    stream.at(2000)
    broken = stream.deployment("3.0.0")
    stream.at(2100)
    stream.append(broken, EventKind.FINISHED, outcome="failed")
    stream.at(2200)
    fixed = stream.deployment("3.0.1", commit="1700002150")
    stream.at(2500)
    stream.append(fixed, EventKind.FINISHED, outcome="succeeded")  # restores the failure of 2100: 400 s
    stream.at(3000)
    undone = stream.deployment("4.0.0")
    stream.at(3100)
    stream.append(undone, EventKind.FINISHED, outcome="succeeded")
    redeploy = stream.deployment("3.0.1")  # a person rolled 4.0.0 back: the queen redeploys 3.0.1
    stream.append(redeploy, EventKind.NOTE, message=f"rollback of {undone}: bad UX")
    stream.at(3160)
    stream.append(redeploy, EventKind.FINISHED, outcome="succeeded")  # restored in 60 s
    aborted = stream.deployment("5.0.0")
    stream.append(aborted, EventKind.FINISHED, outcome="aborted")
    stream.deployment("6.0.0", environment="staging")  # still running
    families = by_name(stream.metrics().families(stream.clock.t))
    production = {"environment": "production"}
    # Deployments live per day over the 7-day window: good, fixed, undone and the redeployment.
    assert value(families, "orchestrator_dora_deployment_frequency_per_day", **production) == 4 / 7
    # Lead times: 1300 s (good) and 350 s (fixed); the median of the two.
    assert value(families, "orchestrator_dora_lead_time_median_seconds", **production) == (1300 + 350) / 2
    assert (
        families["orchestrator_dora_lead_time_seconds"].histograms[(("environment", "production"),)].count
        == 2
    )
    # Changes: good, bad, broken, fixed, undone (not the redeployment, not the aborted one); failed: bad,
    # broken, and undone (rolled back later).
    assert value(families, "orchestrator_dora_change_failure_rate", **production) == 3 / 5
    restore = families["orchestrator_dora_time_to_restore_seconds"].histograms[
        (("environment", "production"),)
    ]
    assert restore.count == 3 and restore.total == 2 + 400 + 60
    assert (
        value(families, "orchestrator_dora_time_to_restore_median_seconds", **production) == 60
    )  # 2, 60, 400
    assert value(families, "orchestrator_dora_deployment_frequency_per_day", environment="staging") == 0


def test_deployment_metrics_of_real_runs(tmp_path: Path) -> None:
    world = ReconcilerWorld(str(tmp_path / "journal.db"))
    world.deploy_stable()
    assert world.run(world.submit("2.0.0", CANARY)).value == "succeeded"
    world.platform.error_rates["3-0-0"] = 0.5
    assert world.run(world.submit("3.0.0", CANARY)).value == "rolled_back"
    metrics = DeploymentMetrics({"staging": "enhanced"})
    metrics.fold(world.journal.events())
    families = by_name(metrics.families(world.clock.now()))
    staging = {"environment": "staging"}
    assert (
        value(
            families,
            "orchestrator_deployments_finished_total",
            **staging,
            strategy="canary",
            outcome="succeeded",
        )
        == 1
    )
    assert (
        value(
            families,
            "orchestrator_deployments_finished_total",
            **staging,
            strategy="canary",
            outcome="rolled_back",
        )
        == 1
    )
    assert (
        value(
            families,
            "orchestrator_deployments_finished_total",
            **staging,
            strategy="rolling",
            outcome="succeeded",
        )
        == 1
    )
    assert value(families, "orchestrator_rollbacks_total", **staging, trigger="metrics") == 1
    assert value(families, "orchestrator_deployment_success_ratio", **staging) == 2 / 3
    assert value(families, "orchestrator_analysis_judgements_total", **staging, verdict="success") == 3
    assert value(families, "orchestrator_analysis_judgements_total", **staging, verdict="failure") == 1
    # Traffic is back on 2.0.0 alone; weights are labelled with the version people gave.
    weights = families["orchestrator_traffic_weight_percent"].values
    assert weights == {
        (("service", "web"), ("environment", "staging"), ("revision", "2-0-0"), ("version", "2.0.0")): 100
    }
    durations = families["orchestrator_deployment_duration_seconds"].histograms
    assert sum(h.count for h in durations.values()) == 3
    assert value(families, "orchestrator_deployments_running") == 0
    assert value(families, "orchestrator_deployments_queued") == 0
    last = value(families, "orchestrator_analysis_last_value", service="web", **staging, metric="errorRate")
    assert last is not None and last > 5
    failure = families["orchestrator_analysis_threshold"].values
    assert (
        failure[
            (("service", "web"), ("environment", "staging"), ("metric", "errorRate"), ("bound", "failure"))
        ]
        == 5.0
    )
    steps = families["orchestrator_step_duration_seconds"].histograms
    assert steps[(("kind", "analyze"),)].count == 3  # the good canary's; the bad one never completed one


def test_folding_again_gives_the_same_figures(tmp_path: Path) -> None:
    """What a restarted queen computes from the journal is what the old one had: nothing lives in memory."""
    world = ReconcilerWorld(str(tmp_path / "journal.db"))
    world.deploy_stable()
    incremental = DeploymentMetrics({"staging": "enhanced"})
    incremental.fold(world.journal.events())
    deployment = world.submit("2.0.0", CANARY)
    reconciler = world.reconciler(deployment)
    for _ in range(10_000):
        incremental.fold(world.journal.events(after_seq=incremental.seq))
        delay = reconciler.reconcile()
        if delay is None:
            break
        world.clock.sleep(delay)
    incremental.fold(world.journal.events(after_seq=incremental.seq))
    fresh = DeploymentMetrics({"staging": "enhanced"})
    fresh.fold(world.journal.events())
    now = world.clock.now()
    assert [(f.name, f.values, f.histograms) for f in incremental.families(now)] == [
        (f.name, f.values, f.histograms) for f in fresh.families(now)
    ]


def test_queue_and_phases(tmp_path: Path) -> None:
    stream = Stream(tmp_path)
    running = stream.deployment("1.0.0")
    stream.append(running, EventKind.PAUSED, reason="look")
    request = DeploymentRequest(
        artifact=Artifact(name="api", version="1.0.0"),
        strategy=Strategy(type="canary"),
        environment="production",
        platform=PlatformConfig(type="local"),
    )
    stream.journal.submit("api-1", request, actor="test")
    families = by_name(stream.metrics().families(stream.clock.t))
    assert value(families, "orchestrator_deployments_running") == 1
    assert value(families, "orchestrator_deployments_queued") == 1
    assert value(families, "orchestrator_deployments_active", environment="production", phase="paused") == 1
    assert value(families, "orchestrator_deployments_active", environment="production", phase="queued") == 1
    # Every configured environment has its compliance counters, at 0 before its first check.
    assert (
        value(families, "orchestrator_compliance_checks_total", environment="staging", result="failed") == 0
    )
    assert (
        value(families, "orchestrator_compliance_level_info", environment="production", level="strict") == 1
    )


def test_audit_hooks_compliance_environment_status_and_drift(tmp_path: Path) -> None:
    stream = Stream(tmp_path)
    deployment = stream.deployment("1.0.0")
    stream.append(deployment, EventKind.HOOK, type="confirm-rollout", outcome="held")
    stream.append(deployment, EventKind.COMPLIANCE_CHECKED, passed=False, result={"score": 80.5})
    stream.append(deployment, EventKind.DRIFT, crash_loop=True)
    journal = stream.journal
    journal.append_event("audit", EventKind.AUDIT, {"action": "role_refused", "environment": "production"})
    journal.append_event(
        "audit", EventKind.AUDIT, {"action": "alert_sent", "kind": "failed", "severity": "critical"}
    )
    stream.at(50)
    checkpoint = journal.append_event("audit", EventKind.AUDIT, {"action": "checkpoint"})
    journal.append_event("environment:staging", EventKind.ENVIRONMENT_STATUS, {"status": "degraded"})
    journal.append_event(
        "environment:qa", EventKind.ENVIRONMENT_STATUS, {"status": "ready", "environment": "qa"}
    )
    metrics = stream.metrics()
    families = by_name(metrics.families(now=1_700_000_100.0))
    hooks = value(families, "orchestrator_hook_gate_answers_total", type="confirm-rollout", outcome="held")
    assert hooks == 1
    assert value(families, "orchestrator_access_refusals_total", environment="production") == 1
    assert value(families, "orchestrator_alerts_sent_total", kind="failed", severity="critical") == 1
    assert value(families, "orchestrator_audit_entries_total", action="checkpoint") == 1
    drift = value(families, "orchestrator_drift_findings_total", environment="production", crash_loop="true")
    assert drift == 1
    assert value(families, "orchestrator_compliance_score_percent", environment="production") == 80.5
    assert value(families, "orchestrator_environment_healthy", environment="staging") == 0.0
    assert value(families, "orchestrator_environment_healthy", environment="qa") == 1.0
    assert value(families, "orchestrator_audit_checkpoint_age_seconds") == 50.0
    assert value(families, "orchestrator_audit_unsigned_events") == metrics.seq - checkpoint == 2
