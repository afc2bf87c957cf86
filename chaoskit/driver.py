"""A driver process with its own embedded Ray, for the chaos matrix's whole-Ray fault (faults.py).

Every line of its protocol starts with faults.PROTOCOL_MARK (Ray prints to the same stdout).

python -m chaoskit.driver CONFIG start SERVICE '{"bad": false, "replicas": 2}'
    prints {"session": ...} once Ray runs, {"address": ...} once 1.0.0 is live, then reads one line from
    stdin (the candidate's strategy as JSON), submits 2.0.0 and prints {"deployment_id": ...}; then stays
    (its embedded Ray lives as long as this process) until killed or 15 minutes pass.
python -m chaoskit.driver CONFIG wait DEPLOYMENT_ID
    prints {"session": ...}, waits (at most 10 minutes) for the deployment to end, prints its status.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from chaoskit.cases import ENV, FIRST_STRATEGY
from chaoskit.faults import PROTOCOL_MARK, embedded
from chaoskit.machine import case_artifact
from client.driver import DeploymentOrchestrator


def say(data: dict[str, object]) -> None:
    print(PROTOCOL_MARK + json.dumps(data), flush=True)


def session() -> str:
    import ray

    node: Any = ray._private.worker._global_node
    return str(node.get_session_dir_path())


def start(orch: DeploymentOrchestrator, service: str, options: dict[str, object]) -> int:
    platform = orch.config.platform("local")
    first = orch.deploy(case_artifact(service, "1.0.0", False, platform), FIRST_STRATEGY, ENV, timeout_s=300)
    if not first.success:
        print(f"the first revision did not go live: {first.status}", file=sys.stderr)
        return 1
    say({"address": first.status.address})
    strategy = json.loads(sys.stdin.readline())
    candidate = case_artifact(service, "2.0.0", bool(options["bad"]), platform)
    say({"deployment_id": orch.submit(candidate, strategy, ENV)})
    time.sleep(900)  # the embedded Ray ends with this process: it stays until the case kills it
    return 0


def main(argv: list[str]) -> int:
    config, mode, argument = argv[0], argv[1], argv[2]
    orch: DeploymentOrchestrator = embedded(DeploymentOrchestrator, Path(config))
    say({"session": session()})
    if mode == "start":
        return start(orch, argument, json.loads(argv[3]))
    result = orch.wait(argument, 600)
    say({"status": result.status.model_dump(mode="json")})
    orch.shutdown()
    return 0 if result.status.phase.terminal else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
