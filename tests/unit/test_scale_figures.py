"""benchmarks/scale.py's figures and its verdict, from a journal written here with a fake clock (no Ray):
admission latency and the queue's hand-off delay, throughput and journal writes, and every way a deployment
counts as a problem (failed, lost, ended twice) that makes the benchmark exit non-zero."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from engine.journal import Journal
from engine.models import Artifact, DeploymentRequest, PlatformConfig, Strategy
from engine.state import EventKind

REPO = Path(__file__).resolve().parents[2]


def _scale() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scale_benchmark", REPO / "benchmarks" / "scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


scale = _scale()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _request(service: str) -> DeploymentRequest:
    return DeploymentRequest(
        artifact=Artifact(name=service, version="1.0.0", source=f"docker://registry.test/{service}:1"),
        strategy=Strategy.model_validate({"type": "rolling", "replicas": 2}),
        environment="development",
        platform=PlatformConfig(type="kubernetes"),
    )


@pytest.fixture
def journal(tmp_path: Path) -> tuple[Journal, Clock]:
    clock = Clock()
    return Journal(tmp_path / "journal.db", clock=clock), clock


def _run(journal: Journal, clock: Clock, at: float, kind: EventKind, deployment: str, **data: object) -> None:
    clock.now = at
    journal.append(deployment, kind, dict(data))


def _three_with_one_slot(journal: Journal, clock: Clock) -> list[str]:
    """Three deployments submitted at t=0 with one slot: a runs 0-10, b 10.5-20, c 20.2-30."""
    ids = ["a", "b", "c"]
    for deployment in ids:
        journal.submit(deployment, _request(f"svc-{deployment}"), "bench")
    for deployment, start, end in (("a", 0.0, 10.0), ("b", 10.5, 20.0), ("c", 20.2, 30.0)):
        _run(journal, clock, 1000 + start, EventKind.ADMITTED, deployment, runner="r")
        _run(
            journal,
            clock,
            1000 + start + 1,
            EventKind.PLANNED,
            deployment,
            plan=[],
            candidate_revision="1-0-0",
        )
        _run(journal, clock, 1000 + end, EventKind.FINISHED, deployment, outcome="succeeded")
    return ids


def test_the_figures_of_a_burst_come_from_the_journal(journal: tuple[Journal, Clock]) -> None:
    j, clock = journal
    ids = _three_with_one_slot(j, clock)
    figures = scale.measure(j, ids, 0, concurrency=1)
    assert figures["completed"] == 3 and figures["span_s"] == pytest.approx(30.0)
    assert figures["deployments_per_min"] == pytest.approx(6.0)
    # Admission waits 0, 10.5 and 20.2 s; the queue's own hand-off after each slot freed: 0, 0.5 and 0.2 s.
    assert figures["admission_latency_p50_s"] == pytest.approx(10.5)
    assert figures["admission_handoff_p50_s"] == pytest.approx(0.2)
    assert figures["admission_handoff_p95_s"] == pytest.approx(0.47)
    assert figures["preparation_p50_s"] == pytest.approx(1.0)
    # 3 submitted + 3 x (admitted, planned, finished) events.
    assert figures["journal_writes"] == 12 and figures["journal_writes_per_s"] == pytest.approx(0.4)


def test_a_failed_a_lost_and_a_twice_ended_deployment_are_problems(journal: tuple[Journal, Clock]) -> None:
    j, clock = journal
    ids = _three_with_one_slot(j, clock)
    assert scale.lost_or_failed(j, ids, set(ids)) == []
    j.submit("lost", _request("svc-lost"), "bench")
    j.submit("failed", _request("svc-failed"), "bench")
    _run(j, clock, 1040, EventKind.ADMITTED, "failed", runner="r")
    _run(j, clock, 1041, EventKind.FINISHED, "failed", outcome="failed", message="boom")
    problems = scale.lost_or_failed(j, [*ids, "lost", "failed"], {*ids, "failed"})
    assert len(problems) == 2
    assert problems[0].startswith("lost: no terminal event by the deadline")
    assert problems[1].startswith("failed: ended failed")
    # A second terminal event (one deployment ending twice) is a problem of its own.
    j.append_event("a", EventKind.FINISHED, {"outcome": "succeeded"})
    assert scale.lost_or_failed(j, ids, set(ids)) == ["a: 2 terminal events"]


def test_growth_is_the_largest_size_over_the_smallest() -> None:
    def cell(size: int, per_min: float) -> dict[str, object]:
        burst = dict.fromkeys(scale.FIGURES, 1.0) | {"deployments_per_min": per_min}
        return {"backend": "sqlite", "size": size, "problems": [], "bursts": {"update": burst}}

    grown = scale.growth([cell(100, 30.0), cell(10, 20.0), cell(30, 99.0)], ["sqlite"])
    assert grown["sqlite 10->100"]["update"]["deployments_per_min"] == pytest.approx(1.5)
    failed = {**cell(100, 30.0), "problems": ["x"]}
    assert "sqlite 10->30" in scale.growth([failed, cell(10, 20.0), cell(30, 99.0)], ["sqlite"])
