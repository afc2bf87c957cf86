"""Deployment orchestrator on Ray: the driver API (``DeploymentOrchestrator``) and the command line.

orch = DeploymentOrchestrator()            # RAY_ADDRESS's cluster, or an embedded local Ray
result = orch.deploy(artifact, "canary", "staging", "local")
print(result.success, result.deployment_id, result.status.phase)

python orchestrator.py quickstart
python orchestrator.py deploy --service web --version 2.0.0 --command "python app.py" --strategy canary
python orchestrator.py status|history|rollback|promote|pause|resume|abort ...
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from actors.common import DOMAIN_WORKERS, QUEEN_NAME, find_actor, kill_quietly, worker_name
from engine.config import ConfigError, EnterpriseConfig, load_config
from engine.journal import Journal
from engine.models import (
    Artifact,
    BlueGreenConfig,
    CanaryConfig,
    DeploymentRequest,
    DeploymentResult,
    DeploymentStatus,
    Environment,
    Phase,
    PlatformConfig,
    RollingConfig,
    Strategy,
    StrategyType,
)
from engine.schedules import strategy_for_schedule

__all__ = [
    "Artifact",
    "BlueGreenConfig",
    "CanaryConfig",
    "ConfigError",
    "DeploymentOrchestrator",
    "DeploymentRequest",
    "DeploymentResult",
    "DeploymentStatus",
    "EnterpriseConfig",
    "Environment",
    "Phase",
    "PlatformConfig",
    "RollingConfig",
    "Strategy",
    "StrategyType",
    "load_config",
]

REPO = Path(__file__).resolve().parent
SCHEDULE_PREFIXES = ("Canary", "Linear", "AllAtOnce", "CodeDeployDefault.")
CALL_TIMEOUT_S = 60.0
log = logging.getLogger("orchestrator")
ProgressCallback = Callable[[DeploymentStatus], None]


class DeploymentOrchestrator:
    """The driver API. Every call goes to the queen actor; history also reads the journal without Ray."""

    def __init__(
        self,
        address: str | None = None,
        config_path: str | Path | None = None,
        journal_path: str | Path | None = None,
        max_concurrent: int | None = None,
        num_cpus: int | None = None,
    ) -> None:
        self.config = load_config(config_path)
        self.config_path = str(self.config.source) if self.config.source else None
        self.journal_path = str(journal_path or self.config.journal_path())
        self.namespace = self.config.namespace
        embedded = self._connect(address, num_cpus)
        self.queen = self._queen(max_concurrent)
        if embedded:  # the local Ray ends with this process: hand the journal over at once, not after a TTL
            atexit.register(self._release)

    # ------------------------------------------------------------------------------ connection
    def _connect(self, address: str | None, num_cpus: int | None) -> bool:
        """Connect to the cluster, or start an embedded one; returns True when embedded."""
        if ray.is_initialized():
            return False
        address = address or os.environ.get("RAY_ADDRESS") or None
        options: dict[str, Any] = {
            "namespace": self.namespace,
            "logging_level": logging.WARNING,
            "log_to_driver": False,
        }
        if address is None:  # embedded: this process starts a local Ray that ends with it
            options |= {
                "include_dashboard": False,
                "_node_ip_address": "127.0.0.1",  # embedded: everything stays on loopback
                "num_cpus": num_cpus or os.cpu_count() or 2,
                "runtime_env": {"env_vars": {"PYTHONPATH": str(REPO)}},
            }
        ray.init(address=address or "local", **options)
        return address is None

    def _queen(self, max_concurrent: int | None) -> Any:
        from actors.queen import Queen

        queen = find_actor(QUEEN_NAME, self.namespace)
        if queen is None:
            queen = Queen.options(
                name=QUEEN_NAME, namespace=self.namespace, lifetime="detached", get_if_exists=True
            ).remote(self.config_path, self.journal_path, max_concurrent)
        try:
            ray.get(queen.ready.remote(), timeout=CALL_TIMEOUT_S * 2)
        except ray.exceptions.RayActorError as error:
            raise RuntimeError(f"the orchestrator could not start: {error}") from error
        return queen

    def _get(self, ref: Any, timeout_s: float = CALL_TIMEOUT_S) -> Any:
        return ray.get(ref, timeout=timeout_s)

    def warm_up(self, timeout_s: float = 120.0) -> int:
        """Block until the standby runners have started (e.g. before a burst of deployments)."""
        return int(self._get(self.queen.warm.remote(timeout_s), timeout_s + CALL_TIMEOUT_S))

    def worker(self, code: str) -> Any:
        """A domain worker's handle: DO-001 environments ... DO-006 pipelines."""
        return self._get(self.queen.worker.remote(code))

    # ------------------------------------------------------------------------------ requests
    def request(
        self,
        artifact: Artifact | dict[str, Any],
        strategy: Strategy | dict[str, Any] | str,
        environment: str,
        platform: PlatformConfig | dict[str, Any] | str = "local",
        requested_by: str | None = None,
        **strategy_overrides: Any,
    ) -> DeploymentRequest:
        """Validate the pieces of a deployment; strategy names take the config file's defaults."""
        return build_request(
            self.config, artifact, strategy, environment, platform, requested_by, **strategy_overrides
        )

    def submit(
        self,
        artifact: Any,
        strategy: Any,
        environment: str,
        platform: Any = "local",
        deployment_id: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Start a deployment and return its id at once (it may wait in the queue)."""
        request = self.request(artifact, strategy, environment, platform, **kwargs)
        return str(self._get(self.queen.submit.remote(request, deployment_id)))

    def deploy(
        self,
        artifact: Any,
        strategy: Any,
        environment: str,
        platform: Any = "local",
        timeout_s: float = 3600.0,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> DeploymentResult:
        """Deploy and block until the deployment ends (or ``timeout_s`` passes)."""
        deployment_id = self.submit(artifact, strategy, environment, platform, **kwargs)
        return self.wait(deployment_id, timeout_s, on_progress)

    def status(self, deployment_id: str) -> DeploymentStatus:
        return self._get(self.queen.status.remote(deployment_id))  # type: ignore[no-any-return]

    def wait(
        self, deployment_id: str, timeout_s: float = 3600.0, on_progress: ProgressCallback | None = None
    ) -> DeploymentResult:
        deadline = time.monotonic() + timeout_s
        status = self.status(deployment_id)
        poll = 1.0 if on_progress else 30.0
        while not status.phase.terminal and time.monotonic() < deadline:
            if on_progress:
                on_progress(status)
            wait_s = max(0.0, min(poll, deadline - time.monotonic()))
            status = self._get(self.queen.wait.remote(deployment_id, wait_s), wait_s + CALL_TIMEOUT_S)
        if on_progress:
            on_progress(status)
        return DeploymentResult(
            deployment_id=status.deployment_id, success=status.phase is Phase.SUCCEEDED, status=status
        )

    def history(self, limit: int = 50, service: str | None = None) -> list[DeploymentStatus]:
        return self._get(self.queen.history.remote(limit, service))  # type: ignore[no-any-return]

    def _control(
        self, deployment_id: str, action: str, reason: str = "", by: str | None = None
    ) -> DeploymentStatus:
        who = by or os.environ.get("USER", "unknown")
        return self._get(self.queen.control.remote(deployment_id, action, who, reason))  # type: ignore[no-any-return]

    def rollback(
        self, deployment_id: str, reason: str = "manual rollback", by: str | None = None
    ) -> DeploymentStatus:
        return self._control(deployment_id, "rollback", reason, by)

    def pause(self, deployment_id: str, reason: str = "", by: str | None = None) -> DeploymentStatus:
        return self._control(deployment_id, "pause", reason, by)

    def resume(self, deployment_id: str, by: str | None = None) -> DeploymentStatus:
        return self._control(deployment_id, "resume", "", by)

    def promote(self, deployment_id: str, full: bool = False, by: str | None = None) -> DeploymentStatus:
        return self._control(deployment_id, "promote_full" if full else "promote", "", by)

    def abort(self, deployment_id: str, reason: str = "aborted", by: str | None = None) -> DeploymentStatus:
        return self._control(deployment_id, "abort", reason, by)

    # ------------------------------------------------------------------------------ domain workers
    def register_environment(self, environment: Environment | dict[str, Any]) -> Environment:
        env = Environment.model_validate(environment) if isinstance(environment, dict) else environment
        return self._get(self.worker("DO-001").register_environment.remote(env))  # type: ignore[no-any-return]

    def monitor_environment_health(self, environment: str, urls: list[str] | None = None) -> list[str]:
        return self._get(self.worker("DO-001").monitor_environment_health.remote(environment, urls))  # type: ignore[no-any-return]

    def get_environment_health(self, environment: str) -> Any:
        return self._get(self.worker("DO-001").get_environment_health.remote(environment))

    def monitor_deployment(
        self,
        deployment_id: str,
        interval_s: float = 1.0,
        timeout_s: float = 1.0,
        unhealthy_threshold: int = 3,
    ) -> str:
        return self._get(
            self.worker("DO-004").monitor_deployment.remote(  # type: ignore[no-any-return]
                deployment_id, interval_s, timeout_s, unhealthy_threshold
            )
        )

    def trigger_rollback(self, deployment_id: str, reason: str, by: str | None = None) -> DeploymentStatus:
        who = by or os.environ.get("USER", "unknown")
        return self._get(self.worker("DO-004").trigger_rollback.remote(deployment_id, reason, who))  # type: ignore[no-any-return]

    def run_pipeline(
        self, artifact: Artifact | dict[str, Any], stages: list[dict[str, Any]], timeout_s: float = 3600.0
    ) -> Any:
        """Deploy through environments in order (DO-006); a stage that does not succeed stops the rest.

        Each stage: {"environment": ..., "strategy": name or dict, "platform": name or dict}."""
        from actors.domain import PipelineStage

        built = [
            PipelineStage.model_validate(
                build_request(
                    self.config,
                    artifact,
                    s.get("strategy", "rolling"),
                    s["environment"],
                    s.get("platform", "local"),
                ).model_dump(include={"environment", "strategy", "platform"})
            )
            for s in stages
        ]
        request = Artifact.model_validate(artifact) if isinstance(artifact, dict) else artifact
        who = os.environ.get("USER", "unknown")
        pipelines = self.worker("DO-006")
        pipeline_id = self._get(pipelines.start_pipeline.remote(request, built, who))
        deadline = time.monotonic() + timeout_s
        status = self._get(pipelines.pipeline_status.remote(pipeline_id))
        while status.state == "running" and time.monotonic() < deadline:
            time.sleep(0.5)
            status = self._get(pipelines.pipeline_status.remote(pipeline_id))
        return status

    def validate_platform(self, platform: PlatformConfig | str) -> Any:
        config = self.config.platform(platform) if isinstance(platform, str) else platform
        return self._get(self.worker("DO-005").validate_platform.remote(config))

    # ------------------------------------------------------------------------------ async variants
    async def submit_async(
        self, artifact: Any, strategy: Any, environment: str, platform: Any = "local", **kwargs: Any
    ) -> str:
        request = self.request(artifact, strategy, environment, platform, **kwargs)
        return str(await asyncio.wait_for(self.queen.submit.remote(request, None), CALL_TIMEOUT_S))

    async def wait_async(self, deployment_id: str, timeout_s: float = 3600.0) -> DeploymentResult:
        deadline = time.monotonic() + timeout_s
        status: DeploymentStatus = await self.queen.status.remote(deployment_id)
        while not status.phase.terminal and time.monotonic() < deadline:
            wait_s = max(0.0, min(30.0, deadline - time.monotonic()))
            status = await asyncio.wait_for(
                self.queen.wait.remote(deployment_id, wait_s), wait_s + CALL_TIMEOUT_S
            )
        return DeploymentResult(
            deployment_id=status.deployment_id, success=status.phase is Phase.SUCCEEDED, status=status
        )

    async def deploy_async(
        self,
        artifact: Any,
        strategy: Any,
        environment: str,
        platform: Any = "local",
        timeout_s: float = 3600.0,
        **kwargs: Any,
    ) -> DeploymentResult:
        deployment_id = await self.submit_async(artifact, strategy, environment, platform, **kwargs)
        return await self.wait_async(deployment_id, timeout_s)

    async def status_async(self, deployment_id: str) -> DeploymentStatus:
        return await asyncio.wait_for(self.queen.status.remote(deployment_id), CALL_TIMEOUT_S)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------------------ lifecycle
    def _release(self) -> None:
        with contextlib.suppress(ray.exceptions.RayError, RuntimeError):
            if ray.is_initialized():
                ray.get(self.queen.release.remote(), timeout=10)

    def shutdown(self, stop_ray: bool = True) -> None:
        """Stop the queen and the domain workers (deployments in flight resume when a queen starts again)."""
        for code in DOMAIN_WORKERS:
            handle = find_actor(worker_name(code), self.namespace)
            if handle is not None:
                kill_quietly(handle)
        self._release()
        kill_quietly(self.queen)
        if stop_ray:
            ray.shutdown()


def build_request(
    config: EnterpriseConfig,
    artifact: Artifact | dict[str, Any],
    strategy: Strategy | dict[str, Any] | str,
    environment: str,
    platform: PlatformConfig | dict[str, Any] | str = "local",
    requested_by: str | None = None,
    **strategy_overrides: Any,
) -> DeploymentRequest:
    """A validated request, without any cluster: bad input fails here, before anything starts.

    A strategy name is canary, blue_green or rolling (with the config file's defaults) or a CodeDeploy
    schedule name such as Canary10Percent5Minutes or Linear10PercentEvery1Minute."""
    if isinstance(strategy, str) and strategy.startswith(SCHEDULE_PREFIXES):
        strategy = Strategy.model_validate({**strategy_for_schedule(strategy), **strategy_overrides})
    elif isinstance(strategy, str):
        strategy = config.strategy_for(strategy, strategy_overrides or None)
    elif isinstance(strategy, dict):
        strategy = Strategy.model_validate(strategy)
    if isinstance(platform, str):
        platform = config.platform(platform)
    return DeploymentRequest(
        artifact=Artifact.model_validate(artifact) if isinstance(artifact, dict) else artifact,
        strategy=strategy,
        environment=environment,
        platform=PlatformConfig.model_validate(platform) if isinstance(platform, dict) else platform,
        requested_by=requested_by or os.environ.get("USER", "unknown"),
    )


def read_journal(config_path: str | None = None, journal_path: str | None = None) -> Journal:
    """The journal, read straight from its file: history and status need no Ray cluster."""
    config = load_config(config_path)
    return Journal(journal_path or config.journal_path())


# ====================================================================================== command line
EXIT_OK, EXIT_DEPLOYMENT_FAILED, EXIT_USAGE = 0, 1, 2


def _scalar(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


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
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = _scalar(value)
    return result


def _artifact_from_args(args: argparse.Namespace) -> dict[str, Any]:
    import shlex

    import yaml

    data: dict[str, Any] = {}
    if args.artifact:
        data = yaml.safe_load(Path(args.artifact).read_text()) or {}
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
    data.setdefault("env", {}).update(_pairs(args.env or [], "--env"))
    return data


def _show(status: DeploymentStatus) -> str:
    weights = " ".join(f"{rev}={pct}%" for rev, pct in sorted(status.weights.items())) or "-"
    step = (
        f"step {min(status.step_index + 1, status.step_count)}/{status.step_count} {status.step_name or ''}"
    )
    if status.step_count == 0 and not status.phase.terminal:
        step = "planning" if status.phase is Phase.PROGRESSING else ""
    text = (
        f"{status.deployment_id} {status.target.key} {status.phase.value:<12} {step.strip():<28} [{weights}]"
    )
    if status.address:
        text += f" at {status.address}"
    if status.rollback_reason:
        text += f"\n    rollback ({status.rollback_trigger.value if status.rollback_trigger else '?'}): "
        text += status.rollback_reason
    elif status.phase.terminal and status.message:
        text += f"\n    {status.message}"
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
        if status.phase in (Phase.SUCCEEDED, Phase.PROGRESSING, Phase.PAUSED, Phase.QUEUED)
        else EXIT_DEPLOYMENT_FAILED
    )


def _cmd_deploy(args: argparse.Namespace) -> int:
    overrides = _pairs(args.set or [], "--set")
    if args.replicas:
        overrides["replicas"] = args.replicas
    config = load_config(args.config)
    request = build_request(
        config, _artifact_from_args(args), args.strategy, args.environment, args.platform, **overrides
    )
    orch = DeploymentOrchestrator(config_path=args.config)
    deployment_id = str(orch._get(orch.queen.submit.remote(request, None)))
    if args.no_wait:
        print(json.dumps({"deployment_id": deployment_id}) if args.json else deployment_id)
        return EXIT_OK
    result = orch.wait(deployment_id, args.timeout, None if args.json else progress_printer())
    return _finish(result.status, args.json) if result.status.phase.terminal else EXIT_DEPLOYMENT_FAILED


def _cmd_status(args: argparse.Namespace) -> int:
    journal = read_journal(args.config)
    state = journal.find(args.deployment_id)
    if args.json:
        print(state.status().model_dump_json(indent=2))
    else:
        print(_show(state.status()))
        for event in journal.events(state.deployment_id)[-args.events :]:
            stamp = time.strftime("%H:%M:%S", time.localtime(event.at))
            print(f"  {stamp} {event.actor:<16} {event.kind.value:<18} {_brief(event.data)}")
    return _finish(state.status(), False)


def _brief(data: dict[str, Any]) -> str:
    shown = {k: v for k, v in data.items() if k not in ("request", "plan", "stable_artifact")}
    return json.dumps(shown, default=str)[:160]


def _cmd_history(args: argparse.Namespace) -> int:
    journal = read_journal(args.config)
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
        f"journal {journal.path}: {len(states)} shown, hash chain " + ("intact" if ok else f"BROKEN at {bad}")
    )
    return EXIT_OK


def _cmd_control(args: argparse.Namespace) -> int:
    action = "promote_full" if args.action == "promote" and args.full else args.action
    reason = getattr(args, "reason", "") or ""
    by = os.environ.get("USER", "cli")
    if os.environ.get("RAY_ADDRESS"):
        status = DeploymentOrchestrator(config_path=args.config)._control(
            args.deployment_id, action, reason, by
        )
    else:  # no cluster named: journal it; the running deployment's runner reads it at its next step
        from actors.queen import _control_event

        journal = read_journal(args.config)
        state = journal.find(args.deployment_id)
        if not state.active:
            print(f"deployment {state.deployment_id} already ended: {state.phase().value}", file=sys.stderr)
            return EXIT_USAGE
        kind, data = _control_event(action, reason, by)
        status = journal.append(state.deployment_id, kind, data, actor=by).status()
    print(status.model_dump_json(indent=2) if args.json else _show(status))
    return EXIT_OK


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from examples.quickstart import run_quickstart

    return run_quickstart(config_path=args.config, keep=args.keep, step_seconds=args.step_seconds)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", help="enterprise_config.yaml to use ($ORCH_CONFIG, else the repository's)"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    deploy = sub.add_parser("deploy", help="deploy a revision and follow it to the end")
    deploy.add_argument("--artifact", help="YAML/JSON file with the artifact (name, version, command, ...)")
    deploy.add_argument("--service", help="artifact name (the service)")
    deploy.add_argument("--version", help="artifact version")
    deploy.add_argument("--command", help="the command that runs one replica (PORT is in its environment)")
    deploy.add_argument("--workdir", help="working folder of the command")
    deploy.add_argument("--source", help="where the artifact comes from (image, zip, URL)")
    deploy.add_argument("--env", action="append", metavar="KEY=VALUE", help="environment of the service")
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
    deploy.add_argument("--no-wait", action="store_true", help="print the deployment id and return")
    deploy.add_argument("--json", action="store_true")
    deploy.set_defaults(func=_cmd_deploy)
    status = sub.add_parser("status", help="a deployment's status and recent events (from the journal)")
    status.add_argument("deployment_id")
    status.add_argument("--events", type=int, default=15)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_cmd_status)
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
    quick = sub.add_parser("quickstart", help="deploy the sample service: v1, a good canary, a bad canary")
    quick.add_argument("--keep", action="store_true", help="leave the sample service running at the end")
    quick.add_argument("--step-seconds", type=float, default=5.0, help="canary step duration")
    quick.set_defaults(func=_cmd_quickstart)
    return parser


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as error:
        print(f"configuration error:\n{error}", file=sys.stderr)
    except (ValueError, KeyError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
    except ray.exceptions.RayTaskError as error:
        print(f"error: {error.cause if hasattr(error, 'cause') else error}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
