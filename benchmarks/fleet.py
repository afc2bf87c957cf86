"""What the load and success-rate benchmarks share: an orchestrator of their own (embedded local Ray, or the
cluster in RAY_ADDRESS) on an isolated journal and ports, the journal's timeline of their deployments, and
the result file (commit, arguments, time).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.config import write_isolated_config  # noqa: E402
from engine.journal import Journal  # noqa: E402
from engine.state import Event, EventKind  # noqa: E402

ENV = "development"  # no approvals there: admission is the queen's alone
RAY_START_ATTEMPTS = 12
RAYLET_REGISTRATION_S = 90.0


def port_range(text: str) -> tuple[int, int]:
    """``16000:16199`` -> (16000, 16199), for argparse."""
    low, _, high = text.partition(":")
    try:
        first, last = int(low), int(high)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"'{text}' is not FIRST:LAST (two port numbers)") from error
    if not 1024 <= first < last <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}': ports must satisfy 1024 <= FIRST < LAST <= 65535")
    return first, last


def start_orchestrator(prefix: str, frontend: tuple[int, int], replicas: tuple[int, int]) -> tuple[Any, Path]:
    """A driver on a fresh journal and namespace of its own; returns it and its ORCH_HOME."""
    import ray

    from orchestrator import DeploymentOrchestrator

    folder = Path(tempfile.mkdtemp(prefix=f"orch-{prefix}-"))
    os.environ["ORCH_HOME"] = str(folder)
    os.environ.pop("ORCH_TOKEN", None)  # the run's own admin token, made on its new journal
    namespace = f"orch-{prefix}-{os.getpid()}-{int(time.time())}"
    config = write_isolated_config(folder, frontend, replicas, namespace=namespace)
    _patient_raylet_registration()
    # The raylet waits this long for its agents (metrics, runtime env) to report their ports, then aborts
    # ("Timed out waiting for file .../metrics_agent_port_..."): seen here at load averages of 40-60.
    os.environ.setdefault("RAY_agent_register_timeout_ms", str(int(RAYLET_REGISTRATION_S * 1000)))
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            return DeploymentOrchestrator(config_path=config, num_cpus=2), folder
        except Exception as error:
            # Ray 2.60 gives its raylet a fixed 30 s to register: on a shared, overloaded machine that start
            # fails now and then, before anything of ours ran. Only that failure is tried again.
            if "timed out during startup" not in str(error) or attempt == RAY_START_ATTEMPTS:
                raise
            print(f"Ray did not start (attempt {attempt}): {error}; trying again", file=sys.stderr)
            ray.shutdown()
            time.sleep(5.0)
    raise AssertionError("unreachable")


def _patient_raylet_registration(wait_s: float = RAYLET_REGISTRATION_S) -> None:
    """Ray 2.60 gives a new node's raylet a fixed 30 s to register with its GCS, then fails ray.init. On this
    shared 2-core machine (load averages of 40-60 from other work) that failed most starts, before anything of
    ours ran. Its lookup of the node is made to keep asking for up to ``wait_s`` instead: what is measured
    starts after the orchestrator is ready, so this changes no figure."""
    import ray._private.services as services

    original = services.get_node
    if getattr(original, "patient", False):
        return

    def get_node(gcs_address: str, node_id: str) -> Any:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return original(gcs_address, node_id)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    get_node.patient = True  # type: ignore[attr-defined]
    services.get_node = get_node


def stop_orchestrator(orch: Any, services: Iterable[str]) -> None:
    """Its actors first (a supervisor would restart what the clean-up removes), then every process and
    router of the services."""
    from overhead import cleanup

    orch.shutdown()
    cleanup(orch, list(services))


@dataclass
class Timeline:
    """The journal's events of a set of deployments, by kind (seq gives the journal's total order)."""

    submitted: dict[str, Event] = field(default_factory=dict)
    admitted: dict[str, list[Event]] = field(default_factory=dict)
    finished: dict[str, list[Event]] = field(default_factory=dict)
    events: dict[str, list[Event]] = field(default_factory=dict)

    @classmethod
    def read(cls, journal: Journal, deployment_ids: Iterable[str]) -> Timeline:
        timeline = cls()
        for deployment_id in deployment_ids:
            events = journal.events(deployment_id)
            timeline.events[deployment_id] = events
            for event in events:
                if event.kind is EventKind.SUBMITTED:
                    timeline.submitted[deployment_id] = event
                elif event.kind is EventKind.ADMITTED:
                    timeline.admitted.setdefault(deployment_id, []).append(event)
                elif event.kind is EventKind.FINISHED:
                    timeline.finished.setdefault(deployment_id, []).append(event)
        return timeline

    def max_running(self) -> int:
        """The most deployments admitted and not yet finished at any point of the journal's order."""
        changes = [(e.seq, 1) for events in self.admitted.values() for e in events[:1]]
        changes += [(e.seq, -1) for events in self.finished.values() for e in events[:1]]
        running = peak = 0
        for _, change in sorted(changes):
            running += change
            peak = max(peak, running)
        return peak

    def terminal_once(self, deployment_ids: Iterable[str]) -> list[str]:
        """The deployments without exactly one terminal event (none, or several)."""
        return [d for d in deployment_ids if len(self.finished.get(d, [])) != 1]

    def unrecorded(self, deployment_ids: Iterable[str]) -> list[str]:
        """Submitted by the client, but without a SUBMITTED event in the journal: lost."""
        return [d for d in deployment_ids if d not in self.submitted]


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()


def write_result(name: str, result: dict[str, Any], args: argparse.Namespace) -> Path:
    """benchmarks/results/<name>.json (or --output), with the commit, the arguments and the time."""
    out = Path(args.output) if args.output else REPO / "benchmarks" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "commit": commit(),
        "arguments": {k: v for k, v in vars(args).items() if k != "output"},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ray_address": os.environ.get("RAY_ADDRESS") or "embedded",
        **result,
    }
    out.write_text(json.dumps(document, indent=2, default=str))
    return out
