"""AWS Lambda: a revision is a published function version, traffic is the weighted routing of one alias.

Everything is read back from the Lambda API, so a new adapter instance (after a crash, on another machine)
needs no local state:

- one function per target, named by the ``functionName`` template (default ``{service}-{environment}``);
- a revision is a published version whose ``Description`` is the revision id (``list_versions_by_function``
  recovers the mapping); publishing is guarded by ``CodeSha256`` so that a concurrent update is refused;
- traffic is the alias (default ``live``): ``FunctionVersion`` carries the larger weight, at most one other
  version gets the rest through ``RoutingConfig.AdditionalVersionWeights``; the address is the alias ARN;
- metrics come from CloudWatch in the scheme Lambda itself uses for invocations through a weighted alias:
  namespace ``AWS/Lambda``, dimensions ``FunctionName=<function>``, ``Resource=<function>:<alias>``,
  ``ExecutedVersion=<version>``; ``Invocations`` and ``Errors`` are summed and ``Duration`` averaged from the
  version's creation (its ``LastModified``, recorded by Lambda) to now, over at most ``metricsWindow``
  (default 3 h). Calls made straight to a version ARN, not through the alias, are not counted;
- logs come from ``/aws/lambda/<function>``, from the streams Lambda names ``.../[<version>]...``.

Transient failures (throttling, 5xx, connection errors, timeouts) are retried by botocore's own ``standard``
retry mode; what is still failing afterwards becomes a TransientPlatformError, any other AWS error a
PlatformError naming the AWS error code.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import re
import threading
import time
import zipfile
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from pydantic import BaseModel, Field, field_validator

from engine.models import DurationMs, MetricProviderConfig, MetricProviderType, Model, Target
from engine.platform import (
    CapacityPool,
    LiveState,
    MetricSnapshot,
    PlatformCapabilities,
    PlatformError,
    Resource,
    RevisionSpec,
    RevisionStatus,
    SupervisionMode,
    TrafficState,
    TransientPlatformError,
)
from engine.secrets import runtime_env

log = logging.getLogger(__name__)

PLATFORM = "lambda"
LATEST = "$LATEST"
NAMESPACE = "AWS/Lambda"
MAX_DIRECT_UPLOAD_BYTES = 50 * 1024 * 1024
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_REVISION_ID = re.compile(r"^[a-z0-9-]{1,40}$")
_NOT_FOUND = frozenset({"ResourceNotFoundException", "ResourceNotFound", "NoSuchEntity"})
_THROTTLED = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "ServiceUnavailable",
        "ServiceException",
        "EC2ThrottledException",
    }
)
_UNREACHABLE = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class LambdaSettings(Model):
    """The platform's ``settings`` (camelCase). Credentials come from boto3's chain or ``profile``."""

    region: str = "us-east-1"
    endpoint_url: str | None = None
    role_arn: str | None = None
    runtime: str = "python3.12"
    handler: str = "app.handler"
    alias_name: str = Field(default="live", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,127}$")
    function_name: str = "{service}-{environment}"
    timeout: int | None = Field(default=None, ge=1, le=900, description="Seconds")
    memory_size: int | None = Field(default=None, ge=128, le=10_240, description="MB")
    profile: str | None = None
    max_attempts: int = Field(default=4, ge=1, le=10, description="Attempts per call, the first included")
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    update_timeout: DurationMs = 120_000
    metrics_window: DurationMs = 3 * 3_600_000
    state_dir: str | None = None

    @field_validator("function_name")
    @classmethod
    def _template_known(cls, value: str) -> str:
        try:
            value.format(service="s", environment="e")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"functionName '{value}' may only use {{service}} and {{environment}}: {error}"
            ) from error
        return value


class _Version(BaseModel):
    """One published version of the function, as Lambda reports it."""

    number: str
    revision: str
    code_sha256: str
    state: str
    state_reason: str = ""
    arn: str
    created: datetime


class _NotFound(PlatformError):
    """The resource asked for does not exist (raised only inside this module)."""


def build_deterministic_zip(directory: Path) -> bytes:
    """Zip a directory so that the same files always give the same bytes (and the same sha256).

    Entries are sorted, timestamps fixed and permissions reduced to 0644/0755. Deflate output is stable for
    one zlib build; a sha256 computed elsewhere should be computed with this function too.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(directory).as_posix(), date_time=_ZIP_EPOCH)
            info.create_system = 3  # unix, so that the mode bits below are honoured
            mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes(), compresslevel=9)
    return buffer.getvalue()


def _lambda_sha256(data: bytes) -> str:
    """Lambda's CodeSha256: base64 of the binary sha256 of the zip."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def _parse_aws_time(value: str) -> datetime:
    """Lambda's ``LastModified`` ('2024-01-02T03:04:05.123+0000'); only whole seconds matter here."""
    try:
        return datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return datetime.now(UTC)


def _version_number(version: str) -> int:
    return int(version) if version.isdigit() else -1


class LambdaPlatform:
    """PlatformAdapter for AWS Lambda (and anything that speaks its API, such as moto)."""

    platform = PLATFORM
    supervision = SupervisionMode.NONE  # nothing runs between invocations

    def __init__(self, state_dir: Path, settings: dict[str, Any]) -> None:
        # Nothing is kept locally: the API is the state. The folder exists for the registry's sake only.
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.settings = LambdaSettings.model_validate(settings)
        self.capabilities = _capabilities(self.settings)
        self._session = boto3.Session(profile_name=self.settings.profile, region_name=self.settings.region)
        self._config = Config(
            region_name=self.settings.region,
            # total_max_attempts counts the first try; botocore's max_attempts would count retries only.
            retries={"total_max_attempts": self.settings.max_attempts, "mode": "standard"},
            connect_timeout=self.settings.connect_timeout,
            read_timeout=self.settings.read_timeout,
        )
        self._clients: dict[str, BaseClient] = {}
        self._clients_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------
    # Clients and error mapping
    # ------------------------------------------------------------------------------------------------
    def _client(self, service: str) -> BaseClient:
        # boto3 sessions are not thread-safe when creating clients; the clients themselves are.
        with self._clients_lock:
            if service not in self._clients:
                self._clients[service] = self._session.client(
                    service, endpoint_url=self.settings.endpoint_url, config=self._config
                )
            return self._clients[service]

    def endpoint(self, service: str = "lambda") -> str:
        return str(self._client(service).meta.endpoint_url)

    def _call(self, service: str, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One API call with AWS errors mapped to PlatformError / TransientPlatformError / _NotFound."""
        try:
            response: dict[str, Any] = getattr(self._client(service), operation)(**kwargs)
            return response
        except ClientError as error:
            raise self._client_error(service, operation, error) from error
        except _UNREACHABLE as error:
            raise TransientPlatformError(
                PLATFORM, self.endpoint(service), f"unreachable ({operation}): {error}"
            ) from error
        except (NoCredentialsError, PartialCredentialsError) as error:
            raise PlatformError(PLATFORM, self.endpoint(service), f"credentials refused: {error}") from error
        except BotoCoreError as error:
            raise PlatformError(PLATFORM, self.endpoint(service), f"{operation} failed: {error}") from error

    def _client_error(self, service: str, operation: str, error: ClientError) -> PlatformError:
        details = error.response.get("Error", {})
        code = str(details.get("Code", "Unknown"))
        message = str(details.get("Message", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        cause = f"{operation}: {code}: {message}"
        endpoint = self.endpoint(service)
        if code in _NOT_FOUND:
            return _NotFound(PLATFORM, endpoint, cause)
        in_progress = code == "ResourceConflictException" and "in progress" in message.lower()
        if code in _THROTTLED or status >= 500 or in_progress:
            return TransientPlatformError(PLATFORM, endpoint, f"{cause} (still failing after retries)")
        return PlatformError(PLATFORM, endpoint, cause)

    def _find(self, service: str, operation: str, **kwargs: Any) -> dict[str, Any] | None:
        """Like _call, but None when the resource does not exist."""
        try:
            return self._call(service, operation, **kwargs)
        except _NotFound:
            return None

    # ------------------------------------------------------------------------------------------------
    # Validation
    # ------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Credentials (STS), reachability of Lambda and the settings needed to create functions."""
        self._probe("sts", "get_caller_identity", {})
        self._probe("lambda", "list_functions", {"MaxItems": 1})
        if not self.settings.role_arn:
            raise PlatformError(
                PLATFORM, self.endpoint(), "setting roleArn is missing: Lambda needs it to create functions"
            )

    def _probe(self, service: str, operation: str, kwargs: dict[str, Any]) -> None:
        try:
            self._call(service, operation, **kwargs)
        except TransientPlatformError as error:
            if error.cause.startswith("unreachable"):
                raise
            raise TransientPlatformError(PLATFORM, error.endpoint, f"unreachable: {error.cause}") from error
        except PlatformError as error:
            cause = error.cause
            if not cause.startswith("credentials refused"):
                cause = f"credentials refused: {cause}"
            raise PlatformError(PLATFORM, error.endpoint, cause) from error

    # ------------------------------------------------------------------------------------------------
    # Names, versions, the alias
    # ------------------------------------------------------------------------------------------------
    def function_name(self, target: Target) -> str:
        name = self.settings.function_name.format(service=target.service, environment=target.environment)
        if not _FUNCTION_NAME.match(name):
            raise ValueError(
                f"function name '{name}' (from functionName '{self.settings.function_name}') is not valid "
                "for Lambda: use letters, digits, '-' and '_', at most 64 characters"
            )
        return name

    def _versions(self, function: str) -> list[_Version] | None:
        """Published versions, oldest first; None when the function does not exist."""
        items: list[dict[str, Any]] = []
        marker: str | None = None
        for _ in range(200):  # 200 pages of 50: far above Lambda's own version quota
            kwargs: dict[str, Any] = {"FunctionName": function, "MaxItems": 50}
            if marker:
                kwargs["Marker"] = marker
            page = self._find("lambda", "list_versions_by_function", **kwargs)
            if page is None:
                return None
            items.extend(page.get("Versions", []))
            marker = page.get("NextMarker")
            if not marker:
                break
        if not items:
            # AWS answers 404 for a missing function; some emulators answer an empty list (an existing
            # function always lists $LATEST).
            return None
        versions = [self._version(item) for item in items if item["Version"] != LATEST]
        return sorted(versions, key=lambda version: _version_number(version.number))

    @staticmethod
    def _version(item: dict[str, Any]) -> _Version:
        description = str(item.get("Description") or "")
        number = str(item["Version"])
        return _Version(
            number=number,
            # A version published by someone else keeps a recognisable name rather than vanishing.
            revision=description if _REVISION_ID.match(description) else f"version-{number}",
            code_sha256=str(item.get("CodeSha256", "")),
            state=str(item.get("State") or "Active"),
            state_reason=str(item.get("StateReason") or ""),
            arn=str(item.get("FunctionArn", "")),
            created=_parse_aws_time(str(item.get("LastModified", ""))),
        )

    @staticmethod
    def _latest_per_revision(versions: list[_Version]) -> dict[str, _Version]:
        """revision -> its newest version (versions come oldest first)."""
        return {version.revision: version for version in versions}

    def _alias(self, function: str) -> dict[str, Any] | None:
        return self._find("lambda", "get_alias", FunctionName=function, Name=self.settings.alias_name)

    @staticmethod
    def _alias_weights(alias: dict[str, Any]) -> dict[str, int]:
        """version -> percent of traffic, from the alias as Lambda returns it."""
        extra = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        weights = {str(version): round(float(weight) * 100) for version, weight in extra.items()}
        weights = {version: weight for version, weight in weights.items() if weight > 0}
        primary = 100 - sum(weights.values())
        if primary > 0:
            weights[str(alias["FunctionVersion"])] = primary
        return weights

    # ------------------------------------------------------------------------------------------------
    # Revisions
    # ------------------------------------------------------------------------------------------------
    def ensure_revision(self, spec: RevisionSpec) -> RevisionStatus:
        """Publish the artifact as a version described by its revision id, once."""
        function = self.function_name(spec.target)
        code = self._artifact_zip(spec)
        code_sha = _lambda_sha256(code)
        versions = self._versions(function)
        existing = self._latest_per_revision(versions or []).get(spec.revision)
        if existing is not None:
            if existing.code_sha256 != code_sha:
                raise PlatformError(
                    PLATFORM,
                    self.endpoint(),
                    f"revision {spec.revision} is already version {existing.number} of {function} with "
                    f"other code (CodeSha256 {existing.code_sha256}, artifact {code_sha}): use a new version",
                )
            return self._status(existing)
        # A function that someone else created meanwhile is updated like any existing one.
        created = versions is None and self._create_function(function, spec, code)
        if not created:
            self._update_function(function, spec, code, code_sha)
        return self._status(self._publish(function, spec.revision, code_sha))

    def _artifact_zip(self, spec: RevisionSpec) -> bytes:
        """The zip to upload, checked against the artifact's sha256 before anything changes."""
        source = Path(spec.artifact.source).expanduser()
        if source.is_dir():
            data = build_deterministic_zip(source)
        elif source.is_file() and zipfile.is_zipfile(source):
            data = source.read_bytes()
        else:
            raise PlatformError(
                PLATFORM,
                self.endpoint(),
                f"artifact source '{spec.artifact.source}' is neither a zip file nor a directory",
            )
        digest = hashlib.sha256(data).hexdigest()
        if spec.artifact.sha256 and digest != spec.artifact.sha256:
            raise PlatformError(
                PLATFORM,
                self.endpoint(),
                f"artifact sha256 mismatch for {spec.artifact.name} {spec.artifact.version}: expected "
                f"{spec.artifact.sha256}, '{spec.artifact.source}' has {digest}; nothing was changed",
            )
        if len(data) > MAX_DIRECT_UPLOAD_BYTES:
            raise PlatformError(
                PLATFORM, self.endpoint(), f"the zip is {len(data)} bytes, above Lambda's 50 MB direct upload"
            )
        return data

    def _function_config(self, spec: RevisionSpec) -> dict[str, Any]:
        """$LATEST's configuration; its Description names the revision so that publishing makes a version."""
        config: dict[str, Any] = {
            "Runtime": self.settings.runtime,
            "Handler": self.settings.handler,
            "Description": f"revision {spec.revision}",
            "Environment": {"Variables": runtime_env(spec.artifact)},
        }
        if self.settings.role_arn:
            config["Role"] = self.settings.role_arn
        if self.settings.timeout is not None:
            config["Timeout"] = self.settings.timeout
        if self.settings.memory_size is not None:
            config["MemorySize"] = self.settings.memory_size
        return config | _resource_config(spec)

    def capacity(self, target: Target, replicas: int) -> list[CapacityPool]:
        """Nothing to check before a change: Lambda finds the room for each invocation itself."""
        return []

    def _create_function(self, function: str, spec: RevisionSpec, code: bytes) -> bool:
        """Create the function for its first revision; False when it appeared meanwhile."""
        if not self.settings.role_arn:
            raise PlatformError(
                PLATFORM, self.endpoint(), f"setting roleArn is required to create {function}"
            )
        try:
            self._call(
                "lambda",
                "create_function",
                FunctionName=function,
                Code={"ZipFile": code},
                Publish=False,
                **self._function_config(spec),
            )
        except PlatformError as error:
            if "ResourceConflictException" in error.cause and "exist" in error.cause.lower():
                return False
            raise
        self._wait_updated(function, "creation")
        return True

    def _update_function(self, function: str, spec: RevisionSpec, code: bytes, code_sha: str) -> None:
        current = self._wait_updated(function, "an earlier update")
        self._call(
            "lambda", "update_function_configuration", FunctionName=function, **self._function_config(spec)
        )
        self._wait_updated(function, "the configuration update")
        if current.get("CodeSha256") != code_sha:
            self._call("lambda", "update_function_code", FunctionName=function, ZipFile=code)
            self._wait_updated(function, "the code update")

    def _wait_updated(self, function: str, what: str) -> dict[str, Any]:
        """Wait (bounded by updateTimeout) until $LATEST is Active and its last update Successful."""
        deadline = time.monotonic() + self.settings.update_timeout / 1000
        delay = 0.2
        while True:
            config = self._call("lambda", "get_function_configuration", FunctionName=function)
            state = config.get("State") or "Active"
            update = config.get("LastUpdateStatus") or "Successful"
            if state == "Failed" or update == "Failed":
                reason = (
                    config.get("LastUpdateStatusReason") or config.get("StateReason") or "no reason given"
                )
                raise PlatformError(PLATFORM, self.endpoint(), f"{function} failed after {what}: {reason}")
            if state in ("Active", "Inactive") and update == "Successful":
                return config
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransientPlatformError(
                    PLATFORM,
                    self.endpoint(),
                    f"{function} still State={state} LastUpdateStatus={update} after {what} "
                    f"({self.settings.update_timeout} ms)",
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 2.0)

    def _publish(self, function: str, revision: str, code_sha: str) -> _Version:
        # CodeSha256 makes Lambda refuse to publish code that someone changed since our update.
        item = self._call(
            "lambda", "publish_version", FunctionName=function, Description=revision, CodeSha256=code_sha
        )
        version = self._version(item)
        if version.revision != revision:
            raise PlatformError(
                PLATFORM,
                self.endpoint(),
                f"Lambda returned version {version.number} ({version.revision}) instead of publishing "
                f"{revision}: code and configuration were identical to that version",
            )
        log.info("published %s version %s as revision %s", function, version.number, revision)
        return version

    def _status(self, version: _Version) -> RevisionStatus:
        ready = 1 if version.state == "Active" else 0
        message = f"version {version.number}: {version.state}"
        if version.state_reason:
            message += f" ({version.state_reason})"
        return RevisionStatus(
            revision=version.revision,
            desired_replicas=1,
            ready_replicas=ready,
            running_replicas=1,
            endpoints=[version.arn] if version.arn else [],
            message=message,
        )

    def revision_status(self, target: Target, revision: str) -> RevisionStatus | None:
        versions = self._versions(self.function_name(target)) or []
        version = self._latest_per_revision(versions).get(revision)
        return self._status(version) if version else None

    def list_revisions(self, target: Target) -> list[RevisionStatus]:
        versions = self._versions(self.function_name(target)) or []
        return [self._status(version) for version in self._latest_per_revision(versions).values()]

    def remove_revision(self, target: Target, revision: str) -> None:
        """Delete every version of the revision, unless the alias still sends it traffic."""
        function = self.function_name(target)
        doomed = [v for v in self._versions(function) or [] if v.revision == revision]
        if not doomed:
            return
        alias = self._alias(function)
        carrying = self._alias_weights(alias) if alias else {}
        busy = [v.number for v in doomed if carrying.get(v.number, 0) > 0]
        if busy:
            raise ValueError(
                f"revision {revision} (version {', '.join(busy)}) still carries traffic on alias "
                f"{self.settings.alias_name} of {function}: move its traffic away first"
            )
        for version in doomed:
            self._find("lambda", "delete_function", FunctionName=function, Qualifier=version.number)
            log.info("deleted %s version %s (revision %s)", function, version.number, revision)

    # ------------------------------------------------------------------------------------------------
    # Traffic
    # ------------------------------------------------------------------------------------------------
    def set_traffic(self, target: Target, weights: dict[str, int]) -> TrafficState:
        """Point the alias at the heavier revision and give the other one its weight as routing config."""
        function = self.function_name(target)
        _check_weights(weights)
        versions = self._latest_per_revision(self._versions(function) or [])
        unknown = sorted(revision for revision in weights if revision not in versions)
        if unknown:
            raise ValueError(
                f"unknown revision {', '.join(unknown)} of {function}: known are {sorted(versions) or 'none'}"
            )
        carrying = {revision: weight for revision, weight in weights.items() if weight > 0}
        if len(carrying) > 2:
            raise ValueError(
                f"a Lambda alias routes to at most two versions, got {len(carrying)}: {sorted(carrying)}"
            )
        alias = self._alias(function)
        current = str(alias["FunctionVersion"]) if alias else ""
        # The heavier revision is primary; on a tie the current primary stays, so nothing flips needlessly.
        primary = max(carrying, key=lambda rev: (carrying[rev], versions[rev].number == current, rev))
        extra = {versions[rev].number: weight / 100 for rev, weight in carrying.items() if rev != primary}
        request = {
            "FunctionName": function,
            "Name": self.settings.alias_name,
            "FunctionVersion": versions[primary].number,
            "RoutingConfig": {"AdditionalVersionWeights": extra},
        }
        if alias is None:
            try:
                self._call("lambda", "create_alias", **request)
            except PlatformError as error:
                if "ResourceConflictException" not in error.cause:
                    raise
                self._call("lambda", "update_alias", **request)  # created concurrently: take it over
        else:
            self._call("lambda", "update_alias", **request)
        log.info("alias %s of %s: %s", self.settings.alias_name, function, carrying)
        return self.traffic(target)

    def traffic(self, target: Target) -> TrafficState:
        function = self.function_name(target)
        alias = self._alias(function)
        if alias is None:
            return TrafficState()
        by_number = {version.number: version.revision for version in self._versions(function) or []}
        weights = {
            by_number.get(number, f"version-{number}"): weight
            for number, weight in self._alias_weights(alias).items()
        }
        return TrafficState(weights=weights, address=str(alias.get("AliasArn", "")))

    # ------------------------------------------------------------------------------------------------
    # Metrics and logs
    # ------------------------------------------------------------------------------------------------
    def metrics(self, target: Target, revision: str | None = None) -> dict[str, MetricSnapshot]:
        """Cumulative Invocations, Errors and mean Duration per revision since its version was published."""
        function = self.function_name(target)
        versions = self._latest_per_revision(self._versions(function) or [])
        now = datetime.now(UTC)
        return {
            name: self._snapshot(function, version, now)
            for name, version in versions.items()
            if revision is None or name == revision
        }

    def _snapshot(self, function: str, version: _Version, now: datetime) -> MetricSnapshot:
        earliest = now - timedelta(milliseconds=self.settings.metrics_window)
        start = max(version.created, earliest).replace(second=0, microsecond=0)
        dimensions = [
            {"Name": "FunctionName", "Value": function},
            {"Name": "Resource", "Value": f"{function}:{self.settings.alias_name}"},
            {"Name": "ExecutedVersion", "Value": version.number},
        ]

        def statistic(metric: str, name: str) -> float:
            points = self._call(
                "cloudwatch",
                "get_metric_statistics",
                Namespace=NAMESPACE,
                MetricName=metric,
                Dimensions=dimensions,
                StartTime=start,
                EndTime=now + timedelta(minutes=1),  # the current minute's bucket too
                Period=60,  # 3 h of 1-minute buckets stays far below the 1,440 datapoints limit
                Statistics=["Sum", "SampleCount"],
            ).get("Datapoints", [])
            return sum(float(point.get(name, 0.0)) for point in points)

        duration_count = statistic("Duration", "SampleCount")
        mean_duration = statistic("Duration", "Sum") / duration_count if duration_count else None
        active = version.state == "Active"
        return MetricSnapshot(
            at=now.timestamp(),
            requests=int(statistic("Invocations", "Sum")),
            errors=int(statistic("Errors", "Sum")),
            response_time_ms=mean_duration,
            servers_up=1 if active else 0,
            servers_total=1,
        )

    def live_state(self, target: Target, revision: str, deep: bool = False) -> LiveState:
        """Nothing of ours runs between invocations: there is nothing to watch."""
        return LiveState(revision=revision)

    def default_metric_provider(self) -> MetricProviderConfig:
        """CloudWatch, in the scheme Lambda uses for invocations through a weighted alias (the provider's
        defaults), reached with this platform's region, endpoint and profile."""
        settings = {
            "region": self.settings.region,
            "endpointUrl": self.settings.endpoint_url,
            "profile": self.settings.profile,
            "maxAttempts": self.settings.max_attempts,
            "connectTimeout": self.settings.connect_timeout,
            "readTimeout": self.settings.read_timeout,
        }
        return MetricProviderConfig(
            type=MetricProviderType.CLOUDWATCH, namespace=NAMESPACE, settings=settings
        )

    def metric_labels(self, target: Target, revision: str) -> dict[str, str]:
        """The function, the alias and the revision's newest published version (none: no ``version``)."""
        function = self.function_name(target)
        labels = {
            "service": target.service,
            "environment": target.environment,
            "revision": revision,
            "function": function,
            "alias": self.settings.alias_name,
        }
        version = self._latest_per_revision(self._versions(function) or []).get(revision)
        if version is not None:
            labels["version"] = version.number
        return labels

    def logs(self, target: Target, revision: str, lines: int = 100) -> str:
        """The last ``lines`` log lines of the revision's versions; empty when there are none."""
        function = self.function_name(target)
        group = f"/aws/lambda/{function}"
        versions = [v for v in self._versions(function) or [] if v.revision == revision]
        if not versions or lines <= 0:
            return ""
        streams = self._log_streams(group, {f"[{v.number}]" for v in versions})
        if not streams:
            return ""
        start = min(v.created for v in versions) - timedelta(minutes=1)
        recent: deque[str] = deque(maxlen=lines)
        token: str | None = None
        for _ in range(20):  # bounded: at most 20 pages of events
            kwargs: dict[str, Any] = {
                "logGroupName": group,
                "logStreamNames": streams,
                "startTime": int(start.timestamp() * 1000),
            }
            if token:
                kwargs["nextToken"] = token
            page = self._find("logs", "filter_log_events", **kwargs)
            if page is None:
                return ""
            recent.extend(_log_line(event) for event in page.get("events", []))
            token = page.get("nextToken")
            if not token:
                break
        return "\n".join(recent)

    def _log_streams(self, group: str, markers: set[str]) -> list[str]:
        """Names of the newest streams (at most 100, filter_log_events' limit) of the given versions."""
        names: list[str] = []
        token: str | None = None
        for _ in range(10):
            kwargs: dict[str, Any] = {"logGroupName": group, "orderBy": "LastEventTime", "descending": True}
            if token:
                kwargs["nextToken"] = token
            page = self._find("logs", "describe_log_streams", **kwargs)
            if page is None:
                return []
            for stream in page.get("logStreams", []):
                name = str(stream.get("logStreamName", ""))
                if any(marker in name for marker in markers):
                    names.append(name)
            token = page.get("nextToken")
            if not token or len(names) >= 100:
                break
        return names[:100]

    def close(self) -> None:
        with self._clients_lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def _log_line(event: dict[str, Any]) -> str:
    stamp = datetime.fromtimestamp(int(event.get("timestamp", 0)) / 1000, UTC).isoformat(timespec="seconds")
    return f"{stamp} {str(event.get('message', '')).rstrip()}"


def _check_weights(weights: dict[str, int]) -> None:
    if not weights:
        raise ValueError("weights are empty: give at least one revision 100")
    negative = {revision: weight for revision, weight in weights.items() if weight < 0}
    if negative:
        raise ValueError(f"weights cannot be negative: {negative}")
    total = sum(weights.values())
    if total != 100:
        raise ValueError(f"weights must sum to 100, these sum to {total}: {weights}")


def _capabilities(settings: LambdaSettings) -> PlatformCapabilities:
    """Lambda's endpoints are AWS's: HTTPS only, with AWS's certificate (never the environment's), unless the
    API is reached at a plain-HTTP endpoint (an emulator such as moto), which cannot be called TLS."""
    https = settings.endpoint_url is None or settings.endpoint_url.lower().startswith("https://")
    notes = [
        "lambda: one published version serves any load (replica counts do not apply)",
        "lambda: CPU follows the memory size (AWS allots it); memory and disk set MemorySize and "
        "EphemeralStorage",
        "lambda: invocations are served over HTTPS by AWS with its own certificate; the environment's "
        "certificate is not used"
        if https
        else f"lambda: the API endpoint {settings.endpoint_url} is plain HTTP: nothing is served over TLS",
    ]
    return PlatformCapabilities(
        scales_itself=True,
        serves_tls=https,
        tls_by_provider=https,
        limits=frozenset({Resource.MEMORY, Resource.DISK}),
        notes=notes,
    )


def _megabytes(size: int, field: str, low: int, high: int) -> int:
    megabytes = -(-size // 2**20)  # rounded up: never less than asked
    if not low <= megabytes <= high:
        raise ValueError(f"{field}: Lambda takes {low} to {high} MB, the environment asks for {megabytes} MB")
    return megabytes


def _resource_config(spec: RevisionSpec) -> dict[str, Any]:
    """The environment's memory and disk per replica as the function's MemorySize and EphemeralStorage."""
    resources = spec.resources
    config: dict[str, Any] = {}
    if resources is not None and resources.memory:
        config["MemorySize"] = _megabytes(resources.memory, "resources.memory", 128, 10_240)
    if resources is not None and resources.disk:
        config["EphemeralStorage"] = {"Size": _megabytes(resources.disk, "resources.disk", 512, 10_240)}
    return config
