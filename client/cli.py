"""The command line: ``python orchestrator.py <command>`` (or ``deploy-orchestrator <command>``).

It uses only the driver's public API (``client.driver``, ``client.local``) and reads the journal directly
where no cluster is needed (``status``, ``history``, ``token``, ``audit``). Every command presents the
caller's token (``--token-file``, ``$ORCH_TOKEN`` or ``$ORCH_HOME/token``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import ray

from client.background import deploy_in_background
from client.driver import (
    DeploymentOrchestrator,
    ProgressCallback,
    connect_to_running,
    migrate_journal,
    read_journal,
    running_cluster,
)
from client.local import LocalJournal
from engine.approvals import ApprovalRequest, Approvals
from engine.compliance import report as compliance_report
from engine.config import ConfigError, load_config
from engine.control import control_event
from engine.governance import decide_as, open_requests, subject_of
from engine.identity import AccessDenied, AccessRole, read_token_file, save_token
from engine.judge import Judgement, describe_judgement
from engine.models import DeploymentRequest, DeploymentStatus, Phase
from engine.requests import build_request
from engine.views import deployment_view, event_summary, readable, weights_text

EXIT_OK, EXIT_DEPLOYMENT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
log = logging.getLogger("orchestrator.cli")
USAGE = """Deployment orchestrator on Ray.

python orchestrator.py quickstart
python orchestrator.py deploy --service web --version 2.0.0 --command "python app.py" --strategy canary
python orchestrator.py status|history|rollback|promote|pause|resume|abort ...
python orchestrator.py approvals | approve ID --group G | reject ID --group G --comment WHY
python orchestrator.py artifacts SERVICE | artifacts sign --artifact FILE --key KEY | artifacts keygen
python orchestrator.py report ID [--json]
python orchestrator.py pipeline run production-pipeline --artifact artifact.yaml --environments a,b,c
python orchestrator.py pipeline status PIPELINE_ID
python orchestrator.py journal migrate --to env:ORCH_JOURNAL_URL    # SQLite -> PostgreSQL, chain verified
python orchestrator.py status ID --watch     # a live view until the deployment ends
python orchestrator.py lint [FILE]           # every problem of a configuration file, with its YAML path
python orchestrator.py console [--port 8470] # the web console
python orchestrator.py token bootstrap|issue|revoke|list ...
python orchestrator.py audit verify|export|prune|checkpoint ...
"""
DEBUG_ENVIRONMENTS = ("development",)  # debug logging is on by default there (the seed's "debug mode")
OUR_LOGGERS = ("orchestrator", "client", "engine", "adapters", "actors")


def _scalar(text: str, where: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:  # e.g. '--set stepDuration=[': say which setting, not a traceback
        problem = getattr(error, "problem", None) or "not a YAML value"
        raise ValueError(f"--set {where}: '{text}' is not a value: {problem}") from None


def _pairs(items: list[str], what: str) -> dict[str, Any]:
    """KEY=VALUE pairs; with --set, values are YAML scalars and dotted keys nest (a.b=1)."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what}: '{item}' is not KEY=VALUE")
        if what != "--set":
            result[key] = value
            continue
        *parents, leaf = key.split(".")
        node = result
        for depth, parent in enumerate(parents):
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):  # '--set a=1 --set a.b=2': 'a' cannot be both
                given = ".".join(parents[: depth + 1])
                raise ValueError(f"--set {key}: '{given}' is already set to a value, not a mapping")
        node[leaf] = _scalar(value, key)
    return result


def _artifact_from_args(args: argparse.Namespace) -> dict[str, Any]:
    import shlex

    data: dict[str, Any] = _artifact_file(args.artifact) if args.artifact else {}
    if args.service:
        data["name"] = args.service
    if args.version:
        data["version"] = args.version
    if args.command:
        data["command"] = shlex.split(args.command)
    if args.workdir:
        data["workingDir"] = args.workdir
    if args.source:
        data["source"] = args.source
    env = data.setdefault("env", {})
    if not isinstance(env, dict):
        raise ValueError(f"--artifact: {args.artifact}: env: must be a mapping (NAME: value lines)")
    env.update(_pairs(args.env or [], "--env"))
    return data


def _artifact_file(path: str) -> dict[str, Any]:
    """The artifact file's mapping; ValueError naming the file and what is wrong with it."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise ValueError(f"--artifact: cannot read {path}: {error.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"--artifact: {path} is not YAML or JSON: {error}") from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ValueError(f"--artifact: {path} must hold a mapping (name:, version:, ...), not a {kind}")
    return data


def _show(status: DeploymentStatus) -> str:
    weights = weights_text(status)
    step = (
        f"step {min(status.step_index + 1, status.step_count)}/{status.step_count} {status.step_name or ''}"
    )
    if status.step_count == 0 and not status.phase.terminal:
        step = "planning" if status.phase is Phase.PROGRESSING else ""
    text = (
        f"{status.deployment_id} {status.target.key} {status.phase.value:<12} {step.strip():<28} [{weights}]"
    )
    if status.candidate_revision:
        text += f" {status.version_of(status.candidate_revision)}"
        if status.stable_revision:
            text += f" replacing {status.version_of(status.stable_revision)}"
    if status.address:
        text += f" at {status.address}"
    if status.rollback_reason:
        text += f"\n    rollback ({status.rollback_trigger.value if status.rollback_trigger else '?'}): "
        text += readable(status.rollback_reason, status.versions)
    elif (status.phase.terminal or status.phase is Phase.AWAITING_APPROVAL) and status.message:
        text += f"\n    {readable(status.message, status.versions)}"
    return text


def progress_printer(stream: Any = None) -> ProgressCallback:
    """Prints a line whenever the phase, step or weights change."""
    out = stream or sys.stdout
    started = time.monotonic()
    last: list[tuple[Any, ...]] = [()]

    def show(status: DeploymentStatus) -> None:
        key = (status.phase, status.step_index, tuple(sorted(status.weights.items())))
        if key != last[0]:
            last[0] = key
            print(f"[{time.monotonic() - started:6.1f}s] {_show(status)}", file=out, flush=True)

    return show


def _finish(status: DeploymentStatus, as_json: bool) -> int:
    if as_json:
        print(status.model_dump_json(indent=2))
    return (
        EXIT_OK
        if status.phase
        in (Phase.SUCCEEDED, Phase.PROGRESSING, Phase.PAUSED, Phase.QUEUED, Phase.AWAITING_APPROVAL)
        else EXIT_DEPLOYMENT_FAILED
    )


def _change_record(args: argparse.Namespace) -> dict[str, str] | None:
    if bool(args.change_id) != bool(args.change_summary):
        raise ValueError("--change-id and --change-summary go together (the change record's id and summary)")
    return {"id": args.change_id, "summary": args.change_summary} if args.change_id else None


def _cmd_deploy(args: argparse.Namespace) -> int:
    overrides = _pairs(args.set or [], "--set")
    if args.replicas:
        overrides["replicas"] = args.replicas
    config = load_config(args.config)
    request = build_request(
        config,
        _artifact_from_args(args),
        args.strategy,
        args.environment,
        args.platform,
        change_record=_change_record(args),
        **overrides,
    )
    log.debug(
        "deploying %s %s (revision %s) to %s on %s, %s strategy: %s",
        request.artifact.name,
        request.artifact.version,
        request.artifact.revision,
        request.environment,
        request.platform.type,
        request.strategy.type.value,
        request.strategy.model_dump_json(exclude_defaults=True),
    )
    if args.no_wait and not os.environ.get("RAY_ADDRESS"):
        return _deploy_embedded_no_wait(request, args)
    orch = DeploymentOrchestrator(config_path=args.config, token=_token(args))
    deployment_id = orch.submit_request(request)
    log.debug("submitted as %s to the queen in namespace %s", deployment_id, orch.namespace)
    if args.no_wait:
        print(json.dumps({"deployment_id": deployment_id}) if args.json else deployment_id)
        return EXIT_OK
    result = orch.wait(deployment_id, args.timeout, None if args.json else progress_printer())
    return _finish(result.status, args.json) if result.status.phase.terminal else EXIT_DEPLOYMENT_FAILED


def _deploy_embedded_no_wait(request: DeploymentRequest, args: argparse.Namespace) -> int:
    """No cluster named and nobody waits: an embedded Ray would end with this command, so the deployment goes
    to the orchestrator already driving this journal, or to a driver left in the background that holds the
    embedded Ray until the deployment ends."""
    address = running_cluster(args.config)
    orch = connect_to_running(args.config, _token(args)) if address else None
    if orch is not None:
        deployment_id = orch.submit_request(request)
        shown: dict[str, Any] = {"deployment_id": deployment_id, "ray_address": address}
        note = (
            f"submitted to the orchestrator already running for this journal (Ray cluster at {address}); "
            "if that cluster stops first, the deployment waits in the journal for the next orchestrator"
        )
    else:
        started = deploy_in_background(request, args.config, args.token_file)
        deployment_id = started.deployment_id
        shown = {"deployment_id": deployment_id, "background_pid": started.pid, "log": str(started.log)}
        note = (
            f"embedded Ray: a background driver (pid {started.pid}) holds it until the deployment ends; "
            f"its log: {started.log}"
        )
    print(json.dumps(shown) if args.json else deployment_id)
    print(note, file=sys.stderr)
    return EXIT_OK


def _token(args: argparse.Namespace) -> str | None:
    """The token in ``--token-file`` (else the driver looks in $ORCH_TOKEN and $ORCH_HOME/token)."""
    if not args.token_file:
        return None
    token = read_token_file(Path(args.token_file))
    if token is None:
        raise ValueError(f"--token-file: {args.token_file} is missing or empty")
    return token


def _local(args: argparse.Namespace) -> LocalJournal:
    return LocalJournal(args.config, _token(args))


def _cmd_status(args: argparse.Namespace) -> int:
    local = _local(args)
    local.require(AccessRole.VIEWER, "status", deployment=args.deployment_id)
    journal = local.journal
    log.debug("reading deployment %s from the journal %s", args.deployment_id, journal.path)
    if args.watch:
        return _watch(journal, args.deployment_id, args.interval, args.timeout)
    state = journal.find(args.deployment_id)
    status = state.status()
    if args.json:
        print(status.model_dump_json(indent=2))
    else:
        print(_show(status))
        for event in journal.events(state.deployment_id)[-args.events :]:
            stamp = time.strftime("%H:%M:%S", time.localtime(event.at))
            summary = event_summary(event.data, status.versions)
            print(f"  {stamp} {event.actor:<16} {event.kind.value:<18} {summary}")
        _show_judgements(journal.events(state.deployment_id), args.judgements, status.versions)
    return _finish(status, False)


def _watch(journal: Any, deployment_id: str, interval: float, timeout: float) -> int:
    """Redraw the live view whenever it changes, until the deployment ends (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    redraw = sys.stdout.isatty()
    shown = ""
    while True:
        state = journal.find(deployment_id)
        status = state.status()
        view = watch_view(status, journal.events(state.deployment_id))
        if view != shown:
            print("\x1b[H\x1b[2J" if redraw else ("-" * 72 if shown else ""), end="" if redraw else "\n")
            print(view, flush=True)
            shown = view
        if status.phase.terminal or time.monotonic() >= deadline:
            return _finish(status, False) if status.phase.terminal else EXIT_DEPLOYMENT_FAILED
        time.sleep(interval)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def watch_view(status: DeploymentStatus, events: list[Any]) -> str:
    """The live view: the deployment, its traffic by version, its steps and the last judgement."""
    detail = deployment_view(status, events)
    lines = [f"{_show(status)}", ""]
    for version, weight in sorted(detail["weights"].items()):
        bar = "#" * round(weight / 5)
        lines.append(f"  traffic  {version:<12} {bar:<20} {weight:>3}%")
    lines.append("")
    marks = {"done": "done", "current": " -> ", "todo": "    "}
    for step in detail["steps"]:
        lines.append(f"  {marks[step['state']]:>4} {step['index'] + 1:>2}. {step['label']}")
    if detail["judgements"]:
        last = detail["judgements"][-1]
        stamp = time.strftime("%H:%M:%S", time.localtime(last["at"]))
        lines += ["", f"  last judgement ({stamp}): {last['verdict']}: {last['reason']}"]
        for check in last["checks"]:
            figures = [_figure(check[key]) for key in ("value", "success", "failure")]
            lines.append(
                f"    {check['metric']:<14} {figures[0]:>10}  (success {figures[1]}, failure {figures[2]})"
            )
    if detail["message"] and not status.rollback_reason:
        lines += ["", f"  {detail['message']}"]
    return "\n".join(lines)


def _show_judgements(events: list[Any], count: int, versions: dict[str, str]) -> None:
    """The last analysis judgements in full: figures, thresholds, statistics and reason."""
    judged = [e for e in events if e.kind.value == "measurement" and e.data.get("check") == "analysis"]
    if not judged or count <= 0:
        return
    print("  judgements (newest last):")
    for event in judged[-count:]:
        fields = {k: v for k, v in event.data.items() if k != "check"}
        judgement = Judgement.model_validate(fields)
        stamp = time.strftime("%H:%M:%S", time.localtime(event.at))
        first, *rest = describe_judgement(judgement)
        print(f"  {stamp} {readable(first, versions)}")
        for line in rest:
            print(f"      {readable(line, versions)}")
        print(f"      reason: {readable(judgement.reason, versions)}")


def _cmd_history(args: argparse.Namespace) -> int:
    local = _local(args)
    local.require(AccessRole.VIEWER, "history")
    journal = local.journal
    states = [
        s
        for s in journal.deployments(limit=100_000)
        if not args.service or s.request.artifact.name == args.service
    ][-args.limit :]
    if args.json:
        print(json.dumps([s.status().model_dump(mode="json") for s in states], indent=2))
        return EXIT_OK
    for state in states:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.submitted_at))
        took = f"{(state.finished_at or time.time()) - state.submitted_at:7.1f}s"
        print(
            f"{started} {took} {state.request.artifact.version:<10} {state.request.strategy.type.value:<10} "
            f"{_show(state.status())}"
        )
    ok, bad = journal.verify_chain()
    print(
        f"journal {journal.location}: {len(states)} shown, hash chain "
        + ("intact" if ok else f"BROKEN at {bad}")
    )
    return EXIT_OK


def _cmd_control(args: argparse.Namespace) -> int:
    action = "promote_full" if args.action == "promote" and args.full else args.action
    reason = getattr(args, "reason", "") or ""
    # One control path: through the queen whenever one runs (RAY_ADDRESS's, or the one driving the journal).
    orch = connect_to_running(args.config, _token(args))
    if orch is not None:
        status = orch.control(args.deployment_id, action, reason)
    else:
        local = _local(args)
        by = local.require(AccessRole.DEPLOYER, action, deployment=args.deployment_id).person
        journal = local.journal
        state = journal.find(args.deployment_id)
        if not state.active:
            print(f"deployment {state.deployment_id} already ended: {state.phase().value}", file=sys.stderr)
            return EXIT_USAGE
        kind, data = control_event(action, reason, by)
        status = journal.append(state.deployment_id, kind, data, actor=by).status()
        print(
            f"note: no orchestrator runs for the journal {journal.path} (RAY_ADDRESS is not set and no Ray "
            f"cluster holds the journal): the {action} request was written to the journal only; it takes "
            f"effect when an orchestrator drives {state.deployment_id} again (the next driver or `deploy` "
            "started with this configuration resumes it)",
            file=sys.stderr,
        )
    print(status.model_dump_json(indent=2) if args.json else _show(status))
    return EXIT_OK


def _cmd_decide(args: argparse.Namespace) -> int:
    """approve | reject, by the person whose token this is: through the cluster in RAY_ADDRESS, else straight
    into the journal (the queen admits an approved deployment at its next supervision round)."""
    approve = args.decision == "approve"
    if _on_cluster():
        orch = DeploymentOrchestrator(config_path=args.config, token=_token(args))
        send = orch.approve if approve else orch.reject
        request = send(args.subject, args.person, args.group, args.comment)
    else:
        local = _local(args)
        approvals = Approvals(local.journal, local.config.roles)
        request = decide_as(
            local.access, local.token, approvals, args.subject, args.person, args.group, args.comment, approve
        )
    print(request.model_dump_json(indent=2) if args.json else _show_approval(request))
    return EXIT_OK


def _show_approval(request: ApprovalRequest) -> str:
    expires = time.strftime("%Y-%m-%d %H:%M", time.localtime(request.expires_at))
    return (
        f"{request.subject} {request.environment:<12} {request.state.value:<9} expires {expires} "
        f"requested by {request.requested_by}: {request.summary()}"
    )


def _cmd_approvals(args: argparse.Namespace) -> int:
    local = _local(args)
    local.require(AccessRole.VIEWER, "approvals", environment=args.environment)
    journal = local.journal
    approvals = Approvals(journal)
    if args.subject:
        found = [approvals.status(subject_of(journal, args.subject))]
    elif args.all:
        found = approvals.list(args.environment)
    else:
        found = open_requests(journal, approvals, args.environment)
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in found], indent=2))
    else:
        print("\n".join(_show_approval(r) for r in found) or "no approval is waiting for a decision")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    local = _local(args)
    local.require(AccessRole.VIEWER, "report")
    found = compliance_report(local.journal, args.report_id, local.config)
    text = found.to_json() if args.json else found.markdown()
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
        verdict = "passed" if found.passed else "FAILED"
        print(f"{args.out}: compliance report of {found.kind} {found.id}, {verdict}")
    else:
        print(text)
    return EXIT_OK if found.passed else EXIT_DEPLOYMENT_FAILED


def _cmd_journal(args: argparse.Namespace) -> int:
    if args.journal_cmd == "migrate":
        report = migrate_journal(args.to, args.source, args.config)
        if args.json:
            print(json.dumps(report.__dict__, indent=2))
            return EXIT_OK
        print(
            f"copied {report.events} events, {report.deployments} deployments and {report.records} records "
            f"from {report.source} to {report.target}; hash chain verified in both, ending in "
            f"{report.head[:16]}"
        )
        print("use it: journal: {backend: postgresql, url: env:ORCH_JOURNAL_URL} in enterprise_config.yaml")
        return EXIT_OK
    if args.journal_cmd == "salvage":
        return _salvage(args)
    journal = read_journal(args.config, args.journal)
    ok, bad = journal.verify_chain()
    print(f"journal {journal.location}: hash chain " + ("intact" if ok else f"BROKEN at seq {bad}"))
    return EXIT_OK if ok else EXIT_DEPLOYMENT_FAILED


def _salvage(args: argparse.Namespace) -> int:
    """What a damaged SQLite journal still holds, verified; the file itself is not changed."""
    from engine.journal_salvage import salvage

    path = args.journal or str(load_config(args.config).journal_location())
    if not Path(path).is_file():
        raise ValueError(f"--journal: {path} is not a SQLite journal file")
    found = salvage(path)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as out:
            for row in found.kept:
                out.write(json.dumps(row._asdict()) + "\n")
    print(found.summary() + (f"; verified events written to {args.out}" if args.out else ""))
    return EXIT_OK if found.damaged_at is None else EXIT_DEPLOYMENT_FAILED


def _cmd_token(args: argparse.Namespace) -> int:
    """bootstrap | issue | revoke | list: through the cluster when RAY_ADDRESS is set, else on the journal."""
    if args.action == "bootstrap":
        record, path = _local(args).bootstrap(args.person)
        print(f"admin token {record.token_id} for {record.person} saved in {path} (readable by you only)")
        return EXIT_OK
    admin: TokenAdmin = (
        DeploymentOrchestrator(config_path=args.config, token=_token(args)) if _on_cluster() else _local(args)
    )
    if args.action == "issue":
        token = admin.issue_token(args.person)
        if args.output:
            print(f"token for {args.person} saved in {save_token(Path(args.output), token)}")
        else:
            print(token)
            print(f"token for {args.person}: shown once, give it to them privately", file=sys.stderr)
    elif args.action == "revoke":
        for revoked in admin.revoke_token(args.token_id, args.person):
            print(f"revoked token {revoked['token_id']} of {revoked['person']}")
    elif args.json:
        print(json.dumps(admin.tokens(), indent=2))
    else:
        for row in admin.tokens():
            print(_token_line(row))
    return EXIT_OK


def _token_line(row: dict[str, Any]) -> str:
    issued = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(row["issued_at"])))
    state = "admin (bootstrap)" if row.get("bootstrap") else "active"
    if row.get("revoked_at"):
        state = f"revoked by {row.get('revoked_by')}"
    return f"{row['token_id']}  {row['person']:<20} issued {issued} by {row['issued_by']:<16} {state}"


class TokenAdmin(Protocol):
    """Token administration, through the cluster (the driver) or on the local journal."""

    def issue_token(self, person: str) -> str: ...
    def revoke_token(
        self, token_id: str | None = None, person: str | None = None
    ) -> list[dict[str, Any]]: ...
    def tokens(self) -> list[dict[str, Any]]: ...


def _on_cluster() -> bool:
    return bool(os.environ.get("RAY_ADDRESS"))


def _cmd_audit(args: argparse.Namespace) -> int:
    """verify | export | prune | checkpoint, on the journal file and the signing key of this machine."""
    local = _local(args)
    if args.action == "verify":
        result = local.verify(args.public_key)
        print(result.model_dump_json(indent=2) if args.json else result.summary())
        return EXIT_OK if result.ok else EXIT_DEPLOYMENT_FAILED
    if args.action == "export":
        if args.output:
            with open(args.output, "w", encoding="utf-8") as out:
                count = local.export(out, args.after)
        else:
            count = local.export(sys.stdout, args.after)
        print(f"exported {count} audit entries", file=sys.stderr)
        return EXIT_OK
    if args.action == "prune":
        print(local.prune(args.dry_run).summary())
        return EXIT_OK
    checkpoint = local.checkpoint()
    print(f"signed seq {checkpoint.seq}" if checkpoint else "nothing new to sign since the last checkpoint")
    return EXIT_OK


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from examples.quickstart import run_quickstart

    return run_quickstart(config_path=args.config, keep=args.keep, step_seconds=args.step_seconds)


def add_artifact_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifact", help="YAML/JSON file with the artifact (name, version, command, ...)")
    parser.add_argument("--service", help="artifact name (the service)")
    parser.add_argument("--version", help="artifact version")
    parser.add_argument("--command", help="the command that runs one replica (PORT is in its environment)")
    parser.add_argument("--workdir", help="working folder of the command")
    parser.add_argument("--source", help="where the artifact comes from (image, zip, URL)")
    parser.add_argument("--env", action="append", metavar="KEY=VALUE", help="environment of the service")


def _journal_parser(sub: Any) -> None:
    journal = sub.add_parser("journal", help="migrate the journal to PostgreSQL, verify its hash chain")
    journal_sub = journal.add_subparsers(dest="journal_cmd", required=True)
    migrate = journal_sub.add_parser("migrate", help="copy a SQLite journal into an empty PostgreSQL one")
    migrate.add_argument(
        "--to",
        required=True,
        help="the PostgreSQL journal: env:NAME or file:/path holding its URL (or a URL)",
    )
    migrate.add_argument("--from", dest="source", help="the journal to copy (default: the configured one)")
    migrate.add_argument("--json", action="store_true")
    verify = journal_sub.add_parser("verify", help="recompute the hash chain; exit 1 when it is broken")
    verify.add_argument("--journal", help="a path, env:NAME, file:/path or URL (default: the configured one)")
    rescue = journal_sub.add_parser("salvage", help="read back a damaged SQLite journal's verified events")
    rescue.add_argument("--journal", help="the SQLite file (default: the configured journal)")
    rescue.add_argument("--out", help="write the verified events here as JSON lines")
    journal.set_defaults(func=_cmd_journal)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator.py", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", help="enterprise_config.yaml to use ($ORCH_CONFIG, else the repository's)"
    )
    parser.add_argument(
        "--token-file", help="file holding your personal token (else $ORCH_TOKEN, else $ORCH_HOME/token)"
    )
    parser.add_argument(
        "--debug",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="debug logging (default: on for the development environment, off elsewhere)",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    deploy = sub.add_parser("deploy", help="deploy a revision and follow it to the end")
    add_artifact_arguments(deploy)
    deploy.add_argument("--strategy", default="canary", help="canary | blue_green | rolling")
    deploy.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="strategy setting, e.g. --set stepDuration=30s --set initialTrafficPercentage=20",
    )
    deploy.add_argument("--replicas", type=int)
    deploy.add_argument("--environment", default="development")
    deploy.add_argument("--platform", default="local")
    deploy.add_argument("--timeout", type=float, default=3600.0)
    deploy.add_argument("--change-id", help="the change record's id (a ticket), with --change-summary")
    deploy.add_argument("--change-summary", help="what the change is, with --change-id")
    deploy.add_argument("--no-wait", action="store_true", help="print the deployment id and return")
    deploy.add_argument("--json", action="store_true")
    deploy.set_defaults(func=_cmd_deploy)
    status = sub.add_parser("status", help="a deployment's status and recent events (from the journal)")
    status.add_argument("deployment_id")
    status.add_argument("--events", type=int, default=15)
    status.add_argument("--judgements", type=int, default=3, help="analysis judgements shown in full")
    status.add_argument("--json", action="store_true")
    status.add_argument("--watch", action="store_true", help="redraw a live view until the deployment ends")
    status.add_argument("--interval", type=float, default=1.0, help="--watch: seconds between redraws")
    status.add_argument("--timeout", type=float, default=86_400.0, help="--watch: stop after this long")
    status.set_defaults(func=_cmd_status)
    lint = sub.add_parser("lint", help="check a configuration file: every problem with its YAML path")
    lint.add_argument(
        "file", nargs="?", help="the file (default: --config, $ORCH_CONFIG or the repository's)"
    )
    lint.add_argument("--strict", action="store_true", help="warnings fail too")
    lint.set_defaults(func=_cmd_lint)
    console = sub.add_parser("console", help="serve the web console (sign in with your personal token)")
    console.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 on a cluster)")
    console.add_argument("--port", type=int, default=8470)
    console.set_defaults(func=_cmd_console)
    history = sub.add_parser("history", help="past deployments (from the journal; no cluster needed)")
    history.add_argument("--service")
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--json", action="store_true")
    history.set_defaults(func=_cmd_history)
    for action in ("rollback", "promote", "pause", "resume", "abort"):
        control = sub.add_parser(action, help=f"{action} a running deployment")
        control.add_argument("deployment_id")
        if action in ("rollback", "abort", "pause"):
            control.add_argument("--reason", default="")
        if action == "promote":
            control.add_argument("--full", action="store_true", help="skip the remaining steps")
        control.add_argument("--json", action="store_true")
        control.set_defaults(func=_cmd_control, action=action)
    _governance_parsers(sub)
    from client.pipeline_cli import add_pipeline_commands

    add_pipeline_commands(sub)
    _journal_parser(sub)
    _token_parser(sub)
    _audit_parser(sub)
    quick = sub.add_parser("quickstart", help="deploy the sample service: v1, a good canary, a bad canary")
    quick.add_argument("--keep", action="store_true", help="leave the sample service running at the end")
    quick.add_argument("--step-seconds", type=float, default=5.0, help="canary step duration")
    quick.set_defaults(func=_cmd_quickstart)
    return parser


def _governance_parsers(sub: Any) -> None:
    for decision in ("approve", "reject"):
        command = sub.add_parser(decision, help=f"{decision} a deployment (or a pipeline stage) for a group")
        command.add_argument("subject", help="deployment id (or unique prefix), or a pipeline stage id")
        command.add_argument("--group", required=True, help="the approver group you decide for")
        command.add_argument("--person", help="who decides: the token's person (checked when given)")
        command.add_argument("--comment", default="", help="why")
        command.add_argument("--json", action="store_true")
        command.set_defaults(func=_cmd_decide, decision=decision)
    listing = sub.add_parser("approvals", help="approvals awaiting a decision (from the journal)")
    listing.add_argument("subject", nargs="?", help="one deployment's (or subject's) approval")
    listing.add_argument("--all", action="store_true", help="decided and expired ones too")
    listing.add_argument("--environment")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_cmd_approvals)
    artifacts = sub.add_parser(
        "artifacts",
        help="artifacts SERVICE: versions and where each runs; artifacts sign ...; artifacts keygen ...",
    )
    artifacts.add_argument("words", nargs=argparse.REMAINDER)
    artifacts.set_defaults(func=_cmd_artifacts)
    reporting = sub.add_parser("report", help="compliance report of a deployment or a pipeline")
    reporting.add_argument("report_id")
    reporting.add_argument("--json", action="store_true", help="JSON instead of Markdown")
    reporting.add_argument("--out", help="write it to this file")
    reporting.set_defaults(func=_cmd_report)


def _cmd_artifacts(args: argparse.Namespace) -> int:
    from client.artifacts_cli import artifacts_command

    return artifacts_command(args.words, _local(args))


def _token_parser(sub: Any) -> None:
    token = sub.add_parser("token", help="personal tokens: bootstrap the first admin, issue, revoke, list")
    actions = token.add_subparsers(dest="action", required=True)
    boot = actions.add_parser("bootstrap", help="the first admin token, saved in $ORCH_HOME/token")
    boot.add_argument("--person", help="who holds it (default: your login name)")
    issue = actions.add_parser("issue", help="a new token for a person (admin); printed once")
    issue.add_argument("--person", required=True)
    issue.add_argument("--output", help="write it to this file (0600) instead of printing it")
    revoke = actions.add_parser("revoke", help="revoke a token by id, or every token of a person (admin)")
    revoke.add_argument("token_id", nargs="?")
    revoke.add_argument("--person")
    listing = actions.add_parser("list", help="tokens (ids, people, dates; never a secret) (admin)")
    listing.add_argument("--json", action="store_true")
    token.set_defaults(func=_cmd_token)


def _audit_parser(sub: Any) -> None:
    audit = sub.add_parser("audit", help="verify, export and prune the audit trail")
    actions = audit.add_subparsers(dest="action", required=True)
    verify = actions.add_parser("verify", help="check the hash chain and the signed checkpoints")
    verify.add_argument("--public-key", help="the signing key's public half (default: beside the key)")
    verify.add_argument("--json", action="store_true")
    export = actions.add_parser("export", help="JSON lines for a SIEM, with the hash chain fields (viewer)")
    export.add_argument("--output", help="file to write (default: standard output)")
    export.add_argument("--after", type=int, default=0, help="only entries after this seq")
    prune = actions.add_parser("prune", help="remove entries past their environment's retention (admin)")
    prune.add_argument("--dry-run", action="store_true")
    actions.add_parser("checkpoint", help="sign the journal's head now (admin)")
    audit.set_defaults(func=_cmd_audit)


def _cmd_lint(args: argparse.Namespace) -> int:
    from client.local import lint_configuration

    source, findings = lint_configuration(args.file or args.config)
    for finding in findings:
        print(finding.line(source))
    errors = [f for f in findings if f.severity == "error" or args.strict]
    print(f"{source}: {len(errors)} problem(s), {len(findings) - len(errors)} warning(s)", file=sys.stderr)
    return EXIT_DEPLOYMENT_FAILED if errors else EXIT_OK


def _cmd_console(args: argparse.Namespace) -> int:
    from client.console import serve

    serve(DeploymentOrchestrator(config_path=args.config, token=_token(args)), args.host, args.port)
    return EXIT_OK


def debug_wanted(args: argparse.Namespace) -> bool:
    """``--debug``/``--no-debug`` when given; else on when the command concerns the development environment
    (a deployment to it, or a deployment of it), as the seed's debug mode is."""
    if args.debug is not None:
        return bool(args.debug)
    environment = getattr(args, "environment", None)
    if environment is None and getattr(args, "deployment_id", None):
        try:
            journal = read_journal(args.config)
            environment = journal.find(args.deployment_id).request.environment
        except (ConfigError, KeyError, OSError):
            environment = None
    return environment in DEBUG_ENVIRONMENTS


def _logging(debug: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.NOTSET)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    _logging(debug_wanted(args))
    try:
        return int(args.func(args))
    except AccessDenied as error:  # also a refusal raised inside an actor (Ray's error is an instance of it)
        print(f"refused: {getattr(error, 'cause', error)}", file=sys.stderr)
        return EXIT_REFUSED
    except ConfigError as error:
        print(f"configuration error:\n{error}", file=sys.stderr)
    except (ValueError, KeyError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
    except ray.exceptions.RayTaskError as error:
        print(f"error: {error.cause if hasattr(error, 'cause') else error}", file=sys.stderr)
    return EXIT_USAGE


def entry_point() -> None:
    """The ``deploy-orchestrator`` command installed by pyproject.toml."""
    sys.exit(main(sys.argv[1:]))
