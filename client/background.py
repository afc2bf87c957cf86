"""``deploy --no-wait`` with the embedded Ray: a driver in the background holds the cluster.

An embedded Ray ends with the process that started it, and with it the queen and the runners: a deployment
submitted by a command that returns at once would stall right away. So the command starts this module as a
detached process (its own session, its output in ``$ORCH_HOME/background/<deployment>.log``), which starts
the embedded Ray, submits the deployment and stays until every deployment of the journal is terminal, each
bounded by its own deadlines plus a margin (``engine.background_hold``); then it stops the orchestrator and
exits. The command returns once the deployment is in the journal, with the process's pid and log.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from client.driver import REPO, DeploymentOrchestrator, read_journal
from engine.admission import ALL
from engine.background_hold import hold_remaining
from engine.identity import read_token_file
from engine.journal import UnknownDeploymentError
from engine.models import DeploymentRequest
from engine.paths import orchestrator_home

START_TIMEOUT_S = 300.0  # an embedded Ray, the queen and its workers on a loaded machine
LINGER_S = 5.0  # after the last deployment ends: one submitted just then is still seen
log = logging.getLogger("orchestrator.background")


@dataclass(frozen=True)
class BackgroundDeployment:
    deployment_id: str
    pid: int
    log: Path


def deploy_in_background(
    request: DeploymentRequest, config_path: str | None = None, token_file: str | None = None
) -> BackgroundDeployment:
    """Start a background driver for ``request`` and return once the deployment is journaled; raises
    RuntimeError with the driver's last log lines if it stops before that."""
    deployment_id = f"{request.artifact.name}-{uuid.uuid4().hex[:10]}"
    folder = orchestrator_home() / "background"
    folder.mkdir(parents=True, exist_ok=True)
    request_file = folder / f"{deployment_id}.request.json"
    request_file.write_text(request.model_dump_json(by_alias=True))
    request_file.chmod(0o600)
    log_file = folder / f"{deployment_id}.log"
    command = [sys.executable, "-m", "client.background", "--request", str(request_file)]
    command += ["--deployment-id", deployment_id] + (["--config", config_path] if config_path else [])
    command += ["--token-file", token_file] if token_file else []  # the file's path, never the token
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    with open(log_file, "ab") as output:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not killed with this command's terminal or process group
        )
    _await_submission(process, deployment_id, config_path, log_file)
    return BackgroundDeployment(deployment_id=deployment_id, pid=process.pid, log=log_file)


def _await_submission(
    process: subprocess.Popen[bytes], deployment_id: str, config_path: str | None, log_file: Path
) -> None:
    journal = read_journal(config_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            journal.find(deployment_id)
            return
        except UnknownDeploymentError:
            pass
        if process.poll() is not None:
            raise RuntimeError(
                f"the background driver stopped (exit status {process.returncode}) before submitting the "
                f"deployment; its log {log_file} ends with:\n{_tail(log_file)}"
            )
        time.sleep(0.2)
    raise RuntimeError(
        f"the background driver (pid {process.pid}) did not submit the deployment within "
        f"{START_TIMEOUT_S:g}s; it goes on trying, see its log {log_file}"
    )


def _tail(path: Path, lines: int = 12) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def hold(orch: DeploymentOrchestrator) -> int:
    """Keep the orchestrator (and so the embedded Ray) until no deployment of the journal is active, or
    until every active one is past its bound; returns 0, or 1 when a bound ran out."""
    journal = read_journal(orch.config_path, orch.journal_path)
    while True:
        active = journal.deployments(active_only=True, limit=ALL)
        if not active:
            time.sleep(LINGER_S)
            if not journal.deployments(active_only=True, limit=ALL):
                return 0
            continue
        remaining = hold_remaining(active)
        if remaining <= 0:
            stuck = ", ".join(f"{s.deployment_id} ({s.phase().value})" for s in active)
            log.error("giving up: past their deadlines and still not terminal: %s", stuck)
            return 1
        orch.wait(active[0].deployment_id, min(30.0, remaining))


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m client.background")
    parser.add_argument("--request", required=True, help="the validated request as JSON (read, removed)")
    parser.add_argument("--deployment-id", required=True)
    parser.add_argument("--config")
    parser.add_argument("--token-file", help="the caller's token file (else $ORCH_TOKEN, $ORCH_HOME/token)")
    args = parser.parse_args(argv)
    request_file = Path(args.request)
    request = DeploymentRequest.model_validate_json(request_file.read_text())
    request_file.unlink()
    log.info("pid %d: starting the embedded Ray and the orchestrator", os.getpid())
    try:
        token = read_token_file(Path(args.token_file)) if args.token_file else None
        orch = DeploymentOrchestrator(config_path=args.config, token=token)
    except (RuntimeError, ValueError) as error:
        log.error("the orchestrator did not start: %s", error)
        return 2
    try:
        orch.submit_request(request, args.deployment_id)
        log.info("submitted %s; holding the embedded Ray until no deployment is active", args.deployment_id)
        code = hold(orch)
        final = read_journal(orch.config_path, orch.journal_path).state(args.deployment_id)
        log.info("%s ended %s: %s", args.deployment_id, final.phase().value, final.message)
        return code
    finally:
        log.info("stopping the orchestrator and the embedded Ray")
        orch.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
