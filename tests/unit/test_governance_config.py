"""The seed's enterprise configuration loads verbatim and means what it says; every governance setting is
validated, and each problem is reported at its YAML path."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from engine.config import DEFAULT_CONFIG_FILE, ConfigError, load_config, write_isolated_config
from engine.models import ComplianceLevel, Environment, Features

SEED = Path("/work/shared/seed/000_d730f6a32aa44628.txt")
REPO_SEED = Path(__file__).resolve().parent / "seed_enterprise_excerpt.md"

CAMEL = """
environments:
  production:
    complianceLevel: nasa-pot10
    approvalWorkflow:
      required: true
      approverGroups: [prod-team, security-team, compliance-team]
    security:
      tlsRequired: true
      vulnerabilityScanning: true
      complianceScanning: true
"""


def seed_block() -> str:
    """The yaml block under the seed's 'Enterprise Configuration' heading, exactly as the seed has it."""
    text = SEED.read_text(encoding="utf-8") if SEED.exists() else REPO_SEED.read_text(encoding="utf-8")
    match = re.search(r"### Enterprise Configuration.*?```yaml\n(.*?)```", text, re.DOTALL)
    assert match, "the seed has no yaml block under 'Enterprise Configuration'"
    return match.group(1)


def _write(tmp_path: Path, text: str) -> Path:
    file = tmp_path / "enterprise_config.yaml"
    file.write_text(textwrap.dedent(text), encoding="utf-8")
    return file


def _problems(tmp_path: Path, text: str) -> list[str]:
    file = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    return [line.removeprefix(f"{file}: ") for line in str(caught.value).splitlines()]


def test_the_seed_block_as_a_whole_file_loads_and_means_what_it_says(tmp_path: Path) -> None:
    block = seed_block()
    assert 'compliance_level: "nasa-pot10"' in block  # the block found is the seed's own
    production = load_config(_write(tmp_path, block)).environment("production")
    assert production.compliance_level is ComplianceLevel.NASA_POT10
    assert production.approval_workflow.required
    assert production.approval_workflow.approver_groups == ["prod-team", "security-team", "compliance-team"]
    assert production.security.tls_required
    assert production.security.vulnerability_scanning
    assert production.security.compliance_scanning


def test_the_repository_copy_of_the_seed_block_is_the_seed_s(tmp_path: Path) -> None:
    """CI machines may not have the seed document: the test falls back on this copy, which must match."""
    if SEED.exists():
        copy = REPO_SEED.read_text(encoding="utf-8")
        assert seed_block() in copy


def test_snake_case_and_camel_case_spellings_load_the_same(tmp_path: Path) -> None:
    snake = load_config(_write(tmp_path, seed_block())).environment("production")
    camel = load_config(_write(tmp_path, CAMEL)).environment("production")
    assert snake.model_dump() == camel.model_dump()


def test_compliance_levels_are_ordered_and_nasa_pot10_is_the_strictest() -> None:
    ordered = sorted(ComplianceLevel, key=lambda level: level.rank)
    assert [level.value for level in ordered] == ["standard", "enhanced", "strict", "nasa-pot10"]
    assert ComplianceLevel("NASA_POT10") is ComplianceLevel.NASA_POT10


def test_the_shipped_file_has_the_seed_s_production_block_working() -> None:
    config = load_config(DEFAULT_CONFIG_FILE)
    production = config.environment("production")
    seed = yaml.safe_load(seed_block())["environments"]["production"]
    assert production.compliance_level.value == seed["compliance_level"]
    assert production.approval_workflow.approver_groups == seed["approval_workflow"]["approvers"]
    assert all(config.roles[group] for group in production.approval_workflow.approver_groups)
    assert production.security.tls_required and production.security.vulnerability_scanning
    assert config.scanners.vulnerability is not None
    # The environment's strategy override sits between the defaults and a deployment's own settings.
    assert config.strategy_for("canary", None, "production").canary.step_duration == 600_000  # type: ignore[union-attr]
    assert config.strategy_for("canary", None, "staging").canary.step_duration == 300_000  # type: ignore[union-attr]


def test_approvers_and_approver_groups_are_the_same_setting_and_not_both(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        """
        roles: {a: [x], b: [y]}
        environments:
          production:
            approval_workflow: {required: true, approvers: [a], approverGroups: [b]}
        """,
    )
    assert problems == [
        "environments.production.approval_workflow: approvers and approverGroups are the same setting "
        "(the approver groups): give only one"
    ]


def test_an_approver_group_must_exist_when_roles_are_defined(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        """
        roles: {prod-team: [alice]}
        environments:
          production:
            approval_workflow: {required: true, approvers: [prod-team, secuirty-team]}
        """,
    )
    assert problems == [
        "environments.production.approvalWorkflow.approvers[1]: approver group 'secuirty-team' is not "
        "defined under 'roles' (defined: prod-team)"
    ]


def test_governance_settings_are_checked_at_their_paths(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        """
        trustedKeys:
          short: 'AAAA'
          leaked: '-----BEGIN PRIVATE KEY----- ...'
        environments:
          production:
            security:
              trustedKeys: [release]
            strategyOverrides:
              canary: {stepDuraton: 10m, stepPercentage: 0}
              rolling: {replicas: 0}
        """,
    )
    assert problems[0].startswith("trustedKeys.short: not an ed25519 public key")
    assert (
        problems[1]
        == "trustedKeys.leaked: this is a private key: only public keys belong in the configuration"
    )
    assert problems[2] == (
        "environments.production.security.trustedKeys[0]: key 'release' is not under trustedKeys "
        "(leaked, short)"
    )
    assert (
        "environments.production.strategyOverrides.canary.stepPercentage: a step of 0% would never finish"
        in (problems[3])
    )
    assert problems[4] == (
        "environments.production.strategyOverrides.canary.stepDuraton: unknown key; "
        "did you mean 'stepDuration'?"
    )
    assert (
        problems[5] == "environments.production.strategyOverrides.rolling.replicas: must be at least 1, got 0"
    )


def test_tls_and_network_policy_settings_are_validated(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        """
        environments:
          production:
            security:
              tls_required: true
              tls: {certificate: /etc/tls/prod.crt, key: "-----BEGIN PRIVATE KEY-----"}
              networkPolicy: {enabled: true}
          staging:
            security:
              tls: {certificate: /etc/tls/staging.crt}
              networkPolicy: {enabled: true, allowedNamespaces: [Not_A_Name]}
        """,
    )
    assert problems == [
        "environments.production.security.tls.key: give a path or a reference (file:/path, env:NAME), "
        "not the PEM text itself",
        "environments.production.security.networkPolicy.enabled: a policy with neither allowedNamespaces nor "
        "gateway would admit no traffic at all",
        "environments.staging.security.tls.key: required with certificate "
        "(a certificate is served with its key)",
        "environments.staging.security.networkPolicy.allowedNamespaces[0]: 'Not_A_Name' is not a valid "
        "name: use lower-case letters, digits and '-', at most 63 characters",
    ]
    good = """
        environments:
          production:
            security:
              tls: {certificate: /etc/tls/prod.crt, key: "file:/etc/tls/prod.key"}
              networkPolicy: {enabled: true, gateway: {name: public, namespace: gateway-system}}
        """
    security = load_config(_write(tmp_path, good)).environment("production").security
    assert security.tls.key == "file:/etc/tls/prod.key"
    assert (
        security.network_policy.gateway is not None
        and security.network_policy.gateway.namespace == "gateway-system"
    )


def test_nasa_pot10_cannot_switch_off_what_its_gate_needs(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        """
        features: {approvals: false}
        environments:
          production:
            compliance_level: nasa-pot10
            features: {complianceGate: false}
        """,
    )
    assert problems == [
        "features.approvals: cannot be off while environments.production is nasa-pot10 (its gate needs it)",
        "environments.production.features.complianceGate: cannot be off: production is nasa-pot10, "
        "whose gate needs it",
    ]


def test_unknown_feature_names_are_refused_with_a_suggestion(tmp_path: Path) -> None:
    problems = _problems(tmp_path, "features: {automatedRollbak: false}\n")
    assert problems == ["features.automatedRollbak: unknown key; did you mean 'automatedRollback'?"]


def test_features_merge_environment_over_top_level_over_defaults(tmp_path: Path) -> None:
    config = load_config(
        _write(
            tmp_path,
            """
            features: {automatedRollback: false, debugLogging: true}
            environments:
              staging: {features: {debugLogging: false}}
              production: {}
            """,
        )
    )
    staging = config.features_for(config.environment("staging"))
    production = config.features_for(config.environment("production"))
    assert not staging.enabled("automated_rollback") and not staging.enabled("debug_logging")
    assert not production.enabled("automated_rollback") and production.enabled("debug_logging")
    assert production.enabled("approvals") and production.enabled("compliance_gate")
    assert Features().enabled("automated_rollback") and not Features().enabled("debug_logging")


def test_strategy_overrides_merge_between_the_defaults_and_the_deployment(tmp_path: Path) -> None:
    config = load_config(
        _write(
            tmp_path,
            """
            strategyDefaults:
              canary: {stepDuration: 1m, stepPercentage: 20, successThreshold: {errorRate: 1}}
            environments:
              production:
                strategyOverrides:
                  canary: {stepDuration: 10m, successThreshold: {responseTime: 300}, replicas: 4}
              staging: {}
            """,
        )
    )
    production = config.strategy_for("canary", {"stepPercentage": 25}, "production")
    assert production.canary is not None
    assert production.canary.step_duration == 600_000  # the environment's
    assert production.canary.step_percentage == 25  # the deployment's
    assert production.canary.success_threshold.error_rate == 1  # the defaults', deep-merged
    assert production.canary.success_threshold.response_time == 300
    assert production.replicas == 4
    assert config.strategy_for("canary", {"stepDuration": "2m"}, "production").canary.step_duration == 120_000  # type: ignore[union-attr]
    assert config.strategy_for("canary", None, "staging").canary.step_duration == 60_000  # type: ignore[union-attr]


def test_a_registered_environment_takes_the_same_settings() -> None:
    environment = Environment.model_validate(
        {
            "name": "qa",
            "approval_workflow": {"required": True, "approvers": ["qa"]},
            "complianceLevel": "strict",
        }
    )
    again = Environment.model_validate(environment.model_dump(mode="json"))
    assert again.approval_workflow.approver_groups == ["qa"]
    assert again.compliance_level is ComplianceLevel.STRICT


def test_an_isolated_copy_keeps_the_scanner_s_relative_paths_working(tmp_path: Path) -> None:
    copy = load_config(write_isolated_config(tmp_path))
    scanner = copy.scanners.vulnerability
    assert scanner is not None and scanner.working_dir == str(DEFAULT_CONFIG_FILE.resolve().parent)
    assert (Path(scanner.working_dir) / scanner.command[1]).exists()


def test_a_request_built_for_an_environment_takes_its_strategy_overrides() -> None:
    from engine.requests import build_request

    config = load_config(DEFAULT_CONFIG_FILE)
    artifact = {"name": "web", "version": "2.0.0", "command": ["true"]}
    production = build_request(
        config, artifact, "canary", "production", change_record={"id": "C-1", "summary": "s"}
    )
    assert production.strategy.canary is not None and production.strategy.canary.step_duration == 600_000
    assert production.change_record is not None and production.change_record.id == "C-1"
    staging = build_request(
        config,
        artifact,
        "canary",
        "staging",
        stepPercentage=25,
        changeRecord={"id": "C-2", "summary": "camelCase"},
    )
    assert staging.strategy.canary is not None and staging.strategy.canary.step_duration == 300_000
    assert staging.strategy.canary.step_percentage == 25
    assert staging.change_record is not None and staging.change_record.summary == "camelCase"
