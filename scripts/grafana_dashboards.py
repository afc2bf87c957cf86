"""The seed's four dashboards as Grafana dashboard JSON (cluster/grafana/*.json), written from the panel
lists below: ``python3 scripts/grafana_dashboards.py`` writes them, ``--check`` exits 1 when a file differs.

Every query reads the orchestrator's exporter (``metrics.prometheusPort``; job label free) and takes the
dashboard's ``$environment`` variable. Import a file in Grafana (Dashboards > Import) and pick the Prometheus
data source that scrapes the orchestrator.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).resolve().parent.parent / "cluster" / "grafana"
ENV = 'environment=~"$environment"'

# (title, panel type, unit, [(PromQL, legend)], width)
Panel = tuple[str, str, str, list[tuple[str, str]], int]


def panel(title: str, kind: str, unit: str, width: int, *targets: tuple[str, str]) -> Panel:
    return title, kind, unit, list(targets), width


def per(labels: str, metric: str, selector: str = ENV) -> str:
    """``sum by (labels) (metric{selector})``."""
    return f"sum by ({labels}) ({metric}{{{selector}}})"


def quantile(q: float, metric: str, by: str = "le", selector: str = ENV) -> str:
    return f"histogram_quantile({q}, sum by ({by}) ({metric}_bucket{{{selector}}}))"


OVERVIEW = [
    panel("Running", "stat", "none", 4, ("orchestrator_deployments_running", "running")),
    panel("Queued", "stat", "none", 4, ("orchestrator_deployments_queued", "queued")),
    panel(
        "Success rate",
        "stat",
        "percentunit",
        8,
        (f"orchestrator_deployment_success_ratio{{{ENV}}}", "{{environment}}"),
    ),
    panel(
        "Active deployments by phase",
        "timeseries",
        "none",
        8,
        (per("environment, phase", "orchestrator_deployments_active"), "{{environment}} {{phase}}"),
    ),
    panel(
        "Deployments by outcome",
        "timeseries",
        "none",
        12,
        (per("outcome", "orchestrator_deployments_finished_total"), "{{outcome}}"),
    ),
    panel(
        "Rollbacks by trigger",
        "timeseries",
        "none",
        12,
        (per("trigger", "orchestrator_rollbacks_total"), "{{trigger}}"),
    ),
    panel(
        "Deployment duration (p50, p95)",
        "timeseries",
        "s",
        12,
        (quantile(0.5, "orchestrator_deployment_duration_seconds"), "p50"),
        (quantile(0.95, "orchestrator_deployment_duration_seconds"), "p95"),
    ),
    panel(
        "Traffic weight per revision",
        "timeseries",
        "percent",
        12,
        (f"orchestrator_traffic_weight_percent{{{ENV}}}", "{{service}} {{version}}"),
    ),
    panel(
        "DORA: deployment frequency",
        "stat",
        "none",
        6,
        (f"orchestrator_dora_deployment_frequency_per_day{{{ENV}}}", "{{environment}} per day"),
    ),
    panel(
        "DORA: lead time for changes",
        "stat",
        "s",
        6,
        (f"orchestrator_dora_lead_time_median_seconds{{{ENV}}}", "{{environment}}"),
    ),
    panel(
        "DORA: change failure rate",
        "stat",
        "percentunit",
        6,
        (f"orchestrator_dora_change_failure_rate{{{ENV}}}", "{{environment}}"),
    ),
    panel(
        "DORA: time to restore",
        "stat",
        "s",
        6,
        (f"orchestrator_dora_time_to_restore_median_seconds{{{ENV}}}", "{{environment}}"),
    ),
]
HEALTH = [
    panel(
        "Live services",
        "stat",
        "none",
        8,
        (f"orchestrator_environment_live_services{{{ENV}}}", "{{environment}}"),
    ),
    panel(
        "Deployments in flight",
        "timeseries",
        "none",
        16,
        (per("environment", "orchestrator_deployments_active"), "{{environment}}"),
    ),
    panel(
        "Rollbacks by trigger",
        "timeseries",
        "none",
        12,
        (per("environment, trigger", "orchestrator_rollbacks_total"), "{{environment}} {{trigger}}"),
    ),
    panel(
        "Failed or rolled back",
        "timeseries",
        "none",
        12,
        (
            per(
                "environment",
                "orchestrator_deployments_finished_total",
                f'{ENV},outcome=~"failed|rolled_back"',
            ),
            "{{environment}}",
        ),
    ),
    panel(
        "Alerts sent",
        "timeseries",
        "none",
        12,
        (per("kind, severity", "orchestrator_alerts_sent_total", ""), "{{kind}} {{severity}}"),
    ),
    panel(
        "Alerts by outcome",
        "timeseries",
        "none",
        12,
        (per("kind, outcome", "orchestrator_alerts_total", ""), "{{kind}} {{outcome}}"),
    ),
]
COMPLIANCE = [
    panel(
        "Compliance level",
        "table",
        "none",
        8,
        (f"orchestrator_compliance_level_info{{{ENV}}}", "{{environment}} {{level}}"),
    ),
    panel(
        "Compliance gate results",
        "timeseries",
        "none",
        16,
        (per("environment, result", "orchestrator_compliance_checks_total"), "{{environment}} {{result}}"),
    ),
    panel(
        "Audit entries by action",
        "timeseries",
        "none",
        12,
        (per("action", "orchestrator_audit_entries_total", ""), "{{action}}"),
    ),
    panel(
        "Calls refused for their role",
        "timeseries",
        "none",
        12,
        (per("environment", "orchestrator_access_refusals_total", ""), "{{environment}}"),
    ),
    panel(
        "Since the last signed checkpoint",
        "stat",
        "s",
        6,
        ("orchestrator_audit_checkpoint_age_seconds", "age"),
    ),
    panel("Events not yet signed", "stat", "none", 6, ("orchestrator_audit_unsigned_events", "events")),
    panel(
        "Gating hooks' answers",
        "timeseries",
        "none",
        12,
        (per("type, outcome", "orchestrator_hook_gate_answers_total", ""), "{{type}} {{outcome}}"),
    ),
]
PERFORMANCE = [
    panel(
        "Candidate figures (latest judgement)",
        "timeseries",
        "none",
        12,
        (f"orchestrator_analysis_last_value{{{ENV}}}", "{{service}} {{metric}}"),
    ),
    panel(
        "Thresholds of the latest judgement",
        "timeseries",
        "none",
        12,
        (f"orchestrator_analysis_threshold{{{ENV}}}", "{{service}} {{metric}} {{bound}}"),
    ),
    panel(
        "Judgements by verdict",
        "timeseries",
        "none",
        12,
        (per("verdict", "orchestrator_analysis_judgements_total"), "{{verdict}}"),
    ),
    panel(
        "Strategy step time (p95)",
        "timeseries",
        "s",
        12,
        (quantile(0.95, "orchestrator_step_duration_seconds", "le, kind", ""), "{{kind}}"),
    ),
    panel(
        "Share of step time in platform calls",
        "stat",
        "percentunit",
        8,
        (
            "sum(orchestrator_step_platform_seconds_total) / sum(orchestrator_step_duration_seconds_sum)",
            "platform",
        ),
    ),
    panel(
        "Orchestrator CPU (queen)",
        "timeseries",
        "percentunit",
        8,
        ("rate(process_cpu_seconds_total[1m])", "{{instance}}"),
    ),
    panel(
        "Orchestrator memory (queen)",
        "timeseries",
        "bytes",
        8,
        ("process_resident_memory_bytes", "{{instance}}"),
    ),
    panel(
        "Notification hooks",
        "timeseries",
        "none",
        12,
        (per("type, outcome", "orchestrator_hook_notifications_total", ""), "{{type}} {{outcome}}"),
    ),
    panel("Journal events", "timeseries", "none", 12, ("orchestrator_journal_events_total", "events")),
]
DASHBOARDS: dict[str, tuple[str, str, list[Panel]]] = {
    "deployment-overview": (
        "Deployment overview",
        "Current deployment status across environments, outcomes, durations, rollbacks and the DORA metrics.",
        OVERVIEW,
    ),
    "environment-health": (
        "Environment health",
        "Per environment: live services, deployments in flight, rollbacks, failures and the alerts raised.",
        HEALTH,
    ),
    "compliance-status": (
        "Compliance status",
        "Compliance levels and gate results, the audit trail (entries, refusals, checkpoints), gating hooks.",
        COMPLIANCE,
    ),
    "performance": (
        "Performance",
        "Analysis figures against thresholds, judgements, the orchestrator's own step times, CPU, memory.",
        PERFORMANCE,
    ),
}


def _panel(index: int, panel: Panel, position: tuple[int, int]) -> dict[str, Any]:
    title, kind, unit, targets, width = panel
    x, y = position
    return {
        "id": index + 1,
        "title": title,
        "type": kind,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
        "targets": [
            {
                "refId": chr(ord("A") + n),
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": expr,
                "legendFormat": legend,
                "instant": kind in ("stat", "table"),
            }
            for n, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard(uid: str) -> dict[str, Any]:
    title, description, panels = DASHBOARDS[uid]
    laid: list[dict[str, Any]] = []
    x = y = 0
    for index, panel in enumerate(panels):
        if x + panel[4] > 24:
            x, y = 0, y + 8
        laid.append(_panel(index, panel, (x, y)))
        x += panel[4]
    return {
        "uid": f"orchestrator-{uid}",
        "title": f"Orchestrator: {title}",
        "description": description,
        "tags": ["deploy-orchestrator"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "10s",
        "templating": {
            "list": [
                {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
                {
                    "name": "environment",
                    "label": "Environment",
                    "type": "query",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": "label_values(orchestrator_deployments_submitted_total, environment)",
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "refresh": 2,
                },
            ]
        },
        "panels": laid,
    }


def rendered(uid: str) -> str:
    return json.dumps(dashboard(uid), indent=2) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a file differs from what it would write"
    )
    args = parser.parse_args(argv)
    stale: list[str] = []
    for uid in DASHBOARDS:
        path = FOLDER / f"{uid}.json"
        if args.check:
            if not path.exists() or path.read_text() != rendered(uid):
                stale.append(str(path))
        else:
            FOLDER.mkdir(parents=True, exist_ok=True)
            path.write_text(rendered(uid))
    for name in stale:
        print(f"{name} is not what scripts/grafana_dashboards.py writes: run it again", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
