"""Pydantic v2 models: the only things that cross actor boundaries and the journal.

Configuration keys load in the seed's camelCase (``initialTrafficPercentage``, ``stepDuration`` in
milliseconds) and in Pythonic snake_case alike.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from engine.quantities import parse_bytes, parse_cpu, show_bytes
from engine.secrets import REFERENCE, looks_secret

SUPPORTED_PLATFORMS = ("local", "docker", "kubernetes", "lambda", "vm")
KNOWN_UNSUPPORTED_PLATFORMS = ("azure_functions", "gcp_functions", "google_cloud_functions")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_MS = {"ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _duration_ms(value: Any) -> Any:
    """Accept a number of milliseconds or a string such as '30s', '5m', '250ms'."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"'{value}' is not a duration: use milliseconds or a string like '30s', '5m'")
        return int(float(match.group(1)) * _UNIT_MS[match.group(2) or "ms"])
    return value


def _dns_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"'{value}' is not a valid name: use lower-case letters, digits and '-', at most 63 characters"
        )
    return value


def without_secrets(env: dict[str, str], prefix: str, advice: str) -> dict[str, str]:
    """Refuse plain variables whose names look like secrets (their values would reach the journal)."""
    for name in env:
        if looks_secret(name):
            raise ValueError(f"{prefix}{name} looks like a secret: {advice}")
    return env


DurationMs = Annotated[int, BeforeValidator(_duration_ms), Field(ge=0)]
Percent = Annotated[int, Field(ge=0, le=100)]
Name = Annotated[str, AfterValidator(_dns_name)]


class Model(BaseModel):
    """Base: accepts camelCase and snake_case, refuses unknown keys, serialises to camelCase."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_default=True
    )


# --------------------------------------------------------------------------------------------
# Artifacts
# --------------------------------------------------------------------------------------------
class BuildInfo(Model):
    """Where an artifact was built: recorded in the artifact registry and covered by its signature."""

    commit: str | None = Field(default=None, max_length=200)
    built_at: str | None = Field(default=None, max_length=64, description="When it was built (ISO 8601)")
    builder: str | None = Field(default=None, max_length=200, description="Who or what built it (a CI job)")


class ArtifactSignature(Model):
    """An ed25519 signature of the artifact's signing payload (engine.artifacts.signing_payload)."""

    key_id: str = Field(min_length=1, max_length=100, description="Name of the key under trustedKeys")
    value: str = Field(min_length=1, max_length=200, description="The signature, base64")


class Artifact(Model):
    """A revision of a service: what to run and where it comes from."""

    name: Name
    version: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    source: str = Field(default="local", description="Where it comes from: 'local', an image, a file or URL")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    metadata: dict[str, str] = Field(default_factory=dict)
    command: list[str] = Field(default_factory=list, description="Process command (local, vm platforms)")
    working_dir: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    secret_env: dict[str, str] = Field(
        default_factory=dict, description="NAME -> env:VAR or file:/path; resolved only where replicas start"
    )
    health_path: str = "/health"
    path: str | None = Field(
        default=None, description="The artifact's content on disk (a file, or a folder hashed reproducibly)"
    )
    build: BuildInfo | None = None
    signature: ArtifactSignature | None = None

    @field_validator("env")
    @classmethod
    def _no_plain_secrets(cls, env: dict[str, str]) -> dict[str, str]:
        advice = "put a reference in secretEnv (env:NAME or file:/path) so that its value never reaches "
        return without_secrets(env, "env.", advice + "the journal")

    @field_validator("secret_env")
    @classmethod
    def _references_only(cls, secret_env: dict[str, str]) -> dict[str, str]:
        for name, reference in secret_env.items():
            if not REFERENCE.match(reference):
                raise ValueError(f"secretEnv.{name}: use a reference, env:NAME or file:/path, not a value")
        return secret_env

    @property
    def revision(self) -> str:
        """The revision id used on platforms: the version, made safe for names."""
        return re.sub(r"[^a-z0-9-]", "-", self.version.lower()).strip("-")[:40] or "rev"


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------
class StrategyType(str, Enum):
    BLUE_GREEN = "blue_green"
    CANARY = "canary"
    ROLLING = "rolling"


class Thresholds(Model):
    """A revision's limits over an analysis window, in the seed's units.

    ``errorRate`` and ``availability`` are percent (1 means 1%), ``responseTime`` is milliseconds judged on
    the strategy's ``responseTimePercentile`` (p95 by default), ``throughput`` the requests per second the
    revision must serve at least. A threshold left out is not judged.
    """

    error_rate: float | None = Field(default=None, ge=0.0, le=100.0, description="Percent of 5xx responses")
    response_time: float | None = Field(default=None, gt=0, description="Milliseconds, at the percentile")
    availability: float | None = Field(
        default=None, ge=0.0, le=100.0, description="Percent of the window with the revision's replicas up"
    )
    throughput: float | None = Field(default=None, ge=0.0, description="Requests per second, at least")

    def named(self) -> dict[str, float]:
        """The thresholds given, by their camelCase names (plain attribute reads: called at every check)."""
        figures = {
            "errorRate": self.error_rate,
            "responseTime": self.response_time,
            "availability": self.availability,
            "throughput": self.throughput,
        }
        return {name: value for name, value in figures.items() if value is not None}


class FailureThresholds(Thresholds):
    consecutive_failures: int = Field(default=3, ge=1, le=100)


class OnInconclusive(str, Enum):
    """What a window that never gathered enough requests (after its extensions) leads to."""

    PAUSE = "pause"  # a person decides: resume (a new window), promote, abort or roll back
    FAIL = "fail"  # the analysis fails: rolled back like a failed window


class ComparisonSettings(Model):
    """The statistical judge: the candidate against the stable revision over the same window.

    Mann-Whitney U on latency samples and a two-proportion z-test on error rates, one-sided (is the candidate
    worse?). A difference counts only when it is significant at ``significance`` and larger than the
    tolerance, so that a revision as good as the stable one passes however much traffic there is.
    """

    enabled: bool = True
    significance: float = Field(default=0.01, gt=0.0, lt=0.5, description="p-value under which it counts")
    error_rate_tolerance: float = Field(
        default=1.0, ge=0.0, le=100.0, description="Percentage points the candidate may be above the stable"
    )
    response_time_tolerance: float = Field(
        default=20.0, ge=0.0, description="Percent slower than the stable that is still tolerated"
    )
    response_time_tolerance_ms: float = Field(
        default=5.0, ge=0.0, description="...and at least this many milliseconds slower"
    )


class MetricProviderType(str, Enum):
    PLATFORM = "platform"  # the platform adapter's own counters (no latency percentiles)
    HAPROXY = "haproxy"  # HAProxy's per-server statistics and its request log (local, docker, vm)
    PROMETHEUS = "prometheus"  # any platform whose revisions export to a Prometheus
    CLOUDWATCH = "cloudwatch"  # AWS CloudWatch (Lambda's default)


# The placeholders a metric query template may use: labels of the revision and of the window.
QUERY_PLACEHOLDERS = frozenset(
    {
        "service",
        "environment",
        "revision",
        "namespace",
        "selector",
        "window",
        "window_seconds",
        "quantile",
        "percentile",
        "function",
        "alias",
        "version",
    }
)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def render_query(template: str, values: dict[str, str]) -> str:
    """``{name}`` placeholders replaced; PromQL's own braces (``{code=~"5.."}``) are left as they are."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ValueError(f"placeholder {{{name}}} has no value here (known: {', '.join(sorted(values))})")
        return values[name]

    return _PLACEHOLDER.sub(value, template)


class MetricProviderConfig(Model):
    """Where a strategy's metrics come from; without one, the platform's own provider.

    ``queries`` are templates per metric (Prometheus: PromQL; CloudWatch: metric names), ``dimensions`` the
    CloudWatch dimensions (templates too), ``settings`` the provider's connection keys (region,
    endpointUrl...).
    """

    type: MetricProviderType
    url: str | None = Field(default=None, description="Prometheus: the server's base URL")
    queries: dict[str, str] = Field(default_factory=dict)
    selector: str | None = Field(default=None, description="Prometheus: label matchers of one revision")
    dimensions: dict[str, str] = Field(default_factory=dict)
    namespace: str | None = Field(default=None, description="CloudWatch: the metrics' namespace")
    latency_unit: Literal["ms", "s"] = Field(default="s", description="Prometheus: the histogram's unit")
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("queries", "dimensions")
    @classmethod
    def _known_placeholders(cls, templates: dict[str, str]) -> dict[str, str]:
        for name, template in templates.items():
            unknown = set(_PLACEHOLDER.findall(template)) - QUERY_PLACEHOLDERS
            if unknown:
                raise ValueError(
                    f"{name}: unknown placeholder {{{sorted(unknown)[0]}}}; "
                    f"known: {', '.join(sorted(QUERY_PLACEHOLDERS))}"
                )
        return templates

    @model_validator(mode="after")
    def _reachable(self) -> MetricProviderConfig:
        if self.type is MetricProviderType.PROMETHEUS and not self.url:
            raise ValueError("url: a Prometheus provider needs the server's URL, e.g. http://prometheus:9090")
        return self


# A breach is seen within one interval. Each check costs about 1 ms of CPU (a runner wakes for it with cold
# caches): at 2 s the orchestrator stays within its 0.2% CPU budget per deployment (benchmarks/overhead.py);
# a strategy that needs faster detection sets its own analysisInterval.
DEFAULT_ANALYSIS_INTERVAL_MS = 2_000


class AnalysisSettings(Model):
    """What every strategy that judges a revision on live metrics shares."""

    success_threshold: Thresholds = Thresholds(error_rate=1.0)
    failure_threshold: FailureThresholds = FailureThresholds(error_rate=5.0)
    response_time_percentile: float = Field(default=95.0, gt=0.0, lt=100.0)
    min_request_count: int = Field(default=10, ge=1, description="Fewer requests than this is 'no data'")
    max_window_extensions: int = Field(
        default=2, ge=0, le=100, description="Times a window without enough requests is lengthened"
    )
    on_inconclusive: OnInconclusive = OnInconclusive.PAUSE
    comparison: ComparisonSettings = ComparisonSettings()
    metric_provider: MetricProviderConfig | None = None
    analysis_interval: DurationMs = DEFAULT_ANALYSIS_INTERVAL_MS

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> AnalysisSettings:
        _check_thresholds(self.success_threshold, self.failure_threshold)
        return self


class CanaryConfig(AnalysisSettings):
    initial_traffic_percentage: Percent = 10
    step_percentage: Annotated[int, Field(ge=1, le=100)] = 10
    step_duration: DurationMs = 300_000
    max_steps: int = Field(default=10, ge=1, le=100)
    canary_replicas: int = Field(default=1, ge=1)

    @field_validator("step_percentage", mode="before")
    @classmethod
    def _step_not_zero(cls, value: Any) -> Any:
        if value == 0:
            raise ValueError("a step of 0% would never finish; use 1-100")
        return value

    @model_validator(mode="after")
    def _first_step_sends_traffic(self) -> CanaryConfig:
        if self.initial_traffic_percentage == 0:
            raise ValueError("initialTrafficPercentage: 0% sends no traffic to judge; use 1-100")
        return self

    def weights(self) -> list[int]:
        """The canary weight at each step: initial, then + step, capped at maxSteps and 100."""
        result = [self.initial_traffic_percentage]
        while len(result) < self.max_steps and result[-1] < 100:
            result.append(min(100, result[-1] + self.step_percentage))
        return result


def _check_thresholds(success: Thresholds, failure: Thresholds) -> None:
    """Impossible pairs are refused naming the field: a failure limit on the wrong side of the success one."""
    pairs = (  # name, success, failure, True when a higher value is worse
        ("errorRate", success.error_rate, failure.error_rate, True),
        ("responseTime", success.response_time, failure.response_time, True),
        ("availability", success.availability, failure.availability, False),
        ("throughput", success.throughput, failure.throughput, False),
    )
    for name, good, bad, higher_is_worse in pairs:
        if good is None or bad is None:
            continue
        if higher_is_worse and bad < good:
            raise ValueError(
                f"failureThreshold.{name} ({bad:g}) is looser than successThreshold.{name} ({good:g}): "
                "it must be at least as high"
            )
        if not higher_is_worse and bad > good:
            raise ValueError(
                f"failureThreshold.{name} ({bad:g}) is above successThreshold.{name} ({good:g}): "
                "a revision cannot fail with more than it needs to succeed; it must be at most as high"
            )


class TriggerType(str, Enum):
    HEALTH = "health"
    METRICS = "metrics"
    SMOKE_TEST = "smoke_test"
    MANUAL = "manual"


class TriggerOperator(str, Enum):
    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"


class TriggerAction(str, Enum):
    SWITCH = "switch"  # the switch may go ahead once every switch trigger holds
    ROLLBACK = "rollback"  # the condition holding rolls the candidate back
    PAUSE = "pause"  # the condition holding pauses the deployment for a person


# The figures a trigger condition can name, measured on the candidate during validation.
TRIGGER_METRICS: dict[str, str] = {
    "health_status": "'healthy' when a replica of the candidate is up, else 'unhealthy'",
    "error_rate": "percent of the candidate's requests answered 5xx",
    "response_time": "milliseconds, at the strategy's responseTimePercentile",
    "availability": "percent of the window with the candidate's replicas up",
    "throughput": "requests per second the candidate served",
    "request_count": "requests the candidate served in the window",
    "smoke_success_rate": "percent of the smoke requests that succeeded",
    "ready_replicas": "the candidate's ready replicas",
}


class TriggerCondition(Model):
    metric: str
    operator: TriggerOperator
    value: float | str | bool

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in TRIGGER_METRICS:
            raise ValueError(f"unknown metric '{metric}': known are {', '.join(TRIGGER_METRICS)}")
        return metric

    @model_validator(mode="after")
    def _comparable(self) -> TriggerCondition:
        ordered = self.operator not in (TriggerOperator.EQ, TriggerOperator.NE)
        if self.metric == "health_status":
            if ordered or self.value not in ("healthy", "unhealthy"):
                raise ValueError("health_status takes eq or ne with 'healthy' or 'unhealthy'")
        elif isinstance(self.value, (str, bool)):
            raise ValueError(f"value: {self.metric} is a number, got {self.value!r}")
        return self


class SwitchTrigger(Model):
    """The seed's shape: ``{type: 'health', condition: {metric, operator, value}, action: 'switch'}``."""

    type: TriggerType
    condition: TriggerCondition | None = None
    action: TriggerAction = TriggerAction.SWITCH

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        """The earlier list-of-names form (``[health_check, smoke_test]``) maps onto the seed's shape."""
        if isinstance(value, str):
            return _NAMED_TRIGGERS.get(value.strip().lower(), {"type": value})
        return value

    @model_validator(mode="after")
    def _condition_where_needed(self) -> SwitchTrigger:
        if self.condition is None and self.type is not TriggerType.MANUAL:
            raise ValueError(
                f"condition: a '{self.type.value}' trigger needs a condition {{metric, operator, value}}"
            )
        return self


_NAMED_TRIGGERS: dict[str, dict[str, Any]] = {
    "health_check": {
        "type": "health",
        "condition": {"metric": "health_status", "operator": "eq", "value": "healthy"},
    },
    "health": {
        "type": "health",
        "condition": {"metric": "health_status", "operator": "eq", "value": "healthy"},
    },
    "smoke_test": {
        "type": "smoke_test",
        "condition": {"metric": "smoke_success_rate", "operator": "gte", "value": 95},
    },
    "metrics": {"type": "metrics", "condition": {"metric": "error_rate", "operator": "lte", "value": 1}},
    "manual": {"type": "manual"},
}


def _default_switch_triggers() -> list[SwitchTrigger]:
    return [SwitchTrigger.model_validate(name) for name in ("health_check", "smoke_test")]


class BlueGreenConfig(AnalysisSettings):
    switch_traffic_percentage: Annotated[int, Field(ge=1, le=100)] = 100
    validation_duration: DurationMs = 60_000
    auto_switch: bool = True
    switch_triggers: list[SwitchTrigger] = Field(default_factory=_default_switch_triggers)
    scale_down_delay: DurationMs = 30_000
    switch_step_duration: DurationMs = 5_000
    smoke_requests: int = Field(default=20, ge=1, le=10_000)

    def switch_weights(self) -> list[int]:
        step = self.switch_traffic_percentage
        return [*range(step, 100, step), 100]

    def smoke_tested(self) -> bool:
        """A trigger names the smoke test's figure: validation sends smoke requests."""
        return any(
            t.type is TriggerType.SMOKE_TEST or (t.condition and t.condition.metric == "smoke_success_rate")
            for t in self.switch_triggers
        )

    def manual_switch(self) -> bool:
        return not self.auto_switch or any(t.type is TriggerType.MANUAL for t in self.switch_triggers)


class RollingConfig(AnalysisSettings):
    max_surge: Annotated[int, Field(ge=0)] = 1
    max_unavailable: Annotated[int, Field(ge=0)] = 0
    batch_pause: DurationMs = 0

    @model_validator(mode="after")
    def _progress_possible(self) -> RollingConfig:
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("maxSurge and maxUnavailable are both 0: a rolling update could never progress")
        return self


# --------------------------------------------------------------------------------------------
# Webhooks (engine/hooks.py calls them; Flagger's hook types and meanings)
# --------------------------------------------------------------------------------------------
class HookType(str, Enum):
    CONFIRM_ROLLOUT = "confirm-rollout"  # before the candidate is scaled up: holds until 2xx
    PRE_ROLLOUT = "pre-rollout"  # before the candidate gets traffic (or is validated): a failure rolls back
    ROLLOUT = "rollout"  # before each analysis step: failures count like failed windows
    CONFIRM_TRAFFIC_INCREASE = "confirm-traffic-increase"  # before each weight increase: holds until 2xx
    CONFIRM_PROMOTION = "confirm-promotion"  # before the promotion: holds until 2xx
    POST_ROLLOUT = "post-rollout"  # after the deployment ended (promoted, rolled back, failed): notification
    ROLLBACK = "rollback"  # when a rollback starts: notification
    EVENT = "event"  # every journal event: notification


GATE_HOOKS = frozenset(
    {
        HookType.CONFIRM_ROLLOUT,
        HookType.PRE_ROLLOUT,
        HookType.ROLLOUT,
        HookType.CONFIRM_TRAFFIC_INCREASE,
        HookType.CONFIRM_PROMOTION,
    }
)
_HOOK_URL = re.compile(r"^https?://[^/@\s]+(/\S*)?$")


class Webhook(Model):
    """One HTTP webhook: a JSON POST, answered 2xx to pass. ``url`` may be a reference (``env:NAME``,
    ``file:/path``) so that a URL holding a secret stays out of the configuration and the journal."""

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")]
    type: HookType
    url: str
    timeout: Annotated[DurationMs, Field(gt=0, le=300_000)] = 5_000
    retries: int = Field(default=2, ge=0, le=10, description="Attempts after the first, with back-off")
    backoff: Annotated[DurationMs, Field(gt=0)] = 500
    interval: Annotated[DurationMs, Field(gt=0)] = 5_000
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("type", mode="before")
    @classmethod
    def _normalise_type(cls, value: Any) -> Any:
        if isinstance(value, str):
            spelled = re.sub(r"(?<=[a-z])([A-Z])", r"-\1", value.strip()).lower().replace("_", "-")
            if spelled not in {t.value for t in HookType}:
                known = ", ".join(t.value for t in HookType)
                raise ValueError(f"unknown hook type '{value}': use one of {known}")
            return spelled
        return value

    @field_validator("url")
    @classmethod
    def _url_or_reference(cls, url: str) -> str:
        if REFERENCE.match(url):
            return url
        if not _HOOK_URL.match(url):
            raise ValueError(
                f"'{url}' is not an http(s) URL without credentials: put a URL that holds a secret in "
                "env:NAME or file:/path"
            )
        return url


class Strategy(Model):
    """A strategy with its config; ``type`` picks which of the three configs applies."""

    type: StrategyType
    replicas: int = Field(default=2, ge=1, le=64)
    progress_deadline: DurationMs = 600_000
    max_pause_duration: DurationMs = 86_400_000
    canary: CanaryConfig | None = None
    blue_green: BlueGreenConfig | None = None
    rolling: RollingConfig | None = None
    webhooks: list[Webhook] = Field(default_factory=list, description="This deployment's hooks")

    @field_validator("type", mode="before")
    @classmethod
    def _normalise_type(cls, value: Any) -> Any:
        if isinstance(value, str):
            normalised = value.strip().lower().replace("-", "_")
            if normalised == "bluegreen":
                normalised = "blue_green"
            if normalised not in {s.value for s in StrategyType}:
                raise ValueError(f"unknown strategy '{value}': use one of blue_green, canary, rolling")
            return normalised
        return value

    @model_validator(mode="after")
    def _fill_config(self) -> Strategy:
        if self.type is StrategyType.CANARY and self.canary is None:
            self.canary = CanaryConfig()
        if self.type is StrategyType.BLUE_GREEN and self.blue_green is None:
            self.blue_green = BlueGreenConfig()
        if self.type is StrategyType.ROLLING and self.rolling is None:
            self.rolling = RollingConfig()
        if self.progress_deadline <= 0:
            raise ValueError("progressDeadline must be positive")
        return self

    @classmethod
    def from_seed(cls, type_: str, config: dict[str, Any], **extra: Any) -> Strategy:
        """Build from the seed's shape: a strategy name plus its flat config dict."""
        kind = cls.model_validate({"type": type_, **extra}).type
        key = {"blue_green": "blueGreen", "canary": "canary", "rolling": "rolling"}[kind.value]
        return cls.model_validate({"type": kind.value, key: config, **extra})


# --------------------------------------------------------------------------------------------
# Platforms and environments
# --------------------------------------------------------------------------------------------
def _check_platform(value: str) -> str:
    normalised = value.strip().lower()
    if normalised in SUPPORTED_PLATFORMS:
        return normalised
    hint = (
        " (it cannot be tested from here, so it is not offered)"
        if normalised in KNOWN_UNSUPPORTED_PLATFORMS
        else ""
    )
    raise ValueError(f"unknown platform '{value}'{hint}: supported are {', '.join(SUPPORTED_PLATFORMS)}")


PlatformName = Annotated[str, AfterValidator(_check_platform)]


class PlatformConfig(Model):
    """Where and how a platform is reached. ``settings`` holds the platform's own keys."""

    type: PlatformName
    settings: dict[str, Any] = Field(default_factory=dict)


class ComplianceLevel(str, Enum):
    """Ordered from the loosest to the strictest (``rank``)."""

    STANDARD = "standard"
    ENHANCED = "enhanced"
    STRICT = "strict"
    NASA_POT10 = "nasa-pot10"

    @property
    def rank(self) -> int:
        return list(ComplianceLevel).index(self)

    @classmethod
    def _missing_(cls, value: object) -> ComplianceLevel | None:
        """'NASA-POT10', 'nasa_pot10' and 'nasaPot10' name the same level."""
        if isinstance(value, str):
            folded = re.sub(r"[^a-z0-9]", "", value.lower())
            for level in cls:
                if re.sub(r"[^a-z0-9]", "", level.value) == folded:
                    return level
        return None


class ApprovalWorkflow(Model):
    """Every approver group must approve, each by a distinct person who is a member of it (``roles``)."""

    required: bool = False
    approver_groups: list[str] = Field(default_factory=list)
    approvers: list[str] | None = Field(
        default=None, exclude=True, description="The seed's name for approverGroups (the same list)"
    )
    expiry: Annotated[DurationMs, Field(gt=0)] = 86_400_000

    @model_validator(mode="after")
    def _groups_when_required(self) -> ApprovalWorkflow:
        if self.approvers is not None:
            if "approver_groups" in self.model_fields_set:
                raise ValueError(
                    "approvers and approverGroups are the same setting (the approver groups): give only one"
                )
            self.approver_groups = list(self.approvers)
        if len(set(self.approver_groups)) != len(self.approver_groups):
            raise ValueError(f"{self.groups_key}: a group is listed twice in {self.approver_groups}")
        if self.required and not self.approver_groups:
            raise ValueError(f"approval is required but {self.groups_key} is empty")
        return self

    @property
    def groups_key(self) -> str:
        """The key the groups were given under (for messages at their YAML path)."""
        return "approvers" if self.approvers is not None else "approverGroups"


_REFERENCE_OR_PATH = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+|[^:\n]+)$")


def _no_inline_pem(value: str | None) -> str | None:
    if value is not None and "-----BEGIN" in value:
        raise ValueError("give a path or a reference (file:/path, env:NAME), not the PEM text itself")
    if value is not None and not _REFERENCE_OR_PATH.match(value):
        raise ValueError(f"'{value}' is neither a path nor a reference (file:/path, env:NAME)")
    return value


class TlsSettings(Model):
    """The certificate and key an environment's endpoints serve HTTPS with (references, never the key)."""

    certificate: Annotated[str | None, AfterValidator(_no_inline_pem)] = Field(
        default=None, description="The PEM certificate chain: a path or file:/path"
    )
    key: Annotated[str | None, AfterValidator(_no_inline_pem)] = Field(
        default=None, description="The private key: file:/path or env:NAME, never the key itself"
    )
    ca: Annotated[str | None, AfterValidator(_no_inline_pem)] = Field(
        default=None,
        description="The CA our own probes (health monitors, smoke tests) verify the endpoint against: "
        "a path or file:/path; default: the system's CAs",
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> TlsSettings:
        if (self.certificate is None) != (self.key is None):
            given, missing = ("certificate", "key") if self.key is None else ("key", "certificate")
            raise ValueError(f"{missing}: required with {given} (a certificate is served with its key)")
        return self


class GatewayRef(Model):
    name: Name
    namespace: Name


class NetworkPolicySettings(Model):
    """Kubernetes: a NetworkPolicy per service admitting traffic only from the gateway or these namespaces."""

    enabled: bool = False
    allowed_namespaces: list[Name] = Field(default_factory=list)
    gateway: GatewayRef | None = None

    @model_validator(mode="after")
    def _admits_someone(self) -> NetworkPolicySettings:
        if self.enabled and not self.allowed_namespaces and self.gateway is None:
            raise ValueError(
                "enabled: a policy with neither allowedNamespaces nor gateway would admit no traffic at all"
            )
        return self


class SecuritySettings(Model):
    require_signed_artifacts: bool = Field(
        default=False, description="Artifacts need a sha256 digest and a signature by a trusted key"
    )
    allowed_sources: list[str] = Field(
        default_factory=list, description="Prefixes an artifact's source must start with; empty: any"
    )
    audit_retention_days: int = Field(default=365, ge=1)
    tls_required: bool = Field(default=False, description="Service endpoints serve HTTPS only")
    tls: TlsSettings = Field(default_factory=TlsSettings)
    vulnerability_scanning: bool = Field(
        default=False, description="The configured scanner (scanners.vulnerability) gates every deployment"
    )
    compliance_scanning: bool = Field(
        default=False, description="The compliance gate runs for every deployment to the environment"
    )
    trusted_keys: list[str] = Field(
        default_factory=list, description="Names of the top-level trustedKeys accepted here; empty: all"
    )
    network_policy: NetworkPolicySettings = Field(default_factory=NetworkPolicySettings)


FeatureName = Literal[
    "approvals", "artifact_verification", "compliance_gate", "automated_rollback", "debug_logging"
]
FEATURE_DEFAULTS: dict[FeatureName, bool] = {
    "approvals": True,
    "artifact_verification": True,
    "compliance_gate": True,
    "automated_rollback": True,
    "debug_logging": False,
}


class Features(Model):
    """Orchestrator behaviour turned on and off: the file's top level, then each environment's own keys
    (a key left out inherits). Read a flag with ``enabled``."""

    approvals: bool | None = Field(default=None, description="Approval workflows are enforced (default on)")
    artifact_verification: bool | None = Field(
        default=None, description="Digest, signature, source and scanner checks before deploying (default on)"
    )
    compliance_gate: bool | None = Field(
        default=None, description="The compliance gate runs where the environment asks for it (default on)"
    )
    automated_rollback: bool | None = Field(
        default=None,
        description="A failed analysis or health check rolls back on its own (default on); off: it pauses "
        "for a person, and maxPauseDuration still bounds the wait",
    )
    debug_logging: bool | None = Field(
        default=None, description="Runners log each step of the environment's deployments (default off)"
    )

    def enabled(self, flag: FeatureName) -> bool:
        value = getattr(self, flag)
        return FEATURE_DEFAULTS[flag] if value is None else bool(value)

    def over(self, base: Features) -> Features:
        """These flags where set, ``base``'s elsewhere."""
        return base.model_copy(update=self.model_dump(exclude_none=True))

    def resolved(self) -> Features:
        """Every flag set (defaults filled in): what a deployment records as in force."""
        return Features.model_validate({name: self.enabled(name) for name in FEATURE_DEFAULTS})


_STRATEGY_KEYS = {
    "canary": "canary",
    "blue_green": "blue_green",
    "bluegreen": "blue_green",
    "rolling": "rolling",
}


Cores = Annotated[float, BeforeValidator(parse_cpu), Field(gt=0, le=1024)]
Bytes = Annotated[int, BeforeValidator(parse_bytes), Field(gt=0)]


class ReplicaResources(Model):
    """What one replica may use: CPU in cores ('500m', 0.5), memory and disk in bytes ('512Mi', '1Gi')."""

    cpu: Cores | None = None
    memory: Bytes | None = None
    disk: Bytes | None = None

    def described(self) -> str:
        parts = [f"{self.cpu:g} CPU" if self.cpu else "", show_bytes(self.memory) if self.memory else ""]
        parts.append(f"{show_bytes(self.disk)} disk" if self.disk else "")
        return ", ".join(part for part in parts if part) or "no limits"


class ResourceSettings(ReplicaResources):
    """An environment's ``resources:``: per replica, and how many replicas a revision may have."""

    min_replicas: int | None = Field(default=None, ge=1)
    max_replicas: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _limits_ordered(self) -> ResourceSettings:
        if self.min_replicas and self.max_replicas and self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) is above maxReplicas ({self.max_replicas})")
        return self

    @property
    def per_replica(self) -> ReplicaResources:
        return ReplicaResources(cpu=self.cpu, memory=self.memory, disk=self.disk)


# --------------------------------------------------------------------------------------------
# What a platform can do, declared by its adapter (engine/platform.py's protocol asks for it; the engine asks
# these, never hasattr). Here because a request's governance records them when it is submitted.
# --------------------------------------------------------------------------------------------
class Resource(str, Enum):
    CPU = "cpu"
    MEMORY = "memory"
    DISK = "disk"


class PlatformCapabilities(Model):
    """Declared by each adapter from its own kind and settings, never probed by the engine."""

    scales_itself: bool = Field(default=False, description="One revision object serves any load (Lambda)")
    serves_tls: bool = Field(default=False, description="Can serve the target's endpoint over HTTPS only")
    tls_by_provider: bool = Field(
        default=False, description="HTTPS with the provider's own certificate, not the environment's"
    )
    network_policy: bool = Field(default=False, description="Admits traffic only from allowed sources")
    limits: frozenset[Resource] = Field(default=frozenset(), description="Enforced per replica")
    capacity: frozenset[Resource] = Field(default=frozenset(), description="Checked before a change")
    notes: list[str] = Field(default_factory=list, description="What is not done here, and why")


class Environment(Model):
    name: Name
    compliance_level: ComplianceLevel = ComplianceLevel.STANDARD
    approval_workflow: ApprovalWorkflow = ApprovalWorkflow()
    security: SecuritySettings = SecuritySettings()
    health_check_interval: DurationMs = 5_000
    health_check_timeout: DurationMs = 2_000
    unhealthy_threshold: int = Field(default=3, ge=1)
    endpoints: list[str] = Field(default_factory=list)
    resources: ResourceSettings = ResourceSettings()
    features: Features = Field(default_factory=Features)
    strategy_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per strategy (canary, blueGreen, rolling): settings merged over strategyDefaults, under "
        "a deployment's own",
    )

    @field_validator("strategy_overrides")
    @classmethod
    def _known_strategies(cls, overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = {}
        for key, value in overrides.items():
            kind = _STRATEGY_KEYS.get(key.replace("-", "_").lower())
            if kind is None:
                raise ValueError(f"unknown strategy '{key}': use canary, blueGreen or rolling")
            result[kind] = value
        return result


# --------------------------------------------------------------------------------------------
# Deployment requests, status and results
# --------------------------------------------------------------------------------------------
class Target(Model):
    """One service in one environment: at most one active deployment each."""

    service: Name
    environment: Name

    @property
    def key(self) -> str:
        return f"{self.service}.{self.environment}"


class ChangeRecord(Model):
    """The change-management record a deployment belongs to (a ticket)."""

    id: str = Field(min_length=1, max_length=200)
    summary: str = Field(min_length=1, max_length=2000)


Severity = Literal["low", "medium", "high", "critical"]


class ScannerConfig(Model):
    """A command that scans an artifact. It gets the artifact as arguments ({name} {version} {source}
    {digest} {path} {report} in ``command``) and as ARTIFACT_* environment variables, writes a JSON report
    (to stdout, or to the file in $SCAN_REPORT) and exits non-zero when the artifact must not be deployed."""

    command: list[str] = Field(min_length=1)
    timeout: Annotated[DurationMs, Field(gt=0)] = 300_000
    fail_on: Severity = Field(
        default="high", description="A finding at this severity or above fails the scan"
    )
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = Field(default=None, description="Default: the configuration file's folder")

    @field_validator("env")
    @classmethod
    def _no_plain_secrets(cls, env: dict[str, str]) -> dict[str, str]:
        advice = (
            "a scanner's settings are recorded with each deployment: give it credentials in its own files"
        )
        return without_secrets(env, "", advice)


class ConfigVersion(Model):
    """Which enterprise_config.yaml a deployment was governed by."""

    path: str | None = None
    sha256: str | None = Field(default=None, description="Of the file's content as loaded")
    git_commit: str | None = Field(default=None, description="The commit holding exactly that content")
    git_state: str = Field(default="unknown", description="committed | modified | not under git | unknown")


class Governance(Model):
    """The policy a deployment is governed by, recorded with it at submission by the queen (a client's
    value is replaced): the runner and the compliance report need no configuration file."""

    environment: Environment
    features: Features
    capabilities: PlatformCapabilities | None = Field(
        default=None, description="What the request's platform declared it can do, when submitted"
    )
    trusted_keys: dict[str, str] = Field(default_factory=dict, description="key id -> ed25519 public key")
    vulnerability_scanner: ScannerConfig | None = None
    config_version: ConfigVersion = Field(default_factory=ConfigVersion)
    audit_checkpoints: str | None = Field(default=None, description="The audit trail's signed checkpoints")
    audit_public_key: str | None = Field(default=None, description="The public key that checks them")

    @property
    def approval_groups(self) -> list[str]:
        """The groups that must approve (none when the workflow is not required or approvals are off)."""
        workflow = self.environment.approval_workflow
        return (
            list(workflow.approver_groups) if workflow.required and self.features.enabled("approvals") else []
        )


class DeploymentRequest(Model):
    artifact: Artifact
    strategy: Strategy
    environment: Name
    platform: PlatformConfig
    requested_by: str = "unknown"
    change_record: ChangeRecord | None = None
    governance: Governance | None = None

    @property
    def target(self) -> Target:
        return Target(service=self.artifact.name, environment=self.environment)


class Phase(str, Enum):
    QUEUED = "queued"
    AWAITING_APPROVAL = "awaiting_approval"
    PROGRESSING = "progressing"
    PAUSED = "paused"
    ROLLING_BACK = "rolling_back"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_PHASES


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED, Phase.ABORTED})


class RollbackTrigger(str, Enum):
    HEALTH = "health"
    METRICS = "metrics"
    DEADLINE = "deadline"
    MANUAL = "manual"
    ABORT = "abort"
    ERROR = "error"
    HOOK = "hook"  # a pre-rollout or rollout webhook failed


class DeploymentStatus(Model):
    deployment_id: str
    target: Target
    phase: Phase
    strategy: StrategyType
    step_index: int
    step_count: int
    step_name: str | None = None
    stable_revision: str | None = None
    candidate_revision: str | None = None
    weights: dict[str, int] = Field(default_factory=dict)
    address: str | None = None
    message: str = ""
    rollback_trigger: RollbackTrigger | None = None
    rollback_reason: str | None = None
    submitted_at: float
    updated_at: float
    finished_at: float | None = None
    runner: str | None = Field(default=None, description="Name of the runner actor driving it")
    versions: dict[str, str] = Field(
        default_factory=dict, description="revision -> the version people gave it (2-0-0 -> 2.0.0)"
    )

    def version_of(self, revision: str | None) -> str:
        """The version a person gave ``revision`` (the platform-safe form when it is not known)."""
        return self.versions.get(revision or "", revision or "")


class DeploymentResult(Model):
    deployment_id: str
    success: bool
    status: DeploymentStatus

    @property
    def phase(self) -> Phase:
        return self.status.phase
