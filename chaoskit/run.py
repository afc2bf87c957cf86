"""One chaos case end to end (see cases.py for what a case is and what is checked)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from chaoskit.cases import ENV, MID_STEP_S, RPS, Case, Outcome, service_name, strategy_spec
from chaoskit.checks import check_case
from chaoskit.faults import Bench, inject, prepare_victim
from chaoskit.machine import remove_case
from engine.journal import Journal
from engine.models import Target
from engine.state import EventKind, StepKind
from examples.traffic import TrafficGenerator

MOMENT_DEADLINE_S = 180.0
END_DEADLINE_S = 240.0  # a deployment not terminal by then is a zombie


@dataclass
class Moment:
    reached: bool
    step_index: int | None = None
    step: str = ""


def judged_step(plan: list[dict[str, Any]]) -> int:
    """The first step that judges the candidate (analysis, or blue-green's validation)."""
    judged = (StepKind.ANALYZE.value, StepKind.VALIDATE.value)
    return next(i for i, step in enumerate(plan) if step["kind"] in judged)


def _duration_s(step: dict[str, Any]) -> float:
    return float(step.get("durationMs", step.get("duration_ms", 0))) / 1000


def wait_for_moment(journal: Journal, deployment_id: str, timing: str) -> Moment:
    """Poll the journal (every 20 ms) until the case's moment; not reached when the deployment ended first.

    ``boundary``: the step before the first judged step has just completed (the candidate is about to be
    judged); ``mid_step``: one second into the first judged step, or half of it when shorter."""
    deadline, seen = time.monotonic() + MOMENT_DEADLINE_S, 0
    judged: int | None = None
    duration_s, fire_at = 0.0, None
    while time.monotonic() < deadline:
        for event in journal.events(deployment_id, after_seq=seen):
            seen = event.seq
            index = event.data.get("index")
            if event.kind is EventKind.PLANNED:
                judged = judged_step(event.data["plan"])
                duration_s = _duration_s(event.data["plan"][judged])
            elif event.kind is EventKind.FINISHED:
                return Moment(reached=False, step="the deployment had ended")
            elif judged is None or (timing == "boundary" and event.kind is not EventKind.STEP_COMPLETED):
                continue
            elif timing == "boundary" and index == judged - 1:
                return Moment(True, judged - 1, f"just after '{event.data['step']}'")
            elif event.kind is EventKind.STEP_STARTED and index == judged and fire_at is None:
                fire_at = event.at + min(duration_s / 2, MID_STEP_S)
        if fire_at is not None and time.time() >= fire_at:
            return Moment(True, judged, "in the middle of the first judged step")
        time.sleep(0.02)
    raise TimeoutError(f"{deployment_id} did not reach its {timing} moment within {MOMENT_DEADLINE_S:g}s")


def wait_for_end(journal: Journal, deployment_id: str, deadline_s: float = END_DEADLINE_S) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if journal.state(deployment_id).outcome is not None:
            return True
        time.sleep(0.2)
    return False


@contextmanager
def outside_traffic(address: str) -> Iterator[TrafficGenerator]:
    """Real HTTP requests from outside the orchestrator, counted by (version, status)."""
    traffic = TrafficGenerator(address + "/", rps=RPS, threads=4, max_seconds=900).start()
    try:
        yield traffic
    finally:
        traffic.stop()


def run_case(bench: Bench, case: Case, step_ms: int, tag: str = "") -> Outcome:
    """Run one case and check it; its service is removed afterwards whatever happened."""
    service = service_name(case, tag)
    outcome = Outcome(case=case, service=service, failed_bound=case.failed_bound())
    target = Target(service=service, environment=ENV)
    started = time.monotonic()
    driver = bench.driver_for(case)
    platform = bench.platform_for(case, driver)
    try:
        address = driver.deploy_first(service, case, platform)
        with outside_traffic(address) as traffic:
            strategy = strategy_spec(case.strategy, step_ms)
            outcome.deployment_id = driver.submit(service, case, platform, strategy)
            journal = driver.journal()
            victim = prepare_victim(bench, driver, case, outcome.deployment_id)
            moment = wait_for_moment(journal, outcome.deployment_id, case.timing)
            outcome.landed = {**moment.__dict__, "phase": journal.state(outcome.deployment_id).phase().value}
            # A deployment that ended before its moment meets the fault at rest: still checked.
            outcome.injected = inject(driver, case, target, platform, victim)
            driver.after_fault(outcome.deployment_id)
            ended = wait_for_end(journal, outcome.deployment_id)
            check_case(case, outcome, journal, platform, target, traffic, ended)
    except Exception as error:  # a case that could not run is a violation, never a silent pass
        outcome.violations.append(f"the case did not run to its end: {type(error).__name__}: {error}")
    finally:
        outcome.seconds = round(time.monotonic() - started, 2)
        driver.close()
        try:
            remove_case(platform, target, bench.supervised(case))
        except Exception as error:  # something came back after its removal: this case's violation, and the
            outcome.violations.append(f"removal: {type(error).__name__}: {error}")  # next cases still run
    return outcome
