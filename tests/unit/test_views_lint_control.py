"""What people read (engine/views.py), what `lint` finds in a configuration that loads (engine/lint.py), and
the control requests as journal events (engine/control.py): a real journal, real folds, no Ray."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.config import DEFAULT_CONFIG_FILE, EnterpriseConfig
from engine.control import ControlRefused, control_event
from engine.journal import Journal
from engine.lint import Finding, lint, lint_file
from engine.models import Phase, PlatformConfig, RollbackTrigger
from engine.requests import build_request
from engine.state import EventKind
from engine.views import (
    deployment_view,
    event_summary,
    judgement_checks,
    readable,
    status_view,
    weights_text,
)

SHIPPED: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG_FILE.read_text())
CONFIG = EnterpriseConfig.from_mapping(SHIPPED)


def _canary_in_progress(journal: Journal) -> str:
    request = build_request(CONFIG, {"name": "web", "version": "2.0.0"}, "canary", "development")
    journal.submit("web-1", request, actor="alice")
    plan = [
        {"kind": "deploy", "replicas": 1},
        {"kind": "set_weight", "weight": 10},
        {"kind": "analyze", "durationMs": 30_000},
        {"kind": "remove_stable", "role": "stable"},
    ]
    journal.append("web-1", EventKind.ADMITTED, {"runner": "r1"})
    stable_artifact = {"name": "web", "version": "1.0.0"}
    journal.append(
        "web-1",
        EventKind.PLANNED,
        {
            "plan": plan,
            "stable_revision": "1-0-0",
            "candidate_revision": "2-0-0",
            "weights": {"1-0-0": 100},
            "stable_artifact": stable_artifact,
        },
    )
    journal.append("web-1", EventKind.STEP_COMPLETED, {"index": 0})
    journal.append("web-1", EventKind.WEIGHTS_SET, {"weights": {"1-0-0": 90, "2-0-0": 10}})
    judgement = {"check": "analysis", "verdict": "fail", "reason": "2-0-0 errors", "error_rate": 7.5}
    journal.append("web-1", EventKind.MEASUREMENT, {**judgement, "response_time_ms": 120})
    listed = {
        "verdict": "pass",
        "thresholds": [{"metric": "errorRate", "value": 0.5, "success": 1, "failure": 5, "outcome": "pass"}],
    }
    journal.append("web-1", EventKind.MEASUREMENT, listed)
    return "web-1"


def test_a_deployment_view_names_revisions_by_version_and_marks_its_steps(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    deployment = _canary_in_progress(journal)
    status = journal.state(deployment).status()
    view = deployment_view(status, journal.events(deployment))
    assert view["weights"] == {"1.0.0": 90, "2.0.0": 10}
    assert (view["candidate"], view["stable"]) == ("2.0.0", "1.0.0")
    assert [step["state"] for step in view["steps"]] == ["done", "current", "todo", "todo"]
    assert view["steps"][2]["label"] == "analyze 30s"
    older, newer = view["judgements"]
    # An older judgement is read against the strategy's thresholds (the file's canary defaults).
    assert older["checks"][0] == {
        "metric": "errorRate",
        "value": 7.5,
        "success": 1.0,
        "failure": 5.0,
        "outcome": "",
    }
    assert older["checks"][1]["metric"] == "responseTime" and older["checks"][1]["value"] == 120
    assert newer["checks"] == [
        {"metric": "errorRate", "value": 0.5, "success": 1.0, "failure": 5.0, "outcome": "pass"}
    ]
    assert "request" not in view["events"][0]["summary"]  # the bulky request is left out
    assert weights_text(status) == "1.0.0=90% 2.0.0=10%"
    assert status_view(status)["step"] == "2/4 set weight 10%"
    journal.close()


def test_a_finished_deployment_shows_every_step_done_and_its_rollback(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    deployment = _canary_in_progress(journal)
    journal.append(deployment, EventKind.ROLLBACK_REQUESTED, {"trigger": "metrics", "reason": "2-0-0 failed"})
    journal.append(
        deployment, EventKind.FINISHED, {"outcome": Phase.ROLLED_BACK.value, "message": "2-0-0 out"}
    )
    status = journal.state(deployment).status()
    view = status_view(status)
    assert view["terminal"] and view["phase"] == "rolled_back"
    assert view["rollback"] == {"trigger": "metrics", "reason": "2.0.0 failed"}
    journal.close()


def test_texts_name_versions_not_revision_ids() -> None:
    versions = {"2-0-0": "2.0.0", "same": "same"}
    assert readable("2-0-0 is live; 12-0-0 is not", versions) == "2.0.0 is live; 12-0-0 is not"
    summary = event_summary({"weights": {"2-0-0": 10}, "candidate_revision": "2-0-0", "plan": [1]}, versions)
    assert summary == '{"weights": {"2.0.0": 10}, "candidate_revision": "2.0.0"}'
    assert len(event_summary({"text": "x" * 500}, width=40)) == 40
    assert judgement_checks({"error_rate": True}, None) == [
        judgement_checks({"error_rate": None}, None)[0]
    ]  # a boolean is not a figure


@pytest.mark.parametrize(
    ("action", "kind", "data"),
    [
        ("pause", EventKind.PAUSED, {"reason": "why"}),
        ("resume", EventKind.RESUMED, {}),
        ("promote", EventKind.PROMOTE_REQUESTED, {"full": False}),
        ("promote_full", EventKind.PROMOTE_REQUESTED, {"full": True}),
        ("abort", EventKind.ROLLBACK_REQUESTED, {"trigger": "abort", "reason": "why", "by": "bob"}),
        ("rollback", EventKind.ROLLBACK_REQUESTED, {"trigger": "manual", "reason": "why", "by": "bob"}),
        (
            "rollback_health",
            EventKind.ROLLBACK_REQUESTED,
            {"trigger": "health", "reason": "why", "by": "bob"},
        ),
    ],
)
def test_each_control_action_is_one_journal_event(action: str, kind: EventKind, data: dict[str, Any]) -> None:
    assert control_event(action, "why", "bob") == (kind, data)


def test_an_unknown_control_action_is_refused_by_name() -> None:
    with pytest.raises(ControlRefused, match="unknown action 'explode'"):
        control_event("explode", "", "bob")
    assert control_event("abort", "", "bob")[1]["reason"] == "abort"
    assert RollbackTrigger.MANUAL.value == "manual"


def _linted(change: dict[str, Any], **checks: Any) -> list[Finding]:
    data = copy.deepcopy(SHIPPED)
    data.update(change)
    return lint(EnterpriseConfig.from_mapping(data), **checks)


def test_the_shipped_file_has_no_lint_errors() -> None:
    findings = lint(CONFIG)
    assert [f for f in findings if f.severity == "error"] == []


def test_lint_finds_what_loads_but_cannot_work() -> None:
    roles = {**SHIPPED["roles"], "qa": [], "idle": []}
    access = {**SHIPPED["access"], "staging": {"deployer": ["@qa"]}, "production": {"viewer": ["*"]}}
    alerting = {
        "channels": {"chat": {"url": "json://chat.example/alerts"}, "unused": {"url": "json://x.example/"}},
        "routes": [{"environments": ["mars-*"], "severities": ["critical"], "channels": ["chat"]}],
    }
    hooks = [{"name": "h", "type": "event", "url": "http://hooks.example/", "environments": ["nowhere"]}]
    findings = _linted(
        {"roles": roles, "access": access, "alerting": alerting, "hooks": hooks},
        channels=lambda url: "refused" if "x.example" in url else None,
        platforms=lambda platform: [("hosts", "no hosts", True)] if platform.type == "vm" else [],
    )
    by_path = {f.path: f for f in findings}
    assert (
        "could never be approved"
        in by_path["environments.staging.approvalWorkflow.approverGroups[0]"].message
    )
    assert by_path["access.staging.deployer[0]"].message == "group 'qa' has no members"
    assert by_path["roles.idle"].severity == "warning"
    assert "only admins can deploy" in by_path["access.production"].message
    assert by_path["alerting.channels.unused"].severity == "warning"
    assert by_path["alerting.channels.unused.url"] == Finding("alerting.channels.unused.url", "refused")
    assert "matches no configured environment" in by_path["alerting.routes[0].environments[0]"].message
    assert "hooks[0].environments[0]" in by_path
    assert by_path["platforms.vm.settings.hosts"].severity == "warning"
    assert (
        by_path["platforms.vm.settings.hosts"]
        .line("f.yaml")
        .startswith("f.yaml: platforms.vm.settings.hosts:")
    )


def test_a_platform_setting_its_adapter_refuses_is_an_error() -> None:
    def refuse(platform: PlatformConfig) -> list[tuple[str, str, bool]]:
        return [("region", "not a region", False)] if platform.type == "lambda" else []

    found = [f for f in lint(CONFIG, platforms=refuse) if f.path.startswith("platforms.")]
    assert found == [Finding("platforms.lambda.settings.region", "not a region")]


def test_lint_file_reports_a_file_that_does_not_load_as_errors(tmp_path: Path) -> None:
    file = tmp_path / "enterprise_config.yaml"
    file.write_text("concurrency: {maxConcurrentDeployments: 0}\n")
    source, findings = lint_file(str(file))
    assert source == str(file)
    assert [(f.path, f.severity) for f in findings] == [("concurrency.maxConcurrentDeployments", "error")]
    _missing, problems = lint_file(str(tmp_path / "absent.yaml"))
    assert problems[0].path == "(file)" and "not found" in problems[0].message
    shipped_source, shipped = lint_file(str(DEFAULT_CONFIG_FILE))
    assert shipped_source == str(DEFAULT_CONFIG_FILE.resolve()) and all(
        f.severity == "warning" for f in shipped
    )
