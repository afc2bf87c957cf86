"""The load and success-rate benchmarks' judges fail on the faults they look for: a journal timeline with one
deployment too many running, a queue overtaken within a target, a lost or doubly finished deployment, and
client failures attributed to the revision that answered."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import load
import success_rate
from fleet import Timeline, percentile

from engine.state import Event, EventKind


class Log:
    """A journal's events in order, for the benchmarks' Timeline."""

    def __init__(self) -> None:
        self.timeline = Timeline()
        self.seq = 0

    def add(self, deployment_id: str, kind: EventKind) -> None:
        self.seq += 1
        event = Event(seq=self.seq, deployment_id=deployment_id, kind=kind, at=float(self.seq), data={})
        if kind is EventKind.FINISHED:
            event.data["outcome"] = "succeeded"
        self.timeline.events.setdefault(deployment_id, []).append(event)
        if kind is EventKind.SUBMITTED:
            self.timeline.submitted[deployment_id] = event
        elif kind is EventKind.ADMITTED:
            self.timeline.admitted.setdefault(deployment_id, []).append(event)
        else:
            self.timeline.finished.setdefault(deployment_id, []).append(event)


def submissions(services: dict[str, list[str]]) -> list[load.Submission]:
    return [
        load.Submission(deployment_id, service, turn, 0.0)
        for service, ids in services.items()
        for turn, deployment_id in enumerate(ids)
    ]


def run_all(log: Log, ids: list[str], running: int) -> None:
    """Admit ``running`` at once, then finish them all."""
    for deployment_id in ids:
        log.add(deployment_id, EventKind.SUBMITTED)
    for start in range(0, len(ids), running):
        batch = ids[start : start + running]
        for deployment_id in batch:
            log.add(deployment_id, EventKind.ADMITTED)
        for deployment_id in batch:
            log.add(deployment_id, EventKind.FINISHED)


def passed(log: Log, subs: list[load.Submission], limit: int = 10) -> dict[str, Any]:
    return load.checks(log.timeline, subs, limit)["passed"]  # type: ignore[no-any-return]


def test_within_the_limit_every_check_passes() -> None:
    ids = [f"d{i}" for i in range(20)]
    log = Log()
    run_all(log, ids, running=10)
    result = passed(log, submissions({f"s{i}": [f"d{i}"] for i in range(20)}))
    assert all(result.values()), result
    assert log.timeline.max_running() == 10


def test_one_deployment_over_the_limit_fails() -> None:
    ids = [f"d{i}" for i in range(11)]
    log = Log()
    run_all(log, ids, running=11)
    result = passed(log, submissions({f"s{i}": [f"d{i}"] for i in range(11)}))
    assert result["max_running_within_limit"] is False


def test_a_later_deployment_of_a_target_admitted_first_breaks_fifo() -> None:
    log = Log()
    for deployment_id in ("a1", "a2"):
        log.add(deployment_id, EventKind.SUBMITTED)
    for deployment_id in ("a2", "a1"):  # the second revision overtakes the first
        log.add(deployment_id, EventKind.ADMITTED)
        log.add(deployment_id, EventKind.FINISHED)
    result = passed(log, submissions({"s": ["a1", "a2"]}))
    assert result["fifo_per_target"] is False
    assert result["one_active_per_target"] is True


def test_overlapping_deployments_of_one_target_are_found() -> None:
    log = Log()
    for deployment_id in ("a1", "a2"):
        log.add(deployment_id, EventKind.SUBMITTED)
    for deployment_id in ("a1", "a2"):
        log.add(deployment_id, EventKind.ADMITTED)
    for deployment_id in ("a1", "a2"):
        log.add(deployment_id, EventKind.FINISHED)
    result = passed(log, submissions({"s": ["a1", "a2"]}))
    assert result["fifo_per_target"] is True
    assert result["one_active_per_target"] is False


def test_a_lost_an_unfinished_and_a_twice_finished_deployment_fail() -> None:
    log = Log()
    run_all(log, ["d0", "d1"], running=2)
    log.add("d1", EventKind.FINISHED)  # a second terminal event
    log.add("d2", EventKind.SUBMITTED)
    log.add("d2", EventKind.ADMITTED)  # never finished
    result = load.checks(
        log.timeline, submissions({"s0": ["d0"], "s1": ["d1"], "s2": ["d2"], "s3": ["d3"]}), 10
    )
    assert result["passed"]["all_terminal"] is False
    assert result["passed"]["none_lost"] is False
    assert sorted(result["violations"]["not_terminal_once"]) == ["d1", "d2", "d3"]
    assert result["violations"]["lost"] == ["d3"]


def test_failures_count_against_us_unless_a_bad_revision_answered_them() -> None:
    plans = [
        success_rate.Planned(0, "s", "2.0.0", "good", None),
        success_rate.Planned(1, "s", "2.1.0", "error_rate", None),
    ]
    counts = {
        "s": Counter(
            {
                ("1.0.0", 200): 9000,
                ("2.1.0", 500): 300,
                ("2.1.0", 200): 690,
                ("?", 503): 4,
                ("?", 0): 3,
                ("2.0.0", 502): 3,
            }
        )
    }
    first = ["12:00:00.100 HTTP 503 without X-Version (after 2.004s)"]
    seen = success_rate.availability(plans, counts, {"s": first, "t": []})
    assert seen["failures_by_service"] == {"s": first}  # what the client saw, for services that saw any
    assert seen["bad_revisions_own_errors"] == 300
    assert (
        seen["failed_against_us"] == 10
    )  # the router's 503s, refused connections and a good revision's 502s
    assert seen["availability"] == 1 - 10 / (10000 - 300)


def test_the_live_revision_expected_is_the_last_good_one() -> None:
    plans = [
        success_rate.Planned(0, "s", "2.0.0", "good", None),
        success_rate.Planned(1, "s", "2.1.0", "latency", None),
        success_rate.Planned(2, "t", "2.2.0", "crash", None),
    ]
    assert success_rate.expected_live(plans) == {"s": "2-0-0", "t": "1-0-0"}


def test_layout_spreads_the_bad_kinds_and_the_kills() -> None:
    args = type("Args", (), {"count": 100, "bad": 30, "kills": 20, "services": 10, "seed": 7})()
    plans = success_rate.layout(args)  # type: ignore[arg-type]
    kinds = Counter(p.kind for p in plans)
    assert kinds == Counter({"good": 70, **dict.fromkeys(success_rate.BAD_KINDS, 6)})
    kills = Counter(p.kill for p in plans if p.kill)
    assert kills == Counter({"runner": 7, "queen": 7, "worker": 6})


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([3.0], 95) == 3.0
