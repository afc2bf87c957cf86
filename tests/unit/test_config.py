"""The enterprise configuration file: the shipped one loads, and each kind of mistake is reported plainly at
its YAML path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.config import DEFAULT_CONFIG_FILE, ConfigError, EnterpriseConfig, load_config
from engine.models import (
    ComplianceLevel,
    PlatformConfig,
    StrategyType,
)

MINIMAL = """
roles:
  sre: [carol]
environments:
  production:
    approvalWorkflow: {required: true, approverGroups: [sre]}
"""


def _write(tmp_path: Path, text: str) -> Path:
    file = tmp_path / "enterprise_config.yaml"
    file.write_text(textwrap.dedent(text), encoding="utf-8")
    return file


def _problems(tmp_path: Path, text: str) -> str:
    file = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    message = str(caught.value)
    assert all(line.startswith(f"{file}: ") for line in message.splitlines()), message
    return message


# --------------------------------------------------------------------------------------------
# The shipped file
# --------------------------------------------------------------------------------------------
def test_the_shipped_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCH_CONFIG", raising=False)
    config = load_config()
    assert config.source == DEFAULT_CONFIG_FILE.resolve()
    assert set(config.environments) == {"development", "staging", "production"}
    assert set(config.platforms) == {"local", "docker", "kubernetes", "lambda", "vm"}
    assert config.concurrency.max_concurrent_deployments == 10
    assert config.namespace == "deploy-orchestrator"


def test_the_shipped_environments_have_the_promised_governance() -> None:
    config = load_config(DEFAULT_CONFIG_FILE)
    development, staging, production = map(config.environment, ("development", "staging", "production"))
    assert development.compliance_level is ComplianceLevel.STANDARD
    assert not development.approval_workflow.required
    assert staging.compliance_level is ComplianceLevel.ENHANCED
    assert staging.approval_workflow.approver_groups == ["qa"]
    assert production.compliance_level is ComplianceLevel.NASA_POT10  # the seed's block
    assert production.approval_workflow.required
    assert production.approval_workflow.approver_groups == ["prod-team", "security-team", "compliance-team"]
    assert production.security.tls_required
    assert production.security.allowed_sources
    assert production.security.audit_retention_days == 2555
    assert set(config.approvers("production")) == {"prod-team", "security-team", "compliance-team"}
    assert all(config.approvers("production").values())


def test_the_shipped_strategy_defaults_are_the_seeds() -> None:
    defaults = load_config(DEFAULT_CONFIG_FILE).strategy_defaults
    assert defaults.canary.weights() == [10, 35, 60, 85]
    assert defaults.canary.step_duration == 300_000
    assert defaults.canary.success_threshold.named() == {
        "errorRate": 1,
        "responseTime": 500,
        "availability": 99.5,
        "throughput": 100,
    }
    assert defaults.canary.failure_threshold.named() == {
        "errorRate": 5,
        "responseTime": 2000,
        "availability": 95,
    }
    assert defaults.canary.failure_threshold.consecutive_failures == 3
    assert defaults.blue_green.validation_duration == 300_000
    health, smoke = defaults.blue_green.switch_triggers
    assert health.condition is not None and health.condition.metric == "health_status"
    assert smoke.condition is not None and smoke.condition.metric == "smoke_success_rate"
    assert (defaults.rolling.max_surge, defaults.rolling.max_unavailable) == (1, 0)


def test_the_shipped_platforms_carry_their_settings() -> None:
    config = load_config(DEFAULT_CONFIG_FILE)
    assert config.platform("local").settings["frontendPortRange"] == [18000, 18999]
    assert config.platform("kubernetes").settings["namespace"] == "default"
    assert config.platform("lambda").settings["region"] == "us-east-1"


def test_orch_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_CONFIG", str(_write(tmp_path, "namespace: elsewhere\n")))
    assert load_config().namespace == "elsewhere"


# --------------------------------------------------------------------------------------------
# Mistakes, each reported at its YAML path in plain words
# --------------------------------------------------------------------------------------------
def test_an_unknown_key_is_reported_with_a_suggestion(tmp_path: Path) -> None:
    message = _problems(
        tmp_path,
        """
        environments:
          staging:
            aprovalWorkflow: {required: false}
        """,
    )
    assert "environments.staging.aprovalWorkflow: unknown key; did you mean 'approvalWorkflow'?" in message


def test_an_unknown_key_without_a_close_match_lists_the_allowed_ones(tmp_path: Path) -> None:
    message = _problems(tmp_path, "colour: blue\n")
    assert "colour: unknown key; expected one of:" in message and "strategyDefaults" in message


def test_a_percent_of_150_is_out_of_range(tmp_path: Path) -> None:
    message = _problems(tmp_path, "strategyDefaults:\n  canary:\n    initialTrafficPercentage: 150\n")
    assert "strategyDefaults.canary.initialTrafficPercentage: must be at most 100, got 150" in message


def test_a_step_percentage_of_0_is_refused(tmp_path: Path) -> None:
    message = _problems(tmp_path, "strategyDefaults:\n  canary:\n    stepPercentage: 0\n")
    assert "strategyDefaults.canary.stepPercentage: a step of 0% would never finish" in message


def test_a_failure_error_rate_looser_than_success_is_refused(tmp_path: Path) -> None:
    message = _problems(
        tmp_path,
        """
        strategyDefaults:
          canary:
            successThreshold: {errorRate: 5}
            failureThreshold: {errorRate: 1}
        """,
    )
    assert (
        "strategyDefaults.canary.failureThreshold.errorRate: 1 is looser than successThreshold.errorRate"
    ) in message


def test_a_bad_switch_trigger_is_reported_at_its_yaml_path(tmp_path: Path) -> None:
    message = _problems(
        tmp_path,
        """
        strategyDefaults:
          blueGreen:
            switchTriggers:
              - type: health
                condition: {metric: health_status, operator: eq, value: healthy}
                action: switch
              - type: metrics
                condition: {metric: cpu_load, operator: lt, value: 80}
                action: rollback
        """,
    )
    assert "strategyDefaults.blueGreen.switchTriggers[1].condition.metric" in message
    assert "unknown metric 'cpu_load'" in message


def test_an_unknown_platform_type_lists_the_supported_ones(tmp_path: Path) -> None:
    message = _problems(tmp_path, "platforms:\n  functions: {type: azure_functions}\n")
    assert "platforms.functions.type: unknown platform 'azure_functions'" in message
    assert "supported are local, docker, kubernetes, lambda, vm" in message


def test_a_platform_key_that_is_not_a_type_needs_one(tmp_path: Path) -> None:
    message = _problems(tmp_path, "platforms:\n  openshift: {settings: {}}\n")
    assert "platforms.openshift.type: unknown platform 'openshift'" in message


def test_an_unknown_strategy_is_reported(tmp_path: Path) -> None:
    message = _problems(tmp_path, "strategyDefaults:\n  linear: {}\n  blue-green: {}\n")
    assert "strategyDefaults.linear: unknown strategy; expected one of: canary, blueGreen, rolling" in message
    assert "strategyDefaults.blue-green: unknown strategy; did you mean 'blueGreen'?" in message


def test_a_yaml_syntax_error_gives_its_line(tmp_path: Path) -> None:
    message = _problems(tmp_path, "namespace: ok\nroles:\n  sre: [carol, dave\nhealth: {}\n")
    assert "line 4, column" in message and "YAML syntax error" in message


def test_a_key_given_twice_gives_its_line(tmp_path: Path) -> None:
    message = _problems(tmp_path, "namespace: one\nroles: {}\nnamespace: two\n")
    assert "line 3, column 1" in message and "'namespace' appears twice" in message


def test_an_approver_group_missing_from_roles_is_reported(tmp_path: Path) -> None:
    message = _problems(tmp_path, MINIMAL.replace("[sre]", "[sre, release-managers]"))
    assert (
        "environments.production.approvalWorkflow.approverGroups[1]: "
        "approver group 'release-managers' is not defined under 'roles' (defined: sre)"
    ) in message


def test_an_environment_name_that_differs_from_its_key_is_reported(tmp_path: Path) -> None:
    message = _problems(tmp_path, "environments:\n  production: {name: prod}\n")
    assert "environments.production.name: name 'prod' differs from its key 'production'" in message


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "a list"), ("just words\n", "a string"), ("", "empty")]
)
def test_a_top_level_that_is_not_a_mapping_is_reported(tmp_path: Path, text: str, kind: str) -> None:
    message = _problems(tmp_path, text)
    assert f"(top level): the file is {kind}; expected a mapping" in message


def test_a_wrong_type_names_the_value_and_what_is_expected(tmp_path: Path) -> None:
    message = _problems(tmp_path, "concurrency:\n  maxQueued: lots\n")
    assert "concurrency.maxQueued: must be a whole number, got 'lots'" in message


def test_every_problem_is_listed_not_just_the_first(tmp_path: Path) -> None:
    message = _problems(
        tmp_path,
        """
        concurrency: {maxConcurrentDeployments: 0}
        metrics: {prometheusPort: 70000}
        health: {probeTimeout: 0}
        """,
    )
    assert len(message.splitlines()) == 3
    assert "concurrency.maxConcurrentDeployments: must be at least 1, got 0" in message
    assert "metrics.prometheusPort: must be at most 65535, got 70000" in message
    assert "health.probeTimeout: must be greater than 0" in message


def test_a_snake_case_key_is_reported_as_written(tmp_path: Path) -> None:
    message = _problems(tmp_path, "strategy_defaults:\n  rolling: {max_surge: 0, max_unavailable: 0}\n")
    assert "strategy_defaults.rolling: maxSurge and maxUnavailable are both 0" in message


def test_a_snake_case_threshold_is_reported_as_written(tmp_path: Path) -> None:
    message = _problems(
        tmp_path,
        """
        strategy_defaults:
          canary:
            success_threshold: {error_rate: 5}
            failure_threshold: {error_rate: 1}
        """,
    )
    assert "strategy_defaults.canary.failure_threshold.error_rate: 1 is looser than" in message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: configuration file not found"):
        load_config(tmp_path / "nowhere.yaml")


# --------------------------------------------------------------------------------------------
# Look-ups
# --------------------------------------------------------------------------------------------
def test_camel_case_and_snake_case_files_load_the_same(tmp_path: Path) -> None:
    camel = _write(tmp_path, "strategyDefaults:\n  blueGreen: {switchTrafficPercentage: 50}\n")
    camel_config = load_config(camel)
    snake = _write(tmp_path, "strategy_defaults:\n  blue_green: {switch_traffic_percentage: 50}\n")
    # The same settings; the files' texts (whose digests each configuration records) differ.
    assert load_config(snake).model_dump() == camel_config.model_dump()
    assert camel_config.strategy_defaults.blue_green.switch_weights() == [50, 100]


def test_strategy_for_merges_the_defaults_with_overrides(tmp_path: Path) -> None:
    config = load_config(DEFAULT_CONFIG_FILE)
    strategy = config.strategy_for(
        "canary",
        {"stepPercentage": 30, "failure_threshold": {"consecutiveFailures": 5}, "replicas": 4},
    )
    assert strategy.type is StrategyType.CANARY and strategy.replicas == 4
    assert strategy.canary is not None
    assert strategy.canary.step_percentage == 30  # overridden
    assert strategy.canary.initial_traffic_percentage == 10  # from the file
    assert strategy.canary.failure_threshold.consecutive_failures == 5  # overridden, nested
    assert strategy.canary.failure_threshold.error_rate == 5  # kept beside it
    assert strategy.canary.weights() == [10, 40, 70, 100]


def test_strategy_for_without_overrides_gives_the_file_defaults() -> None:
    config = load_config(DEFAULT_CONFIG_FILE)
    strategy = config.strategy_for("blueGreen", None)
    assert strategy.blue_green == config.strategy_defaults.blue_green


def test_strategy_for_validates_the_merged_result() -> None:
    config = load_config(DEFAULT_CONFIG_FILE)
    with pytest.raises(ValueError, match="maxSurge and maxUnavailable are both 0"):
        config.strategy_for("rolling", {"maxSurge": 0})
    with pytest.raises(ValueError, match="unknown strategy 'linear'"):
        config.strategy_for("linear", {})


def test_platform_by_name_by_bare_type_or_refused() -> None:
    eu_cluster = {"type": "kubernetes", "settings": {"a": 1}}
    config = EnterpriseConfig.from_mapping({"platforms": {"eu": eu_cluster}})
    assert config.platform("eu") == PlatformConfig(type="kubernetes", settings={"a": 1})
    assert config.platform("docker") == PlatformConfig(type="docker")
    with pytest.raises(ValueError, match="unknown platform 'mars': configured platforms are eu"):
        config.platform("mars")


def test_an_unknown_environment_lists_the_known_ones() -> None:
    config = load_config(DEFAULT_CONFIG_FILE)
    with pytest.raises(ValueError, match="configured environments are development, production, staging"):
        config.environment("qa")


def test_the_journal_defaults_to_orch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_HOME", str(tmp_path / "home"))
    assert EnterpriseConfig().journal_path() == tmp_path / "home" / "journal.db"
    relative = load_config(_write(tmp_path, "journal: {path: state/journal.db}\n"))
    assert relative.journal_path() == tmp_path.resolve() / "state" / "journal.db"
