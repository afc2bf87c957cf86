"""``python orchestrator.py pipeline run|status``: pipelines (DO-006) from the command line.

``run`` starts a template from enterprise_config.yaml and follows it to its end; the exit status is 0 when
every stage succeeded and nothing was rolled back, 1 otherwise (2 for bad input). ``status`` reads the journal
directly (no cluster needed), or waits for the run's end with ``--wait``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from client.cli import (
    EXIT_DEPLOYMENT_FAILED,
    EXIT_OK,
    _artifact_from_args,
    _change_record,
    _local,
    _token,
    add_artifact_arguments,
)
from client.driver import ArtifactLike, DeploymentOrchestrator
from engine.identity import AccessRole
from engine.pipeline import find_pipeline, read_pipeline
from engine.pipeline_state import PipelinePhase, PipelineStatus, StageStatus, status_of


def add_pipeline_commands(sub: Any) -> None:
    pipeline = sub.add_parser("pipeline", help="run a pipeline template, or show a run")
    commands = pipeline.add_subparsers(dest="pipeline_cmd", required=True)
    run = commands.add_parser("run", help="run a template from enterprise_config.yaml to its end")
    run.add_argument("name", help="the template's name under pipelines:")
    add_artifact_arguments(run)
    run.add_argument("--environments", help="comma-separated, in promotion order (default: the template's)")
    run.add_argument("--change-id", help="the change record's id (a ticket), with --change-summary")
    run.add_argument("--change-summary", help="what the change is, with --change-id")
    run.add_argument("--timeout", type=float, default=6 * 3600.0, help="seconds to wait for the end")
    run.add_argument("--no-wait", action="store_true", help="print the pipeline id and return")
    run.add_argument("--json", action="store_true")
    run.set_defaults(func=_cmd_run)
    status = commands.add_parser("status", help="a run's stages (from the journal; no cluster needed)")
    status.add_argument("pipeline_id", help="a pipeline id or a unique prefix of one")
    status.add_argument("--wait", action="store_true", help="wait for its end (connects to the cluster)")
    status.add_argument("--timeout", type=float, default=6 * 3600.0)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_cmd_status)


def _artifacts(args: argparse.Namespace) -> ArtifactLike | list[ArtifactLike]:
    """One artifact from the flags or the file; a file may also list one artifact per service."""
    if args.artifact:
        data = yaml.safe_load(Path(args.artifact).read_text())
        if isinstance(data, list):
            return [dict(item) for item in data]
    return _artifact_from_args(args)


def _cmd_run(args: argparse.Namespace) -> int:
    environments = None
    if args.environments:
        environments = [e.strip() for e in args.environments.split(",") if e.strip()]
    orch = DeploymentOrchestrator(config_path=args.config, token=_token(args))
    change = _change_record(args)
    pipeline_id = orch.start_pipeline(args.name, _artifacts(args), environments, change_record=change)
    if args.no_wait:
        print(json.dumps({"pipeline_id": pipeline_id}) if args.json else pipeline_id)
        return EXIT_OK
    status = orch.wait_pipeline(pipeline_id, args.timeout, None if args.json else _progress_printer())
    return _finish(status, args.json)


def _cmd_status(args: argparse.Namespace) -> int:
    if args.wait:
        orch = DeploymentOrchestrator(config_path=args.config, token=_token(args))
        status = orch.wait_pipeline(args.pipeline_id, args.timeout)
    else:  # from the journal file, as `status` reads a deployment's (a viewer's token is checked here too)
        local = _local(args)
        local.require(AccessRole.VIEWER, "pipeline_status")
        pipeline_id = find_pipeline(local.journal, args.pipeline_id)
        status = status_of(read_pipeline(local.journal, pipeline_id))
    if not args.json:
        print(show_pipeline(status))
    return _finish(status, args.json)


def _finish(status: PipelineStatus, as_json: bool) -> int:
    if as_json:
        print(status.model_dump_json(indent=2))
    failed = status.state in (PipelinePhase.FAILED,) or bool(status.rolled_back)
    return EXIT_DEPLOYMENT_FAILED if failed else EXIT_OK


def show_pipeline(status: PipelineStatus) -> str:
    """The run, one line per stage, then its outcome."""
    lines = [f"pipeline {status.pipeline_id} ({status.name}) {status.state.value}"]
    for stage in status.stages:
        took = ""
        if stage.started_at is not None:
            took = f"{(stage.finished_at or time.time()) - stage.started_at:6.1f}s"
        detail = stage.reason
        if stage.deployment_id:
            detail = f"{stage.deployment_id} {stage.phase or ''} {detail}".strip()
        if stage.rollback_phase:
            detail += f" -> rolled back by {stage.rollback_id}: {stage.rollback_phase}"
        lines.append(f"  {stage.id:<34} {stage.status.value:<10} {took:>7}  {detail}".rstrip())
    if status.message:
        lines.append(f"  {status.message}")
    return "\n".join(lines)


def _progress_printer() -> Any:
    """Prints a line whenever a stage changes status."""
    started = time.monotonic()
    seen: dict[str, StageStatus] = {}

    def show(status: PipelineStatus) -> None:
        for stage in status.stages:
            if seen.get(stage.id) is not stage.status:
                seen[stage.id] = stage.status
                if stage.status is not StageStatus.PENDING:
                    detail = f" {stage.deployment_id}" if stage.deployment_id else ""
                    reason = f": {stage.reason}" if stage.reason else ""
                    stamp = f"[{time.monotonic() - started:6.1f}s]"
                    print(f"{stamp} {stage.id} {stage.status.value}{detail}{reason}", flush=True)
        if status.state not in (PipelinePhase.RUNNING, PipelinePhase.ROLLING_BACK):
            print(show_pipeline(status), file=sys.stdout, flush=True)

    return show
