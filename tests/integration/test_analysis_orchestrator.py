"""The seed's analysis settings end to end: a real local Ray (queen, DO-002, DO-003, runners), processes
behind a real HAProxy, live traffic, judgements through the domain workers and shown by ``status``."""

from __future__ import annotations

import io
import time
from contextlib import redirect_stdout
from typing import Any

import pytest
import ray

from actors.delegates import DomainWorkers, WorkerJudge, WorkerPlanner
from client.cli import main as cli_main
from engine.judge import WindowInput
from engine.metrics import RevisionFigures
from engine.models import CanaryConfig, Phase, RollbackTrigger, Strategy, StrategyType
from engine.state import EventKind
from tests.integration.conftest import orch_journal, sample_artifact
from tests.integration.test_orchestrator import first_revision, live_traffic, wait_for
from tests.unit.test_models import SEED_BLUE_GREEN, SEED_CANARY

pytestmark = pytest.mark.integration
ENV = "development"

# The seed's blocks, verbatim (tests/unit/test_models.py); tests override only the durations
# (stepDuration, validationDuration) so that they take seconds, not minutes.


def seed_canary(**overrides: Any) -> dict[str, Any]:
    return {"type": "canary", "replicas": 2, "canary": {**SEED_CANARY, **overrides}}


def judgements(orch: Any, deployment_id: str) -> list[dict[str, Any]]:
    return [
        e.data
        for e in orch_journal(orch).events(deployment_id)
        if e.kind is EventKind.MEASUREMENT and e.data.get("check") == "analysis"
    ]


def status_text(orch: Any, deployment_id: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        cli_main(["--config", str(orch.config_path), "status", deployment_id, "--judgements", "2"])
    return out.getvalue()


def test_the_seed_canary_judges_every_threshold_and_refuses_a_candidate_short_of_its_throughput(
    orchestrator: Any,
) -> None:
    """Verbatim, the seed asks a candidate to serve 100 requests per second; at 10% of this machine's 40 it
    serves 4: every window is judged on all four figures and none is a success, so it is rolled back."""
    first = first_revision(orchestrator, "seed-canary")
    with live_traffic(first.status.address):
        result = orchestrator.deploy(
            sample_artifact("seed-canary", "2.0.0"), seed_canary(stepDuration=5000), ENV, timeout_s=180
        )
    assert result.status.phase is Phase.ROLLED_BACK, result.status
    assert result.status.rollback_trigger is RollbackTrigger.METRICS
    reason = result.status.rollback_reason or ""
    assert reason.startswith("3 analysis windows in a row without success (marginal)"), reason
    assert "[marginal] (success >= 100 rps)" in reason
    assert result.status.weights == {"1-0-0": 100}
    windows = judgements(orchestrator, result.deployment_id)
    assert len(windows) == 3
    for window in windows:
        checks = {c["metric"]: c for c in window["thresholds"]}
        assert set(checks) == {"errorRate", "responseTime", "availability", "throughput"}
        assert checks["errorRate"]["outcome"] == "pass" and checks["errorRate"]["value"] == 0
        assert checks["responseTime"]["outcome"] == "pass" and checks["responseTime"]["value"] < 500
        assert checks["availability"]["outcome"] == "pass" and checks["availability"]["value"] == 100
        assert checks["throughput"]["outcome"] == "marginal" and 0 < checks["throughput"]["value"] < 100
        # By DO-003, or by the runner naming why DO-003 did not answer in time (a loaded machine).
        assert window["judged_by"] == "DO-003" or window["judged_by"].startswith("runner (DO-003")
        assert window["provider"] == "haproxy"
        assert window["candidate"]["latency_samples"] >= 10 and window["stable"]["requests"] > 50
        assert {c["test"] for c in window["comparison"]} == {"two_proportion_z", "mann_whitney_u"}
    shown = status_text(orchestrator, result.deployment_id)
    assert "judgements (newest last)" in shown and "judged by DO-003" in shown
    assert "threshold throughput" in shown and "U=" in shown and "z=" in shown and "reason:" in shown


def test_the_seed_canary_promotes_a_good_candidate_at_this_machine_s_throughput(orchestrator: Any) -> None:
    """The seed's block with its throughput floor scaled to the traffic this machine can send (100 -> 2)."""
    first = first_revision(orchestrator, "seed-good")
    success = {**SEED_CANARY["successThreshold"], "throughput": 2}
    with live_traffic(first.status.address):
        result = orchestrator.deploy(
            sample_artifact("seed-good", "2.0.0"),
            seed_canary(stepDuration=5000, successThreshold=success),
            ENV,
            timeout_s=180,
        )
    assert result.success, result.status
    weights = [
        e.data["weights"].get("2-0-0")
        for e in orch_journal(orchestrator).events(result.deployment_id)
        if e.kind is EventKind.WEIGHTS_SET
    ]
    assert weights == [10, 35, 60, 85, 100]
    windows = judgements(orchestrator, result.deployment_id)
    assert [w["verdict"] for w in windows] == ["success"] * 4
    assert all(w["judged_by"] == "DO-003" or w["judged_by"].startswith("runner (DO-003") for w in windows)


def test_a_latency_regression_is_rolled_back_on_its_p95(orchestrator: Any) -> None:
    first = first_revision(orchestrator, "seed-slow")
    with live_traffic(first.status.address):
        result = orchestrator.deploy(
            sample_artifact("seed-slow", "2.0.0", LATENCY_MS="2500"),
            seed_canary(stepDuration=60000),
            ENV,
            timeout_s=180,
        )
    assert result.status.phase is Phase.ROLLED_BACK, result.status
    assert result.status.rollback_trigger is RollbackTrigger.METRICS
    reason = result.status.rollback_reason or ""
    assert "p95 response time 25" in reason and "ms [fail] (success <= 500 ms, failure > 2000 ms)" in reason
    assert result.status.weights == {"1-0-0": 100}
    [failed] = [w for w in judgements(orchestrator, result.deployment_id) if w["verdict"] == "failure"]
    assert failed["candidate"]["response_time_ms"] >= 2500 and failed["candidate"]["percentile"] == 95
    assert failed["final"] is False  # caught by an in-window check, well before the 60 s window's end


def test_a_low_traffic_canary_pauses_inconclusive_and_is_never_promoted(orchestrator: Any) -> None:
    first_revision(orchestrator, "quiet")  # and no traffic at all
    strategy = seed_canary(stepDuration=1000, maxWindowExtensions=1, analysisInterval=500)
    deployment_id = orchestrator.submit(sample_artifact("quiet", "2.0.0"), strategy, ENV)
    paused = wait_for(orchestrator, deployment_id, lambda s: s.phase is Phase.PAUSED, timeout_s=120)
    assert paused.weights == {"1-0-0": 90, "2-0-0": 10}
    [*_, last] = judgements(orchestrator, deployment_id)
    assert last["verdict"] == "inconclusive"
    assert last["reason"].startswith(
        "inconclusive after 1 extension(s): 0 requests, fewer than the 10 needed"
    )
    time.sleep(3)  # paused stays paused: nothing promotes it meanwhile
    assert orchestrator.status(deployment_id).phase is Phase.PAUSED
    ended = orchestrator.abort(deployment_id, "too quiet to judge")
    assert ended is not None
    result = orchestrator.wait(deployment_id, 120)
    assert result.status.phase is Phase.ABORTED and result.status.weights == {"1-0-0": 100}


def test_a_low_traffic_canary_configured_to_fail_is_rolled_back(orchestrator: Any) -> None:
    first_revision(orchestrator, "quiet-fail")
    strategy = seed_canary(
        stepDuration=1000, maxWindowExtensions=1, analysisInterval=500, onInconclusive="fail"
    )
    result = orchestrator.deploy(sample_artifact("quiet-fail", "2.0.0"), strategy, ENV, timeout_s=120)
    assert result.status.phase is Phase.ROLLED_BACK
    assert (result.status.rollback_reason or "").startswith("inconclusive after 1 extension(s)")


def test_the_seed_blue_green_validates_green_and_waits_for_a_person(orchestrator: Any) -> None:
    first = first_revision(orchestrator, "seed-bg")
    strategy = {
        "type": "blue_green",
        "replicas": 2,
        "blueGreen": {**SEED_BLUE_GREEN, "validationDuration": 2000},
    }
    with live_traffic(first.status.address):
        deployment_id = orchestrator.submit(sample_artifact("seed-bg", "2.0.0"), strategy, ENV)
        waiting = wait_for(orchestrator, deployment_id, lambda s: s.phase is Phase.PAUSED, timeout_s=120)
        assert waiting.weights == {"1-0-0": 100}  # autoSwitch false: green validated, no traffic yet
        [checked] = [
            e.data
            for e in orch_journal(orchestrator).events(deployment_id)
            if e.data.get("check") == "switch_triggers"
        ]
        assert checked["figures"]["health_status"] == "healthy"
        assert checked["triggers"] == [
            {
                "index": 0,
                "type": "health",
                "action": "switch",
                "metric": "health_status",
                "operator": "eq",
                "expected": "healthy",
                "actual": "healthy",
                "holds": True,
            }
        ]
        orchestrator.promote(deployment_id)
        result = orchestrator.wait(deployment_id, 120)
    assert result.success, result.status
    assert result.status.weights == {"2-0-0": 100}


# --------------------------------------------------------------------------------------------
# The seams as the runner has them: DO-002/DO-003 answer; a missing or hanging worker does not stall
# --------------------------------------------------------------------------------------------
def _window() -> WindowInput:
    settings = CanaryConfig.model_validate({"minRequestCount": 5})
    return WindowInput(
        candidate=RevisionFigures(revision="2", seconds=5, requests=50, errors=0),
        stable=RevisionFigures(revision="1", seconds=5, requests=500, errors=0),
        settings=settings,
    )


def test_the_domain_workers_plan_and_judge(orchestrator: Any) -> None:
    workers = DomainWorkers(orchestrator.namespace, timeout_s=60)  # the answer, not the deadline, is tested
    judged = WorkerJudge(workers).judge(_window(), StrategyType.CANARY)
    assert judged.judged_by == "DO-003" and judged.verdict.value == "success"
    canary = Strategy.model_validate({"type": "canary", "canary": SEED_CANARY})
    assert WorkerPlanner(workers).plan(canary, True)[0].kind.value == "deploy"


def test_domain_workers_looked_up_ahead_keep_the_running_ones(orchestrator: Any) -> None:
    """What a standby runner does at start, so that no handle is made on a deployment's critical path."""
    workers = DomainWorkers(orchestrator.namespace, timeout_s=60)
    workers.look_up("DO-002", "DO-003")
    assert set(workers._handles) == {"DO-002", "DO-003"}
    judged = WorkerJudge(workers).judge(_window(), StrategyType.CANARY)
    assert judged.judged_by == "DO-003"
    elsewhere = DomainWorkers(f"{orchestrator.namespace}-none")
    elsewhere.look_up("DO-003")  # none runs there: no error, and it is looked up again when asked
    assert elsewhere._handles == {}


@ray.remote(num_cpus=0)
class _Hanging:
    async def judge(self, window: Any) -> None:
        import asyncio

        await asyncio.sleep(30)


def test_a_silent_domain_worker_is_answered_for_in_the_runner_within_its_deadline(orchestrator: Any) -> None:
    namespace = f"{orchestrator.namespace}-hanging"
    hanging = _Hanging.options(name="DO-003:canary", namespace=namespace).remote()  # type: ignore[attr-defined]
    try:
        workers = DomainWorkers(namespace, timeout_s=1.0)
        started = time.monotonic()
        judged = WorkerJudge(workers).judge(_window(), StrategyType.CANARY)
        assert time.monotonic() - started < 10  # bounded by the deadline, never by the worker
        assert judged.judged_by.startswith("runner (DO-003 did not answer: no answer within 1s")
        assert judged.verdict.value == "success"  # the same judgement, computed here
        started = time.monotonic()
        again = WorkerJudge(workers).judge(_window(), StrategyType.CANARY)
        assert time.monotonic() - started < 1.0 and "skipped" in again.judged_by  # not asked again at once
        gone = WorkerJudge(DomainWorkers(f"{namespace}-none")).judge(_window(), StrategyType.CANARY)
        assert gone.judged_by.startswith("runner (DO-003 did not answer") and gone.verdict.value == "success"
    finally:
        ray.kill(hanging)
