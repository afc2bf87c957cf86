"""The enterprise configuration file (``enterprise_config.yaml``) and its loader.

The file is written by people, so every problem is reported at once, each as
``<file>: <yaml.path.to.key>: <plain explanation>``, with the key names as they appear in the YAML.
Keys load in the seed's camelCase and in snake_case alike (``engine.models.Model``).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import types
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, model_validator
from pydantic.alias_generators import to_camel, to_snake
from pydantic_core import ErrorDetails, PydanticCustomError

from engine.alerting import AlertingSettings, alerting_problems
from engine.audit import AuditSettings
from engine.hooks import ConfiguredWebhook
from engine.identity import AccessGrants, access_problems
from engine.models import (
    SUPPORTED_PLATFORMS,
    ApprovalWorkflow,
    BlueGreenConfig,
    CanaryConfig,
    DurationMs,
    Environment,
    Features,
    Model,
    PlatformConfig,
    RollingConfig,
    ScannerConfig,
    Strategy,
    StrategyType,
)
from engine.paths import orchestrator_home
from engine.pipeline_model import PipelineTemplate, StageTemplate, template_problems
from engine.secrets import REFERENCE
from engine.supervision import SupervisionSettings

CONFIG_ENV_VAR = "ORCH_CONFIG"
DEFAULT_CONFIG_FILE = Path(__file__).resolve().parent.parent / "enterprise_config.yaml"
# The custom error type that carries its own YAML path (cross-field checks have no pydantic ``loc``).
_LOCATED = "config_problems"

PositiveDurationMs = Annotated[DurationMs, Field(gt=0)]


class ConfigError(ValueError):
    """The configuration cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# --------------------------------------------------------------------------------------------
# Sections of the file
# --------------------------------------------------------------------------------------------
class StrategyDefaults(Model):
    """Defaults for each strategy; a deployment's own settings are merged over them."""

    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    blue_green: BlueGreenConfig = Field(default_factory=BlueGreenConfig)
    rolling: RollingConfig = Field(default_factory=RollingConfig)

    def for_type(self, kind: StrategyType) -> CanaryConfig | BlueGreenConfig | RollingConfig:
        if kind is StrategyType.CANARY:
            return self.canary
        if kind is StrategyType.BLUE_GREEN:
            return self.blue_green
        return self.rolling


class ConcurrencySettings(Model):
    max_concurrent_deployments: int = Field(default=10, ge=1, le=100)
    max_queued: int = Field(default=1000, ge=0)
    warm_runners: int = Field(
        default=2,
        ge=0,
        le=100,
        description="Runner actors kept started (idle or busy; reused from one deployment to the next)",
    )


class JournalBackend(str, Enum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


class JournalSettings(Model):
    """``backend: sqlite`` (one file, the embedded default) or ``backend: postgresql`` (several nodes),
    whose ``url`` is a reference resolved where the journal is opened (``env:NAME`` or
    ``file:/run/secrets/...``), or a URL without a password: a password never goes in the file."""

    backend: JournalBackend = JournalBackend.SQLITE
    path: str | None = Field(default=None, description="sqlite only; None: $ORCH_HOME/journal.db")
    url: str | None = Field(default=None, description="postgresql only: env:NAME, file:/path or a URL")

    @model_validator(mode="after")
    def _backend_settings(self) -> JournalSettings:
        if self.backend is JournalBackend.SQLITE:
            if self.url is not None:
                raise ValueError("url: is for backend postgresql; a SQLite journal takes 'path'")
            return self
        if self.path is not None:
            raise ValueError("path: is for backend sqlite; a PostgreSQL journal takes 'url'")
        if not self.url:
            raise ValueError("url: required for backend postgresql: env:NAME or file:/path holding the URL")
        if REFERENCE.match(self.url):
            return self
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("url: must be env:NAME, file:/path, or a postgresql:// URL")
        if parts.password is not None or "password=" in parts.query:
            raise ValueError(
                "url: holds a password, which must not be written in this file: put the URL in an "
                "environment variable (url: env:ORCH_JOURNAL_URL) or a secret file "
                "(url: file:/run/secrets/...)"
            )
        return self


class HealthSettings(Model):
    probe_timeout: PositiveDurationMs = 2_000
    probe_interval: PositiveDurationMs = 5_000
    unhealthy_threshold: int = Field(default=3, ge=1, le=100)


class MetricsSettings(Model):
    prometheus_port: int | None = Field(default=None, ge=1, le=65_535)
    dora_window: PositiveDurationMs = Field(
        default=30 * 86_400_000, description="DORA metrics' trailing window"
    )


class ScannerSettings(Model):
    """Commands that scan artifacts before they are deployed (``security.vulnerabilityScanning``)."""

    vulnerability: ScannerConfig | None = None


class EnterpriseConfig(Model):
    """The whole ``enterprise_config.yaml``."""

    environments: dict[str, Environment] = Field(default_factory=dict)
    platforms: dict[str, PlatformConfig] = Field(default_factory=dict)
    strategy_defaults: StrategyDefaults = Field(default_factory=StrategyDefaults)
    concurrency: ConcurrencySettings = Field(default_factory=ConcurrencySettings)
    journal: JournalSettings = Field(default_factory=JournalSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    roles: dict[str, list[str]] = Field(default_factory=dict, description="approver group -> members")
    namespace: str = Field(default="deploy-orchestrator", min_length=1, description="Ray namespace")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    pipelines: dict[str, PipelineTemplate] = Field(default_factory=dict, description="Pipeline templates")
    features: Features = Field(default_factory=Features)
    trusted_keys: dict[str, str] = Field(
        default_factory=dict,
        description="key id -> ed25519 public key (PEM, OpenSSH 'ssh-ed25519 ...', base64, or file:/path)",
    )
    scanners: ScannerSettings = Field(default_factory=ScannerSettings)
    access: dict[str, AccessGrants] = Field(
        default_factory=dict, description="environment (or pattern) -> role -> people (engine/identity.py)"
    )
    audit: AuditSettings = Field(default_factory=AuditSettings)
    supervision: SupervisionSettings = Field(default_factory=SupervisionSettings)
    hooks: list[ConfiguredWebhook] = Field(
        default_factory=list, description="Webhooks per environment and strategy (engine/hooks.py)"
    )
    alerting: AlertingSettings = Field(default_factory=AlertingSettings)

    _source: Path | None = PrivateAttr(default=None)
    _sha256: str | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _names_from_keys(cls, data: Any) -> Any:
        """An environment takes its name from its key; a platform keyed by a type may omit ``type``."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        environments = data.get("environments")
        if isinstance(environments, Mapping):
            data["environments"] = {
                key: {"name": key, **value} if isinstance(value, Mapping) and "name" not in value else value
                for key, value in environments.items()
            }
        platforms = data.get("platforms")
        if isinstance(platforms, Mapping):
            data["platforms"] = {
                key: {"type": key, **value} if isinstance(value, Mapping) and "type" not in value else value
                for key, value in platforms.items()
            }
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> EnterpriseConfig:
        problems = [
            *self._name_mismatches(),
            *self._unknown_approver_groups(),
            *self._governance_problems(),
            *self._pipeline_problems(),
            *access_problems(self.access, self.environments, self.roles),
            *alerting_problems(self.alerting),
        ]
        if problems:
            summary = "; ".join(f"{path}: {message}" for path, message in problems)
            raise PydanticCustomError(_LOCATED, "{summary}", {"summary": summary, "problems": problems})
        return self

    def _name_mismatches(self) -> Iterable[tuple[str, str]]:
        for key, environment in self.environments.items():
            if environment.name != key:
                yield (
                    f"environments.{key}.name",
                    f"name '{environment.name}' differs from its key '{key}': drop it or make them equal",
                )

    def _unknown_approver_groups(self) -> Iterable[tuple[str, str]]:
        """With a ``roles:`` section, every approver group must be in it (a typo would block deployments).
        Without one (the seed's block on its own) the file loads, and a deployment needing a group that has
        no members is refused at submission, naming the group."""
        if not self.roles:
            return
        known = f"defined: {', '.join(sorted(self.roles))}"
        for key, environment in self.environments.items():
            workflow = environment.approval_workflow
            for index, group in enumerate(workflow.approver_groups):
                if group not in self.roles:
                    yield (
                        f"environments.{key}.approvalWorkflow.{workflow.groups_key}[{index}]",
                        f"approver group '{group}' is not defined under 'roles' ({known})",
                    )

    def _pipeline_problems(self) -> Iterable[tuple[str, str]]:
        for name, template in self.pipelines.items():
            path = f"pipelines.{name}"
            if not _PIPELINE_NAME.match(name):
                yield path, f"'{name}' is not a valid pipeline name: use lower-case letters, digits and '-'"
            yield from template_problems(path, template, self.environments)
            for index, stage in enumerate(template.stages):
                if stage.kind.value == "deploy":
                    yield from self._deploy_stage_problems(f"{path}.stages[{index}]", stage)

    def _deploy_stage_problems(self, path: str, stage: StageTemplate) -> Iterable[tuple[str, str]]:
        """A deploy stage's platform and strategy (with its overrides) as a deployment would take them."""
        strategy = stage.strategy
        try:
            self.platform(stage.platform)
        except ValueError as error:
            yield f"{path}.platform", str(error)
        try:
            if isinstance(strategy, str):
                self.strategy_for(strategy, stage.settings or None)
            else:
                Strategy.model_validate(strategy)
        except ValidationError as error:
            for problem in error.errors():  # at the key the stage wrote: its settings, or its strategy
                if isinstance(strategy, str):
                    yield explain_error(
                        f"{path}.settings", problem, strip=_CAMEL_KIND.get(strategy, strategy)
                    )
                else:
                    yield explain_error(f"{path}.strategy", problem, strip="")
        except ValueError as error:
            yield f"{path}.strategy", str(error)

    def _governance_problems(self) -> Iterable[tuple[str, str]]:
        from engine.governance import configuration_problems  # governance builds on this module

        yield from configuration_problems(self)

    # ---------------------------------------------------------------------------------------
    # Look-ups
    # ---------------------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Any, source: str = "<config>") -> EnterpriseConfig:
        """Validate an already parsed mapping; raises ConfigError listing every problem."""
        if not isinstance(data, Mapping):
            kind = "empty" if data is None else f"a {_yaml_type(data)}"
            problem = f"the file is {kind}; expected a mapping of keys such as 'environments:'"
            raise ConfigError(source, [f"{source}: (top level): {problem}"])
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise ConfigError(source, format_validation_errors(source, error.errors(), data)) from None

    @property
    def source(self) -> Path | None:
        """The file this configuration was loaded from, if any."""
        return self._source

    @property
    def sha256(self) -> str | None:
        """SHA-256 of the file's content as loaded (None when not loaded from a file)."""
        return self._sha256

    def features_for(self, environment: Environment | None) -> Features:
        """The flags in force for an environment: its own over the file's top level over the defaults."""
        own = environment.features if environment is not None else Features()
        return own.over(self.features).resolved()

    @property
    def approvals(self) -> dict[str, ApprovalWorkflow]:
        """Environment name -> its approval workflow."""
        return {name: env.approval_workflow for name, env in self.environments.items()}

    def approvers(self, environment: str) -> dict[str, list[str]]:
        """Approver group -> members, for the groups that must approve in ``environment``."""
        workflow = self.environment(environment).approval_workflow
        return {group: list(self.roles.get(group, [])) for group in workflow.approver_groups}

    def environment(self, name: str) -> Environment:
        if name not in self.environments:
            known = ", ".join(sorted(self.environments)) or "none"
            raise ValueError(f"unknown environment '{name}': configured environments are {known}")
        return self.environments[name]

    def platform(self, name: str) -> PlatformConfig:
        """A named platform config, or a bare platform type (``'docker'``) with empty settings."""
        if name in self.platforms:
            return self.platforms[name]
        if name in SUPPORTED_PLATFORMS:
            return PlatformConfig(type=name)
        configured = ", ".join(sorted(self.platforms)) or "none"
        raise ValueError(
            f"unknown platform '{name}': configured platforms are {configured}; "
            f"bare types are {', '.join(SUPPORTED_PLATFORMS)}"
        )

    def journal_location(self) -> str:
        """Where the journal is, as ``Journal`` opens it: the SQLite file's path, or PostgreSQL's ``url``
        as written (a reference is resolved by each process that opens the journal, on its own node)."""
        if self.journal.backend is JournalBackend.POSTGRESQL and self.journal.url:
            return self.journal.url
        return str(self.journal_path())

    def journal_path(self) -> Path:
        """The journal file: ``journal.path`` (relative to the config file) or $ORCH_HOME/journal.db."""
        if self.journal.backend is JournalBackend.POSTGRESQL:
            raise ValueError(
                "journal.backend is postgresql: the journal has no file (see journal_location())"
            )
        return self._file_setting(self.journal.path, "journal.db")

    def audit_key_path(self) -> Path:
        """The audit signing key: ``audit.signingKey`` or $ORCH_HOME/audit/signing-key.pem."""
        return self._file_setting(self.audit.signing_key, "audit/signing-key.pem")

    def audit_checkpoints_path(self) -> Path:
        """The signed checkpoints: ``audit.checkpoints`` or $ORCH_HOME/audit/checkpoints.jsonl."""
        return self._file_setting(self.audit.checkpoints, "audit/checkpoints.jsonl")

    def _file_setting(self, value: str | None, default: str) -> Path:
        """A configured file (relative to the config file) or ``default`` under $ORCH_HOME."""
        if value is None:
            return orchestrator_home() / default
        path = Path(value).expanduser()
        if not path.is_absolute() and self._source is not None:
            path = self._source.parent / path
        return path

    def strategy_for(
        self, type_: str, overrides: Mapping[str, Any] | None = None, environment: str | None = None
    ) -> Strategy:
        """The file's defaults for ``type_``, then the environment's ``strategyOverrides`` for it, then a
        deployment's flat overrides, deep-merged and validated.

        ``overrides`` is the seed's flat shape (``{"stepPercentage": 25, "successThreshold": {...}}``);
        the strategy's own keys (``replicas``, ``progressDeadline``, ``maxPauseDuration``) may be mixed in.
        """
        kind = Strategy(type=type_).type  # normalises 'blueGreen', refuses unknown
        given = dict(overrides or {})
        webhooks = given.pop("webhooks", None)  # as given: their metadata keys are the receiver's
        flat: dict[str, Any] = {}
        if environment is not None and environment in self.environments:
            flat = _snake_keys(dict(self.environments[environment].strategy_overrides.get(kind.value, {})))
        flat = _deep_merge(flat, _snake_keys(given))
        if webhooks is not None:
            flat["webhooks"] = webhooks
        top_level = {key: flat.pop(key) for key in list(flat) if key in _STRATEGY_TOP_LEVEL}
        defaults = self.strategy_defaults.for_type(kind).model_dump()
        return Strategy.from_seed(kind.value, _deep_merge(defaults, flat), **top_level)


_CAMEL_KIND = {"blue_green": "blueGreen", "bluegreen": "blueGreen", "blue-green": "blueGreen"}
_PIPELINE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


_STRATEGY_TOP_LEVEL = frozenset({"replicas", "progress_deadline", "max_pause_duration", "webhooks"})


def _snake_keys(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {to_snake(str(key)): _snake_keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_snake_keys(item) for item in value]
    return value


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, str) and key in seen:
                problem = f"key '{key}' appears twice"
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, problem, key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def default_config_path() -> Path:
    """``$ORCH_CONFIG`` or the ``enterprise_config.yaml`` at the repository root."""
    return Path(os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_FILE).expanduser()


def load_config(path: str | Path | None = None) -> EnterpriseConfig:
    """Read and validate the configuration file; raises ConfigError listing every problem."""
    file = Path(path).expanduser() if path is not None else default_config_path()
    source = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, [f"{source}: configuration file not found"]) from None
    except OSError as error:
        problem = f"{source}: cannot read the configuration file: {error.strerror}"
        raise ConfigError(source, [problem]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ConfigError(source, [_yaml_problem(source, error)]) from None
    config = EnterpriseConfig.from_mapping(data, source)
    config._source = file.resolve()
    config._sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return config


def _yaml_problem(source: str, error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        context = f" ({error.context})" if error.context else ""
        kind = "invalid YAML" if isinstance(error, yaml.constructor.ConstructorError) else "YAML syntax error"
        return f"{source}: line {mark.line + 1}, column {mark.column + 1}: {kind}: {error.problem}{context}"
    return f"{source}: YAML syntax error: {error}"


# --------------------------------------------------------------------------------------------
# Turning pydantic's errors into plain sentences at YAML paths
# --------------------------------------------------------------------------------------------
def format_validation_errors(source: str, errors: Sequence[ErrorDetails], data: Any) -> list[str]:
    """One ``<file>: <yaml.path>: <explanation>`` line per problem (cross-checks may add several)."""
    lines: list[str] = []
    for error in errors:
        ctx = error.get("ctx") or {}
        if error["type"] == _LOCATED:
            lines.extend(f"{source}: {path}: {message}" for path, message in ctx["problems"])
            continue
        keys = _yaml_keys(error["loc"], data)
        path, message = _join_path(keys, _explain(error, keys), data)
        lines.append(f"{source}: {path}: {message}")
    return lines


def explain_error(path: str, error: ErrorDetails, strip: str) -> tuple[str, str]:
    """A strategy's validation error as (YAML path, message) under ``path`` (an environment's
    strategyOverrides entry); ``strip`` is the strategy's own key, which pydantic puts first."""
    loc = list(error["loc"])
    if loc and loc[0] in (strip, to_snake(strip)):
        loc = loc[1:]
    keys: list[int | str] = [to_camel(part) if isinstance(part, str) else part for part in loc]
    message = _explain(error, ["strategyDefaults", strip, *keys])
    return (f"{path}.{_dotted(keys)}" if keys else path), message


def _yaml_keys(loc: tuple[int | str, ...], data: Any) -> list[int | str]:
    """pydantic's ``loc`` as the keys written in the file (skipping union tags, keeping missing keys)."""
    keys: list[int | str] = []
    node = data
    for position, part in enumerate(loc):
        if _has_key(node, part):
            keys.append(part)
            node = node[part]
        elif position == len(loc) - 1:
            keys.append(part)  # a missing key: pydantic names it by its camelCase alias
    return keys


def _has_key(node: Any, part: int | str) -> bool:
    if isinstance(node, list):
        return isinstance(part, int) and 0 <= part < len(node)
    return isinstance(node, Mapping) and part in node


_FIELD_FIRST = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?:: | \(([^)]*)\) )(.+)$", re.DOTALL)


def _join_path(keys: list[int | str], message: str, data: Any) -> tuple[str, str]:
    """Model-level checks name their field first ("initialTrafficPercentage: 0% ...",
    "failureThreshold.errorRate (0.01) is looser ..."): fold that field into the path."""
    match = _FIELD_FIRST.match(message)
    if not match or not _is_field(keys, match.group(1).split(".")[0]):
        return _dotted(keys), message
    node = _node_at(data, keys)
    for part in match.group(1).split("."):
        written = part if _has_key(node, part) or not _has_key(node, to_snake(part)) else to_snake(part)
        keys = [*keys, written]
        node = node[written] if _has_key(node, written) else None
    value, rest = match.group(2), match.group(3)
    return _dotted(keys), f"{value} {rest}" if value else rest


def _is_field(parent: list[int | str], key: str) -> bool:
    return any(key in spellings for spellings in _allowed_keys(parent))


def _node_at(data: Any, keys: Sequence[int | str]) -> Any:
    for key in keys:
        data = data[key] if _has_key(data, key) else None
    return data


def _dotted(keys: Sequence[int | str]) -> str:
    path = ""
    for key in keys:
        path += f"[{key}]" if isinstance(key, int) else (f".{key}" if path else str(key))
    return path or "(top level)"


def _explain(error: ErrorDetails, keys: list[int | str]) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(keys)
    if kind == "missing":
        return "required key is missing"
    if kind in _BOUNDS:
        return f"{_BOUNDS[kind]} {next(iter(ctx.values()))}, got {_show(value)}"
    if kind in _TYPES:
        return f"must be {_TYPES[kind]}, got {_show(value)} ({_yaml_type(value)})"
    message = re.sub(r"^(Value error|Assertion failed), ", "", error["msg"])
    if kind in ("value_error", "assertion_error"):
        return message
    return f"{message[:1].lower()}{message[1:]}, got {_show(value)}"


_BOUNDS = {
    "greater_than": "must be greater than",
    "greater_than_equal": "must be at least",
    "less_than": "must be less than",
    "less_than_equal": "must be at most",
}
_TYPES = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string (put it in quotes)",
    "dict_type": "a mapping (key: value lines)",
    "model_type": "a mapping (key: value lines)",
    "model_attributes_type": "a mapping (key: value lines)",
    "list_type": "a list",
}


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _yaml_type(value: Any) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "mapping"}
    return "empty value" if value is None else names.get(type(value), type(value).__name__)


def _unknown_key(keys: list[int | str]) -> str:
    key = str(keys[-1]) if keys else ""
    allowed = _allowed_keys(keys[:-1])
    if not allowed:
        return "unknown key"
    by_spelling = {name: alias for alias, name in allowed} | {alias: alias for alias, _ in allowed}
    close = difflib.get_close_matches(key, list(by_spelling), n=1, cutoff=0.6)
    options = ", ".join(alias for alias, _ in allowed)
    what = "unknown strategy" if keys[:-1] == ["strategyDefaults"] else "unknown key"
    if close:
        return f"{what}; did you mean '{by_spelling[close[0]]}'?"
    return f"{what}; expected one of: {options}"


def _allowed_keys(parent: Sequence[int | str]) -> list[tuple[str, str]]:
    """(camelCase alias, snake_case name) of the keys allowed at ``parent``, walking the model types."""
    annotation: Any = EnterpriseConfig
    for part in parent:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = _field_named(annotation, str(part))
            if field is None:
                return []
            annotation = field
        elif get_origin(annotation) in (dict, list):
            annotation = get_args(annotation)[-1]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(info.alias or name, name) for name, info in annotation.model_fields.items()]
    return []


def _field_named(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info.annotation
    return None


def _unwrap(annotation: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` -> ``X``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def write_isolated_config(
    folder: Path,
    frontend_ports: tuple[int, int] = (19000, 19499),
    replica_ports: tuple[int, int] = (41000, 44999),
    namespace: str | None = None,
    source: Path | None = None,
    concurrency: dict[str, Any] | None = None,
    prometheus_port: int | None = None,
) -> Path:
    """A copy of a configuration whose journal, platform state and ports are its own (tests, benchmarks)."""
    original = source or default_config_path()
    data = yaml.safe_load(original.read_text())
    data["journal"] = {"path": str(folder / "journal.db")}
    scanner = (data.get("scanners") or {}).get("vulnerability")
    if isinstance(scanner, dict) and not (scanner.get("workingDir") or scanner.get("working_dir")):
        scanner["workingDir"] = str(original.resolve().parent)  # its relative paths keep working
    data.setdefault("audit", {}).update(
        signingKey=str(folder / "audit" / "signing-key.pem"),
        checkpoints=str(folder / "audit" / "checkpoints.jsonl"),
    )
    data["platforms"]["local"]["settings"] = {
        "stateDir": str(folder / "platforms"),
        "frontendPortRange": list(frontend_ports),
        "replicaPortRange": list(replica_ports),
    }
    if namespace:
        data["namespace"] = namespace
    if concurrency:
        data.setdefault("concurrency", {}).update(concurrency)
    if prometheus_port:
        data["metrics"] = {"prometheusPort": prometheus_port}
    path = folder / "enterprise_config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
