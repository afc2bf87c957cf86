"""The simulated traffic's accounting (harness/simulated_traffic.py): downtime is counted, a faulty
revision's own errors are told apart from it (harness/scenarios.py's ``downtime``)."""

from __future__ import annotations

from collections import Counter

from harness.fakes import FakeClock, FakePlatform
from harness.scenarios import downtime
from harness.simulated_traffic import UNROUTED, SimulatedTraffic


class Scripted(SimulatedTraffic):
    """Routes and readiness given by the test, one entry per read; 10 requests a tick."""

    tick_s = 1.0
    per_second = 10
    weight_unit = 100
    nothing_served = "nothing served"

    def __init__(self, routes: list[dict[str, float]], serving: dict[str, tuple[float, str]]) -> None:
        super().__init__(FakePlatform(FakeClock()), "scripted", "scripted")
        self.routes, self.ready = routes, serving
        self.published: list[dict[str, tuple[int, int]]] = []

    def _route(self) -> dict[str, float]:
        return self.routes.pop(0) if len(self.routes) > 1 else self.routes[0]

    def _serving(self, revisions: dict[str, float]) -> dict[str, tuple[float, str]]:
        return dict(self.ready)

    def _publish(self, sent: dict[str, tuple[int, int]]) -> None:
        self.published.append(sent)


STABLE = ("1-0-0", (0.0, "1.0.0"))
BAD = ("2-0-0", (0.5, "2.0.0"))


def ticks(traffic: Scripted, count: int) -> Counter[tuple[str, int]]:
    for _ in range(count):
        traffic._tick()
    return traffic.snapshot()


def test_a_split_is_served_and_a_faulty_revision_fails_its_own_share() -> None:
    traffic = Scripted([{"1-0-0": 50, "2-0-0": 50}], dict([STABLE, BAD]))
    counts = ticks(traffic, 4)
    assert counts == Counter({("1.0.0", 200): 20, ("2.0.0", 200): 10, ("2.0.0", 500): 10})
    assert downtime(counts, faulty={"2.0.0"}) == {}
    assert downtime(counts) == {("2.0.0", 500): 10}  # a good revision's errors would be downtime


def test_no_route_is_downtime() -> None:
    traffic = Scripted([{}], dict([STABLE]))
    assert ticks(traffic, 3) == Counter({(UNROUTED, 0): 30})
    assert downtime(traffic.snapshot(), faulty={"1.0.0"}) == {(UNROUTED, 0): 30}


def test_a_route_to_a_revision_that_is_not_serving_is_downtime() -> None:
    traffic = Scripted([{"1-0-0": 50, "2-0-0": 50}], dict([STABLE]))  # 2-0-0 has no ready replica
    counts = ticks(traffic, 2)
    assert counts == Counter({("1.0.0", 200): 10, (UNROUTED, 0): 10})
    assert downtime(counts, faulty={"2.0.0"}) == {(UNROUTED, 0): 10}


def test_a_revision_that_left_the_route_meanwhile_answered_its_requests() -> None:
    """Read, then its removal: the route read again no longer has it, so it was switched away in time."""
    traffic = Scripted([{"1-0-0": 50, "2-0-0": 50}, {"2-0-0": 100}], dict([BAD]))
    counts = ticks(traffic, 1)
    assert counts[(UNROUTED, 0)] == 0 and counts[("2.0.0", 200)] + counts[("2.0.0", 500)] == 5


def test_http_counts_read_the_same_way() -> None:
    """TrafficGenerator's (X-Version, status): no answer is 0, HAProxy's own 503 has no version."""
    counts: Counter[tuple[str, int]] = Counter(
        {("1.0.0", 200): 9, ("2.0.0", 500): 3, ("?", 503): 1, ("?", 0): 2}
    )
    assert downtime(counts, faulty={"2.0.0"}) == {("?", 503): 1, ("?", 0): 2}
