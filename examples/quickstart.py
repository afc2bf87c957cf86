"""The quickstart: the sample service's first revision, a good canary promoted, a bad canary rolled back.

Runs on the embedded default: a local Ray, the local platform (processes behind a real HAProxy), SQLite.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from adapters import remove_targets
from engine.models import Artifact, DeploymentResult, Target
from examples.traffic import TrafficGenerator
from orchestrator import DeploymentOrchestrator, progress_printer

SAMPLE = Path(__file__).resolve().parent / "sample_service.py"
SERVICE, ENVIRONMENT = "sample", "development"


def sample_artifact(version: str, error_rate: float = 0.0, service: str = SERVICE, **env: str) -> Artifact:
    """A revision of examples/sample_service.py; ``env`` adds settings such as LATENCY_MS or ERROR_FILE.

    ``-S``: the service needs only the standard library, so Python skips ``site`` (site-packages and their
    ``.pth`` hooks): a replica listens after about half the CPU (21 ms instead of 42 here), which counts when
    several start at once."""
    return Artifact(
        name=service,
        version=version,
        source=f"file://{SAMPLE}",
        command=[sys.executable, "-S", str(SAMPLE)],
        env={"VERSION": version, "ERROR_RATE": str(error_rate), **env},
        metadata={"description": f"sample service {version}, error rate {error_rate}"},
    )


def _canary(step_seconds: float) -> dict[str, object]:
    return {
        "type": "canary",
        "replicas": 2,
        "canary": {
            "initialTrafficPercentage": 20,
            "stepPercentage": 30,
            "stepDuration": int(step_seconds * 1000),
            "maxSteps": 3,
            "analysisInterval": 1000,
            "minRequestCount": 10,
            "successThreshold": {"errorRate": 1},  # percent, as in the seed: at most 1% errors
            "failureThreshold": {"errorRate": 5},  # more than 5% rolls back at once
        },
    }


def _banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _summary(results: list[tuple[str, DeploymentResult]], traffic: TrafficGenerator) -> None:
    _banner("summary")
    for label, result in results:
        status = result.status
        took = (status.finished_at or time.time()) - status.submitted_at
        trigger = status.rollback_trigger.value if status.rollback_trigger else "?"
        reason = f" ({trigger}: {status.rollback_reason})" if status.rollback_reason else ""
        print(f"  {label:<34} {status.phase.value:<12} {took:6.1f}s  {result.deployment_id}{reason}")
    counts = traffic.snapshot()
    print(f"  live traffic: {traffic.total(counts)} requests, {traffic.failed(counts)} failed")
    for version in sorted({v for v, _ in counts}):
        print(
            f"    version {version:<8} {traffic.total(counts, version):6} requests, "
            f"{traffic.failed(counts, version):5} failed"
        )


def _cleanup(orch: DeploymentOrchestrator) -> None:
    remove_targets(orch.config.platform("local"), [Target(service=SERVICE, environment=ENVIRONMENT)])


def run_quickstart(config_path: str | None = None, keep: bool = False, step_seconds: float = 5.0) -> int:
    _banner("starting an embedded Ray and the orchestrator (queen + six domain workers)")
    orch = DeploymentOrchestrator(config_path=config_path)
    results: list[tuple[str, DeploymentResult]] = []
    traffic: TrafficGenerator | None = None
    try:
        _banner("1/3 first revision 1.0.0 (nothing to compare against: straight to 100%)")
        first = orch.deploy(
            sample_artifact("1.0.0"),
            {"type": "rolling", "replicas": 2},
            ENVIRONMENT,
            on_progress=progress_printer(),
            timeout_s=300,
        )
        results.append(("1.0.0 first revision", first))
        if not first.success or not first.status.address:
            print(
                "the first revision did not come up; see `python orchestrator.py status "
                f"{first.deployment_id}`"
            )
            return 1
        traffic = TrafficGenerator(first.status.address + "/", rps=40, threads=4, max_seconds=600).start()
        print(f"live traffic: 40 requests/s to {first.status.address}")
        _banner("2/3 good revision 2.0.0 through a canary under live traffic")
        good = orch.deploy(
            sample_artifact("2.0.0"),
            _canary(step_seconds),
            ENVIRONMENT,
            on_progress=progress_printer(),
            timeout_s=300,
        )
        results.append(("2.0.0 canary (good)", good))
        _banner("3/3 faulty revision 3.0.0 (30% of its requests fail) through a canary")
        bad = orch.deploy(
            sample_artifact("3.0.0", error_rate=0.3),
            _canary(step_seconds),
            ENVIRONMENT,
            on_progress=progress_printer(),
            timeout_s=300,
        )
        results.append(("3.0.0 canary (faulty)", bad))
        time.sleep(2)
        _summary(results, traffic)
        expected = first.success and good.success and bad.status.phase.value == "rolled_back"
        print(
            "\nquickstart "
            + (
                "passed: promoted the good canary, rolled back the faulty one"
                if expected
                else "did NOT go as expected"
            )
        )
        return 0 if expected else 1
    finally:
        if traffic is not None:
            traffic.stop()
        orch.shutdown()  # first: its supervisor would otherwise restart what the clean-up removes
        if not keep:
            _cleanup(orch)
