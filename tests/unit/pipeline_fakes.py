"""Fakes at the pipeline engine's seams: the queen (Deployer) and the HTTP checks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from engine.models import DeploymentRequest, DeploymentStatus, Phase, StrategyType, Target
from tests.unit.fakes import FakeClock


@dataclass
class FakeDeployment:
    deployment_id: str
    target: Target
    phase: Phase = Phase.PROGRESSING
    message: str = ""
    rollback_reason: str | None = None


@dataclass
class FakeQueen:
    """Deployments end by themselves after ``delay_s`` (real time) with the outcome scripted per target key
    (succeeded unless told), or when ``release`` is called for a held target. Submitting an id twice returns
    the first deployment, as the real queen does."""

    clock: FakeClock
    delay_s: float = 0.01
    outcomes: dict[str, Phase] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    refuse_rollback: set[str] = field(default_factory=set)
    rollback_delay_s: float = 0.0  # the queen takes this long to answer a rollback
    deployments: dict[str, FakeDeployment] = field(default_factory=dict)
    submissions: list[str] = field(default_factory=list)  # every call, repeated ids included
    created: list[str] = field(default_factory=list)  # deployments actually started
    rollbacks: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    carried: list[tuple[str, str]] = field(default_factory=list)
    running: int = 0
    peak: int = 0
    timeline: list[tuple[float, str, str]] = field(default_factory=list)
    _ended: dict[str, asyncio.Event] = field(default_factory=dict)

    async def submit(self, request: DeploymentRequest, deployment_id: str) -> str:
        self.submissions.append(deployment_id)
        if deployment_id in self.deployments:
            return deployment_id
        self.created.append(deployment_id)
        self.deployments[deployment_id] = FakeDeployment(deployment_id, request.target)
        self._ended[deployment_id] = asyncio.Event()
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.timeline.append((time.monotonic(), "start", deployment_id))
        if request.target.key not in self.held:
            asyncio.get_running_loop().call_later(self.delay_s, self._end, deployment_id)
        return deployment_id

    def _end(self, deployment_id: str, phase: Phase | None = None) -> None:
        deployment = self.deployments[deployment_id]
        if deployment.phase.terminal:
            return
        deployment.phase = phase or self.outcomes.get(deployment.target.key, Phase.SUCCEEDED)
        if deployment.phase is Phase.ROLLED_BACK:
            deployment.rollback_reason = "error rate 0.5 above 0.05"
        self.running -= 1
        self.timeline.append((time.monotonic(), "end", deployment_id))
        self._ended[deployment_id].set()

    def release(self, target_key: str) -> None:
        self.held.discard(target_key)
        for deployment in list(self.deployments.values()):
            if deployment.target.key == target_key:
                self._end(deployment.deployment_id)

    def status_of(self, deployment_id: str) -> DeploymentStatus:
        d = self.deployments[deployment_id]
        return DeploymentStatus(
            deployment_id=d.deployment_id,
            target=d.target,
            phase=d.phase,
            strategy=StrategyType.ROLLING,
            step_index=0,
            step_count=3,
            address=f"http://fake/{d.target.key}",
            message=d.message,
            rollback_reason=d.rollback_reason,
            submitted_at=self.clock.now(),
            updated_at=self.clock.now(),
        )

    async def wait(self, deployment_id: str, timeout_s: float) -> DeploymentStatus:
        if deployment_id not in self.deployments:
            raise KeyError(f"no deployment '{deployment_id}'")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ended[deployment_id].wait(), timeout_s)
        return self.status_of(deployment_id)

    async def abort(self, deployment_id: str, by: str, reason: str) -> None:
        self.aborted.append(deployment_id)
        if deployment_id in self.deployments:
            self._end(deployment_id, Phase.ABORTED)

    async def rollback(self, deployment_id: str, by: str, reason: str) -> str:
        await asyncio.sleep(self.rollback_delay_s)
        original = self.deployments[deployment_id]
        if original.target.key in self.refuse_rollback:
            raise ValueError(f"deployment {deployment_id} replaced nothing that can be restored")
        rollback_id = f"{deployment_id}-rollback"
        if rollback_id not in self.deployments:
            self.rollbacks.append(deployment_id)
            self.deployments[rollback_id] = FakeDeployment(rollback_id, original.target)
            self._ended[rollback_id] = asyncio.Event()
            self.running += 1
            asyncio.get_running_loop().call_later(self.delay_s, self._end, rollback_id, Phase.SUCCEEDED)
        return rollback_id

    async def carry_approval(self, deployment_id: str, subject: str) -> None:
        self.carried.append((deployment_id, subject))

    async def address(self, target: Target) -> str | None:
        done = [d for d in self.deployments.values() if d.target == target and d.phase is Phase.SUCCEEDED]
        return f"http://fake/{target.key}" if done else None


@dataclass
class FakeChecker:
    """Answers every URL as expected unless a part of it is listed in ``failing``."""

    failing: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    async def check(self, url: str, expect_status: int, contains: str | None, timeout_s: float) -> str | None:
        self.calls.append(url)
        return next((problem for part, problem in self.failing.items() if part in url), None)
