"""End to end on the embedded default: a local Ray, real processes behind a real HAProxy, real traffic."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import ray

from adapters import create_platform
from engine.admission import RUNNER_ASSIGNMENT
from engine.models import Phase, RollbackTrigger, Target
from engine.reconciler import CANDIDATE_RESTARTS
from engine.state import EventKind
from examples.traffic import TrafficGenerator
from tests.integration.conftest import canary, orch_journal, sample_artifact

pytestmark = pytest.mark.integration
ENV = "development"


def first_revision(orch: Any, service: str, replicas: int = 2) -> Any:
    result = orch.deploy(
        sample_artifact(service, "1.0.0"), {"type": "rolling", "replicas": replicas}, ENV, timeout_s=120
    )
    assert result.success, result.status
    assert result.status.address and result.status.address.startswith("http://127.0.0.1:")
    return result


@contextmanager
def live_traffic(address: str, rps: float = 40) -> Iterator[TrafficGenerator]:
    traffic = TrafficGenerator(address + "/", rps=rps, threads=4, max_seconds=300).start()
    try:
        yield traffic
    finally:
        traffic.stop()


def platform_revisions(orch: Any, service: str) -> dict[str, int]:
    platform = create_platform(orch.config.platform("local"))
    try:
        return {
            r.revision: r.running_replicas
            for r in platform.list_revisions(Target(service=service, environment=ENV))
        }
    finally:
        platform.close()


def more_traffic(traffic: TrafficGenerator, requests: int = 40, timeout_s: float = 60) -> Any:
    """The counts once at least ``requests`` more requests have been answered (or failed) than now."""
    start = TrafficGenerator.total(traffic.snapshot())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counts = traffic.snapshot()
        if TrafficGenerator.total(counts) >= start + requests:
            return counts
        time.sleep(0.1)
    raise AssertionError(f"fewer than {requests} requests in {timeout_s}s: {traffic.snapshot()}")


def wait_for(orch: Any, deployment_id: str, predicate: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = orch.status(deployment_id)
        if predicate(status):
            return status
        assert not status.phase.terminal, f"ended early: {status}"
        time.sleep(0.2)
    raise AssertionError(f"condition not reached in {timeout_s}s: {orch.status(deployment_id)}")


def test_good_canary_is_promoted_under_live_traffic(orchestrator: Any) -> None:
    first = first_revision(orchestrator, "canary-good")
    with live_traffic(first.status.address) as traffic:
        result = orchestrator.deploy(sample_artifact("canary-good", "2.0.0"), canary(), ENV, timeout_s=120)
        counts = more_traffic(traffic, 40)  # after the old revision's removal, too
    assert result.success, result.status
    assert result.status.weights == {"2-0-0": 100}
    assert platform_revisions(orchestrator, "canary-good") == {"2-0-0": 2}
    assert TrafficGenerator.total(counts, "2.0.0") > 50
    assert TrafficGenerator.failed(counts) == 0
    weights = [
        e.data["weights"]
        for e in orch_journal(orchestrator).events(result.deployment_id)
        if e.kind is EventKind.WEIGHTS_SET
    ]
    assert [w.get("2-0-0") for w in weights] == [20, 50, 80, 100]


def test_bad_canary_is_rolled_back_automatically(orchestrator: Any) -> None:
    first = first_revision(orchestrator, "canary-bad")
    with live_traffic(first.status.address) as traffic:
        result = orchestrator.deploy(
            sample_artifact("canary-bad", "2.0.0", error_rate=0.5), canary(), ENV, timeout_s=120
        )
        before = more_traffic(traffic, 8)  # requests in flight at the switch have been answered
        after = more_traffic(traffic, 60)
    assert result.status.phase is Phase.ROLLED_BACK, result.status
    assert result.status.rollback_trigger is RollbackTrigger.METRICS
    assert "error rate" in (result.status.rollback_reason or "")
    # The runner proposed it; the rollback system (DO-004) decided and recorded it.
    requests = rollback_requests(orchestrator, result.deployment_id)
    assert [(e.actor, e.data["proposed_by"]) for e in requests] == [("DO-004", result.status.runner)]
    assert result.status.weights == {"1-0-0": 100}
    assert platform_revisions(orchestrator, "canary-bad") == {"1-0-0": 2}
    # After the rollback every request goes to the stable revision and none fails.
    assert TrafficGenerator.total(after, "2.0.0") == TrafficGenerator.total(before, "2.0.0")
    assert TrafficGenerator.failed(after, "1.0.0") == 0


def rollback_requests(orch: Any, deployment_id: str) -> list[Any]:
    events = orch_journal(orch).events(deployment_id)
    return [e for e in events if e.kind is EventKind.ROLLBACK_REQUESTED]


def test_a_stalled_rollback_system_does_not_hold_a_rollback_back(orchestrator: Any) -> None:
    """DO-004 stopped (SIGSTOP: alive but mute): the runner records the rollback itself after its short
    deadline and says so; the bad canary is rolled back all the same."""
    first = first_revision(orchestrator, "mute-do4")
    rollback_system = orchestrator.worker("DO-004")
    pid = ray.get(rollback_system.pid.remote(), timeout=30)
    with live_traffic(first.status.address):
        deployment_id = orchestrator.submit(
            sample_artifact("mute-do4", "2.0.0", error_rate=0.5), canary(), ENV
        )
        wait_for(orchestrator, deployment_id, lambda s: s.weights.get("2-0-0") == 20)
        os.kill(pid, signal.SIGSTOP)
        try:
            result = orchestrator.wait(deployment_id, 120)
        finally:
            os.kill(pid, signal.SIGCONT)
    assert result.status.phase is Phase.ROLLED_BACK, result.status
    assert result.status.weights == {"1-0-0": 100}
    [request] = rollback_requests(orchestrator, deployment_id)
    assert request.actor == result.status.runner
    assert request.data["fallback"].startswith("DO-004 did not answer (GetTimeoutError")
    # DO-004, woken, finds the decision made and records nothing more.
    assert ray.get(rollback_system.ping.remote(), timeout=60) == "RollbackSystemImpl"
    assert len(rollback_requests(orchestrator, deployment_id)) == 1


def test_blue_green_switches_without_failed_requests(orchestrator: Any) -> None:
    first = first_revision(orchestrator, "bg-switch")
    strategy = {
        "type": "blue_green",
        "replicas": 2,
        "blueGreen": {
            "validationDuration": 1000,
            "switchTrafficPercentage": 50,
            "switchStepDuration": 1000,
            "scaleDownDelay": 1000,
            "smokeRequests": 10,
        },
    }
    with live_traffic(first.status.address) as traffic:
        result = orchestrator.deploy(sample_artifact("bg-switch", "2.0.0"), strategy, ENV, timeout_s=120)
        counts = more_traffic(traffic, 40)
    assert result.success, result.status
    assert TrafficGenerator.failed(counts) == 0
    assert TrafficGenerator.total(counts, "2.0.0") > 0
    assert platform_revisions(orchestrator, "bg-switch") == {"2-0-0": 2}


def test_blue_green_switch_back_is_instant_while_blue_is_kept(orchestrator: Any) -> None:
    first = first_revision(orchestrator, "bg-back")
    strategy = {
        "type": "blue_green",
        "replicas": 2,
        "blueGreen": {"validationDuration": 500, "scaleDownDelay": 60_000, "smokeRequests": 5},
    }
    with live_traffic(first.status.address) as traffic:
        deployment_id = orchestrator.submit(sample_artifact("bg-back", "2.0.0"), strategy, ENV)
        wait_for(orchestrator, deployment_id, lambda s: s.weights.get("2-0-0") == 100)
        started = time.monotonic()
        orchestrator.worker("DO-002")  # the blue-green engine is alive and reachable
        status = orchestrator.trigger_rollback(deployment_id, reason="switch back")  # through DO-004
        result = orchestrator.wait(deployment_id, 60)
        took = time.monotonic() - started
    assert status.rollback_trigger is RollbackTrigger.MANUAL
    assert result.status.phase is Phase.ROLLED_BACK
    assert result.status.weights == {"1-0-0": 100}
    assert took < 30, "switch back waits for nothing but the traffic change"
    assert TrafficGenerator.failed(traffic.snapshot()) == 0
    assert platform_revisions(orchestrator, "bg-back") == {"1-0-0": 2}


def test_rolling_update_without_failed_requests(orchestrator: Any) -> None:
    first = first_revision(orchestrator, "rolling", replicas=3)
    with live_traffic(first.status.address) as traffic:
        result = orchestrator.deploy(
            sample_artifact("rolling", "2.0.0"), {"type": "rolling", "replicas": 3}, ENV, timeout_s=120
        )
        more_traffic(traffic, 40)
    assert result.success, result.status
    assert TrafficGenerator.failed(traffic.snapshot()) == 0
    assert platform_revisions(orchestrator, "rolling") == {"2-0-0": 3}
    deploys = [
        e.data["step"]
        for e in orch_journal(orchestrator).events(result.deployment_id)
        if e.kind is EventKind.STEP_COMPLETED and e.data["step"].startswith("deploy")
    ]
    assert deploys == [
        "deploy candidate x1",
        "deploy stable x2",
        "deploy candidate x2",
        "deploy stable x1",
        "deploy candidate x3",
    ]


def test_pause_resume_promote_and_abort(orchestrator: Any) -> None:
    first = first_revision(orchestrator, "controls")
    step_s = 3.0
    with live_traffic(first.status.address):
        deployment_id = orchestrator.submit(
            sample_artifact("controls", "2.0.0"), canary(step_ms=int(step_s * 1000), steps=4), ENV
        )
        wait_for(orchestrator, deployment_id, lambda s: s.weights.get("2-0-0") == 20)
        paused = orchestrator.pause(deployment_id)
        assert paused.phase is Phase.PAUSED
        _held_while_paused(orchestrator, deployment_id, paused, hold_s=2 * step_s)
        assert orchestrator.resume(deployment_id).phase is Phase.PROGRESSING
        resumed = orchestrator.wait(deployment_id, 120)
        assert resumed.success, resumed.status
        assert resumed.status.weights == {"2-0-0": 100}
        slow = canary(step_ms=60_000, steps=4)
        promoted_id = orchestrator.submit(sample_artifact("controls", "3.0.0"), slow, ENV)
        wait_for(orchestrator, promoted_id, lambda s: s.weights.get("3-0-0") == 20)
        orchestrator.promote(promoted_id, full=True)
        promoted = orchestrator.wait(promoted_id, 60)  # the rest of its four 60 s steps skipped
        assert promoted.success, promoted.status
        assert promoted.status.weights == {"3-0-0": 100}
        aborted_id = orchestrator.submit(sample_artifact("controls", "4.0.0"), slow, ENV)
        wait_for(orchestrator, aborted_id, lambda s: s.weights.get("4-0-0") == 20)
        orchestrator.abort(aborted_id, reason="wrong build")
        aborted = orchestrator.wait(aborted_id, 60)
    assert aborted.status.phase is Phase.ABORTED
    assert aborted.status.weights == {"3-0-0": 100}
    assert platform_revisions(orchestrator, "controls") == {"3-0-0": 2}
    with pytest.raises(ray.exceptions.RayTaskError, match="already ended"):
        orchestrator.resume(aborted_id)


def test_a_control_request_reaches_a_runner_waiting_between_checks(orchestrator: Any) -> None:
    """A runner waits between its checks with its main thread blocked (it takes no calls then): an abort must
    still reach it at once, not at its next check two minutes later."""
    first = first_revision(orchestrator, "waiting")
    with live_traffic(first.status.address):
        slow = canary(step_ms=120_000, steps=2, analysisInterval=120_000)
        deployment_id = orchestrator.submit(sample_artifact("waiting", "2.0.0"), slow, ENV)
        wait_for(orchestrator, deployment_id, lambda s: s.weights.get("2-0-0") == 20)
        orchestrator.abort(deployment_id, reason="seen before the next check")
        aborted = orchestrator.wait(deployment_id, 60)  # the next check would be 120 s away
    assert aborted.status.phase is Phase.ABORTED, aborted.status
    assert aborted.status.weights == {"1-0-0": 100}


def _held_while_paused(orch: Any, deployment_id: str, paused: Any, hold_s: float) -> None:
    """Watch a canary paused early in a step until ``hold_s`` (longer than the step) has passed since the
    pause: a runner ignoring the pause would have completed the step and moved the weights by then."""
    journal = orch_journal(orch)
    pause = max((e for e in journal.events(deployment_id) if e.kind is EventKind.PAUSED), key=lambda e: e.seq)
    assert paused.weights.get("2-0-0", 0) < 100
    deadline = time.monotonic() + 120
    while time.time() < pause.at + hold_s and time.monotonic() < deadline:
        status = orch.status(deployment_id)
        assert status.phase is Phase.PAUSED, status
        assert (status.weights, status.step_index) == (paused.weights, paused.step_index), status
        time.sleep(0.2)
    assert time.time() >= pause.at + hold_s, "the pause was not watched for long enough"
    since = [e.kind for e in journal.events(deployment_id) if e.seq > pause.seq]
    assert EventKind.WEIGHTS_SET not in since and EventKind.STEP_COMPLETED not in since, since


def _kill_while_running(orch: Any, service: str, revision: str, deployment_id: str) -> int:
    """SIGKILL the revision's replicas each time they are started again, until the deployment ends (60 s
    at most); the number of kills."""
    kills, deadline = 0, time.monotonic() + 60
    while time.monotonic() < deadline and not orch.status(deployment_id).phase.terminal:
        platform = create_platform(orch.config.platform("local"))
        replicas = platform.backend.list_replicas(Target(service=service, environment=ENV), revision)  # type: ignore[attr-defined]
        platform.close()
        for replica in replicas:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(replica.ident), signal.SIGKILL)
                kills += 1
        time.sleep(0.2)
    return kills


def test_health_failure_of_the_canary_rolls_back(orchestrator: Any) -> None:
    """A candidate whose replicas keep dying is rolled back (a replica killed once from outside is started
    again and judged on a fresh window: engine/reconciler.py CANDIDATE_RESTARTS)."""
    first = first_revision(orchestrator, "health")
    with live_traffic(first.status.address):
        deployment_id = orchestrator.submit(sample_artifact("health", "2.0.0"), canary(step_ms=60_000), ENV)
        status = wait_for(orchestrator, deployment_id, lambda s: s.weights.get("2-0-0") == 20)
        kills = _kill_while_running(orchestrator, "health", "2-0-0", deployment_id)
        result = orchestrator.wait(deployment_id, 60)
    assert status.candidate_revision == "2-0-0"
    assert result.status.phase is Phase.ROLLED_BACK
    assert result.status.rollback_trigger in (RollbackTrigger.HEALTH, RollbackTrigger.METRICS)
    assert result.status.weights == {"1-0-0": 100}
    restarts = [
        e for e in orch_journal(orchestrator).events(deployment_id) if e.data.get("candidate_restart")
    ]
    assert len(restarts) == CANDIDATE_RESTARTS and kills > CANDIDATE_RESTARTS


def _exactly_one_run(orch: Any, deployment_id: str) -> None:
    events = orch_journal(orch).events(deployment_id)
    kinds = [e.kind for e in events]
    assert kinds.count(EventKind.PLANNED) == 1
    assert kinds.count(EventKind.FINISHED) == 1
    assert kinds.count(EventKind.ADMITTED) == 1
    completed = [e.data["index"] for e in events if e.kind is EventKind.STEP_COMPLETED]
    assert completed == list(range(len(completed)))


def test_queen_killed_mid_canary_still_ends_once(orchestrator: Any) -> None:
    first = first_revision(orchestrator, "queen-kill")
    with live_traffic(first.status.address):
        deployment_id = orchestrator.submit(sample_artifact("queen-kill", "2.0.0"), canary(step_ms=2000), ENV)
        wait_for(orchestrator, deployment_id, lambda s: s.weights.get("2-0-0") == 20)
        ray.kill(orchestrator.queen, no_restart=False)
        result = orchestrator.wait(deployment_id, 120)
    assert result.success, result.status
    _exactly_one_run(orchestrator, deployment_id)
    assert platform_revisions(orchestrator, "queen-kill") == {"2-0-0": 2}


def test_runner_killed_mid_canary_resumes_and_ends_once(orchestrator: Any) -> None:
    first = first_revision(orchestrator, "runner-kill")
    with live_traffic(first.status.address):
        deployment_id = orchestrator.submit(
            sample_artifact("runner-kill", "2.0.0", error_rate=0.5), canary(step_ms=4000), ENV
        )
        wait_for(orchestrator, deployment_id, lambda s: s.step_index >= 1)
        # A running runner takes no calls (its main thread is in the run): its assignment names its pid.
        runner = orchestrator.status(deployment_id).runner
        assignment = orch_journal(orchestrator).record(RUNNER_ASSIGNMENT, str(runner))
        assert assignment is not None, runner
        pid = int(assignment["pid"])
        os.kill(pid, signal.SIGKILL)
        result = orchestrator.wait(deployment_id, 120)
    assert result.status.phase is Phase.ROLLED_BACK, result.status
    assert result.status.weights == {"1-0-0": 100}
    events = orch_journal(orchestrator).events(deployment_id)
    assert [e.kind for e in events].count(EventKind.FINISHED) == 1
    assert [e.kind for e in events].count(EventKind.PLANNED) == 1
    assert platform_revisions(orchestrator, "runner-kill") == {"1-0-0": 2}


def test_runners_go_back_to_the_pool_and_drive_the_next_deployment(orchestrator: Any) -> None:
    """A process start costs more CPU than a deployment's whole orchestration: runners are reused."""
    runners = []
    for version in ("1.0.0", "1.0.1", "1.0.2"):
        result = orchestrator.deploy(
            sample_artifact("pooled", version), {"type": "rolling", "replicas": 1}, ENV, timeout_s=120
        )
        assert result.success, result.status
        runners.append(result.status.runner)
    assert len(set(runners)) < len(runners), runners  # the pool holds 2: a third deployment reuses one
    history = orchestrator.history(service="pooled")
    assert [(s.target.service, s.candidate_revision or s.stable_revision, s.phase) for s in history] == [
        ("pooled", revision, Phase.SUCCEEDED) for revision in ("1-0-0", "1-0-1", "1-0-2")
    ]
    assigned = {r["deployment_id"] for r in orch_journal(orchestrator).records("runner")}
    assert not assigned & {s.deployment_id for s in history}  # every runner was freed


def test_fifteen_deployments_at_most_ten_at_once(orchestrator: Any) -> None:
    ids = [
        orchestrator.submit(
            sample_artifact(f"fleet-{i:02d}", "1.0.0"), {"type": "rolling", "replicas": 1}, ENV
        )
        for i in range(15)
    ]
    results = [orchestrator.wait(i, 300) for i in ids]
    assert all(r.success for r in results), [r.status for r in results if not r.success]
    journal = orch_journal(orchestrator)
    running, peak = set(), 0
    for event in journal.events():
        if event.deployment_id not in ids:
            continue
        if event.kind is EventKind.ADMITTED:
            running.add(event.deployment_id)
            peak = max(peak, len(running))
        if event.kind is EventKind.FINISHED:
            running.discard(event.deployment_id)
    assert peak <= 10
    assert len({r.deployment_id for r in results}) == 15
    assert all(journal.state(i).phase() is Phase.SUCCEEDED for i in ids)


def test_one_active_deployment_per_target(orchestrator: Any) -> None:
    first = first_revision(orchestrator, "one-target")
    with live_traffic(first.status.address):
        a = orchestrator.submit(sample_artifact("one-target", "2.0.0"), canary(step_ms=1500, steps=2), ENV)
        b = orchestrator.submit(sample_artifact("one-target", "3.0.0"), canary(step_ms=1500, steps=2), ENV)
        assert orchestrator.status(b).phase is Phase.QUEUED
        results = [orchestrator.wait(a, 120), orchestrator.wait(b, 120)]
    assert [r.success for r in results] == [True, True]
    journal = orch_journal(orchestrator)
    admitted_b = next(e.seq for e in journal.events(b) if e.kind is EventKind.ADMITTED)
    finished_a = next(e.seq for e in journal.events(a) if e.kind is EventKind.FINISHED)
    assert admitted_b > finished_a


def test_unknown_environment_and_platform_are_refused(orchestrator: Any) -> None:
    with pytest.raises(ray.exceptions.RayTaskError, match="unknown environment 'moon'"):
        orchestrator.submit(sample_artifact("refused", "1.0.0"), "canary", "moon")
    with pytest.raises(ValueError, match="unknown platform 'azure_functions'"):
        orchestrator.submit(sample_artifact("refused", "1.0.0"), "canary", ENV, {"type": "azure_functions"})
    with pytest.raises(ValueError, match=r"stepPercentage|step_percentage"):
        orchestrator.submit(sample_artifact("refused", "1.0.0"), "canary", ENV, stepPercentage=0)


def test_environment_health_is_monitored_in_parallel(orchestrator: Any) -> None:
    first = first_revision(orchestrator, "env-health")
    orchestrator.register_environment(
        {"name": "qa", "healthCheckInterval": 300, "healthCheckTimeout": 200, "unhealthyThreshold": 2}
    )
    dead = "http://127.0.0.1:9/health"
    monitors = orchestrator.monitor_environment_health("qa", [first.status.address + "/health", dead])
    assert monitors
    deadline = time.monotonic() + 30
    health = orchestrator.get_environment_health("qa")
    while time.monotonic() < deadline and all(e.healthy for m in health.monitors for e in m.endpoints):
        time.sleep(0.3)
        health = orchestrator.get_environment_health("qa")
    endpoints = {e.url: e for m in health.monitors for e in m.endpoints}
    assert endpoints[first.status.address + "/health"].healthy
    assert not endpoints[dead].healthy
    assert not health.healthy


def test_a_second_orchestrator_on_the_same_journal_is_refused(orchestrator: Any) -> None:
    import subprocess
    import sys

    from tests.integration.conftest import REPO

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    second = subprocess.run(
        [
            sys.executable,
            "orchestrator.py",
            "--config",
            str(orchestrator.config_path),
            "deploy",
            "--service",
            "intruder",
            "--version",
            "1.0.0",
            "--command",
            "true",
            "--strategy",
            "rolling",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert second.returncode == 2, second.stdout + second.stderr
    assert "driven by another orchestrator" in second.stderr
    assert all(s.request.artifact.name != "intruder" for s in orch_journal(orchestrator).deployments())


def _approve_staging_when_asked(erin: Any, stop: threading.Event) -> None:
    """Staging's workflow asks qa: erin approves whatever waits there (the queen admits it at once)."""
    while not stop.wait(0.5):
        for request in erin.approvals(environment="staging"):
            erin.approve(request.subject, "erin", "qa", "tested")


def test_pipeline_runs_its_stages_in_order(orchestrator: Any) -> None:
    from orchestrator import DeploymentOrchestrator

    stage = {"strategy": {"type": "rolling", "replicas": 1}}
    erin = DeploymentOrchestrator(
        config_path=orchestrator.config_path, token=orchestrator.issue_token("erin")
    )
    stop = threading.Event()
    approver = threading.Thread(target=_approve_staging_when_asked, args=(erin, stop), daemon=True)
    approver.start()
    try:
        status = orchestrator.run_pipeline(
            sample_artifact("pipe", "1.0.0"),
            [{**stage, "environment": "development"}, {**stage, "environment": "staging"}],
            timeout_s=180,
        )
    finally:
        stop.set()
        approver.join(timeout=30)
    assert status.state == "succeeded", status
    journal = orch_journal(orchestrator)
    first, second = (journal.state(d) for d in status.deployments)
    assert [first.request.environment, second.request.environment] == ["development", "staging"]
    assert first.phase() is Phase.SUCCEEDED and second.phase() is Phase.SUCCEEDED
    assert second.submitted_at >= (first.finished_at or 0)


def test_a_dead_domain_worker_is_recreated(orchestrator: Any) -> None:
    from actors.common import find_actor, worker_name

    canary_worker = orchestrator.worker("DO-003")
    ray.kill(canary_worker, no_restart=True)
    deadline = time.monotonic() + 30
    revived = None
    while time.monotonic() < deadline:
        handle = find_actor(worker_name("DO-003"), orchestrator.namespace)
        if handle is not None:
            try:
                revived = ray.get(handle.ping.remote(), timeout=10)
                break
            except ray.exceptions.RayActorError:
                pass
        time.sleep(0.5)
    assert revived == "CanaryControllerImpl"


def test_rolling_back_a_finished_deployment_restores_the_previous_revision(orchestrator: Any) -> None:
    first = first_revision(orchestrator, "undo")
    with live_traffic(first.status.address) as traffic:
        second = orchestrator.deploy(
            sample_artifact("undo", "2.0.0"), canary(step_ms=1500, steps=2), ENV, timeout_s=120
        )
        assert second.success, second.status
        restoring = orchestrator.rollback(second.deployment_id, reason="customers report a bug")
        restored = orchestrator.wait(restoring.deployment_id, 120)
        more_traffic(traffic, 40)
    assert restored.success, restored.status
    assert restored.status.weights == {"1-0-0": 100}
    assert platform_revisions(orchestrator, "undo") == {"1-0-0": 2}
    assert TrafficGenerator.failed(traffic.snapshot()) == 0
    with pytest.raises(ray.exceptions.RayTaskError, match="already replaced"):
        orchestrator.rollback(second.deployment_id)


def test_a_health_monitor_rolls_back_an_unhealthy_candidate(orchestrator: Any, tmp_path: Any) -> None:
    first = first_revision(orchestrator, "watched")
    sick = tmp_path / "sick"
    with live_traffic(first.status.address):
        deployment_id = orchestrator.submit(
            sample_artifact("watched", "2.0.0", HEALTH_FAIL_FILE=str(sick)), canary(step_ms=60_000), ENV
        )
        wait_for(orchestrator, deployment_id, lambda s: s.weights.get("2-0-0") == 20)
        # One failed probe suffices: the monitor (0.2 s) speaks before the runner's own checks (~3 s).
        assert orchestrator.monitor_deployment(
            deployment_id, interval_s=0.2, timeout_s=0.5, unhealthy_threshold=1
        )
        sick.write_text("unhealthy")
        result = orchestrator.wait(deployment_id, 60)
    assert result.status.phase is Phase.ROLLED_BACK
    assert result.status.rollback_trigger is RollbackTrigger.HEALTH
    assert "failed checks" in (result.status.rollback_reason or "")
    journal = orch_journal(orchestrator)
    requests = [e for e in journal.events(deployment_id) if e.kind is EventKind.ROLLBACK_REQUESTED]
    assert [e.actor for e in requests] == ["health-monitor"]
    assert result.status.weights == {"1-0-0": 100}


def test_metrics_reach_prometheus_and_the_ray_dashboard(orchestrator: Any) -> None:
    import urllib.request

    import yaml

    first_revision(orchestrator, "metered")
    with open(orchestrator.config_path) as config:
        port = yaml.safe_load(config)["metrics"]["prometheusPort"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    lines = [
        line for line in text.splitlines() if line.startswith("orchestrator_deployments_finished_total{")
    ]
    succeeded = [float(line.split()[-1]) for line in lines if 'outcome="succeeded"' in line]
    assert succeeded and succeeded[0] >= 1
    assert "orchestrator_deployments_running" in text


def test_an_unreachable_platform_fails_the_deployment_before_any_change(orchestrator: Any) -> None:
    closed = {"type": "docker", "settings": {"baseUrl": "tcp://127.0.0.1:9", "timeout": 2, "retries": 0}}
    artifact = {"name": "unreachable", "version": "1.0.0", "source": "local/sample-service:1"}
    result = orchestrator.deploy(artifact, {"type": "rolling", "replicas": 1}, ENV, closed, timeout_s=120)
    assert result.status.phase is Phase.FAILED
    assert "docker" in result.status.message and "127.0.0.1:9" in result.status.message
    kinds = [e.kind for e in orch_journal(orchestrator).events(result.deployment_id)]
    assert EventKind.PLANNED not in kinds and EventKind.WEIGHTS_SET not in kinds


def test_async_variants_for_drivers_that_await(orchestrator: Any) -> None:
    import asyncio

    async def drive() -> tuple[Any, Any]:
        result = await orchestrator.deploy_async(
            sample_artifact("awaited", "1.0.0"), {"type": "rolling", "replicas": 1}, ENV, timeout_s=120
        )
        return result, await orchestrator.status_async(result.deployment_id)

    result, status = asyncio.run(drive())
    assert result.success, result.status
    assert status.phase is Phase.SUCCEEDED and status.deployment_id == result.deployment_id
