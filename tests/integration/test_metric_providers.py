"""The metric providers against the real systems: HAProxy's request log (processes behind a real HAProxy),
a real Prometheus scraping a prometheus-client exporter, and CloudWatch on a moto server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters import create_metric_provider
from adapters.cloudwatch import CloudWatchMetrics
from adapters.haproxy_log import HAProxyMetrics, RequestLogStream, parse_lines
from adapters.prometheus import PrometheusMetrics
from adapters.routed import RoutedPlatform
from engine.judge import Verdict, WindowInput, judge_window
from engine.metrics import Capability, Window
from engine.models import (
    Artifact,
    CanaryConfig,
    DeploymentRequest,
    MetricProviderConfig,
    PlatformConfig,
    Strategy,
    Target,
)
from tests.integration.environments import Moto, moto_server, prometheus_server
from tests.integration.test_local_platform import (
    deploy_pair,
    make_platform,
    port_settings,
    send,
    tear_down,
    wait_until,
)

pytestmark = pytest.mark.integration
SETTINGS = CanaryConfig.model_validate({"minRequestCount": 20})


# --------------------------------------------------------------------------------------------
# HAProxy: per-server counters and the request log ring
# --------------------------------------------------------------------------------------------
@pytest.fixture
def routed(tmp_path: Path) -> Iterator[tuple[RoutedPlatform, Target, Path, dict[str, Any]]]:
    state_dir = tmp_path / "state"
    settings = port_settings()
    platform = make_platform(state_dir, settings)
    target = Target(service="shop", environment="test")
    yield platform, target, state_dir, settings
    tear_down(platform, target, state_dir)


def test_haproxy_gives_a_p95_and_samples_per_revision_from_its_request_log(
    routed: tuple[RoutedPlatform, Target, Path, dict[str, Any]],
) -> None:
    platform, target, state_dir, settings = routed
    stable, canary = deploy_pair(platform, target, {}, {"LATENCY_MS": "150"})
    address = platform.set_traffic(target, {stable: 50, canary: 50}).address
    # HAProxy sends nothing to a server until its first health check has passed.
    wait_until(lambda: platform.metrics(target)[canary].servers_up == 1, 20.0, "the canary's server up")
    provider = HAProxyMetrics(state_dir / "haproxy", settings)
    try:
        started = time.time()
        baselines = provider.baseline(target, [canary, stable])
        answers = send(address, 60)  # about 30 each: more than SETTINGS' 20 requests for a comparison
        served = {version: sum(1 for a in answers if a.version == version) for version in ("1.0.0", "2.0.0")}

        def read() -> dict[str, Any]:
            window = Window(start=started, end=time.time(), baselines=baselines, samples=True)
            return provider.read(target, [canary, stable], window)

        # HAProxy logs a request once it has ended, just after the client has its answer: wait for the lines.
        deadline = time.monotonic() + 15
        figures = read()
        while len(figures[canary].latency_samples) < served["2.0.0"] and time.monotonic() < deadline:
            time.sleep(0.2)
            figures = read()
    finally:
        provider.close()
    assert figures[canary].requests == served["2.0.0"] >= 20 and figures[stable].requests == served["1.0.0"]
    # One log line per answered request, attributed to its revision by the server that answered it.
    assert len(figures[canary].latency_samples) == served["2.0.0"]
    assert len(figures[stable].latency_samples) == served["1.0.0"]
    canary_p95, stable_p95 = figures[canary].response_time_ms, figures[stable].response_time_ms
    assert canary_p95 is not None and canary_p95 >= 150
    assert stable_p95 is not None and stable_p95 < canary_p95 - 100
    assert (figures[canary].servers_up, figures[canary].servers_total) == (1, 1)
    judgement = judge_window(
        WindowInput(candidate=figures[canary], stable=figures[stable], settings=SETTINGS)
    )
    latency = next(c for c in judgement.comparison if c.metric == "responseTime")
    assert latency.outcome == "worse" and latency.p_value is not None and latency.p_value < 0.001


def test_the_request_log_is_followed_not_read_again(
    routed: tuple[RoutedPlatform, Target, Path, dict[str, Any]],
) -> None:
    """Each drain returns only the lines logged since the last one: nothing is counted twice."""
    platform, target, _, _ = routed
    stable, _canary = deploy_pair(platform, target, {}, {})
    address = platform.set_traffic(target, {stable: 100}).address
    source = platform.router.request_log(target)  # type: ignore[attr-defined]
    assert source is not None
    stream = RequestLogStream(source[0])
    try:
        send(address, 5)  # before the stream starts: never seen
        assert stream.drain() == b""
        send(address, 7)
        time.sleep(0.3)
        first = stream.drain().split(b"\n")
        assert len(first) == 7 and all(len(line.split()) == 3 for line in first)
        assert [len(samples) for samples in parse_lines(b"\n".join(first), source[1]).values()] == [7]
        time.sleep(0.3)
        assert stream.drain() == b""
        send(address, 3)
        time.sleep(0.3)
        assert len(stream.drain().split(b"\n")) == 3
    finally:
        stream.close()


def test_the_platform_names_haproxy_as_its_provider(
    routed: tuple[RoutedPlatform, Target, Path, dict[str, Any]],
) -> None:
    platform, _target, state_dir, settings = routed
    request = DeploymentRequest(
        artifact=Artifact(name="shop", version="1"),
        strategy=Strategy(type="canary"),
        environment="test",
        platform=PlatformConfig(
            type="local", settings={**settings, "stateDir": str(state_dir.parent / "state")}
        ),
    )
    provider = create_metric_provider(request, platform, state_dir.parent)
    assert isinstance(provider, HAProxyMetrics) and Capability.LATENCY_SAMPLES in provider.capabilities


# --------------------------------------------------------------------------------------------
# Prometheus: counters and a histogram scraped from a prometheus-client exporter
# --------------------------------------------------------------------------------------------
LABELS = ["service", "environment", "revision", "code"]


def _serve(prometheus: Any, revision: str, count: int, seconds: float, errors: int = 0) -> None:
    for index in range(count):
        code = "500" if index < errors else "200"
        prometheus.requests.labels("shop", "test", revision, code).inc()
        prometheus.latency.labels("shop", "test", revision).observe(seconds)


def _wait_for(url: str, query: str, expected: float, timeout_s: float = 30.0) -> None:
    import json
    import urllib.parse
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(
            f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        ) as answer:
            result = json.loads(answer.read())["data"]["result"]
        if result and float(result[0]["value"][1]) >= expected:
            return
        time.sleep(0.25)
    raise AssertionError(f"Prometheus never showed {query} >= {expected}")


def test_prometheus_gives_counts_a_histogram_quantile_and_bucket_samples(tmp_path: Path) -> None:
    target = Target(service="shop", environment="test")
    with prometheus_server(tmp_path, LABELS) as prometheus:
        _serve(prometheus, "1-0-0", 10, 0.02)
        _wait_for(prometheus.url, 'sum(http_requests_total{revision="1-0-0"})', 10)
        provider = PrometheusMetrics(
            MetricProviderConfig(type="prometheus", url=prometheus.url), lambda t, r: {}
        )
        started = time.time()
        baselines = provider.baseline(target, ["2-0-0", "1-0-0"])
        assert baselines["1-0-0"]["requests"] == 10 and "requests" not in baselines["2-0-0"]
        # Traffic in two halves, as live traffic comes: rate() sees a series grow, not its first sample.
        for half in (0, 1):
            _serve(prometheus, "1-0-0", 150, 0.02, errors=1 - half)
            _serve(prometheus, "2-0-0", 50, 0.6, errors=2)
            _wait_for(prometheus.url, 'sum(http_requests_total{revision="2-0-0"})', 50 * (half + 1))
        time.sleep(1.0)  # two more scrapes
        window = Window(start=started, end=time.time(), baselines=baselines, samples=True)
        figures = provider.read(target, ["2-0-0", "1-0-0"], window)
    candidate, stable = figures["2-0-0"], figures["1-0-0"]
    assert (candidate.requests, candidate.errors, stable.requests, stable.errors) == (100, 4, 300, 1)
    # histogram_quantile(0.95, ...) interpolates inside the bucket (0.5 s, 0.75 s]: in milliseconds.
    assert candidate.response_time_ms is not None and 500 < candidate.response_time_ms <= 750
    assert stable.response_time_ms is not None and 10 < stable.response_time_ms <= 25
    # The window's bucket growth as samples at the bucket bounds, one per request.
    assert sorted(set(candidate.latency_samples)) == [750.0] and len(candidate.latency_samples) == 100
    assert sorted(set(stable.latency_samples)) == [25.0] and len(stable.latency_samples) == 300
    judgement = judge_window(
        WindowInput(candidate=candidate, stable=stable, settings=SETTINGS, provider=provider.name)
    )
    assert judgement.verdict is Verdict.MARGINAL  # 4% errors (not 5%: no failure) and much slower
    by_metric = {c.metric: c for c in judgement.comparison}
    assert by_metric["responseTime"].outcome == "worse"
    # 4% against 0.3% over 100 requests, 1 point tolerated: p is about 0.02, not below the 0.01 asked for.
    errors = by_metric["errorRate"]
    assert errors.outcome == "pass" and errors.p_value is not None and 0.01 < errors.p_value < 0.05


def test_prometheus_query_templates_are_the_strategy_s(tmp_path: Path) -> None:
    target = Target(service="shop", environment="test")
    with prometheus_server(tmp_path, LABELS) as prometheus:
        _serve(prometheus, "3-0-0", 40, 0.01, errors=4)
        _wait_for(prometheus.url, 'sum(http_requests_total{revision="3-0-0"})', 40)
        config = MetricProviderConfig.model_validate(
            {
                "type": "prometheus",
                "url": prometheus.url,
                "selector": 'revision="{revision}"',
                "queries": {"errors": 'sum(http_requests_total{{selector},code="500"}) * 2'},
            }
        )
        provider = PrometheusMetrics(config, lambda t, r: {})
        window = Window(start=time.time() - 5, end=time.time(), percentile=50)
        figures = provider.read(target, ["3-0-0"], window)["3-0-0"]
    assert (figures.requests, figures.errors) == (40, 8)


# --------------------------------------------------------------------------------------------
# CloudWatch on moto
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    with moto_server(tmp_path_factory.mktemp("cw"), "metric-provider-role") as server:
        yield server


def _put(moto: Moto, version: str, **values: list[float]) -> None:
    dimensions = [
        {"Name": "FunctionName", "Value": "shop-test"},
        {"Name": "Resource", "Value": "shop-test:live"},
        {"Name": "ExecutedVersion", "Value": version},
    ]
    data = [
        {"MetricName": name, "Dimensions": dimensions, "Values": points, "Timestamp": datetime.now(UTC)}
        for name, points in values.items()
    ]
    moto.client("cloudwatch").put_metric_data(Namespace="AWS/Lambda", MetricData=data)


def test_cloudwatch_reads_each_version_s_sums_and_says_what_it_lacks(moto: Moto) -> None:
    versions = {"1-0-0": "1", "2-0-0": "2"}

    def labels(target: Target, revision: str) -> dict[str, str]:
        return {"function": "shop-test", "alias": "live", "version": versions[revision]}

    config = MetricProviderConfig(
        type="cloudwatch", settings={"endpointUrl": moto.url, "region": "us-east-1"}
    )
    provider = CloudWatchMetrics(config, labels)
    started = time.time()
    _put(moto, "1", Invocations=[200, 100], Errors=[1], Duration=[20, 30])
    _put(moto, "2", Invocations=[50], Errors=[5], Duration=[300, 400])
    window = Window(start=started, end=time.time(), percentile=95, samples=True)
    figures = provider.read(Target(service="shop", environment="test"), ["2-0-0", "1-0-0"], window)
    provider.close()
    assert (figures["2-0-0"].requests, figures["2-0-0"].errors) == (50, 5)
    assert (figures["1-0-0"].requests, figures["1-0-0"].errors) == (300, 1)
    # moto answers ExtendedStatistics without a p95 (AWS gives one): not available, and the judgement says so.
    assert figures["2-0-0"].response_time_ms is None and figures["2-0-0"].latency_samples == []
    seed_like = CanaryConfig.model_validate(
        {"successThreshold": {"errorRate": 1, "responseTime": 500}, "minRequestCount": 20}
    )
    judgement = judge_window(
        WindowInput(
            candidate=figures["2-0-0"], stable=figures["1-0-0"], settings=seed_like, provider="cloudwatch"
        )
    )
    assert "responseTime" in judgement.unavailable and "comparison.responseTime" in judgement.unavailable
    assert "cloudwatch gives no per-request latency samples" in judgement.reason
    assert judgement.verdict is Verdict.FAILURE  # 10% errors: beyond the default failure threshold of 5%
