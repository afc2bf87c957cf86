"""The properties every chaos case must keep, checked against the journal and the machine.

1. Exactly one terminal event (FINISHED) per deployment of the case's service, none left active, and only
   records (notes, drift) after it.
2. The right outcome: a good candidate promoted (succeeded, all traffic on it), a bad one rolled back (all
   traffic on the stable revision).
3. No platform object duplicated or left behind: the replica processes (or containers) and HAProxy
   processes that run, the adapters' state files and the router's weights in force are exactly what the
   journal says is live (checked until they settle, at most SETTLE_S: a killed replica is replaced meanwhile).
4. Traffic never left on a revision judged bad: once a rollback is asked, the candidate's weight never grows
   again, and after the end the outside client gets no answer from it.
5. Requests that failed for the outside client (refused, or a 5xx that the bad candidate did not give
   itself) within the fault's bound.
"""

from __future__ import annotations

import time
from typing import Any

from adapters import create_platform
from chaoskit.cases import (
    CANDIDATE,
    CANDIDATE_REV,
    REPLICAS,
    SETTLE_S,
    STABLE_REV,
    Case,
    Outcome,
)
from chaoskit.machine import live_objects
from engine.journal import Journal
from engine.models import Phase, PlatformConfig, Target
from engine.state import AFTER_TERMINAL, EventKind
from examples.traffic import TrafficGenerator

ROLLBACK_KINDS = (EventKind.ROLLBACK_REQUESTED, EventKind.ROLLBACK_STARTED)


def check_case(
    case: Case,
    outcome: Outcome,
    journal: Journal,
    platform: PlatformConfig,
    target: Target,
    traffic: TrafficGenerator,
    ended: bool,
) -> None:
    state = journal.state(outcome.deployment_id)
    outcome.phase, outcome.weights, outcome.message = state.phase().value, state.weights, state.message
    if not ended:
        outcome.violations.append(f"no terminal state within the deadline: still {outcome.phase}")
        return
    outcome.violations += terminal_events(journal, target)
    outcome.violations += right_outcome(case, state.phase(), state.weights)
    live = STABLE_REV if state.phase() is not Phase.SUCCEEDED else CANDIDATE_REV
    outcome.violations += weights_after_judgement(journal, outcome.deployment_id)
    if state.phase() is not Phase.SUCCEEDED:
        outcome.bad_answers_after_end = answers_after_end(traffic)
        if outcome.bad_answers_after_end:
            outcome.violations.append(
                f"{outcome.bad_answers_after_end} answers from {CANDIDATE} after it was rolled back"
            )
    counts = traffic.snapshot()
    own_errors = TrafficGenerator.failed(counts, CANDIDATE) if case.bad else 0
    outcome.requests = TrafficGenerator.total(counts)
    outcome.failed_outside_bad = TrafficGenerator.failed(counts) - own_errors
    if outcome.failed_outside_bad > outcome.failed_bound:
        outcome.violations.append(
            f"{outcome.failed_outside_bad} requests failed for the outside client, more than the "
            f"{outcome.failed_bound} allowed for a {case.fault} fault ({dict(counts)})"
        )
    outcome.settle_s, problems = settle(platform, target, live, state.weights)
    outcome.violations += problems


def terminal_events(journal: Journal, target: Target) -> list[str]:
    """Every deployment of the target: exactly one FINISHED, and nothing but records after it."""
    problems: list[str] = []
    for deployment in journal.deployments(limit=100_000, target_key=target.key):
        events = journal.events(deployment.deployment_id)
        finished = [e for e in events if e.kind is EventKind.FINISHED]
        if len(finished) != 1:
            problems.append(f"{deployment.deployment_id} has {len(finished)} terminal events")
            continue
        after = {e.kind.value for e in events if e.seq > finished[0].seq and e.kind not in AFTER_TERMINAL}
        after.discard(EventKind.AUDIT.value)
        if after:
            problems.append(f"{deployment.deployment_id} has {sorted(after)} after its terminal event")
    return problems


def right_outcome(case: Case, phase: Phase, weights: dict[str, int]) -> list[str]:
    if case.bad:
        expected, live = Phase.ROLLED_BACK, STABLE_REV
    else:
        expected, live = Phase.SUCCEEDED, CANDIDATE_REV
    in_force = {revision: weight for revision, weight in weights.items() if weight}
    if phase is not expected or in_force != {live: 100}:
        return [f"ended {phase.value} with weights {weights}; expected {expected.value} with {live} at 100%"]
    return []


def weights_after_judgement(journal: Journal, deployment_id: str) -> list[str]:
    """Once a rollback is asked, the candidate's weight only goes down."""
    ceiling: int | None = None  # the candidate's weight when the rollback was asked
    current = 0
    for event in journal.events(deployment_id):
        if event.kind in ROLLBACK_KINDS and ceiling is None:
            ceiling = current
        elif event.kind is EventKind.WEIGHTS_SET:
            current = int(event.data["weights"].get(CANDIDATE_REV, 0))
            if ceiling is not None and current > ceiling:
                return [f"{CANDIDATE_REV} got {current}% after the rollback was asked (event {event.seq})"]
            if ceiling is not None:
                ceiling = current
    return []


def answers_after_end(traffic: TrafficGenerator) -> int:
    """Answers from the candidate among 40 requests sent once requests in flight at the end are answered."""
    _more(traffic, 8)
    before = TrafficGenerator.total(traffic.snapshot(), CANDIDATE)
    _more(traffic, 40)
    return TrafficGenerator.total(traffic.snapshot(), CANDIDATE) - before


def _more(traffic: TrafficGenerator, count: int, timeout_s: float = 60.0) -> None:
    start = TrafficGenerator.total(traffic.snapshot())
    deadline = time.monotonic() + timeout_s
    while TrafficGenerator.total(traffic.snapshot()) < start + count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} requests answered or failed in {timeout_s:g}s")
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# The platform against the journal
# --------------------------------------------------------------------------------------------
def settle(
    platform: PlatformConfig, target: Target, live: str, weights: dict[str, int]
) -> tuple[float | None, list[str]]:
    """Seconds until the platform matches the journal (None and the differences when it never did)."""
    started = time.monotonic()
    while True:
        problems = platform_differences(platform, target, live, weights)
        if not problems:
            return round(time.monotonic() - started, 2), []
        if time.monotonic() - started > SETTLE_S:
            return None, [f"after {SETTLE_S:g}s: {p}" for p in problems]
        time.sleep(0.5)


def platform_differences(
    platform: PlatformConfig, target: Target, live: str, weights: dict[str, int]
) -> list[str]:
    objects = live_objects(platform, target)
    problems: list[str] = []
    wanted = [(live, index) for index in range(REPLICAS)]
    running = [(revision, index) for revision, index, _ in objects.replicas]
    if running != wanted:
        problems.append(f"replicas running {running}, journal says {wanted}")
    recorded = [(revision, index) for revision, index, _ in objects.recorded_replicas]
    if recorded != wanted or objects.recorded_replicas != objects.replicas:
        problems.append(f"the state file records {objects.recorded_replicas}, running are {objects.replicas}")
    if objects.stopped_containers:
        problems.append(f"containers left behind: {objects.stopped_containers}")
    if objects.recorded_router is None or objects.routers != [objects.recorded_router]:
        problems.append(f"HAProxy processes {objects.routers}, recorded {objects.recorded_router}")
    problems += _router_and_revisions(platform, target, live, weights)
    return problems


def _router_and_revisions(
    platform: PlatformConfig, target: Target, live: str, weights: dict[str, int]
) -> list[str]:
    adapter: Any = create_platform(platform)
    try:
        in_force = {r: w for r, w in adapter.traffic(target).weights.items() if w}
        revisions = {r.revision: r.running_replicas for r in adapter.list_revisions(target)}
    finally:
        adapter.close()
    problems: list[str] = []
    journaled = {r: w for r, w in weights.items() if w}
    if in_force != journaled:
        problems.append(f"the router has {in_force} in force, the journal {journaled}")
    if revisions != {live: REPLICAS}:
        problems.append(f"the platform lists {revisions}, the journal says {live} x{REPLICAS}")
    return problems
