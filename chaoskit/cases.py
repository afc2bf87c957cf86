"""The chaos matrix's cases: one deployment, one fault at a chosen moment, and the properties checked after.

Shared by ``benchmarks/chaos.py`` (the full matrix) and ``tests/integration/test_chaos.py`` (a CI slice), so
that both run exactly the same code (``chaoskit.run.run_case``). A case:
1. deploys a first revision (1.0.0, two replicas) of a service of its own, then sends it live HTTP traffic
   from an outside client (examples/traffic.py, 40 requests/s);
2. submits the candidate 2.0.0 (good, or bad: half of its answers are 500) with the case's strategy;
3. waits for the moment (``boundary``: the step before the first judged step has just completed, i.e. the
   candidate is about to be judged; ``mid_step``: one second into the first judged step, or half of it
   when shorter) and injects the fault (``faults.py``);
4. waits (bounded) for the deployment's terminal event in the journal, then checks the properties
   (``checks.py``): exactly one terminal event; the right outcome and live revision; no platform object
   duplicated or left behind; traffic never left on a revision judged bad; requests failed during the fault
   within the fault's bound.
Everything is read from the journal and the platform's own state (processes, containers, HAProxy), never
from the orchestrator's answers alone.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

ENV = "development"
STABLE, CANDIDATE = "1.0.0", "2.0.0"
STABLE_REV, CANDIDATE_REV = "1-0-0", "2-0-0"
REPLICAS = 2
RPS = 40.0
WORKERS = ("DO-001", "DO-002", "DO-003", "DO-004", "DO-005", "DO-006")
ACTOR_FAULTS = ("queen", "runner", *WORKERS)
PLATFORM_FAULTS = ("router", "stable_replica", "candidate_replica")
FAULTS = (*ACTOR_FAULTS, *PLATFORM_FAULTS, "ray")
STRATEGIES = ("canary", "blue_green", "rolling")
TIMINGS = ("boundary", "mid_step")
PLATFORMS = ("local", "docker")
MID_STEP_S = 1.0
END_DEADLINE_S = 240.0  # a deployment not terminal by then is a zombie
SETTLE_S = 45.0  # the platform must match the journal within this (a killed replica replaced meanwhile)
# Requests the outside client may see fail (refused, 5xx not from the bad candidate itself), in seconds of
# its traffic: a router restart is restored by the runner or the supervisor (goal 2 s, measured by
# benchmarks/self_heal.py) plus the time to notice it; a replica's death is routed around by HAProxy (its
# health checks every 2 s, 3 falls); the orchestrator's own actors and Ray carry no traffic at all.
FAILED_BOUND_S = {"router": 4.0, "stable_replica": 2.0, "candidate_replica": 2.0}


@dataclass(frozen=True)
class Case:
    strategy: str
    fault: str
    timing: str
    bad: bool = False
    platform: str = "local"

    @property
    def name(self) -> str:
        return f"{self.platform}/{self.strategy}/{self.fault}/{self.timing}/{'bad' if self.bad else 'good'}"

    def failed_bound(self) -> int:
        return int(FAILED_BOUND_S.get(self.fault, 0.0) * RPS)


_SERVICE_NUMBERS = itertools.count()


def service_name(case: Case, tag: str) -> str:
    """A service of the case's own (no supervision budget or back-off of another case applies)."""
    short = {"canary": "ca", "blue_green": "bg", "rolling": "ro"}[case.strategy]
    fault = case.fault.lower().replace("_", "").replace("-", "")
    number = next(_SERVICE_NUMBERS)
    return f"cx{tag}-{number}-{short}-{fault}-{case.timing[0]}{'b' if case.bad else 'g'}"


def strategy_spec(name: str, step_ms: int) -> dict[str, Any]:
    """Short steps judged every 0.5 s: a bad candidate (50% errors) breaches errorRate 5% at once."""
    analysis = {
        "analysisInterval": 500,
        "minRequestCount": 10,
        "successThreshold": {"errorRate": 1},
        "failureThreshold": {"errorRate": 5},
    }
    if name == "canary":
        canary = {"initialTrafficPercentage": 20, "stepPercentage": 30, "stepDuration": step_ms}
        canary["maxSteps"] = 3
        return {"type": "canary", "replicas": REPLICAS, "canary": {**canary, **analysis}}
    if name == "blue_green":
        blue_green = {
            "validationDuration": step_ms,
            "switchTrafficPercentage": 50,
            "switchStepDuration": step_ms,
            "scaleDownDelay": 1000,
            "smokeRequests": 10,
        }
        return {"type": "blue_green", "replicas": REPLICAS, "blueGreen": {**blue_green, **analysis}}
    if name == "rolling":
        rolling = {"maxSurge": 1, "maxUnavailable": 0, "batchPause": step_ms}
        return {"type": "rolling", "replicas": REPLICAS, "rolling": {**rolling, **analysis}}
    raise ValueError(f"strategy: unknown '{name}', known are {', '.join(STRATEGIES)}")


FIRST_STRATEGY = {"type": "rolling", "replicas": REPLICAS}


@dataclass
class Outcome:
    """What one case saw; ``violations`` empty means every property held."""

    case: Case
    service: str
    deployment_id: str = ""
    landed: dict[str, Any] = field(default_factory=dict)
    injected: dict[str, Any] = field(default_factory=dict)
    phase: str = ""
    weights: dict[str, int] = field(default_factory=dict)
    message: str = ""
    requests: int = 0
    failed_outside_bad: int = 0
    failed_bound: int = 0
    bad_answers_after_end: int = 0
    settle_s: float | None = None
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "case": self.case.name,
            **{k: getattr(self.case, k) for k in ("platform", "strategy", "fault", "timing", "bad")},
            **{k: v for k, v in self.__dict__.items() if k != "case"},
        }


def matrix(
    strategies: tuple[str, ...] = STRATEGIES,
    faults: tuple[str, ...] = FAULTS,
    timings: tuple[str, ...] = TIMINGS,
    bad: str = "subset",
    docker: bool = True,
) -> list[Case]:
    """Every strategy x fault x timing with a good candidate; with a bad one too for every case
    (``bad='all'``), for the platform faults and the whole Ray (``'subset'``), or never (``'none'``); the
    router and replica faults again on Docker (good and bad alike)."""
    cases: list[Case] = []
    for strategy, fault, timing in itertools.product(strategies, faults, timings):
        cases.append(Case(strategy, fault, timing))
        if bad == "all" or (bad == "subset" and fault in (*PLATFORM_FAULTS, "ray")):
            cases.append(Case(strategy, fault, timing, bad=True))
    if docker:
        for strategy, fault, timing in itertools.product(strategies, PLATFORM_FAULTS, timings):
            if fault in faults:
                cases.append(Case(strategy, fault, timing, platform="docker"))
                if bad != "none":
                    cases.append(Case(strategy, fault, timing, bad=True, platform="docker"))
    return cases
