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

    @field_validator("env")
    @classmethod
    def _no_plain_secrets(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if looks_secret(name):
                raise ValueError(
                    f"env.{name} looks like a secret: put a reference in secretEnv (env:NAME or file:/path) "
                    "so that its value never reaches the journal"
                )
        return env

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
    error_rate: float = Field(ge=0.0, le=1.0, description="Fraction of 5xx responses, 0.0-1.0")
    response_time: float | None = Field(default=None, gt=0, description="Mean response time in ms")


class FailureThresholds(Thresholds):
    consecutive_failures: int = Field(default=3, ge=1, le=100)


# A breach is seen within one interval. Each check costs about 1 ms of CPU (a runner wakes for it with cold
# caches): at 2 s the orchestrator stays within its 0.2% CPU budget per deployment (benchmarks/overhead.py);
# a strategy that needs faster detection sets its own analysisInterval.
DEFAULT_ANALYSIS_INTERVAL_MS = 2_000


class CanaryConfig(Model):
    initial_traffic_percentage: Percent = 10
    step_percentage: Annotated[int, Field(ge=1, le=100)] = 10
    step_duration: DurationMs = 300_000
    max_steps: int = Field(default=10, ge=1, le=100)
    success_threshold: Thresholds = Thresholds(error_rate=0.01)
    failure_threshold: FailureThresholds = FailureThresholds(error_rate=0.05)
    min_request_count: int = Field(default=10, ge=1, description="Fewer requests than this is 'no data'")
    analysis_interval: DurationMs = DEFAULT_ANALYSIS_INTERVAL_MS
    canary_replicas: int = Field(default=1, ge=1)

    @field_validator("step_percentage", mode="before")
    @classmethod
    def _step_not_zero(cls, value: Any) -> Any:
        if value == 0:
            raise ValueError("a step of 0% would never finish; use 1-100")
        return value

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> CanaryConfig:
        _check_thresholds(self.success_threshold, self.failure_threshold)
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
    if failure.error_rate < success.error_rate:
        raise ValueError(
            f"failureThreshold.errorRate ({failure.error_rate}) is looser than "
            f"successThreshold.errorRate ({success.error_rate}): it must be at least as high"
        )
    if (
        failure.response_time is not None
        and success.response_time is not None
        and failure.response_time < success.response_time
    ):
        raise ValueError(
            f"failureThreshold.responseTime ({failure.response_time}) is looser than "
            f"successThreshold.responseTime ({success.response_time}): it must be at least as high"
        )


SwitchTrigger = Literal["health_check", "metrics", "smoke_test", "manual"]
_DEFAULT_SWITCH_TRIGGERS: list[SwitchTrigger] = ["health_check", "smoke_test"]


class BlueGreenConfig(Model):
    switch_traffic_percentage: Annotated[int, Field(ge=1, le=100)] = 100
    validation_duration: DurationMs = 60_000
    auto_switch: bool = True
    switch_triggers: list[SwitchTrigger] = Field(default_factory=lambda: _DEFAULT_SWITCH_TRIGGERS.copy())
    scale_down_delay: DurationMs = 30_000
    switch_step_duration: DurationMs = 5_000
    smoke_requests: int = Field(default=20, ge=1, le=10_000)
    success_threshold: Thresholds = Thresholds(error_rate=0.01)
    failure_threshold: FailureThresholds = FailureThresholds(error_rate=0.05)
    min_request_count: int = Field(default=10, ge=1)
    analysis_interval: DurationMs = DEFAULT_ANALYSIS_INTERVAL_MS

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> BlueGreenConfig:
        _check_thresholds(self.success_threshold, self.failure_threshold)
        return self

    def switch_weights(self) -> list[int]:
        step = self.switch_traffic_percentage
        return [*range(step, 100, step), 100]


class RollingConfig(Model):
    max_surge: Annotated[int, Field(ge=0)] = 1
    max_unavailable: Annotated[int, Field(ge=0)] = 0
    batch_pause: DurationMs = 0
    success_threshold: Thresholds = Thresholds(error_rate=0.01)
    failure_threshold: FailureThresholds = FailureThresholds(error_rate=0.05)
    min_request_count: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _progress_possible(self) -> RollingConfig:
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("maxSurge and maxUnavailable are both 0: a rolling update could never progress")
        _check_thresholds(self.success_threshold, self.failure_threshold)
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
    STANDARD = "standard"
    ENHANCED = "enhanced"
    STRICT = "strict"


class ApprovalWorkflow(Model):
    required: bool = False
    approver_groups: list[str] = Field(default_factory=list)
    expiry: DurationMs = 86_400_000

    @model_validator(mode="after")
    def _groups_when_required(self) -> ApprovalWorkflow:
        if self.required and not self.approver_groups:
            raise ValueError("approval is required but approverGroups is empty")
        return self


class SecuritySettings(Model):
    require_signed_artifacts: bool = False
    allowed_sources: list[str] = Field(default_factory=list)
    audit_retention_days: int = Field(default=365, ge=1)


class Environment(Model):
    name: Name
    compliance_level: ComplianceLevel = ComplianceLevel.STANDARD
    approval_workflow: ApprovalWorkflow = ApprovalWorkflow()
    security: SecuritySettings = SecuritySettings()
    health_check_interval: DurationMs = 5_000
    health_check_timeout: DurationMs = 2_000
    unhealthy_threshold: int = Field(default=3, ge=1)
    endpoints: list[str] = Field(default_factory=list)


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


class DeploymentRequest(Model):
    artifact: Artifact
    strategy: Strategy
    environment: Name
    platform: PlatformConfig
    requested_by: str = "unknown"

    @property
    def target(self) -> Target:
        return Target(service=self.artifact.name, environment=self.environment)


class Phase(str, Enum):
    QUEUED = "queued"
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
