"""What the reconciler's analysis steps read: an analysis window measured through a metric provider.

``WindowReader`` holds, for one reconciler, the provider (built once), the candidate's figures of the check
in progress, and the window's health observations (for ``availability``). The verdicts are ``engine.judge``'s;
the decisions (wait, roll back, extend, pause) stay in the reconciler.

A window starts at its step's journaled start (or its last restart) and is measured against the baselines
journaled with that start, so a new runner after a crash measures the same window. Health observations
and a provider's latency samples are kept in memory: after a crash they count from the new runner's first
check (the judgement's sample sizes say how many there were).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.judge import WindowInput, breaches_failure, figures_of
from engine.metrics import Capability, MetricProvider, PlatformCounters, RevisionFigures, Window
from engine.models import AnalysisSettings, DeploymentRequest, Strategy
from engine.platform import MetricSnapshot, PlatformAdapter
from engine.state import DeploymentState, Step

MetricsFactory = Callable[[DeploymentRequest, PlatformAdapter], MetricProvider]
MIN_HEALTH_OBSERVATIONS = 3


def platform_counters(request: DeploymentRequest, adapter: PlatformAdapter) -> MetricProvider:
    """The default provider when none is injected: the platform adapter's own counters."""
    return PlatformCounters(adapter)


def analysis_settings(strategy: Strategy) -> AnalysisSettings:
    config = strategy.canary or strategy.blue_green or strategy.rolling
    assert config is not None
    return config


def window_end(state: DeploymentState, step: Step) -> float:
    """A window lasts its step's duration, once more for each extension (too few requests)."""
    started = state.step_started_at or 0.0
    return started + step.duration_ms / 1000 * (1 + state.window_extensions)


def compared_revisions(state: DeploymentState) -> list[str]:
    """The candidate, and the stable revision it is compared with when there is one."""
    candidate = state.candidate_revision or ""
    stable = state.stable_revision
    return [candidate, stable] if stable and stable != candidate else [candidate]


def journaled_baselines(state: DeploymentState) -> dict[str, dict[str, float]]:
    """The step's baselines by revision (journals written before providers held the candidate's counters
    at the top level)."""
    baseline: dict[str, Any] = state.step_baseline
    if "requests" in baseline or "errors" in baseline:
        return {state.candidate_revision or "": {k: float(v) for k, v in baseline.items()}}
    return {rev: dict(values) for rev, values in baseline.items() if isinstance(values, dict)}


class WindowReader:
    def __init__(
        self, adapter: Callable[[], PlatformAdapter], factory: MetricsFactory, now: Callable[[], float]
    ) -> None:
        self._adapter = adapter
        self._factory = factory
        self._now = now
        self._provider: MetricProvider | None = None
        self.figures: RevisionFigures | None = None  # the candidate's, read by this check
        self._health: tuple[float, float, int] = (0.0, 0.0, 0)  # window start, sum of up shares, checks
        self.smoke: tuple[int, int] | None = None  # (succeeded, failed) of this step's smoke test
        self.not_measurable: set[str] = set()  # trigger figures this platform cannot give (this step)

    def provider(self, request: DeploymentRequest) -> MetricProvider:
        if self._provider is None:
            self._provider = self._factory(request, self._adapter())
        return self._provider

    def close(self) -> None:
        if self._provider is not None:
            self._provider.close()
            self._provider = None

    def start_step(self) -> None:
        self.smoke = None
        self.figures = None
        self.not_measurable = set()

    def baseline(self, state: DeploymentState) -> dict[str, Any]:
        request = state.request
        return dict(self.provider(request).baseline(request.target, compared_revisions(state)))

    def _window(self, state: DeploymentState, samples: bool) -> Window:
        """The window so far; a frequent check asks for the latency percentile only when a failure threshold
        needs it (validation's triggers always may)."""
        settings = analysis_settings(state.request.strategy)
        needs_latency = samples or settings.failure_threshold.response_time is not None
        return Window(
            start=state.step_started_at or self._now(),
            end=self._now(),
            baselines=journaled_baselines(state),
            percentile=settings.response_time_percentile,
            samples=samples,
            latency=needs_latency or state.request.strategy.blue_green is not None,
        )

    def candidate_snapshot(self, state: DeploymentState) -> MetricSnapshot | None:
        """The candidate's figures for this check; as a health snapshot when the provider reads servers with
        them (HAProxy: one query for both), else the platform's own snapshot."""
        request, revision = state.request, state.candidate_revision or ""
        provider = self.provider(request)
        self.figures = provider.read(request.target, [revision], self._window(state, False)).get(revision)
        if Capability.SERVERS in provider.capabilities:
            return self.figures.snapshot(self._now()) if self.figures is not None else None
        return self._adapter().metrics(request.target, revision).get(revision)

    def observe_health(self, state: DeploymentState, snapshot: MetricSnapshot | None) -> None:
        """One health observation for the window's availability (the share of the candidate's servers up).

        Observations count from the first one with a server up: a router's first health check of a server
        it was just given (up to its check interval) is the router starting to look, not the candidate
        down; a candidate never up is the health check's to roll back (``UNHEALTHY_CHECKS`` in a row)."""
        start = state.step_started_at or 0.0
        if self._health[0] != start:
            self._health = (start, 0.0, 0)
        if snapshot is None or snapshot.servers_total <= 0:
            return
        _, up, checks = self._health
        share = snapshot.servers_up / snapshot.servers_total
        if checks or share > 0:
            self._health = (start, up + share, checks + 1)

    def availability(self, state: DeploymentState) -> float | None:
        """Percent of the window's health observations with the candidate up; None until there are
        ``MIN_HEALTH_OBSERVATIONS`` (a share of one or two checks says little)."""
        start, up, checks = self._health
        if start != (state.step_started_at or 0.0) or checks < MIN_HEALTH_OBSERVATIONS:
            return None
        return round(100.0 * up / checks, 3)

    def failing(self, state: DeploymentState) -> WindowInput | None:
        """This check's input when a failure threshold is breached (candidate only, no samples); None
        otherwise. The frequent checks pay for plain arithmetic only."""
        settings = analysis_settings(state.request.strategy)
        availability = self.availability(state)
        if self.figures is None or not breaches_failure(self.figures, availability, settings):
            return None
        return WindowInput(
            candidate=self.figures,
            availability=availability,
            settings=settings,
            final=False,
            extensions=state.window_extensions,
            provider=self.provider(state.request).name,
        )

    def window_end(self, state: DeploymentState) -> WindowInput:
        """The whole window: candidate and stable, with latency samples, for the judge."""
        request = state.request
        provider = self.provider(request)
        window = self._window(state, True)
        revisions = compared_revisions(state)
        read = provider.read(request.target, revisions, window)
        candidate = read.get(revisions[0]) or RevisionFigures(revision=revisions[0], seconds=window.seconds)
        return WindowInput(
            candidate=candidate,
            stable=read.get(revisions[1]) if len(revisions) > 1 else None,
            availability=self.availability(state),
            settings=analysis_settings(request.strategy),
            final=True,
            extensions=state.window_extensions,
            provider=provider.name,
        )

    def validation_figures(
        self, state: DeploymentState, healthy: bool, ready_replicas: int
    ) -> dict[str, float | str | None]:
        """The figures a blue-green switch trigger can name (``engine.models.TRIGGER_METRICS``), for the idle
        candidate: its smoke requests stand in for traffic when the router sent it none."""
        settings = analysis_settings(state.request.strategy)
        raw = self.figures or RevisionFigures(revision=state.candidate_revision or "")
        figures = figures_of(raw, settings.response_time_percentile, self.availability(state))
        if not figures.requests and self.smoke is not None and sum(self.smoke) > 0:
            ok, failed = self.smoke
            figures = figures.model_copy(
                update={
                    "requests": ok + failed,
                    "errors": failed,
                    "error_rate": 100.0 * failed / (ok + failed),
                }
            )
        smoke_rate = 100.0 * self.smoke[0] / sum(self.smoke) if self.smoke and sum(self.smoke) else None
        return {
            "health_status": "healthy" if healthy else "unhealthy",
            "ready_replicas": float(ready_replicas),
            "error_rate": figures.error_rate,
            "response_time": figures.response_time_ms,
            "availability": figures.availability,
            "throughput": figures.throughput,
            "request_count": None if figures.requests is None else float(figures.requests),
            "smoke_success_rate": smoke_rate,
        }
