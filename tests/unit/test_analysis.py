"""What the analysis reads: health observations for availability, baselines journaled before providers,
the default provider over a platform's counters."""

from __future__ import annotations

from engine.analysis import WindowReader, journaled_baselines, platform_counters
from engine.metrics import PlatformCounters, Window, percentile, thin
from engine.models import Artifact, DeploymentRequest, PlatformConfig, Strategy, Target
from engine.platform import MetricSnapshot
from engine.state import DeploymentState
from tests.unit.fakes import FakeClock, FakePlatform, FakeRevision


def state(started: float = 100.0, baseline: dict[str, object] | None = None) -> DeploymentState:
    request = DeploymentRequest(
        artifact=Artifact(name="web", version="2.0.0"),
        strategy=Strategy(type="canary"),
        environment="staging",
        platform=PlatformConfig(type="local"),
    )
    return DeploymentState(
        deployment_id="d",
        request=request,
        submitted_at=0,
        updated_at=0,
        candidate_revision="2-0-0",
        stable_revision="1-0-0",
        step_started_at=started,
        step_baseline=baseline or {},
    )


def snap(up: int, total: int = 2) -> MetricSnapshot:
    return MetricSnapshot(at=0, servers_up=up, servers_total=total)


def reader() -> WindowReader:
    clock = FakeClock()
    platform = FakePlatform(clock=clock)
    return WindowReader(lambda: platform, platform_counters, clock.now)


def test_availability_counts_from_the_first_check_with_the_candidate_up() -> None:
    window, now = reader(), state()
    for observed in (snap(0), snap(0), snap(2), snap(2), snap(1), snap(2)):  # the router's first checks
        window.observe_health(now, observed)
    assert window.availability(now) == 87.5  # (1 + 1 + 0.5 + 1) / 4, the start-up checks left out


def test_availability_needs_a_few_observations_and_belongs_to_its_window() -> None:
    window, now = reader(), state()
    window.observe_health(now, snap(2))
    window.observe_health(now, snap(0))
    assert window.availability(now) is None  # two checks say little
    window.observe_health(now, snap(0))
    assert window.availability(now) == 33.333
    assert window.availability(state(started=200.0)) is None  # a new window starts from nothing


def test_a_candidate_never_up_has_no_availability_its_health_check_rolls_it_back() -> None:
    window, now = reader(), state()
    for _ in range(5):
        window.observe_health(now, snap(0))
    assert window.availability(now) is None


def test_a_baseline_journaled_before_providers_is_the_candidate_s() -> None:
    old = state(baseline={"requests": 40, "errors": 2})
    assert journaled_baselines(old) == {"2-0-0": {"requests": 40.0, "errors": 2.0}}
    new = state(baseline={"2-0-0": {"requests": 1}, "1-0-0": {"requests": 9}})
    assert journaled_baselines(new) == {"2-0-0": {"requests": 1}, "1-0-0": {"requests": 9}}


def test_platform_counters_measure_the_window_from_its_baselines() -> None:
    clock = FakeClock()
    platform = FakePlatform(clock=clock)
    target = Target(service="web", environment="staging")
    platform.revisions["2-0-0"] = FakeRevision(replicas=1)
    platform.weights = {"2-0-0": 100}
    provider = PlatformCounters(platform)
    platform.metrics(target)
    baselines = provider.baseline(target, ["2-0-0"])
    clock.sleep(10)
    figures = provider.read(target, ["2-0-0"], Window(start=0, end=10, baselines=baselines))["2-0-0"]
    assert figures.requests == 1000 and figures.errors == 0 and figures.response_time_ms is None


def test_percentiles_and_thinning() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.5 and percentile(values, 95) == 95.05 and percentile([], 95) is None
    thinned = thin(values, 10)
    assert len(thinned) == 10 and thinned[0] == 1.0 and thinned[-1] == 91.0


def test_request_log_lines_are_parsed_per_revision() -> None:
    from adapters.haproxy_log import parse_lines

    data = b"\n".join(
        [
            b"s1 200 3",
            b"s2 500 40",
            b"<NOSRV> 503 0",  # reached no server
            b"s2 -1 -1",  # no answer
            b"s9 200 1",  # a slot no revision holds
        ]
    )
    found = parse_lines(data, {b"s1": "1-0-0", b"s2": "2-0-0"})
    assert found == {"1-0-0": [3.0], "2-0-0": [40.0]}
    assert parse_lines(data + b"\ns1 200", {b"s1": "1-0-0"}) == {"1-0-0": [3.0]}  # a short line is skipped
