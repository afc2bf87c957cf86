"""The scenario harness: the real engine (reconciler + journal) driving a platform's real adapter.

Shared by the platform scenarios (tests/integration/scenarios.py) and benchmarks/platforms.py. Ray is not
involved in ``Harness``: a "runner crash" there is a reconciler and adapter thrown away mid-deployment and new
ones built over the same journal and platform (the scenarios also run once through the actors).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from adapters import create_metric_provider
from engine.journal import Journal
from engine.models import (
    Artifact,
    DeploymentRequest,
    Governance,
    PlatformConfig,
    Strategy,
    Target,
)
from engine.platform import PlatformAdapter, RevisionSpec
from engine.reconciler import DeploymentReconciler, SmokeTester
from engine.state import DeploymentState, EventKind


class CountedTraffic(Protocol):
    """Live traffic that counts what it sent by (version answering, status); status 0 when nothing
    answered and version "?" when no revision did (``TrafficGenerator``, ``SimulatedTraffic``)."""

    def snapshot(self) -> Counter[tuple[str, int]]: ...


Traffic = Callable[[PlatformAdapter, Target], AbstractContextManager[CountedTraffic]]


def downtime(counts: Counter[tuple[str, int]], faulty: Collection[str] = ()) -> dict[tuple[str, int], int]:
    """The failed requests (no answer, or a 5xx) but for the errors a faulty version answered itself."""
    return {
        (version, status): count
        for (version, status), count in counts.items()
        if (status == 0 or status >= 500) and not (version in faulty and status != 0)
    }


def assert_no_downtime(traffic: CountedTraffic, faulty: Collection[str] = ()) -> None:
    counts = traffic.snapshot()
    assert sum(counts.values()) > 0, "no request was sent"
    assert downtime(counts, faulty) == {}, f"failed requests outside {sorted(faulty)}'s own errors: {counts}"


@dataclass
class ScenarioEnv:
    make_adapter: Callable[[], PlatformAdapter]
    platform: PlatformConfig
    artifact: Callable[[str, str, bool], Artifact]  # (service, version, faulty)
    traffic: Traffic  # while entered, live traffic reaches the target's revisions and shows in metrics
    journal_dir: Path
    settle: Callable[[], None] = field(default=lambda: None)
    smoke: SmokeTester | None = None
    replicas: int = 2
    step_ms: int = 2500
    deadline_s: float = 180.0
    environment: str = "staging"
    governance: Governance | None = None  # the environment's settings recorded with each request


class Harness:
    def __init__(self, env: ScenarioEnv, service: str) -> None:
        self.env = env
        self.target = Target(service=service, environment=env.environment)
        self.journal = Journal(env.journal_dir / f"{service}.db")
        self.count = 0

    def deploy(
        self,
        version: str,
        strategy: dict[str, Any],
        faulty: bool = False,
        crash_after_steps: int | None = None,
        on_step: Callable[[DeploymentState], None] | None = None,
    ) -> DeploymentState:
        deployment_id = self._submit(version, strategy, faulty)
        reconciler = self._reconciler(deployment_id)
        end = time.monotonic() + self.env.deadline_s
        try:
            while time.monotonic() < end:
                self.env.settle()
                delay = reconciler.reconcile()
                state = self.journal.state(deployment_id)
                if delay is None:
                    return state
                if on_step is not None:
                    on_step(state)
                if crash_after_steps is not None and state.step_index >= crash_after_steps:
                    crash_after_steps = None
                    reconciler.close()  # the runner dies; a new one starts from the journal and the platform
                    reconciler = self._reconciler(deployment_id)
                time.sleep(min(delay, 0.2))
        finally:
            reconciler.close()
        raise AssertionError(
            f"{deployment_id} did not end within {self.env.deadline_s}s: "
            f"{self.journal.state(deployment_id).status()}"
        )

    def _submit(self, version: str, strategy: dict[str, Any], faulty: bool) -> str:
        self.count += 1
        request = DeploymentRequest(
            artifact=self.env.artifact(self.target.service, version, faulty),
            strategy=Strategy.model_validate({"replicas": self.env.replicas, **strategy}),
            environment=self.env.environment,
            platform=self.env.platform,
            requested_by="scenario",
            governance=self.env.governance,
        )
        deployment_id = f"{self.target.service}-{self.count}"
        self.journal.submit(deployment_id, request, actor="scenario")
        self.journal.append(deployment_id, EventKind.ADMITTED, {})
        return deployment_id

    def _reconciler(self, deployment_id: str) -> DeploymentReconciler:
        adapter = self.env.make_adapter()
        return DeploymentReconciler(
            self.journal,
            deployment_id,
            lambda _: adapter,
            smoke=self.env.smoke,
            actor="scenario",
            tick_s=0.2,
            metrics=create_metric_provider,  # the platform's own provider, as a runner has it
        )

    def revisions(self) -> set[str]:
        adapter = self.env.make_adapter()
        try:
            self.env.settle()
            return {r.revision for r in adapter.list_revisions(self.target)}
        finally:
            adapter.close()

    def weights(self) -> dict[str, int]:
        adapter = self.env.make_adapter()
        try:
            return {k: v for k, v in adapter.traffic(self.target).weights.items() if v > 0}
        finally:
            adapter.close()

    def live(self) -> AbstractContextManager[CountedTraffic]:
        adapter = self.env.make_adapter()
        return self.env.traffic(adapter, self.target)


def canary_strategy(step_ms: int) -> dict[str, Any]:
    return {
        "type": "canary",
        "canary": {
            "initialTrafficPercentage": 25,
            "stepPercentage": 25,
            "stepDuration": step_ms,
            "maxSteps": 3,
            "analysisInterval": 500,
            "minRequestCount": 5,
            "successThreshold": {"errorRate": 2},
            "failureThreshold": {"errorRate": 10, "consecutiveFailures": 2},
        },
    }


def blue_green_strategy(hold_ms: int) -> dict[str, Any]:
    return {
        "type": "blue_green",
        "blueGreen": {
            "validationDuration": 1000,
            "switchTrafficPercentage": 100,
            "scaleDownDelay": hold_ms,
            "smokeRequests": 5,
            "analysisInterval": 500,
            "minRequestCount": 5,
            "successThreshold": {"errorRate": 2},
            "failureThreshold": {"errorRate": 10},
        },
    }


def leave_candidate(env: ScenarioEnv, target: Target, version: str) -> None:
    """What a runner that died after creating the candidate, before journaling it, leaves on the platform."""
    adapter = env.make_adapter()
    try:
        artifact = env.artifact(target.service, version, False)
        adapter.ensure_revision(
            RevisionSpec(target=target, artifact=artifact, replicas=1, deployment_id="dead")
        )
    finally:
        adapter.close()


ROLLING = {"type": "rolling", "rolling": {"maxSurge": 1, "maxUnavailable": 0}}
FIRST = {"type": "rolling"}
